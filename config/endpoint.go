package config

import (
	"errors"
	"net/url"
	"strings"
)

// Endpoint is an upstream base URL (huggingface.endpoint,
// civitai.endpoint): an absolute http(s) URL without credentials, query or
// fragment, parsed once when the config loads, its trailing "/" dropped.
// The zero Endpoint is unset and fails validation.
type Endpoint struct{ u *url.URL }

const endpointWant = "must be an absolute http(s) URL"

// ParseEndpoint parses and checks an endpoint. Its errors echo only the
// scheme, host and path (user info or a query may hold a credential).
func ParseEndpoint(s string) (Endpoint, error) {
	s = strings.TrimRight(strings.TrimSpace(s), "/")
	if msg := checkURL(s, endpointWant, false, "http", "https"); msg != "" {
		return Endpoint{}, errors.New(msg)
	}
	u, err := url.Parse(s)
	if err != nil {
		return Endpoint{}, errors.New(endpointWant)
	}
	return Endpoint{u: u}, nil
}

// MustEndpoint is ParseEndpoint for URLs written in the code and tests; it
// panics on a bad one.
func MustEndpoint(s string) Endpoint {
	e, err := ParseEndpoint(s)
	if err != nil {
		panic("config: endpoint: " + err.Error())
	}
	return e
}

// URL returns a copy of the parsed URL, for the caller to extend; nil when
// unset.
func (e Endpoint) URL() *url.URL {
	if e.u == nil {
		return nil
	}
	c := *e.u
	return &c
}

// IsSet reports whether the endpoint holds a URL.
func (e Endpoint) IsSet() bool { return e.u != nil }

// String is the URL as configured (without a trailing "/"); "" when unset.
func (e Endpoint) String() string {
	if e.u == nil {
		return ""
	}
	return e.u.String()
}

// UnmarshalText parses and checks the URL.
func (e *Endpoint) UnmarshalText(text []byte) error {
	v, err := ParseEndpoint(string(text))
	if err != nil {
		return err
	}
	*e = v
	return nil
}

// MarshalText writes the URL.
func (e Endpoint) MarshalText() ([]byte, error) { return []byte(e.String()), nil }
