package mux

import (
	"net/netip"
	"sort"
	"sync/atomic"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/hashring"
)

// The data path reads an immutable snapshot of the configuration through
// Mux.snap (an atomic.Pointer): lock-free. Every configuration change
// builds a new snapshot (copy-on-write) and swaps the pointer; packets in
// flight finish on the snapshot they started with.

const (
	chunkBits = 10
	chunkSize = 1 << chunkBits
	chunkMask = chunkSize - 1
	// maxSlots bounds the backend slots of one Mux (every backend of every
	// endpoint of every VIP takes one).
	maxSlots = 1 << 24
	// slotReuseDelay is how many freed slots wait before the oldest is
	// reused, on top of the 16-bit generation that tells a reused slot
	// from its previous backend.
	slotReuseDelay = 1024
)

// stripes is the number of cache-line-separated copies of each hot
// counter; a packet updates copy flowHash>>61, so workers serving
// different flows rarely share a line.
const stripes = 8

// vipCounters are a VIP's packet counters, shared by every snapshot while
// the VIP exists.
type vipCounters struct {
	s [stripes]struct {
		packets, bytes, newFlows atomic.Uint64
		_                        [40]byte
	}
}

func (c *vipCounters) add(h uint64, bytes int) {
	s := &c.s[h>>61]
	s.packets.Add(1)
	s.bytes.Add(uint64(bytes))
}

func (c *vipCounters) newFlow(h uint64) { c.s[h>>61].newFlows.Add(1) }

func (c *vipCounters) totals() (packets, bytes, newFlows uint64) {
	for i := range c.s {
		packets += c.s[i].packets.Load()
		bytes += c.s[i].bytes.Load()
		newFlows += c.s[i].newFlows.Load()
	}
	return
}

// backendCounters live as long as the backend's slot.
type backendCounters struct {
	newFlows atomic.Uint64
}

// target is where a packet is tunnelled: a host, and the VIP whose
// counters it updates.
type target struct {
	host  netip.Addr
	host4 bool
	vip   *vipCounters
}

// backend is one backend of one endpoint in a snapshot. Immutable.
type backend struct {
	target
	slot     uint32
	gen      uint16
	state    ananta.BackendState // worst of configured and health state
	idle     uint32              // trusted idle timeout, ms
	idleU    uint32              // untrusted idle timeout, ms
	ctr      *backendCounters
	dip      netip.Addr
	port     uint16
	weight   uint32
	endpoint ananta.Endpoint
}

// endpoint is one endpoint of a VIP in a snapshot. Immutable.
type endpoint struct {
	proto   ananta.Protocol
	port    uint16
	table   *hashring.Table
	members []*backend // usable backends, indexed as in table
	all     []*backend // every backend, in configuration order
}

// pick returns the backend Maglev assigns to flow hash h, or nil if the
// endpoint has no usable backend.
func (ep *endpoint) pick(h uint64) *backend {
	i := ep.table.Lookup(h)
	if i < 0 {
		return nil
	}
	return ep.members[i]
}

// snatEntry maps a port range of a VIP to the host of the DIP that leased
// it.
type snatEntry struct {
	target
	first, last uint16
}

// vipEntry is one VIP in a snapshot. Immutable.
type vipEntry struct {
	addr   netip.Addr
	tenant string
	ctr    *vipCounters
	exact  portIndex   // TCP and UDP endpoints with a port
	allTCP *endpoint   // TCP, all ports
	allUDP *endpoint   // UDP, all ports
	allAny *endpoint   // every protocol, all ports
	oneTCP *endpoint   // the TCP endpoint, when there is exactly one
	oneUDP *endpoint   // the UDP endpoint, when there is exactly one
	snat   []snatEntry // sorted by first, disjoint
	// snatIdx: for each block of 64 ports, the first entry of snat that
	// ends in or after it (nil without SNAT ranges).
	snatIdx *[65536 >> snatBlockBits]uint16
	eps     []*endpoint // every endpoint, configuration order
	ranges  []SNATRange // as configured, sorted
	cfg     *ananta.VIPConfig
}

// endpointFor returns the endpoint that serves a packet of proto to port:
// the exact (protocol, port) endpoint, else the protocol's all-ports
// endpoint, else the all-protocols endpoint. For fragments (frag) the port
// is unknown: the protocol's all-ports endpoint, else the all-protocols
// one, else the protocol's only endpoint.
func (v *vipEntry) endpointFor(proto ananta.Protocol, port uint16, frag bool) (*endpoint, DropReason) {
	var all, one *endpoint
	switch proto {
	case ananta.ProtocolTCP:
		all, one = v.allTCP, v.oneTCP
	case ananta.ProtocolUDP:
		all, one = v.allUDP, v.oneUDP
	}
	if frag {
		switch {
		case all != nil:
			return all, DropNone
		case v.allAny != nil:
			return v.allAny, DropNone
		case one != nil:
			return one, DropNone
		}
		return nil, DropFragment
	}
	if proto == ananta.ProtocolTCP || proto == ananta.ProtocolUDP {
		if ep := v.exact.get(portKey(proto, port)); ep != nil {
			return ep, DropNone
		}
		if all != nil {
			return all, DropNone
		}
	}
	if v.allAny != nil {
		return v.allAny, DropNone
	}
	return nil, DropNoEndpoint
}

