package encap

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

// addFixtureSeeds adds every fixture packet (and NAT result) to the corpus
// through add.
func addFixtureSeeds(f *testing.F, add func(pkt []byte, i int)) {
	for i, fx := range loadFixtures(f) {
		add(fx.Packet, i)
		if fx.WantPkt != nil {
			add(fx.WantPkt, i)
		}
	}
}

func FuzzParse(f *testing.F) {
	addFixtureSeeds(f, func(pkt []byte, _ int) { f.Add(pkt) })
	f.Fuzz(func(t *testing.T, b []byte) {
		orig := bytes.Clone(b)
		var p Packet
		err := Parse(b, &p)
		if !bytes.Equal(b, orig) {
			t.Fatal("Parse modified its input")
		}
		if err == nil {
			checkOffsets(t, &p, len(b))
			if p.Version != 4 && p.Version != 6 || !p.Tuple.Src.IsValid() || !p.Tuple.Dst.IsValid() {
				t.Fatalf("parsed without addresses: %+v", p)
			}
			if p.Tuple.Src.Is4() != (p.Version == 4) {
				t.Fatalf("address family does not match version: %+v", p)
			}
			if !p.ports && (p.Tuple.SrcPort != 0 || p.Tuple.DstPort != 0) {
				t.Fatalf("ports without a transport header: %+v", p)
			}
			if p.Fragment == LaterFragment && (p.ports || p.ICMPError || p.Encapsulated) {
				t.Fatalf("later fragment with a transport header: %+v", p)
			}
			if p.ICMPError && p.Encapsulated {
				t.Fatalf("both ICMP error and tunnel: %+v", p)
			}
		}
		// The other entry points must not panic on anything either.
		_, _, _ = Decap(b)
		var out [MaxTooBigIPv6]byte
		from := netip.MustParseAddr("198.19.0.1")
		if len(b) > 0 && b[0]>>4 == 6 {
			from = netip.MustParseAddr("2001:db8:ff::1")
		}
		if n, err := TooBig(out[:], b, from, MinMTUIPv6); err == nil && (n < 28 || n > MaxTooBigIPv6) {
			t.Fatalf("TooBig returned %d bytes", n)
		}
		// NeedsTooBig promises that TooBig answers.
		if err == nil {
			for _, pathMTU := range []int{p.TotalLen + 19, p.TotalLen + 39, MinMTUIPv4 + 20, MinMTUIPv6 + 40} {
				if NeedsTooBig(&p, 20, pathMTU) {
					if n, err := TooBig(out[:], b, from, pathMTU-20); err != nil || n == 0 {
						t.Fatalf("NeedsTooBig(%d) but TooBig: %v", pathMTU, err)
					}
				}
			}
		}
	})
}

func FuzzEncapDecap(f *testing.F) {
	addFixtureSeeds(f, func(pkt []byte, i int) { f.Add(pkt, uint8(i), uint16(i), uint32(i)<<12) })
	f.Fuzz(func(t *testing.T, inner []byte, ttl uint8, id uint16, flow uint32) {
		var pin Packet
		innerErr := Parse(inner, &pin)
		for _, outer := range [][2]netip.Addr{{v4d, v4c}, {v6d, v6c}} {
			headroom := 40 + int(ttl%8)
			buf := make([]byte, headroom+len(inner)+int(id%5))
			copy(buf[headroom:], inner)
			end := headroom + len(inner)
			opts := EncapOptions{TTL: ttl, ID: id, FlowLabel: flow}
			start, err := Encap(buf, headroom, end, outer[0], outer[1], opts)
			if err != nil {
				switch {
				case len(inner) == 0 || inner[0]>>4 != 4 && inner[0]>>4 != 6:
					if !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrBadVersion) {
						t.Fatalf("Encap(non-IP) = %v", err)
					}
				case inner[0]>>4 == 4 && len(inner) < 20, inner[0]>>4 == 6 && len(inner) < 40:
					if !errors.Is(err, ErrTruncated) {
						t.Fatalf("Encap(short) = %v", err)
					}
				default:
					t.Fatalf("Encap: %v", err)
				}
				return
			}
			if !bytes.Equal(buf[headroom:end], inner) {
				t.Fatal("Encap changed the inner packet")
			}
			got, src, err := Decap(buf[start:])
			if err != nil {
				t.Fatalf("Decap(Encap(%x)) = %v", inner, err)
			}
			if !bytes.Equal(got, inner) || src != outer[0] {
				t.Fatalf("Decap(Encap(x)) = %x from %v, want %x from %v", got, src, inner, outer[0])
			}
			if innerErr == nil {
				var p Packet
				if err := Parse(buf[start:end], &p); err != nil || !p.Encapsulated || p.Inner != pin.Tuple {
					t.Fatalf("Parse(tunnel) = %+v, %v; want inner %v", p, err, pin.Tuple)
				}
			}
		}
	})
}

