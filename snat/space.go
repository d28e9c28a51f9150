package snat

import (
	"math/bits"
	"slices"

	"github.com/ananta-go/ananta"
)

// Range sizes handed out by Space.
const (
	// MinRangeSize is the smallest range a Space hands out: 8 ports, the
	// allocation unit.
	MinRangeSize = ananta.MinSNATPortsPerDIP
	// MaxRangeSize is the largest: 32768 ports (only 32768-65535 fits).
	MaxRangeSize = ananta.MaxSNATPortsPerDIP
)

const (
	unitShift = 3                                 // log2(MinRangeSize)
	numUnits  = 65536 >> unitShift                // 8-port units of the whole port number space
	maxOrder  = 12                                // log2(MaxRangeSize / MinRangeSize)
	numWords  = 260                               // words of one per-order bitmap set, see wordOff
	firstUnit = ananta.FirstSNATPort >> unitShift // first unit SNAT may use
)

// wordOff[k] is the index of the first word of order k's bitmap in a
// per-order bitmap set: order k has numUnits>>k blocks, one bit each.
var wordOff = func() (o [maxOrder + 2]int) {
	for k := 0; k <= maxOrder; k++ {
		o[k+1] = o[k] + max(1, (numUnits>>k)/64)
	}
	return o
}()

// Space is the SNAT port space of one VIP: ports FirstSNATPort..LastSNATPort
// minus reserved ranges, handed out as aligned power-of-two ranges of
// MinRangeSize to MaxRangeSize ports by a buddy allocator.
//
// The allocator works in 8-port units. A unit that holds any reserved port
// (or any port below FirstSNATPort) is never handed out, so no range ever
// overlaps a reserved port. Free space is kept as maximal aligned free
// blocks per size ("order"); freeing a range merges it with its free buddy,
// repeatedly. Because merging is eager, the free blocks are a function of
// the reserved ranges and the set of allocated ranges alone, not of the
// order of the calls that produced them: two Spaces with the same reserved
// ranges and the same allocated ranges behave identically from then on.
//
// Allocate is deterministic: it takes the smallest free block that fits
// (best fit, which keeps large blocks whole) and, among blocks of that size,
// the one at the lowest address; a larger block is split and its lower half
// kept, so the range returned is the lowest-addressed one of the block.
// There is no randomness, no map and no clock inside.
//
// A Space is not safe for concurrent use.
type Space struct {
	reserved []ananta.PortRange           // sorted by First
	usable   [numUnits / 64]uint64        // bit u: unit u holds no reserved port
	free     [numWords]uint64             // bit b of order k: block (k, b) is a free block
	freeSum  [(numWords + 63) / 64]uint64 // bit w: free[w] != 0
	alloc    [numWords]uint64             // bit b of order k: block (k, b) is allocated
	nfree    [maxOrder + 1]int            // free blocks per order
	freeP    int                          // free ports
	allocP   int                          // allocated ports
	nalloc   int                          // allocated ranges
}

// NewSpace returns the port space FirstSNATPort..LastSNATPort minus the
// reserved ranges. Reserved ranges may be given in any order and may reach
// below FirstSNATPort; there may be at most ananta.MaxReservedRanges of
// them. It returns an error matching ErrInvalidRange for a range with
// First == 0 or Last < First, ErrOverlap for two overlapping reserved
// ranges and ErrInvalidConfig for too many.
func NewSpace(reserved []ananta.PortRange) (*Space, error) {
	rs, err := checkReserved(reserved)
	if err != nil {
		return nil, err
	}
	s := &Space{reserved: rs}
	for u := firstUnit; u < numUnits; u++ {
		s.usable[u/64] |= 1 << (u % 64)
	}
	for _, r := range rs {
		for u := int(r.First) >> unitShift; u <= int(r.Last)>>unitShift; u++ {
			s.usable[u/64] &^= 1 << (u % 64)
		}
	}
	// The free blocks are the maximal aligned usable blocks: left to right,
	// take the largest aligned block starting here that is all usable (what
	// freeing every usable unit one by one with merging would give).
	for u := firstUnit; u < numUnits; {
		if !s.usableUnit(u) {
			u++
			continue
		}
		k := min(maxOrder, bits.TrailingZeros(uint(u)))
		for !s.usableRun(u, 1<<k) {
			k--
		}
		s.setFree(k, u>>k, true)
		s.freeP += MinRangeSize << k
		u += 1 << k
	}
	return s, nil
}

// usableRun reports whether the n units from u are all usable; u is
// aligned to n, a power of two.
func (s *Space) usableRun(u, n int) bool {
	if n >= 64 {
		for w := u / 64; w < (u+n)/64; w++ {
			if s.usable[w] != ^uint64(0) {
				return false
			}
		}
		return true
	}
	m := (uint64(1)<<n - 1) << (u % 64)
	return s.usable[u/64]&m == m
}

