package mux

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/packetio"
)

func twoVIPs(order func([]ananta.Backend)) []ananta.VIPConfig {
	b4, b6 := backends4(1, 50), backends6(1, 50)
	for i := range b4 {
		b4[i].Weight = uint32(1 + i%3)
	}
	if order != nil {
		order(b4)
		order(b6)
	}
	v4 := simpleVIP(vip4, 80, b4)
	v4.Endpoints = append(v4.Endpoints, ananta.EndpointConfig{Protocol: ananta.ProtocolUDP, Port: 80, Backends: b4})
	v6 := simpleVIP(vip6, 80, b6)
	v6.Endpoints = append(v6.Endpoints, ananta.EndpointConfig{Protocol: ananta.ProtocolUDP, Port: 80, Backends: b6})
	return []ananta.VIPConfig{v4, v6}
}

// TestSameConfigSameBackend: two Muxes with the same configuration send
// each of 100,000 random flows to the same host, with the same bytes; a
// third one given the backends in another order agrees too.
func TestSameConfigSameBackend(t *testing.T) {
	ms := []*Mux{newMux(t, testConfig(nil)), newMux(t, testConfig(nil)), newMux(t, testConfig(nil))}
	for i, m := range ms {
		var order func([]ananta.Backend)
		if i == 2 {
			order = func(bs []ananta.Backend) { slices.Reverse(bs) }
		}
		for _, v := range twoVIPs(order) {
			mustSetVIP(t, m, v)
		}
	}
	rng := rand.New(rand.NewPCG(1, 1))
	hosts := make(map[netip.Addr]int)
	for i := range 100000 {
		tu := randomTuple(rng, i%2 == 0)
		pkt := pktSpec{src: tu.Src, dst: tu.Dst, sport: tu.SrcPort, dport: tu.DstPort, proto: tu.Proto, tcpFlags: encap.TCPFlagSYN}.build()
		var rs [3]result
		for j, m := range ms {
			rs[j] = process(m, pkt)
			if rs[j].v != verdictForward {
				t.Fatalf("mux %d: %v for %v", j, rs[j].v, tu)
			}
		}
		if !bytes.Equal(rs[0].out, rs[1].out) {
			t.Fatalf("%v: mux 0 sent %x, mux 1 sent %x", tu, rs[0].out, rs[1].out)
		}
		if rs[2].outer != rs[0].outer {
			t.Fatalf("%v: mux 0 chose %s, mux 2 (backends reversed) %s", tu, rs[0].outer, rs[2].outer)
		}
		hosts[rs[0].outer]++
	}
	if len(hosts) != 100 {
		t.Errorf("flows reached %d hosts, want all 100", len(hosts))
	}
	// Weights 1..3 over 50 IPv4 backends: 25,000 TCP flows each share.
	w3, w1 := hosts[host4(3)], hosts[host4(1)] // weights 3 and 1
	if w3 < 2*w1 {
		t.Errorf("weight-3 backend got %d flows, weight-1 backend %d", w3, w1)
	}
}

// checkOuter verifies the outer header of a forwarded packet and returns
// the inner packet.
func checkOuter(t *testing.T, out []byte, host netip.Addr, srcPrefix netip.Prefix, ttl uint8) []byte {
	t.Helper()
	var inner []byte
	var proto uint8
	if host.Is4() {
		if out[0] != 0x45 {
			t.Fatalf("outer version/IHL %#x", out[0])
		}
		if int(binary.BigEndian.Uint16(out[2:])) != len(out) {
			t.Errorf("outer total length %d, packet %d", binary.BigEndian.Uint16(out[2:]), len(out))
		}
		if encap.Checksum(out[:20]) != 0 {
			t.Errorf("outer IPv4 header checksum wrong")
		}
		if out[8] != ttl {
			t.Errorf("outer TTL %d, want %d", out[8], ttl)
		}
		if src := netip.AddrFrom4([4]byte(out[12:16])); !srcPrefix.Contains(src) {
			t.Errorf("outer source %s not in %s", src, srcPrefix)
		}
		if dst := netip.AddrFrom4([4]byte(out[16:20])); dst != host {
			t.Errorf("outer destination %s, want %s", dst, host)
		}
		inner, proto = out[20:], out[9]
		innerDF := inner[0]>>4 == 6 || inner[6]&0x40 != 0
		if outerDF := out[6]&0x40 != 0; outerDF != innerDF {
			t.Errorf("outer DF %v, inner DF %v", outerDF, innerDF)
		}
		if out[1] != inner[1] && inner[0]>>4 == 4 {
			t.Errorf("outer TOS %#x, inner %#x", out[1], inner[1])
		}
	} else {
		if out[0]>>4 != 6 {
			t.Fatalf("outer version %d", out[0]>>4)
		}
		if int(binary.BigEndian.Uint16(out[4:]))+40 != len(out) {
			t.Errorf("outer payload length %d, packet %d", binary.BigEndian.Uint16(out[4:]), len(out))
		}
		if out[7] != ttl {
			t.Errorf("outer hop limit %d, want %d", out[7], ttl)
		}
		if binary.BigEndian.Uint32(out[0:])&0xfffff == 0 {
			t.Errorf("outer flow label is 0")
		}
		if src := netip.AddrFrom16([16]byte(out[8:24])); !srcPrefix.Contains(src) {
			t.Errorf("outer source %s not in %s", src, srcPrefix)
		}
		if dst := netip.AddrFrom16([16]byte(out[24:40])); dst != host {
			t.Errorf("outer destination %s, want %s", dst, host)
		}
		inner, proto = out[40:], out[6]
	}
	want := uint8(4)
	if inner[0]>>4 == 6 {
		want = 41
	}
	if proto != want {
		t.Errorf("outer protocol %d, want %d for IPv%d inside", proto, want, inner[0]>>4)
	}
	return inner
}

