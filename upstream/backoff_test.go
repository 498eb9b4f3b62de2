package upstream

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRetryAfterHints(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		header http.Header
		want   time.Duration
	}{
		{"hub RateLimit reset", http.Header{"Ratelimit": {`"resolvers";r=0;t=42`}, "Retry-After": {"5"}}, 42 * time.Second},
		{"Retry-After seconds", http.Header{"Retry-After": {"7"}}, 7 * time.Second},
		{"Retry-After date", http.Header{"Retry-After": {now.Add(90 * time.Second).Format(http.TimeFormat)}}, 90 * time.Second},
		{"no hint", http.Header{}, minBackoff},
		{"absurd hint", http.Header{"Retry-After": {"86400"}}, maxBackoff},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, retryAfter(tt.header, now))
		})
	}
}

func TestBackoffStopsSendingToARateLimitedHost(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hits.Add(1) == 1 {
			w.Header().Set("Retry-After", "30")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	now := time.Now()
	// Not http.DefaultTransport: its ProxyFromEnvironment would read (and
	// cache) the environment another test sets up.
	b := NewBackoff(&http.Transport{})
	b.now = func() time.Time { return now }
	limited := 0
	b.OnRateLimited = func(*http.Request) { limited++ }
	get := func() *http.Response {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/x", nil)
		resp, err := b.RoundTrip(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp
	}

	assert.Equal(t, http.StatusTooManyRequests, get().StatusCode)
	for range 5 {
		resp := get()
		assert.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
		assert.Equal(t, "30", resp.Header.Get("Retry-After"))
	}
	assert.Equal(t, int32(1), hits.Load(), "while backing off nothing is sent")
	assert.Equal(t, 1, limited)

	now = now.Add(31 * time.Second)
	assert.Equal(t, http.StatusOK, get().StatusCode)
	assert.Equal(t, int32(2), hits.Load())
}

func TestBackoffRemainingReportsTheLongestWaitPerHost(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", r.URL.Query().Get("wait"))
		w.WriteHeader(http.StatusTooManyRequests)
	}))
	defer srv.Close()
	now := time.Now()
	b := NewBackoff(&http.Transport{})
	b.now = func() time.Time { return now }
	b.Scope = func(r *http.Request) string { return r.Header.Get("X-Scope") }
	assert.Empty(t, b.Remaining())
	for _, c := range []struct{ scope, wait string }{{"a", "30"}, {"b", "90"}} {
		req, _ := http.NewRequest(http.MethodGet, srv.URL+"/x?wait="+c.wait, nil)
		req.Header.Set("X-Scope", c.scope)
		resp, err := b.RoundTrip(req)
		require.NoError(t, err)
		resp.Body.Close()
	}
	host := hostKey(mustURL(t, srv.URL))
	assert.Equal(t, map[string]time.Duration{host: 90 * time.Second}, b.Remaining())
	now = now.Add(60 * time.Second)
	assert.Equal(t, map[string]time.Duration{host: 30 * time.Second}, b.Remaining())
	now = now.Add(31 * time.Second)
	assert.Empty(t, b.Remaining())
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	require.NoError(t, err)
	return u
}
