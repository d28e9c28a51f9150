package bpf

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/hashring"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/mux"
)

var (
	gwMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0xfe}
	ownMAC = [6]byte{0x02, 0, 0, 0, 0, 0x01}
)

// pinCPU keeps the goroutine on one CPU: the flow table is per CPU.
func pinCPU(t testing.TB) {
	runtime.LockOSThread()
	var set unix.CPUSet
	set.Set(0)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		t.Fatalf("sched_setaffinity: %v", err)
	}
	t.Cleanup(runtime.UnlockOSThread)
}

// pair is the two engines with the same configuration.
type pair struct {
	t     testing.TB
	gom   *mux.Mux
	xdp   *Mux
	frame []byte
	out   []byte
	buf   []byte
	stats struct {
		compared, forwarded, dropped, passed int
		passReason                           map[string]int
		dropReason                           map[mux.DropReason]int
	}
}

func newPair(t testing.TB, mc mux.Config) *pair {
	t.Helper()
	testutil.RequirePrivileged(t)
	pinCPU(t)
	mc.Clock = func() time.Duration { return time.Second }
	if mc.FlowTableBytes == 0 {
		mc.FlowTableBytes = 16 << 20
	}
	gom, err := mux.New(mc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gom.Close() })
	xdp, err := New(Config{Mux: mc, GatewayMAC: gwMAC, FlowTableEntries: 1 << 18})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { xdp.Close() })
	p := &pair{t: t, gom: gom, xdp: xdp, frame: make([]byte, 0, 1<<16), out: make([]byte, 1<<16), buf: make([]byte, 1<<16)}
	p.stats.passReason = make(map[string]int)
	p.stats.dropReason = make(map[mux.DropReason]int)
	return p
}

func (p *pair) setVIP(c ananta.VIPConfig) {
	p.t.Helper()
	if err := p.gom.SetVIP(c); err != nil {
		p.t.Fatal(err)
	}
	if err := p.xdp.SetVIP(c); err != nil {
		p.t.Fatal(err)
	}
}

func (p *pair) setState(vip, dip netip.Addr, port uint16, s ananta.BackendState) {
	p.t.Helper()
	if err := p.gom.SetBackendState(vip, dip, port, s); err != nil {
		p.t.Fatal(err)
	}
	if err := p.xdp.SetBackendState(vip, dip, port, s); err != nil {
		p.t.Fatal(err)
	}
}

func (p *pair) setSNAT(vip netip.Addr, rs []mux.SNATRange) {
	p.t.Helper()
	if err := p.gom.SetSNATRanges(vip, rs); err != nil {
		p.t.Fatal(err)
	}
	if err := p.xdp.SetSNATRanges(vip, rs); err != nil {
		p.t.Fatal(err)
	}
}

// runXDPExact runs the program on an Ethernet frame carrying pkt.
func (p *pair) runXDPExact(pkt []byte) (uint32, []byte) {
	f := p.frame[:0]
	f = append(f, ownMAC[:]...)
	f = append(f, 0x02, 0, 0, 0, 0, 0x02)
	et := uint16(0x0800)
	if len(pkt) > 0 && pkt[0]>>4 == 6 {
		et = 0x86dd
	}
	f = binary.BigEndian.AppendUint16(f, et)
	f = append(f, pkt...)
	for len(f) < 60 {
		f = append(f, 0)
	}
	opts := ebpf.RunOptions{Data: f, DataOut: p.out[:cap(p.out)]}
	ret, err := p.xdp.Program().Run(&opts)
	if err != nil {
		p.t.Fatalf("prog run: %v", err)
	}
	return ret, opts.DataOut
}

func (p *pair) runGo(pkt []byte) (mux.Verdict, []byte) {
	copy(p.buf[mux.Headroom:], pkt)
	v, s, e := p.gom.Process(p.buf, mux.Headroom, mux.Headroom+len(pkt))
	return v, p.buf[s:e]
}

