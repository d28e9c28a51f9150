package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"net/netip"
	"os"
	"slices"
	"sort"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/hashring"
	"github.com/ananta-go/ananta/mux"
)

// Errors of this package.
var (
	// ErrUnavailable: the kernel refused to load the program or create its
	// maps, usually for lack of privileges (root, or CAP_BPF with
	// CAP_NET_ADMIN) or of BPF support.
	ErrUnavailable = errors.New("bpf: eBPF is unavailable")
	// ErrClosed: the Mux was closed.
	ErrClosed = errors.New("bpf: closed")
	// ErrFull: a map of the program has no room left (backends, endpoints).
	ErrFull = errors.New("bpf: map full")
)

// Limits of the maps (see c/mux.c).
const (
	MaxVIPs      = 4096
	MaxEndpoints = 16384
	MaxBackends  = 65536
	// DefaultFlowTableEntries is the flow table's capacity per CPU when
	// Config.FlowTableEntries is 0.
	DefaultFlowTableEntries = 1 << 20
)

// Config configures the XDP Mux.
type Config struct {
	// Mux is the configuration shared with the Go engine: Addr4/6 and
	// SourcePrefix4/6 (outer source), MTU, TTL, FlowHashSeed, Maglev and
	// DownBackendFlows are used with the same meaning and defaults, so that
	// both engines make the same choices. Its other fields are ignored.
	Mux mux.Config
	// GatewayMAC is the next hop of forwarded packets (the router's MAC
	// on the attached interface). Required to forward; the zero value
	// sends to 00:00:00:00:00:00.
	GatewayMAC net.HardwareAddr
	// FlowTableEntries is the LRU flow table's capacity per CPU; default
	// DefaultFlowTableEntries.
	FlowTableEntries int
}

// Counter names, in the order of the program's counters.
var counterNames = [...]string{
	"tx", "tx_bytes", "tx_snat", "new_flows",
	"pass_not_ip", "pass_no_vip", "pass_options", "pass_fragment",
	"pass_proto", "pass_malformed", "pass_too_big",
	"drop_no_endpoint", "drop_no_backend", "drop_error",
}

const (
	cntTX = iota
	cntTXBytes
	_
	cntNewFlows
	_
	_
	_
	_
	_
	_
	_
	cntDropNoEndpoint
	cntDropNoBackend
)

// Backend states in backend_map.
const beFree = 3

// Mux is the XDP data path of a Mux. It implements mux.DataPath; its
// methods may be called from any goroutine.
type Mux struct {
	cfg  mux.Config // defaults applied
	src4 source
	src6 source
	ring *ebpf.MapSpec // inner map template
	objs muxXDPObjects

	mu     sync.Mutex // guards the fields below and map programming
	closed bool
	vips   map[netip.Addr]*vipState
	beNext uint32
	beFree []uint32
	beGens []uint16
	rgNext uint32
	rgFree []uint32
}

type backendKey struct {
	proto ananta.Protocol
	eport uint16
	dip   netip.Addr
	port  uint16
}

type epKey struct {
	proto ananta.Protocol
	port  uint16
}

type epState struct {
	ring    uint32
	members []hashring.Member
	slots   []uint32 // backend index of each member
	built   bool     // the ring holds members/slots
}

type vipState struct {
	cfg    ananta.VIPConfig
	health map[netip.AddrPort]ananta.BackendState
	snat   []mux.SNATRange
	slots  map[backendKey]uint32
	eps    map[epKey]*epState
	snatK  []muxXDPSnatKey
}

// source mirrors the Go engine's outer-source choice.
type source struct {
	ok   bool
	base [16]byte
	mask uint64
}

func newSource(addr netip.Addr, prefix netip.Prefix) source {
	var s source
	switch {
	case prefix.IsValid():
		s.ok = true
		if host := prefix.Addr().BitLen() - prefix.Bits(); host > 0 {
			s.mask = 1<<host - 1
		}
		s.base = prefix.Addr().As16()
	case addr.IsValid():
		s.ok, s.base = true, addr.As16()
	}
	return s
}

