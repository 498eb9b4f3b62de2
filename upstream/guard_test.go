package upstream

import (
	"context"
	"net"
	"net/netip"
	"testing"

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

	strict := NewGuard(false)
	strict.SetListenAddr(self.Addr())
	exempt := strict.Exempting(open, self.Addr().String(), "no-port")
	lax := NewGuard(true)
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
