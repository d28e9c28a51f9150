package encap

import (
	"bytes"
	"net/netip"
	"testing"

	"github.com/ananta-go/ananta"
)

// TestFixtures runs every case of ../testdata/packets.jsonl, made by scapy
// (see ../testdata/README.md).
func TestFixtures(t *testing.T) {
	fixtures := loadFixtures(t)
	if len(fixtures) != 434 {
		t.Errorf("%d fixtures, want 434", len(fixtures))
	}
	var passed int
	for _, fx := range fixtures {
		ok := t.Run(fx.Name, func(t *testing.T) {
			switch fx.Kind {
			case "parse":
				checkParseFixture(t, fx)
			case "nat":
				checkNATFixture(t, fx)
			case "bad":
				var p Packet
				if err := Parse(fx.Packet, &p); err == nil {
					t.Errorf("Parse(%x) = nil error, want one; got %+v", []byte(fx.Packet), p)
				}
			default:
				t.Fatalf("unknown kind %q", fx.Kind)
			}
		})
		if ok {
			passed++
		}
	}
	t.Logf("%d/%d fixtures pass", passed, len(fixtures))
}

func wantTuple(t *testing.T, w *fixtureTuple) ananta.FiveTuple {
	t.Helper()
	ft := ananta.FiveTuple{
		Src:   netip.MustParseAddr(w.Src),
		Dst:   netip.MustParseAddr(w.Dst),
		Proto: ananta.Protocol(w.Proto),
	}
	if w.Sport != nil {
		ft.SrcPort = uint16(*w.Sport)
	}
	if w.Dport != nil {
		ft.DstPort = uint16(*w.Dport)
	}
	return ft
}

func checkParseFixture(t *testing.T, fx fixture) {
	var p Packet
	if err := Parse(fx.Packet, &p); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	w := fx.Want
	want := wantTuple(t, &w.fixtureTuple)
	got := p.Tuple
	if w.Sport == nil { // ICMP echo: only protocol and addresses are asserted
		got.SrcPort, got.DstPort = 0, 0
	}
	if got != want {
		t.Errorf("Tuple = %v, want %v", p.Tuple, want)
	}
	wantFrag := NotFragment
	switch w.Fragment {
	case "first":
		wantFrag = FirstFragment
	case "later":
		wantFrag = LaterFragment
	}
	if p.Fragment != wantFrag {
		t.Errorf("Fragment = %v, want %v", p.Fragment, wantFrag)
	}
	if p.ICMPError != w.ICMPError {
		t.Errorf("ICMPError = %v, want %v", p.ICMPError, w.ICMPError)
	}
	if w.Inner != nil {
		if wi := wantTuple(t, w.Inner); p.Inner != wi {
			t.Errorf("Inner = %v, want %v", p.Inner, wi)
		}
	}
	if p.Encapsulated != (w.Encapsulated != nil) {
		t.Errorf("Encapsulated = %v, want %v", p.Encapsulated, w.Encapsulated != nil)
	}
	if w.Encapsulated != nil {
		if wi := wantTuple(t, w.Encapsulated); p.Inner != wi {
			t.Errorf("Inner = %v, want %v", p.Inner, wi)
		}
	}
	if p.TotalLen != len(fx.Packet) {
		t.Errorf("TotalLen = %d, want %d", p.TotalLen, len(fx.Packet))
	}
	checkOffsets(t, &p, len(fx.Packet))
}

// checkOffsets checks that every offset Parse returned lies in the packet.
func checkOffsets(t testing.TB, p *Packet, n int) {
	t.Helper()
	if p.TotalLen > n || p.L4Offset > p.TotalLen || p.InnerOffset > p.TotalLen || p.InnerL4Offset > p.TotalLen ||
		p.L4Offset < 20 || p.InnerOffset < 0 || p.InnerL4Offset < p.InnerOffset || p.csum+2 > p.TotalLen || p.innerCsum+2 > p.TotalLen {
		t.Errorf("offsets outside the packet of %d bytes: %+v", n, p)
	}
	if (p.ICMPError || p.Encapsulated) && (p.InnerOffset < p.L4Offset || p.InnerOffset == 0) {
		t.Errorf("InnerOffset %d not after L4Offset %d", p.InnerOffset, p.L4Offset)
	}
}

func checkNATFixture(t *testing.T, fx fixture) {
	b := bytes.Clone(fx.Packet)
	var p Packet
	if err := Parse(b, &p); err != nil {
		t.Fatalf("Parse: %v", err)
	}
	addr := netip.MustParseAddr(fx.Rewrite.Addr)
	f := Src
	if fx.Rewrite.Field == "dst" {
		f = Dst
	}
	before := p.Tuple
	if err := Rewrite(b, &p, f, addr, fx.Rewrite.Port); err != nil {
		t.Fatalf("Rewrite: %v", err)
	}
	if !bytes.Equal(b, fx.WantPkt) {
		t.Errorf("Rewrite(%s %s:%d)\n got %x\nwant %x", f, addr, fx.Rewrite.Port, b, []byte(fx.WantPkt))
	}
	want := before
	if f == Src {
		want.Src, want.SrcPort = addr, fx.Rewrite.Port
	} else {
		want.Dst, want.DstPort = addr, fx.Rewrite.Port
	}
	if p.Tuple != want {
		t.Errorf("Tuple after Rewrite = %v, want %v", p.Tuple, want)
	}
	// The rewritten packet parses to the new tuple.
	var q Packet
	if err := Parse(b, &q); err != nil || q.Tuple != want {
		t.Errorf("Parse(rewritten) = %v, %v; want %v", q.Tuple, err, want)
	}
}
