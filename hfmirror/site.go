package hfmirror

import (
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/site"
)

// Site registers the mirror with the edge: the Hub's own hosts (and the
// configured endpoint's) with every path, and the CDN and Xet hosts
// (*.hf.co, the legacy cdn-lfs names) answered by ServeCDN. Its paths
// accept everything, so it goes after the sites with narrower routes.
func (m *Mirror) Site() site.Site {
	return site.Site{
		Name:     clientauth.ScopeHuggingFace,
		Title:    "Hugging Face",
		Paths:    site.AllPaths,
		Hosts:    site.Hosts(m.Endpoint, "huggingface.co", "hf.co"),
		Handler:  m,
		CDNHosts: site.Hosts(nil, "*.hf.co", "cdn-lfs.huggingface.co", "cdn-lfs-us-1.huggingface.co", "cdn-lfs-eu-1.huggingface.co"),
		ServeCDN: m.ServeCDN,
		Endpoint: m.Endpoint,
	}
}
