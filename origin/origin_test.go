package origin

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/cache"
)

// scripted is a real HTTP origin answering a script of statuses, then 200.
type scripted struct {
	mu     sync.Mutex
	script []string // "503", "429:1" (status:Retry-After)
	hits   atomic.Int32
	hold   chan struct{} // when set, every request waits for it
	srv    *httptest.Server
}

func newScripted(t *testing.T, script ...string) *scripted {
	s := &scripted{script: script}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		if s.hold != nil {
			<-s.hold
		}
		s.mu.Lock()
		step := "200"
		if len(s.script) > 0 {
			step, s.script = s.script[0], s.script[1:]
		}
		s.mu.Unlock()
		status, after, _ := strings.Cut(step, ":")
		if after != "" {
			w.Header().Set("Retry-After", after)
		}
		code, _ := strconv.Atoi(status)
		w.WriteHeader(code)
		io.WriteString(w, "answer "+status)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

// get is a metadata call the way the hubs make one.
func (s *scripted) get(ctx context.Context) (Fetched, error) {
	req, err := NewRequest(ctx, s.srv.URL, http.MethodGet, "/meta", "", nil)
	if err != nil {
		return Fetched{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Fetched{}, Unreachable(err)
	}
	if resp.StatusCode >= 400 {
		return Fetched{}, Refused(resp)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Fetched{}, Unreachable(err)
	}
	return Fetched{Value: b, Keep: true}, nil
}

func TestRetryingRetriesTransientFailuresOnlyAndWithinItsBudget(t *testing.T) {
	fast := Retry{Attempts: 3, Budget: 5 * time.Second, Pause: time.Millisecond}
	tests := []struct {
		name     string
		script   []string
		retry    Retry
		attempts int32
		status   int // 0: success
	}{
		{"503 twice, then the answer", []string{"503", "503"}, fast, 3, 0},
		{"502 and 504 are transient too", []string{"502", "504"}, fast, 3, 0},
		{"a 5xx that stays: three attempts, no more", []string{"503", "503", "503", "503"}, fast, 3, 503},
		{"a refusal is the origin's word", []string{"404"}, fast, 1, 404},
		{"a 500 is not a blip", []string{"500"}, fast, 1, 500},
		{"a 429 whose reset is near", []string{"429:1"}, fast, 2, 0},
		{"a 429 whose reset is far", []string{"429:30"}, fast, 1, 429},
		{"a 429 without a reset", []string{"429"}, fast, 1, 429},
		{"a Retry-After beyond the budget", []string{"503:10"}, fast, 1, 503},
		{"no retry policy", []string{"503"}, Retry{}, 1, 503},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newScripted(t, tt.script...)
			f, err := Retrying(tt.retry, s.get)(context.Background())
			assert.Equal(t, tt.attempts, s.hits.Load())
			if tt.status == 0 {
				require.NoError(t, err)
				assert.Equal(t, "answer 200", string(f.Value))
				return
			}
			var refused *RefusedError
			require.ErrorAs(t, err, &refused)
			assert.Equal(t, tt.status, refused.Status)
			assert.Equal(t, "answer "+strconv.Itoa(tt.status), string(refused.Body))
		})
	}
}

func TestRetryingRetriesAnOriginThatDoesNotAnswer(t *testing.T) {
	s := newScripted(t)
	s.srv.Close()
	calls := 0
	call := func(ctx context.Context) (Fetched, error) { calls++; return s.get(ctx) }
	_, err := Retrying(Retry{Attempts: 3, Budget: 5 * time.Second, Pause: time.Millisecond}, call)(context.Background())
	var unreachable *UnreachableError
	require.ErrorAs(t, err, &unreachable)
	assert.Equal(t, 3, calls)
	assert.True(t, IsDown(err))
}

func TestOfflineIsPermanentAndDown(t *testing.T) {
	var p interface{ Permanent() bool }
	require.ErrorAs(t, ErrOffline, &p)
	assert.True(t, p.Permanent(), "a fill must not retry an offline refusal")
	assert.True(t, IsDown(ErrOffline))
	_, err := WhenOnline(true, Call[int](func(context.Context) (int, error) { return 1, nil }))(context.Background())
	assert.ErrorIs(t, err, ErrOffline)
}

