package hostagent

import (
	"crypto/rand"
	"encoding/binary"
	"math/bits"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
)

// paddr is an address packed in two words: the 16 bytes of an IPv6
// address, or the 4 bytes of an IPv4 address followed by zeros, read in
// little-endian order (the same words a packet's header bytes load into).
type paddr [2]uint64

// pack packs an address.
func pack(a netip.Addr) paddr {
	if a.Is4() {
		b := a.As4()
		return paddr{uint64(binary.LittleEndian.Uint32(b[:])), 0}
	}
	b := a.As16()
	return paddr{binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])}
}

// addrOf unpacks an address.
func addrOf(p paddr, v6 bool) netip.Addr {
	if !v6 {
		return netip.AddrFrom4([4]byte{byte(p[0]), byte(p[0] >> 8), byte(p[0] >> 16), byte(p[0] >> 24)})
	}
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], p[0])
	binary.LittleEndian.PutUint64(b[8:], p[1])
	return netip.AddrFrom16(b)
}

// flowKey is a packed 5-tuple as seen on one side of the host, in five
// 64-bit words. The small fields share one word (meta): written and
// compared whole, so that loads of the key are never fed by narrower
// stores (which defeats store-to-load forwarding). The flags keep IPv4
// apart from IPv6 and the outside's keys apart from the VMs'.
type flowKey struct {
	src, dst paddr
	meta     uint64 // sport | dport<<16 | proto<<32 | flags<<40
}

const (
	keyV6     = 1 << 0 // IPv6 packet
	keyFromVM = 1 << 1 // key of packets sent by a VM (the "in" side)
)

func keyMeta(sport, dport uint16, proto, flags uint8) uint64 {
	return uint64(sport) | uint64(dport)<<16 | uint64(proto)<<32 | uint64(flags)<<40
}

func (k *flowKey) sport() uint16 { return uint16(k.meta) }
func (k *flowKey) dport() uint16 { return uint16(k.meta >> 16) }
func (k *flowKey) proto() uint8  { return uint8(k.meta >> 32) }
func (k *flowKey) flags() uint8  { return uint8(k.meta >> 40) }

// equal compares two keys word by word.
func (k *flowKey) equal(o *flowKey) bool {
	return k.src[0] == o.src[0] && k.src[1] == o.src[1] && k.dst[0] == o.dst[0] &&
		k.dst[1] == o.dst[1] && k.meta == o.meta
}

func makeKey(t *ananta.FiveTuple, fromVM bool) flowKey {
	var flags uint8
	if t.Src.Is6() {
		flags = keyV6
	}
	if fromVM {
		flags |= keyFromVM
	}
	return flowKey{src: pack(t.Src), dst: pack(t.Dst), meta: keyMeta(t.SrcPort, t.DstPort, uint8(t.Proto), flags)}
}

// packetKey sets k to the key of the packet p parsed from b, reading the
// addresses straight from the IP header. (It fills k in place: a key
// returned by value would be copied with wider loads than the stores that
// wrote it, which stalls store-to-load forwarding.)
func packetKey(k *flowKey, b []byte, p *encap.Packet, fromVM bool) {
	var flags uint8
	if p.Version == 4 {
		k.src = paddr{uint64(binary.LittleEndian.Uint32(b[12:16])), 0}
		k.dst = paddr{uint64(binary.LittleEndian.Uint32(b[16:20])), 0}
	} else {
		k.src = paddr{binary.LittleEndian.Uint64(b[8:16]), binary.LittleEndian.Uint64(b[16:24])}
		k.dst = paddr{binary.LittleEndian.Uint64(b[24:32]), binary.LittleEndian.Uint64(b[32:40])}
		flags = keyV6
	}
	if fromVM {
		flags |= keyFromVM
	}
	k.meta = keyMeta(p.Tuple.SrcPort, p.Tuple.DstPort, uint8(p.Tuple.Proto), flags)
}

// remote returns the outside party of the key: the source of an outside
// key, the destination of a VM key. Both keys of a flow share it, so it
// picks the shard.
func (k *flowKey) remote() (paddr, uint16) {
	if k.flags()&keyFromVM != 0 {
		return k.dst, k.dport()
	}
	return k.src, k.sport()
}

func (k *flowKey) v6() bool { return k.flags()&keyV6 != 0 }

// Flow kinds.
const (
	kindDNAT     uint8 = iota + 1 // inbound: VIP:port <-> DIP:port
	kindFloating                  // inbound, floating IP: the VM holds the VIP
	kindSNAT                      // outbound: DIP:port <-> VIP:leased port
)

