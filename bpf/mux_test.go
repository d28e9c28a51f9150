package bpf

import (
	"math/bits"
	"testing"
)

// TestHashForSlot checks that the hash the loader uses to read entry s of
// a Maglev table maps back to s (hashring.Table.Lookup's index) and that
// the program's 32-bit-halves multiply computes the same index.
func TestHashForSlot(t *testing.T) {
	for _, n := range []uint64{251, 1021, 4099, 65537, 1048573} {
		for _, s := range []uint64{0, 1, 2, n / 2, n - 2, n - 1} {
			h := hashForSlot(s, n)
			if hi, _ := bits.Mul64(h, n); hi != s {
				t.Fatalf("n %d slot %d: hash %#x maps to %d", n, s, h, hi)
			}
			lo := (h & 0xffffffff) * n
			if got := ((h>>32)*n + lo>>32) >> 32; got != s {
				t.Fatalf("n %d slot %d: program's multiply gives %d", n, s, got)
			}
			if s > 0 {
				if hi, _ := bits.Mul64(h-1, n); hi != s-1 {
					t.Fatalf("n %d slot %d: hash %#x is not the smallest", n, s, h)
				}
			}
		}
	}
}

// TestSNATKeys checks that a port range splits into aligned blocks that
// cover it exactly.
func TestSNATKeys(t *testing.T) {
	for _, r := range [][2]uint16{{1, 1}, {1024, 2047}, {3000, 3333}, {5000, 5007}, {1, 65535}, {65535, 65535}} {
		covered := map[uint32]bool{}
		for _, k := range snatKeys([2]uint64{}, r[0], r[1]) {
			bitsN := 144 - k.Prefixlen
			p := uint32(k.Port[0])<<8 | uint32(k.Port[1])
			if p&(1<<bitsN-1) != 0 {
				t.Fatalf("%v: block %d/%d not aligned", r, p, k.Prefixlen)
			}
			for q := p; q < p+1<<bitsN; q++ {
				if covered[q] {
					t.Fatalf("%v: port %d twice", r, q)
				}
				covered[q] = true
			}
		}
		if len(covered) != int(r[1])-int(r[0])+1 {
			t.Fatalf("%v: %d ports covered", r, len(covered))
		}
		for q := uint32(r[0]); q <= uint32(r[1]); q++ {
			if !covered[q] {
				t.Fatalf("%v: port %d not covered", r, q)
			}
		}
	}
}
