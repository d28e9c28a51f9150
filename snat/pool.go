package snat

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"time"

	"github.com/ananta-go/ananta"
)

// DefaultExpectedFlows is the flow count a Pool's tables are sized for when
// PoolConfig.ExpectedFlows is 0.
const DefaultExpectedFlows = 256

// PoolConfig configures a Pool. The zero value selects the defaults.
type PoolConfig struct {
	// LowWater is the free-port threshold under which Low reports true.
	// 0 means one eighth of the pool's ports, at least MinRangeSize.
	LowWater int
	// ExpectedFlows sizes the flow tables up front, so that Acquire does
	// not allocate until the pool holds this many flows. 0 means
	// DefaultExpectedFlows.
	ExpectedFlows int
}

// Flow is one outbound flow a Pool has given a VIP port.
type Flow struct {
	Proto ananta.Protocol
	// Port is the VIP port of the flow.
	Port uint16
	// Dst is the remote destination.
	Dst netip.AddrPort
	// Src is the DIP's source port of a UDP flow (AcquireUDP), else 0.
	Src uint16
}

// flowKey is a packed (protocol, VIP port, destination): one flow. The
// small fields share one word, so that the key is read and written with
// whole-word accesses only (narrow stores followed by a wide load of the
// same word stall the CPU's store forwarding on the Acquire path).
type flowKey struct {
	hi, lo uint64 // destination address, 16-byte form
	// meta holds, from bit 0: destination port (16 bits), VIP port (16),
	// protocol (8), family (8: 4 or 6, keeping 1.2.3.4 apart from
	// ::ffff:1.2.3.4).
	meta uint64
}

const vportShift = 16

func (k flowKey) dport() uint16          { return uint16(k.meta) }
func (k flowKey) vport() uint16          { return uint16(k.meta >> vportShift) }
func (k flowKey) proto() ananta.Protocol { return ananta.Protocol(k.meta >> 32) }
func (k flowKey) fam() uint8             { return uint8(k.meta >> 40) }

// makeDstKey packs (protocol, destination) into a flowKey with VIP port 0:
// the key of the destination table.
func makeDstKey(proto ananta.Protocol, dst netip.AddrPort) flowKey {
	a := dst.Addr()
	meta := uint64(dst.Port()) | uint64(proto)<<32
	if a.Is4() { // the IPv4-mapped 16-byte form, built without As16
		b := a.As4()
		return flowKey{lo: 0xffff<<32 | uint64(binary.BigEndian.Uint32(b[:])), meta: meta | 4<<40}
	}
	b := a.As16()
	return flowKey{
		hi:   binary.BigEndian.Uint64(b[:8]),
		lo:   binary.BigEndian.Uint64(b[8:]),
		meta: meta | 6<<40,
	}
}

// flow returns the key of the flow on VIP port port to destination key d.
func (d flowKey) flow(port uint16) flowKey {
	d.meta = d.meta&^(0xffff<<vportShift) | uint64(port)<<vportShift
	return d
}

// addrPort returns the destination of the key.
func (f flowKey) addrPort() netip.AddrPort {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], f.hi)
	binary.BigEndian.PutUint64(b[8:], f.lo)
	a := netip.AddrFrom16(b)
	if f.fam() == 4 {
		a = a.Unmap()
	}
	return netip.AddrPortFrom(a, f.dport())
}

// dstState tracks the flows of one (protocol, destination).
type dstState struct {
	n    int32  // flows to the destination
	next uint32 // VIP port where the search for the next flow starts (may be 65536 or stale)
}

type portState struct {
	flows    int32  // endpoint-dependent (TCP) flows on this port
	udpFlows int32  // UDP flows of the cone mapping on this port
	udpSrc   uint16 // DIP source port mapped here when udpMapped
	udp      bool   // a UDP cone mapping owns this port
}

func (s *portState) busy() bool { return s.flows > 0 || s.udp }