// TestOutputGolden checks the bytes Process writes: the outer header of
// every family combination and the unchanged inner packet, and one packet
// byte for byte against a header built here from the documented rules.
func TestOutputGolden(t *testing.T) {
	m := newMux(t, testConfig(func(c *Config) { c.TTL = 33 }))
	one := func(vip netip.Addr, host netip.Addr, dip netip.Addr) {
		mustSetVIP(t, m, ananta.VIPConfig{VIP: vip, Tenant: "t", Endpoints: []ananta.EndpointConfig{
			{Protocol: ananta.ProtocolAny, Backends: []ananta.Backend{{DIP: dip, Host: host, Weight: 1}}},
		}})
	}
	for _, tc := range []struct {
		name   string
		vip    netip.Addr
		host   netip.Addr
		dip    netip.Addr
		spec   pktSpec
		prefix netip.Prefix
	}{
		{"4in4 tcp", vip4, host4(1), dip4(1), pktSpec{src: client, sport: 40000, dport: 80, proto: ananta.ProtocolTCP, tcpFlags: encap.TCPFlagSYN, payload: 100}, rss4},
		{"4in4 udp no DF", vip4, host4(1), dip4(1), pktSpec{src: client, sport: 5353, dport: 53, proto: ananta.ProtocolUDP, noDF: true, payload: 33}, rss4},
		{"4in6", vip4, host6(2), dip4(2), pktSpec{src: client, sport: 40000, dport: 443, proto: ananta.ProtocolTCP, payload: 10}, rss6},
		{"6in6", vip6, host6(3), dip6(3), pktSpec{src: netip.MustParseAddr("2001:db8:5::7"), sport: 40000, dport: 443, proto: ananta.ProtocolTCP, payload: 64}, rss6},
		{"6in4", vip6, host4(4), dip6(4), pktSpec{src: netip.MustParseAddr("2001:db8:5::7"), sport: 40000, dport: 443, proto: ananta.ProtocolUDP, payload: 7}, rss4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			one(tc.vip, tc.host, tc.dip)
			tc.spec.dst = tc.vip
			pkt := tc.spec.build()
			pkt[1] = 0x2a // DSCP 10, ECT(0): must reach the outer header
			if pkt[0]>>4 == 4 {
				binary.BigEndian.PutUint16(pkt[10:], 0)
				binary.BigEndian.PutUint16(pkt[10:], encap.Checksum(pkt[:20]))
			}
			r := process(m, pkt)
			if r.v != verdictForward {
				t.Fatalf("verdict %v", r.v)
			}
			inner := checkOuter(t, r.out, tc.host, tc.prefix, 33)
			if !bytes.Equal(inner, pkt) {
				t.Errorf("inner packet changed:\n got %x\nwant %x", inner, pkt)
			}
			if tc.name == "4in4 udp no DF" && binary.BigEndian.Uint16(r.out[4:]) != 0x1234 {
				t.Errorf("outer ID %#x, want the inner ID 0x1234 for a packet that may be fragmented", binary.BigEndian.Uint16(r.out[4:]))
			}
		})
	}

	// Byte for byte: 4in4 with the source derived as documented.
	tu := ananta.FiveTuple{Src: client, Dst: vip4, SrcPort: 40000, DstPort: 80, Proto: ananta.ProtocolTCP}
	one(vip4, host4(9), dip4(9))
	pkt := pktSpec{src: tu.Src, dst: tu.Dst, sport: tu.SrcPort, dport: tu.DstPort, proto: tu.Proto, tcpFlags: encap.TCPFlagSYN}.build()
	h := FlowHash(tu, 0)
	host := byte(h)
	if host == 0 || host == 0xff {
		host ^= 1
	}
	want := []byte{
		0x45, 0x00, 0x00, 0x3c, // version, IHL, TOS, total length 20+40
		0x00, 0x00, 0x40, 0x00, // ID 0, DF
		33, 4, 0, 0, // TTL, protocol 4, checksum (below)
		198, 18, 200, host, // source in 198.18.200.0/24
		198, 18, 10, 9, // host
	}
	binary.BigEndian.PutUint16(want[10:], encap.Checksum(want))
	want = append(want, pkt...)
	if r := process(m, pkt); !bytes.Equal(r.out, want) {
		t.Errorf("4in4 output\n got %x\nwant %x", r.out, want)
	}

	// Without a source prefix the outer source is the Mux's address, and
	// the flow label comes from the flow hash.
	m2 := newMux(t, Config{Addr4: mux4, Addr6: mux6, FlowTableBytes: MinFlowTableBytes})
	mustSetVIP(t, m2, ananta.VIPConfig{VIP: vip6, Tenant: "t", Endpoints: []ananta.EndpointConfig{
		{Protocol: ananta.ProtocolAny, Backends: []ananta.Backend{{DIP: dip6(1), Host: host6(1), Weight: 1}}},
	}})
	tu6 := ananta.FiveTuple{Src: netip.MustParseAddr("2001:db8:5::7"), Dst: vip6, SrcPort: 1, DstPort: 2, Proto: ananta.ProtocolUDP}
	r := process(m2, pktSpec{src: tu6.Src, dst: tu6.Dst, sport: 1, dport: 2, proto: ananta.ProtocolUDP}.build())
	if r.src != mux6 {
		t.Errorf("outer source %s, want %s", r.src, mux6)
	}
	if got, want := binary.BigEndian.Uint32(r.out)&0xfffff, uint32(FlowHash(tu6, 0)>>32)&0xfffff; got != want {
		t.Errorf("flow label %#x, want %#x", got, want)
	}
}