// compare runs pkt through both engines. special says the packet is one
// the XDP program passes to the kernel by design (options, extension
// headers, fragments, other protocols, malformed).
func (p *pair) compare(name string, pkt []byte, special bool) {
	p.t.Helper()
	in := bytes.Clone(pkt)
	gv, gout := p.runGo(in)
	ret, xout := p.runXDPExact(pkt)
	p.stats.compared++
	fail := func(format string, args ...any) {
		p.t.Helper()
		p.t.Fatalf("%s: %s\npacket %x\ngo %v %x\nxdp %d %x", name, fmt.Sprintf(format, args...), pkt, gv, gout, ret, xout)
	}
	switch ret {
	case 3: // XDP_TX
		p.stats.forwarded++
		if gv.Action != mux.ActionForward {
			fail("xdp forwarded, go did not")
		}
		if !bytes.Equal(xout[:6], gwMAC) || !bytes.Equal(xout[6:12], ownMAC[:]) {
			fail("bad Ethernet addresses")
		}
		et := binary.BigEndian.Uint16(xout[12:])
		if (et == 0x0800) != (gout[0]>>4 == 4) {
			fail("EtherType %#x for IPv%d", et, gout[0]>>4)
		}
		if !bytes.Equal(xout[14:], gout) {
			fail("output bytes differ")
		}
	case 1: // XDP_DROP
		p.stats.dropped++
		p.stats.dropReason[gv.Reason]++
		if gv.Action != mux.ActionDrop || (gv.Reason != mux.DropNoEndpoint && gv.Reason != mux.DropNoBackend) {
			fail("xdp dropped, go did %v", gv)
		}
	case 2: // XDP_PASS
		p.stats.passed++
		switch {
		case special:
			p.stats.passReason["special"]++
		case gv.Action == mux.ActionReply || gv.Action == mux.ActionDrop && (gv.Reason == mux.DropTooBig || gv.Reason == mux.DropTooBigRateLimited):
			p.stats.passReason["too_big"]++
		case gv.Action == mux.ActionDrop && gv.Reason == mux.DropNoVIP:
			p.stats.passReason["no_vip"]++
		case gv.Action == mux.ActionDrop && gv.Reason == mux.DropMalformed:
			p.stats.passReason["malformed"]++
		default:
			fail("xdp passed an ordinary packet")
		}
	default:
		fail("unexpected XDP action %d", ret)
	}
}

// --- packet builder ---

type pktSpec struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16
	payload      int
	df           bool
	tos          uint8
	id           uint16
	frag         uint16 // IPv4 flags+offset beyond DF (MF, offset)
	options      bool   // IPv4 options / IPv6 hop-by-hop header
	flow         uint32
}

func build(s pktSpec) []byte {
	var l4 []byte
	switch s.proto {
	case 6:
		l4 = make([]byte, 20+s.payload)
		binary.BigEndian.PutUint16(l4[0:], s.sport)
		binary.BigEndian.PutUint16(l4[2:], s.dport)
		l4[12] = 5 << 4
		l4[13] = 0x10
	case 17:
		l4 = make([]byte, 8+s.payload)
		binary.BigEndian.PutUint16(l4[0:], s.sport)
		binary.BigEndian.PutUint16(l4[2:], s.dport)
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	default: // ICMP echo
		l4 = make([]byte, 8+s.payload)
		l4[0] = 8
		if s.src.Is6() {
			l4[0] = 128
		}
	}
	for i := range l4[min(len(l4), 20):] {
		l4[20+i] = byte(i)
	}
	if s.src.Is4() {
		hl := 20
		if s.options {
			hl = 24
		}
		b := make([]byte, hl+len(l4))
		b[0] = 0x40 | byte(hl/4)
		b[1] = s.tos
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		binary.BigEndian.PutUint16(b[4:], s.id)
		fl := s.frag
		if s.df {
			fl |= 0x4000
		}
		binary.BigEndian.PutUint16(b[6:], fl)
		b[8], b[9] = 64, s.proto
		src, dst := s.src.As4(), s.dst.As4()
		copy(b[12:], src[:])
		copy(b[16:], dst[:])
		if s.options {
			b[20] = 1 // NOPs
			b[21], b[22], b[23] = 1, 1, 0
		}
		binary.BigEndian.PutUint16(b[10:], encap.Checksum(b[:hl]))
		copy(b[hl:], l4)
		return b
	}
	ext := 0
	if s.options {
		ext = 8
	}
	b := make([]byte, 40+ext+len(l4))
	binary.BigEndian.PutUint32(b[0:], 6<<28|uint32(s.tos)<<20|s.flow&0xfffff)
	binary.BigEndian.PutUint16(b[4:], uint16(ext+len(l4)))
	b[6], b[7] = s.proto, 64
	if s.options {
		b[6] = 0
		b[40] = s.proto
	}
	src, dst := s.src.As16(), s.dst.As16()
	copy(b[8:], src[:])
	copy(b[24:], dst[:])
	copy(b[40+ext:], l4)
	return b
}

