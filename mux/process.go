package mux

import (
	"encoding/binary"
	"net/netip"
	"sync"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/packetio"
)

// Process forwards one packet. The IP packet (no link-layer header) is
// buf[start:end]; bytes past its IP total length are ignored, and
// buf[:start] is headroom, at least Headroom bytes. Process writes its
// output in place and returns the verdict with the output's bounds:
//
//   - ActionForward: buf[newStart:newEnd] is the packet encapsulated
//     IP-in-IP (outer IPv4 protocol 4 or 41, or IPv6 next header 4 or 41)
//     to the host of the backend chosen for the flow; the inner packet's
//     bytes are unchanged.
//   - ActionReply: buf[newStart:newEnd] is an ICMP "fragmentation needed"
//     (IPv4) or "packet too big" (IPv6) from the VIP to the packet's
//     source, because the packet would exceed Config.MTU once
//     encapsulated. It is written at start if buf has room, else so that it
//     ends at end.
//   - ActionDrop: the reason is in the verdict and counted; buf may have
//     been changed.
//
// Process may be called concurrently from any number of goroutines,
// during configuration changes too, and does not allocate. The package
// documentation describes the decisions it makes.
func (m *Mux) Process(buf []byte, start, end int) (v Verdict, newStart, newEnd int) {
	return m.process(buf, start, end, m.now())
}

// pktInfo is what forwarding needs to know about a packet.
type pktInfo struct {
	totalLen     int
	sport, dport uint16 // 0 for fragments and protocols without ports
	proto        ananta.Protocol
	version      uint8
	frag         bool
	tcpFlags     uint8 // fast path only
}

// fastParse handles the common packets (IPv4 without options and IPv6
// without extension headers, unfragmented, TCP or UDP) that encap.Parse
// would accept, and fills pi exactly as parsing with encap.Parse would. It
// returns false for everything else, which takes the slow path through
// encap.Parse: the two agree on every packet fastParse accepts.
func fastParse(b []byte, pi *pktInfo) bool {
	if len(b) < 40 {
		return false
	}
	var off, total int
	var proto uint8
	switch b[0] {
	case 0x45:
		total = int(binary.BigEndian.Uint16(b[2:]))
		if binary.BigEndian.Uint16(b[6:])&0x3fff != 0 { // MF or an offset
			return false
		}
		proto, off, pi.version = b[9], 20, 4
	default:
		if b[0]>>4 != 6 {
			return false
		}
		total = 40 + int(binary.BigEndian.Uint16(b[4:]))
		proto, off, pi.version = b[6], 40, 6
		if v4Mapped(b[8:]) || v4Mapped(b[24:]) {
			return false // the slow path drops it
		}
	}
	if total > len(b) {
		return false
	}
	switch proto {
	case protoTCP:
		if off+20 > total {
			return false
		}
		doff := int(b[off+12]>>4) * 4
		if doff < 20 || off+doff > total {
			return false
		}
		pi.tcpFlags = b[off+13]
	case protoUDP:
		if off+8 > total {
			return false
		}
		if ulen := int(binary.BigEndian.Uint16(b[off+4:])); ulen < 8 || off+ulen > total {
			return false
		}
		pi.tcpFlags = 0
	default:
		return false
	}
	pi.totalLen = total
	pi.sport = binary.BigEndian.Uint16(b[off:])
	pi.dport = binary.BigEndian.Uint16(b[off+2:])
	pi.proto = ananta.Protocol(proto)
	pi.frag = false
	return true
}

const (
	protoTCP = uint8(ananta.ProtocolTCP)
	protoUDP = uint8(ananta.ProtocolUDP)
)

// v4Mapped reports whether the 16-byte address at the start of a is an
// IPv4-mapped IPv6 address (::ffff:a.b.c.d). Such addresses never appear
// on the wire (RFC 4291 section 2.5.5.2; Linux drops them), and the flow
// key writes IPv4 addresses that way, so IPv6 packets carrying them are
// dropped as malformed: an IPv6 key never equals an IPv4 one.
func v4Mapped(a []byte) bool {
	return binary.LittleEndian.Uint64(a) == 0 && binary.LittleEndian.Uint32(a[8:]) == 0xffff0000
}

func (m *Mux) process(buf []byte, start, end int, now uint32) (Verdict, int, int) {
	if start < 0 || end > len(buf) || start >= end {
		return m.drop(DropMalformed, 0), start, end
	}
	var pi pktInfo
	if !fastParse(buf[start:end], &pi) {
		return m.processSlow(buf, start, end, now)
	}
	if start < Headroom {
		return m.drop(DropNoHeadroom, 0), start, end
	}
	var k flowKey
	keyFromPacket(&k, buf[start:], pi.version, pi.sport, pi.dport, pi.proto)
	return m.balance(buf, start, start+pi.totalLen, &pi, &k, k.hash(m.seed), now)
}

