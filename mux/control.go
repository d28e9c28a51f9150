package mux

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/hashring"
)

// SNATRange is one entry of a VIP's stateless SNAT return map: TCP and UDP
// packets to the VIP whose destination port lies in Range go to Host, the
// physical host of DIP, which leased the range for outbound connections.
type SNATRange struct {
	Range ananta.PortRange
	DIP   netip.Addr
	Host  netip.Addr
}

// DataPath is the programming interface of a Mux data path. The Go engine
// (*Mux) implements it, and so does the eBPF engine, for which the Go
// engine is the reference model. Every method may be called from any
// goroutine, at any time, also while packets flow: a change never pauses
// forwarding. Calls with the configuration already in place are no-ops, so
// a controller may repeat its whole desired state.
type DataPath interface {
	// SetVIP adds or replaces a VIP's configuration. It returns a
	// *ananta.ValidationError (matching ananta.ErrInvalidConfig) for an
	// invalid config.
	SetVIP(cfg ananta.VIPConfig) error
	// DeleteVIP removes a VIP with its SNAT ranges. It returns
	// ErrUnknownVIP if the VIP is not configured.
	DeleteVIP(vip netip.Addr) error
	// SetSNATRanges replaces the SNAT return map of a configured VIP.
	SetSNATRanges(vip netip.Addr, ranges []SNATRange) error
	// SetBackendState sets the health state of the backend dip:port in
	// every endpoint of the VIP that has it.
	SetBackendState(vip, dip netip.Addr, port uint16, state ananta.BackendState) error
	// Stats returns the data path's counters.
	Stats() Stats
}

var _ DataPath = (*Mux)(nil)

// backendKey identifies a backend of a VIP: its endpoint and its DIP:port.
type backendKey struct {
	proto ananta.Protocol
	eport uint16
	dip   netip.Addr
	port  uint16
}

type slotRec struct {
	slot uint32
	gen  uint16
	ctr  *backendCounters
}

// cachedTable is an endpoint's last Maglev table with its member set, so
// that a change elsewhere in the VIP does not rebuild it.
type cachedTable struct {
	members []hashring.Member
	table   *hashring.Table
}

// vipCtl is the control side's state of one VIP. Guarded by Mux.mu.
type vipCtl struct {
	cfg    ananta.VIPConfig
	health map[netip.AddrPort]ananta.BackendState
	snat   []SNATRange
	ctr    *vipCounters
	slots  map[backendKey]*slotRec
	tables map[uint32]*cachedTable // by portKey of the endpoint
	entry  *vipEntry
}

// slotAlloc hands out backend slots. Freed slots wait in a FIFO queue and
// are reused only when slotReuseDelay of them wait; each reuse bumps the
// slot's generation.
type slotAlloc struct {
	next uint32
	free []uint32
	gens []uint16
}

func (a *slotAlloc) available() int { return maxSlots - int(a.next) + len(a.free) }

func (a *slotAlloc) alloc() (uint32, uint16) {
	if len(a.free) > slotReuseDelay || (a.next >= maxSlots && len(a.free) > 0) {
		s := a.free[0]
		a.free = a.free[1:]
		return s, a.gens[s]
	}
	s := a.next
	a.next++
	a.gens = append(a.gens, 0)
	return s, 0
}

func (a *slotAlloc) release(s uint32) {
	a.gens[s]++
	a.free = append(a.free, s)
}

func durMS(d time.Duration) uint32 { return uint32(d / time.Millisecond) }

// hasSource reports whether the Mux can tunnel to a host of addr's family.
func (m *Mux) hasSource(addr netip.Addr) bool {
	if addr.Is4() {
		return m.src4.ok
	}
	return m.src6.ok
}

