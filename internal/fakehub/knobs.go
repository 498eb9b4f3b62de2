package fakehub

import (
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// CorruptBlob makes the CDN serve the blob with the same length but its last
// 4 KiB flipped, on full and ranged requests, until switched off.
func (h *Hub) CorruptBlob(sha256hex string, on bool) { h.faults.Corrupt(sha256hex, on) }

// CorruptSmallFile makes /api/resolve-cache serve the small (non-LFS) file
// whose git blob id is gitOID with the same length but its bytes inverted
// (its last 4 KiB, which for a small file is usually all of it), on full
// and ranged requests, until switched off. Only a git-sha1 check notices.
func (h *Hub) CorruptSmallFile(gitOID string, on bool) { h.small.Corrupt(gitOID, on) }

// ThrottleBlob limits CDN bodies of the blob to about bytesPerSec, written in
// small flushed chunks so clients see steady progress; 0 removes the limit.
// The rate is re-read per chunk, so it also affects responses in flight.
func (h *Hub) ThrottleBlob(sha256hex string, bytesPerSec int) {
	h.faults.Throttle(sha256hex, bytesPerSec)
}

// GateBlob makes every full (non-Range) CDN GET of the blob that starts
// before release is called write its first `after` bytes, flush, and block
// until release() (or until the request's context ends, or the test ends).
// release is idempotent and also removes the gate for later requests. Ranged
// GETs are not gated.
func (h *Hub) GateBlob(sha256hex string, after int64) (release func()) {
	return h.faults.Gate(sha256hex, after)
}

// CutBlob makes the next `times` CDN GETs of the blob drop their connection
// after `after` bytes of body.
func (h *Hub) CutBlob(sha256hex string, after int64, times int) {
	h.faults.Cut(sha256hex, after, times)
}

// IgnoreRangeBlob makes the CDN answer every GET of the blob with 200 and
// the whole body, Range or not.
func (h *Hub) IgnoreRangeBlob(sha256hex string, on bool) { h.faults.IgnoreRange(sha256hex, on) }

// FailBlob makes the next `times` CDN requests for the blob answer status.
func (h *Hub) FailBlob(sha256hex string, status, times int) { h.faults.Fail(sha256hex, status, times) }

// ExpireCDNURLs makes every signed CDN URL handed out so far fail as an
// expired one does (403 AccessDenied), on requests that start from now on;
// the Hub's later redirects hand out URLs that work. Requests in flight
// finish.
func (h *Hub) ExpireCDNURLs() {
	if err := h.newSignKey(); err != nil {
		panic("fakehub: generating a CDN signing key: " + err.Error())
	}
}

// FailHub makes the next `times` requests to the Hub (not the CDN) answer
// status with a JSON error, like an overloaded or broken Hub.
func (h *Hub) FailHub(status, times int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hubFail = hubFault{status: status, times: times}
}

// RateLimitHub makes the next `times` requests to the Hub answer 429 with
// the Hub's rate-limit headers: RateLimit "resolvers";r=0;t=<reset>,
// RateLimit-Policy and Retry-After.
func (h *Hub) RateLimitHub(times int, reset time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.hubFail = hubFault{status: http.StatusTooManyRequests, times: times, reset: reset}
}

// hubFault is an armed FailHub or RateLimitHub.
type hubFault struct {
	status, times int
	reset         time.Duration
}

// takeHubFault uses up one armed Hub failure, if any.
func (h *Hub) takeHubFault() (hubFault, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.hubFail.times <= 0 {
		return hubFault{}, false
	}
	h.hubFail.times--
	return h.hubFail, true
}

// writeHubFault answers with an armed failure.
func writeHubFault(w http.ResponseWriter, r *http.Request, f hubFault) {
	if f.status == http.StatusTooManyRequests {
		secs := max(int(f.reset/time.Second), 1)
		w.Header().Set("RateLimit", fmt.Sprintf(`"resolvers";r=0;t=%d`, secs))
		w.Header().Set("RateLimit-Policy", `"fixed window";"resolvers";q=3000;w=300`)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		writeHubError(w, r, f.status, "", "You have been rate-limited; you can retry this action in about 5 minutes.", "")
		return
	}
	writeHubError(w, r, f.status, "", "Internal Error - We're working hard to fix this as soon as possible!", "")
}