// --- the corpus ---

func TestDifferentialFixtures(t *testing.T) {
	f, err := os.Open("../testdata/packets.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var pkts [][]byte
	var names []string
	dsts := map[netip.Addr]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var c map[string]any
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			t.Fatal(err)
		}
		for _, field := range []string{"packet", "want_packet"} {
			h, ok := c[field].(string)
			if !ok {
				continue
			}
			b, err := hex.DecodeString(h)
			if err != nil || len(b) == 0 {
				continue
			}
			pkts = append(pkts, b)
			names = append(names, fmt.Sprintf("%v/%s", c["name"], field))
			var pp encap.Packet
			if encap.Parse(b, &pp) == nil && pp.Tuple.Dst.IsValid() && !pp.Tuple.Dst.Is4In6() {
				dsts[pp.Tuple.Dst] = true
			}
		}
	}
	p := newPair(t, mux.Config{
		SourcePrefix4: netip.MustParsePrefix("198.18.200.0/24"),
		SourcePrefix6: netip.MustParsePrefix("2001:db8:ff::/64"),
		Maglev:        hashring.Config{Size: 1021},
	})
	i := 0
	for d := range dsts {
		if d.IsMulticast() || d.IsUnspecified() || d.IsLoopback() {
			continue
		}
		i++
		p.setVIP(fixtureVIP(d, i))
	}
	for i, b := range pkts {
		var pp encap.Packet
		perr := encap.Parse(b, &pp)
		special := perr != nil || pp.Fragment != encap.NotFragment || pp.ICMPError ||
			(pp.Tuple.Proto != ananta.ProtocolTCP && pp.Tuple.Proto != ananta.ProtocolUDP) ||
			(b[0]>>4 == 4 && b[0]&15 != 5) || (b[0]>>4 == 6 && len(b) > 6 && b[6] != 6 && b[6] != 17)
		p.compare(names[i], b, special)
	}
	t.Logf("fixtures: %d packets compared: %d forwarded (same bytes), %d dropped, %d passed %v; go drop reasons of xdp drops %v",
		p.stats.compared, p.stats.forwarded, p.stats.dropped, p.stats.passed, p.stats.passReason, p.stats.dropReason)
	if p.stats.forwarded < 20 {
		t.Errorf("only %d fixture packets forwarded", p.stats.forwarded)
	}
}

func fixtureVIP(vip netip.Addr, i int) ananta.VIPConfig {
	dip := func(n int) netip.Addr {
		if vip.Is4() {
			return netip.AddrFrom4([4]byte{10, 1, byte(i), byte(n)})
		}
		return netip.MustParseAddr(fmt.Sprintf("fd00:1:%x::%x", i, n))
	}
	h4 := func(n int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 100, byte(n)}) }
	h6 := func(n int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("2001:db8:100::%x", n)) }
	return ananta.VIPConfig{
		VIP: vip, Tenant: "t",
		Endpoints: []ananta.EndpointConfig{
			{Protocol: ananta.ProtocolTCP, Port: 80, Backends: []ananta.Backend{
				{DIP: dip(1), Port: 8080, Host: h4(1), Weight: 1},
				{DIP: dip(2), Port: 8080, Host: h6(2), Weight: 2},
			}},
			{Protocol: ananta.ProtocolUDP, Port: 53, Backends: []ananta.Backend{
				{DIP: dip(3), Port: 53, Host: h6(3), Weight: 1},
			}},
			{Protocol: ananta.ProtocolTCP, Port: 9, Backends: []ananta.Backend{
				{DIP: dip(3), Port: 9, Host: h6(3), Weight: 1, State: ananta.BackendDown},
			}},
			{Protocol: ananta.ProtocolAny, Backends: []ananta.Backend{
				{DIP: dip(4), Host: h4(4), Weight: 3},
				{DIP: dip(5), Host: h4(5), Weight: 1},
			}},
		},
	}
}