// TCP state bits of a flow.
const (
	stAckOut      = 1 << iota // ackOut holds the last ACK number the outside sent
	stAckIn                   // ackIn holds the last ACK number the VM sent
	stFinOut                  // the outside sent FIN
	stFinIn                   // the VM sent FIN
	stRst                     // either side sent RST
	stResetOnIdle             // send RSTs to both ends when the flow idles out
)

// flow is one tracked connection. It holds no pointers, so the slabs of
// flows cost the garbage collector nothing.
type flow struct {
	out, in flowKey // keys of packets from the outside and from the VM
	// extAddr:extPort is what the outside sees (VIP:port); inAddr:inPort
	// is what the VM sees (DIP:port, or VIP:port for a floating IP).
	extAddr, inAddr paddr
	extPort, inPort uint16
	last, timeout   int64  // Unix ns of the last packet; idle timeout in ns
	ackOut, ackIn   uint32 // see stAckOut, stAckIn
	pool            uint32 // SNAT pool id, 0 for inbound flows
	vm              uint16
	kind            uint8
	state           uint8
	live            bool
}

func (f *flow) v6() bool { return f.out.v6() }

// touch records a packet of the flow at now.
func (f *flow) touch(now int64, fromVM bool, tcpFlags uint8, ack uint32) {
	f.last = now
	if f.out.proto() != uint8(ananta.ProtocolTCP) {
		return
	}
	if fromVM {
		if tcpFlags&tcpACK != 0 {
			f.ackIn = ack
			f.state |= stAckIn
		}
		if tcpFlags&tcpFIN != 0 {
			f.state |= stFinIn
		}
	} else {
		if tcpFlags&tcpACK != 0 {
			f.ackOut = ack
			f.state |= stAckOut
		}
		if tcpFlags&tcpFIN != 0 {
			f.state |= stFinOut
		}
	}
	if tcpFlags&tcpRST != 0 {
		f.state |= stRst
	}
}

// closing reports a TCP flow that was reset or closed in both directions.
func (f *flow) closing() bool {
	return f.state&stRst != 0 || f.state&(stFinIn|stFinOut) == stFinIn|stFinOut
}

// established reports a TCP flow whose two ends have both acknowledged
// something and that is not closing: the flows that get RSTs on idle.
func (f *flow) established() bool {
	return f.state&(stAckIn|stAckOut) == stAckIn|stAckOut && f.state&(stRst|stFinIn|stFinOut) == 0
}

// expired reports whether the flow idled out at now.
func (f *flow) expired(now, closeTimeout int64) bool {
	to := f.timeout
	if f.closing() {
		to = min(to, closeTimeout)
	}
	return now-f.last >= to
}

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// numShards is the number of independently locked parts of the flow table.
const (
	shardBits = 6
	numShards = 1 << shardBits
)

// Sides of a flow's keys.
const (
	sideOut = 0
	sideIn  = 1
)

// shard is one part of the flow table: a slab of flows and an
// open-addressing index (linear probing, backward-shift deletion) over
// their two keys. Both keys of a flow live in the shard of the flow's
// remote party, so one lock covers a flow.
//
// An index entry is 0 when empty, else the low 32 bits of the key's hash
// (which give the home bucket and a tag) above (slot<<1 | side) + 1.
type shard struct {
	// mu guards the fields below.
	mu    sync.Mutex
	index []uint64
	mask  uint32
	n     int // index entries used
	slots []flow
	free  []uint32
	_     [64]byte // keep neighbouring shards' locks off one cache line
}

// flowTable is the connection tracking table: numShards shards, bounded to
// max flows in all.
type flowTable struct {
	shards [numShards]shard
	count  atomic.Int64
	max    int64
	seed   [4]uint64
}

const minIndex = 64

func newFlowTable(max int) *flowTable {
	t := &flowTable{max: int64(max)}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("hostagent: crypto/rand: " + err.Error()) // unreachable: rand.Read does not fail on Linux
	}
	for i := range t.seed {
		t.seed[i] = binary.LittleEndian.Uint64(b[8*i:]) | 1
	}
	for i := range t.shards {
		t.shards[i].index = make([]uint64, minIndex)
		t.shards[i].mask = minIndex - 1
	}
	return t
}

