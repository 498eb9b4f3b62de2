package proxy

import (
	"net"
	"strconv"
	"strings"

	"github.com/modelgate/modelgate/hostmatch"
)

// validTarget checks a CONNECT target: host:port with a numeric port from 1
// to 65535 and a host that is an IP literal or a DNS name. It returns the
// host (lower case) and port.
func validTarget(target string) (host, port string, ok bool) {
	h, p, err := net.SplitHostPort(target)
	if err != nil || h == "" {
		return "", "", false
	}
	if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 || strings.HasPrefix(p, "+") {
		return "", "", false
	}
	if net.ParseIP(h) != nil {
		return h, p, true
	}
	h = strings.TrimSuffix(lowerASCII(h), ".")
	if len(h) > 253 {
		return "", "", false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return "", "", false
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", "", false
			}
		}
	}
	return h, p, true
}

// lowerASCII is hostmatch's ASCII-only lower-casing.
func lowerASCII(s string) string { return hostmatch.LowerASCII(s) }
