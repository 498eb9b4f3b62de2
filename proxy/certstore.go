package proxy

import (
	"crypto/tls"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"
)

// certStore caches the leaf certificates signed for intercepted hosts, so a
// CONNECT costs a cache lookup rather than a signature, and a burst of
// CONNECTs to a cold host signs once. It is bounded: the number of distinct
// intercepted host names is small, but must not be able to grow without end.
// It implements goproxy.CertStorage.
type certStore struct {
	cache  *lru.Cache[string, *tls.Certificate]
	flight singleflight.Group
}

func newCertStore(size int) *certStore {
	c, _ := lru.New[string, *tls.Certificate](size) // size > 0: cannot fail
	return &certStore{cache: c}
}

func (s *certStore) Fetch(host string, gen func() (*tls.Certificate, error)) (*tls.Certificate, error) {
	if c, ok := s.cache.Get(host); ok {
		return c, nil
	}
	v, err, _ := s.flight.Do(host, func() (any, error) {
		if c, ok := s.cache.Get(host); ok {
			return c, nil
		}
		c, err := gen()
		if err != nil {
			return nil, err
		}
		s.cache.Add(host, c)
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}
