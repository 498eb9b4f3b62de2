package civitai

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/upstream"
)

// errOffline is the cause of every cache miss while the gateway is offline.
var errOffline = offlineError{}

type offlineError struct{}

func (offlineError) Error() string   { return "the gateway is offline and this is not in its cache" }
func (offlineError) Permanent() bool { return true }

// Errors of the upstream steps, turned into answers in one place.
type (
	// unreachableError: no answer from CivitAI or the storage host.
	unreachableError struct{ err error }
	// apiError: CivitAI answered with an error status.
	apiError struct {
		status     int
		upstream   string // CivitAI's "error" field
		message    string // CivitAI's "message" field
		retryAfter string
	}
	// loginRedirectError: CivitAI sent its login (or early-access) page
	// where a file was expected.
	loginRedirectError struct{ path string }
	// badUpstreamError: an answer the gateway cannot use.
	badUpstreamError struct {
		err    error
		status int // the storage's status, when it answered one
	}
)

func (e *unreachableError) Error() string { return "CivitAI unreachable: " + e.err.Error() }
func (e *unreachableError) Unwrap() error { return e.err }
func (e *apiError) Error() string {
	return "CivitAI answered " + strconv.Itoa(e.status) + ": " + e.upstream
}

// Permanent tells the cache not to retry a fill CivitAI refused.
func (e *apiError) Permanent() bool {
	return e.status >= 400 && e.status < 500 && e.status != http.StatusRequestTimeout && e.status != http.StatusTooManyRequests
}

// Permanent: a login page will not turn into the file by asking again.
func (e *loginRedirectError) Permanent() bool { return true }

func (e *loginRedirectError) Error() string {
	return "CivitAI answered with a login page (" + e.path + ")"
}
func (e *badUpstreamError) Error() string { return "unusable upstream answer: " + e.err.Error() }
func (e *badUpstreamError) Unwrap() error { return e.err }

// newAPIError reads CivitAI's JSON error ({"error": ..., "message": ...}).
func newAPIError(resp *http.Response) *apiError {
	e := &apiError{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
	var body struct {
		Error   any    `json:"error"`
		Message string `json:"message"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if json.Unmarshal(raw, &body) == nil {
		if s, ok := body.Error.(string); ok {
			e.upstream = s
		}
		e.message = body.Message
	}
	if e.upstream == "" {
		e.upstream = http.StatusText(resp.StatusCode)
	}
	return e
}

// advice says what the operator (or worker) can do about an upstream status.
func (h *Handler) advice(status int) string {
	switch status {
	case http.StatusUnauthorized:
		if h.HasKey != nil && h.HasKey() {
			return "CivitAI refused the gateway's API key for this file: the configured key is invalid, expired, or lacks access (civitai.api_key)"
		}
		return "this file needs a CivitAI API key: configure civitai.api_key (or CIVITAI_API_KEY) on the gateway"
	case http.StatusForbidden:
		return "the configured CivitAI key lacks access to this version (early access, or restricted by its creator)"
	case http.StatusNotFound:
		return "CivitAI has no such model version, or no file matching these parameters"
	case http.StatusGone:
		return "this model is archived on CivitAI and can no longer be downloaded"
	case http.StatusTooManyRequests:
		return "CivitAI is rate-limiting the gateway's downloads; retry later"
	}
	return "CivitAI refused the request"
}

func (h *Handler) writeError(w http.ResponseWriter, err error) {
	var (
		unreachable *unreachableError
		api         *apiError
		login       *loginRedirectError
		bad         *badUpstreamError
	)
	switch {
	case errors.Is(err, errOffline):
		if h.Metrics != nil {
			h.Metrics.OfflineRefusals.Inc()
		}
		writeJSONError(w, http.StatusGatewayTimeout, "Gateway Timeout", errOffline.Error(), "")
	case errors.As(err, &api) && api.status >= 500:
		writeJSONError(w, http.StatusGatewayTimeout, "Gateway Timeout", "CivitAI is unavailable (it answered "+strconv.Itoa(api.status)+")", api.message)
	case errors.As(err, &api):
		if api.retryAfter != "" {
			w.Header().Set("Retry-After", api.retryAfter)
		}
		writeJSONError(w, api.status, api.upstream, h.advice(api.status), api.message)
	case errors.As(err, &login):
		h.Logger.Warn("CivitAI answered with a login page", "path", login.path)
		writeJSONError(w, http.StatusBadGateway, "Bad Gateway",
			"CivitAI answered with its login page instead of the file: "+h.advice(http.StatusUnauthorized), "")
	case errors.As(err, &unreachable):
		h.Logger.Warn("CivitAI unreachable", "err", unreachable.err)
		msg := "CivitAI or its storage could not be reached"
		if upstream.IsTimeout(unreachable.err) {
			msg = "CivitAI or its storage did not answer in time"
		}
		writeJSONError(w, http.StatusGatewayTimeout, "Gateway Timeout", msg, "")
	case errors.As(err, &bad):
		h.Logger.Warn("unusable CivitAI answer", "err", bad.err)
		writeJSONError(w, http.StatusBadGateway, "Bad Gateway", "CivitAI gave an answer the gateway cannot use: "+bad.err.Error(), "")
	case cache.IsFillError(err):
		writeJSONError(w, http.StatusBadGateway, "Bad Gateway", "downloading the file from CivitAI's storage failed", "")
	default:
		h.Logger.Error("serving CivitAI route", "err", err)
		writeJSONError(w, http.StatusInternalServerError, "Internal Server Error", "internal error", "")
	}
}

// writeJSONError writes CivitAI's error shape plus the gateway's advice.
func writeJSONError(w http.ResponseWriter, status int, upstreamErr, message, upstreamMessage string) {
	body := map[string]string{"error": upstreamErr, "message": message}
	if upstreamMessage != "" {
		body["upstream_message"] = upstreamMessage
	}
	b, _ := json.Marshal(body)
	h := w.Header()
	h.Del("Content-Length")
	h.Del("Content-Disposition")
	h.Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}
