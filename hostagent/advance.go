package hostagent

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
)

// expiredSNAT is a SNAT flow that ended, for its pool to release the port.
type expiredSNAT struct {
	pool  uint32
	proto ananta.Protocol
	port  uint16
	dst   netip.AddrPort
}

// resetInfo is what an idle RST pair needs.
type resetInfo struct {
	v6                  bool
	remote, ext, in     paddr
	rport, extP, inPort uint16
	ackOut, ackIn       uint32
	vm                  int
}

// Advance implements DataPath. It moves the clock (a time before the
// current one is ignored; times from time.Now count on the monotonic
// clock), then
//   - expires flows idle for their timeout (shorter once a TCP connection
//     closed: EngineConfig.CloseTimeout), sending RSTs to both ends of
//     established TCP flows of endpoints with TCPResetOnIdle (ToUplink to
//     the remote end, ToVM to the backend) and returning SNAT ports to
//     their pools;
//   - re-processes held packets of pools that have free ports again, and
//     drops those held longer than EngineConfig.HoldTimeout.
//
// Calls are serialised; the agent calls it about ten times a second.
func (e *Engine) Advance(now time.Time, emit func(v Verdict, vm int, pkt []byte)) {
	e.advMu.Lock()
	defer e.advMu.Unlock()
	// Measured from the engine's creation: with times from time.Now the
	// monotonic clock is used, so wall-clock steps neither freeze nor
	// expire the flows.
	t := e.base.UnixNano() + int64(now.Sub(e.base))
	for {
		old := e.now.Load()
		if t <= old {
			t = old
			break
		}
		if e.now.CompareAndSwap(old, t) {
			break
		}
	}
	var resets []resetInfo
	var ended []expiredSNAT
	expired := 0
	for i := range e.flows.shards {
		s := &e.flows.shards[i]
		s.mu.Lock()
		for slot := range s.slots {
			f := &s.slots[slot]
			if !f.live || !f.expired(t, e.closeTO) {
				continue
			}
			if f.state&stResetOnIdle != 0 && f.established() {
				resets = append(resets, resetInfo{
					v6: f.v6(), remote: f.out.src, ext: f.extAddr, in: f.inAddr,
					rport: f.out.sport(), extP: f.extPort, inPort: f.inPort,
					ackOut: f.ackOut, ackIn: f.ackIn, vm: int(f.vm),
				})
			}
			if f.kind == kindSNAT {
				ended = append(ended, expiredSNAT{
					pool: f.pool, proto: ananta.Protocol(f.out.proto()), port: f.extPort,
					dst: netip.AddrPortFrom(addrOf(f.out.src, f.v6()), f.out.sport()),
				})
			}
			e.flows.remove(s, uint32(slot))
			expired++
		}
		s.mu.Unlock()
	}
	e.c.flowsExpired.Add(uint64(expired))
	if len(ended) > 0 {
		e.mu.Lock()
		pools := make([]*snatPool, len(ended))
		for i, x := range ended {
			pools[i] = e.poolIDs[x.pool]
		}
		e.mu.Unlock()
		for i, x := range ended {
			if p := pools[i]; p != nil {
				p.release(x.proto, x.port, x.dst, t)
			}
		}
	}
	if cap(e.scratch) < 80 {
		e.scratch = make([]byte, 80)
	}
	e.c.resets.Add(2 * uint64(len(resets))) // counted before the packets leave
	for _, r := range resets {
		// To the remote end, as the VIP: seq is the last ACK it sent.
		pkt := buildRST(e.scratch[:0], r.v6, r.ext, r.remote, r.extP, r.rport, r.ackOut)
		emit(ToUplink, 0, pkt)
		// To the backend, as the remote end: seq is the VM's last ACK.
		pkt = buildRST(e.scratch[:0], r.v6, r.remote, r.in, r.rport, r.inPort, r.ackIn)
		emit(ToVM, r.vm, pkt)
	}
	if len(resets) > 0 {
		e.log.Debug("idle flows reset", "flows", len(resets))
	}
	e.releaseHeld(t, emit)
}

// releaseHeld re-processes held packets of pools that have free ports and
// drops the ones that waited too long.
func (e *Engine) releaseHeld(now int64, emit func(v Verdict, vm int, pkt []byte)) {
	if e.held.Load() == 0 {
		return
	}
	for _, p := range e.poolList() {
		p.mu.Lock()
		if len(p.held) == 0 {
			p.mu.Unlock()
			continue
		}
		var retry []heldPacket
		keep := p.held[:0]
		timedOut := 0
		for _, h := range p.held {
			switch {
			case now-h.at >= e.holdTO:
				timedOut++
			case p.pool.Free() > 0:
				retry = append(retry, h)
			default:
				keep = append(keep, h)
			}
		}
		clear(p.held[len(keep):])
		p.held = keep
		p.mu.Unlock()
		e.held.Add(int64(-timedOut - len(retry)))
		e.c.drops[DropHoldTimeout].Add(uint64(timedOut))
		e.c.out[Drop].Add(uint64(timedOut))
		for _, h := range retry {
			r := e.outbound(h.vm, h.pkt, 0, len(h.pkt), h.at)
			switch r.Verdict {
			case Held:
				// Back in the queue (counted there again).
			case Drop:
				e.c.drops[r.Reason].Add(1)
				e.c.out[Drop].Add(1)
			default:
				e.c.released.Add(1)
				emit(r.Verdict, r.VM, h.pkt[r.Start:r.End])
			}
		}
	}
}

// buildRST appends a TCP RST segment (no ACK) from src:sport to dst:dport
// with sequence number seq, in an IPv4 or IPv6 packet, to b.
func buildRST(b []byte, v6 bool, src, dst paddr, sport, dport uint16, seq uint32) []byte {
	var tcp [20]byte
	binary.BigEndian.PutUint16(tcp[0:], sport)
	binary.BigEndian.PutUint16(tcp[2:], dport)
	binary.BigEndian.PutUint32(tcp[4:], seq)
	tcp[12] = 5 << 4
	tcp[13] = tcpRST
	s, d := addrOf(src, v6), addrOf(dst, v6)
	sum := encap.Sum(tcp[:], encap.PseudoHeaderSum(s, d, ananta.ProtocolTCP, len(tcp)))
	binary.BigEndian.PutUint16(tcp[16:], encap.Finish(sum))
	if v6 {
		var h [40]byte
		h[0] = 6 << 4
		binary.BigEndian.PutUint16(h[4:], uint16(len(tcp)))
		h[6], h[7] = uint8(ananta.ProtocolTCP), encap.DefaultTTL
		sa, da := s.As16(), d.As16()
		copy(h[8:24], sa[:])
		copy(h[24:40], da[:])
		b = append(b, h[:]...)
	} else {
		var h [20]byte
		h[0] = 0x45
		binary.BigEndian.PutUint16(h[2:], uint16(len(h)+len(tcp)))
		binary.BigEndian.PutUint16(h[6:], 0x4000) // DF
		h[8], h[9] = encap.DefaultTTL, uint8(ananta.ProtocolTCP)
		sa, da := s.As4(), d.As4()
		copy(h[12:16], sa[:])
		copy(h[16:20], da[:])
		binary.BigEndian.PutUint16(h[10:], encap.Checksum(h[:]))
		b = append(b, h[:]...)
	}
	return append(b, tcp[:]...)
}
