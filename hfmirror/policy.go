package hfmirror

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/modelgate/modelgate/authinject"
	"github.com/modelgate/modelgate/clientauth"
	"github.com/modelgate/modelgate/hfhub"
)

// refusedError is a request the gateway's access policy stopped on its
// way upstream: the Hub redirected it to a repo (a renamed repo's new
// name) that the worker may not read. It maps to 403.
type refusedError struct{ msg string }

func (e *refusedError) Error() string { return e.msg }

// Permanent tells the cache not to retry a fill the policy refused.
func (e *refusedError) Permanent() bool { return true }

// withRedirectPolicy returns ctx carrying the access policy for the
// worker key k (nil: none) as authinject's redirect check: every hop the
// Hub redirects a request to is parsed as a Hub route and checked like
// the route the worker asked for, before it is sent with any credential.
// The Hub redirects a renamed repo's old name to its new one; without
// this, the deny list and a key's repo patterns would only ever see the
// old name.
func (m *Mirror) withRedirectPolicy(ctx context.Context, k *clientauth.Key) context.Context {
	return authinject.WithRedirectCheck(ctx, func(next *http.Request) error {
		route, onHub := m.hubRoute(next.Method, next.URL)
		if !onHub {
			return nil // another host (a CDN): it names no repo of the Hub's
		}
		switch {
		case route.err != nil:
			var bad *hfhub.BadRequestError
			if errors.As(route.err, &bad) {
				return &refusedError{msg: "the hub redirected to an invalid route: " + bad.Reason}
			}
			return nil // not a repo route (a login page, ...)
		case route.Kind == hfhub.OtherAPI:
			return &refusedError{msg: "the hub redirected to an API route the gateway does not forward"}
		}
		if msg := m.refusal(k, route.Route); msg != "" {
			return &refusedError{msg: msg}
		}
		return nil
	})
}

// parsedRoute is a Hub route read from an upstream URL, or why it is none.
type parsedRoute struct {
	hfhub.Route
	err error
}

// hubRoute parses u as a route on the Hub endpoint (whose path prefix, if
// any, is removed); onHub is false when u is on another host.
func (m *Mirror) hubRoute(method string, u *url.URL) (parsedRoute, bool) {
	if authinject.CanonicalHost(u) != authinject.CanonicalHost(m.Endpoint) {
		return parsedRoute{}, false
	}
	esc, ok := strings.CutPrefix(u.EscapedPath(), strings.TrimSuffix(m.Endpoint.EscapedPath(), "/"))
	if !ok {
		return parsedRoute{err: hfhub.ErrNotHubRoute}, true
	}
	plain, err := url.PathUnescape(esc)
	if err != nil {
		return parsedRoute{err: &hfhub.BadRequestError{Reason: "invalid percent-encoding"}}, true
	}
	r, err := hfhub.ParseRoute(method, &url.URL{Path: plain, RawPath: esc})
	return parsedRoute{Route: r, err: err}, true
}

// canonicalRepo returns the repo a Hub answer is really about: the repo
// its last hop (resp.Request) named when it is a route of the same kind
// family, else asked. What the gateway learns through a renamed repo's
// old name is kept under the new name, so that the old name never
// answers from the index without the policy seeing the new one.
func (m *Mirror) canonicalRepo(asked hfhub.Repo, resp *http.Response) hfhub.Repo {
	if resp == nil || resp.Request == nil {
		return asked
	}
	route, onHub := m.hubRoute(resp.Request.Method, resp.Request.URL)
	if !onHub || route.err != nil || route.Repo.ID == "" {
		return asked
	}
	return route.Repo
}

// withWorker makes sure r's principal names its worker key: calls shared
// between requests (origin.Shared) are shared per principal and worker
// key, since the redirect policy runs with the leader's key.
func withWorker(r *http.Request) *http.Request {
	p := authinject.PrincipalFrom(r.Context())
	k := clientauth.FromContext(r.Context())
	if k == nil || p.Worker == k.Name {
		return r
	}
	p.Worker = k.Name
	return r.WithContext(authinject.WithPrincipal(r.Context(), p))
}
