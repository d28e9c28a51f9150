package hashring

import "encoding/binary"

// Constants of the key hash. They are part of the table format: changing
// any of them changes every table (the golden tests catch it).
const (
	lenMul      = 0x9e3779b97f4a7c15 // multiplies len(key) into the initial state
	skipSeedXor = 0xc2b2ae3d27d4eb4f // h2 hashes with seed ^ skipSeedXor
)

// mix64 is the splitmix64 finalizer (Steele, Lea, Flood 2014; the constants
// of Stafford's "Mix13"). It is a bijection on uint64 with full avalanche.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}

// hash64 is the seeded 64-bit key hash described in the package comment:
// h = seed + len(key)*lenMul; for each little-endian 64-bit word w of the
// key (the last one zero-padded), h = mix64(h ^ w); return mix64(h).
// Each step is a bijection of h for a fixed word, and the length enters the
// initial state, so keys that differ only by trailing zero bytes differ.
func hash64(key []byte, seed uint64) uint64 {
	h := seed + uint64(len(key))*lenMul
	for len(key) >= 8 {
		h = mix64(h ^ binary.LittleEndian.Uint64(key))
		key = key[8:]
	}
	if len(key) > 0 {
		var buf [8]byte
		copy(buf[:], key)
		h = mix64(h ^ binary.LittleEndian.Uint64(buf[:]))
	}
	return mix64(h)
}
