// Package origin is what the hubs' handlers (hfmirror, civitai) share about
// talking to their upstream, the origin: how its failures are named, how a
// request to it is built, and the decorators every metadata call goes
// through — bounded retries of transient failures, one call for all
// identical concurrent callers, answers kept in the index (scoped to the
// caller's principal) with a last-known copy for when the origin is down,
// and offline mode. The model is athens' pkg/stash: each concern wraps a
// call and knows nothing of the others or of any hub's protocol, which
// stays in the handlers, with how they render these errors to their
// clients.
package origin

import (
	"context"
	"io"
	"net/http"
	"strings"
)

// A Call asks the origin for one answer.
type Call[T any] func(ctx context.Context) (T, error)

// NewRequest builds a request for escapedPath (already escaped) and
// rawQuery on endpoint, whose path prefix (a corporate mirror, a parent
// gateway under a path) is kept. It asks for identity encoding: cached
// bytes and sizes must be the origin's own. It carries no credential:
// authinject attaches the one the context's principal may use.
func NewRequest(ctx context.Context, endpoint string, method, escapedPath, rawQuery string, body io.Reader) (*http.Request, error) {
	target := strings.TrimSuffix(endpoint, "/") + escapedPath
	if rawQuery != "" {
		target += "?" + rawQuery
	}
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept-Encoding", "identity")
	return req, nil
}

// WhenOnline returns call, or, for an offline gateway, a call that fails
// with ErrOffline without touching the network.
func WhenOnline[T any](offline bool, call Call[T]) Call[T] {
	if !offline {
		return call
	}
	return func(context.Context) (T, error) {
		var zero T
		return zero, ErrOffline
	}
}
