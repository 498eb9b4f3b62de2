package upstream

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestPrivateAddrCoversEverySpecialPurposeRange(t *testing.T) {
	tests := []struct {
		addr    string
		private bool
	}{
		{"127.0.0.1", true},
		{"10.1.2.3", true},
		{"169.254.169.254", true},
		{"100.64.0.1", true},
		{"192.0.0.1", true},         // IETF protocol assignments (192.0.0.0/24)
		{"192.0.0.170", true},       // NAT64 discovery, inside 192.0.0.0/24
		{"198.18.0.1", true},        // benchmarking (198.18.0.0/15)
		{"198.19.255.254", true},    // its upper half
		{"240.0.0.1", true},         // reserved (240.0.0.0/4)
		{"255.255.255.255", true},   // broadcast, inside 240.0.0.0/4
		{"64:ff9b::a00:1", true},    // NAT64 of 10.0.0.1 (64:ff9b::/96)
		{"64:ff9b::7f00:1", true},   // NAT64 of 127.0.0.1
		{"::ffff:198.18.0.1", true}, // mapped
		{"fc00::1", true},
		{"192.0.2.1", false},  // documentation range, publicly routed nowhere but not internal
		{"198.20.0.1", false}, // just past 198.18.0.0/15
		{"192.0.1.1", false},  // just before 192.0.0.0/24
		{"8.8.8.8", false},
		{"2606:4700::1111", false},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			assert.Equal(t, tt.private, PrivateAddr(netip.MustParseAddr(tt.addr)))
		})
	}
}