// TestOuterSourceSpread: the outer source follows the flow hash over the
// whole prefix (RSS on the hosts), never the network or broadcast address.
func TestOuterSourceSpread(t *testing.T) {
	m := newMux(t, testConfig(nil))
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 1)))
	seen := make(map[netip.Addr]bool)
	for i := range 20000 {
		r := process(m, tcp4(netip.AddrFrom4([4]byte{198, 18, 100, byte(i)}), uint16(1024+i), vip4, 80, encap.TCPFlagSYN))
		seen[r.src] = true
	}
	if seen[netip.MustParseAddr("198.18.200.0")] || seen[netip.MustParseAddr("198.18.200.255")] {
		t.Error("outer source used the prefix's network or broadcast address")
	}
	if len(seen) != 254 {
		t.Errorf("20000 flows used %d outer sources, want all 254", len(seen))
	}
}

// TestEndpointPrecedence: exact port, then the protocol's all-ports
// endpoint, then the all-protocols endpoint.
func TestEndpointPrecedence(t *testing.T) {
	m := newMux(t, testConfig(nil))
	mustSetVIP(t, m, ananta.VIPConfig{VIP: vip4, Tenant: "t", Endpoints: []ananta.EndpointConfig{
		{Protocol: ananta.ProtocolTCP, Port: 80, Backends: backends4(1, 1)},
		{Protocol: ananta.ProtocolTCP, Backends: backends4(2, 1)},
		{Protocol: ananta.ProtocolUDP, Port: 53, Backends: backends4(3, 1)},
		{Protocol: ananta.ProtocolAny, Backends: backends4(4, 1)},
	}})
	for _, tc := range []struct {
		spec pktSpec
		host netip.Addr
	}{
		{pktSpec{sport: 1, dport: 80, proto: ananta.ProtocolTCP}, host4(1)},
		{pktSpec{sport: 1, dport: 81, proto: ananta.ProtocolTCP}, host4(2)},
		{pktSpec{sport: 1, dport: 53, proto: ananta.ProtocolUDP}, host4(3)},
		{pktSpec{sport: 1, dport: 54, proto: ananta.ProtocolUDP}, host4(4)},
		{pktSpec{proto: ananta.ProtocolICMP, icmpType: 8}, host4(4)},
		{pktSpec{proto: 47}, host4(4)},
	} {
		tc.spec.src, tc.spec.dst = client, vip4
		if r := process(m, tc.spec.build()); r.v != verdictForward || r.outer != tc.host {
			t.Errorf("%v %d: %v to %s, want %s", tc.spec.proto, tc.spec.dport, r.v, r.outer, tc.host)
		}
	}
}

