package hostagent

import (
	"encoding/binary"
	"net/netip"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
)

func (e *Engine) inResult(r Result) Result {
	e.c.in[r.Verdict].Add(1)
	if r.Verdict == Drop {
		e.c.drops[r.Reason].Add(1)
	}
	return r
}

func drop(r DropReason) Result { return Result{Outcome: Outcome{Verdict: Drop, Reason: r}} }

// tunnelProto classifies a packet on the uplink: whether it is (or may be)
// an IP-in-IP packet, and whether it is an IPv4 fragment.
func tunnelProto(pkt []byte) (tunnel, fragment bool) {
	if len(pkt) == 0 {
		return false, false
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return false, false
		}
		if pkt[9] != 4 && pkt[9] != 41 {
			return false, false
		}
		return true, binary.BigEndian.Uint16(pkt[6:])&0x3fff != 0
	case 6:
		if len(pkt) < 40 {
			return false, false
		}
		switch pkt[6] {
		case 4, 41, 0, 43, 60, 51: // tunnel, or extension headers before it
			return true, false
		case 44:
			return true, true
		}
	}
	return false, false
}

func outerDst(pkt []byte) netip.Addr {
	if pkt[0]>>4 == 4 {
		return netip.AddrFrom4([4]byte(pkt[16:20]))
	}
	return netip.AddrFrom16([16]byte(pkt[24:40]))
}

func (e *Engine) fromMux(src netip.Addr) bool {
	if src.Is4() {
		b := src.As4()
		a := binary.BigEndian.Uint32(b[:])
		for _, p := range e.mux4 {
			if a&p.mask == p.net {
				return true
			}
		}
		return false
	}
	for _, p := range e.cfg.MuxPrefixes {
		if p.Contains(src) {
			return true
		}
	}
	return false
}

func (e *Engine) isHost(a netip.Addr) bool {
	for _, h := range e.cfg.HostAddrs {
		if h == a {
			return true
		}
	}
	return false
}

// ack returns the ACK number of a TCP packet p (0 if it has none).
func ack(b []byte, p *encap.Packet) uint32 {
	if p.Tuple.Proto != ananta.ProtocolTCP || p.TCPFlags&tcpACK == 0 || p.L4Offset+12 > len(b) {
		return 0
	}
	return binary.BigEndian.Uint32(b[p.L4Offset+8:])
}

// ProcessInbound implements DataPath. Packets that are not IP-in-IP get
// Pass; tunnel packets are checked (outer source in MuxPrefixes, outer
// destination a host address), decapsulated and translated:
//   - a packet of a tracked flow gets its destination rewritten (VIP:port
//     to DIP:port for inbound flows, unless floating IP; VIP:leased port to
//     DIP:source port for SNAT return traffic) and goes ToVM;
//   - an ICMP error quoting a packet of a tracked flow is translated, the
//     quoted packet too;
//   - otherwise a packet to a VIP endpoint starts a new inbound flow if the
//     endpoint's ACL allows it and a local backend is usable.
//
// It never panics on any input. Packets of tracked flows do not allocate;
// a new flow may grow its shard's slab and index.
func (e *Engine) ProcessInbound(b []byte, start, end int) Result {
	if start < 0 || start > end || end > len(b) {
		return e.inResult(drop(DropMalformed))
	}
	pkt := b[start:end]
	tunnel, frag := tunnelProto(pkt)
	if !tunnel {
		return e.inResult(Result{Outcome: Outcome{Verdict: Pass}})
	}
	if frag {
		return e.inResult(drop(DropFragment))
	}
	inner, src, err := encap.Decap(pkt)
	if err != nil {
		return e.inResult(drop(DropMalformed))
	}
	if !e.fromMux(src) {
		return e.inResult(drop(DropNotMux))
	}
	odst := outerDst(pkt)
	if !e.isHost(odst) {
		return e.inResult(drop(DropNotHost))
	}
	istart := start + cap(pkt) - cap(inner)
	iend := istart + len(inner)
	in := b[istart:iend]
	var p encap.Packet
	if err := encap.Parse(in, &p); err != nil {
		return e.inResult(drop(DropMalformed))
	}
	if p.Fragment != encap.NotFragment {
		return e.inResult(drop(DropFragment))
	}
	iend = istart + p.TotalLen // drop link padding, if any
	in = b[istart:iend]
	if p.ICMPError {
		return e.inResult(e.inboundICMPError(in, &p, istart, iend))
	}
	now := e.now.Load()
	var k flowKey
	packetKey(&k, in, &p, false)
	s, h := e.flows.locate(&k)
	s.mu.Lock()
	f, _, ok := s.lookup(&k, h)
	if !ok {
		var r DropReason
		if f, r = e.newInbound(s, &k, &p, odst, now); f == nil {
			s.mu.Unlock()
			return e.inResult(drop(r))
		}
	}
	f.touch(now, false, p.TCPFlags, ack(in, &p))
	vm, kind := int(f.vm), f.kind
	addr, port := addrOf(f.inAddr, k.v6()), f.inPort
	s.mu.Unlock()
	if kind != kindFloating || port != p.Tuple.DstPort {
		if err := encap.Rewrite(in, &p, encap.Dst, addr, port); err != nil {
			return e.inResult(drop(DropNAT))
		}
	}
	e.c.in[ToVM].Add(1)
	return Result{Outcome: Outcome{Verdict: ToVM, VM: vm}, Start: istart, End: iend}
}