// SetVIP adds or replaces the configuration of cfg.VIP: its endpoints and
// backends, from which it builds one Maglev table per endpoint over the
// usable backends. Flows already tracked stay on their backends while the
// backends remain in the config (see the package documentation). A call
// with the configuration in place changes nothing. It returns a
// *ananta.ValidationError for an invalid config, including a backend host
// of an address family the Mux has no source address for, and ErrClosed
// after Close.
func (m *Mux) SetVIP(cfg ananta.VIPConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.Clone()
	for i, ep := range cfg.Endpoints {
		for j, b := range ep.Backends {
			if !m.hasSource(b.Host) {
				return invalid(fmt.Sprintf("endpoints[%d].backends[%d].host", i, j),
					"is %s but the Mux has no source address of its family (Config.Addr4/Addr6/SourcePrefix4/SourcePrefix6)", b.Host)
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	vc := m.vips[cfg.VIP]
	if vc != nil && vipConfigEqual(&vc.cfg, &cfg) {
		return nil
	}
	created := vc == nil
	if created {
		vc = &vipCtl{
			health: make(map[netip.AddrPort]ananta.BackendState),
			ctr:    new(vipCounters),
			slots:  make(map[backendKey]*slotRec),
			tables: make(map[uint32]*cachedTable),
		}
	}
	prev := vc.cfg
	vc.cfg = cfg
	if err := m.rebuild(vc); err != nil {
		vc.cfg = prev
		return err
	}
	if created {
		m.vips[cfg.VIP] = vc
		m.talkers.add(cfg.VIP, vc.ctr, m.elapsed())
	}
	m.publish()
	if created {
		m.lc.poke()
	}
	m.log.Info("mux: VIP set", "vip", cfg.VIP, "tenant", cfg.Tenant, "endpoints", len(cfg.Endpoints), "created", created)
	return nil
}

// DeleteVIP removes a VIP, its endpoints and its SNAT ranges. Its tracked
// flows are dropped at their next packet (DropNoVIP) and expire. It
// returns ErrUnknownVIP if the VIP is not configured, ErrClosed after
// Close.
func (m *Mux) DeleteVIP(vip netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	vc := m.vips[vip]
	if vc == nil {
		return fmt.Errorf("%w: %s", ErrUnknownVIP, vip)
	}
	for _, rec := range vc.slots {
		m.changes[rec.slot] = nil
		m.alloc.release(rec.slot)
	}
	delete(m.vips, vip)
	m.talkers.remove(vip)
	p, b, n := vc.ctr.totals()
	m.retired.packets += p
	m.retired.bytes += b
	m.retired.newFlows += n
	m.publish()
	m.lc.poke()
	m.log.Info("mux: VIP deleted", "vip", vip)
	return nil
}

// SetSNATRanges replaces the stateless SNAT return map of a configured VIP:
// TCP and UDP packets to vip whose destination port lies in a range, and
// that belong to no tracked flow, go to the range's host. Ranges must not
// overlap; an empty list removes the map. It returns ErrUnknownVIP if the
// VIP is not configured, a *ananta.ValidationError for an invalid range
// ("ranges[i].range", ".dip", ".host"), ErrClosed after Close.
func (m *Mux) SetSNATRanges(vip netip.Addr, ranges []SNATRange) error {
	rs := slices.Clone(ranges)
	for i, r := range rs {
		f := fmt.Sprintf("ranges[%d]", i)
		if r.Range.First == 0 || r.Range.Last < r.Range.First {
			return invalid(f+".range", "must be a range with 1 <= first <= last, got %s", r.Range)
		}
		if err := ananta.ValidateUnicastAddr(f+".dip", r.DIP); err != nil {
			return err
		}
		if r.DIP.Is4() != vip.Is4() {
			return invalid(f+".dip", "must be of the VIP's address family (vip %s, dip %s)", vip, r.DIP)
		}
		if err := ananta.ValidateUnicastAddr(f+".host", r.Host); err != nil {
			return err
		}
		if !m.hasSource(r.Host) {
			return invalid(f+".host", "is %s but the Mux has no source address of its family", r.Host)
		}
	}
	if len(rs) > 65535 {
		return invalid("ranges", "must have at most 65535 ranges, got %d", len(rs))
	}
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].Range.First < rs[j].Range.First })
	for i := 1; i < len(rs); i++ {
		if rs[i].Range.First <= rs[i-1].Range.Last {
			return invalid("ranges", "%s (dip %s) overlaps %s (dip %s)", rs[i].Range, rs[i].DIP, rs[i-1].Range, rs[i-1].DIP)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	vc := m.vips[vip]
	if vc == nil {
		return fmt.Errorf("%w: %s", ErrUnknownVIP, vip)
	}
	if slices.Equal(vc.snat, rs) {
		return nil
	}
	prev := vc.snat
	vc.snat = rs
	if err := m.rebuild(vc); err != nil {
		vc.snat = prev
		return err
	}
	m.publish()
	m.log.Info("mux: SNAT ranges set", "vip", vip, "ranges", len(rs))
	return nil
}

// SetBackendState sets the health state of the backend dip:port of a VIP,
// in every endpoint that has it. The backend's effective state is the worse
// of this state and the one in the VIP's configuration; BackendActive
// clears the health state, which otherwise outlives SetVIP calls while the
// backend stays in the config. A draining backend gets no new flows and
// keeps its tracked ones; a down backend gets no new flows and its tracked
// flows move or stay as Config.DownBackendFlows says. It returns
// ErrUnknownVIP, ErrUnknownBackend, a *ananta.ValidationError for an
// unknown state, or ErrClosed.
func (m *Mux) SetBackendState(vip, dip netip.Addr, port uint16, state ananta.BackendState) error {
	if state > ananta.BackendDown {
		return invalid("state", "must be active, draining or down, got %d", state)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	vc := m.vips[vip]
	if vc == nil {
		return fmt.Errorf("%w: %s", ErrUnknownVIP, vip)
	}
	key := netip.AddrPortFrom(dip, port)
	found := false
	for _, ep := range vc.cfg.Endpoints {
		for _, b := range ep.Backends {
			if b.Key() == key {
				found = true
			}
		}
	}
	if !found {
		return fmt.Errorf("%w: %s in VIP %s", ErrUnknownBackend, key, vip)
	}
	if vc.health[key] == state {
		return nil
	}
	prev, had := vc.health[key]
	if state == ananta.BackendActive {
		delete(vc.health, key)
	} else {
		vc.health[key] = state
	}
	if err := m.rebuild(vc); err != nil {
		if had {
			vc.health[key] = prev
		} else {
			delete(vc.health, key)
		}
		return err
	}
	m.publish()
	m.log.Info("mux: backend state set", "vip", vip, "backend", key, "state", state)
	return nil
}

// MaglevMember returns a backend's member of its endpoint's Maglev table:
// the key is the DIP's bytes (4 or 16) followed by the port, big-endian,
// and the weight is the backend's. Every engine that must choose as the Go
// Mux does (the eBPF loader) builds its tables from this.
func MaglevMember(b ananta.Backend) hashring.Member {
	return hashring.Member{Key: binary.BigEndian.AppendUint16(b.DIP.AsSlice(), b.Port), Weight: b.Weight}
}

// rebuild builds vc's entry for a new snapshot from vc.cfg, vc.health and
// vc.snat: Maglev tables first (they may fail, and then nothing changes),
// then backend slots. The changed slots go to m.changes; publish applies
// them. m.mu must be held.
func (m *Mux) rebuild(vc *vipCtl) error {
	cfg := &vc.cfg
	type epPlan struct {
		members []hashring.Member
		usable  []int // backend index of each member
		table   *hashring.Table
	}
	plans := make([]epPlan, len(cfg.Endpoints))
	used := make(map[backendKey]bool)
	newSlots := 0
	present := make(map[netip.AddrPort]bool)
	for i, ec := range cfg.Endpoints {
		p := &plans[i]
		for j, b := range ec.Backends {
			present[b.Key()] = true
			k := backendKey{ec.Protocol, ec.Port, b.DIP, b.Port}
			used[k] = true
			if vc.slots[k] == nil {
				newSlots++
			}
			if max(b.State, vc.health[b.Key()]) == ananta.BackendActive && b.Weight > 0 {
				p.members = append(p.members, MaglevMember(b))
				p.usable = append(p.usable, j)
			}
		}
		pk := portKey(ec.Protocol, ec.Port)
		if c := vc.tables[pk]; c != nil && hashring.EqualMembers(c.members, p.members) {
			p.table = c.table
			continue
		}
		t, err := hashring.New(p.members, m.cfg.Maglev)
		if err != nil {
			return invalid(fmt.Sprintf("endpoints[%d].backends", i), "%v", err)
		}
		p.table = t
	}
	if newSlots > m.alloc.available() {
		return invalid("endpoints", "the Mux has no room for %d more backends (at most %d in all)", newSlots, maxSlots)
	}
	// Committed from here on.
	for key := range vc.health {
		if !present[key] {
			delete(vc.health, key)
		}
	}
	for k, rec := range vc.slots {
		if !used[k] {
			m.changes[rec.slot] = nil
			m.alloc.release(rec.slot)
			delete(vc.slots, k)
		}
	}
	tables := make(map[uint32]*cachedTable, len(cfg.Endpoints))
	ve := &vipEntry{addr: cfg.VIP, tenant: cfg.Tenant, ctr: vc.ctr, cfg: cfg, ranges: vc.snat}
	var nTCP, nUDP int
	var lastTCP, lastUDP *endpoint
	for i, ec := range cfg.Endpoints {
		p := &plans[i]
		tables[portKey(ec.Protocol, ec.Port)] = &cachedTable{members: p.members, table: p.table}
		idle := durMS(cfg.Idle(i))
		ep := &endpoint{proto: ec.Protocol, port: ec.Port, table: p.table}
		for _, b := range ec.Backends {
			k := backendKey{ec.Protocol, ec.Port, b.DIP, b.Port}
			rec := vc.slots[k]
			if rec == nil {
				s, g := m.alloc.alloc()
				rec = &slotRec{slot: s, gen: g, ctr: new(backendCounters)}
				vc.slots[k] = rec
			}
			be := &backend{
				target:   target{host: b.Host, host4: b.Host.Is4(), vip: vc.ctr},
				slot:     rec.slot,
				gen:      rec.gen,
				state:    max(b.State, vc.health[b.Key()]),
				idle:     idle,
				idleU:    min(idle, m.untrustedMS),
				ctr:      rec.ctr,
				dip:      b.DIP,
				port:     b.Port,
				weight:   b.Weight,
				endpoint: ec.Endpoint(cfg.VIP),
			}
			m.changes[rec.slot] = be
			ep.all = append(ep.all, be)
		}
		for _, j := range p.usable {
			ep.members = append(ep.members, ep.all[j])
		}
		ve.eps = append(ve.eps, ep)
		switch {
		case ec.Protocol == ananta.ProtocolAny:
			ve.allAny = ep
		case ec.Port == 0 && ec.Protocol == ananta.ProtocolTCP:
			ve.allTCP = ep
		case ec.Port == 0 && ec.Protocol == ananta.ProtocolUDP:
			ve.allUDP = ep
		}
		switch ec.Protocol {
		case ananta.ProtocolTCP:
			nTCP++
			lastTCP = ep
		case ananta.ProtocolUDP:
			nUDP++
			lastUDP = ep
		}
	}
	if nTCP == 1 {
		ve.oneTCP = lastTCP
	}
	if nUDP == 1 {
		ve.oneUDP = lastUDP
	}
	ve.exact = newPortIndex(ve.eps)
	for _, r := range vc.snat {
		ve.snat = append(ve.snat, snatEntry{
			target: target{host: r.Host, host4: r.Host.Is4(), vip: vc.ctr},
			first:  r.Range.First,
			last:   r.Range.Last,
		})
	}
	ve.buildSNATIndex()
	vc.tables = tables
	vc.entry = ve
	return nil
}

// publish builds the next snapshot from the control state and m.changes
// and swaps it in. m.mu must be held.
func (m *Mux) publish() {
	vips := make([]*vipEntry, 0, len(m.vips))
	for _, vc := range m.vips {
		vips = append(vips, vc.entry)
	}
	m.snap.Store(m.snap.Load().withChanges(m.changes, vips))
	clear(m.changes)
}

// vipConfigEqual reports whether two validated configs are the same.
func vipConfigEqual(a, b *ananta.VIPConfig) bool {
	if a.VIP != b.VIP || a.Tenant != b.Tenant || a.IdleTimeout != b.IdleTimeout ||
		a.SNAT.Enabled != b.SNAT.Enabled || a.SNAT.PortsPerDIP != b.SNAT.PortsPerDIP ||
		!slices.Equal(a.SNAT.Reserved, b.SNAT.Reserved) || a.Probe != b.Probe ||
		len(a.Endpoints) != len(b.Endpoints) {
		return false
	}
	for i := range a.Endpoints {
		x, y := &a.Endpoints[i], &b.Endpoints[i]
		if x.Protocol != y.Protocol || x.Port != y.Port || x.IdleTimeout != y.IdleTimeout ||
			x.FloatingIP != y.FloatingIP || x.TCPResetOnIdle != y.TCPResetOnIdle ||
			!slices.Equal(x.Backends, y.Backends) || !slices.Equal(x.ACL, y.ACL) ||
			(x.Probe == nil) != (y.Probe == nil) || (x.Probe != nil && *x.Probe != *y.Probe) {
			return false
		}
	}
	return true
}