// TestDropReasons: every drop reason, counted.
func TestDropReasons(t *testing.T) {
	m := newMux(t, testConfig(func(c *Config) { c.TooBigBurst = 1; c.TooBigRate = 1e-9 }))
	mustSetVIP(t, m, ananta.VIPConfig{VIP: vip4, Tenant: "t", Endpoints: []ananta.EndpointConfig{
		{Protocol: ananta.ProtocolTCP, Port: 80, Backends: backends4(1, 2)},
		{Protocol: ananta.ProtocolTCP, Port: 443, Backends: backends4(1, 2)},
		{Protocol: ananta.ProtocolUDP, Port: 53, Backends: []ananta.Backend{{DIP: dip4(5), Host: host4(5), Weight: 1, State: ananta.BackendDraining}}},
	}})
	other := netip.MustParseAddr("198.19.0.99")
	truncated := tcp4(client, 1, vip4, 80, 0)[:30]
	badVersion := tcp4(client, 1, vip4, 80, 0)
	badVersion[0] = 0x55
	big := pktSpec{src: client, dst: vip4, sport: 1, dport: 80, proto: ananta.ProtocolTCP, payload: 1500}.build()
	bigNoDF := pktSpec{src: client, dst: vip4, sport: 1, dport: 80, proto: ananta.ProtocolTCP, payload: 1500, noDF: true}.build()
	quote := pktSpec{src: vip4, dst: client, sport: 80, dport: 40000, proto: ananta.ProtocolTCP, payload: 1500}.build()
	for _, tc := range []struct {
		name   string
		pkt    []byte
		start  int // 0: Headroom
		reason DropReason
	}{
		{"empty", []byte{}, 0, DropMalformed},
		{"truncated TCP", truncated, 0, DropMalformed},
		{"bad version", badVersion, 0, DropMalformed},
		{"no headroom", tcp4(client, 1, vip4, 80, 0), 10, DropNoHeadroom},
		{"IPv6 to an IPv4-mapped VIP", pktSpec{src: dip6(1), dst: netip.AddrFrom16(vip4.As16()), sport: 1, dport: 80, proto: ananta.ProtocolTCP}.build(), 0, DropMalformed},
		{"IPv6 from an IPv4-mapped source", pktSpec{src: netip.AddrFrom16(client.As16()), dst: vip6, sport: 1, dport: 80, proto: ananta.ProtocolTCP}.build(), 0, DropMalformed},
		{"no VIP", tcp4(client, 1, other, 80, 0), 0, DropNoVIP},
		{"no port", tcp4(client, 1, vip4, 81, 0), 0, DropNoEndpoint},
		{"UDP to a TCP port", pktSpec{src: client, dst: vip4, sport: 1, dport: 80, proto: ananta.ProtocolUDP}.build(), 0, DropNoEndpoint},
		{"ping without any-endpoint", pktSpec{src: client, dst: vip4, proto: ananta.ProtocolICMP, icmpType: 8}.build(), 0, DropNoEndpoint},
		{"only draining backends", pktSpec{src: client, dst: vip4, sport: 1, dport: 53, proto: ananta.ProtocolUDP}.build(), 0, DropNoBackend},
		{"fragment, two TCP endpoints", pktSpec{src: client, dst: vip4, sport: 1, dport: 80, proto: ananta.ProtocolTCP, frag: 2}.build(), 0, DropFragment},
		{"ICMP error about an unknown port", icmpError(client, pktSpec{src: vip4, dst: client, sport: 9999, dport: 1, proto: ananta.ProtocolTCP}.build(), 1400, 28), 0, DropICMPNoFlow},
		{"ICMP error to no VIP", icmpError(client, pktSpec{src: other, dst: client, sport: 80, dport: 1, proto: ananta.ProtocolTCP}.build(), 1400, 28), 0, DropNoVIP},
		{"too big without DF", bigNoDF, 0, DropTooBig},
		{"too big ICMP error", icmpError(client, quote, 1400, len(quote)), 0, DropTooBig},
		{"too big, first answer", big, 0, DropNone},
		{"too big, rate limited", big, 0, DropTooBigRateLimited},
	} {
		before := m.Stats().Drops
		buf := make([]byte, 2*Headroom+len(tc.pkt)+64)
		start := tc.start
		if start == 0 {
			start = Headroom
		}
		copy(buf[start:], tc.pkt)
		v, _, _ := m.Process(buf, start, start+len(tc.pkt))
		after := m.Stats().Drops
		if tc.reason == DropNone {
			if v != verdictReply {
				t.Errorf("%s: %v, want reply", tc.name, v)
			}
			continue
		}
		if v != drop(tc.reason) {
			t.Errorf("%s: %v, want %v", tc.name, v, drop(tc.reason))
		}
		if after[tc.reason] != before[tc.reason]+1 {
			t.Errorf("%s: drops[%v] went from %d to %d", tc.name, tc.reason, before[tc.reason], after[tc.reason])
		}
	}
	// An ICMP error quoting a packet from another VIP's address than the
	// one it was sent to.
	mustSetVIP(t, m, simpleVIP(other, 80, backends4(1, 1)))
	mixed := icmpError(client, pktSpec{src: other, dst: client, sport: 80, dport: 1, proto: ananta.ProtocolTCP}.build(), 1400, 28)
	copy(mixed[16:20], vip4.AsSlice()) // outer destination: vip4
	binary.BigEndian.PutUint16(mixed[10:], 0)
	binary.BigEndian.PutUint16(mixed[10:], encap.Checksum(mixed[:20]))
	if r := process(m, mixed); r.v != drop(DropICMPNoFlow) {
		t.Errorf("ICMP error to one VIP quoting another: %v", r.v)
	}
	if got := m.Stats().Drops[DropNone]; got != 0 {
		t.Errorf("drops[none] = %d", got)
	}
}

