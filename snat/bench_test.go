package snat

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
)

// BenchmarkSpaceAllocate: one op is Allocate(8) and Free of the range, on a
// space that already holds 1000 ranges.
func BenchmarkSpaceAllocate(b *testing.B) {
	s := mustSpace(b, pr(8080, 8080))
	for i := range 1000 {
		if _, err := s.Allocate(MinRangeSize << (i % 3)); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		r, err := s.Allocate(8)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Free(r); err != nil {
			b.Fatal(err)
		}
	}
}

// benchPool returns a pool of 4096 ports with flows to 512 of the 1024
// destinations dsts, and dsts. The pool is sized for the 1536 flows it
// will hold at most.
func benchPool(b *testing.B) (*Pool, []netip.AddrPort) {
	p := mustPool(b, PoolConfig{ExpectedFlows: 2048}, pr(4096, 8191))
	dsts := make([]netip.AddrPort, 1024)
	for i := range dsts {
		dsts[i] = dstN(i * 7)
		if i%2 == 0 {
			if _, ok := p.Acquire(ananta.ProtocolTCP, dsts[i], t0); !ok {
				b.Fatal("setup")
			}
		}
	}
	return p, dsts
}

// BenchmarkPoolAcquire: one op is one TCP Acquire that hits (half to
// destinations the pool already has a flow to, half to new ones).
// Releases happen with the timer stopped, once per 1024 acquires.
func BenchmarkPoolAcquire(b *testing.B) {
	p, dsts := benchPool(b)
	ports := make([]uint16, len(dsts))
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		port, ok := p.Acquire(ananta.ProtocolTCP, dsts[i], t0)
		if !ok {
			b.Fatal("miss")
		}
		ports[i] = port
		if i++; i == len(dsts) {
			b.StopTimer()
			for j, d := range dsts {
				p.Release(ananta.ProtocolTCP, ports[j], d, t0)
			}
			i = 0
			b.StartTimer()
		}
	}
}

// BenchmarkPoolAcquireRelease: one op is a TCP Acquire and the Release of
// the same flow.
func BenchmarkPoolAcquireRelease(b *testing.B) {
	p, dsts := benchPool(b)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		d := dsts[i%len(dsts)]
		port, ok := p.Acquire(ananta.ProtocolTCP, d, t0)
		if !ok || !p.Release(ananta.ProtocolTCP, port, d, t0) {
			b.Fatal("miss")
		}
		i++
	}
}

// BenchmarkLeasesAllocate: one op is Leases.Allocate of 8 ports and the
// Release of the lease, with 2000 leases of 100 DIPs in place.
func BenchmarkLeasesAllocate(b *testing.B) {
	l := newLeases(b, LeasesConfig{}, vip1)
	for i := range 2000 {
		if _, err := l.Allocate(vip1, dipN(i%100), hostN(i%10), 8, t0, time.Duration(1+i%60)*time.Second); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		d := dipN(i % 100)
		x, err := l.Allocate(vip1, d, hostN(i%10), 8, t0, time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := l.Release(vip1, x.Range, d); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkLeasesOwner: the return-map lookup of VIP:port.
func BenchmarkLeasesOwner(b *testing.B) {
	l := newLeases(b, LeasesConfig{}, vip1)
	for i := range 2000 {
		l.Allocate(vip1, dipN(i%100), hostN(i%10), 8, t0, time.Minute)
	}
	var ports []uint16
	for _, x := range l.VIPLeases(vip1) {
		ports = append(ports, x.Range.First+uint16(len(ports)%8))
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, ok := l.Owner(vip1, ports[i%len(ports)]); !ok {
			b.Fatal("miss")
		}
		i++
	}
}
