package encap

import (
	"encoding/binary"
	"net/netip"

	"github.com/ananta-go/ananta"
)

// Sum adds the big-endian 16-bit words of b to initial in one's complement
// arithmetic (RFC 1071) and returns the folded sum, at most 0xffff. A final
// odd byte is padded with a zero byte, so when a checksum is computed over
// several pieces, every piece but the last must have even length.
//
// Checksum(b) == ^uint16(Sum(b, 0)); chain pieces with
// Sum(b2, Sum(b1, PseudoHeaderSum(...))).
func Sum(b []byte, initial uint32) uint32 {
	s := uint64(initial)
	for len(b) >= 16 {
		s += uint64(binary.BigEndian.Uint32(b)) + uint64(binary.BigEndian.Uint32(b[4:])) +
			uint64(binary.BigEndian.Uint32(b[8:])) + uint64(binary.BigEndian.Uint32(b[12:]))
		b = b[16:]
	}
	for len(b) >= 4 {
		s += uint64(binary.BigEndian.Uint32(b))
		b = b[4:]
	}
	if len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return fold64(s)
}

// Checksum returns the Internet checksum of b (RFC 1071): the one's
// complement of the one's complement sum of its 16-bit words. Computed over
// data that includes a correct checksum field it returns 0.
func Checksum(b []byte) uint16 { return ^uint16(Sum(b, 0)) }

// Finish turns a sum from Sum or PseudoHeaderSum into the checksum to
// store: its one's complement.
func Finish(sum uint32) uint16 { return ^uint16(fold64(uint64(sum))) }

// PseudoHeaderSum returns the one's complement sum of the TCP/UDP/ICMPv6
// pseudo-header (RFC 793/768 for IPv4, RFC 8200 section 8.1 for IPv6) for a
// transport segment of length bytes. src and dst must be of one family; an
// invalid address contributes nothing.
func PseudoHeaderSum(src, dst netip.Addr, proto ananta.Protocol, length int) uint32 {
	var s uint32
	if src.Is4() {
		a, b := src.As4(), dst.As4()
		s = addrSum4(a) + addrSum4(b)
	} else {
		a, b := src.As16(), dst.As16()
		s = addrSum16(&a) + addrSum16(&b)
	}
	s += uint32(proto) + uint32(length>>16)&0xffff + uint32(length)&0xffff
	return fold32(s)
}

// UpdateChecksum returns the checksum hc after one 16-bit word of the data
// it covers changed from old to new (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')).
// A UDP checksum that comes out 0 must be stored as 0xffff.
func UpdateChecksum(hc, old, new uint16) uint16 {
	return applyDelta(hc, uint32(^old)+uint32(new))
}

// UpdateChecksum32 is UpdateChecksum for a 32-bit value (two adjacent words,
// for example an IPv4 address) that changed from old to new.
func UpdateChecksum32(hc uint16, old, new uint32) uint16 {
	return applyDelta(hc, delta32(old, new))
}

// UpdateChecksumAddr is UpdateChecksum for an address in the covered data
// (or the pseudo-header) that changed from old to new. Both must be of one
// family; otherwise hc is returned unchanged.
func UpdateChecksumAddr(hc uint16, old, new netip.Addr) uint16 {
	switch {
	case old.Is4() && new.Is4():
		a, b := old.As4(), new.As4()
		return applyDelta(hc, delta32(binary.BigEndian.Uint32(a[:]), binary.BigEndian.Uint32(b[:])))
	case old.Is6() && new.Is6():
		a, b := old.As16(), new.As16()
		return applyDelta(hc, delta128(a[:], b[:]))
	}
	return hc
}

// A delta is the unfolded one's complement sum of ~old + new over the
// changed words; applyDelta adds it to a checksum. Deltas of a few words
// fit easily in 32 bits.

func applyDelta(hc uint16, d uint32) uint16 {
	return ^uint16(fold32(uint32(^hc) + d))
}

func delta16(old, new uint16) uint32 { return uint32(^old) + uint32(new) }

func delta32(old, new uint32) uint32 {
	return uint32(^uint16(old>>16)) + uint32(^uint16(old)) + new>>16 + new&0xffff
}

// delta128 is the delta of a 16-byte value; old and new must be 16 bytes.
func delta128(old, new []byte) uint32 {
	_, _ = old[15], new[15]
	var d uint32
	for i := 0; i < 16; i += 4 {
		d += delta32(binary.BigEndian.Uint32(old[i:]), binary.BigEndian.Uint32(new[i:]))
	}
	return d
}

func addrSum4(a [4]byte) uint32 {
	return (uint32(a[0])<<8 | uint32(a[1])) + (uint32(a[2])<<8 | uint32(a[3]))
}

func addrSum16(a *[16]byte) uint32 {
	var s uint32
	for i := 0; i < 16; i += 2 {
		s += uint32(a[i])<<8 + uint32(a[i+1])
	}
	return s
}

func fold32(s uint32) uint32 {
	s = s>>16 + s&0xffff
	s = s>>16 + s&0xffff
	return s
}

func fold64(s uint64) uint32 {
	s = s>>32 + s&0xffffffff
	s = s>>32 + s&0xffffffff
	return fold32(uint32(s))
}