// --- generated packets ---

type genConfig struct {
	name   string
	mc     mux.Config
	vips   []ananta.VIPConfig
	snat   map[netip.Addr][]mux.SNATRange
	events func(p *pair, step int, rng *rand.Rand)
}

func backends(vip netip.Addr, base, n int, hostV4 bool, rng *rand.Rand) []ananta.Backend {
	return backendsPort(vip, base, n, hostV4, 8000, rng)
}

func backendsPort(vip netip.Addr, base, n int, hostV4 bool, port uint16, rng *rand.Rand) []ananta.Backend {
	var out []ananta.Backend
	for j := range n {
		var dip, host netip.Addr
		if vip.Is4() {
			dip = netip.AddrFrom4([4]byte{10, byte(base), byte(j >> 8), byte(j)})
		} else {
			dip = netip.MustParseAddr(fmt.Sprintf("fd00:%x::%x", base, j+1))
		}
		if hostV4 {
			host = netip.AddrFrom4([4]byte{198, 18, byte(base), byte(j + 1)})
		} else {
			host = netip.MustParseAddr(fmt.Sprintf("2001:db8:%x::%x", base, j+1))
		}
		st := ananta.BackendActive
		switch rng.IntN(10) {
		case 0:
			st = ananta.BackendDraining
		case 1:
			st = ananta.BackendDown
		}
		out = append(out, ananta.Backend{DIP: dip, Port: port, Host: host, Weight: uint32(1 + rng.IntN(5)), State: st})
	}
	return out
}

