package packetio

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// refChecksum is RFC 1071 done the slow, obvious way.
func refChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func TestSumMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := range 300 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.UintN(256))
		}
		if n%7 == 0 {
			for i := range b {
				b[i] = 0xff // worst case for carries
			}
		}
		if got, want := ^fold(sum(b, 0)), refChecksum(b); got != want {
			t.Fatalf("len %d: checksum %#04x, want %#04x", n, got, want)
		}
	}
}

func TestCompleteChecksum(t *testing.T) {
	// A UDP/IPv4 packet whose checksum field holds the pseudo-header sum,
	// as CHECKSUM_PARTIAL leaves it.
	pkt := make([]byte, 20+8+5)
	pkt[0] = 0x45
	pkt[9] = 17
	copy(pkt[12:], []byte{198, 18, 0, 1, 198, 18, 0, 2})
	binary.BigEndian.PutUint16(pkt[24:], 13)
	copy(pkt[28:], "hello")
	pseudo := uint64(198<<8|18) + 1 + uint64(198<<8|18) + 2 + 17 + 13
	binary.BigEndian.PutUint16(pkt[26:], fold(pseudo))
	completeChecksum(pkt, 20, 6)
	full := append([]byte{198, 18, 0, 1, 198, 18, 0, 2, 0, 17, 0, 13}, pkt[20:]...)
	if c := refChecksum(full); c != 0 {
		t.Errorf("completed checksum does not verify (residue %#04x)", c)
	}
	// Out of range offsets leave the packet alone.
	before := append([]byte(nil), pkt...)
	completeChecksum(pkt, 30, 6)
	completeChecksum(pkt, -1, 6)
	if string(before) != string(pkt) {
		t.Error("out-of-range checksum location modified the packet")
	}
}

func TestCompactKeepsOrder(t *testing.T) {
	msgs := NewBatch(6, 8, 0)
	bufs := make([]*byte, len(msgs))
	for i := range msgs {
		msgs[i].N = i + 1
		bufs[i] = &msgs[i].Buf[0]
	}
	keep := []bool{false, true, false, false, true, true}
	n := compact(msgs, func(i int) bool { return keep[i] })
	if n != 3 || msgs[0].N != 2 || msgs[1].N != 5 || msgs[2].N != 6 {
		t.Fatalf("compact = %d, N %d %d %d", n, msgs[0].N, msgs[1].N, msgs[2].N)
	}
	// Every buffer is still in the slice, once.
	seen := map[*byte]bool{}
	for i := range msgs {
		seen[&msgs[i].Buf[0]] = true
	}
	for _, b := range bufs {
		if !seen[b] {
			t.Fatal("a buffer was lost")
		}
	}
}
