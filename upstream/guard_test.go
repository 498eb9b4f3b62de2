package upstream

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestGuardDialsOnlyAllowedAddresses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	self, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer self.Close()
	open := ln.Addr().String()

	strict := NewGuard(false, nil)
	strict.SetListenAddr(self.Addr())
	exempt := strict.Exempting(open, self.Addr().String(), "no-port")
	lax := NewGuard(true, nil)
	lax.SetListenAddr(self.Addr())
	// Peers: loopback only (as in the tests), even on a guard that
	// reaches private addresses; the exemptions do not carry over.
	peers := lax.Exempting("192.0.2.1:80").Only([]netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")})
	noPeers := strict.Only(nil)
	var d net.Dialer
	tests := []struct {
		name  string
		guard *Guard
		addr  string
		want  error
	}{
		{"loopback refused", strict, open, ErrPrivateTarget},
		{"metadata service refused", strict, "169.254.169.254:80", ErrPrivateTarget},
		{"localhost by name refused", strict, "localhost:" + portOf(open), ErrPrivateTarget},
		{"an exempt name is dialled", exempt, open, nil},
		{"the view does not change the guard", strict, open, ErrPrivateTarget},
		{"the gateway itself, even exempt", exempt, self.Addr().String(), ErrSelfTarget},
		{"private allowed", lax, open, nil},
		{"the gateway itself, private allowed", lax, self.Addr().String(), ErrSelfTarget},
		{"a peer inside cluster.peers", peers, open, nil},
		{"a private address outside cluster.peers", peers, "10.1.2.3:8080", ErrOutsidePeers},
		{"the metadata service, outside cluster.peers", peers, "169.254.169.254:80", ErrOutsidePeers},
		{"a public address, outside cluster.peers", peers, "192.0.2.1:80", ErrOutsidePeers},
		{"the gateway itself, inside cluster.peers", peers, self.Addr().String(), ErrSelfTarget},
		{"no cluster.peers: nothing", noPeers, open, ErrOutsidePeers},
		// The dialler reads "08080" as 8080: so must the guard.
		{"the gateway itself, a zero-padded port", lax, "127.0.0.1:0" + portOf(self.Addr().String()), ErrSelfTarget},
		{"the gateway itself, exempt, a zero-padded port", exempt, "127.0.0.1:00" + portOf(self.Addr().String()), ErrSelfTarget},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.guard.Dial(d.DialContext)(context.Background(), "tcp", tt.addr)
			if tt.want == nil {
				require.NoError(t, err)
				c.Close()
				return
			}
			assert.ErrorIs(t, err, tt.want)
			var p interface{ Permanent() bool }
			assert.ErrorAs(t, err, &p, "a refusal is not retried")
		})
	}
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// upstream.resolve sends a name's connections to another address, for
// every view of the guard, and the guard checks that address: a private
// target is dialled only where it is exempt (or private targets allowed),
// never because of the name it stands for.
func TestGuardResolveOverride(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan struct{}, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- struct{}{}
			c.Close()
		}
	}()
	self, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer self.Close()
	target := ln.Addr().String()
	resolve := map[string]string{"CDN-LFS.hf.test:443": target, "self.hf.test:443": self.Addr().String()}

	strict := NewGuard(false, resolve)
	strict.SetListenAddr(self.Addr())
	lax := NewGuard(true, resolve)
	lax.SetListenAddr(self.Addr())
	var d net.Dialer
	tests := []struct {
		name  string
		guard *Guard
		addr  string
		want  error
	}{
		{"a private target exempt by address", strict.Exempting(target), "cdn-lfs.hf.test:443", nil},
		{"the name is matched case-insensitively", strict.Exempting(target), "Cdn-Lfs.HF.test:443", nil},
		{"a private target not exempt", strict, "cdn-lfs.hf.test:443", ErrPrivateTarget},
		{"exempting the name does not exempt its target", strict.Exempting("cdn-lfs.hf.test:443"), "cdn-lfs.hf.test:443", ErrPrivateTarget},
		{"private targets allowed", lax, "cdn-lfs.hf.test:443", nil},
		{"never the gateway itself", lax.Exempting(self.Addr().String()), "self.hf.test:443", ErrSelfTarget},
		// A port spelled another way is the same port: the override holds.
		{"a zero-padded port takes the override", strict.Exempting(target), "cdn-lfs.hf.test:0443", nil},
		{"a zero-padded port to the gateway itself", lax, "self.hf.test:00443", ErrSelfTarget},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := tt.guard.Dial(d.DialContext)(context.Background(), "tcp", tt.addr)
			if tt.want != nil {
				assert.ErrorIs(t, err, tt.want)
				return
			}
			require.NoError(t, err)
			c.Close()
			select {
			case <-accepted:
			case <-time.After(5 * time.Second):
				t.Fatal("the override's target was not dialled")
			}
		})
	}
	// The proxy's CONNECT pre-check sees the same target.
	_, err = strict.Resolve(context.Background(), "cdn-lfs.hf.test", "443")
	assert.ErrorIs(t, err, ErrPrivateTarget)
	ip, err := lax.Resolve(context.Background(), "cdn-lfs.hf.test", "443")
	require.NoError(t, err)
	assert.True(t, ip.IsLoopback())
}
