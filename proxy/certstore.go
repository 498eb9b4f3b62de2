package proxy

import (
	"crypto/tls"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"golang.org/x/sync/singleflight"

	"github.com/modelgate/modelgate/mitmca"
)

// renewBefore is how long before a leaf expires it is replaced: leaves
// live mitmca.LeafLifetime (a week), and a worker whose clock runs ahead
// must not see one expire.
const renewBefore = 2 * 24 * time.Hour

// certStore caches the leaf certificates signed for intercepted hosts, so a
// CONNECT costs a cache lookup rather than a signature, and a burst of
// CONNECTs to a cold host signs once. A cached leaf is used only while it
// is well within its validity and was signed by the CA that signs now
// (a rotation switches CAs): otherwise it is signed again. It is bounded:
// the number of distinct intercepted host names is small, but must not be
// able to grow without end.
type certStore struct {
	ca     *mitmca.CA
	now    func() time.Time
	cache  *lru.Cache[string, certEntry]
	flight singleflight.Group
}

type certEntry struct {
	cert *tls.Certificate
	by   *tls.Certificate // the CA that signed it
}

func newCertStore(ca *mitmca.CA, size int, now func() time.Time) *certStore {
	c, _ := lru.New[string, certEntry](size) // size > 0: cannot fail
	if now == nil {
		now = time.Now
	}
	return &certStore{ca: ca, now: now, cache: c}
}

func (s *certStore) usable(e certEntry, now time.Time) bool {
	return e.by == s.ca.Active(now) && now.Before(e.cert.Leaf.NotAfter.Add(-renewBefore))
}

// get returns a valid leaf for host.
func (s *certStore) get(host string) (*tls.Certificate, error) {
	if e, ok := s.cache.Get(host); ok && s.usable(e, s.now()) {
		return e.cert, nil
	}
	v, err, _ := s.flight.Do(host, func() (any, error) {
		now := s.now()
		if e, ok := s.cache.Get(host); ok && s.usable(e, now) {
			return e.cert, nil
		}
		by := s.ca.Active(now)
		c, err := s.ca.SignLeaf(host, now)
		if err != nil {
			return nil, err
		}
		s.cache.Add(host, certEntry{cert: c, by: by})
		return c, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*tls.Certificate), nil
}
