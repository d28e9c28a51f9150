package mux

import (
	"encoding/binary"
	"net/netip"

	"github.com/ananta-go/ananta"
)

// Constants of the flow hash. They are part of the contract between every
// Mux of a pool and with the eBPF data path: changing one changes every
// flow's backend (golden tests pin them).
const (
	flowMulA = 0xff51afd7ed558ccd // lane a multiplier (MurmurHash3 fmix64)
	flowMulB = 0xc4ceb9fe1a85ec53 // lane b multiplier (MurmurHash3 fmix64)
	mixMul1  = 0xbf58476d1ce4e5b9 // splitmix64 finalizer
	mixMul2  = 0x94d049bb133111eb
)

// flowKey is the packed 5-tuple: the flow hash input and the flow table
// key. Addresses are 16 bytes (IPv4 as IPv4-mapped IPv6, ::ffff:a.b.c.d),
// each read as two little-endian 64-bit words; w[4] holds
// sport | dport<<16 | proto<<32.
type flowKey struct {
	w [5]uint64
}

// keyFrom packs a 5-tuple into k.
func keyFrom(k *flowKey, src, dst netip.Addr, sport, dport uint16, proto ananta.Protocol) {
	s, d := src.As16(), dst.As16()
	k.w[0] = binary.LittleEndian.Uint64(s[0:])
	k.w[1] = binary.LittleEndian.Uint64(s[8:])
	k.w[2] = binary.LittleEndian.Uint64(d[0:])
	k.w[3] = binary.LittleEndian.Uint64(d[8:])
	k.w[4] = portsWord(sport, dport, proto)
}

func portsWord(sport, dport uint16, proto ananta.Protocol) uint64 {
	return uint64(sport) | uint64(dport)<<16 | uint64(proto)<<32
}

// mapped4 is the second word of an IPv4-mapped address a.b.c.d: the bytes
// 00 00 ff ff a b c d read little-endian.
func mapped4(b []byte) uint64 {
	return 0xffff0000 | uint64(binary.LittleEndian.Uint32(b))<<32
}

// keyFromPacket packs into k the addresses of the IP header at the start
// of b (as parsed: version 4 or 6) with the given ports and protocol,
// reading the addresses from the bytes rather than through netip.
func keyFromPacket(k *flowKey, b []byte, version uint8, sport, dport uint16, proto ananta.Protocol) {
	if version == 4 {
		_ = b[19]
		k.w[0], k.w[2] = 0, 0
		k.w[1] = mapped4(b[12:16])
		k.w[3] = mapped4(b[16:20])
	} else {
		_ = b[39]
		k.w[0] = binary.LittleEndian.Uint64(b[8:])
		k.w[1] = binary.LittleEndian.Uint64(b[16:])
		k.w[2] = binary.LittleEndian.Uint64(b[24:])
		k.w[3] = binary.LittleEndian.Uint64(b[32:])
	}
	k.w[4] = portsWord(sport, dport, proto)
}

// hash is the flow hash of the key (see the package documentation): two
// multiply-xorshift lanes, over the even and the odd words, joined by the
// splitmix64 finalizer. The lanes are independent, so a CPU computes them
// in parallel.
func (k *flowKey) hash(seed uint64) uint64 {
	a := (seed ^ k.w[0]) * flowMulA
	b := (seed ^ k.w[1]) * flowMulB
	a = (a ^ a>>32 ^ k.w[2]) * flowMulA
	b = (b ^ b>>32 ^ k.w[3]) * flowMulB
	a = (a ^ a>>32 ^ k.w[4]) * flowMulA
	return mix64(a ^ (b>>32 | b<<32))
}

// mix64 is the splitmix64 finalizer, a bijection with full avalanche.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * mixMul1
	z = (z ^ z>>27) * mixMul2
	return z ^ z>>31
}

// FlowHash returns the Mux's flow hash of a 5-tuple with the given seed
// (0 means DefaultFlowHashSeed): the hash Maglev, the flow table, the outer
// source address and the IPv6 flow label use. For IP fragments and
// protocols without ports the ports are 0. It is exported so that other
// implementations (the eBPF data path) can be checked against it.
func FlowHash(t ananta.FiveTuple, seed uint64) uint64 {
	if seed == 0 {
		seed = DefaultFlowHashSeed
	}
	var k flowKey
	keyFrom(&k, t.Src, t.Dst, t.SrcPort, t.DstPort, t.Proto)
	return k.hash(seed)
}
