package civitai

import (
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/site"
)

// Site registers the handler with the edge: the download and /api/v1/
// routes (IsRoute) in mirror mode and on CivitAI's own hosts, and
// CivitAI's other hosts (images, storage) relayed without credentials to
// keys that may use CivitAI.
func (h *Handler) Site() site.Site {
	return site.Site{
		Name:     clientauth.ScopeCivitAI,
		Title:    "CivitAI",
		Paths:    IsRoute,
		Hosts:    site.Hosts(h.Endpoint, "civitai.com", "civitai.red"),
		Handler:  h,
		CDNHosts: site.Hosts(nil, "*.civitai.com"),
		Endpoint: h.Endpoint,
	}
}
