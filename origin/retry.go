package origin

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/modelgate/modelgate/upstream"
)

// Retry bounds the retries of a metadata call whose failure is transient:
// no answer, a 502/503/504, or a 429 whose reset is within the budget.
// Clients such as @huggingface/hub do not retry a 5xx themselves, so one
// blip of the origin would otherwise fail a worker's whole download.
// Bodies (fills) are not retried here: the cache resumes them itself.
type Retry struct {
	// Attempts is how many times the call is made at most (the first
	// included); 0 or 1: no retry.
	Attempts int
	// Budget bounds the whole: a retry whose wait would end after it is
	// not made, so a worker waits at most about this long for an origin
	// that stays down.
	Budget time.Duration
	// Pause is the wait before the first retry when the origin gave no
	// hint; it doubles for each one after.
	Pause time.Duration
}

// DefaultRetry: three attempts within five seconds.
var DefaultRetry = Retry{Attempts: 3, Budget: 5 * time.Second, Pause: 200 * time.Millisecond}

// Retrying returns call, made again while it fails transiently, as r
// allows. A wait the origin asks for (Retry-After, RateLimit) is honoured.
func Retrying[T any](r Retry, call Call[T]) Call[T] {
	if r.Attempts <= 1 {
		return call
	}
	return func(ctx context.Context) (T, error) {
		deadline := time.Now().Add(r.Budget)
		pause := r.Pause
		for attempt := 1; ; attempt++ {
			v, err := call(ctx)
			if err == nil || attempt >= r.Attempts {
				return v, err
			}
			wait, ok := transient(err)
			if !ok {
				return v, err
			}
			if wait == 0 {
				wait = pause
				pause *= 2
			}
			if time.Now().Add(wait).After(deadline) {
				return v, err
			}
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return v, err
			}
		}
	}
}

// transient reports whether err may go away by asking again, and how long
// the origin asked to wait first (0: no hint).
func transient(err error) (time.Duration, bool) {
	var (
		unreachable *UnreachableError
		refused     *RefusedError
	)
	switch {
	case errors.As(err, &refused):
		hint, hinted := upstream.WaitHint(refused.Header, time.Now())
		switch refused.Status {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return hint, true
		case http.StatusTooManyRequests:
			// Only with a reset to wait for: the budget then decides
			// whether it is near enough.
			return hint, hinted
		}
	case errors.As(err, &unreachable):
		if isPermanent(err) || errors.Is(err, context.Canceled) {
			return 0, false
		}
		return 0, true
	}
	return 0, false
}
