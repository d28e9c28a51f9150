package snat

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
)

var (
	server  = netip.MustParseAddrPort("198.18.200.1:443")
	server6 = netip.MustParseAddrPort("[2001:db8::1]:443")
)

func dstN(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(100 + i>>16), byte(i >> 8)}), uint16(1000+i&0xff))
}

func mustPool(t testing.TB, cfg PoolConfig, ranges ...ananta.PortRange) *Pool {
	t.Helper()
	p, err := NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range ranges {
		if err := p.Add(r, t0); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func TestPoolTCPOneServerDistinctPorts(t *testing.T) {
	p := mustPool(t, PoolConfig{}, pr(1024, 2047))
	seen := map[uint16]bool{}
	for i := range 1000 {
		port, ok := p.Acquire(ananta.ProtocolTCP, server, t0)
		if !ok {
			t.Fatalf("connection %d: no port", i)
		}
		if seen[port] || port < 1024 || port > 2047 {
			t.Fatalf("connection %d: port %d reused or outside the pool", i, port)
		}
		seen[port] = true
	}
	if p.Flows() != 1000 || p.Free() != 24 {
		t.Fatalf("Flows %d Free %d", p.Flows(), p.Free())
	}
	// Exhaust the pool for this destination.
	for range 24 {
		if _, ok := p.Acquire(ananta.ProtocolTCP, server, t0); !ok {
			t.Fatal("pool exhausted early")
		}
	}
	if port, ok := p.Acquire(ananta.ProtocolTCP, server, t0); ok {
		t.Fatalf("exhausted pool gave port %d", port)
	}
	// Another destination port of the same server is another destination.
	other := netip.AddrPortFrom(server.Addr(), 80)
	if port, ok := p.Acquire(ananta.ProtocolTCP, other, t0); !ok || port != 1024 {
		t.Fatalf("other destination: %d, %v", port, ok)
	}
	// Release one: exactly that port comes back for the server.
	if !p.Release(ananta.ProtocolTCP, 1500, server, t0) {
		t.Fatal("Release failed")
	}
	if p.Release(ananta.ProtocolTCP, 1500, server, t0) {
		t.Fatal("double Release succeeded")
	}
	if port, ok := p.Acquire(ananta.ProtocolTCP, server, t0); !ok || port != 1500 {
		t.Fatalf("after release: %d, %v; want 1500", port, ok)
	}
}

func TestPoolTCPDestinationsSharePorts(t *testing.T) {
	p := mustPool(t, PoolConfig{}, pr(1024, 1031))
	used := map[uint16]int{}
	type flow struct {
		port uint16
		dst  netip.AddrPort
	}
	var flows []flow
	for i := range 500 {
		d := dstN(i)
		for range 3 { // three connections to each destination
			port, ok := p.Acquire(ananta.ProtocolTCP, d, t0)
			if !ok {
				t.Fatalf("dst %d: no port", i)
			}
			flows = append(flows, flow{port, d})
			used[port]++
		}
	}
	// 1500 flows on 8 ports: 3 ports, each shared by 500 destinations.
	if len(used) != 3 || used[1024] != 500 || used[1026] != 500 {
		t.Fatalf("port use = %v", used)
	}
	// Every (port, destination) is unique.
	seen := map[flow]bool{}
	for _, f := range flows {
		if seen[f] {
			t.Fatalf("flow %v twice", f)
		}
		seen[f] = true
	}
	if p.Free() != 5 {
		t.Fatalf("Free = %d", p.Free())
	}
	for _, f := range flows {
		if !p.Release(ananta.ProtocolTCP, f.port, f.dst, t0) {
			t.Fatalf("Release %v", f)
		}
	}
	if p.Flows() != 0 || p.Free() != 8 || p.dsts.n != 0 {
		t.Fatalf("after releasing all: flows %d free %d dsts %d", p.Flows(), p.Free(), p.dsts.n)
	}
}

func TestPoolUDPCone(t *testing.T) {
	p := mustPool(t, PoolConfig{}, pr(2048, 2055))
	a, ok := p.AcquireUDP(5353, server, t0)
	if !ok {
		t.Fatal("no port")
	}
	for i := range 50 { // the same source port to many destinations: one VIP port
		if port, ok := p.AcquireUDP(5353, dstN(i), t0); !ok || port != a {
			t.Fatalf("dst %d: port %d, %v; want %d", i, port, ok, a)
		}
	}
	if port, ok := p.AcquireUDP(5353, server, t0); !ok || port != a || p.Flows() != 51 {
		t.Fatalf("repeated flow: %d %v, flows %d", port, ok, p.Flows())
	}
	if src, ok := p.UDPSource(a); !ok || src != 5353 {
		t.Fatalf("UDPSource(%d) = %d, %v", a, src, ok)
	}
	// Other source ports get other VIP ports, until the pool is full.
	got := map[uint16]bool{a: true}
	for s := uint16(1); s < 8; s++ {
		port, ok := p.AcquireUDP(40000+s, server, t0)
		if !ok || got[port] {
			t.Fatalf("source %d: port %d, %v", 40000+s, port, ok)
		}
		got[port] = true
	}
	if _, ok := p.AcquireUDP(50000, server, t0); ok {
		t.Fatal("ninth source port mapped into an 8-port pool")
	}
	if p.Free() != 0 || !p.Low() {
		t.Fatalf("Free %d Low %v", p.Free(), p.Low())
	}
	// TCP may still use a UDP-mapped port: another protocol.
	if _, ok := p.Acquire(ananta.ProtocolTCP, server, t0); !ok {
		t.Fatal("TCP refused on a full UDP pool")
	}
	// The mapping lives until its last flow ends.
	for i := range 50 {
		if !p.Release(ananta.ProtocolUDP, a, dstN(i), t0) {
			t.Fatalf("release dst %d", i)
		}
	}
	if src, ok := p.UDPSource(a); !ok || src != 5353 {
		t.Fatal("mapping ended with a flow left")
	}
	if !p.Release(ananta.ProtocolUDP, a, server, t0) {
		t.Fatal("release last flow")
	}
	if _, ok := p.UDPSource(a); ok {
		t.Fatal("mapping survived its last flow")
	}
	if port, ok := p.AcquireUDP(50000, server, t0); !ok || port != a {
		t.Fatalf("freed VIP port not reused: %d, %v", port, ok)
	}
	// Invalid requests.
	if _, ok := p.AcquireUDP(0, server, t0); ok {
		t.Error("source port 0 accepted")
	}
	if _, ok := p.AcquireUDP(1, netip.AddrPort{}, t0); ok {
		t.Error("invalid destination accepted")
	}
	if _, ok := p.Acquire(ananta.ProtocolUDP, server, t0); ok {
		t.Error("Acquire accepted UDP")
	}
	if _, ok := p.Acquire(ananta.ProtocolAny, server, t0); ok {
		t.Error("Acquire accepted ProtocolAny")
	}
}

func TestPoolFamiliesAreDistinct(t *testing.T) {
	p := mustPool(t, PoolConfig{}, pr(1024, 1024))
	v4 := netip.MustParseAddrPort("1.2.3.4:80")
	mapped := netip.MustParseAddrPort("[::ffff:1.2.3.4]:80")
	if _, ok := p.Acquire(ananta.ProtocolTCP, v4, t0); !ok {
		t.Fatal("v4")
	}
	if _, ok := p.Acquire(ananta.ProtocolTCP, mapped, t0); !ok {
		t.Fatal("the 4in6 form is another destination")
	}
	if _, ok := p.Acquire(ananta.ProtocolTCP, server6, t0); !ok {
		t.Fatal("v6")
	}
	flows, err := p.Drop(pr(1024, 1024))
	if err != nil || len(flows) != 3 {
		t.Fatalf("Drop = %v, %v", flows, err)
	}
	want := []netip.AddrPort{v4, mapped, server6}
	slices.SortFunc(want, netip.AddrPort.Compare)
	for i, f := range flows {
		if f.Dst != want[i] || f.Port != 1024 || f.Proto != ananta.ProtocolTCP {
			t.Fatalf("flow %d = %+v, want dst %s", i, f, want[i])
		}
	}
}

func TestPoolAddRemoveDrop(t *testing.T) {
	p := mustPool(t, PoolConfig{}, pr(2048, 2055), pr(1024, 1031))
	for _, tc := range []struct {
		r    ananta.PortRange
		want error
	}{
		{pr(1030, 1040), ErrOverlap},
		{pr(2000, 2048), ErrOverlap},
		{pr(1024, 1031), ErrOverlap},
		{pr(0, 7), ErrInvalidRange},
		{pr(9, 8), ErrInvalidRange},
	} {
		if err := p.Add(tc.r, t0); !errors.Is(err, tc.want) {
			t.Errorf("Add(%s) = %v, want %v", tc.r, err, tc.want)
		}
	}
	if err := p.Add(pr(1032, 1039), t0); err != nil {
		t.Fatal(err)
	}
	if got := p.Ranges(); !reflect.DeepEqual(got, []ananta.PortRange{pr(1024, 1031), pr(1032, 1039), pr(2048, 2055)}) || p.Size() != 24 {
		t.Fatalf("Ranges = %v, Size %d", got, p.Size())
	}
	// Flows on 1024..1031 (9 to one server: the ninth goes to 1032) and a UDP mapping.
	for range 9 {
		p.Acquire(ananta.ProtocolTCP, server, t0)
	}
	u, _ := p.AcquireUDP(777, server, t0) // round robin from the lowest port: 1024
	if u != 1024 {
		t.Fatalf("UDP port %d", u)
	}
	inUse, err := p.Remove(pr(1024, 1031))
	if !errors.Is(err, ErrInUse) || len(inUse) != 8 || inUse[0] != 1024 || inUse[7] != 1031 {
		t.Fatalf("Remove of a busy range = %v, %v", inUse, err)
	}
	inUse, err = p.Remove(pr(1032, 1039))
	if !errors.Is(err, ErrInUse) || !reflect.DeepEqual(inUse, []uint16{1032}) {
		t.Fatalf("Remove = %v, %v", inUse, err)
	}
	if _, err := p.Remove(pr(1024, 1027)); !errors.Is(err, ErrNotAllocated) {
		t.Fatalf("Remove of a sub-range: %v", err)
	}
	if _, err := p.Remove(pr(2048, 2055)); err != nil {
		t.Fatal(err)
	}
	if p.Has(2050) || p.Size() != 16 {
		t.Fatal("removed range still in the pool")
	}
	flows, err := p.Drop(pr(1024, 1031))
	if err != nil || len(flows) != 9 {
		t.Fatalf("Drop = %d flows, %v", len(flows), err)
	}
	if flows[0] != (Flow{Proto: ananta.ProtocolTCP, Port: 1024, Dst: server}) || flows[1] != (Flow{Proto: ananta.ProtocolUDP, Port: 1024, Dst: server, Src: 777}) {
		t.Fatalf("dropped flows start %+v %+v", flows[0], flows[1])
	}
	if _, ok := p.UDPSource(1024); ok || p.Flows() != 1 || p.Size() != 8 {
		t.Fatalf("after Drop: flows %d size %d", p.Flows(), p.Size())
	}
	// The destination state survived with one flow on 1032; a new flow
	// to the server goes to the next free port.
	if port, ok := p.Acquire(ananta.ProtocolTCP, server, t0); !ok || port != 1033 {
		t.Fatalf("after Drop: %d, %v", port, ok)
	}
	if !p.Release(ananta.ProtocolTCP, 1032, server, t0) || p.Release(ananta.ProtocolTCP, 1024, server, t0) {
		t.Fatal("release after Drop")
	}
}

func TestPoolIdle(t *testing.T) {
	p := mustPool(t, PoolConfig{}, pr(1024, 1031), pr(1032, 1039), pr(4096, 4127))
	idle := 5 * time.Minute
	if got := p.Idle(t0.Add(time.Minute), idle); got != nil {
		t.Fatalf("fresh ranges idle: %v", got)
	}
	// A flow in the first range, released at t0+2m; the second range has
	// a flow that stays.
	for range 9 {
		p.Acquire(ananta.ProtocolTCP, server, t0.Add(time.Minute))
	}
	if !p.Release(ananta.ProtocolTCP, 1030, server, t0.Add(2*time.Minute)) {
		t.Fatal("release")
	}
	for port := uint16(1024); port < 1031; port++ {
		if port != 1030 && !p.Release(ananta.ProtocolTCP, port, server, t0.Add(2*time.Minute)) {
			t.Fatal("release")
		}
	}
	if p.Release(ananta.ProtocolTCP, 1031, server, t0.Add(2*time.Minute)) != true {
		t.Fatal("release 1031")
	}
	// 1032 still has a flow.
	if got := p.Idle(t0.Add(5*time.Minute), idle); !reflect.DeepEqual(got, []ananta.PortRange{pr(4096, 4127)}) {
		t.Fatalf("Idle at 5m = %v", got)
	}
	if got := p.Idle(t0.Add(7*time.Minute), idle); !reflect.DeepEqual(got, []ananta.PortRange{pr(1024, 1031), pr(4096, 4127)}) {
		t.Fatalf("Idle at 7m = %v", got)
	}
	for _, r := range p.Idle(t0.Add(7*time.Minute), idle) {
		if _, err := p.Remove(r); err != nil {
			t.Fatalf("Remove idle %s: %v", r, err)
		}
	}
	if !reflect.DeepEqual(p.Ranges(), []ananta.PortRange{pr(1032, 1039)}) {
		t.Fatalf("left: %v", p.Ranges())
	}
}

func TestPoolLow(t *testing.T) {
	p := mustPool(t, PoolConfig{})
	if !p.Low() {
		t.Fatal("empty pool not low")
	}
	if _, ok := p.Acquire(ananta.ProtocolTCP, server, t0); ok {
		t.Fatal("empty pool gave a port")
	}
	p.Add(pr(1024, 1279), t0) // 256 ports: low water 32
	if p.LowWater() != 32 || p.Low() {
		t.Fatalf("LowWater %d Low %v", p.LowWater(), p.Low())
	}
	for range 224 {
		p.Acquire(ananta.ProtocolTCP, server, t0)
	}
	if p.Free() != 32 || p.Low() {
		t.Fatalf("Free %d Low %v", p.Free(), p.Low())
	}
	p.Acquire(ananta.ProtocolTCP, server, t0)
	if !p.Low() {
		t.Fatal("not low under the low water mark")
	}
	q := mustPool(t, PoolConfig{LowWater: 3}, pr(1024, 1031))
	for range 5 {
		q.Acquire(ananta.ProtocolTCP, server, t0)
	}
	if q.Low() {
		t.Fatal("3 free, low water 3: not low")
	}
	q.Acquire(ananta.ProtocolTCP, server, t0)
	if !q.Low() {
		t.Fatal("2 free, low water 3: low")
	}
	if _, err := NewPool(PoolConfig{LowWater: -1}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("negative LowWater: %v", err)
	}
}

// TestPoolAcquireAllocFree: the Acquire hit path (a new destination, and
// another flow to a known one) allocates nothing.
func TestPoolAcquireAllocFree(t *testing.T) {
	p := mustPool(t, PoolConfig{ExpectedFlows: 4096}, pr(1024, 2047))
	dsts := make([]netip.AddrPort, 256)
	for i := range dsts {
		dsts[i] = dstN(i)
	}
	ports := make([]uint16, len(dsts))
	round := func() {
		for i, d := range dsts {
			port, ok := p.Acquire(ananta.ProtocolTCP, d, t0)
			if !ok {
				panic("no port")
			}
			ports[i] = port
		}
		for i, d := range dsts {
			if !p.Release(ananta.ProtocolTCP, ports[i], d, t0) {
				panic("release")
			}
		}
	}
	// Warm up: some destinations keep two flows so that Acquire also
	// takes the known-destination path.
	for _, d := range dsts[:64] {
		p.Acquire(ananta.ProtocolTCP, d, t0)
	}
	round()
	if n := testing.AllocsPerRun(100, round); n != 0 {
		t.Fatalf("Acquire/Release allocate %v times per round", n)
	}
	u := func() {
		for i, d := range dsts {
			port, _ := p.AcquireUDP(uint16(30000+i%16), d, t0)
			ports[i] = port
		}
		for i, d := range dsts {
			p.Release(ananta.ProtocolUDP, ports[i], d, t0)
		}
	}
	u()
	if n := testing.AllocsPerRun(100, u); n != 0 {
		t.Fatalf("AcquireUDP/Release allocate %v times per round", n)
	}
}

// TestPoolAgainstModel runs random Acquire, AcquireUDP, Release, Add,
// Remove and Drop calls and checks every answer against a naive model.
func TestPoolAgainstModel(t *testing.T) {
	type mflow struct {
		proto ananta.Protocol
		port  uint16
		dst   netip.AddrPort
	}
	rng := rand.New(rand.NewPCG(17, 71))
	p := mustPool(t, PoolConfig{ExpectedFlows: 1}, pr(1024, 1031))
	flows := map[mflow]bool{}
	udpSrc := map[uint16]uint16{} // VIP port -> source port
	ranges := []ananta.PortRange{pr(1024, 1031)}
	candidates := []ananta.PortRange{pr(1032, 1039), pr(1040, 1055), pr(3000, 3007), pr(60000, 60063)}
	dsts := []netip.AddrPort{server, server6, dstN(1), dstN(2), dstN(3), netip.MustParseAddrPort("[::ffff:198.18.200.1]:443")}
	inPool := func(port uint16) bool {
		for _, r := range ranges {
			if r.Contains(port) {
				return true
			}
		}
		return false
	}
	size := func() int {
		n := 0
		for _, r := range ranges {
			n += r.Len()
		}
		return n
	}
	for step := range 30000 {
		d := dsts[rng.IntN(len(dsts))]
		switch op := rng.IntN(20); {
		case op < 7:
			port, ok := p.Acquire(ananta.ProtocolTCP, d, t0)
			used := 0
			for f := range flows {
				if f.proto == ananta.ProtocolTCP && f.dst == d {
					used++
				}
			}
			if ok != (used < size()) {
				t.Fatalf("step %d: Acquire ok=%v with %d of %d ports used to %s", step, ok, used, size(), d)
			}
			if ok {
				f := mflow{ananta.ProtocolTCP, port, d}
				if flows[f] || !inPool(port) {
					t.Fatalf("step %d: Acquire gave %d: in use with %s or not in the pool", step, port, d)
				}
				flows[f] = true
			}
		case op < 10:
			src := uint16(1 + rng.IntN(12))
			port, ok := p.AcquireUDP(src, d, t0)
			var mapped uint16
			for vp, s := range udpSrc {
				if s == src {
					mapped = vp
				}
			}
			switch {
			case mapped != 0:
				if !ok || port != mapped {
					t.Fatalf("step %d: AcquireUDP(%d) = %d, %v; mapping is %d", step, src, port, ok, mapped)
				}
			case len(udpSrc) == size():
				if ok {
					t.Fatalf("step %d: AcquireUDP mapped into a full pool", step)
				}
			default:
				if !ok || udpSrc[port] != 0 || !inPool(port) {
					t.Fatalf("step %d: new mapping %d, %v", step, port, ok)
				}
				udpSrc[port] = src
			}
			if ok {
				flows[mflow{ananta.ProtocolUDP, port, d}] = true
			}
		case op < 17:
			var fs []mflow
			for f := range flows {
				fs = append(fs, f)
			}
			slices.SortFunc(fs, func(a, b mflow) int {
				if a.port != b.port {
					return int(a.port) - int(b.port)
				}
				if a.proto != b.proto {
					return int(a.proto) - int(b.proto)
				}
				return a.dst.Compare(b.dst)
			})
			f := mflow{ananta.ProtocolTCP, uint16(1024 + rng.IntN(64)), d}
			if len(fs) > 0 && rng.IntN(4) > 0 {
				f = fs[rng.IntN(len(fs))]
			}
			if got := p.Release(f.proto, f.port, f.dst, t0); got != flows[f] {
				t.Fatalf("step %d: Release(%v) = %v, model %v", step, f, got, flows[f])
			}
			if flows[f] {
				delete(flows, f)
				if f.proto == ananta.ProtocolUDP {
					last := true
					for g := range flows {
						if g.proto == ananta.ProtocolUDP && g.port == f.port {
							last = false
						}
					}
					if last {
						delete(udpSrc, f.port)
					}
				}
			}
		case op < 18:
			r := candidates[rng.IntN(len(candidates))]
			err := p.Add(r, t0)
			if (err == nil) == slices.Contains(ranges, r) {
				t.Fatalf("step %d: Add(%s) = %v", step, r, err)
			}
			if err == nil {
				ranges = append(ranges, r)
			}
		default:
			if len(ranges) == 1 {
				continue
			}
			i := 1 + rng.IntN(len(ranges)-1)
			r := ranges[i]
			busy := false
			for f := range flows {
				busy = busy || r.Contains(f.port)
			}
			for vp := range udpSrc {
				busy = busy || r.Contains(vp)
			}
			if rng.IntN(2) == 0 {
				_, err := p.Remove(r)
				if (err == nil) == busy {
					t.Fatalf("step %d: Remove(%s) = %v, busy %v", step, r, err, busy)
				}
				if err != nil {
					continue
				}
			} else {
				dropped, err := p.Drop(r)
				if err != nil {
					t.Fatal(err)
				}
				for _, f := range dropped {
					mf := mflow{f.Proto, f.Port, f.Dst}
					if !flows[mf] || (f.Proto == ananta.ProtocolUDP && udpSrc[f.Port] != f.Src) {
						t.Fatalf("step %d: Drop returned unknown flow %+v", step, f)
					}
					delete(flows, mf)
				}
				for vp := range udpSrc {
					if r.Contains(vp) {
						delete(udpSrc, vp)
					}
				}
				for f := range flows {
					if r.Contains(f.port) {
						t.Fatalf("step %d: Drop(%s) left flow %+v", step, r, f)
					}
				}
			}
			ranges = append(ranges[:i], ranges[i+1:]...)
		}
		// Global checks.
		busy := map[uint16]bool{}
		for f := range flows {
			busy[f.port] = true
		}
		for vp := range udpSrc {
			busy[vp] = true
		}
		if p.Flows() != len(flows) || p.Size() != size() || p.Free() != size()-len(busy) {
			t.Fatalf("step %d: flows %d/%d size %d/%d free %d/%d", step, p.Flows(), len(flows), p.Size(), size(), p.Free(), size()-len(busy))
		}
		for vp, src := range udpSrc {
			if s, ok := p.UDPSource(vp); !ok || s != src {
				t.Fatalf("step %d: UDPSource(%d) = %d, %v; want %d", step, vp, s, ok, src)
			}
		}
	}
}