// newInbound creates the flow of a new inbound packet. s.mu is held.
func (e *Engine) newInbound(s *shard, k *flowKey, p *encap.Packet, odst netip.Addr, now int64) (*flow, DropReason) {
	snap := e.snap.Load()
	t := &p.Tuple
	vs := snap.vips[t.Dst]
	if vs == nil {
		return nil, DropNoVIP
	}
	if t.Proto == ananta.ProtocolTCP && p.TCPFlags&tcpRST != 0 {
		return nil, DropNoFlow
	}
	// Return traffic to a SNAT port without a flow (expired, or filtered
	// by the port-restricted cone) must not start an inbound flow.
	for _, sp := range vs.pools {
		sp.mu.Lock()
		has := sp.pool.Has(t.DstPort)
		sp.mu.Unlock()
		if has {
			return nil, DropNoFlow
		}
	}
	ep := vs.endpoint(t.Proto, t.DstPort)
	if ep == nil {
		return nil, DropNoEndpoint
	}
	if !ep.allows(t.Src, t.SrcPort) {
		return nil, DropACL
	}
	be := ep.pick(t, odst)
	if be == nil {
		return nil, DropNoBackend
	}
	nf := flow{
		out:     *k,
		extAddr: k.dst, extPort: t.DstPort,
		last: now, timeout: ep.idle,
		vm:   uint16(be.vm),
		kind: kindDNAT,
	}
	nf.inPort = t.DstPort
	if be.port != 0 {
		nf.inPort = be.port
	}
	if ep.floating {
		nf.kind = kindFloating
		nf.inAddr = k.dst
	} else {
		nf.inAddr = pack(be.dip)
	}
	if ep.rstIdle {
		nf.state |= stResetOnIdle
	}
	nf.in = flowKey{src: nf.inAddr, dst: k.src, meta: keyMeta(nf.inPort, k.sport(), k.proto(), k.flags()|keyFromVM)}
	f, r := e.flows.insert(s, &nf)
	if f == nil {
		return nil, r
	}
	e.c.flowsCreated.Add(1)
	return f, DropNone
}

// inboundICMPError translates an ICMP error from the outside about a
// packet the host sent: the quoted packet is VIP:port -> remote.
func (e *Engine) inboundICMPError(b []byte, p *encap.Packet, start, end int) Result {
	q := p.Inner.Reverse()
	k := makeKey(&q, false)
	s, h := e.flows.locate(&k)
	s.mu.Lock()
	f, _, ok := s.lookup(&k, h)
	if !ok {
		s.mu.Unlock()
		return drop(DropNoFlow)
	}
	vm := int(f.vm)
	addr, port := addrOf(f.inAddr, k.v6()), f.inPort
	s.mu.Unlock()
	if err := encap.Rewrite(b, p, encap.Dst, addr, 0); err != nil {
		return drop(DropNAT)
	}
	if err := encap.RewriteQuoted(b, p, encap.Src, addr, port); err != nil {
		return drop(DropNAT)
	}
	e.c.icmp.Add(1)
	return Result{Outcome: Outcome{Verdict: ToVM, VM: vm}, Start: start, End: end}
}

// ProcessOutbound implements DataPath. A packet from VM vm
//   - of a tracked flow gets its source rewritten (DIP:port to VIP:port for
//     replies of inbound flows, unless floating IP; DIP:port to VIP:leased
//     port for SNAT flows) and goes ToUplink, straight to the router;
//   - that is an ICMP error about a packet of a tracked flow is translated,
//     the quoted packet too;
//   - that opens a connection (TCP SYN, any UDP packet) from a DIP whose
//     VIP has SNAT takes a port from the pool of (VIP, DIP); when the pool
//     has none, a copy is Held and ports are requested.
//
// Packets with a source that is not one of the VM's DIPs are dropped. It
// never panics on any input. Packets of tracked flows do not allocate; a
// new flow may grow its shard's slab and index, and a held packet is copied.
func (e *Engine) ProcessOutbound(vm int, b []byte, start, end int) Result {
	r := e.outbound(vm, b, start, end, 0)
	e.c.out[r.Verdict].Add(1)
	if r.Verdict == Drop {
		e.c.drops[r.Reason].Add(1)
	}
	return r
}

