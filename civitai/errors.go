package civitai

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/origin"
	"github.com/modelgate/modelgate/upstream"
)

// loginRedirectError: CivitAI sent its login (or early-access) page where
// a file was expected. (The origin package names every other failure.)
type loginRedirectError struct{ path string }

// Permanent: a login page will not turn into the file by asking again.
func (e *loginRedirectError) Permanent() bool { return true }

func (e *loginRedirectError) Error() string {
	return "CivitAI answered with a login page (" + e.path + ")"
}

// apiError reads CivitAI's JSON error ({"error": ..., "message": ...}) out
// of a refusal.
func apiError(r *origin.RefusedError) (upstreamErr, message string) {
	var body struct {
		Error   any    `json:"error"`
		Message string `json:"message"`
	}
	if json.Unmarshal(r.Body, &body) == nil {
		if s, ok := body.Error.(string); ok {
			upstreamErr = s
		}
		message = body.Message
	}
	if upstreamErr == "" {
		upstreamErr = http.StatusText(r.Status)
	}
	return upstreamErr, message
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
		unreachable *origin.UnreachableError
		refused     *origin.RefusedError
		login       *loginRedirectError
		bad         *origin.BadAnswerError
	)
	switch {
	case errors.Is(err, origin.ErrOffline):
		if h.Metrics != nil {
			h.Metrics.OfflineRefusals.Inc()
		}
		writeJSONError(w, http.StatusGatewayTimeout, "Gateway Timeout", origin.ErrOffline.Error(), "")
	case errors.As(err, &refused) && refused.Status >= 500:
		_, msg := apiError(refused)
		writeJSONError(w, http.StatusGatewayTimeout, "Gateway Timeout", "CivitAI is unavailable (it answered "+strconv.Itoa(refused.Status)+")", msg)
	case errors.As(err, &refused):
		if v := refused.Header.Get("Retry-After"); v != "" {
			w.Header().Set("Retry-After", v)
		}
		upstreamErr, msg := apiError(refused)
		writeJSONError(w, refused.Status, upstreamErr, h.advice(refused.Status), msg)
	case errors.As(err, &login):
		h.Logger.Warn("CivitAI answered with a login page", "path", login.path)
		writeJSONError(w, http.StatusBadGateway, "Bad Gateway",
			"CivitAI answered with its login page instead of the file: "+h.advice(http.StatusUnauthorized), "")
	case errors.As(err, &unreachable):
		h.Logger.Warn("CivitAI unreachable", "err", unreachable.Err)
		msg := "CivitAI or its storage could not be reached"
		if upstream.IsTimeout(unreachable.Err) {
			msg = "CivitAI or its storage did not answer in time"
		}
		writeJSONError(w, http.StatusGatewayTimeout, "Gateway Timeout", msg, "")
	case errors.As(err, &bad):
		h.Logger.Warn("unusable CivitAI answer", "err", bad.Err)
		writeJSONError(w, http.StatusBadGateway, "Bad Gateway", "CivitAI gave an answer the gateway cannot use: "+bad.Err.Error(), "")
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