func openIndex(t *testing.T) *cache.Index {
	t.Helper()
	idx, err := cache.OpenIndex(t.TempDir(), nil)
	require.NoError(t, err)
	t.Cleanup(func() { idx.Close() })
	return idx
}

func TestAnswersMakeOneFetchForConcurrentCallers(t *testing.T) {
	s := newScripted(t)
	s.hold = make(chan struct{})
	a := &Answers{Index: openIndex(t)}
	const n = 8
	var wg sync.WaitGroup
	got := make([]string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, _, err := a.Get(context.Background(), "k", -1, s.get)
			assert.NoError(t, err)
			got[i] = string(b)
		}()
	}
	require.Eventually(t, func() bool { return a.Waiting() == n && s.hits.Load() >= 1 }, 5*time.Second, time.Millisecond)
	close(s.hold)
	wg.Wait()
	assert.Equal(t, int32(1), s.hits.Load())
	for _, g := range got {
		assert.Equal(t, "answer 200", g)
	}
}

func TestAnswersKeepTheLastKnownAnswerForWhenTheOriginIsDown(t *testing.T) {
	idx := openIndex(t)
	stale := 0
	a := &Answers{Index: idx, OnStale: func() { stale++ }}
	s := newScripted(t, "200", "503", "404")
	b, from, err := a.Get(context.Background(), "k", -1, s.get)
	require.NoError(t, err)
	assert.Equal(t, FromOrigin, from)

	b2, from, err := a.Get(context.Background(), "k", -1, s.get)
	require.NoError(t, err, "a 503: the last known answer")
	assert.Equal(t, FromLastKnown, from)
	assert.Equal(t, b, b2)
	assert.Equal(t, 1, stale)

	_, _, err = a.Get(context.Background(), "k", -1, s.get)
	var refused *RefusedError
	require.ErrorAs(t, err, &refused, "a 404 is the origin's word, not an outage")
	assert.Equal(t, 404, refused.Status)

	offline := &Answers{Index: idx, Offline: true}
	b3, from, err := offline.Get(context.Background(), "k", -1, s.get)
	require.NoError(t, err)
	assert.Equal(t, FromLastKnown, from)
	assert.Equal(t, b, b3)
	_, _, err = offline.Get(context.Background(), "other", -1, s.get)
	assert.ErrorIs(t, err, ErrOffline)
	assert.Equal(t, int32(3), s.hits.Load(), "offline asks nobody")
}

func TestAnswersAreKeptForTheirTTLAndPerPrincipal(t *testing.T) {
	a := &Answers{Index: openIndex(t)}
	s := newScripted(t)
	gw := context.Background()
	own := authinject.WithPrincipal(context.Background(), authinject.Principal{Mode: authinject.ModeClient, Scope: "cred-1"})
	for range 2 {
		_, _, err := a.Get(gw, "k", 0, s.get)
		require.NoError(t, err)
	}
	assert.Equal(t, int32(1), s.hits.Load(), "the second came from the index")
	_, from, err := a.Get(own, "k", 0, s.get)
	require.NoError(t, err)
	assert.Equal(t, FromOrigin, from, "another credential's answer is not this one's")
	assert.Equal(t, int32(2), s.hits.Load())

	_, _, err = a.Get(gw, "never", -1, s.get)
	require.NoError(t, err)
	_, from, err = a.Get(gw, "never", -1, s.get)
	require.NoError(t, err)
	assert.Equal(t, FromOrigin, from, "a negative TTL keeps no fresh copy")
}

func TestUnreachableKeepsItsCauseAndDropsQueries(t *testing.T) {
	_, err := http.Get("http://127.0.0.1:1/x?sig=SECRETSIG")
	require.Error(t, err)
	u := Unreachable(err)
	assert.NotContains(t, u.Error(), "SECRETSIG")
	var ue *url.Error
	assert.ErrorAs(t, u, &ue, "the cause stays reachable (timeouts are told apart by it)")
}