// checkReserved validates reserved ranges and returns a sorted copy.
func checkReserved(reserved []ananta.PortRange) ([]ananta.PortRange, error) {
	if len(reserved) > ananta.MaxReservedRanges {
		return nil, errorf(ErrInvalidConfig, "%d reserved ranges exceed the limit of %d", len(reserved), ananta.MaxReservedRanges)
	}
	rs := slices.Clone(reserved)
	for _, r := range rs {
		if r.First == 0 || r.Last < r.First {
			return nil, errorf(ErrInvalidRange, "reserved range %s: want 1 <= first <= last", r)
		}
	}
	slices.SortFunc(rs, func(a, b ananta.PortRange) int { return int(a.First) - int(b.First) })
	for i := 1; i < len(rs); i++ {
		if rs[i].First <= rs[i-1].Last {
			return nil, errorf(ErrOverlap, "reserved ranges %s and %s overlap", rs[i-1], rs[i])
		}
	}
	return rs, nil
}

func (s *Space) usableUnit(u int) bool { return s.usable[u/64]&(1<<(u%64)) != 0 }

func getBit(set *[numWords]uint64, k, b int) bool {
	return set[wordOff[k]+b/64]&(1<<(b%64)) != 0
}

func setBit(set *[numWords]uint64, k, b int, v bool) {
	if v {
		set[wordOff[k]+b/64] |= 1 << (b % 64)
	} else {
		set[wordOff[k]+b/64] &^= 1 << (b % 64)
	}
}

func (s *Space) setFree(k, b int, v bool) {
	w := wordOff[k] + b/64
	if v {
		s.free[w] |= 1 << (b % 64)
		s.freeSum[w/64] |= 1 << (w % 64)
		s.nfree[k]++
	} else {
		s.free[w] &^= 1 << (b % 64)
		if s.free[w] == 0 {
			s.freeSum[w/64] &^= 1 << (w % 64)
		}
		s.nfree[k]--
	}
}

// insertFree marks block (k, b) free, merging it with free buddies.
func (s *Space) insertFree(k, b int) {
	for k < maxOrder && getBit(&s.free, k, b^1) {
		s.setFree(k, b^1, false)
		b >>= 1
		k++
	}
	s.setFree(k, b, true)
}

// lowestFree returns the lowest free block of order k; nfree[k] must be > 0.
// The summary bitmap finds the first non-empty word without a scan.
func (s *Space) lowestFree(k int) int {
	lo, hi := wordOff[k], wordOff[k+1] // words [lo, hi) hold order k
	for sw := lo / 64; sw <= (hi-1)/64; sw++ {
		x := s.freeSum[sw]
		if sw == lo/64 {
			x &= ^uint64(0) << (lo % 64)
		}
		if sw == (hi-1)/64 {
			x &= ^uint64(0) >> (63 - (hi-1)%64)
		}
		if x != 0 {
			w := sw*64 + bits.TrailingZeros64(x)
			return (w-lo)*64 + bits.TrailingZeros64(s.free[w])
		}
	}
	panic("snat: free-block count out of sync") // unreachable: nfree tracks the bits
}

// sizeOrder returns the order of a range size, or false when size is not a
// power of two from MinRangeSize to MaxRangeSize.
func sizeOrder(size int) (int, bool) {
	if size < MinRangeSize || size > MaxRangeSize || size&(size-1) != 0 {
		return 0, false
	}
	return bits.TrailingZeros(uint(size)) - unitShift, true
}

// rangeBlock returns the block (order, index) of r, or an error matching
// ErrInvalidRange when r is not an aligned power-of-two range of
// MinRangeSize to MaxRangeSize ports.
func rangeBlock(r ananta.PortRange) (k, b int, err error) {
	n := r.Len()
	k, ok := sizeOrder(n)
	if !ok || int(r.First)%n != 0 {
		return 0, 0, errorf(ErrInvalidRange, "range %s is not an aligned power-of-two range of %d to %d ports", r, MinRangeSize, MaxRangeSize)
	}
	return k, int(r.First) >> (unitShift + k), nil
}

func blockRange(k, b int) ananta.PortRange {
	first := b << (unitShift + k)
	return ananta.PortRange{First: uint16(first), Last: uint16(first + (MinRangeSize << k) - 1)}
}

// Allocate hands out a free range of size ports, aligned to its size: the
// lowest-addressed range of the smallest free block that can hold it. It
// returns an error matching ErrInvalidSize when size is not a power of two
// from MinRangeSize to MaxRangeSize, and ErrExhausted when no such range is
// free. A failed call changes nothing.
func (s *Space) Allocate(size int) (ananta.PortRange, error) {
	k, ok := sizeOrder(size)
	if !ok {
		return ananta.PortRange{}, errorf(ErrInvalidSize, "size %d is not a power of two from %d to %d", size, MinRangeSize, MaxRangeSize)
	}
	for j := k; j <= maxOrder; j++ {
		if s.nfree[j] == 0 {
			continue
		}
		b := s.lowestFree(j)
		s.setFree(j, b, false)
		for ; j > k; j-- {
			b <<= 1
			s.setFree(j-1, b|1, true)
		}
		s.take(k, b)
		return blockRange(k, b), nil
	}
	return ananta.PortRange{}, errorf(ErrExhausted, "no free range of %d ports (%d ports free)", size, s.freeP)
}

