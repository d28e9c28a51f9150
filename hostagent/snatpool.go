package hostagent

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/snat"
)

type poolKey struct{ vip, dip netip.Addr }

// SNATRanges names port ranges of a VIP held for one DIP.
type SNATRanges struct {
	VIP, DIP netip.Addr
	Ranges   []ananta.PortRange
}

// SNATNeed says that the pool of (VIP, DIP) wants Ports more ports: it ran
// dry (packets are held) or is low while the DIP opens connections.
type SNATNeed struct {
	VIP, DIP netip.Addr
	Ports    int
	// Held is the number of packets waiting for ports.
	Held int
}

type heldPacket struct {
	vm  int
	at  int64 // Unix ns when first held
	pkt []byte
}

// snatPool is the SNAT state of one (VIP, DIP): the leased port ranges
// (snat.Pool), the demand predictor and the packets held while ports are
// requested.
type snatPool struct {
	id       uint32
	vip, dip netip.Addr

	// mu guards the fields below. Lock order: a flow-table shard, then mu.
	mu      sync.Mutex
	pool    *snat.Pool
	pred    *snat.Predictor
	held    []heldPacket
	retired bool
}

func newSNATPool(id uint32, vip, dip netip.Addr, lowWater int) *snatPool {
	pool, err := snat.NewPool(snat.PoolConfig{LowWater: lowWater})
	if err != nil {
		panic("hostagent: snat.NewPool with validated config: " + err.Error()) // unreachable: lowWater >= 0
	}
	pred, err := snat.NewPredictor(snat.PredictorConfig{Interval: time.Second, Horizon: 10})
	if err != nil {
		panic("hostagent: snat.NewPredictor: " + err.Error()) // unreachable: constant config
	}
	return &snatPool{id: id, vip: vip, dip: dip, pool: pool, pred: pred}
}

// acquire picks a VIP port for a new flow. p.mu must not be held.
func (p *snatPool) acquire(proto ananta.Protocol, src uint16, dst netip.AddrPort, now int64) (uint16, bool) {
	t := time.Unix(0, now)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.retired {
		return 0, false
	}
	free := p.pool.Free()
	var port uint16
	var ok bool
	if proto == ananta.ProtocolUDP {
		port, ok = p.pool.AcquireUDP(src, dst, t)
	} else {
		port, ok = p.pool.Acquire(proto, dst, t)
	}
	if ok && p.pool.Free() < free {
		p.pred.Record(t, 1)
	}
	return port, ok
}

// release ends a flow's use of a port.
func (p *snatPool) release(proto ananta.Protocol, port uint16, dst netip.AddrPort, now int64) {
	p.mu.Lock()
	p.pool.Release(proto, port, dst, time.Unix(0, now))
	p.mu.Unlock()
}

func (e *Engine) pool(vip, dip netip.Addr) (*snatPool, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p := e.pools[poolKey{vip, dip}]
	if p == nil {
		return nil, fmt.Errorf("%w: vip %s dip %s", ErrNoPool, vip, dip)
	}
	return p, nil
}

func checkRange(r ananta.PortRange) error {
	if r.First < ananta.FirstSNATPort || r.Last < r.First {
		return fmt.Errorf("%w: %s (want %d <= first <= last)", ErrRange, r, ananta.FirstSNATPort)
	}
	return nil
}

