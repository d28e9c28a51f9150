package encap_test

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
)

// A TCP SYN from 198.18.0.2:40000 to the VIP 198.19.0.10:80, with DF set.
var syn, _ = hex.DecodeString("45000028000140004006ae9dc6120002c613000a9c40005000000001000000005002faf08c2e0000")

func ExampleParse() {
	var p encap.Packet
	if err := encap.Parse(syn, &p); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(p.Tuple, p.TCPFlags&encap.TCPFlagSYN != 0)
	// Output: tcp 198.18.0.2:40000 -> 198.19.0.10:80 true
}

func ExampleEncap() {
	// Leave headroom for the outer header in front of the packet.
	buf := make([]byte, encap.OverheadIPv6+len(syn))
	copy(buf[encap.OverheadIPv6:], syn)
	mux, host := netip.MustParseAddr("198.18.1.1"), netip.MustParseAddr("198.18.10.2")
	start, err := encap.Encap(buf, encap.OverheadIPv6, len(buf), mux, host, encap.EncapOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	inner, from, err := encap.Decap(buf[start:])
	fmt.Println(len(buf[start:]), from, len(inner), err)
	// Output: 60 198.18.1.1 40 <nil>
}

func ExampleRewrite() {
	pkt := append([]byte(nil), syn...)
	var p encap.Packet
	if err := encap.Parse(pkt, &p); err != nil {
		fmt.Println(err)
		return
	}
	// VIP -> DIP on the Host Agent; checksums are updated incrementally.
	if err := encap.Rewrite(pkt, &p, encap.Dst, netip.MustParseAddr("198.18.10.5"), 8080); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(p.Tuple, encap.Checksum(pkt[:20]) == 0)
	// Output: tcp 198.18.0.2:40000 -> 198.18.10.5:8080 true
}

// tcpPacket returns the SYN grown to size bytes, with its lengths and
// checksums fixed.
func tcpPacket(size int) []byte {
	b := make([]byte, size)
	copy(b, syn)
	binary.BigEndian.PutUint16(b[2:], uint16(size))
	binary.BigEndian.PutUint16(b[10:], 0)
	binary.BigEndian.PutUint16(b[10:], encap.Checksum(b[:20]))
	src, dst := netip.AddrFrom4([4]byte(b[12:16])), netip.AddrFrom4([4]byte(b[16:20]))
	binary.BigEndian.PutUint16(b[36:], 0)
	binary.BigEndian.PutUint16(b[36:], encap.Finish(encap.Sum(b[20:], encap.PseudoHeaderSum(src, dst, ananta.ProtocolTCP, size-20))))
	return b
}

func ExampleTooBig() {
	pkt := tcpPacket(1500) // DF set
	var p encap.Packet
	if err := encap.Parse(pkt, &p); err != nil {
		fmt.Println(err)
		return
	}
	// The Mux's path to the host has an MTU of 1500: with the outer
	// header the packet does not fit, so tell the client the MTU it has left.
	const pathMTU = 1500
	if encap.NeedsTooBig(&p, encap.OverheadIPv4, pathMTU) {
		out := make([]byte, encap.MaxTooBigIPv4)
		n, err := encap.TooBig(out, pkt, netip.MustParseAddr("198.19.0.1"), pathMTU-encap.OverheadIPv4)
		if err != nil {
			fmt.Println(err)
			return
		}
		var icmp encap.Packet
		_ = encap.Parse(out[:n], &icmp)
		fmt.Println(n, icmp.Tuple, icmp.ICMPType, icmp.ICMPCode, icmp.Inner)
	}
	// Output: 576 icmp 198.19.0.1:0 -> 198.18.0.2:0 3 4 tcp 198.18.0.2:40000 -> 198.19.0.10:80
}
