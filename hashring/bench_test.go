package hashring

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func BenchmarkMaglevBuild(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			ms := equalMembers(n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := New(ms, Config{Size: DefaultSize}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkMaglevBuildWeighted measures weighted builds: mild skew (weights
// 1..10, round scan) and strong skew (one member of weight 5000 among
// weights 1..3, heap scheduler).
func BenchmarkMaglevBuildWeighted(b *testing.B) {
	mild := equalMembers(1000)
	for i := range mild {
		mild[i].Weight = uint32(1 + i%10)
	}
	strong := equalMembers(1000)
	for i := range strong {
		strong[i].Weight = uint32(1 + i%3)
	}
	strong[7].Weight = 5000
	for _, bc := range []struct {
		name string
		ms   []Member
	}{{"backends=1000/weights=1..10", mild}, {"backends=1000/weights=skewed", strong}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := New(bc.ms, Config{Size: DefaultSize}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkMaglevLookup(b *testing.B) {
	tbl := mustNew(b, equalMembers(1000), Config{})
	const mask = 1<<16 - 1
	hashes := make([]uint64, mask+1)
	rng := rand.New(rand.NewPCG(1, 1))
	for i := range hashes {
		hashes[i] = rng.Uint64()
	}
	b.ReportAllocs()
	sum := 0
	i := 0
	for b.Loop() {
		sum += tbl.Lookup(hashes[i&mask])
		i++
	}
	if sum < 0 {
		b.Fatal("negative index")
	}
}