// New loads the XDP program and creates its maps. It returns an error
// matching ErrUnavailable when the kernel refuses (no privileges, no BPF),
// and a *ananta.ValidationError for an invalid config.
func New(cfg Config) (*Mux, error) {
	mc := cfg.Mux
	// Links are irrelevant here, and Validate needs at least one source.
	mc.Links = nil
	if err := mc.Validate(); err != nil {
		return nil, err
	}
	if mc.MTU == 0 {
		mc.MTU = mux.DefaultMTU
	}
	if mc.TTL == 0 {
		mc.TTL = 64
	}
	if mc.FlowHashSeed == 0 {
		mc.FlowHashSeed = mux.DefaultFlowHashSeed
	}
	if mc.Maglev.Size == 0 {
		mc.Maglev.Size = hashring.DefaultSize
	}
	if cfg.FlowTableEntries < 0 {
		return nil, &ananta.ValidationError{Field: "FlowTableEntries", Rule: "must be >= 0"}
	}
	if cfg.FlowTableEntries == 0 {
		cfg.FlowTableEntries = DefaultFlowTableEntries
	}
	if cfg.GatewayMAC != nil && len(cfg.GatewayMAC) != 6 {
		return nil, &ananta.ValidationError{Field: "GatewayMAC", Rule: fmt.Sprintf("must be a 6-byte MAC, got %s", cfg.GatewayMAC)}
	}
	_ = rlimit.RemoveMemlock() // older kernels account BPF memory to RLIMIT_MEMLOCK
	spec, err := loadMuxXDP()
	if err != nil {
		return nil, fmt.Errorf("bpf: load the embedded object: %w", err)
	}
	spec.Maps["flow_map"].MaxEntries = uint32(cfg.FlowTableEntries)
	spec.Maps["ring_map"].InnerMap.MaxEntries = uint32(mc.Maglev.Size)
	m := &Mux{
		cfg:  mc,
		src4: newSource(mc.Addr4, mc.SourcePrefix4),
		src6: newSource(mc.Addr6, mc.SourcePrefix6),
		ring: spec.Maps["ring_map"].InnerMap.Copy(),
		vips: make(map[netip.Addr]*vipState),
	}
	if err := spec.LoadAndAssign(&m.objs, nil); err != nil {
		if errors.Is(err, os.ErrPermission) {
			return nil, fmt.Errorf("%w: loading the XDP program needs root or CAP_BPF and CAP_NET_ADMIN: %v", ErrUnavailable, err)
		}
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var kc muxXDPMuxConfig
	kc.Seed = mc.FlowHashSeed
	kc.Src4 = binary.BigEndian.Uint32(m.src4.base[12:])
	kc.Src4Mask = uint32(m.src4.mask)
	copy(kc.Src6Hi[:], m.src6.base[:8])
	kc.Src6Lo = binary.BigEndian.Uint64(m.src6.base[8:])
	kc.Src6Mask = m.src6.mask
	kc.RingSize = uint32(mc.Maglev.Size)
	kc.Mtu = uint16(mc.MTU)
	kc.Ttl = mc.TTL
	if mc.DownBackendFlows == mux.DownKeep {
		kc.DownKeep = 1
	}
	copy(kc.GwMac[:], cfg.GatewayMAC)
	if err := m.objs.ConfigMap.Put(uint32(0), &kc); err != nil {
		m.objs.Close()
		return nil, fmt.Errorf("bpf: write config: %w", err)
	}
	return m, nil
}

// Program returns the XDP program, for BPF_PROG_TEST_RUN or for attaching
// it by other means. It belongs to the Mux.
func (m *Mux) Program() *ebpf.Program { return m.objs.XdpMux }

// Attach attaches the program to the interface ifindex in the driver's
// XDP mode if it has one, else generic mode. Close the link to detach.
func (m *Mux) Attach(ifindex int) (link.Link, error) {
	l, err := link.AttachXDP(link.XDPOptions{Program: m.objs.XdpMux, Interface: ifindex})
	if err != nil {
		return nil, fmt.Errorf("bpf: attach XDP to interface %d: %w", ifindex, err)
	}
	return l, nil
}

// Close releases the program and its maps (an attached link keeps the
// program alive until it is closed). It is idempotent.
func (m *Mux) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	return m.objs.Close()
}

var _ mux.DataPath = (*Mux)(nil)

func (m *Mux) hasSource(a netip.Addr) bool {
	if a.Is4() {
		return m.src4.ok
	}
	return m.src6.ok
}

func addrKey(a netip.Addr) [2]uint64 {
	b := a.As16()
	return [2]uint64{binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])}
}

// hashForSlot returns the smallest flow hash that hashring.Table.Lookup
// maps to entry slot of a table of size n: ceil(slot * 2^64 / n).
func hashForSlot(slot, n uint64) uint64 {
	q, r := bits.Div64(slot, 0, n)
	if r != 0 {
		q++
	}
	return q
}

func (m *Mux) allocBackend() (uint32, error) {
	if len(m.beFree) > 0 {
		s := m.beFree[0]
		m.beFree = m.beFree[1:]
		return s, nil
	}
	if m.beNext >= MaxBackends {
		return 0, fmt.Errorf("%w: more than %d backends", ErrFull, MaxBackends)
	}
	s := m.beNext
	m.beNext++
	m.beGens = append(m.beGens, 0)
	return s, nil
}

