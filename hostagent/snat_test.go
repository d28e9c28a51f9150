package hostagent

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
)

func snatVIP() ananta.VIPConfig {
	v := webVIP()
	v.Endpoints[0].Backends = append(v.Endpoints[0].Backends, ananta.Backend{DIP: dip2, Port: 8080, Host: hostAddr, Weight: 1})
	v.SNAT = ananta.SNATConfig{Enabled: true}
	return v
}

func TestSNATThousandConnections(t *testing.T) {
	e := newEngine(t, snatVIP())
	// Each DIP holds 512 ports: enough for 500 connections to one server.
	for i, d := range []netip.Addr{dip1, dip2} {
		r := ananta.PortRange{First: uint16(2048 + 512*i), Last: uint16(2048 + 512*i + 511)}
		if err := e.AddSNATRanges(vipAddr, d, []ananta.PortRange{r}); err != nil {
			t.Fatal(err)
		}
	}
	server := ap("198.18.50.2:443")
	type conn struct {
		vm  int
		src netip.AddrPort // DIP:port
		ext netip.AddrPort // VIP:port
	}
	var conns []conn
	seen := map[netip.AddrPort]int{}
	for i := range 1000 {
		vm := i % 2
		dip := []netip.Addr{dip1, dip2}[vm]
		src := netip.AddrPortFrom(dip, uint16(30000+i/2))
		r, out := e.out(t, vm, build(pktSpec{src: src, dst: server, proto: ananta.ProtocolTCP, flags: tcpSYN, seq: uint32(i)}))
		wantVerdict(t, r, ToUplink, DropNone)
		checkSums(t, out)
		p := parse(t, out)
		if p.Tuple.Src != vipAddr || p.Tuple.Dst != server.Addr() || p.Tuple.DstPort != server.Port() {
			t.Fatalf("connection %d left as %s", i, p.Tuple)
		}
		ext := netip.AddrPortFrom(p.Tuple.Src, p.Tuple.SrcPort)
		if j, dup := seen[ext]; dup {
			t.Fatalf("connections %d and %d share %s -> %s", j, i, ext, server)
		}
		seen[ext] = i
		if lo := uint16(2048 + 512*vm); p.Tuple.SrcPort < lo || p.Tuple.SrcPort > lo+511 {
			t.Fatalf("connection %d of VM %d got port %d outside its DIP's range", i, vm, p.Tuple.SrcPort)
		}
		conns = append(conns, conn{vm, src, ext})
	}
	// Return traffic, as a Mux would tunnel it, reaches the right DIP and
	// source port.
	for i, c := range conns {
		r, out := e.in(t, build(pktSpec{src: server, dst: c.ext, proto: ananta.ProtocolTCP, flags: tcpSYN | tcpACK, ack: uint32(i + 1)}))
		wantVerdict(t, r, ToVM, DropNone)
		if r.VM != c.vm {
			t.Fatalf("return of connection %d went to VM %d, want %d", i, r.VM, c.vm)
		}
		wantTuple(t, out, server, c.src)
	}
	// A packet to a pool port from another remote is filtered.
	r, _ := e.in(t, build(pktSpec{src: ap("198.18.50.3:443"), dst: conns[0].ext, proto: ananta.ProtocolTCP, flags: tcpSYN | tcpACK}))
	wantVerdict(t, r, Drop, DropNoFlow)
	st := e.Stats()
	if st.Flows != 1000 || st.SNATPortsInUse != 1000 || st.SNATFlowsActive != 1000 {
		t.Fatalf("flows %d, ports in use %d, pool flows %d", st.Flows, st.SNATPortsInUse, st.SNATFlowsActive)
	}
	// A second destination reuses the same VIP ports: one port serves
	// many destinations while the 5-tuple stays unique.
	other := ap("198.18.50.9:443")
	r, out := e.out(t, 0, build(pktSpec{src: netip.AddrPortFrom(dip1, 50000), dst: other, proto: ananta.ProtocolTCP, flags: tcpSYN}))
	wantVerdict(t, r, ToUplink, DropNone)
	if p := parse(t, out); p.Tuple.SrcPort != 2048 {
		t.Fatalf("connection to a new destination got port %d, want the pool's lowest (2048) reused", p.Tuple.SrcPort)
	}
	if got := e.Stats().SNATPortsInUse; got != 1000 {
		t.Fatalf("%d ports in use after reuse, want 1000", got)
	}
}