func genConfigs(rng *rand.Rand) []genConfig {
	v4a := netip.MustParseAddr("198.19.0.10")
	v4b := netip.MustParseAddr("198.19.0.11")
	v6a := netip.MustParseAddr("2001:db8:1::10")
	v6b := netip.MustParseAddr("2001:db8:1::11")
	mk := func(vip netip.Addr, base int) ananta.VIPConfig {
		return ananta.VIPConfig{VIP: vip, Tenant: "t", Endpoints: []ananta.EndpointConfig{
			{Protocol: ananta.ProtocolTCP, Port: 80, Backends: backends(vip, base, 2+rng.IntN(8), true, rng)},
			{Protocol: ananta.ProtocolTCP, Port: 443, Backends: backends(vip, base+1, 2+rng.IntN(8), false, rng)},
			{Protocol: ananta.ProtocolUDP, Port: 0, Backends: backendsPort(vip, base+2, 1+rng.IntN(4), rng.IntN(2) == 0, 0, rng)},
			{Protocol: ananta.ProtocolTCP, Port: 25, Backends: []ananta.Backend{{DIP: backends(vip, base+3, 1, true, rng)[0].DIP, Port: 25, Host: netip.MustParseAddr("198.18.9.9"), Weight: 1, State: ananta.BackendDown}}},
		}}
	}
	mkAny := func(vip netip.Addr, base int) ananta.VIPConfig {
		return ananta.VIPConfig{VIP: vip, Tenant: "t", Endpoints: []ananta.EndpointConfig{
			{Protocol: ananta.ProtocolTCP, Port: 8080, Backends: backends(vip, base, 3, false, rng)},
			{Protocol: ananta.ProtocolAny, Port: 0, Backends: backendsPort(vip, base+1, 5, true, 0, rng)},
		}}
	}
	// churn changes backend states and replaces VIPs while flows go on.
	churn := func(vips []ananta.VIPConfig) func(p *pair, step int, rng *rand.Rand) {
		return func(p *pair, step int, rng *rand.Rand) {
			if step%2000 != 1999 {
				return
			}
			v := vips[rng.IntN(len(vips))]
			switch rng.IntN(3) {
			case 0:
				ep := v.Endpoints[rng.IntN(len(v.Endpoints))]
				b := ep.Backends[rng.IntN(len(ep.Backends))]
				p.setState(v.VIP, b.DIP, b.Port, ananta.BackendState(rng.IntN(3)))
			case 1: // remove one backend, add another
				c := v.Clone()
				ep := &c.Endpoints[rng.IntN(len(c.Endpoints))]
				if len(ep.Backends) > 1 {
					ep.Backends = ep.Backends[1:]
				}
				nb := ep.Backends[0]
				nb.DIP = nb.DIP.Next().Next().Next()
				nb.Weight = 2
				nb.State = ananta.BackendActive
				dup := false
				for _, b := range ep.Backends {
					dup = dup || b.Key() == nb.Key()
				}
				if !dup {
					ep.Backends = append(ep.Backends, nb)
				}
				p.setVIP(c)
			case 2:
				p.setVIP(v)
			}
		}
	}
	c1 := []ananta.VIPConfig{mk(v4a, 1), mk(v6a, 10), mkAny(v4b, 20), mkAny(v6b, 30)}
	c2 := []ananta.VIPConfig{mk(v4a, 40), mk(v6a, 50), mkAny(v4b, 60), mkAny(v6b, 70)}
	c3 := []ananta.VIPConfig{mk(v4a, 80), mk(v6a, 90), mkAny(v4b, 100), mkAny(v6b, 110)}
	snat := map[netip.Addr][]mux.SNATRange{
		v4a: {
			{Range: ananta.PortRange{First: 1024, Last: 2047}, DIP: netip.MustParseAddr("10.9.0.1"), Host: netip.MustParseAddr("198.18.9.1")},
			{Range: ananta.PortRange{First: 3000, Last: 3333}, DIP: netip.MustParseAddr("10.9.0.2"), Host: netip.MustParseAddr("2001:db8:9::2")},
		},
		v6a: {
			{Range: ananta.PortRange{First: 5000, Last: 5007}, DIP: netip.MustParseAddr("fd00:9::1"), Host: netip.MustParseAddr("2001:db8:9::1")},
		},
	}
	return []genConfig{
		{name: "prefix-sources", vips: c1, snat: snat, events: churn(c1), mc: mux.Config{
			SourcePrefix4: netip.MustParsePrefix("198.18.200.0/24"),
			SourcePrefix6: netip.MustParsePrefix("2001:db8:ff::/64"),
			Maglev:        hashring.Config{Size: 4099},
		}},
		{name: "fixed-sources-default-maglev-keep", vips: c2, events: churn(c2), mc: mux.Config{
			Addr4:            netip.MustParseAddr("198.18.0.1"),
			Addr6:            netip.MustParseAddr("2001:db8::1"),
			FlowHashSeed:     0x1234567890abcdef,
			DownBackendFlows: mux.DownKeep,
			TTL:              17,
			MTU:              1400,
		}},
		{name: "narrow-prefixes-seeded-maglev", vips: c3, snat: snat, events: churn(c3), mc: mux.Config{
			SourcePrefix4: netip.MustParsePrefix("198.18.250.0/30"),
			SourcePrefix6: netip.MustParsePrefix("2001:db8:fe::/120"),
			Maglev:        hashring.Config{Size: 1021, Seed: 99},
		}},
	}
}

const packetsPerConfig = 40000