func (m *Mux) freeBackend(s uint32) error {
	m.beGens[s]++
	m.beFree = append(m.beFree, s)
	return m.objs.BackendMap.Put(s, &muxXDPBackend{Gen: m.beGens[s], State: beFree})
}

func (m *Mux) allocRing() (uint32, error) {
	if n := len(m.rgFree); n > 0 {
		r := m.rgFree[n-1]
		m.rgFree = m.rgFree[:n-1]
		return r, nil
	}
	if m.rgNext >= MaxEndpoints {
		return 0, fmt.Errorf("%w: more than %d endpoints", ErrFull, MaxEndpoints)
	}
	m.rgNext++
	return m.rgNext - 1, nil
}

// SetVIP adds or replaces a VIP's configuration (see mux.Mux.SetVIP). It
// returns a *ananta.ValidationError for an invalid config, ErrFull when a
// map has no room, ErrClosed after Close.
func (m *Mux) SetVIP(cfg ananta.VIPConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg = cfg.Clone()
	for i, ep := range cfg.Endpoints {
		for j, b := range ep.Backends {
			if !m.hasSource(b.Host) {
				return &ananta.ValidationError{Field: fmt.Sprintf("endpoints[%d].backends[%d].host", i, j),
					Rule: fmt.Sprintf("is %s but the Mux has no source address of its family", b.Host)}
			}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	vs := m.vips[cfg.VIP]
	if vs == nil {
		if len(m.vips) >= MaxVIPs {
			return fmt.Errorf("%w: more than %d VIPs", ErrFull, MaxVIPs)
		}
		vs = &vipState{
			health: make(map[netip.AddrPort]ananta.BackendState),
			slots:  make(map[backendKey]uint32),
			eps:    make(map[epKey]*epState),
		}
		m.vips[cfg.VIP] = vs
	}
	vs.cfg = cfg
	return m.program(vs)
}

// program writes a VIP's state into the maps: backends, then rings, then
// endpoints and the VIP, then removes what is gone. m.mu is held.
func (m *Mux) program(vs *vipState) error {
	cfg := &vs.cfg
	vk := addrKey(cfg.VIP)
	used := make(map[backendKey]bool)
	present := make(map[netip.AddrPort]bool)
	seenEP := make(map[epKey]bool)
	for _, ec := range cfg.Endpoints {
		ek := epKey{ec.Protocol, ec.Port}
		seenEP[ek] = true
		es := vs.eps[ek]
		if es == nil {
			r, err := m.allocRing()
			if err != nil {
				return err
			}
			es = &epState{ring: r}
			vs.eps[ek] = es
		}
		var members []hashring.Member
		var slots []uint32
		for _, b := range ec.Backends {
			present[b.Key()] = true
			k := backendKey{ec.Protocol, ec.Port, b.DIP, b.Port}
			used[k] = true
			s, ok := vs.slots[k]
			if !ok {
				var err error
				if s, err = m.allocBackend(); err != nil {
					return err
				}
				vs.slots[k] = s
			}
			state := max(b.State, vs.health[b.Key()])
			kb := muxXDPBackend{Gen: m.beGens[s], State: uint8(state)}
			h := b.Host.As16()
			if b.Host.Is4() {
				kb.V4 = 1
				copy(kb.Addr[:], h[12:])
			} else {
				kb.Addr = h
			}
			if err := m.objs.BackendMap.Put(s, &kb); err != nil {
				return fmt.Errorf("bpf: write backend: %w", err)
			}
			if state == ananta.BackendActive && b.Weight > 0 {
				members = append(members, mux.MaglevMember(b))
				slots = append(slots, s)
			}
		}
		if !es.built || !hashring.EqualMembers(es.members, members) || !slices.Equal(es.slots, slots) {
			if err := m.writeRing(es.ring, members, slots); err != nil {
				return err
			}
			es.members, es.slots, es.built = members, slots, true
		}
		key := muxXDPEndpointKey{Addr: vk, Port: ec.Port, Proto: uint8(ec.Protocol)}
		if err := m.objs.EndpointMap.Put(&key, &muxXDPEndpoint{Ring: es.ring}); err != nil {
			return fmt.Errorf("bpf: write endpoint: %w", err)
		}
	}
	var flags uint32
	if len(vs.snat) > 0 {
		flags = 1
	}
	if err := m.objs.VipMap.Put(&vk, &muxXDPVip{Flags: flags}); err != nil {
		return fmt.Errorf("bpf: write VIP: %w", err)
	}
	for ek, es := range vs.eps {
		if seenEP[ek] {
			continue
		}
		key := muxXDPEndpointKey{Addr: vk, Port: ek.port, Proto: uint8(ek.proto)}
		_ = m.objs.EndpointMap.Delete(&key)
		_ = m.objs.RingMap.Delete(es.ring)
		m.rgFree = append(m.rgFree, es.ring)
		delete(vs.eps, ek)
	}
	for k, s := range vs.slots {
		if !used[k] {
			if err := m.freeBackend(s); err != nil {
				return err
			}
			delete(vs.slots, k)
		}
	}
	for key := range vs.health {
		if !present[key] {
			delete(vs.health, key)
		}
	}
	return nil
}

// writeRing builds the Maglev table of members (as the Go engine does),
// writes it to a new inner map and swaps it in at index r. Without members
// the index is emptied: the endpoint has no usable backend.
func (m *Mux) writeRing(r uint32, members []hashring.Member, slots []uint32) error {
	if len(members) == 0 {
		if err := m.objs.RingMap.Delete(r); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("bpf: clear ring: %w", err)
		}
		return nil
	}
	t, err := hashring.New(members, m.cfg.Maglev)
	if err != nil {
		return &ananta.ValidationError{Field: "endpoints.backends", Rule: err.Error()}
	}
	n := uint64(t.Size())
	keys := make([]uint32, n)
	vals := make([]uint32, n)
	for i := range n {
		keys[i] = uint32(i)
		vals[i] = slots[t.Lookup(hashForSlot(i, n))]
	}
	inner, err := ebpf.NewMap(m.ring)
	if err != nil {
		return fmt.Errorf("bpf: create ring: %w", err)
	}
	defer inner.Close() // ring_map holds its own reference
	if _, err := inner.BatchUpdate(keys, vals, nil); err != nil {
		return fmt.Errorf("bpf: fill ring: %w", err)
	}
	if err := m.objs.RingMap.Put(r, inner); err != nil {
		return fmt.Errorf("bpf: swap ring: %w", err)
	}
	return nil
}

// DeleteVIP removes a VIP, its endpoints and SNAT ranges. Its flows are
// passed to the kernel at their next packet. It returns mux.ErrUnknownVIP
// if the VIP is not configured, ErrClosed after Close.
func (m *Mux) DeleteVIP(vip netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	vs := m.vips[vip]
	if vs == nil {
		return fmt.Errorf("%w: %s", mux.ErrUnknownVIP, vip)
	}
	vk := addrKey(vip)
	_ = m.objs.VipMap.Delete(&vk)
	for ek, es := range vs.eps {
		key := muxXDPEndpointKey{Addr: vk, Port: ek.port, Proto: uint8(ek.proto)}
		_ = m.objs.EndpointMap.Delete(&key)
		_ = m.objs.RingMap.Delete(es.ring)
		m.rgFree = append(m.rgFree, es.ring)
	}
	for _, k := range vs.snatK {
		_ = m.objs.SnatMap.Delete(&k)
	}
	for _, s := range vs.slots {
		if err := m.freeBackend(s); err != nil {
			return err
		}
	}
	delete(m.vips, vip)
	return nil
}

// snatKeys splits an inclusive port range into aligned power-of-two
// blocks, the LPM trie keys of vip.
func snatKeys(vk [2]uint64, first, last uint16) []muxXDPSnatKey {
	var out []muxXDPSnatKey
	var addr [16]byte
	binary.LittleEndian.PutUint64(addr[:8], vk[0])
	binary.LittleEndian.PutUint64(addr[8:], vk[1])
	p, end := uint32(first), uint32(last)
	for p <= end {
		k := uint32(0)
		for k < 16 && p&(1<<(k+1)-1) == 0 && p+(1<<(k+1))-1 <= end {
			k++
		}
		key := muxXDPSnatKey{Prefixlen: 128 + 16 - k, Addr: addr}
		binary.BigEndian.PutUint16(key.Port[:], uint16(p))
		out = append(out, key)
		p += 1 << k
	}
	return out
}

// SetSNATRanges replaces the SNAT return map of a configured VIP (see
// mux.Mux.SetSNATRanges, whose validation it shares). It returns
// mux.ErrUnknownVIP, a *ananta.ValidationError, or ErrClosed.
func (m *Mux) SetSNATRanges(vip netip.Addr, ranges []mux.SNATRange) error {
	rs := slices.Clone(ranges)
	for i, r := range rs {
		f := fmt.Sprintf("ranges[%d]", i)
		if r.Range.First == 0 || r.Range.Last < r.Range.First {
			return &ananta.ValidationError{Field: f + ".range", Rule: fmt.Sprintf("must be a range with 1 <= first <= last, got %s", r.Range)}
		}
		if err := ananta.ValidateUnicastAddr(f+".host", r.Host); err != nil {
			return err
		}
		if !m.hasSource(r.Host) {
			return &ananta.ValidationError{Field: f + ".host", Rule: fmt.Sprintf("is %s but the Mux has no source address of its family", r.Host)}
		}
	}
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].Range.First < rs[j].Range.First })
	for i := 1; i < len(rs); i++ {
		if rs[i].Range.First <= rs[i-1].Range.Last {
			return &ananta.ValidationError{Field: "ranges", Rule: fmt.Sprintf("%s overlaps %s", rs[i].Range, rs[i-1].Range)}
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	vs := m.vips[vip]
	if vs == nil {
		return fmt.Errorf("%w: %s", mux.ErrUnknownVIP, vip)
	}
	vk := addrKey(vip)
	var keys []muxXDPSnatKey
	for _, r := range rs {
		var t muxXDPBackend
		h := r.Host.As16()
		if r.Host.Is4() {
			t.V4 = 1
			copy(t.Addr[:], h[12:])
		} else {
			t.Addr = h
		}
		for _, k := range snatKeys(vk, r.Range.First, r.Range.Last) {
			if err := m.objs.SnatMap.Put(&k, &t); err != nil {
				return fmt.Errorf("bpf: write SNAT range: %w", err)
			}
			keys = append(keys, k)
		}
	}
	newSet := make(map[muxXDPSnatKey]bool, len(keys))
	for _, k := range keys {
		newSet[k] = true
	}
	for _, k := range vs.snatK {
		if !newSet[k] {
			_ = m.objs.SnatMap.Delete(&k)
		}
	}
	vs.snatK, vs.snat = keys, rs
	var flags uint32
	if len(rs) > 0 {
		flags = 1
	}
	if err := m.objs.VipMap.Put(&vk, &muxXDPVip{Flags: flags}); err != nil {
		return fmt.Errorf("bpf: write VIP: %w", err)
	}
	return nil
}

// SetBackendState sets the health state of the backend dip:port of a VIP
// in every endpoint that has it (see mux.Mux.SetBackendState). It returns
// mux.ErrUnknownVIP, mux.ErrUnknownBackend, a *ananta.ValidationError or
// ErrClosed.
func (m *Mux) SetBackendState(vip, dip netip.Addr, port uint16, state ananta.BackendState) error {
	if state > ananta.BackendDown {
		return &ananta.ValidationError{Field: "state", Rule: fmt.Sprintf("must be active, draining or down, got %d", state)}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	vs := m.vips[vip]
	if vs == nil {
		return fmt.Errorf("%w: %s", mux.ErrUnknownVIP, vip)
	}
	key := netip.AddrPortFrom(dip, port)
	found := false
	for _, ep := range vs.cfg.Endpoints {
		for _, b := range ep.Backends {
			found = found || b.Key() == key
		}
	}
	if !found {
		return fmt.Errorf("%w: %s in VIP %s", mux.ErrUnknownBackend, key, vip)
	}
	if state == ananta.BackendActive {
		delete(vs.health, key)
	} else {
		vs.health[key] = state
	}
	return m.program(vs)
}

// Counters returns the program's counters summed over CPUs, by name:
// tx, tx_bytes, tx_snat, new_flows, pass_* (by reason), drop_*.
func (m *Mux) Counters() (map[string]uint64, error) {
	out := make(map[string]uint64, len(counterNames))
	for i, name := range counterNames {
		var per []uint64
		if err := m.objs.Counters.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("bpf: read counters: %w", err)
		}
		var s uint64
		for _, v := range per {
			s += v
		}
		out[name] = s
	}
	return out, nil
}

// Stats returns the counters the XDP program shares with the Go engine:
// Forwarded, ForwardedBytes, and
// the DropNoEndpoint and DropNoBackend drops. Packets passed to the kernel
// are in Counters.
func (m *Mux) Stats() mux.Stats {
	var s mux.Stats
	c, err := m.Counters()
	if err != nil {
		return s
	}
	s.Forwarded = c[counterNames[cntTX]]
	s.ForwardedBytes = c[counterNames[cntTXBytes]]
	s.Drops[mux.DropNoEndpoint] = c[counterNames[cntDropNoEndpoint]]
	s.Drops[mux.DropNoBackend] = c[counterNames[cntDropNoBackend]]
	return s
}
