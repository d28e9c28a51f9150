package encap

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/ananta-go/ananta"
)

func TestChecksumRFC1071Example(t *testing.T) {
	// RFC 1071 section 3: the sum of these bytes is ddf2, so the checksum is 220d.
	b := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
	if s := Sum(b, 0); s != 0xddf2 {
		t.Errorf("Sum = %#x, want 0xddf2", s)
	}
	if c := Checksum(b); c != 0x220d {
		t.Errorf("Checksum = %#x, want 0x220d", c)
	}
}

func TestChecksumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 300 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		if n%7 == 0 {
			for i := range b {
				b[i] = 0xff
			}
		}
		if got, want := Checksum(b), refChecksum(b); got != want {
			t.Fatalf("len %d: Checksum = %#x, want %#x", n, got, want)
		}
		// Chained even-length pieces give the same result.
		if n%2 == 0 && n > 0 {
			k := n / 2 &^ 1
			if got := Finish(Sum(b[k:], Sum(b[:k], 0))); got != refChecksum(b) {
				t.Fatalf("len %d: chained = %#x", n, got)
			}
		}
	}
}

func TestPseudoHeaderSum(t *testing.T) {
	for _, c := range []struct {
		src, dst netip.Addr
		proto    uint8
		length   int
	}{
		{v4a, v4b, 6, 40},
		{v4a, v4b, 17, 65535},
		{v6a, v6b, 58, 1232},
		{v6a, v6b, 6, 70000},
	} {
		var b []byte
		if c.src.Is4() {
			b = append(b, c.src.AsSlice()...)
			b = append(b, c.dst.AsSlice()...)
			b = append(b, 0, c.proto, byte(c.length>>8), byte(c.length))
		} else {
			b = append(b, c.src.AsSlice()...)
			b = append(b, c.dst.AsSlice()...)
			b = append(b, byte(c.length>>24), byte(c.length>>16), byte(c.length>>8), byte(c.length), 0, 0, 0, c.proto)
		}
		if got, want := Finish(PseudoHeaderSum(c.src, c.dst, ananta.Protocol(c.proto), c.length)), refChecksum(b); got != want {
			t.Errorf("%v: %#x, want %#x", c, got, want)
		}
	}
}

// TestUpdateChecksum checks RFC 1624 updates against full recomputation on
// random data, including words changed to and from 0x0000 and 0xffff.
func TestUpdateChecksum(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	word := func() uint16 {
		switch r.IntN(4) {
		case 0:
			return 0
		case 1:
			return 0xffff
		}
		return uint16(r.Uint32())
	}
	for range 20000 {
		n := 2 * (4 + r.IntN(30))
		b := make([]byte, n)
		for i := 0; i < n; i += 2 {
			put16(b, i, word())
		}
		b[0] |= 0x01 // the data is never all zero (a real header never is)
		put16(b, 2, 0)
		put16(b, 2, refChecksum(b))
		switch r.IntN(3) {
		case 0:
			i := 2 * (2 + r.IntN(n/2-2))
			old, nw := get16(b, i), word()
			put16(b, i, nw)
			put16(b, 2, UpdateChecksum(get16(b, 2), old, nw))
		case 1:
			i := 4 * (1 + r.IntN(n/4-1))
			old := uint32(get16(b, i))<<16 | uint32(get16(b, i+2))
			nw := uint32(word())<<16 | uint32(word())
			put16(b, i, uint16(nw>>16))
			put16(b, i+2, uint16(nw))
			put16(b, 2, UpdateChecksum32(get16(b, 2), old, nw))
		case 2:
			if n < 20 {
				continue
			}
			var oa, na [16]byte
			copy(oa[:], b[4:20])
			for i := range na {
				na[i] = byte(word())
			}
			copy(b[4:20], na[:])
			put16(b, 2, UpdateChecksumAddr(get16(b, 2), netip.AddrFrom16(oa), netip.AddrFrom16(na)))
		}
		c := get16(b, 2)
		put16(b, 2, 0)
		if want := refChecksum(b); c != want {
			t.Fatalf("%x: incremental %#x, full %#x", b, c, want)
		}
	}
}

func TestUpdateChecksumAddrMixed(t *testing.T) {
	if got := UpdateChecksumAddr(0x1234, v4a, v6a); got != 0x1234 {
		t.Errorf("mixed families changed the checksum: %#x", got)
	}
	a, b := v4a.As4(), v4b.As4()
	want := UpdateChecksum32(0x1234, uint32(a[0])<<24|uint32(a[1])<<16|uint32(a[2])<<8|uint32(a[3]),
		uint32(b[0])<<24|uint32(b[1])<<16|uint32(b[2])<<8|uint32(b[3]))
	if got := UpdateChecksumAddr(0x1234, v4a, v4b); got != want {
		t.Errorf("IPv4: %#x, want %#x", got, want)
	}
}