type poolRange struct {
	r    ananta.PortRange
	base int   // index of r.First in Pool.ports
	busy int   // ports with flows or a UDP mapping
	last int64 // Unix ns of the last Acquire or Release in the range, or of Add
}

// Pool is a Host Agent's local pool of the SNAT port ranges leased to one
// (VIP, DIP): it hands out VIP ports for the DIP's new outbound flows.
//
// TCP (and every protocol but UDP) uses endpoint-dependent mapping: a flow
// to a destination gets a VIP port that no other flow of that protocol to
// the same destination (address and port) uses, so the 5-tuple
// (VIP, VIP port, destination, destination port, protocol) that the
// outside sees stays unique while one VIP port serves many destinations.
// A flow to a destination the pool has no flow to gets the pool's lowest
// port; further flows to the same destination take the following ports in
// turn (round robin over the pool, skipping ports already used with that
// destination). Flows thus pack into the low ports, and high ranges fall
// idle and can be returned.
//
// UDP uses port-restricted cone semantics (RFC 4787 "endpoint-independent
// mapping"): AcquireUDP maps the DIP's source port to one VIP port that
// all its flows share, whatever their destination, for as long as it has a
// flow; that VIP port carries no other UDP mapping, so return traffic to it
// has a single DIP source port (UDPSource). Filtering (accepting return
// traffic only from destinations the source port has sent to) is the
// agent's flow table's job. TCP flows may share a port with a UDP mapping:
// the protocols differ in the 5-tuple.
//
// Times are explicit arguments; the pool reads no clock. Release a port
// once the flow is gone from the agent's flow table (after FIN/RST and a
// TIME_WAIT grace period, or the idle timeout), since an immediately
// reacquired port to the same destination repeats the old 5-tuple.
//
// A Pool is not safe for concurrent use: the Host Agent calls it under its
// own lock. Acquire allocates nothing in steady state (until its tables
// outgrow PoolConfig.ExpectedFlows).
type Pool struct {
	cfg     PoolConfig
	ranges  []poolRange // sorted by First, disjoint
	ports   []portState // the ports of ranges, concatenated in order
	busy    int
	flows   flowTable[struct{}] // every flow
	dsts    flowTable[dstState] // (protocol, destination) with vport 0 -> its flows
	udp     map[uint16]uint16   // DIP source port -> VIP port
	udpNext uint32              // VIP port where the search for a new UDP mapping starts
}

// NewPool returns an empty pool. It returns an error matching
// ErrInvalidConfig for a negative field.
func NewPool(cfg PoolConfig) (*Pool, error) {
	if cfg.LowWater < 0 || cfg.ExpectedFlows < 0 {
		return nil, errorf(ErrInvalidConfig, "pool config %+v has a negative field", cfg)
	}
	if cfg.ExpectedFlows == 0 {
		cfg.ExpectedFlows = DefaultExpectedFlows
	}
	return &Pool{
		cfg:   cfg,
		flows: newFlowTable[struct{}](cfg.ExpectedFlows),
		dsts:  newFlowTable[dstState](cfg.ExpectedFlows),
		udp:   make(map[uint16]uint16, 64),
	}, nil
}

// Size returns the number of ports in the pool.
func (p *Pool) Size() int { return len(p.ports) }

// Free returns the number of ports with no flow and no UDP mapping.
func (p *Pool) Free() int { return len(p.ports) - p.busy }

// Flows returns the number of flows.
func (p *Pool) Flows() int { return p.flows.n }

// LowWater returns the effective free-port threshold of Low.
func (p *Pool) LowWater() int {
	if p.cfg.LowWater != 0 {
		return p.cfg.LowWater
	}
	return max(MinRangeSize, len(p.ports)/8)
}

// Low reports whether fewer than LowWater ports are free: time for the
// agent to lease more ahead of need.
func (p *Pool) Low() bool { return p.Free() < p.LowWater() }