func TestDifferentialGenerated(t *testing.T) {
	total := 0
	for ci, gc := range genConfigs(rand.New(rand.NewPCG(1, 2))) {
		t.Run(gc.name, func(t *testing.T) {
			p := newPair(t, gc.mc)
			for _, v := range gc.vips {
				p.setVIP(v)
			}
			for vip, rs := range gc.snat {
				p.setSNAT(vip, rs)
			}
			rng := rand.New(rand.NewPCG(uint64(ci), 7))
			var flows []pktSpec
			var vips []netip.Addr
			for _, v := range gc.vips {
				vips = append(vips, v.VIP)
			}
			n := packetsPerConfig
			if testing.Short() {
				n = 2000
			}
			for step := range n {
				gc.events(p, step, rng)
				var s pktSpec
				if len(flows) > 0 && rng.IntN(10) < 7 {
					s = flows[rng.IntN(len(flows))]
				} else {
					s = newFlow(rng, vips)
					flows = append(flows, s)
				}
				s.payload = rng.IntN(64)
				special := false
				switch r := rng.IntN(100); {
				case r < 2:
					s.payload = 1400 + rng.IntN(200) // too big once encapsulated
				case r < 4:
					s.options, special = true, true
				case r < 5 && s.dst.Is4():
					s.frag, special = 0x2000, true // first fragment (MF)
				case r < 6:
					s.proto, special = 1, true
				}
				if s.dst.Is4() {
					s.df = rng.IntN(4) != 0
					s.id = uint16(rng.Uint32())
				}
				if special {
					// The Go engine tracks the flows of the packets the XDP
					// program passes (its slow path); the XDP program does
					// not see them. Give such packets a 5-tuple of their own
					// so that both flow tables stay comparable.
					ns := newFlow(rng, vips)
					s.src, s.dst, s.sport, s.dport = ns.src, ns.dst, ns.sport, ns.dport
				}
				s.tos = uint8(rng.Uint32())
				p.compare(fmt.Sprintf("%s step %d", gc.name, step), build(s), special)
			}
			c, err := p.xdp.Counters()
			if err != nil {
				t.Fatal(err)
			}
			if got, want := int(c["drop_no_endpoint"]), p.stats.dropReason[mux.DropNoEndpoint]; got != want {
				t.Errorf("xdp drop_no_endpoint %d, go %d", got, want)
			}
			if got, want := int(c["drop_no_backend"]), p.stats.dropReason[mux.DropNoBackend]; got != want {
				t.Errorf("xdp drop_no_backend %d, go %d", got, want)
			}
			t.Logf("%d packets (%d flows) compared: %d forwarded (same bytes), %d dropped %v, %d passed %v; xdp counters %v",
				p.stats.compared, len(flows), p.stats.forwarded, p.stats.dropped, p.stats.dropReason, p.stats.passed, p.stats.passReason, c)
			total += p.stats.compared
		})
	}
	t.Logf("%d generated packets compared in all", total)
}

func newFlow(rng *rand.Rand, vips []netip.Addr) pktSpec {
	dst := vips[rng.IntN(len(vips))]
	var src netip.Addr
	if dst.Is4() {
		src = netip.AddrFrom4([4]byte{203, 0, byte(rng.IntN(4)), byte(rng.Uint32())})
	} else {
		var a [16]byte
		copy(a[:], netip.MustParseAddr("2001:db8:c::").AsSlice())
		binary.BigEndian.PutUint32(a[12:], rng.Uint32())
		src = netip.AddrFrom16(a)
	}
	if rng.IntN(50) == 0 { // not a VIP
		if dst.Is4() {
			dst = netip.MustParseAddr("198.19.0.99")
		} else {
			dst = netip.MustParseAddr("2001:db8:1::99")
		}
	}
	proto := uint8(6)
	if rng.IntN(3) == 0 {
		proto = 17
	}
	ports := []uint16{80, 443, 25, 8080, 53, 1024, 1500, 2047, 2048, 3000, 3333, 5000, 5007, 5008, 22}
	dport := ports[rng.IntN(len(ports))]
	if rng.IntN(4) == 0 {
		dport = uint16(1 + rng.IntN(65535))
	}
	return pktSpec{src: src, dst: dst, proto: proto, sport: uint16(1024 + rng.IntN(60000)), dport: dport, flow: rng.Uint32()}
}

func TestUnprivilegedError(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("runs as root: New succeeds")
	}
	_, err := New(Config{Mux: mux.Config{Addr4: netip.MustParseAddr("198.18.0.1")}})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("New without privileges: %v, want ErrUnavailable", err)
	}
}
