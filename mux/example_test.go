package mux_test

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/mux"
)

// Configure a VIP with two backends and tunnel one packet to a backend's
// host.
func ExampleMux_Process() {
	m, err := mux.New(mux.Config{
		Addr4:          netip.MustParseAddr("198.18.0.1"),
		FlowTableBytes: 1 << 20,
	})
	if err != nil {
		panic(err)
	}
	defer m.Close()
	vip := netip.MustParseAddr("198.19.0.10")
	err = m.SetVIP(ananta.VIPConfig{VIP: vip, Tenant: "example", Endpoints: []ananta.EndpointConfig{{
		Protocol: ananta.ProtocolTCP, Port: 80,
		Backends: []ananta.Backend{
			{DIP: netip.MustParseAddr("10.0.0.1"), Host: netip.MustParseAddr("198.18.10.1"), Weight: 1},
			{DIP: netip.MustParseAddr("10.0.0.2"), Host: netip.MustParseAddr("198.18.10.2"), Weight: 1},
		},
	}}})
	if err != nil {
		panic(err)
	}

	// A TCP SYN from 198.18.100.7:40000 to the VIP, after Headroom bytes.
	pkt := make([]byte, 40)
	pkt[0], pkt[8], pkt[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(pkt[2:], 40)
	copy(pkt[12:], []byte{198, 18, 100, 7})
	copy(pkt[16:], vip.AsSlice())
	binary.BigEndian.PutUint16(pkt[10:], encap.Checksum(pkt[:20]))
	binary.BigEndian.PutUint16(pkt[20:], 40000)
	binary.BigEndian.PutUint16(pkt[22:], 80)
	pkt[32], pkt[33] = 5<<4, encap.TCPFlagSYN
	src := netip.AddrFrom4([4]byte{198, 18, 100, 7})
	binary.BigEndian.PutUint16(pkt[36:], encap.Finish(encap.Sum(pkt[20:], encap.PseudoHeaderSum(src, vip, ananta.ProtocolTCP, 20))))
	buf := append(make([]byte, mux.Headroom), pkt...)

	v, start, end := m.Process(buf, mux.Headroom, len(buf))
	out := buf[start:end]
	fmt.Println(v, len(out), "bytes, protocol", out[9], "to", netip.AddrFrom4([4]byte(out[16:20])))
	// Output:
	// forward 60 bytes, protocol 4 to 198.18.10.2
}