// batchChunk is how many packets ProcessBatch parses and prefetches ahead.
const batchChunk = 16

// ProcessBatch processes a batch of packets as Process does, each
// msgs[i].Buf[Off:Off+N] with Buf[:Off] as headroom: it writes the output
// in place, sets msgs[i].Off and N to its bounds unless the packet is
// dropped, and stores the verdict in verdicts[i] (len(verdicts) >=
// len(msgs)). The results are those of calling Process on each packet in
// order; ProcessBatch is faster with large flow tables (4 MiB and more,
// which do not stay in the CPU caches) because it hashes a group of
// packets first and prefetches their flow-table entries, so that their
// cache misses overlap. Run's workers use it.
func (m *Mux) ProcessBatch(msgs []packetio.Message, verdicts []Verdict) {
	m.processBatch(msgs, verdicts[:len(msgs)], m.now())
}

func (m *Mux) processBatch(msgs []packetio.Message, verdicts []Verdict, now uint32) {
	if !m.ft.prefetch {
		for i := range msgs {
			mm := &msgs[i]
			v, ns, ne := m.process(mm.Buf, mm.Off, mm.Off+mm.N, now)
			verdicts[i] = v
			if v.Action != ActionDrop {
				mm.Off, mm.N = ns, ne-ns
			}
		}
		return
	}
	type pending struct {
		pi pktInfo
		k  flowKey
		h  uint64
		ok bool
	}
	var ps [batchChunk]pending
	for base := 0; base < len(msgs); base += batchChunk {
		chunk := msgs[base:min(len(msgs), base+batchChunk)]
		for i := range chunk {
			mm, p := &chunk[i], &ps[i]
			p.ok = false
			start, end := mm.Off, mm.Off+mm.N
			if start < Headroom || end > len(mm.Buf) || start >= end || !fastParse(mm.Buf[start:end], &p.pi) {
				continue
			}
			keyFromPacket(&p.k, mm.Buf[start:], p.pi.version, p.pi.sport, p.pi.dport, p.pi.proto)
			p.h = p.k.hash(m.seed)
			p.ok = true
		}
		for i := range chunk {
			if p := &ps[i]; p.ok {
				// A TCP packet other than a SYN that misses the table is
				// rarely a new flow (SNAT return traffic is the common
				// case): do not prefetch where it would be inserted.
				ins := p.pi.proto != ananta.ProtocolTCP || p.pi.tcpFlags&(encap.TCPFlagSYN|encap.TCPFlagACK) == encap.TCPFlagSYN
				m.ft.shard(p.h).prefetch(p.h, ins)
			}
		}
		for i := range chunk {
			mm, p := &chunk[i], &ps[i]
			var v Verdict
			var ns, ne int
			if p.ok {
				v, ns, ne = m.balance(mm.Buf, mm.Off, mm.Off+p.pi.totalLen, &p.pi, &p.k, p.h, now)
			} else {
				v, ns, ne = m.process(mm.Buf, mm.Off, mm.Off+mm.N, now)
			}
			verdicts[base+i] = v
			if v.Action != ActionDrop {
				mm.Off, mm.N = ns, ne-ns
			}
		}
	}
}

// processSlow parses with encap.Parse: IP options and extension headers,
// fragments, protocols other than TCP and UDP, ICMP errors, and every
// malformed packet.
func (m *Mux) processSlow(buf []byte, start, end int, now uint32) (Verdict, int, int) {
	var p encap.Packet
	if encap.Parse(buf[start:end], &p) != nil || (p.Version == 6 && (v4Mapped(buf[start+8:]) || v4Mapped(buf[start+24:]))) {
		return m.drop(DropMalformed, 0), start, end
	}
	if start < Headroom {
		return m.drop(DropNoHeadroom, 0), start, end
	}
	end = start + p.TotalLen
	if p.ICMPError {
		return m.icmpError(buf, start, end, &p, m.snap.Load(), now)
	}
	pi := pktInfo{
		totalLen: p.TotalLen,
		proto:    p.Tuple.Proto,
		version:  p.Version,
		frag:     p.Fragment != encap.NotFragment,
	}
	if !pi.frag {
		pi.sport, pi.dport = p.Tuple.SrcPort, p.Tuple.DstPort
	}
	var k flowKey
	keyFromPacket(&k, buf[start:], pi.version, pi.sport, pi.dport, pi.proto)
	return m.balance(buf, start, end, &pi, &k, k.hash(m.seed), now)
}