// outbound processes a packet from a VM; heldAt is non-zero when b is a
// held copy owned by the engine (held since heldAt).
func (e *Engine) outbound(vm int, b []byte, start, end int, heldAt int64) Result {
	if start < 0 || start > end || end > len(b) {
		return drop(DropMalformed)
	}
	if vm < 0 || vm >= MaxVMs {
		return drop(DropUnknownVM)
	}
	pkt := b[start:end]
	var p encap.Packet
	if err := encap.Parse(pkt, &p); err != nil {
		return drop(DropMalformed)
	}
	if p.Fragment != encap.NotFragment {
		return drop(DropFragment)
	}
	end = start + p.TotalLen
	pkt = b[start:end]
	if p.ICMPError {
		return e.outboundICMPError(vm, pkt, &p, start, end)
	}
	now := e.now.Load()
	var k flowKey
	packetKey(&k, pkt, &p, true)
	s, h := e.flows.locate(&k)
	s.mu.Lock()
	f, _, ok := s.lookup(&k, h)
	if !ok {
		var r Result
		if f, r = e.newOutbound(s, &k, vm, pkt, &p, now, heldAt); f == nil {
			s.mu.Unlock()
			return r
		}
	} else if int(f.vm) != vm {
		s.mu.Unlock()
		return drop(DropSpoofed)
	}
	f.touch(now, true, p.TCPFlags, ack(pkt, &p))
	kind := f.kind
	addr, port := addrOf(f.extAddr, k.v6()), f.extPort
	s.mu.Unlock()
	if kind != kindFloating || port != p.Tuple.SrcPort {
		if err := encap.Rewrite(pkt, &p, encap.Src, addr, port); err != nil {
			return drop(DropNAT)
		}
	}
	return Result{Outcome: Outcome{Verdict: ToUplink}, Start: start, End: end}
}

// newOutbound creates a SNAT flow for a new connection from a VM, or holds
// the packet. s.mu is held. It returns a nil flow and the result otherwise.
func (e *Engine) newOutbound(s *shard, k *flowKey, vm int, pkt []byte, p *encap.Packet, now, heldAt int64) (*flow, Result) {
	snap := e.snap.Load()
	t := &p.Tuple
	ld := snap.local[t.Src]
	if ld == nil || ld.vm != vm {
		return nil, drop(DropSpoofed)
	}
	if ld.snat == nil {
		return nil, drop(DropNoSNAT)
	}
	switch t.Proto {
	case ananta.ProtocolTCP:
		if p.TCPFlags&(tcpSYN|tcpACK|tcpRST) != tcpSYN {
			return nil, drop(DropNoFlow)
		}
	case ananta.ProtocolUDP:
		if t.SrcPort == 0 {
			return nil, drop(DropUnsupported)
		}
	default:
		return nil, drop(DropUnsupported)
	}
	vs := snap.vips[ld.snat.vip]
	if vs == nil {
		return nil, drop(DropNoSNAT) // unreachable: pools belong to configured VIPs
	}
	pool := ld.snat
	dst := netip.AddrPortFrom(t.Dst, t.DstPort)
	port, ok := pool.acquire(t.Proto, t.SrcPort, dst, now)
	if !ok {
		owned := heldAt != 0
		if !owned {
			heldAt = now
		}
		if !e.hold(pool, vm, pkt, heldAt, owned) {
			return nil, drop(DropHoldFull)
		}
		return nil, Result{Outcome: Outcome{Verdict: Held}}
	}
	ext := pack(pool.vip)
	nf := flow{
		in:      *k,
		extAddr: ext, extPort: port,
		inAddr: k.src, inPort: t.SrcPort,
		last: now, timeout: vs.idle,
		pool: pool.id,
		vm:   uint16(vm),
		kind: kindSNAT,
	}
	nf.out = flowKey{src: k.dst, dst: ext, meta: keyMeta(k.dport(), port, k.proto(), k.flags()&^keyFromVM)}
	f, r := e.flows.insert(s, &nf)
	if f == nil {
		pool.release(t.Proto, port, dst, now)
		return nil, drop(r)
	}
	e.c.flowsCreated.Add(1)
	return f, Result{}
}

// outboundICMPError translates an ICMP error a VM sends about a packet it
// received: the quoted packet is remote -> DIP:port.
func (e *Engine) outboundICMPError(vm int, b []byte, p *encap.Packet, start, end int) Result {
	q := p.Inner.Reverse()
	k := makeKey(&q, true)
	s, h := e.flows.locate(&k)
	s.mu.Lock()
	f, _, ok := s.lookup(&k, h)
	if !ok {
		s.mu.Unlock()
		return drop(DropNoFlow)
	}
	if int(f.vm) != vm || p.Tuple.Src != addrOf(f.inAddr, k.v6()) {
		s.mu.Unlock()
		return drop(DropSpoofed)
	}
	addr, port := addrOf(f.extAddr, k.v6()), f.extPort
	s.mu.Unlock()
	if err := encap.Rewrite(b, p, encap.Src, addr, 0); err != nil {
		return drop(DropNAT)
	}
	if err := encap.RewriteQuoted(b, p, encap.Dst, addr, port); err != nil {
		return drop(DropNAT)
	}
	e.c.icmp.Add(1)
	return Result{Outcome: Outcome{Verdict: ToUplink}, Start: start, End: end}
}
