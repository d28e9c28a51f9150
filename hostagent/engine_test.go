package hostagent

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
)

var (
	hostAddr = addr("198.18.3.2")
	muxAddr  = addr("198.18.2.2")
	vipAddr  = addr("198.19.0.10")
	dip1     = addr("198.18.100.2") // VM 0
	dip2     = addr("198.18.100.3") // VM 1
	t0       = time.Now().Add(time.Hour).Truncate(time.Second)
)

func webVIP() ananta.VIPConfig {
	return ananta.VIPConfig{
		VIP: vipAddr, Tenant: "t1",
		Endpoints: []ananta.EndpointConfig{{
			Protocol: ananta.ProtocolTCP, Port: 80,
			Backends: []ananta.Backend{{DIP: dip1, Port: 8080, Host: hostAddr, Weight: 1}},
		}},
	}
}

func newEngine(t testing.TB, vips ...ananta.VIPConfig) *Engine {
	t.Helper()
	e, err := NewEngine(EngineConfig{
		HostAddrs:   []netip.Addr{hostAddr, addr("2001:db8:3::2")},
		MuxPrefixes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24"), netip.MustParsePrefix("2001:db8:2::/64")},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.Advance(t0, noEmit(t))
	if err := e.SetVM(0, []netip.Addr{dip1, addr("2001:db8:100::2")}); err != nil {
		t.Fatal(err)
	}
	if err := e.SetVM(1, []netip.Addr{dip2, addr("2001:db8:100::3")}); err != nil {
		t.Fatal(err)
	}
	for _, v := range vips {
		if err := e.SetVIP(v); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

func noEmit(t testing.TB) func(Verdict, int, []byte) {
	return func(v Verdict, vm int, pkt []byte) {
		t.Errorf("unexpected emitted packet (%s, vm %d, % x)", v, vm, pkt)
	}
}

// in sends pkt through a tunnel from the mux and returns the result and the
// output packet.
func (e *Engine) in(t testing.TB, pkt []byte) (Result, []byte) {
	t.Helper()
	outer := muxAddr
	host := hostAddr
	if pkt[0]>>4 == 6 {
		outer, host = addr("2001:db8:2::2"), addr("2001:db8:3::2")
	}
	b, start := tunnel(t, pkt, outer, host)
	r := e.ProcessInbound(b, start, len(b))
	if r.Verdict == ToVM || r.Verdict == ToUplink {
		return r, b[r.Start:r.End]
	}
	return r, nil
}

func (e *Engine) out(t testing.TB, vm int, pkt []byte) (Result, []byte) {
	t.Helper()
	b := bytes.Clone(pkt)
	r := e.ProcessOutbound(vm, b, 0, len(b))
	if r.Verdict == ToVM || r.Verdict == ToUplink {
		return r, b[r.Start:r.End]
	}
	return r, nil
}

func wantVerdict(t testing.TB, r Result, v Verdict, reason DropReason) {
	t.Helper()
	if r.Verdict != v || r.Reason != reason {
		t.Fatalf("got verdict %s (%s), want %s (%s)", r.Verdict, r.Reason, v, reason)
	}
}

func wantTuple(t testing.TB, pkt []byte, src, dst netip.AddrPort) {
	t.Helper()
	checkSums(t, pkt)
	p := parse(t, pkt)
	if got := netip.AddrPortFrom(p.Tuple.Src, p.Tuple.SrcPort); got != src {
		t.Fatalf("source %s, want %s", got, src)
	}
	if got := netip.AddrPortFrom(p.Tuple.Dst, p.Tuple.DstPort); got != dst {
		t.Fatalf("destination %s, want %s", got, dst)
	}
}

func TestInboundDNATAndDirectReturn(t *testing.T) {
	e := newEngine(t, webVIP())
	client := ap("198.18.1.2:40000")
	vip := netip.AddrPortFrom(vipAddr, 80)
	dip := netip.AddrPortFrom(dip1, 8080)
	syn := build(pktSpec{src: client, dst: vip, proto: ananta.ProtocolTCP, flags: tcpSYN, seq: 100})
	r, out := e.in(t, syn)
	wantVerdict(t, r, ToVM, DropNone)
	if r.VM != 0 {
		t.Fatalf("delivered to VM %d, want 0", r.VM)
	}
	wantTuple(t, out, client, dip)
	// The SYN-ACK from the VM leaves as the VIP, to the client directly.
	synack := build(pktSpec{src: dip, dst: client, proto: ananta.ProtocolTCP, flags: tcpSYN | tcpACK, seq: 500, ack: 101})
	r, out = e.out(t, 0, synack)
	wantVerdict(t, r, ToUplink, DropNone)
	wantTuple(t, out, vip, client)
	// Data both ways, with payload.
	data := build(pktSpec{src: client, dst: vip, proto: ananta.ProtocolTCP, flags: tcpACK | 0x08, seq: 101, ack: 501, payload: []byte("GET / HTTP/1.0\r\n\r\n")})
	r, out = e.in(t, data)
	wantVerdict(t, r, ToVM, DropNone)
	wantTuple(t, out, client, dip)
	if !bytes.HasSuffix(out, []byte("GET / HTTP/1.0\r\n\r\n")) {
		t.Fatal("payload changed")
	}
	if st := e.Stats(); st.Flows != 1 || st.FlowsCreated != 1 || st.Inbound.ToVM != 2 || st.Outbound.ToUplink != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Another VM may not answer for this flow.
	r, _ = e.out(t, 1, synack)
	wantVerdict(t, r, Drop, DropSpoofed)
	// A packet from the VM that belongs to no flow and whose VIP has no
	// SNAT is dropped.
	r, _ = e.out(t, 0, build(pktSpec{src: dip, dst: ap("198.18.1.2:40001"), proto: ananta.ProtocolTCP, flags: tcpSYN}))
	wantVerdict(t, r, Drop, DropNoSNAT)
}

func TestInboundIPv6(t *testing.T) {
	v := ananta.VIPConfig{
		VIP: addr("2001:db8:19::10"), Tenant: "t1",
		Endpoints: []ananta.EndpointConfig{{
			Protocol: ananta.ProtocolUDP, Port: 53,
			Backends: []ananta.Backend{{DIP: addr("2001:db8:100::2"), Host: addr("2001:db8:3::2"), Weight: 1}},
		}},
	}
	e := newEngine(t, v)
	client := ap("[2001:db8:1::2]:5353")
	vip := ap("[2001:db8:19::10]:53")
	dip := ap("[2001:db8:100::2]:53")
	r, out := e.in(t, build(pktSpec{src: client, dst: vip, proto: ananta.ProtocolUDP, payload: []byte("q")}))
	wantVerdict(t, r, ToVM, DropNone)
	wantTuple(t, out, client, dip)
	r, out = e.out(t, 0, build(pktSpec{src: dip, dst: client, proto: ananta.ProtocolUDP, payload: []byte("answer")}))
	wantVerdict(t, r, ToUplink, DropNone)
	wantTuple(t, out, vip, client)
}

func TestTunnelFiltering(t *testing.T) {
	e := newEngine(t, webVIP())
	syn := build(pktSpec{src: ap("198.18.1.2:40000"), dst: netip.AddrPortFrom(vipAddr, 80), proto: ananta.ProtocolTCP, flags: tcpSYN})
	// Not from a Mux.
	b, start := tunnel(t, syn, addr("198.18.9.9"), hostAddr)
	wantVerdict(t, e.ProcessInbound(b, start, len(b)), Drop, DropNotMux)
	// Not to this host.
	b, start = tunnel(t, syn, muxAddr, addr("198.18.3.99"))
	wantVerdict(t, e.ProcessInbound(b, start, len(b)), Drop, DropNotHost)
	// Plain packets are the kernel's.
	wantVerdict(t, e.ProcessInbound(bytes.Clone(syn), 0, len(syn)), Pass, DropNone)
	// To the VIP, but another port: no endpoint.
	r, _ := e.in(t, build(pktSpec{src: ap("198.18.1.2:40000"), dst: netip.AddrPortFrom(vipAddr, 81), proto: ananta.ProtocolTCP, flags: tcpSYN}))
	wantVerdict(t, r, Drop, DropNoEndpoint)
	r, _ = e.in(t, build(pktSpec{src: ap("198.18.1.2:40000"), dst: ap("198.19.0.99:80"), proto: ananta.ProtocolTCP, flags: tcpSYN}))
	wantVerdict(t, r, Drop, DropNoVIP)
	st := e.Stats()
	if st.Drops[DropNotMux] != 1 || st.Drops[DropNotHost] != 1 || st.Inbound.Pass != 1 || st.Flows != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestFloatingIP(t *testing.T) {
	v := webVIP()
	v.Endpoints[0].FloatingIP = true
	v.Endpoints[0].Backends[0].Port = 0
	e := newEngine(t, v)
	client := ap("198.18.1.2:40000")
	vip := netip.AddrPortFrom(vipAddr, 80)
	syn := build(pktSpec{src: client, dst: vip, proto: ananta.ProtocolTCP, flags: tcpSYN})
	r, out := e.in(t, syn)
	wantVerdict(t, r, ToVM, DropNone)
	if !bytes.Equal(out, syn) {
		t.Fatal("floating IP: the inner packet must reach the VM unchanged")
	}
	// The VM answers from the VIP it holds on its loopback.
	synack := build(pktSpec{src: vip, dst: client, proto: ananta.ProtocolTCP, flags: tcpSYN | tcpACK})
	r, out = e.out(t, 0, synack)
	wantVerdict(t, r, ToUplink, DropNone)
	if !bytes.Equal(out, synack) {
		t.Fatal("floating IP: the reply must leave unchanged")
	}
	// Answering from the DIP is no reply of this flow.
	r, _ = e.out(t, 0, build(pktSpec{src: netip.AddrPortFrom(dip1, 80), dst: client, proto: ananta.ProtocolTCP, flags: tcpSYN | tcpACK}))
	wantVerdict(t, r, Drop, DropNoSNAT)
}

func TestACL(t *testing.T) {
	v := webVIP()
	v.Endpoints[0].ACL = []ananta.ACLRule{
		{Action: ananta.ACLDeny, Source: netip.MustParsePrefix("198.18.1.128/25")},
		{Action: ananta.ACLAllow, Source: netip.MustParsePrefix("198.18.1.0/24"), SourcePorts: ananta.PortRange{First: 1024, Last: 65535}},
	}
	e := newEngine(t, v)
	vip := netip.AddrPortFrom(vipAddr, 80)
	dip := netip.AddrPortFrom(dip1, 8080)
	for _, c := range []struct {
		src  string
		want Verdict
	}{
		{"198.18.1.2:40000", ToVM},   // second rule
		{"198.18.1.200:40000", Drop}, // first rule denies
		{"198.18.1.2:80", Drop},      // source port outside the allow rule: no match, denied
		{"198.18.9.2:40000", Drop},   // no match at all: denied
	} {
		r, _ := e.in(t, build(pktSpec{src: ap(c.src), dst: vip, proto: ananta.ProtocolTCP, flags: tcpSYN}))
		if r.Verdict != c.want || (c.want == Drop && r.Reason != DropACL) {
			t.Errorf("%s: verdict %s (%s), want %s", c.src, r.Verdict, r.Reason, c.want)
		}
	}
	// The reply of the allowed flow passes (stateful).
	r, out := e.out(t, 0, build(pktSpec{src: dip, dst: ap("198.18.1.2:40000"), proto: ananta.ProtocolTCP, flags: tcpSYN | tcpACK}))
	wantVerdict(t, r, ToUplink, DropNone)
	wantTuple(t, out, vip, ap("198.18.1.2:40000"))
	if got := e.Stats().Drops[DropACL]; got != 3 {
		t.Fatalf("%d ACL drops counted, want 3", got)
	}
}

func TestICMPErrorsTranslated(t *testing.T) {
	e := newEngine(t, webVIP())
	client := ap("198.18.1.2:40000")
	vip := netip.AddrPortFrom(vipAddr, 80)
	dip := netip.AddrPortFrom(dip1, 8080)
	syn := build(pktSpec{src: client, dst: vip, proto: ananta.ProtocolTCP, flags: tcpSYN})
	if r, _ := e.in(t, syn); r.Verdict != ToVM {
		t.Fatal(r)
	}
	// A router on the way to the client reports that the VIP's reply did
	// not fit: the error comes back through a Mux, to the VIP.
	reply := build(pktSpec{src: vip, dst: client, proto: ananta.ProtocolTCP, flags: tcpSYN | tcpACK})
	icmp := icmpError(addr("198.18.1.1"), vipAddr, reply)
	r, out := e.in(t, icmp)
	wantVerdict(t, r, ToVM, DropNone)
	checkSums(t, out)
	p := parse(t, out)
	if p.Tuple.Dst != dip1 || p.Inner.Src != dip1 || p.Inner.SrcPort != 8080 || p.Inner.Dst != client.Addr() {
		t.Fatalf("translated error: outer %s, quoted %s", p.Tuple, p.Inner)
	}
	checkSums(t, out[p.InnerOffset:]) // the quote is whole here: its checksums hold too
	// The VM reports an error about a packet it got from the client.
	got := build(pktSpec{src: client, dst: dip, proto: ananta.ProtocolTCP, flags: tcpACK})
	r, out = e.out(t, 0, icmpError(dip1, client.Addr(), got))
	wantVerdict(t, r, ToUplink, DropNone)
	checkSums(t, out)
	p = parse(t, out)
	if p.Tuple.Src != vipAddr || p.Inner.Dst != vipAddr || p.Inner.DstPort != 80 {
		t.Fatalf("translated error: outer %s, quoted %s", p.Tuple, p.Inner)
	}
	// An error about an unknown flow is dropped.
	other := build(pktSpec{src: vip, dst: ap("198.18.1.2:1"), proto: ananta.ProtocolTCP, flags: tcpACK})
	r, _ = e.in(t, icmpError(addr("198.18.1.1"), vipAddr, other))
	wantVerdict(t, r, Drop, DropNoFlow)
	if n := e.Stats().ICMPErrors; n != 2 {
		t.Fatalf("%d ICMP errors translated, want 2", n)
	}
}

// emitted collects packets an engine emits.
type emitted struct {
	v   Verdict
	vm  int
	pkt []byte
}

func collect(list *[]emitted) func(Verdict, int, []byte) {
	return func(v Verdict, vm int, pkt []byte) { *list = append(*list, emitted{v, vm, bytes.Clone(pkt)}) }
}

func TestIdleTimeoutAndReset(t *testing.T) {
	v := webVIP()
	v.Endpoints[0].IdleTimeout = 30 * time.Second
	v.Endpoints[0].TCPResetOnIdle = true
	v.Endpoints = append(v.Endpoints, ananta.EndpointConfig{
		Protocol: ananta.ProtocolTCP, Port: 81, IdleTimeout: 30 * time.Second,
		Backends: []ananta.Backend{{DIP: dip1, Port: 8081, Host: hostAddr, Weight: 1}},
	})
	e := newEngine(t, v)
	client := ap("198.18.1.2:40000")
	vip := netip.AddrPortFrom(vipAddr, 80)
	dip := netip.AddrPortFrom(dip1, 8080)
	// Handshake: client ISN 1000, server ISN 5000.
	steps := []struct {
		fromVM bool
		spec   pktSpec
	}{
		{false, pktSpec{src: client, dst: vip, flags: tcpSYN, seq: 1000}},
		{true, pktSpec{src: dip, dst: client, flags: tcpSYN | tcpACK, seq: 5000, ack: 1001}},
		{false, pktSpec{src: client, dst: vip, flags: tcpACK, seq: 1001, ack: 5001}},
		{false, pktSpec{src: client, dst: vip, flags: tcpACK, seq: 1001, ack: 5001, payload: []byte("hello")}},
		{true, pktSpec{src: dip, dst: client, flags: tcpACK, seq: 5001, ack: 1006, payload: []byte("hi")}},
		{false, pktSpec{src: client, dst: vip, flags: tcpACK, seq: 1006, ack: 5003}},
	}
	for i, s := range steps {
		s.spec.proto = ananta.ProtocolTCP
		var r Result
		if s.fromVM {
			r, _ = e.out(t, 0, build(s.spec))
		} else {
			r, _ = e.in(t, build(s.spec))
		}
		if r.Verdict != ToVM && r.Verdict != ToUplink {
			t.Fatalf("step %d: %s (%s)", i, r.Verdict, r.Reason)
		}
	}
	// A second flow on port 81, without reset on idle, and established.
	c2 := ap("198.18.1.2:40001")
	e.in(t, build(pktSpec{src: c2, dst: netip.AddrPortFrom(vipAddr, 81), proto: ananta.ProtocolTCP, flags: tcpSYN, seq: 1}))
	e.out(t, 0, build(pktSpec{src: netip.AddrPortFrom(dip1, 8081), dst: c2, proto: ananta.ProtocolTCP, flags: tcpSYN | tcpACK, seq: 9, ack: 2}))
	e.in(t, build(pktSpec{src: c2, dst: netip.AddrPortFrom(vipAddr, 81), proto: ananta.ProtocolTCP, flags: tcpACK, seq: 2, ack: 10}))
	if n := e.Flows(); n != 2 {
		t.Fatalf("%d flows, want 2", n)
	}
	// Just before the timeout nothing happens.
	e.Advance(t0.Add(30*time.Second-time.Millisecond), noEmit(t))
	if n := e.Flows(); n != 2 {
		t.Fatalf("%d flows before the idle timeout, want 2", n)
	}
	var got []emitted
	e.Advance(t0.Add(30*time.Second), collect(&got))
	if n := e.Flows(); n != 0 {
		t.Fatalf("%d flows after the idle timeout, want 0", n)
	}
	if len(got) != 2 {
		t.Fatalf("%d packets emitted, want 2 RSTs", len(got))
	}
	for _, g := range got {
		checkSums(t, g.pkt)
		p := parse(t, g.pkt)
		seq := binary.BigEndian.Uint32(g.pkt[p.L4Offset+4:])
		switch g.v {
		case ToUplink: // to the client, from the VIP, at the client's rcv_nxt
			if p.Tuple != (ananta.FiveTuple{Src: vipAddr, Dst: client.Addr(), SrcPort: 80, DstPort: client.Port(), Proto: ananta.ProtocolTCP}) || seq != 5003 {
				t.Errorf("RST to client: %s seq %d", p.Tuple, seq)
			}
		case ToVM: // to the backend, from the client, at the VM's rcv_nxt
			if g.vm != 0 || p.Tuple != (ananta.FiveTuple{Src: client.Addr(), Dst: dip1, SrcPort: client.Port(), DstPort: 8080, Proto: ananta.ProtocolTCP}) || seq != 1006 {
				t.Errorf("RST to VM %d: %s seq %d", g.vm, p.Tuple, seq)
			}
		default:
			t.Errorf("verdict %s", g.v)
		}
		if p.TCPFlags != tcpRST {
			t.Errorf("flags %#x, want RST", p.TCPFlags)
		}
	}
	if st := e.Stats(); st.IdleResets != 2 || st.FlowsExpired != 2 {
		t.Fatalf("stats: %d resets, %d expired", st.IdleResets, st.FlowsExpired)
	}
	// After expiry a mid-stream packet from the VM belongs to no flow.
	r, _ := e.out(t, 0, build(pktSpec{src: dip, dst: client, proto: ananta.ProtocolTCP, flags: tcpACK}))
	wantVerdict(t, r, Drop, DropNoSNAT)
}

func TestDefaultIdleTimeoutAndClose(t *testing.T) {
	e := newEngine(t, webVIP())
	client := ap("198.18.1.2:40000")
	vip := netip.AddrPortFrom(vipAddr, 80)
	e.in(t, build(pktSpec{src: client, dst: vip, proto: ananta.ProtocolTCP, flags: tcpSYN}))
	e.Advance(t0.Add(ananta.DefaultIdleTimeout-time.Second), noEmit(t))
	if e.Flows() != 1 {
		t.Fatal("flow expired before 4 minutes")
	}
	e.Advance(t0.Add(ananta.DefaultIdleTimeout), noEmit(t))
	if e.Flows() != 0 {
		t.Fatal("flow not expired after 4 minutes")
	}
	// A reset flow goes after CloseTimeout.
	now := t0.Add(ananta.DefaultIdleTimeout)
	e.in(t, build(pktSpec{src: client, dst: vip, proto: ananta.ProtocolTCP, flags: tcpSYN}))
	e.out(t, 0, build(pktSpec{src: netip.AddrPortFrom(dip1, 8080), dst: client, proto: ananta.ProtocolTCP, flags: tcpRST}))
	e.Advance(now.Add(DefaultCloseTimeout), noEmit(t))
	if e.Flows() != 0 {
		t.Fatal("reset flow kept past the close timeout")
	}
}

func TestHealthAndBackendChoice(t *testing.T) {
	v := webVIP()
	v.Endpoints[0].Backends = append(v.Endpoints[0].Backends, ananta.Backend{DIP: dip2, Port: 8080, Host: hostAddr, Weight: 1})
	e := newEngine(t, v)
	vip := netip.AddrPortFrom(vipAddr, 80)
	seen := map[int]int{}
	for i := range 200 {
		r, _ := e.in(t, build(pktSpec{src: netip.AddrPortFrom(addr("198.18.1.2"), uint16(10000+i)), dst: vip, proto: ananta.ProtocolTCP, flags: tcpSYN}))
		seen[r.VM]++
	}
	if seen[0] < 50 || seen[1] < 50 {
		t.Fatalf("new flows spread %v over two equal local backends", seen)
	}
	e.SetHealth(dip2, 8080, false)
	for i := range 50 {
		r, _ := e.in(t, build(pktSpec{src: netip.AddrPortFrom(addr("198.18.1.3"), uint16(10000+i)), dst: vip, proto: ananta.ProtocolTCP, flags: tcpSYN}))
		if r.Verdict != ToVM || r.VM != 0 {
			t.Fatalf("new flow went to %s VM %d while VM 1 is down", r.Verdict, r.VM)
		}
	}
	// Existing flows of the down backend keep going.
	for i := range 200 {
		r, _ := e.in(t, build(pktSpec{src: netip.AddrPortFrom(addr("198.18.1.2"), uint16(10000+i)), dst: vip, proto: ananta.ProtocolTCP, flags: tcpACK}))
		if r.Verdict != ToVM {
			t.Fatalf("existing flow dropped: %s", r.Reason)
		}
	}
	e.SetHealth(dip1, 8080, false)
	r, _ := e.in(t, build(pktSpec{src: ap("198.18.1.4:1000"), dst: vip, proto: ananta.ProtocolTCP, flags: tcpSYN}))
	wantVerdict(t, r, Drop, DropNoBackend)
	e.SetHealth(dip1, 8080, true)
	r, _ = e.in(t, build(pktSpec{src: ap("198.18.1.4:1000"), dst: vip, proto: ananta.ProtocolTCP, flags: tcpSYN}))
	wantVerdict(t, r, ToVM, DropNone)
}

func TestDeleteVIPFlushesFlows(t *testing.T) {
	e := newEngine(t, webVIP())
	e.in(t, build(pktSpec{src: ap("198.18.1.2:40000"), dst: netip.AddrPortFrom(vipAddr, 80), proto: ananta.ProtocolTCP, flags: tcpSYN}))
	if e.Flows() != 1 {
		t.Fatal("no flow")
	}
	if err := e.DeleteVIP(vipAddr); err != nil {
		t.Fatal(err)
	}
	if e.Flows() != 0 {
		t.Fatal("flows of a deleted VIP remain")
	}
	if err := e.DeleteVIP(vipAddr); !errors.Is(err, ErrUnknownVIP) {
		t.Fatalf("second delete: %v", err)
	}
	r, _ := e.in(t, build(pktSpec{src: ap("198.18.1.2:40000"), dst: netip.AddrPortFrom(vipAddr, 80), proto: ananta.ProtocolTCP, flags: tcpACK}))
	wantVerdict(t, r, Drop, DropNoVIP)
}

func TestTableFull(t *testing.T) {
	e, err := NewEngine(EngineConfig{HostAddrs: []netip.Addr{hostAddr}, MuxPrefixes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}, MaxFlows: 10})
	if err != nil {
		t.Fatal(err)
	}
	e.SetVM(0, []netip.Addr{dip1})
	if err := e.SetVIP(webVIP()); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		r, _ := e.in(t, build(pktSpec{src: netip.AddrPortFrom(addr("198.18.1.2"), uint16(1000+i)), dst: netip.AddrPortFrom(vipAddr, 80), proto: ananta.ProtocolTCP, flags: tcpSYN}))
		if want := i < 10; (r.Verdict == ToVM) != want {
			t.Fatalf("flow %d: %s (%s)", i, r.Verdict, r.Reason)
		}
	}
	if st := e.Stats(); st.Flows != 10 || st.Drops[DropTableFull] != 10 {
		t.Fatalf("flows %d, table-full drops %d", st.Flows, st.Drops[DropTableFull])
	}
}

func TestHostilePackets(t *testing.T) {
	e := newEngine(t, webVIP())
	syn := build(pktSpec{src: ap("198.18.1.2:40000"), dst: netip.AddrPortFrom(vipAddr, 80), proto: ananta.ProtocolTCP, flags: tcpSYN})
	b, start := tunnel(t, syn, muxAddr, hostAddr)
	tun := b[start:]
	cases := map[string][]byte{
		"empty":            {},
		"one byte":         {0x45},
		"version 5":        append([]byte{0x55}, tun[1:]...),
		"short outer":      tun[:19],
		"inner truncated":  tun[:30],
		"bad outer sum":    func() []byte { c := bytes.Clone(tun); c[10] ^= 0xff; return c }(),
		"outer fragment":   func() []byte { c := bytes.Clone(tun); c[6] = 0x20; return c }(),
		"inner ihl 3":      func() []byte { c := bytes.Clone(tun); c[20] = 0x43; return c }(),
		"inner len 65535":  func() []byte { c := bytes.Clone(tun); c[22], c[23] = 0xff, 0xff; return c }(),
		"tcp offset 15":    func() []byte { c := bytes.Clone(tun); c[52] = 0xf0; return c }(),
		"inner version 6":  func() []byte { c := bytes.Clone(tun); c[20] = 0x65; return c }(),
		"outer len short":  func() []byte { c := bytes.Clone(tun); c[2], c[3] = 0, 10; return c }(),
		"inner fragment":   func() []byte { c := bytes.Clone(tun); c[26] = 0x20; return c }(),
		"tunnel in tunnel": func() []byte { b2, s2 := tunnel(t, tun, muxAddr, hostAddr); return b2[s2:] }(),
	}
	for name, pkt := range cases {
		for _, vm := range []int{-1, 0, 1, MaxVMs} {
			buf := bytes.Clone(pkt)
			e.ProcessOutbound(vm, buf, 0, len(buf))
		}
		buf := bytes.Clone(pkt)
		r := e.ProcessInbound(buf, 0, len(buf))
		if r.Verdict != Drop && r.Verdict != Pass {
			t.Errorf("%s: verdict %s", name, r.Verdict)
		}
		// Bad bounds never panic either.
		e.ProcessInbound(buf, 5, 2)
		e.ProcessInbound(buf, 0, len(buf)+1)
		e.ProcessOutbound(0, buf, -1, 0)
	}
	st := e.Stats()
	if st.Flows != 0 || st.Drops[DropMalformed] == 0 || st.Drops[DropFragment] < 2 {
		t.Fatalf("stats after hostile packets: flows %d, malformed %d, fragments %d", st.Flows, st.Drops[DropMalformed], st.Drops[DropFragment])
	}
	// The engine still works.
	r, _ := e.in(t, syn)
	wantVerdict(t, r, ToVM, DropNone)
	// VM 1 may neither send as VM 0's DIP nor send errors about its flows.
	dip := netip.AddrPortFrom(dip1, 8080)
	client := ap("198.18.1.2:40000")
	r, _ = e.out(t, 1, build(pktSpec{src: dip, dst: ap("198.18.1.2:1"), proto: ananta.ProtocolTCP, flags: tcpSYN}))
	wantVerdict(t, r, Drop, DropSpoofed)
	got := build(pktSpec{src: client, dst: dip, proto: ananta.ProtocolTCP, flags: tcpACK})
	r, _ = e.out(t, 1, icmpError(dip2, client.Addr(), got))
	wantVerdict(t, r, Drop, DropSpoofed)
	// A quote cut short before its ports matches no flow.
	r, _ = e.out(t, 0, icmpError(dip1, client.Addr(), got[:22]))
	if r.Verdict != Drop {
		t.Fatalf("error with a truncated quote: %s", r.Verdict)
	}
}

func FuzzProcess(f *testing.F) {
	syn := build(pktSpec{src: ap("198.18.1.2:40000"), dst: netip.AddrPortFrom(vipAddr, 80), proto: ananta.ProtocolTCP, flags: tcpSYN})
	b := make([]byte, headroom+len(syn))
	copy(b[headroom:], syn)
	s, _ := encap.Encap(b, headroom, len(b), muxAddr, hostAddr, encap.EncapOptions{})
	f.Add(b[s:], false)
	f.Add(syn, true)
	f.Add(icmpError(dip1, addr("198.18.1.2"), syn), true)
	e := newEngine(f, webVIP())
	f.Fuzz(func(t *testing.T, pkt []byte, outbound bool) {
		buf := bytes.Clone(pkt)
		var r Result
		if outbound {
			r = e.ProcessOutbound(0, buf, 0, len(buf))
		} else {
			r = e.ProcessInbound(buf, 0, len(buf))
		}
		if r.Verdict == ToVM || r.Verdict == ToUplink {
			if r.Start < 0 || r.End > len(buf) || r.Start >= r.End {
				t.Fatalf("result range %d:%d of %d", r.Start, r.End, len(buf))
			}
		}
	})
}
