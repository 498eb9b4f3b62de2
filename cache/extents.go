package cache

import "sort"

// extents is the set of byte ranges of a blob that are on disk. A fill that
// writes sequentially only ever grows the first extent; one that fetches
// several upstream ranges in parallel lands bytes out of order, and readers
// wait for the bytes they need, not for a single write offset.
type extents struct {
	// spans are disjoint, non-adjacent and sorted; each is [start, end).
	spans [][2]int64
}

// add records that [off, off+n) is on disk.
func (e *extents) add(off, n int64) {
	if n <= 0 {
		return
	}
	start, end := off, off+n
	i := sort.Search(len(e.spans), func(i int) bool { return e.spans[i][1] >= start })
	j := i
	for j < len(e.spans) && e.spans[j][0] <= end {
		start = min(start, e.spans[j][0])
		end = max(end, e.spans[j][1])
		j++
	}
	merged := append([][2]int64{{start, end}}, e.spans[j:]...)
	e.spans = append(e.spans[:i], merged...)
}

// missing returns the sub-ranges of [a, b) that are not on disk, in order.
func (e *extents) missing(a, b int64) [][2]int64 {
	var out [][2]int64
	i := sort.Search(len(e.spans), func(i int) bool { return e.spans[i][1] > a })
	for ; a < b; i++ {
		if i >= len(e.spans) || e.spans[i][0] >= b {
			out = append(out, [2]int64{a, b})
			break
		}
		if e.spans[i][0] > a {
			out = append(out, [2]int64{a, e.spans[i][0]})
		}
		a = e.spans[i][1]
	}
	return out
}

// availableFrom returns the end of the contiguous bytes on disk starting at
// pos, or pos when the byte at pos is not there yet.
func (e *extents) availableFrom(pos int64) int64 {
	i := sort.Search(len(e.spans), func(i int) bool { return e.spans[i][1] > pos })
	if i < len(e.spans) && e.spans[i][0] <= pos {
		return e.spans[i][1]
	}
	return pos
}
