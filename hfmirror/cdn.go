package hfmirror

import (
	"net/http"

	"github.com/modelgate/modelgate/blobhttp"
	"github.com/modelgate/modelgate/cache"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/reqinfo"
)

// ServeCDN answers a request that a worker sent straight to one of the
// Hub's CDN hosts (forward-proxy mode, with a signed URL it got elsewhere).
// The request's principal must already be decided (as for the Hub's own
// routes). When the path names content the cache holds and the caller may
// have it (maySeeByDigest), it is served from disk, whatever the signature
// says; otherwise the request goes to forward, which sends it on without
// any credential.
func (m *Mirror) ServeCDN(w http.ResponseWriter, r *http.Request, forward http.Handler) {
	info := reqinfo.From(r.Context())
	info.Route = "cdn"
	if k := clientauth.FromContext(r.Context()); k != nil && !k.Allows(clientauth.ScopeHuggingFace) {
		info.Result = "forbidden"
		writeError(w, http.StatusForbidden, "", "this worker key may not use Hugging Face")
		return
	}
	sha, ok := hfhub.CDNContentSHA256(r.URL.EscapedPath())
	d, _ := cache.NewDigest(cache.SHA256, sha)
	// A blob is handed out by content id only to a caller that may read a
	// repo the gateway saw holding it under the caller's own principal;
	// anyone else goes to the CDN with the signed URL they hold (without
	// any credential), which decides for itself.
	if ok && (r.Method == http.MethodGet || r.Method == http.MethodHead) && m.maySeeByDigest(r, d) {
		b, err := m.Blobs.Open(d)
		if err == nil {
			info.Result = "hit"
			// Serve closes the blob it asked for; one it did not ask
			// for (HEAD, 304, 416) is closed here.
			handed := false
			defer func() {
				if !handed {
					b.Close()
				}
			}()
			get := func() (*cache.Blob, cache.Result, error) { handed = true; return b, cache.Hit, nil }
			blobhttp.Answer(w, r, b.Size, `"`+sha+`"`, get, m.Metrics, func(error) {})
			return
		}
	}
	info.Result = "passthrough"
	forward.ServeHTTP(w, r)
}
