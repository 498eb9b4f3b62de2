// Package redact keeps secrets out of log lines. Its slog.Handler rewrites
// every record before it is written: attributes whose key names a
// credential (Authorization, Proxy-Authorization, tokens, signatures) are
// replaced by "***", and credential-bearing query parameters and header
// values inside any string (an error text quoting a URL, a path) are
// masked. It is the last line of defence; the code does not log secrets
// on purpose.
package redact

import (
	"context"
	"log/slog"
	"regexp"
	"strings"
)

// Mask is what a secret becomes.
const Mask = "***"

// secretKeys are attribute keys (lower case) whose values are secrets.
var secretKeys = map[string]bool{
	"authorization": true, "proxy-authorization": true, "proxy_authorization": true,
	"token": true, "api_key": true, "apikey": true, "key": true, "secret": true,
	"password": true, "cookie": true, "set-cookie": true,
	"x-xet-access-token": true, "accesstoken": true,
}

var (
	// Query parameters that carry credentials or signatures: CivitAI's
	// token, S3/CloudFront/R2 signatures and policies, B2's Authorization
	// parameter, Xet access tokens.
	queryParam = regexp.MustCompile(`(?i)([?&;](?:token|authorization|signature|x-amz-signature|x-amz-credential|x-amz-security-token|policy|key-pair-id|x-xet-[a-z-]*token[a-z-]*|access_token|api_key)=)[^&\s"']*`)
	// Header-style "Authorization: Bearer xyz" or "Bearer xyz" in text.
	bearer = regexp.MustCompile(`(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+`)
	// Credentials that announce themselves by prefix: Hugging Face tokens,
	// modelgate worker and admin keys, and the Xet tokens it issues.
	prefixed = regexp.MustCompile(`\b(hf_|mgw_|mga_|mgx1\.)[A-Za-z0-9_.-]{8,}`)
)

// String masks the secrets inside s.
func String(s string) string {
	if s == "" {
		return s
	}
	s = queryParam.ReplaceAllString(s, "${1}"+Mask)
	s = bearer.ReplaceAllString(s, "${1} "+Mask)
	return prefixed.ReplaceAllString(s, "${1}"+Mask)
}

// Handler is an slog.Handler that redacts before passing records on.
type Handler struct {
	next slog.Handler
}

// NewHandler wraps next.
func NewHandler(next slog.Handler) *Handler { return &Handler{next: next} }

// Enabled reports whether next handles level.
func (h *Handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

// Handle redacts the record's message and attributes.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, String(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(attr(a))
		return true
	})
	return h.next.Handle(ctx, out)
}

// WithAttrs redacts attributes added to a derived logger.
func (h *Handler) WithAttrs(as []slog.Attr) slog.Handler {
	clean := make([]slog.Attr, len(as))
	for i, a := range as {
		clean[i] = attr(a)
	}
	return &Handler{next: h.next.WithAttrs(clean)}
}

// WithGroup opens a group on the wrapped handler.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{next: h.next.WithGroup(name)}
}

func attr(a slog.Attr) slog.Attr {
	if secretKeys[strings.ToLower(a.Key)] {
		return slog.String(a.Key, Mask)
	}
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, String(v.String()))
	case slog.KindGroup:
		g := v.Group()
		clean := make([]any, len(g))
		for i, ga := range g {
			clean[i] = attr(ga)
		}
		return slog.Group(a.Key, clean...)
	case slog.KindAny:
		// Errors and other values print through their own String/Error:
		// redact the rendered text.
		if err, ok := v.Any().(error); ok {
			return slog.String(a.Key, String(err.Error()))
		}
		return slog.String(a.Key, String(v.String()))
	}
	return slog.Attr{Key: a.Key, Value: v}
}
