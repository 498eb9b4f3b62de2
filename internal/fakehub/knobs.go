package fakehub

// CorruptBlob makes the CDN serve the blob with the same length but its last
// 4 KiB flipped, on full and ranged requests, until switched off.
func (h *Hub) CorruptBlob(sha256hex string, on bool) { h.faults.Corrupt(sha256hex, on) }

// ThrottleBlob limits CDN bodies of the blob to about bytesPerSec, written in
// small flushed chunks so clients see steady progress; 0 removes the limit.
// The rate is re-read per chunk, so it also affects responses in flight.
func (h *Hub) ThrottleBlob(sha256hex string, bytesPerSec int) {
	h.faults.Throttle(sha256hex, bytesPerSec)
}

// GateBlob makes every full (non-Range) CDN GET of the blob that starts
// before release is called write its first `after` bytes, flush, and block
// until release() (or until the request's context ends, or the test ends).
// release is idempotent and also removes the gate for later requests. Ranged
// GETs are not gated.
func (h *Hub) GateBlob(sha256hex string, after int64) (release func()) {
	return h.faults.Gate(sha256hex, after)
}