// Ranges returns the pool's ranges in ascending order.
func (p *Pool) Ranges() []ananta.PortRange {
	out := make([]ananta.PortRange, len(p.ranges))
	for i, r := range p.ranges {
		out[i] = r.r
	}
	return out
}

// Has reports whether port belongs to the pool.
func (p *Pool) Has(port uint16) bool {
	_, ok := p.find(port)
	return ok
}

// find returns the index of the range holding port.
func (p *Pool) find(port uint16) (int, bool) {
	i := p.locate(uint32(port))
	if i < len(p.ranges) && p.ranges[i].r.Contains(port) {
		return i, true
	}
	return 0, false
}

// locate returns the index of the first range with Last >= port
// (len(ranges) if none).
func (p *Pool) locate(port uint32) int {
	lo, hi := 0, len(p.ranges)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if uint32(p.ranges[m].r.Last) < port {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// at returns the first pool port at or after port in cyclic order, and
// its range. The pool must not be empty.
func (p *Pool) at(port uint32) (uint16, int) {
	i := p.locate(port)
	if i == len(p.ranges) {
		return p.ranges[0].r.First, 0
	}
	return max(p.ranges[i].r.First, uint16(port)), i
}

// succ returns the pool port after port (in range ri) in cyclic order.
func (p *Pool) succ(port uint16, ri int) (uint16, int) {
	if port < p.ranges[ri].r.Last {
		return port + 1, ri
	}
	if ri++; ri == len(p.ranges) {
		ri = 0
	}
	return p.ranges[ri].r.First, ri
}

func (p *Pool) state(ri int, port uint16) *portState {
	r := &p.ranges[ri]
	return &p.ports[r.base+int(port-r.r.First)]
}

// Acquire picks a VIP port for a new flow of proto to dst (see Pool for the
// choice) and records the flow. It returns false when proto is UDP (use
// AcquireUDP) or ProtocolAny, dst is invalid, or every pool port already
// has a flow of proto to dst.
func (p *Pool) Acquire(proto ananta.Protocol, dst netip.AddrPort, now time.Time) (uint16, bool) {
	if proto == ananta.ProtocolUDP || proto == ananta.ProtocolAny || len(p.ranges) == 0 || !dst.Addr().IsValid() {
		return 0, false
	}
	dk := makeDstKey(proto, dst)
	di, dh, known := p.dsts.find(&dk)
	fk := dk
	var port uint16
	var ri int
	var fi, fh uint64
	if !known {
		port = p.ranges[0].r.First
		fk = dk.flow(port)
		fi, fh, _ = p.flows.find(&fk) // absent: no flow to dk at all
		p.flows.put(fi, fh, &fk, struct{}{})
		p.dsts.put(di, dh, &dk, dstState{n: 1, next: uint32(port) + 1})
	} else {
		ds := &p.dsts.slots[di].v
		if int(ds.n) >= len(p.ports) {
			return 0, false
		}
		port, ri = p.at(ds.next)
		for {
			fk = dk.flow(port)
			var used bool
			if fi, fh, used = p.flows.find(&fk); !used {
				break
			}
			port, ri = p.succ(port, ri)
		}
		ds.n++
		ds.next = uint32(port) + 1
		p.flows.put(fi, fh, &fk, struct{}{})
	}
	s := p.state(ri, port)
	if !s.busy() {
		p.ranges[ri].busy++
		p.busy++
	}
	s.flows++
	p.ranges[ri].last = now.UnixNano()
	return port, true
}

// AcquireUDP returns the VIP port of the DIP's UDP source port src for a
// flow to dst, creating the cone mapping if src has none: the same VIP port
// for every destination while src has flows. Acquiring a flow the pool
// already has returns its port and records nothing new. It returns false
// when src is 0, dst is invalid, or src has no mapping and every pool port
// already carries another one.
func (p *Pool) AcquireUDP(src uint16, dst netip.AddrPort, now time.Time) (uint16, bool) {
	if src == 0 || len(p.ranges) == 0 || !dst.Addr().IsValid() {
		return 0, false
	}
	dk := makeDstKey(ananta.ProtocolUDP, dst)
	port, mapped := p.udp[src]
	var ri int
	if mapped {
		ri, _ = p.find(port)
		fk := dk.flow(port)
		fi, fh, dup := p.flows.find(&fk)
		if dup {
			return port, true
		}
		p.flows.put(fi, fh, &fk, struct{}{})
		p.state(ri, port).udpFlows++
	} else {
		if len(p.udp) >= len(p.ports) {
			return 0, false
		}
		port, ri = p.at(p.udpNext)
		for p.state(ri, port).udp {
			port, ri = p.succ(port, ri)
		}
		s := p.state(ri, port)
		if !s.busy() {
			p.ranges[ri].busy++
			p.busy++
		}
		s.udp, s.udpSrc, s.udpFlows = true, src, 1
		p.udp[src] = port
		p.udpNext = uint32(port) + 1
		fk := dk.flow(port)
		fi, fh, _ := p.flows.find(&fk) // absent: the port had no UDP flow
		p.flows.put(fi, fh, &fk, struct{}{})
	}
	p.ranges[ri].last = now.UnixNano()
	return port, true
}

// UDPSource returns the DIP source port that the UDP cone mapping on VIP
// port port belongs to: the reverse lookup for return traffic.
func (p *Pool) UDPSource(port uint16) (uint16, bool) {
	ri, ok := p.find(port)
	if !ok {
		return 0, false
	}
	s := p.state(ri, port)
	return s.udpSrc, s.udp
}

// Release ends the flow of proto from VIP port port to dst (for UDP, port
// is the VIP port AcquireUDP returned). When the last UDP flow of a cone
// mapping ends, the mapping ends too. It returns false, changing nothing,
// if the pool has no such flow.
func (p *Pool) Release(proto ananta.Protocol, port uint16, dst netip.AddrPort, now time.Time) bool {
	if !dst.Addr().IsValid() {
		return false
	}
	fk := makeDstKey(proto, dst).flow(port)
	fi, _, ok := p.flows.find(&fk)
	if !ok {
		return false
	}
	ri, _ := p.find(port) // a flow's port is always in the pool
	p.release(ri, fi, fk)
	p.ranges[ri].last = now.UnixNano()
	return true
}

// release removes flow fk, in slot fi of p.flows, on a port of range ri.
func (p *Pool) release(ri int, fi uint64, fk flowKey) {
	p.flows.del(fi)
	s := p.state(ri, fk.vport())
	if fk.proto() == ananta.ProtocolUDP {
		if s.udpFlows--; s.udpFlows == 0 {
			delete(p.udp, s.udpSrc)
			s.udp, s.udpSrc = false, 0
		}
	} else {
		s.flows--
		dk := fk.flow(0)
		di, _, _ := p.dsts.find(&dk) // present: the flow counts in it
		if ds := &p.dsts.slots[di].v; ds.n > 1 {
			ds.n--
		} else {
			p.dsts.del(di)
		}
	}
	if !s.busy() {
		p.ranges[ri].busy--
		p.busy--
	}
}

// Add adds a leased range to the pool at now (the range's idle time counts
// from now). It returns an error matching ErrInvalidRange for a range with
// First == 0 or Last < First, and ErrOverlap if it overlaps a range of the
// pool.
func (p *Pool) Add(r ananta.PortRange, now time.Time) error {
	if r.First == 0 || r.Last < r.First {
		return errorf(ErrInvalidRange, "range %s: want 1 <= first <= last", r)
	}
	i := p.locate(uint32(r.First))
	if i < len(p.ranges) && p.ranges[i].r.First <= r.Last {
		return errorf(ErrOverlap, "range %s overlaps pool range %s", r, p.ranges[i].r)
	}
	base := len(p.ports)
	if i < len(p.ranges) {
		base = p.ranges[i].base
	}
	p.ports = slices.Insert(p.ports, base, make([]portState, r.Len())...)
	p.ranges = slices.Insert(p.ranges, i, poolRange{r: r, base: base, last: now.UnixNano()})
	p.rebase()
	return nil
}

func (p *Pool) rebase() {
	base := 0
	for i := range p.ranges {
		p.ranges[i].base = base
		base += p.ranges[i].r.Len()
	}
}

func (p *Pool) indexOf(r ananta.PortRange) (int, error) {
	i, ok := p.find(r.First)
	if !ok || p.ranges[i].r != r {
		return 0, errorf(ErrNotAllocated, "range %s is not in the pool", r)
	}
	return i, nil
}

// Remove takes an unused range out of the pool (to return it to the
// Manager). If ports of r have flows or UDP mappings it returns them in
// ascending order with an error matching ErrInUse and changes nothing; use
// Drop to remove the range anyway. It returns an error matching
// ErrNotAllocated if r is not exactly a range of the pool.
func (p *Pool) Remove(r ananta.PortRange) ([]uint16, error) {
	i, err := p.indexOf(r)
	if err != nil {
		return nil, err
	}
	if p.ranges[i].busy > 0 {
		var inUse []uint16
		for port := int(r.First); port <= int(r.Last); port++ {
			if p.state(i, uint16(port)).busy() {
				inUse = append(inUse, uint16(port))
			}
		}
		return inUse, errorf(ErrInUse, "range %s has %d ports in use", r, len(inUse))
	}
	p.cut(i)
	return nil, nil
}

// Drop removes r from the pool even if it has flows (its lease was lost or
// force-released) and returns those flows, ordered by port, protocol and
// destination, so that the agent can end them. It returns an error
// matching ErrNotAllocated if r is not exactly a range of the pool.
func (p *Pool) Drop(r ananta.PortRange) ([]Flow, error) {
	i, err := p.indexOf(r)
	if err != nil {
		return nil, err
	}
	var keys []flowKey
	if p.ranges[i].busy > 0 {
		for _, s := range p.flows.slots {
			if s.h != 0 && r.Contains(s.k.vport()) {
				keys = append(keys, s.k)
			}
		}
	}
	slices.SortFunc(keys, func(a, b flowKey) int {
		switch {
		case a.vport() != b.vport():
			return int(a.vport()) - int(b.vport())
		case a.proto() != b.proto():
			return int(a.proto()) - int(b.proto())
		}
		return a.addrPort().Compare(b.addrPort())
	})
	out := make([]Flow, 0, len(keys))
	for _, fk := range keys {
		f := Flow{Proto: fk.proto(), Port: fk.vport(), Dst: fk.addrPort()}
		if fk.proto() == ananta.ProtocolUDP {
			f.Src = p.state(i, fk.vport()).udpSrc
		}
		out = append(out, f)
		fi, _, _ := p.flows.find(&fk)
		p.release(i, fi, fk)
	}
	p.cut(i)
	return out, nil
}

// cut removes range i, which has no flows.
func (p *Pool) cut(i int) {
	r := p.ranges[i]
	p.ports = slices.Delete(p.ports, r.base, r.base+r.r.Len())
	p.ranges = slices.Delete(p.ranges, i, i+1)
	p.rebase()
}

// Idle returns, in ascending order, the ranges that have had no flow and
// no UDP mapping for at least timeout at now: neither Acquire nor Release
// touched them since now - timeout, and none of their ports is in use. The
// agent may give them back to the Manager (Remove, then release the
// lease), keeping as many as it wants in reserve.
func (p *Pool) Idle(now time.Time, timeout time.Duration) []ananta.PortRange {
	t := now.UnixNano()
	var out []ananta.PortRange
	for _, r := range p.ranges {
		if r.busy == 0 && t-r.last >= int64(timeout) {
			out = append(out, r.r)
		}
	}
	return out
}
