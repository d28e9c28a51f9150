package snat

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/ananta-go/ananta"
)

func pr(first, last int) ananta.PortRange {
	return ananta.PortRange{First: uint16(first), Last: uint16(last)}
}

func mustSpace(t testing.TB, reserved ...ananta.PortRange) *Space {
	t.Helper()
	s, err := NewSpace(reserved)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSpaceBasics(t *testing.T) {
	s := mustSpace(t)
	if got, want := s.Available(), 65536-1024; got != want {
		t.Fatalf("Available = %d, want %d", got, want)
	}
	for _, tc := range []struct {
		size int
		want ananta.PortRange
	}{
		{8, pr(1024, 1031)},
		{8, pr(1032, 1039)},
		{16, pr(1040, 1055)},
		{1024, pr(2048, 3071)},
		{32768, pr(32768, 65535)},
		{16384, pr(16384, 32767)},
	} {
		r, err := s.Allocate(tc.size)
		if err != nil || r != tc.want {
			t.Fatalf("Allocate(%d) = %s, %v; want %s", tc.size, r, err, tc.want)
		}
		if int(r.First)%tc.size != 0 || r.Len() != tc.size {
			t.Fatalf("range %s is not aligned to %d", r, tc.size)
		}
	}
	if _, err := s.Allocate(32768); !errors.Is(err, ErrExhausted) {
		t.Fatalf("second Allocate(32768) = %v, want ErrExhausted", err)
	}
	if r, ok := s.Lookup(40000); !ok || r != pr(32768, 65535) {
		t.Fatalf("Lookup(40000) = %s, %v", r, ok)
	}
	if _, ok := s.Lookup(1056); ok {
		t.Fatal("Lookup(1056) found a range in free space")
	}
	if s.Allocated(1000) || !s.IsReserved(1000) || s.IsReserved(1024) {
		t.Fatal("ports below 1024 must count as reserved and unallocated")
	}
	for _, size := range []int{0, 4, 7, 9, 12, 100, 65536, -8} {
		if _, err := s.Allocate(size); !errors.Is(err, ErrInvalidSize) {
			t.Errorf("Allocate(%d) = %v, want ErrInvalidSize", size, err)
		}
	}
	want := []ananta.PortRange{pr(1024, 1031), pr(1032, 1039), pr(1040, 1055), pr(2048, 3071), pr(16384, 32767), pr(32768, 65535)}
	if got := s.Ranges(); !reflect.DeepEqual(got, want) {
		t.Fatalf("Ranges = %v, want %v", got, want)
	}
	if s.Len() != len(want) || s.AllocatedPorts()+s.Available() != 65536-1024 {
		t.Fatalf("Len %d, allocated %d + available %d", s.Len(), s.AllocatedPorts(), s.Available())
	}
}

func TestNewSpaceRejectsBadReserved(t *testing.T) {
	many := make([]ananta.PortRange, ananta.MaxReservedRanges+1)
	for i := range many {
		many[i] = pr(2000+2*i, 2000+2*i)
	}
	for _, tc := range []struct {
		name string
		rs   []ananta.PortRange
		want error
	}{
		{"zero first", []ananta.PortRange{pr(0, 10)}, ErrInvalidRange},
		{"reversed", []ananta.PortRange{pr(3000, 2000)}, ErrInvalidRange},
		{"overlap", []ananta.PortRange{pr(3000, 4000), pr(2000, 3000)}, ErrOverlap},
		{"duplicate", []ananta.PortRange{pr(80, 80), pr(80, 80)}, ErrOverlap},
		{"too many", many, ErrInvalidConfig},
	} {
		if _, err := NewSpace(tc.rs); !errors.Is(err, tc.want) {
			t.Errorf("%s: NewSpace = %v, want %v", tc.name, err, tc.want)
		}
	}
	// Reserved ranges below 1024, touching each other, or up to 65535 are fine.
	s := mustSpace(t, pr(1, 1023), pr(1024, 1024), pr(1025, 1030), pr(65535, 65535))
	if s.Available() != 65536-1024-8-8 {
		t.Fatalf("Available = %d", s.Available())
	}
	if got := s.Reserved(); len(got) != 4 || got[0] != pr(1, 1023) {
		t.Fatalf("Reserved = %v", got)
	}
}

// model is a naive per-port bitmap of a Space, checked against it.
type model struct {
	owner    [65536]int // 0 free, >0 id of the allocated range
	reserved [65536]bool
	next     int
}

func newModel(reserved []ananta.PortRange) *model {
	m := &model{next: 1}
	for p := 0; p < ananta.FirstSNATPort; p++ {
		m.reserved[p] = true
	}
	for _, r := range reserved {
		for p := int(r.First); p <= int(r.Last); p++ {
			m.reserved[p] = true
		}
	}
	return m
}

// usable reports whether the aligned block at first of size ports is free
// and holds no port of an 8-port unit touched by a reserved port.
func (m *model) usable(first, size int) bool {
	for p := first &^ 7; p < first+size; p++ {
		if m.reserved[p] || m.owner[p] != 0 {
			return false
		}
	}
	return true
}

func (m *model) anyUsable(size int) bool {
	for first := 0; first < 65536; first += size {
		if m.usable(first, size) {
			return true
		}
	}
	return false
}

func (m *model) take(r ananta.PortRange) {
	for p := int(r.First); p <= int(r.Last); p++ {
		m.owner[p] = m.next
	}
	m.next++
}

func (m *model) free(r ananta.PortRange) {
	for p := int(r.First); p <= int(r.Last); p++ {
		m.owner[p] = 0
	}
}

func (m *model) available() int {
	n := 0
	for u := 0; u < 65536; u += 8 {
		if m.usable(u, 8) {
			n += 8
		}
	}
	return n
}

func randomSize(rng *rand.Rand) int {
	// Mostly small ranges, sometimes big ones.
	k := rng.IntN(4)
	if rng.IntN(8) == 0 {
		k = rng.IntN(maxOrder + 1)
	}
	return MinRangeSize << k
}

// TestSpaceAgainstModel runs random allocate/free/allocate-at sequences and
// checks every answer against the naive bitmap model: no overlap, no
// reserved port, alignment, and exhaustion only when the model agrees that
// no aligned block of that size is free.
func TestSpaceAgainstModel(t *testing.T) {
	reservedSets := [][]ananta.PortRange{
		nil,
		{pr(1030, 1030), pr(2000, 2100), pr(8080, 8080), pr(40000, 40000), pr(65500, 65535)},
		{pr(80, 80), pr(443, 443), pr(4096, 8191), pr(33000, 33007)},
	}
	for si, reserved := range reservedSets {
		rng := rand.New(rand.NewPCG(uint64(si), 42))
		s := mustSpace(t, reserved...)
		m := newModel(reserved)
		if s.Available() != m.available() {
			t.Fatalf("set %d: Available %d, model %d", si, s.Available(), m.available())
		}
		var live []ananta.PortRange
		for step := 0; step < 6000; step++ {
			switch op := rng.IntN(10); {
			case op < 5: // Allocate
				size := randomSize(rng)
				r, err := s.Allocate(size)
				if err != nil {
					if !errors.Is(err, ErrExhausted) {
						t.Fatalf("set %d step %d: Allocate(%d): %v", si, step, size, err)
					}
					if m.anyUsable(size) {
						t.Fatalf("set %d step %d: Allocate(%d) exhausted but the model has a free aligned block", si, step, size)
					}
					continue
				}
				if r.Len() != size || int(r.First)%size != 0 {
					t.Fatalf("set %d step %d: Allocate(%d) = %s: wrong size or alignment", si, step, size, r)
				}
				if !m.usable(int(r.First), size) {
					t.Fatalf("set %d step %d: Allocate(%d) = %s overlaps an allocated or reserved port", si, step, size, r)
				}
				m.take(r)
				live = append(live, r)
			case op < 8 && len(live) > 0: // Free
				i := rng.IntN(len(live))
				r := live[i]
				if err := s.Free(r); err != nil {
					t.Fatalf("set %d step %d: Free(%s): %v", si, step, r, err)
				}
				m.free(r)
				live[i] = live[len(live)-1]
				live = live[:len(live)-1]
			case op == 8: // AllocateAt a random aligned range
				size := randomSize(rng)
				first := rng.IntN(65536/size) * size
				r := pr(first, first+size-1)
				err := s.AllocateAt(r)
				ok := first >= ananta.FirstSNATPort && m.usable(first, size)
				if (err == nil) != ok {
					t.Fatalf("set %d step %d: AllocateAt(%s) = %v, model says usable=%v", si, step, r, err, ok)
				}
				if err == nil {
					m.take(r)
					live = append(live, r)
				}
			default: // Free of something not allocated must fail and change nothing
				size := randomSize(rng)
				first := rng.IntN(65536/size) * size
				r := pr(first, first+size-1)
				if m.owner[first] != 0 && m.owner[first] == m.owner[first+size-1] &&
					(first == 0 || m.owner[first-1] != m.owner[first]) && (first+size == 65536 || m.owner[first+size] != m.owner[first]) {
					continue // exactly an allocated range
				}
				before := *s
				if err := s.Free(r); !errors.Is(err, ErrNotAllocated) {
					t.Fatalf("set %d step %d: Free(%s) of an unallocated range = %v", si, step, r, err)
				}
				if !reflect.DeepEqual(before, *s) {
					t.Fatalf("set %d step %d: failed Free changed the space", si, step)
				}
			}
			if s.Available() != m.available() {
				t.Fatalf("set %d step %d: Available %d, model %d", si, step, s.Available(), m.available())
			}
			for range 4 {
				p := uint16(rng.IntN(65536))
				r, ok := s.Lookup(p)
				if ok != (m.owner[p] != 0) || (ok && (!r.Contains(p) || m.owner[r.First] != m.owner[p] || m.owner[r.Last] != m.owner[p])) {
					t.Fatalf("set %d step %d: Lookup(%d) = %s, %v; model owner %d", si, step, p, r, ok, m.owner[p])
				}
			}
		}
		if s.Len() != len(live) {
			t.Fatalf("set %d: Len %d, live %d", si, s.Len(), len(live))
		}
	}
}

func TestSpaceExhaustionThenReuse(t *testing.T) {
	s := mustSpace(t, pr(5000, 5000))
	var got []ananta.PortRange
	for {
		r, err := s.Allocate(8)
		if errors.Is(err, ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if r.Contains(5000) {
			t.Fatalf("handed out %s holding reserved port 5000", r)
		}
		got = append(got, r)
	}
	if want := (65536-1024)/8 - 1; len(got) != want {
		t.Fatalf("allocated %d ranges of 8, want %d", len(got), want)
	}
	if s.Available() != 0 || s.Largest() != 0 {
		t.Fatalf("Available %d, Largest %d after exhaustion", s.Available(), s.Largest())
	}
	if err := s.Free(got[100]); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Allocate(8); err != nil || r != got[100] {
		t.Fatalf("Allocate after Free = %s, %v; want %s", r, err, got[100])
	}
	if _, err := s.Allocate(16); !errors.Is(err, ErrExhausted) {
		t.Fatalf("Allocate(16) = %v, want ErrExhausted", err)
	}
	// Free two buddies: they merge and a 16 fits again.
	if err := s.Free(pr(2048, 2055)); err != nil {
		t.Fatal(err)
	}
	if err := s.Free(pr(2056, 2063)); err != nil {
		t.Fatal(err)
	}
	if r, err := s.Allocate(16); err != nil || r != pr(2048, 2063) {
		t.Fatalf("Allocate(16) after freeing buddies = %s, %v", r, err)
	}
}

func TestSpaceDoubleFreeAndBadFree(t *testing.T) {
	s := mustSpace(t)
	r, _ := s.Allocate(64) // 1024-1087
	r2, _ := s.Allocate(8) // 1088-1095
	if r != pr(1024, 1087) || r2 != pr(1088, 1095) {
		t.Fatalf("allocated %s and %s", r, r2)
	}
	if err := s.Free(r); err != nil {
		t.Fatal(err)
	}
	before := *s
	for _, bad := range []struct {
		r    ananta.PortRange
		want error
	}{
		{r, ErrNotAllocated},              // double free
		{pr(1096, 1103), ErrNotAllocated}, // free space
		{pr(1088, 1103), ErrNotAllocated}, // covers r2 but is not r2
		{pr(1024, 1031), ErrNotAllocated}, // part of a freed range
		{pr(1000, 1007), ErrNotAllocated}, // below 1024: never allocated
		{pr(1025, 1032), ErrInvalidRange}, // unaligned
		{pr(1024, 1035), ErrInvalidRange}, // not a power of two
		{pr(2000, 1000), ErrInvalidRange}, // reversed
		{pr(0, 65535), ErrInvalidRange},   // too big
		{pr(1024, 1027), ErrInvalidRange}, // too small
	} {
		if err := s.Free(bad.r); !errors.Is(err, bad.want) {
			t.Errorf("Free(%s) = %v, want %v", bad.r, err, bad.want)
		}
		if !reflect.DeepEqual(before, *s) {
			t.Fatalf("failed Free(%s) changed the space", bad.r)
		}
	}
	if err := s.Free(r2); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(*s, *mustSpace(t)) {
		t.Fatal("space with everything freed differs from a new space")
	}
}

func TestSpaceAllocateAt(t *testing.T) {
	s := mustSpace(t, pr(3000, 3000))
	if err := s.AllocateAt(pr(4096, 8191)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		r    ananta.PortRange
		want error
	}{
		{pr(4096, 4103), ErrOverlap},
		{pr(0, 32767), ErrReserved},
		{pr(2992, 2999), nil}, // shares no unit with 3000
		{pr(3000, 3007), ErrReserved},
		{pr(3000, 3003), ErrInvalidRange},
		{pr(512, 1023), ErrReserved},
		{pr(2048, 4095), ErrReserved},
		{pr(32768, 65535), nil},
		{pr(65528, 65535), ErrOverlap},
	} {
		before := *s
		err := s.AllocateAt(tc.r)
		if !errors.Is(err, tc.want) {
			t.Errorf("AllocateAt(%s) = %v, want %v", tc.r, err, tc.want)
		}
		if err != nil && !reflect.DeepEqual(before, *s) {
			t.Errorf("failed AllocateAt(%s) changed the space", tc.r)
		}
	}
}

// TestSpaceDeterminism: two spaces fed the same sequence give the same
// answers, and the state depends only on the set of allocated ranges, not
// on the history that produced it.
func TestSpaceDeterminism(t *testing.T) {
	reserved := []ananta.PortRange{pr(8080, 8080), pr(20000, 20999)}
	a, b := mustSpace(t, reserved...), mustSpace(t, reserved...)
	rng := rand.New(rand.NewPCG(7, 7))
	var live []ananta.PortRange
	for step := range 5000 {
		if rng.IntN(3) > 0 || len(live) == 0 {
			size := randomSize(rng)
			ra, ea := a.Allocate(size)
			rb, eb := b.Allocate(size)
			if ra != rb || (ea == nil) != (eb == nil) {
				t.Fatalf("step %d: Allocate(%d) diverged: %s/%v vs %s/%v", step, size, ra, ea, rb, eb)
			}
			if ea == nil {
				live = append(live, ra)
			}
		} else {
			i := rng.IntN(len(live))
			if err := a.Free(live[i]); err != nil {
				t.Fatal(err)
			}
			if err := b.Free(live[i]); err != nil {
				t.Fatal(err)
			}
			live = append(live[:i], live[i+1:]...)
		}
	}
	if !reflect.DeepEqual(*a, *b) {
		t.Fatal("spaces fed the same sequence differ")
	}
	// Rebuild from the allocated set in another order: identical state.
	c := mustSpace(t, reserved...)
	rs := a.Ranges()
	for i := len(rs) - 1; i >= 0; i-- {
		if err := c.AllocateAt(rs[i]); err != nil {
			t.Fatal(err)
		}
	}
	if !reflect.DeepEqual(*a, *c) {
		t.Fatal("space rebuilt with AllocateAt differs from the original")
	}
}

func TestSpaceReservedUnitsNeverHandedOut(t *testing.T) {
	reserved := []ananta.PortRange{pr(1030, 1030), pr(4097, 4098), pr(65535, 65535)}
	s := mustSpace(t, reserved...)
	for {
		r, err := s.Allocate(8)
		if err != nil {
			break
		}
		for _, x := range reserved {
			if r.First <= x.Last && x.First <= r.Last {
				t.Fatalf("handed out %s overlapping reserved %s", r, x)
			}
		}
	}
	for _, p := range []uint16{1030, 4097, 65535} {
		if !s.IsReserved(p) || s.Allocated(p) {
			t.Errorf("port %d: reserved %v allocated %v", p, s.IsReserved(p), s.Allocated(p))
		}
	}
	if s.IsReserved(1031) || s.IsReserved(4099) {
		t.Error("neighbours of reserved ports reported reserved")
	}
}

// TestNewSpaceMatchesUnitByUnit: NewSpace's direct construction of the
// free blocks equals freeing every usable unit one by one with merging.
func TestNewSpaceMatchesUnitByUnit(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	sets := [][]ananta.PortRange{nil, {pr(1024, 1024)}, {pr(65535, 65535)}, {pr(1, 40000)}, {pr(32768, 32768), pr(16383, 16384)}}
	for range 50 {
		var rs []ananta.PortRange
		for p := 1 + rng.IntN(4000); p < 65536 && len(rs) < ananta.MaxReservedRanges; p += 1 + rng.IntN(6000) {
			last := min(65535, p+rng.IntN(600))
			rs = append(rs, pr(p, last))
			p = last + 1
		}
		sets = append(sets, rs)
	}
	for i, rs := range sets {
		s := mustSpace(t, rs...)
		ref := &Space{reserved: s.reserved, usable: s.usable}
		for u := firstUnit; u < numUnits; u++ {
			if ref.usableUnit(u) {
				ref.insertFree(0, u)
				ref.freeP += MinRangeSize
			}
		}
		if !reflect.DeepEqual(s, ref) {
			t.Fatalf("set %d (%v): NewSpace differs from unit-by-unit construction", i, rs)
		}
	}
}