func mix(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

// hash hashes a key with the table's secret seed, so that remote parties
// cannot aim many keys at one bucket.
func (t *flowTable) hash(k *flowKey) uint64 {
	a := mix(k.src[0]^t.seed[0], k.src[1]^t.seed[1])
	b := mix(k.dst[0]^t.seed[2], k.dst[1]^t.seed[3])
	return mix(a^k.meta^t.seed[1], b^t.seed[0])
}

// shardOf returns the shard of a remote address and port: one multiply
// over the seeded words, top bits. (Within a shard the index hash is the
// strong one; this only spreads lock contention.)
func (t *flowTable) shardOf(a paddr, port uint16) *shard {
	x := (a[0] ^ a[1]<<1 ^ uint64(port)<<40 ^ t.seed[2]) * 0x9e3779b97f4a7c15
	return &t.shards[x>>(64-shardBits)]
}

// locate returns the shard of k and k's hash.
func (t *flowTable) locate(k *flowKey) (*shard, uint64) {
	a, p := k.remote()
	return t.shardOf(a, p), t.hash(k)
}

// keyOf returns the key an index entry refers to.
func (s *shard) keyOf(e uint64) *flowKey {
	ref := uint32(e) - 1
	f := &s.slots[ref>>1]
	if ref&1 == sideIn {
		return &f.in
	}
	return &f.out
}

// lookup finds the flow of key k with hash h. s.mu must be held.
func (s *shard) lookup(k *flowKey, h uint64) (*flow, uint32, bool) {
	tag := uint32(h)
	for i := tag & s.mask; ; i = (i + 1) & s.mask {
		e := s.index[i]
		if e == 0 {
			return nil, 0, false
		}
		if uint32(e>>32) == tag && s.keyOf(e).equal(k) {
			slot := (uint32(e) - 1) >> 1
			return &s.slots[slot], slot, true
		}
	}
}

// put adds an index entry for a key with hash h. s.mu must be held.
func (s *shard) put(h uint64, ref uint32) {
	if (s.n+1)*4 > len(s.index)*3 {
		s.grow()
	}
	i := uint32(h) & s.mask
	for s.index[i] != 0 {
		i = (i + 1) & s.mask
	}
	s.index[i] = uint64(uint32(h))<<32 | uint64(ref+1)
	s.n++
}

func (s *shard) grow() {
	old := s.index
	s.index = make([]uint64, 2*len(old))
	s.mask = uint32(len(s.index) - 1)
	for _, e := range old {
		if e == 0 {
			continue
		}
		i := uint32(e>>32) & s.mask
		for s.index[i] != 0 {
			i = (i + 1) & s.mask
		}
		s.index[i] = e
	}
}

// del removes the index entry of key k with hash h, which must be present.
// s.mu must be held.
func (s *shard) del(k *flowKey, h uint64) {
	tag := uint32(h)
	i := tag & s.mask
	for {
		e := s.index[i]
		if e == 0 {
			return // unreachable: the key is present
		}
		if uint32(e>>32) == tag && s.keyOf(e).equal(k) {
			break
		}
		i = (i + 1) & s.mask
	}
	// Backward-shift deletion: move later entries of the run into the hole
	// when the hole lies between their home bucket and their position.
	for j := (i + 1) & s.mask; ; j = (j + 1) & s.mask {
		e := s.index[j]
		if e == 0 {
			break
		}
		home := uint32(e>>32) & s.mask
		if (j-home)&s.mask >= (j-i)&s.mask {
			s.index[i] = e
			i = j
		}
	}
	s.index[i] = 0
	s.n--
}

// insert adds f to s. s.mu must be held. It fails with DropTableFull when
// the table is full and DropConflict when either key is taken.
func (t *flowTable) insert(s *shard, f *flow) (*flow, DropReason) {
	ho, hi := t.hash(&f.out), t.hash(&f.in)
	if _, _, dup := s.lookup(&f.out, ho); dup {
		return nil, DropConflict
	}
	if _, _, dup := s.lookup(&f.in, hi); dup {
		return nil, DropConflict
	}
	if t.count.Add(1) > t.max {
		t.count.Add(-1)
		return nil, DropTableFull
	}
	var slot uint32
	if n := len(s.free); n > 0 {
		slot = s.free[n-1]
		s.free = s.free[:n-1]
	} else {
		slot = uint32(len(s.slots))
		s.slots = append(s.slots, flow{})
	}
	f.live = true
	s.slots[slot] = *f
	s.put(ho, slot<<1|sideOut)
	s.put(hi, slot<<1|sideIn)
	return &s.slots[slot], DropNone
}

// remove deletes the flow in slot. s.mu must be held.
func (t *flowTable) remove(s *shard, slot uint32) {
	f := &s.slots[slot]
	if !f.live {
		return
	}
	s.del(&f.out, t.hash(&f.out))
	s.del(&f.in, t.hash(&f.in))
	*f = flow{}
	s.free = append(s.free, slot)
	t.count.Add(-1)
}