// snatFor returns the SNAT range holding port, or nil. v.snatIdx[p>>6]
// is the first range that ends at or after port p&^63, so the scan from
// there passes only ranges inside that block of 64 ports.
func (v *vipEntry) snatFor(port uint16) *snatEntry {
	if v.snatIdx == nil {
		return nil
	}
	s := v.snat
	i := int(v.snatIdx[port>>snatBlockBits])
	for i < len(s) && s[i].last < port {
		i++
	}
	if i < len(s) && s[i].first <= port {
		return &s[i]
	}
	return nil
}

const snatBlockBits = 6

// buildSNATIndex fills v.snatIdx from v.snat (sorted, disjoint).
func (v *vipEntry) buildSNATIndex() {
	if len(v.snat) == 0 {
		return
	}
	v.snatIdx = new([65536 >> snatBlockBits]uint16)
	i := 0
	for blk := range v.snatIdx {
		first := uint16(blk << snatBlockBits)
		for i < len(v.snat) && v.snat[i].last < first {
			i++
		}
		v.snatIdx[blk] = uint16(i)
	}
}

func portKey(proto ananta.Protocol, port uint16) uint32 { return uint32(proto)<<16 | uint32(port) }

// portIndex is a small open-addressing hash table from portKey (never 0:
// the protocol is TCP or UDP) to endpoint.
type portIndex struct {
	keys  []uint32
	vals  []*endpoint
	shift uint
}

func newPortIndex(eps []*endpoint) portIndex {
	n := 0
	for _, ep := range eps {
		if ep.port != 0 {
			n++
		}
	}
	if n == 0 {
		return portIndex{}
	}
	size, bits := 4, uint(2)
	for size < 2*n {
		size, bits = size*2, bits+1
	}
	pi := portIndex{keys: make([]uint32, size), vals: make([]*endpoint, size), shift: 32 - bits}
	for _, ep := range eps {
		if ep.port == 0 {
			continue
		}
		k := portKey(ep.proto, ep.port)
		for i := pi.slot(k); ; i = (i + 1) & uint32(size-1) {
			if pi.keys[i] == 0 {
				pi.keys[i], pi.vals[i] = k, ep
				break
			}
		}
	}
	return pi
}

func (pi *portIndex) slot(k uint32) uint32 { return (k * 0x9e3779b1) >> pi.shift }

func (pi *portIndex) get(k uint32) *endpoint {
	if len(pi.keys) == 0 {
		return nil
	}
	mask := uint32(len(pi.keys) - 1)
	for i := pi.slot(k); ; i = (i + 1) & mask {
		switch pi.keys[i] {
		case k:
			return pi.vals[i]
		case 0:
			return nil
		}
	}
}

// vipIndex is an open-addressing hash table from a VIP's key words (the
// destination words 2 and 3 of a flowKey) to its entry.
type vipIndex struct {
	keys  [][2]uint64
	vals  []*vipEntry
	shift uint
}

func addrWords(a netip.Addr) (uint64, uint64) {
	var k flowKey
	keyFrom(&k, netip.IPv6Unspecified(), a, 0, 0, 0)
	return k.w[2], k.w[3]
}

func newVIPIndex(vips []*vipEntry) vipIndex {
	size, bits := 8, uint(3)
	for size < 2*len(vips) {
		size, bits = size*2, bits+1
	}
	vi := vipIndex{keys: make([][2]uint64, size), vals: make([]*vipEntry, size), shift: 64 - bits}
	for _, v := range vips {
		a, b := addrWords(v.addr)
		for i := vi.slot(a, b); ; i = (i + 1) & uint64(size-1) {
			if vi.vals[i] == nil {
				vi.keys[i], vi.vals[i] = [2]uint64{a, b}, v
				break
			}
		}
	}
	return vi
}

func (vi *vipIndex) slot(a, b uint64) uint64 { return ((a ^ b) * bucketMixMul) >> vi.shift }

func (vi *vipIndex) get(a, b uint64) *vipEntry {
	mask := uint64(len(vi.vals) - 1)
	for i := vi.slot(a, b); ; i = (i + 1) & mask {
		v := vi.vals[i]
		if v == nil || vi.keys[i] == [2]uint64{a, b} {
			return v
		}
	}
}

// snapshot is the data path's view of the configuration. Immutable.
type snapshot struct {
	vips   vipIndex
	chunks []*[chunkSize]*backend // backend by slot
	list   []*vipEntry            // every VIP, sorted by address
}

// backend returns the backend in slot, or nil.
func (s *snapshot) backend(slot uint32) *backend {
	c := slot >> chunkBits
	if int(c) >= len(s.chunks) {
		return nil
	}
	return s.chunks[c][slot&chunkMask]
}

// withChanges returns a copy of s with the backend slots in changes set
// (nil frees a slot) and the VIP list replaced.
func (s *snapshot) withChanges(changes map[uint32]*backend, vips []*vipEntry) *snapshot {
	n := &snapshot{vips: newVIPIndex(vips), list: vips}
	top := len(s.chunks)
	for slot := range changes {
		top = max(top, int(slot>>chunkBits)+1)
	}
	n.chunks = make([]*[chunkSize]*backend, top)
	copy(n.chunks, s.chunks)
	copied := make(map[uint32]bool)
	for slot, be := range changes {
		c := slot >> chunkBits
		if !copied[c] {
			var fresh [chunkSize]*backend
			if n.chunks[c] != nil {
				fresh = *n.chunks[c]
			}
			n.chunks[c] = &fresh
			copied[c] = true
		}
		n.chunks[c][slot&chunkMask] = be
	}
	sort.Slice(vips, func(i, j int) bool { return vips[i].addr.Less(vips[j].addr) })
	return n
}