func TestSNATHoldThenRelease(t *testing.T) {
	e := newEngine(t, snatVIP())
	server := ap("198.18.50.2:443")
	src := netip.AddrPortFrom(dip1, 40000)
	syn := build(pktSpec{src: src, dst: server, proto: ananta.ProtocolTCP, flags: tcpSYN, seq: 7})
	r, _ := e.out(t, 0, syn)
	wantVerdict(t, r, Held, DropNone)
	select {
	case <-e.SNATWake():
	default:
		t.Fatal("no wake-up for the held packet")
	}
	needs := e.SNATNeeds(t0)
	if len(needs) != 1 || needs[0].VIP != vipAddr || needs[0].DIP != dip1 || needs[0].Held != 1 || needs[0].Ports < 8 {
		t.Fatalf("needs %+v", needs)
	}
	// The retransmitted SYN is held too, and nothing leaves before ports.
	r, _ = e.out(t, 0, syn)
	wantVerdict(t, r, Held, DropNone)
	e.Advance(t0.Add(100*time.Millisecond), noEmit(t))
	if err := e.AddSNATRanges(vipAddr, dip1, []ananta.PortRange{{First: 4096, Last: 4103}}); err != nil {
		t.Fatal(err)
	}
	var got []emitted
	e.Advance(t0.Add(200*time.Millisecond), collect(&got))
	if len(got) != 2 {
		t.Fatalf("%d packets released, want 2", len(got))
	}
	for _, g := range got {
		if g.v != ToUplink {
			t.Fatalf("released packet verdict %s", g.v)
		}
		wantTuple(t, g.pkt, netip.AddrPortFrom(vipAddr, 4096), server)
	}
	st := e.Stats()
	if st.Held != 0 || st.HeldReleased != 2 || st.Outbound.Held != 2 || st.Flows != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestSNATHoldBoundAndTimeout(t *testing.T) {
	e, err := NewEngine(EngineConfig{
		HostAddrs: []netip.Addr{hostAddr}, MuxPrefixes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")},
		MaxHeld: 3, HoldTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.Advance(t0, noEmit(t))
	e.SetVM(0, []netip.Addr{dip1})
	v := webVIP()
	v.SNAT.Enabled = true
	if err := e.SetVIP(v); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		r, _ := e.out(t, 0, build(pktSpec{src: netip.AddrPortFrom(dip1, uint16(40000+i)), dst: ap("198.18.50.2:443"), proto: ananta.ProtocolTCP, flags: tcpSYN}))
		if want := Held; i >= 3 {
			wantVerdict(t, r, Drop, DropHoldFull)
		} else {
			wantVerdict(t, r, want, DropNone)
		}
	}
	e.Advance(t0.Add(time.Second), noEmit(t))
	st := e.Stats()
	if st.Held != 0 || st.Drops[DropHoldTimeout] != 3 || st.Drops[DropHoldFull] != 2 {
		t.Fatalf("held %d, timed out %d, full %d", st.Held, st.Drops[DropHoldTimeout], st.Drops[DropHoldFull])
	}
}

func TestSNATIdleRelease(t *testing.T) {
	e := newEngine(t, snatVIP())
	rs := []ananta.PortRange{{First: 2048, Last: 2055}, {First: 2056, Last: 2063}}
	if err := e.AddSNATRanges(vipAddr, dip1, rs); err != nil {
		t.Fatal(err)
	}
	server := ap("198.18.50.2:443")
	// Ten connections: the first range fills, two ports of the second.
	for i := range 10 {
		r, _ := e.out(t, 0, build(pktSpec{src: netip.AddrPortFrom(dip1, uint16(40000+i)), dst: server, proto: ananta.ProtocolTCP, flags: tcpSYN}))
		wantVerdict(t, r, ToUplink, DropNone)
	}
	if got := e.ReleaseIdleSNAT(t0.Add(time.Hour), 0); len(got) != 0 {
		t.Fatalf("released %v while every range has flows", got)
	}
	// The flows idle out after 4 minutes; their ports return to the pool.
	e.Advance(t0.Add(ananta.DefaultIdleTimeout), noEmit(t))
	if st := e.Stats(); st.Flows != 0 || st.SNATPortsInUse != 0 {
		t.Fatalf("flows %d, ports in use %d after the idle timeout", st.Flows, st.SNATPortsInUse)
	}
	// The ranges are idle a further idle timeout later, and go back.
	if got := e.ReleaseIdleSNAT(t0.Add(ananta.DefaultIdleTimeout+time.Minute), 0); len(got) != 0 {
		t.Fatalf("released %v too early", got)
	}
	got := e.ReleaseIdleSNAT(t0.Add(2*ananta.DefaultIdleTimeout), 0)
	if len(got) != 1 || got[0].DIP != dip1 || !slices.Equal(got[0].Ranges, rs) {
		t.Fatalf("released %+v, want both ranges of dip1", got)
	}
	if have, _ := e.SNATRanges(vipAddr, dip1); len(have) != 0 {
		t.Fatalf("pool still holds %v", have)
	}
}

func TestSNATUDPPortRestrictedCone(t *testing.T) {
	e := newEngine(t, snatVIP())
	if err := e.AddSNATRanges(vipAddr, dip1, []ananta.PortRange{{First: 2048, Last: 2055}}); err != nil {
		t.Fatal(err)
	}
	src := netip.AddrPortFrom(dip1, 5000)
	s1, s2, s3 := ap("198.18.50.2:53"), ap("198.18.50.3:53"), ap("198.18.50.4:53")
	var ports []uint16
	for _, dst := range []netip.AddrPort{s1, s2} {
		r, out := e.out(t, 0, build(pktSpec{src: src, dst: dst, proto: ananta.ProtocolUDP, payload: []byte("q")}))
		wantVerdict(t, r, ToUplink, DropNone)
		ports = append(ports, parse(t, out).Tuple.SrcPort)
	}
	if ports[0] != ports[1] {
		t.Fatalf("one source port mapped to %d and %d: want one mapping for every destination", ports[0], ports[1])
	}
	ext := netip.AddrPortFrom(vipAddr, ports[0])
	// Both destinations may answer; a third, never contacted, may not.
	for _, dst := range []netip.AddrPort{s1, s2} {
		r, out := e.in(t, build(pktSpec{src: dst, dst: ext, proto: ananta.ProtocolUDP, payload: []byte("a")}))
		wantVerdict(t, r, ToVM, DropNone)
		wantTuple(t, out, dst, src)
	}
	r, _ := e.in(t, build(pktSpec{src: s3, dst: ext, proto: ananta.ProtocolUDP}))
	wantVerdict(t, r, Drop, DropNoFlow)
	// Another source port gets another VIP port.
	r, out := e.out(t, 0, build(pktSpec{src: netip.AddrPortFrom(dip1, 5001), dst: s1, proto: ananta.ProtocolUDP}))
	wantVerdict(t, r, ToUplink, DropNone)
	if p := parse(t, out).Tuple.SrcPort; p == ports[0] {
		t.Fatalf("two source ports share VIP port %d", p)
	}
	// ICMP echo from the VM is not translated (no identifier mapping).
	r, _ = e.out(t, 0, build(pktSpec{src: netip.AddrPortFrom(dip1, 0), dst: netip.AddrPortFrom(s1.Addr(), 0), proto: ananta.ProtocolICMP, icmpType: 8}))
	wantVerdict(t, r, Drop, DropUnsupported)
}

func TestSNATRemoveRangesEndsFlows(t *testing.T) {
	e := newEngine(t, snatVIP())
	rs := []ananta.PortRange{{First: 2048, Last: 2055}}
	if err := e.AddSNATRanges(vipAddr, dip1, rs); err != nil {
		t.Fatal(err)
	}
	r, _ := e.out(t, 0, build(pktSpec{src: netip.AddrPortFrom(dip1, 40000), dst: ap("198.18.50.2:443"), proto: ananta.ProtocolTCP, flags: tcpSYN}))
	wantVerdict(t, r, ToUplink, DropNone)
	if err := e.SetSNATRanges(vipAddr, dip1, nil); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Flows != 0 || st.SNATPorts != 0 {
		t.Fatalf("flows %d, ports %d after the lease was withdrawn", st.Flows, st.SNATPorts)
	}
	// Overlapping or invalid ranges are refused.
	if err := e.AddSNATRanges(vipAddr, dip1, []ananta.PortRange{{First: 100, Last: 107}}); err == nil {
		t.Fatal("range below FirstSNATPort accepted")
	}
	e.AddSNATRanges(vipAddr, dip1, rs)
	if err := e.AddSNATRanges(vipAddr, dip1, []ananta.PortRange{{First: 2048, Last: 2063}}); err == nil {
		t.Fatal("overlapping range accepted")
	}
	if err := e.AddSNATRanges(vipAddr, addr("198.18.100.99"), rs); err == nil {
		t.Fatal("range for a DIP without pool accepted")
	}
	// Deleting the VIP hands its ranges back for release.
	if err := e.DeleteVIP(vipAddr); err != nil {
		t.Fatal(err)
	}
	got := e.ReleaseIdleSNAT(t0, 0)
	if len(got) != 1 || got[0].DIP != dip1 || !slices.Equal(got[0].Ranges, rs) {
		t.Fatalf("orphaned ranges %+v", got)
	}
}

func TestSNATDemandPredictionAsksAhead(t *testing.T) {
	e := newEngine(t, snatVIP())
	if err := e.AddSNATRanges(vipAddr, dip1, []ananta.PortRange{{First: 2048, Last: 2079}}); err != nil {
		t.Fatal(err)
	}
	if needs := e.SNATNeeds(t0); len(needs) != 0 {
		t.Fatalf("needs %+v with a full pool and no demand", needs)
	}
	// 28 connections to one server use 28 of 32 ports: below the low-water
	// mark (8) with demand seen, so the pool asks for more before it is dry.
	for i := range 28 {
		r, _ := e.out(t, 0, build(pktSpec{src: netip.AddrPortFrom(dip1, uint16(30000+i)), dst: ap("198.18.50.2:443"), proto: ananta.ProtocolTCP, flags: tcpSYN}))
		wantVerdict(t, r, ToUplink, DropNone)
	}
	needs := e.SNATNeeds(t0)
	if len(needs) != 1 || needs[0].DIP != dip1 || needs[0].Held != 0 || needs[0].Ports < 32 {
		t.Fatalf("needs %+v, want dip1 asking ahead for at least the 28 ports of recent demand (rounded to 32)", needs)
	}
	select {
	case <-e.SNATWake():
	default:
	}
}

func TestSNATIPv6AndICMPErrors(t *testing.T) {
	v6vip := addr("2001:db8:19::10")
	v6dip := addr("2001:db8:100::2")
	v := ananta.VIPConfig{
		VIP: v6vip, Tenant: "t",
		Endpoints: []ananta.EndpointConfig{{Protocol: ananta.ProtocolTCP, Port: 80,
			Backends: []ananta.Backend{{DIP: v6dip, Port: 80, Host: addr("2001:db8:3::2"), Weight: 1}}}},
		SNAT: ananta.SNATConfig{Enabled: true},
	}
	e := newEngine(t, v)
	if err := e.AddSNATRanges(v6vip, v6dip, []ananta.PortRange{{First: 4096, Last: 4103}}); err != nil {
		t.Fatal(err)
	}
	src := netip.AddrPortFrom(v6dip, 33000)
	server := ap("[2001:db8:50::2]:443")
	syn := build(pktSpec{src: src, dst: server, proto: ananta.ProtocolTCP, flags: tcpSYN})
	r, out := e.out(t, 0, syn)
	wantVerdict(t, r, ToUplink, DropNone)
	ext := netip.AddrPortFrom(v6vip, 4096)
	wantTuple(t, out, ext, server)
	// A router reports that the SNATed SYN was too big: the error reaches
	// the VM about the packet it sent.
	icmp := icmpError(addr("2001:db8:50::1"), v6vip, out)
	r, got := e.in(t, icmp)
	wantVerdict(t, r, ToVM, DropNone)
	checkSums(t, got)
	p := parse(t, got)
	if p.Tuple.Dst != v6dip || netip.AddrPortFrom(p.Inner.Src, p.Inner.SrcPort) != src || netip.AddrPortFrom(p.Inner.Dst, p.Inner.DstPort) != server {
		t.Fatalf("error: outer %s, quoted %s", p.Tuple, p.Inner)
	}
	// The reply comes back, is reverse-translated, and the VM's own ICMPv6
	// error about it leaves as the VIP.
	reply := build(pktSpec{src: server, dst: ext, proto: ananta.ProtocolTCP, flags: tcpSYN | tcpACK})
	r, got = e.in(t, reply)
	wantVerdict(t, r, ToVM, DropNone)
	wantTuple(t, got, server, src)
	r, out = e.out(t, 0, icmpError(v6dip, server.Addr(), got))
	wantVerdict(t, r, ToUplink, DropNone)
	checkSums(t, out)
	p = parse(t, out)
	if p.Tuple.Src != v6vip || netip.AddrPortFrom(p.Inner.Dst, p.Inner.DstPort) != ext {
		t.Fatalf("error: outer %s, quoted %s", p.Tuple, p.Inner)
	}
}