// AddSNATRanges implements DataPath. Ranges already in the pool are
// skipped; a range that overlaps one without being equal to it is an
// error (ErrRange), and nothing is added.
func (e *Engine) AddSNATRanges(vip, dip netip.Addr, ranges []ananta.PortRange) error {
	p, err := e.pool(vip, dip)
	if err != nil {
		return err
	}
	for _, r := range ranges {
		if err := checkRange(r); err != nil {
			return err
		}
	}
	now := time.Unix(0, e.now.Load())
	p.mu.Lock()
	have := p.pool.Ranges()
	var add []ananta.PortRange
	for _, r := range ranges {
		if slices.Contains(have, r) || slices.Contains(add, r) {
			continue
		}
		for _, h := range append(have, add...) {
			if r.First <= h.Last && h.First <= r.Last {
				p.mu.Unlock()
				return fmt.Errorf("%w: %s overlaps %s held by vip %s dip %s", ErrRange, r, h, vip, dip)
			}
		}
		add = append(add, r)
	}
	for _, r := range add {
		if err := p.pool.Add(r, now); err != nil {
			p.mu.Unlock()
			return fmt.Errorf("%w: %w", ErrRange, err) // unreachable: checked above
		}
	}
	size, held := p.pool.Size(), len(p.held)
	p.mu.Unlock()
	if len(add) > 0 {
		e.log.Info("snat ranges added", "vip", vip, "dip", dip, "ranges", add, "pool_ports", size, "held", held)
	}
	return nil
}

// RemoveSNATRanges implements DataPath: the ranges leave the pool even if
// flows use them, and those flows end. Ranges the pool does not hold are
// ignored.
func (e *Engine) RemoveSNATRanges(vip, dip netip.Addr, ranges []ananta.PortRange) error {
	p, err := e.pool(vip, dip)
	if err != nil {
		return err
	}
	var ended []snat.Flow
	p.mu.Lock()
	for _, r := range ranges {
		fl, err := p.pool.Drop(r)
		if errors.Is(err, snat.ErrNotAllocated) {
			continue
		}
		ended = append(ended, fl...)
	}
	p.mu.Unlock()
	e.endSNATFlows(vip, ended)
	e.log.Info("snat ranges removed", "vip", vip, "dip", dip, "ranges", ranges, "flows_ended", len(ended))
	return nil
}

// endSNATFlows removes the flow-table entries of SNAT flows a pool dropped.
func (e *Engine) endSNATFlows(vip netip.Addr, ended []snat.Flow) {
	n := 0
	for _, fl := range ended {
		t := ananta.FiveTuple{Src: fl.Dst.Addr(), Dst: vip, SrcPort: fl.Dst.Port(), DstPort: fl.Port, Proto: fl.Proto}
		k := makeKey(&t, false)
		s, h := e.flows.locate(&k)
		s.mu.Lock()
		if f, slot, ok := s.lookup(&k, h); ok && f.kind == kindSNAT {
			e.flows.remove(s, slot)
			n++
		}
		s.mu.Unlock()
	}
	e.c.flowsExpired.Add(uint64(n))
}

// SetSNATRanges makes ranges the exact set of the pool of (vip, dip): it
// adds the missing ones and removes (ending their flows) the others. It is
// what a Manager's configuration stream calls. Errors match ErrNoPool or
// ErrRange.
func (e *Engine) SetSNATRanges(vip, dip netip.Addr, ranges []ananta.PortRange) error {
	have, err := e.SNATRanges(vip, dip)
	if err != nil {
		return err
	}
	var drop []ananta.PortRange
	for _, h := range have {
		if !slices.Contains(ranges, h) {
			drop = append(drop, h)
		}
	}
	if len(drop) > 0 {
		if err := e.RemoveSNATRanges(vip, dip, drop); err != nil {
			return err
		}
	}
	return e.AddSNATRanges(vip, dip, ranges)
}

// SNATRanges returns the ranges in the pool of (vip, dip), ascending.
func (e *Engine) SNATRanges(vip, dip netip.Addr) ([]ananta.PortRange, error) {
	p, err := e.pool(vip, dip)
	if err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pool.Ranges(), nil
}

// SNATPools returns every SNAT pool's (VIP, DIP) and ranges, ordered by VIP
// then DIP.
func (e *Engine) SNATPools() []SNATRanges {
	var out []SNATRanges
	for _, p := range e.poolList() {
		p.mu.Lock()
		out = append(out, SNATRanges{VIP: p.vip, DIP: p.dip, Ranges: p.pool.Ranges()})
		p.mu.Unlock()
	}
	return out
}