func (s *Space) take(k, b int) {
	setBit(&s.alloc, k, b, true)
	n := MinRangeSize << k
	s.freeP -= n
	s.allocP += n
	s.nalloc++
}

// AllocateAt allocates exactly r, for restoring or replaying state. r must
// be an aligned power-of-two range of MinRangeSize to MaxRangeSize ports
// (else an error matching ErrInvalidRange), must not cover a reserved port
// or a port below FirstSNATPort (ErrReserved), and must be entirely free
// (ErrOverlap). A failed call changes nothing.
func (s *Space) AllocateAt(r ananta.PortRange) error {
	k, b, err := rangeBlock(r)
	if err != nil {
		return err
	}
	u0 := b << k
	for u := u0; u < u0+1<<k; u++ {
		if !s.usableUnit(u) {
			return errorf(ErrReserved, "range %s covers reserved ports", r)
		}
	}
	for j := k; j <= maxOrder; j++ {
		bj := b >> (j - k)
		if !getBit(&s.free, j, bj) {
			continue
		}
		s.setFree(j, bj, false)
		for ; j > k; j-- {
			child := b >> (j - 1 - k)
			s.setFree(j-1, child^1, true)
		}
		s.take(k, b)
		return nil
	}
	return errorf(ErrOverlap, "range %s overlaps an allocated range", r)
}

// Free returns an allocated range to the space. r must be exactly a range
// that Allocate or AllocateAt returned and that has not been freed since;
// otherwise Free returns an error matching ErrNotAllocated (or
// ErrInvalidRange for a malformed range) and changes nothing.
func (s *Space) Free(r ananta.PortRange) error {
	k, b, err := rangeBlock(r)
	if err != nil {
		return err
	}
	if !getBit(&s.alloc, k, b) {
		return errorf(ErrNotAllocated, "range %s is not allocated", r)
	}
	setBit(&s.alloc, k, b, false)
	n := MinRangeSize << k
	s.freeP += n
	s.allocP -= n
	s.nalloc--
	s.insertFree(k, b)
	return nil
}

// Lookup returns the allocated range that holds port, if any.
func (s *Space) Lookup(port uint16) (ananta.PortRange, bool) {
	u := int(port) >> unitShift
	for k := 0; k <= maxOrder; k++ {
		if getBit(&s.alloc, k, u>>k) {
			return blockRange(k, u>>k), true
		}
	}
	return ananta.PortRange{}, false
}

// Allocated reports whether port lies in an allocated range.
func (s *Space) Allocated(port uint16) bool {
	_, ok := s.Lookup(port)
	return ok
}

// IsReserved reports whether port is below FirstSNATPort or in a reserved
// range. (A port that shares its 8-port unit with a reserved port is not
// reserved itself, but is never handed out either.)
func (s *Space) IsReserved(port uint16) bool {
	if port < ananta.FirstSNATPort {
		return true
	}
	i, found := slices.BinarySearchFunc(s.reserved, port, func(r ananta.PortRange, p uint16) int { return int(r.First) - int(p) })
	if found {
		return true
	}
	return i > 0 && s.reserved[i-1].Contains(port)
}

// Available returns the number of free ports, which may be spread over
// blocks too small for a given request.
func (s *Space) Available() int { return s.freeP }

// AllocatedPorts returns the number of ports in allocated ranges.
func (s *Space) AllocatedPorts() int { return s.allocP }

// Len returns the number of allocated ranges.
func (s *Space) Len() int { return s.nalloc }

// Largest returns the size of the largest range Allocate could hand out
// now, 0 when the space is full.
func (s *Space) Largest() int {
	for k := maxOrder; k >= 0; k-- {
		if s.nfree[k] > 0 {
			return MinRangeSize << k
		}
	}
	return 0
}

// Reserved returns the reserved ranges, sorted by First.
func (s *Space) Reserved() []ananta.PortRange { return slices.Clone(s.reserved) }

// Ranges returns the allocated ranges in ascending order.
func (s *Space) Ranges() []ananta.PortRange {
	out := make([]ananta.PortRange, 0, s.nalloc)
	for u := 0; u < numUnits; {
		step := 1
		for k := maxOrder; k >= 0; k-- {
			if u%(1<<k) == 0 && getBit(&s.alloc, k, u>>k) {
				out = append(out, blockRange(k, u>>k))
				step = 1 << k
				break
			}
		}
		u += step
	}
	return out
}
