package upstream

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Backoff is an http.RoundTripper that stops sending to a host that
// answered 429 until the time it asked for has passed. Every worker shares
// the operator's one token and rate-limit bucket, so hammering the Hub
// with each worker's retry would only lengthen the penalty; meanwhile the
// gateway answers 429 itself (with Retry-After) without a round trip.
type Backoff struct {
	next http.RoundTripper
	// OnRateLimited, when set, is told each time a host answers 429.
	OnRateLimited func(r *http.Request)
	// Scope, when set, names the credential a request carries, so that
	// backoffs are kept per credential.
	Scope func(r *http.Request) string
	now   func() time.Time

	mu    sync.Mutex
	until map[string]time.Time // canonical host -> end of its backoff
}

// NewBackoff wraps next.
func NewBackoff(next http.RoundTripper) *Backoff {
	return &Backoff{next: next, now: time.Now, until: map[string]time.Time{}}
}

// Bounds on a backoff: a missing or absurd hint still backs off a little,
// and a huge one does not silence a host for hours.
const (
	minBackoff = time.Second
	maxBackoff = 10 * time.Minute
)

// RoundTrip sends r unless r's host is backing off.
func (b *Backoff) RoundTrip(r *http.Request) (*http.Response, error) {
	// Per host and per credential: one credential's penalty must not
	// silence the gateway for requests made with another.
	host := hostKey(r.URL) + "\x00" + b.scopeOf(r)
	b.mu.Lock()
	until, ok := b.until[host]
	if ok && !b.now().Before(until) {
		delete(b.until, host)
		ok = false
	}
	b.mu.Unlock()
	if ok {
		return rateLimitedAnswer(r, until.Sub(b.now())), nil
	}
	resp, err := b.next.RoundTrip(r)
	if err != nil || resp.StatusCode != http.StatusTooManyRequests {
		return resp, err
	}
	wait := retryAfter(resp.Header, b.now())
	b.mu.Lock()
	if cur := b.until[host]; b.now().Add(wait).After(cur) {
		b.until[host] = b.now().Add(wait)
	}
	b.mu.Unlock()
	if b.OnRateLimited != nil {
		b.OnRateLimited(r)
	}
	return resp, nil
}

// Remaining returns, for each host ("scheme://host") still backing off, the
// time left, the longest over the credentials that share the host. It is
// what an operator's dashboard shows while the gateway answers 429 itself.
func (b *Backoff) Remaining() map[string]time.Duration {
	now := b.now()
	out := map[string]time.Duration{}
	b.mu.Lock()
	defer b.mu.Unlock()
	for key, until := range b.until {
		host, _, _ := strings.Cut(key, "\x00")
		if left := until.Sub(now); left > 0 && left > out[host] {
			out[host] = left
		}
	}
	return out
}

func (b *Backoff) scopeOf(r *http.Request) string {
	if b.Scope == nil {
		return ""
	}
	return b.Scope(r)
}

func hostKey(u *url.URL) string { return strings.ToLower(u.Scheme + "://" + u.Host) }

var rateLimitReset = regexp.MustCompile(`(?:^|;)\s*t=(\d+)`)

// retryAfter reads how long a 429 asks to wait: the Hub's RateLimit header
// ("resolvers";r=0;t=<seconds to reset>), else Retry-After (seconds or an
// HTTP date), within [minBackoff, maxBackoff].
func retryAfter(h http.Header, now time.Time) time.Duration {
	var d time.Duration
	if m := rateLimitReset.FindStringSubmatch(h.Get("RateLimit")); m != nil {
		if s, err := strconv.Atoi(m[1]); err == nil {
			d = time.Duration(s) * time.Second
		}
	} else if v := h.Get("Retry-After"); v != "" {
		if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
			d = time.Duration(s) * time.Second
		} else if t, err := http.ParseTime(v); err == nil {
			d = t.Sub(now)
		}
	}
	return min(max(d, minBackoff), maxBackoff)
}

// WaitHint returns how long an answer asks the client to wait before
// asking again (RateLimit's reset, else Retry-After, as retryAfter reads
// them), and whether it asks at all.
func WaitHint(h http.Header, now time.Time) (time.Duration, bool) {
	if h.Get("RateLimit") == "" && h.Get("Retry-After") == "" {
		return 0, false
	}
	return retryAfter(h, now), true
}

// rateLimitedAnswer is the gateway's own 429 for a host that is backing off.
func rateLimitedAnswer(r *http.Request, left time.Duration) *http.Response {
	secs := max(int((left+time.Second-1)/time.Second), 1)
	msg := fmt.Sprintf("the upstream is rate-limiting this gateway; retry in %d s", secs)
	body := `{"error":` + strconv.Quote(msg) + "}\n"
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("Retry-After", strconv.Itoa(secs))
	h.Set("X-Error-Message", msg)
	return &http.Response{
		Status:        "429 Too Many Requests",
		StatusCode:    http.StatusTooManyRequests,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          io.NopCloser(strings.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       r,
	}
}
