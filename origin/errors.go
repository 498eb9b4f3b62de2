package origin

import (
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/modelgate/modelgate/upstream"
)

// The taxonomy of an origin's failures. Every handler maps these four (and
// its own protocol's) to answers in one place; the decorators here decide
// from them alone what to retry and when a last-known answer may stand in.

// ErrOffline is the cause of every cache miss while the gateway is
// offline. It is permanent: a fill must not retry it.
var ErrOffline error = offlineError{}

type offlineError struct{}

func (offlineError) Error() string   { return "the gateway is offline and this is not in its cache" }
func (offlineError) Permanent() bool { return true }

// UnreachableError is no answer from the origin (dial, TLS, timeout, a
// body cut short).
type UnreachableError struct{ Err error }

func (e *UnreachableError) Error() string { return "upstream unreachable: " + e.Err.Error() }
func (e *UnreachableError) Unwrap() error { return e.Err }

// Unreachable wraps an error of sending a request, with any URL's query
// (a signature) removed. A cause that says it is permanent (the outbound
// guard's refusal) stays reachable through Unwrap.
func Unreachable(err error) error { return &UnreachableError{Err: upstream.Sanitize(err)} }

// RefusedError is the origin answering with an error status; its status,
// headers and (the start of its) body are kept for the client.
type RefusedError struct {
	Status int
	Header http.Header
	Body   []byte
}

func (e *RefusedError) Error() string { return "upstream answered " + strconv.Itoa(e.Status) }

// Permanent tells the cache not to retry a fill the origin refused (a 4xx
// other than a timeout or rate limit): asking again gets the same answer.
func (e *RefusedError) Permanent() bool {
	return e.Status >= 400 && e.Status < 500 && e.Status != http.StatusRequestTimeout && e.Status != http.StatusTooManyRequests
}

// maxErrorBody bounds the body of a refusal kept for the client.
const maxErrorBody = 64 << 10

// Refused reads resp (an error answer) into a RefusedError and closes its
// body.
func Refused(resp *http.Response) *RefusedError {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	upstream.DrainClose(resp.Body)
	return &RefusedError{Status: resp.StatusCode, Header: resp.Header.Clone(), Body: body}
}

// BadAnswerError is an answer the gateway cannot use (missing headers, not
// JSON, a length that does not add up).
type BadAnswerError struct{ Err error }

func (e *BadAnswerError) Error() string { return "unusable upstream answer: " + e.Err.Error() }
func (e *BadAnswerError) Unwrap() error { return e.Err }

// BadAnswer wraps err as a BadAnswerError.
func BadAnswer(err error) error { return &BadAnswerError{Err: err} }

// IsDown reports whether err means the origin is unavailable rather than
// refusing: no answer, a 5xx or a 429, or the gateway being offline. A
// last-known answer may stand in for these; never for the origin's own
// refusals (401, 404, ...), which are its word on the matter.
func IsDown(err error) bool {
	var (
		unreachable *UnreachableError
		refused     *RefusedError
	)
	switch {
	case errors.Is(err, ErrOffline):
		return true
	case errors.As(err, &refused):
		return refused.Status >= 500 || refused.Status == http.StatusTooManyRequests
	case errors.As(err, &unreachable):
		return true
	}
	return false
}

func isPermanent(err error) bool {
	var p interface{ Permanent() bool }
	return errors.As(err, &p) && p.Permanent()
}
