package upstream

import (
	"context"
	"net"
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