// fixAll makes every checksum of a parsed packet correct with the reference
// code, so that an incremental update can be compared with a full one:
// quoted headers first, then the transport checksum, then the IPv4 header.
// An IPv4 UDP checksum of 0 stays 0.
func fixAll(b []byte, p *Packet) {
	if p.ICMPError {
		q := b[p.InnerOffset:p.TotalLen]
		if p.Version == 4 {
			put16(q, 10, refIPv4HeaderChecksum(q))
		}
		var qp Packet
		if Parse(q, &qp) == nil {
			fixTransport(q, &qp)
		}
	}
	fixTransport(b, p)
	if p.Version == 4 {
		put16(b, 10, refIPv4HeaderChecksum(b))
	}
}

func fixTransport(b []byte, p *Packet) {
	if p.Fragment != NotFragment || p.routing {
		return
	}
	switch {
	case p.Tuple.Proto == protoTCP:
		put16(b, p.L4Offset+16, refTransportChecksum(b, p.L4Offset, p.TotalLen, protoTCP, 16, true))
	case p.Tuple.Proto == protoUDP:
		if p.Version == 4 && get16(b, p.L4Offset+6) == 0 {
			return
		}
		put16(b, p.L4Offset+6, refTransportChecksum(b, p.L4Offset, p.TotalLen, protoUDP, 6, true))
	case p.Tuple.Proto == protoICMP && p.Version == 4:
		put16(b, p.L4Offset+2, refTransportChecksum(b, p.L4Offset, p.TotalLen, protoICMP, 2, false))
	case p.Tuple.Proto == protoICMPv6 && p.Version == 6:
		put16(b, p.L4Offset+2, refTransportChecksum(b, p.L4Offset, p.TotalLen, protoICMPv6, 2, true))
	}
}

func FuzzNAT(f *testing.F) {
	addFixtureSeeds(f, func(pkt []byte, i int) {
		f.Add(pkt, i%2 == 0, []byte{198, 18, byte(i), 5, 0x20, 1, 0xd, 0xb8, 0, byte(i), 0, 0, 0, 0, 0, 0, 0, 0, 0, 5}, uint16(i*37))
	})
	f.Fuzz(func(t *testing.T, b []byte, dst bool, addrBytes []byte, port uint16) {
		var p Packet
		if Parse(b, &p) != nil {
			return
		}
		field := Src
		if dst {
			field = Dst
		}
		var a16 [16]byte
		copy(a16[:], addrBytes)
		addr := netip.AddrFrom16(a16)
		if p.Version == 4 {
			addr = netip.AddrFrom4([4]byte(a16[:4]))
		}
		udpZero := p.Tuple.Proto == protoUDP && p.ports && get16(b, p.L4Offset+6) == 0
		if udpZero && p.Version == 6 {
			orig := bytes.Clone(b)
			if err := Rewrite(b, &p, field, addr, port); !errors.Is(err, ErrBadChecksum) || !bytes.Equal(b, orig) {
				t.Fatalf("IPv6 UDP checksum 0: Rewrite = %v", err)
			}
			return
		}
		fixAll(b, &p)
		if Parse(b, &p) != nil {
			t.Fatal("fixing checksums broke parsing")
		}
		before := p
		err := Rewrite(b, &p, field, addr, port)
		if field == Dst && p.routing {
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("Rewrite with routing header = %v", err)
			}
			return
		}
		if err != nil {
			t.Fatalf("Rewrite: %v", err)
		}
		want := before.Tuple
		if field == Src {
			want.Src = addr
			if before.ports && port != 0 {
				want.SrcPort = port
			}
		} else {
			want.Dst = addr
			if before.ports && port != 0 {
				want.DstPort = port
			}
		}
		if p.Tuple != want {
			t.Fatalf("Tuple = %v, want %v", p.Tuple, want)
		}
		var q Packet
		if err := Parse(b, &q); err != nil || q.Tuple != want {
			t.Fatalf("Parse(rewritten) = %v, %v; want %v", q.Tuple, err, want)
		}
		checkAgainstReference(t, b, &q)
		if udpZero && get16(b, p.L4Offset+6) != 0 {
			t.Fatal("IPv4 UDP checksum 0 did not stay 0")
		}

		if !p.ICMPError {
			return
		}
		err = RewriteQuoted(b, &p, 1-field, addr, port+1)
		if field == Src && p.innerRouting {
			if !errors.Is(err, ErrUnsupported) {
				t.Fatalf("RewriteQuoted with routing header = %v", err)
			}
			return
		}
		if err != nil {
			t.Fatalf("RewriteQuoted: %v", err)
		}
		if err := Parse(b, &q); err != nil || q.Inner != p.Inner {
			t.Fatalf("Parse(rewritten).Inner = %v, %v; want %v", q.Inner, err, p.Inner)
		}
		checkAgainstReference(t, b, &q)
	})
}

// checkAgainstReference compares every checksum fixAll would set with what
// is in b.
func checkAgainstReference(t *testing.T, b []byte, p *Packet) {
	t.Helper()
	ref := bytes.Clone(b)
	fixAll(ref, p)
	if !bytes.Equal(ref, b) {
		t.Fatalf("checksums differ from a full recomputation:\n got %x\nwant %x", b, ref)
	}
}
