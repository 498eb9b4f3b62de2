// Package reqinfo carries what a handler learned about a request (which
// route it was, how it was answered) back to the middleware that logs and
// counts it, through the request's context.
package reqinfo

import "context"

// Info is filled in by handlers; the zero value means "other, unknown".
type Info struct {
	Route  string // bounded route label, e.g. "resolve", "api_tree"
	Result string // bounded result label, e.g. "hit", "miss", "error"
	// Mode is how the request reached the gateway: "mirror" (origin-form),
	// "proxy" (CONNECT or an absolute URL) or "mitm" (decoded from an
	// intercepted CONNECT).
	Mode string
	// Status is the status answered on a hijacked connection, which the
	// edge cannot see.
	Status int
	// Worker is the name of the worker key the request came with, if any.
	Worker string
	// Detail is a short human text for the log line (never a secret).
	Detail string
}

type key struct{}

// New returns a context carrying a fresh Info and the Info itself.
func New(ctx context.Context) (context.Context, *Info) {
	info := &Info{}
	return context.WithValue(ctx, key{}, info), info
}

// From returns the Info in ctx, or a throwaway one so that handlers never
// need to check for nil.
func From(ctx context.Context) *Info {
	if info, ok := ctx.Value(key{}).(*Info); ok {
		return info
	}
	return &Info{}
}

// Set records the route and result.
func Set(ctx context.Context, route, result string) {
	info := From(ctx)
	info.Route, info.Result = route, result
}
