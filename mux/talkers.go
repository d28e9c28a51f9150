package mux

import (
	"net/netip"
	"sort"
	"sync"
	"time"
)

// talkerSamples is the number of samples per window: the window slides in
// steps of TalkerWindow/talkerSamples.
const talkerSamples = 10

// Talker is one VIP's traffic over the top-talker window.
type Talker struct {
	VIP netip.Addr
	// PacketRate is the VIP's forwarded packets per second.
	PacketRate float64
	// NewFlowRate is the VIP's flow-table misses balanced by Maglev per
	// second: new flows, and the packets of flows the table had no room
	// for.
	NewFlowRate float64
}

type talkerSample struct {
	t                 time.Duration
	packets, newFlows uint64
}

// talkerVIP holds one VIP's samples, newest last, the oldest at most one
// window (plus a step) old.
type talkerVIP struct {
	ctr     *vipCounters
	samples []talkerSample
}

// talkers samples every VIP's cumulative counters off the packet path.
type talkers struct {
	// mu guards the fields below.
	mu     sync.Mutex
	window time.Duration
	step   time.Duration
	next   time.Duration
	vips   map[netip.Addr]*talkerVIP
}

func (t *talkers) init(window time.Duration) {
	t.window, t.step = window, window/talkerSamples
	t.vips = make(map[netip.Addr]*talkerVIP)
}

func (t *talkers) add(vip netip.Addr, ctr *vipCounters, now time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	p, _, n := ctr.totals()
	t.vips[vip] = &talkerVIP{ctr: ctr, samples: []talkerSample{{t: now, packets: p, newFlows: n}}}
}

func (t *talkers) remove(vip netip.Addr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.vips, vip)
}

// maybeSample takes a sample of every VIP if a step has passed.
func (t *talkers) maybeSample(now time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if now < t.next {
		return
	}
	t.next = now + t.step
	for _, v := range t.vips {
		p, _, n := v.ctr.totals()
		v.samples = append(v.samples, talkerSample{t: now, packets: p, newFlows: n})
		// Keep one sample at least a window old, none older.
		drop := 0
		for drop+1 < len(v.samples) && now-v.samples[drop+1].t >= t.window {
			drop++
		}
		if drop > 0 {
			v.samples = append(v.samples[:0], v.samples[drop:]...)
		}
	}
}

// top returns the k VIPs with the highest packet rates over the window
// ending now.
func (t *talkers) top(k int, now time.Duration) []Talker {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Talker, 0, len(t.vips))
	for vip, v := range t.vips {
		p, _, n := v.ctr.totals()
		// The newest sample at least a window old, else the oldest.
		base := v.samples[0]
		for _, s := range v.samples[1:] {
			if now-s.t < t.window {
				break
			}
			base = s
		}
		tk := Talker{VIP: vip}
		if d := (now - base.t).Seconds(); d > 0 {
			tk.PacketRate = float64(p-base.packets) / d
			tk.NewFlowRate = float64(n-base.newFlows) / d
		}
		out = append(out, tk)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].PacketRate != out[j].PacketRate {
			return out[i].PacketRate > out[j].PacketRate
		}
		if out[i].NewFlowRate != out[j].NewFlowRate {
			return out[i].NewFlowRate > out[j].NewFlowRate
		}
		return out[i].VIP.Less(out[j].VIP)
	})
	if k >= 0 && k < len(out) {
		out = out[:k]
	}
	return out
}

// TopTalkers returns the k VIPs with the highest packet rates over the
// last Config.TalkerWindow, highest first (ties by new-flow rate, then by
// address); k < 0 returns every VIP. Rates are computed from counters the
// packet path updates anyway and samples taken every TalkerWindow/10 off
// the packet path, so the window slides in tenths; a VIP configured for
// less than a window is measured since it was configured.
func (m *Mux) TopTalkers(k int) []Talker {
	return m.talkers.top(k, m.elapsed())
}
