package hfmirror

import (
	"net/http"

	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/hfhub"
	"github.com/modelgate/modelgate/site"
)

// Site registers the mirror with the edge: the Hub's own hosts (and the
// configured endpoint's) with every path, and the CDN hosts (*.hf.co, the
// legacy cdn-lfs names) answered by ServeCDN. Its paths accept everything,
// so it goes after the sites with narrower routes. When the gateway serves
// Xet, the Xet CAS and transfer hosts (under *.hf.co too) are answered by
// ServeXetHost instead, with the gateway's own Xet tokens and signed URLs;
// otherwise they are CDN hosts like the rest, relayed without credentials.
func (m *Mirror) Site() site.Site {
	s := site.Site{
		Name:     clientauth.ScopeHuggingFace,
		Title:    "Hugging Face",
		Paths:    site.AllPaths,
		Hosts:    site.Hosts(m.Endpoint, "huggingface.co", "hf.co"),
		Handler:  m,
		CDNHosts: site.Hosts(nil, "*.hf.co", "cdn-lfs.huggingface.co", "cdn-lfs-us-1.huggingface.co", "cdn-lfs-eu-1.huggingface.co"),
		ServeCDN: m.ServeCDN,
		Endpoint: m.Endpoint,
	}
	if m.Xet != nil && m.XetPolicy.Any() {
		s.SelfAuthHosts = site.Hosts(nil, hfhub.XetHosts...)
		s.ServeSelfAuth = http.HandlerFunc(m.ServeXetHost)
	}
	return s
}