// TestTooBig: a packet that exceeds the MTU once encapsulated is answered
// with ICMP "fragmentation needed" / "packet too big" advertising MTU minus
// the outer header, quoting the packet; the boundary packet passes.
func TestTooBig(t *testing.T) {
	m := newMux(t, testConfig(nil))
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 1)))                                              // IPv4 host: 20 bytes
	mustSetVIP(t, m, simpleVIP(vip6, 443, []ananta.Backend{{DIP: dip6(1), Host: host6(1), Weight: 1}})) // IPv6 host: 40 bytes
	src6 := netip.MustParseAddr("2001:db8:5::7")
	for _, tc := range []struct {
		name     string
		spec     pktSpec
		totalLen int
		mtu      int // 0: forwarded
	}{
		{"IPv4 fits", pktSpec{src: client, dst: vip4, sport: 1, dport: 80, proto: ananta.ProtocolTCP}, 1480, 0},
		{"IPv4 one byte over", pktSpec{src: client, dst: vip4, sport: 1, dport: 80, proto: ananta.ProtocolTCP}, 1481, 1480},
		{"IPv4 jumbo", pktSpec{src: client, dst: vip4, sport: 1, dport: 80, proto: ananta.ProtocolTCP}, 9000, 1480},
		{"IPv6 fits", pktSpec{src: src6, dst: vip6, sport: 1, dport: 443, proto: ananta.ProtocolTCP}, 1460, 0},
		{"IPv6 one byte over", pktSpec{src: src6, dst: vip6, sport: 1, dport: 443, proto: ananta.ProtocolTCP}, 1461, 1460},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := 40
			if tc.spec.src.Is6() {
				hdr = 60
			}
			tc.spec.payload = tc.totalLen - hdr
			pkt := tc.spec.build()
			r := process(m, pkt)
			if tc.mtu == 0 {
				if r.v != verdictForward {
					t.Fatalf("%v, want forward", r.v)
				}
				return
			}
			if r.v != verdictReply {
				t.Fatalf("%v, want reply", r.v)
			}
			var p encap.Packet
			if err := encap.Parse(r.out, &p); err != nil {
				t.Fatal(err)
			}
			if p.Tuple.Src != tc.spec.dst || p.Tuple.Dst != tc.spec.src || !p.ICMPError {
				t.Fatalf("reply %v (ICMP error %v), want an ICMP error from the VIP to the client", p.Tuple, p.ICMPError)
			}
			quoteMax := encap.MaxTooBigIPv4 - 28
			if p.Version == 4 {
				if p.ICMPType != 3 || p.ICMPCode != 4 || int(binary.BigEndian.Uint16(r.out[26:])) != tc.mtu {
					t.Errorf("ICMP type %d code %d MTU %d, want 3/4/%d", p.ICMPType, p.ICMPCode, binary.BigEndian.Uint16(r.out[26:]), tc.mtu)
				}
				if encap.Checksum(r.out[:20]) != 0 || encap.Checksum(r.out[20:]) != 0 {
					t.Error("bad IPv4 or ICMP checksum")
				}
			} else {
				quoteMax = encap.MaxTooBigIPv6 - 48
				if p.ICMPType != 2 || int(binary.BigEndian.Uint32(r.out[44:])) != tc.mtu {
					t.Errorf("ICMPv6 type %d MTU %d, want 2/%d", p.ICMPType, binary.BigEndian.Uint32(r.out[44:]), tc.mtu)
				}
				if encap.Finish(encap.Sum(r.out[40:], encap.PseudoHeaderSum(p.Tuple.Src, p.Tuple.Dst, ananta.ProtocolICMPv6, len(r.out)-40))) != 0 {
					t.Error("bad ICMPv6 checksum")
				}
			}
			if q := r.out[p.InnerOffset:]; !bytes.Equal(q, pkt[:min(len(pkt), quoteMax)]) {
				t.Errorf("quote is %d bytes %x..., want the first %d bytes of the packet", len(q), q[:min(len(q), 16)], quoteMax)
			}
		})
	}
	if got := m.Stats().Replies; got != 3 {
		t.Errorf("Stats.Replies = %d, want 3", got)
	}
}

