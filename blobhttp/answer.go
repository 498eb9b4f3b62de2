package blobhttp

import (
	"errors"
	"net/http"

	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/metrics"
	"github.com/modelgate/modelgate/reqinfo"
	"github.com/modelgate/modelgate/upstream"
)

// Getter returns the blob to send and how it was found.
type Getter func() (*cache.Blob, cache.Result, error)

// Answer is Serve plus what every handler serving a blob does around it:
// it records how the blob was found (hit, miss, coalesced) in the
// request's reqinfo, counts the body bytes by where they came from, hands
// a failure that happened before the status line to onError (which writes
// the error answer), and aborts the connection on a failure after it.
func Answer(w http.ResponseWriter, r *http.Request, size int64, etag string, get Getter, m *metrics.Metrics, onError func(error)) {
	info := reqinfo.From(r.Context())
	var result cache.Result = -1
	n, src, err := Serve(w, r, size, etag, func() (*cache.Blob, error) {
		b, res, err := get()
		result = res
		return b, err
	})
	if result >= 0 {
		info.Result = result.String()
	}
	if m != nil && n > 0 {
		label := metrics.SourceCache
		if src == FromFill {
			label = metrics.SourceFill
		}
		m.ServedBytes.WithLabelValues(label).Add(float64(n))
	}
	switch {
	case err == nil:
	case errors.Is(err, ErrIncomplete):
		info.Result = "error"
		info.Detail = "aborted mid-body: " + upstream.Sanitize(err).Error()
		// The status line is out; only a broken connection tells the
		// client that this body is not the file.
		panic(http.ErrAbortHandler)
	default:
		info.Result = "error"
		onError(err)
	}
}
