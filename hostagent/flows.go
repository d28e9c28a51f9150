package hostagent

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
)

// flowKey is a packed 5-tuple as seen on one side of the host: 38 bytes
// without padding, so that the map hashes it as one block of memory.
// Addresses are packed (see pack); flags keep IPv4 apart from IPv6 and the
// outside's keys apart from the VMs'.
type flowKey struct {
	src, dst     [16]byte
	sport, dport uint16
	proto        uint8
	flags        uint8
}

const (
	keyV6     = 1 << 0 // IPv6 packet
	keyFromVM = 1 << 1 // key of packets sent by a VM (the "in" side)
)

// pack stores an address in 16 bytes: an IPv4 address in the first four,
// the rest zero; an IPv6 address whole.
func pack(a netip.Addr) [16]byte {
	if a.Is4() {
		var b [16]byte
		v := a.As4()
		copy(b[:4], v[:])
		return b
	}
	return a.As16()
}

// addrOf converts a packed address back to netip.Addr.
func addrOf(b [16]byte, v6 bool) netip.Addr {
	if v6 {
		return netip.AddrFrom16(b)
	}
	return netip.AddrFrom4([4]byte(b[:4]))
}

func makeKey(t *ananta.FiveTuple, fromVM bool) flowKey {
	k := flowKey{src: pack(t.Src), dst: pack(t.Dst), sport: t.SrcPort, dport: t.DstPort, proto: uint8(t.Proto)}
	if t.Src.Is6() {
		k.flags = keyV6
	}
	if fromVM {
		k.flags |= keyFromVM
	}
	return k
}

// packetKey is makeKey for the packet p parsed from b, reading the
// addresses straight from the IP header.
func packetKey(b []byte, p *encap.Packet, fromVM bool) flowKey {
	var k flowKey
	if p.Version == 4 {
		copy(k.src[:4], b[12:16])
		copy(k.dst[:4], b[16:20])
	} else {
		copy(k.src[:], b[8:24])
		copy(k.dst[:], b[24:40])
		k.flags = keyV6
	}
	k.sport, k.dport, k.proto = p.Tuple.SrcPort, p.Tuple.DstPort, uint8(p.Tuple.Proto)
	if fromVM {
		k.flags |= keyFromVM
	}
	return k
}

// remote returns the outside party of the key: the source of an outside
// key, the destination of a VM key. Both keys of a flow share it, so it
// picks the shard.
func (k *flowKey) remote() (*[16]byte, uint16) {
	if k.flags&keyFromVM != 0 {
		return &k.dst, k.dport
	}
	return &k.src, k.sport
}

func (k *flowKey) v6() bool { return k.flags&keyV6 != 0 }

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
	extAddr, inAddr [16]byte
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
	if f.out.proto != uint8(ananta.ProtocolTCP) {
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
const numShards = 64

// Slot values in a shard's index: slot<<1 | side.
const (
	sideOut = 0
	sideIn  = 1
)

// shard is one part of the flow table. Both keys of a flow live in the
// shard of the flow's remote party, so one lock covers a flow.
type shard struct {
	// mu guards index, slots and free.
	mu    sync.Mutex
	index map[flowKey]uint32
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
}

func newFlowTable(max int) *flowTable {
	t := &flowTable{max: int64(max)}
	per := max/numShards + 1
	hint := min(per, 256)
	for i := range t.shards {
		t.shards[i].index = make(map[flowKey]uint32, 2*hint)
		t.shards[i].slots = make([]flow, 0, hint)
	}
	return t
}

// shardOf returns the shard of a remote address and port.
func (t *flowTable) shardOf(a *[16]byte, port uint16) *shard {
	x := binary.LittleEndian.Uint64(a[0:8])*0x9e3779b97f4a7c15 ^ binary.LittleEndian.Uint64(a[8:16]) ^ uint64(port)<<48
	x ^= x >> 29
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 32
	return &t.shards[x%numShards]
}

func (t *flowTable) shardFor(k *flowKey) *shard {
	a, p := k.remote()
	return t.shardOf(a, p)
}

// lookup finds the flow of key k. s.mu must be held.
func (s *shard) lookup(k *flowKey) (*flow, uint32, bool) {
	v, ok := s.index[*k]
	if !ok {
		return nil, 0, false
	}
	return &s.slots[v>>1], v >> 1, true
}

// insert adds f to s. s.mu must be held. It fails with DropTableFull when
// the table is full and DropConflict when either key is taken.
func (t *flowTable) insert(s *shard, f *flow) (*flow, DropReason) {
	if _, dup := s.index[f.out]; dup {
		return nil, DropConflict
	}
	if _, dup := s.index[f.in]; dup {
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
	s.index[f.out] = slot<<1 | sideOut
	s.index[f.in] = slot<<1 | sideIn
	return &s.slots[slot], sideOut
}

// remove deletes the flow in slot. s.mu must be held.
func (t *flowTable) remove(s *shard, slot uint32) {
	f := &s.slots[slot]
	if !f.live {
		return
	}
	delete(s.index, f.out)
	delete(s.index, f.in)
	*f = flow{}
	s.free = append(s.free, slot)
	t.count.Add(-1)
}