// TestTooBigRateLimit: the token bucket allows a burst, then refills at
// the configured rate.
func TestTooBigRateLimit(t *testing.T) {
	clk := newFakeClock(0)
	m := newMux(t, testConfig(func(c *Config) { c.TooBigBurst = 3; c.TooBigRate = 10; c.Clock = clk.now }))
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 1)))
	big := pktSpec{src: client, dst: vip4, sport: 1, dport: 80, proto: ananta.ProtocolTCP, payload: 2000}.build()
	var got []Action
	for range 5 {
		got = append(got, process(m, big).v.Action)
	}
	clk.advance(100 * time.Millisecond) // one token at 10/s
	got = append(got, process(m, big).v.Action, process(m, big).v.Action)
	want := []Action{ActionReply, ActionReply, ActionReply, ActionDrop, ActionDrop, ActionReply, ActionDrop}
	if !slices.Equal(got, want) {
		t.Errorf("actions %v, want %v", got, want)
	}
	if d := m.Stats().Drops[DropTooBigRateLimited]; d != 3 {
		t.Errorf("rate-limited drops %d, want 3", d)
	}
}

// TestICMPErrorFollowsFlow: an ICMP error about a reply of a tracked flow
// reaches the flow's backend even after the backend set changed, for IPv4
// and IPv6; for an untracked flow it reaches the backend Maglev picks for
// the flow.
func TestICMPErrorFollowsFlow(t *testing.T) {
	for _, fam := range []struct {
		name   string
		vip    netip.Addr
		router netip.Addr
		bs     func(int, int) []ananta.Backend
		client func(int) netip.Addr
	}{
		{"IPv4", vip4, netip.MustParseAddr("198.18.99.1"), backends4, func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 101, byte(i)}) }},
		{"IPv6", vip6, netip.MustParseAddr("2001:db8:99::1"), backends6, func(i int) netip.Addr {
			return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x65, 15: byte(i)})
		}},
	} {
		t.Run(fam.name, func(t *testing.T) {
			m := newMux(t, testConfig(nil))
			fresh := newMux(t, testConfig(nil)) // sees only the new config
			mustSetVIP(t, m, simpleVIP(fam.vip, 80, fam.bs(1, 4)))
			mustSetVIP(t, fresh, simpleVIP(fam.vip, 80, fam.bs(1, 12)))
			type flow struct {
				c    netip.Addr
				port uint16
				host netip.Addr
			}
			var flows []flow
			for i := range 200 {
				f := flow{c: fam.client(i), port: uint16(30000 + i)}
				pkt := pktSpec{src: f.c, dst: fam.vip, sport: f.port, dport: 80, proto: ananta.ProtocolTCP}.build()
				process(m, pkt)
				f.host = process(m, pkt).outer
				flows = append(flows, f)
			}
			mustSetVIP(t, m, simpleVIP(fam.vip, 80, fam.bs(1, 12)))
			moved := 0
			for _, f := range flows {
				reply := pktSpec{src: fam.vip, dst: f.c, sport: 80, dport: f.port, proto: ananta.ProtocolTCP, payload: 1400}.build()
				e := icmpError(fam.router, reply, 1280, 100)
				r := process(m, e)
				if r.v != verdictForward || r.outer != f.host {
					t.Fatalf("ICMP error about %s:%d: %v to %s, want the flow's host %s", f.c, f.port, r.v, r.outer, f.host)
				}
				prefix := rss4
				if f.host.Is6() {
					prefix = rss6
				}
				if inner := checkOuter(t, r.out, f.host, prefix, encap.DefaultTTL); !bytes.Equal(inner, e) {
					t.Fatalf("the ICMP error was changed")
				}
				stateless := process(fresh, pktSpec{src: f.c, dst: fam.vip, sport: f.port, dport: 80, proto: ananta.ProtocolTCP}.build()).outer
				if stateless != f.host {
					moved++
				}
				// An untracked flow: the ICMP error goes where Maglev sends the flow.
				reply2 := pktSpec{src: fam.vip, dst: f.c, sport: 80, dport: f.port + 5000, proto: ananta.ProtocolTCP, payload: 1400}.build()
				r2 := process(m, icmpError(fam.router, reply2, 1280, 100))
				want := process(fresh, pktSpec{src: f.c, dst: fam.vip, sport: f.port + 5000, dport: 80, proto: ananta.ProtocolTCP}.build()).outer
				if r2.outer != want {
					t.Fatalf("ICMP error about an untracked flow went to %s, Maglev says %s", r2.outer, want)
				}
			}
			if moved < 50 {
				t.Errorf("only %d of 200 flows would move statelessly: the test does not show the table is used", moved)
			}
			if st := m.Stats().Flows; st.Inserts != 200 {
				t.Errorf("ICMP errors created flows: %d inserts, want 200", st.Inserts)
			}
		})
	}
}

