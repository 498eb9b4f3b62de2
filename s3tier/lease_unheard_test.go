package s3tier

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/modelgate/modelgate/internal/versity"
)

// unheardRewrite plays a flaky link to the bucket by lease write (each
// told apart by its nonce; a client retry resends the same one):
//   - the 2nd lease write (the first renewal) is applied, its answer lost,
//     and its retries fail without reaching the bucket until its deadline:
//     a renewal the holder never heard back from;
//   - the 4th (the holder re-writing over that unheard renewal, after its
//     next renewal's 412) is applied and its answer lost; the client's
//     retry reaches the bucket.
var nonceRE = regexp.MustCompile(`"nonce":"([0-9a-f]+)"`)

type unheardRewrite struct {
	rt     http.RoundTripper
	mu     sync.Mutex
	order  map[string]int // nonce -> which lease write it is
	events []string
}

func (u *unheardRewrite) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Method != http.MethodPut || !strings.Contains(r.URL.Path, "/leases/") || r.Body == nil {
		return u.rt.RoundTrip(r)
	}
	body, err := io.ReadAll(r.Body)
	r.Body.Close()
	if err != nil {
		return nil, err
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	// The body may be framed (aws-chunked, with chunk signatures): the
	// lease document is inside it.
	nonce := ""
	if m := nonceRE.FindSubmatch(body); m != nil {
		nonce = string(m[1])
	}
	u.mu.Lock()
	n, seen := u.order[nonce]
	if !seen {
		n = len(u.order) + 1
		u.order[nonce] = n
	}
	u.events = append(u.events, map[bool]string{true: "retry", false: "write"}[seen]+" #"+string(rune('0'+n)))
	u.mu.Unlock()
	if seen && n == 2 {
		return nil, errors.New("the bucket is unreachable")
	}
	resp, err := u.rt.RoundTrip(r)
	if err != nil || seen || (n != 2 && n != 4) {
		return resp, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return nil, errors.New("the answer was lost")
}

// TestReview2UnheardRewriteKeepsTheLease: the re-write over an unheard
// renewal is a lease write like any other: applied though its answer was
// lost, the client's retry meets a 412 (its own write moved the etag).
// renew checks the nonce for the first write only; the re-write's 412 is
// taken for another gateway, and a lone holder gives its lease up and
// refuses to publish: the fault c94cfd1 fixed, one write later.
func TestUnheardRewriteKeepsTheLease(t *testing.T) {
	srv := versity.Start(t)
	data := randomBytes(22, 1<<20)
	d, size := digestOf(t, data), int64(len(data))
	var ev events
	tr := &unheardRewrite{rt: http.DefaultTransport, order: map[string]int{}}
	tier, err := New(Options{
		Endpoint: srv.Endpoint, Bucket: srv.Bucket, Prefix: "mg/", PathStyle: true,
		AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey,
		LeaseTTL: 3 * time.Second, Node: "a", OnEvent: ev.add, Transport: tr,
	})
	require.NoError(t, err)
	s := newStore(t, tier)
	// Pieces filled side by side, 8 chunks each 400 ms apart: about 3.2 s of
	// fill, renewals each second.
	up := &origin{data: data, delay: 400 * time.Millisecond}
	require.Equal(t, data, get(t, s, d, size, up.source, 0, size))
	require.Eventually(t, func() bool { return ev.get("upload")+ev.get("upload_refused")+ev.get("upload_failed") > 0 },
		60*time.Second, 10*time.Millisecond)
	tr.mu.Lock()
	writes := append([]string(nil), tr.events...)
	tr.mu.Unlock()
	require.GreaterOrEqual(t, len(tr.order), 4, "the re-write happened (lease writes %v, events %v)", writes, ev.snapshot())
	assert.Zero(t, ev.get("lease_lost"), "a lone holder kept its lease (lease writes %v, events %v)", writes, ev.snapshot())
	assert.Equal(t, 1, ev.get("upload"), "and published the blob (events %v)", ev.snapshot())
}
