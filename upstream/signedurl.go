package upstream

import (
	"context"
	"net/http"
	"net/url"
	"sync"
)

// SignedURL shares one signed download URL (a CDN or storage location that
// carries its own signature and expiry) among all the requests of one
// fill: a parallel fill makes many, and resolving the URL for each would
// cost the origin a round trip per piece. When the host refuses the URL
// (it expired), Renew resolves it again once for everyone: the callers
// that saw the same refusal get the one new URL.
type SignedURL struct {
	// Resolve asks the origin for a URL. It may return a nil URL with no
	// error: the origin serves the file itself (callers go to it).
	Resolve func(ctx context.Context) (*url.URL, error)

	mu   sync.Mutex
	u    *url.URL
	gen  int // how many times Resolve succeeded
	have bool
}

// Get returns the current URL and its generation, resolving it first if
// nobody has yet.
func (s *SignedURL) Get(ctx context.Context) (*url.URL, int, error) {
	return s.get(ctx, -1)
}

// Renew returns a URL to use instead of generation gen, which the host
// refused: a new one, resolved now unless another caller already did.
func (s *SignedURL) Renew(ctx context.Context, gen int) (*url.URL, int, error) {
	return s.get(ctx, gen)
}

func (s *SignedURL) get(ctx context.Context, stale int) (*url.URL, int, error) {
	// Held across Resolve: the callers that arrive meanwhile wait for its
	// answer instead of each resolving their own.
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.have && s.gen != stale {
		return s.u, s.gen, nil
	}
	u, err := s.Resolve(ctx)
	if err != nil {
		return nil, 0, err
	}
	s.u, s.have = u, true
	s.gen++
	return s.u, s.gen, nil
}

// SignatureRefused reports whether status is how a CDN or object store
// refuses a signed URL that expired (or whose signature it no longer
// accepts): resolving a new URL may help.
func SignatureRefused(status int) bool {
	return status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusGone
}