// balance forwards a packet that is not an ICMP error, whose flow key is
// k and flow hash h: flow table, SNAT map, endpoint and Maglev.
func (m *Mux) balance(buf []byte, start, end int, pi *pktInfo, k *flowKey, h uint64, now uint32) (Verdict, int, int) {
	snap := m.snap.Load()
	sh := m.ft.shard(h)
	sh.mu.Lock()
	if idx := sh.find(k, h, now); idx >= 0 {
		slot, gen := sh.pinned(idx)
		be := snap.backend(slot)
		if be != nil && be.gen == gen && (be.state != ananta.BackendDown || m.downKeep) {
			sh.touch(idx, now, be.idle, be.idleU)
			sh.mu.Unlock()
			return m.forward(buf, start, end, &be.target, h)
		}
		// The backend went down or was removed: re-balance the flow.
		ve := snap.vips.get(k.w[2], k.w[3])
		if ve == nil {
			sh.remove(idx)
			sh.mu.Unlock()
			return m.drop(DropNoVIP, h), start, end
		}
		ep, reason := ve.endpointFor(pi.proto, pi.dport, pi.frag)
		if ep == nil {
			sh.remove(idx)
			sh.mu.Unlock()
			return m.drop(reason, h), start, end
		}
		nb := ep.pick(h)
		if nb == nil {
			sh.remove(idx)
			sh.mu.Unlock()
			return m.drop(DropNoBackend, h), start, end
		}
		sh.repin(idx, nb.slot, nb.gen)
		sh.touch(idx, now, nb.idle, nb.idleU)
		sh.mu.Unlock()
		nb.ctr.newFlows.Add(1)
		return m.forward(buf, start, end, &nb.target, h)
	}
	ve := snap.vips.get(k.w[2], k.w[3])
	if ve == nil {
		sh.mu.Unlock()
		return m.drop(DropNoVIP, h), start, end
	}
	if len(ve.snat) > 0 && !pi.frag && (pi.proto == ananta.ProtocolTCP || pi.proto == ananta.ProtocolUDP) {
		if se := ve.snatFor(pi.dport); se != nil {
			sh.mu.Unlock()
			return m.forward(buf, start, end, &se.target, h)
		}
	}
	ep, reason := ve.endpointFor(pi.proto, pi.dport, pi.frag)
	if ep == nil {
		sh.mu.Unlock()
		return m.drop(reason, h), start, end
	}
	be := ep.pick(h)
	if be == nil {
		sh.mu.Unlock()
		return m.drop(DropNoBackend, h), start, end
	}
	inserted := sh.insert(k, h, be.slot, be.gen, now+be.idleU) >= 0
	sh.mu.Unlock()
	ve.ctr.newFlow(h)
	if inserted {
		be.ctr.newFlows.Add(1)
	}
	return m.forward(buf, start, end, &be.target, h)
}

// icmpError forwards an ICMP error to the backend of the flow it is about.
// The quoted packet was sent by a backend from the VIP (direct server
// return), so the flow is the quote's reverse: the flow table's entry of
// the reversed tuple, else the SNAT range of the quote's source port, else
// the backend Maglev picks for the reversed tuple. Nothing is tracked.
func (m *Mux) icmpError(buf []byte, start, end int, p *encap.Packet, snap *snapshot, now uint32) (Verdict, int, int) {
	in := &p.Inner
	var k flowKey
	keyFrom(&k, in.Dst, in.Src, in.DstPort, in.SrcPort, in.Proto)
	h := k.hash(m.seed)
	ve := snap.vips.get(k.w[2], k.w[3])
	if ve == nil || in.Src != p.Tuple.Dst {
		if snap.vips.get(addrWords(p.Tuple.Dst)) == nil {
			return m.drop(DropNoVIP, h), start, end
		}
		return m.drop(DropICMPNoFlow, h), start, end
	}
	sh := m.ft.shard(h)
	sh.mu.Lock()
	if idx := sh.find(&k, h, now); idx >= 0 {
		slot, gen := sh.pinned(idx)
		be := snap.backend(slot)
		if be != nil && be.gen == gen && (be.state != ananta.BackendDown || m.downKeep) {
			sh.mu.Unlock()
			return m.forward(buf, start, end, &be.target, h)
		}
	}
	sh.mu.Unlock()
	if in.Proto == ananta.ProtocolTCP || in.Proto == ananta.ProtocolUDP {
		if se := ve.snatFor(in.SrcPort); se != nil {
			return m.forward(buf, start, end, &se.target, h)
		}
	}
	ep, _ := ve.endpointFor(in.Proto, in.SrcPort, false)
	if ep == nil {
		return m.drop(DropICMPNoFlow, h), start, end
	}
	be := ep.pick(h)
	if be == nil {
		return m.drop(DropNoBackend, h), start, end
	}
	return m.forward(buf, start, end, &be.target, h)
}