// TestFragments: every fragment of a datagram goes to the backend of its
// 3-tuple; endpoints without a port take fragments, as does a protocol's
// only endpoint.
func TestFragments(t *testing.T) {
	for _, vip := range []netip.Addr{vip4, vip6} {
		m := newMux(t, testConfig(nil))
		bs, src := backends4(1, 8), func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, 101, byte(i)}) }
		if vip.Is6() {
			bs, src = backends6(1, 8), func(i int) netip.Addr {
				return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0x65, 15: byte(i)})
			}
		}
		mustSetVIP(t, m, ananta.VIPConfig{VIP: vip, Tenant: "t", Endpoints: []ananta.EndpointConfig{
			{Protocol: ananta.ProtocolUDP, Port: 4789, Backends: bs},
			{Protocol: ananta.ProtocolTCP, Backends: bs},
		}})
		hosts := make(map[netip.Addr]bool)
		for i := range 100 {
			for _, proto := range []ananta.Protocol{ananta.ProtocolUDP, ananta.ProtocolTCP} {
				first := process(m, pktSpec{src: src(i), dst: vip, sport: uint16(1000 + i), dport: 4789, proto: proto, frag: 1, payload: 100}.build())
				later := process(m, pktSpec{src: src(i), dst: vip, proto: proto, frag: 2, payload: 100}.build())
				if first.v != verdictForward || later.v != verdictForward || first.outer != later.outer {
					t.Fatalf("%s %v fragments: first %v to %s, later %v to %s", vip, proto, first.v, first.outer, later.v, later.outer)
				}
				hosts[first.outer] = true
			}
		}
		if len(hosts) < 6 {
			t.Errorf("%s: fragments of 100 sources reached %d hosts", vip, len(hosts))
		}
	}
}

// TestSNATReturn: packets to a VIP port in a leased range go to the DIP's
// host statelessly; an ICMP error about such a connection follows; a flow
// tracked before wins over the map.
func TestSNATReturn(t *testing.T) {
	m := newMux(t, testConfig(nil))
	v := simpleVIP(vip4, 80, backends4(1, 2))
	v.Endpoints = append(v.Endpoints, ananta.EndpointConfig{Protocol: ananta.ProtocolUDP, Backends: backends4(3, 1)})
	mustSetVIP(t, m, v)
	server := netip.MustParseAddr("198.18.77.7")
	// A flow to UDP port 1030, tracked before the ranges exist.
	early := pktSpec{src: server, dst: vip4, sport: 53, dport: 1030, proto: ananta.ProtocolUDP}.build()
	process(m, early)
	if err := m.SetSNATRanges(vip4, []SNATRange{
		{Range: ananta.PortRange{First: 1088, Last: 1151}, DIP: dip4(11), Host: host4(11)},
		{Range: ananta.PortRange{First: 1024, Last: 1087}, DIP: dip4(10), Host: host4(10)},
	}); err != nil {
		t.Fatal(err)
	}
	inserts := m.Stats().Flows.Inserts
	for _, tc := range []struct {
		proto ananta.Protocol
		port  uint16
		want  Verdict
		host  netip.Addr
	}{
		{ananta.ProtocolTCP, 1024, verdictForward, host4(10)},
		{ananta.ProtocolTCP, 1087, verdictForward, host4(10)},
		{ananta.ProtocolUDP, 1088, verdictForward, host4(11)},
		{ananta.ProtocolTCP, 1151, verdictForward, host4(11)},
		{ananta.ProtocolTCP, 1152, drop(DropNoEndpoint), netip.Addr{}},
		{ananta.ProtocolTCP, 1023, drop(DropNoEndpoint), netip.Addr{}},
	} {
		for range 2 {
			r := process(m, pktSpec{src: server, dst: vip4, sport: 443, dport: tc.port, proto: tc.proto}.build())
			if r.v != tc.want || r.outer != tc.host {
				t.Errorf("%v port %d: %v to %s, want %v to %s", tc.proto, tc.port, r.v, r.outer, tc.want, tc.host)
			}
		}
	}
	if got := m.Stats().Flows.Inserts; got != inserts {
		t.Errorf("SNAT return traffic created %d flows", got-inserts)
	}
	if r := process(m, early); r.outer != host4(3) {
		t.Errorf("flow tracked before the SNAT ranges went to %s, want its backend %s", r.outer, host4(3))
	}
	quoted := pktSpec{src: vip4, dst: server, sport: 1100, dport: 443, proto: ananta.ProtocolTCP}.build()
	if r := process(m, icmpError(netip.MustParseAddr("198.18.99.1"), quoted, 1300, 28)); r.outer != host4(11) {
		t.Errorf("ICMP error about a SNAT connection: %v to %s, want %s", r.v, r.outer, host4(11))
	}
	if err := m.SetSNATRanges(vip4, nil); err != nil {
		t.Fatal(err)
	}
	if r := process(m, pktSpec{src: server, dst: vip4, sport: 443, dport: 1024, proto: ananta.ProtocolTCP}.build()); r.v != drop(DropNoEndpoint) {
		t.Errorf("after removing the ranges: %v", r.v)
	}
}