// poolList returns the pools ordered by VIP then DIP.
func (e *Engine) poolList() []*snatPool {
	e.mu.Lock()
	out := make([]*snatPool, 0, len(e.pools))
	for _, p := range e.pools {
		out = append(out, p)
	}
	e.mu.Unlock()
	slices.SortFunc(out, func(a, b *snatPool) int {
		if c := a.vip.Compare(b.vip); c != 0 {
			return c
		}
		return a.dip.Compare(b.dip)
	})
	return out
}

// SNATWake returns a channel that receives a value when a pool runs dry or
// low (a packet was held, or a flow took one of its last free ports): the
// agent then calls SNATNeeds.
func (e *Engine) SNATWake() <-chan struct{} { return e.wake }

func (e *Engine) signal() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// SNATNeeds returns the pools that want more ports at now: those with held
// packets, and those below their low-water mark that have flows and have
// seen demand recently (a pool whose flows all ended asks for nothing, so
// that ranges given back when idle are not asked for again at once). Ports
// is the demand predictor's recommendation (a power of two of at least 8).
func (e *Engine) SNATNeeds(now time.Time) []SNATNeed {
	var out []SNATNeed
	for _, p := range e.poolList() {
		p.mu.Lock()
		held := len(p.held)
		if held > 0 || (p.pool.Low() && p.pool.Flows() > 0 && p.pred.Rate(now) > 0) {
			n := p.pred.Recommend(now)
			out = append(out, SNATNeed{VIP: p.vip, DIP: p.dip, Ports: n, Held: held})
		}
		p.mu.Unlock()
	}
	return out
}

// ReleaseIdleSNAT takes out of their pools the ranges that have had no flow
// for the VIP's idle timeout at now, keeping in each pool at least keep
// ports, and returns them with the ranges of pools that were removed, for
// the agent to give back to the Manager.
func (e *Engine) ReleaseIdleSNAT(now time.Time, keep int) []SNATRanges {
	snap := e.snap.Load()
	var out []SNATRanges
	for _, p := range e.poolList() {
		idle := ananta.DefaultIdleTimeout
		if vs := snap.vips[p.vip]; vs != nil {
			idle = time.Duration(vs.idle)
		}
		p.mu.Lock()
		cand := p.pool.Idle(now, idle)
		size := p.pool.Size()
		var rel []ananta.PortRange
		// Release the highest ranges first: flows pack into low ports.
		for i := len(cand) - 1; i >= 0; i-- {
			r := cand[i]
			if size-r.Len() < keep {
				continue
			}
			if _, err := p.pool.Remove(r); err == nil {
				rel = append(rel, r)
				size -= r.Len()
			}
		}
		p.mu.Unlock()
		if len(rel) > 0 {
			slices.SortFunc(rel, func(a, b ananta.PortRange) int { return int(a.First) - int(b.First) })
			out = append(out, SNATRanges{VIP: p.vip, DIP: p.dip, Ranges: rel})
			e.log.Info("snat ranges idle", "vip", p.vip, "dip", p.dip, "ranges", rel)
		}
	}
	e.mu.Lock()
	out = append(out, e.orphans...)
	e.orphans = nil
	e.mu.Unlock()
	return out
}

// hold keeps a copy of a packet waiting for SNAT ports. It returns false
// when the hold queue is full.
func (e *Engine) hold(p *snatPool, vm int, pkt []byte, heldAt int64, owned bool) bool {
	if len(pkt) > MaxHeldPacket {
		return false
	}
	if e.held.Add(1) > int64(e.cfg.MaxHeld) {
		e.held.Add(-1)
		return false
	}
	if !owned {
		pkt = slices.Clone(pkt)
	}
	p.mu.Lock()
	if p.retired {
		p.mu.Unlock()
		e.held.Add(-1)
		return false
	}
	p.held = append(p.held, heldPacket{vm: vm, at: heldAt, pkt: pkt})
	p.mu.Unlock()
	e.signal()
	return true
}