// forward encapsulates the packet buf[start:end] to t.host, or answers
// with an ICMP error if the result would exceed the MTU.
func (m *Mux) forward(buf []byte, start, end int, t *target, h uint64) (Verdict, int, int) {
	src, ovh := &m.src6, encap.OverheadIPv6
	var label uint32
	if t.host4 {
		src, ovh = &m.src4, encap.OverheadIPv4
	} else {
		label = flowLabel(h)
	}
	n := end - start
	if n+ovh > m.mtu {
		return m.tooBig(buf, start, end, ovh, h)
	}
	ns, err := encap.Encap(buf, start, end, src.addr(h), t.host, encap.EncapOptions{TTL: m.ttl, FlowLabel: label})
	if err != nil {
		return m.drop(DropMalformed, h), start, end
	}
	t.vip.add(h, n)
	return verdictForward, ns, end
}

// flowLabel is the outer IPv6 flow label: bits 32-51 of the flow hash, 1
// if they are 0 (0 would mean "no label").
func flowLabel(h uint64) uint32 {
	if l := uint32(h>>32) & 0xfffff; l != 0 {
		return l
	}
	return 1
}

// tooBig answers a packet that does not fit the MTU once encapsulated.
// It is kept out of line so that its scratch buffer does not weigh on
// the common path.
//
//go:noinline
func (m *Mux) tooBig(buf []byte, start, end int, ovh int, h uint64) (Verdict, int, int) {
	var p encap.Packet
	if encap.Parse(buf[start:end], &p) != nil || !encap.NeedsTooBig(&p, ovh, m.mtu) {
		return m.drop(DropTooBig, h), start, end
	}
	if !m.limiter.allow(m.now()) {
		return m.drop(DropTooBigRateLimited, h), start, end
	}
	var scratch [encap.MaxTooBigIPv6]byte
	n, err := encap.TooBig(scratch[:], buf[start:end], p.Tuple.Dst, m.mtu-ovh)
	if err != nil {
		return m.drop(DropTooBig, h), start, end
	}
	ns := start
	if ns+n > len(buf) {
		ns = end - n
	}
	if ns < 0 {
		return m.drop(DropTooBig, h), start, end
	}
	copy(buf[ns:], scratch[:n])
	m.replies.Add(1)
	return verdictReply, ns, ns + n
}

// drop counts a drop and returns its verdict.
func (m *Mux) drop(r DropReason, h uint64) Verdict {
	m.drops[h>>61].n[r].Add(1)
	return Verdict{Action: ActionDrop, Reason: r}
}

// source picks outer source addresses of one family: a fixed address, or
// an address inside a prefix chosen by the flow hash.
type source struct {
	ok    bool
	v4    bool
	base  [16]byte
	mask  uint64 // host bits taken from the hash; 0: fixed address
	fixed netip.Addr
}

func newSource(addr netip.Addr, prefix netip.Prefix) source {
	var s source
	switch {
	case prefix.IsValid():
		s.ok, s.v4 = true, prefix.Addr().Is4()
		s.fixed = prefix.Addr()
		host := prefix.Addr().BitLen() - prefix.Bits()
		if host > 0 {
			s.mask = 1<<host - 1
		}
		s.base = prefix.Addr().As16()
	case addr.IsValid():
		s.ok, s.v4, s.fixed = true, addr.Is4(), addr
	}
	return s
}

// addr returns the outer source for flow hash h: with a prefix, the
// prefix's address with its host bits set from the low bits of h (an
// all-zeros or all-ones host part is flipped in its lowest bit, so the
// subnet's network and broadcast addresses are never used when the prefix
// has at least two host bits).
func (s *source) addr(h uint64) netip.Addr {
	if s.mask == 0 {
		return s.fixed
	}
	host := h & s.mask
	if s.mask > 1 && (host == 0 || host == s.mask) {
		host ^= 1
	}
	if s.v4 {
		var a [4]byte
		binary.BigEndian.PutUint32(a[:], binary.BigEndian.Uint32(s.base[12:])|uint32(host))
		return netip.AddrFrom4(a)
	}
	a := s.base
	binary.BigEndian.PutUint64(a[8:], binary.BigEndian.Uint64(a[8:])|host)
	return netip.AddrFrom16(a)
}

// limiter is the token bucket of the ICMP answers.
type limiter struct {
	mu     sync.Mutex // guards the fields below
	tokens float64
	last   uint32  // ms
	rate   float64 // tokens per ms
	burst  float64
}

func (l *limiter) init(perSecond float64, burst int) {
	l.rate, l.burst, l.tokens = perSecond/1000, float64(burst), float64(burst)
}

func (l *limiter) allow(now uint32) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if d := int32(now - l.last); d > 0 {
		l.tokens = min(l.burst, l.tokens+float64(d)*l.rate)
		l.last = now
	}
	if l.tokens >= 1 {
		l.tokens--
		return true
	}
	return false
}
