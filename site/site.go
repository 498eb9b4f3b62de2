// Package site is the contract between the edge (package proxy) and the
// hubs it serves. A hub registers as a Site: its name, the hosts and paths
// it answers, its content hosts, its handler, and the endpoint its
// credential is bound to. The edge routes by these values alone, so a new
// hub is a new package that returns a Site and one line of wiring; the edge
// itself names no hub.
package site

import (
	"net/http"
	"net/url"

	"github.com/modelgate/modelgate/hostmatch"
)

// Site is one hub as the edge sees it.
type Site struct {
	// Name names the site in logs and is the clientauth scope a worker
	// key needs to use it ("huggingface", "civitai").
	Name string
	// Title is how answers name the site to a person ("CivitAI").
	Title string

	// Paths reports whether a path is one of the site's routes: an
	// origin-form request to the gateway (mirror mode) goes to the first
	// site whose Paths accepts it, and a proxy-mode request to one of
	// Hosts goes to Handler only if Paths accepts it (otherwise it is
	// relayed like any other host's). A site that accepts every path
	// answers everything the sites before it do not.
	Paths func(path string) bool
	// Hosts are the names answered as the site itself in proxy mode
	// (intercepted, or named by an absolute URL); no port means any.
	Hosts hostmatch.Patterns
	// Handler answers the site's routes, in both modes alike, so a blob
	// cached through one mode is a hit in the other. The edge has taken
	// the worker key off the request (clientauth.FromContext has it) and
	// decided its principal (authinject.PrincipalFrom) before calling it;
	// the handler checks the key's scope and limits itself, to answer
	// refusals in its own protocol.
	Handler http.Handler

	// CDNHosts are hosts that serve the site's content (CDN, storage,
	// images): never sent a credential of the gateway's.
	CDNHosts hostmatch.Patterns
	// ServeCDN answers a request to one of CDNHosts (its principal
	// decided as for Handler), from the cache when it can, otherwise
	// through forward, which relays it without any credential. Nil: the
	// edge relays every such request without credentials itself, for
	// keys whose scopes include Name.
	ServeCDN func(w http.ResponseWriter, r *http.Request, forward http.Handler)
	// SelfAuthHosts are content hosts the site answers itself with
	// credentials the gateway issued (the Hub's Xet CAS and transfer
	// hosts: the gateway's Xet tokens and signed xorb URLs). They are
	// matched before CDNHosts. ServeSelfAuth gets such a request as the
	// worker sent it, Authorization included (a worker key already taken
	// off), with no principal: the gateway's upstream credentials never
	// apply there, the handler checks its own. The edge answers only keys
	// whose scopes include Name.
	SelfAuthHosts hostmatch.Patterns
	ServeSelfAuth http.Handler

	// Endpoint is where the site's requests really go; the gateway's
	// credential for the site is the one bound to its host. The edge asks
	// whether the gateway holds one to decide a request's principal.
	Endpoint *url.URL
}

// AllPaths is Paths for a site that answers every path it is given.
func AllPaths(string) bool { return true }

// Hosts builds a site's host list from fixed names and its endpoint's
// host. The endpoint's name is left out when it cannot be a host pattern
// (an IPv6 literal, which no CONNECT target matches anyway).
func Hosts(endpoint *url.URL, names ...string) hostmatch.Patterns {
	ps := hostmatch.MustParse(names...)
	if endpoint != nil {
		if p, err := hostmatch.Parse(endpoint.Hostname()); err == nil {
			ps = append(ps, p)
		}
	}
	return ps
}