// TestProcessBatchMatchesProcess: ProcessBatch gives the verdicts and
// bytes Process gives, packet by packet, over a mix of tracked, new,
// malformed, fragmented, ICMP and dropped packets.
func TestProcessBatchMatchesProcess(t *testing.T) {
	mk := func() *Mux {
		clk := newFakeClock(time.Minute) // the ICMP rate limit depends on time
		m := newMux(t, testConfig(func(c *Config) { c.Clock = clk.now }))
		for _, v := range twoVIPs(nil) {
			mustSetVIP(t, m, v)
		}
		return m
	}
	a, b := mk(), mk()
	rng := rand.New(rand.NewPCG(5, 5))
	var pkts [][]byte
	for i := range 3000 {
		tu := randomTuple(rng, i%3 != 0)
		if i%50 == 0 {
			tu = randomTuple(rand.New(rand.NewPCG(1, 1)), true) // repeated flows
		}
		spec := pktSpec{src: tu.Src, dst: tu.Dst, sport: tu.SrcPort, dport: tu.DstPort, proto: tu.Proto, payload: rng.IntN(200)}
		switch i % 17 {
		case 3:
			spec.frag = 1 + rng.IntN(2)
		case 5:
			spec.dport = 81 // no endpoint
		case 7:
			spec.payload = 1500 // too big
		}
		p := spec.build()
		switch i % 19 {
		case 4:
			p = p[:25] // malformed
		case 8:
			p = icmpError(netip.MustParseAddr("198.18.99.1"), pktSpec{src: vip4, dst: client, sport: 80, dport: uint16(i), proto: ananta.ProtocolTCP}.build(), 1300, 28)
		}
		pkts = append(pkts, p)
	}
	msgs := make([]packetio.Message, len(pkts))
	for i, p := range pkts {
		buf := make([]byte, Headroom+len(p)+64)
		copy(buf[Headroom:], p)
		msgs[i] = packetio.Message{Buf: buf, Off: Headroom, N: len(p)}
	}
	msgs[10].Off = 4 // no headroom
	copy(msgs[10].Buf[4:], pkts[10])
	verdicts := make([]Verdict, len(msgs))
	b.ProcessBatch(msgs, verdicts)
	for i, p := range pkts {
		buf, s, e := framed(p)
		if i == 10 {
			buf, s, e = msgs[10].Buf, 4, 4+len(p)
			copy(buf[4:], p)
		}
		v, ns, ne := a.Process(buf, s, e)
		if v != verdicts[i] {
			t.Fatalf("packet %d: Process %v, ProcessBatch %v", i, v, verdicts[i])
		}
		if v.Action != ActionDrop && !bytes.Equal(buf[ns:ne], msgs[i].Packet()) {
			t.Fatalf("packet %d: outputs differ", i)
		}
	}
	sa, sb := a.Stats(), b.Stats()
	if sa.Drops != sb.Drops || sa.Flows != sb.Flows || sa.Forwarded != sb.Forwarded {
		t.Errorf("stats differ:\n%+v\n%+v", sa, sb)
	}
	t.Logf("drops %v, flows %+v", sa.Drops, sa.Flows)
}
