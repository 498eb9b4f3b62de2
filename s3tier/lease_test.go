package s3tier

import (
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/internal/versity"
)

// lostAnswers passes every request to the bucket, but loses the answer to
// the lease PUTs it is told to, after the bucket applied them: what a
// renewal whose response comes after its deadline (a slow or loaded
// bucket) looks like to the holder.
type lostAnswers struct {
	rt   http.RoundTripper
	lose atomic.Int32 // lease PUTs after the first whose answer to lose
	puts atomic.Int32
	lost atomic.Int32
}

func (l *lostAnswers) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := l.rt.RoundTrip(r)
	if err != nil || r.Method != http.MethodPut || !strings.Contains(r.URL.Path, "/leases/") {
		return resp, err
	}
	if l.puts.Add(1) >= 2 && l.lose.Add(-1) >= 0 {
		resp.Body.Close()
		l.lost.Add(1)
		return nil, errors.New("the answer was lost")
	}
	return resp, nil
}

// A renewal the bucket applied but whose answer the holder never got
// leaves the lease with the holder's own write under an etag it does not
// know. The next conditional write fails; the holder must see that the
// lease still holds its own write, keep it, and finish, not give it up as
// if another gateway had taken it.
func TestRenewalAppliedButUnheardKeepsTheLease(t *testing.T) {
	srv := versity.Start(t)
	data := randomBytes(21, 1<<20)
	d, size := digestOf(t, data), int64(len(data))
	var ev events
	tr := &lostAnswers{rt: http.DefaultTransport}
	tr.lose.Store(2)
	tier, err := New(Options{
		Endpoint: srv.Endpoint, Bucket: srv.Bucket, Prefix: "mg/", PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey,
		LeaseTTL: 600 * time.Millisecond, Node: "a", OnEvent: ev.add, Transport: tr,
	})
	require.NoError(t, err)
	s := newStore(t, tier)
	// 32 chunks 60 ms apart: about 2 s of fill, ten renewals.
	up := &origin{data: data, delay: 60 * time.Millisecond}
	require.Equal(t, data, get(t, s, d, size, up.source, 0, size))
	require.Eventually(t, func() bool { return ev.get("upload") == 1 }, 30*time.Second, 10*time.Millisecond,
		"the holder published the blob (events %v)", ev.snapshot())
	assert.Equal(t, int32(2), tr.lost.Load(), "two renewals' answers were lost")
	assert.Zero(t, ev.get("lease_lost"), "the holder kept its lease")
}

func (e *events) snapshot() map[string]int {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]int, len(e.n))
	for k, v := range e.n {
		out[k] = v
	}
	return out
}
