package hostagent

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ananta-go/ananta"
)

// Engine limits and defaults.
const (
	// MaxVMs is the number of local VMs an engine can hold (VM numbers 0
	// to MaxVMs-1).
	MaxVMs = 4096
	// DefaultMaxFlows is EngineConfig.MaxFlows when zero.
	DefaultMaxFlows = 1 << 18
	// DefaultMaxHeld is EngineConfig.MaxHeld when zero.
	DefaultMaxHeld = 1024
	// DefaultHoldTimeout is EngineConfig.HoldTimeout when zero.
	DefaultHoldTimeout = 5 * time.Second
	// DefaultCloseTimeout is EngineConfig.CloseTimeout when zero.
	DefaultCloseTimeout = 10 * time.Second
	// MaxHeldPacket is the largest packet the SNAT hold queue keeps.
	MaxHeldPacket = 65535
)

// EngineConfig configures the Go data path.
type EngineConfig struct {
	// HostAddrs are the host's addresses: the outer destinations of the
	// tunnel packets the agent accepts. Required.
	HostAddrs []netip.Addr
	// MuxPrefixes are the outer sources the agent accepts tunnel packets
	// from (the Muxes, or the prefix their RSS-friendly sources come
	// from); tunnel packets from elsewhere are dropped and counted.
	// Required.
	MuxPrefixes []netip.Prefix
	// MaxFlows bounds the connection table; new flows beyond it are
	// dropped (DropTableFull). Default DefaultMaxFlows.
	MaxFlows int
	// MaxHeld bounds the packets held while SNAT ports are requested, over
	// all pools (DropHoldFull beyond). Default DefaultMaxHeld.
	MaxHeld int
	// HoldTimeout is how long a held packet waits for ports before it is
	// dropped (DropHoldTimeout). Default DefaultHoldTimeout.
	HoldTimeout time.Duration
	// CloseTimeout is how long a TCP flow is kept after an RST, or after
	// FINs in both directions, if its idle timeout is longer. It keeps the
	// flow's SNAT port from being reused for the same destination at once.
	// Default DefaultCloseTimeout.
	CloseTimeout time.Duration
	// SNATPoolLowWater is the free-port count of a SNAT pool under which
	// the engine asks for more ports ahead of need; 0 uses
	// snat.PoolConfig's default (one eighth of the pool, at least 8).
	SNATPoolLowWater int
	// Logger receives configuration changes and rare events, never one
	// line per packet. Nil discards.
	Logger *slog.Logger
}

func (c *EngineConfig) setDefaults() {
	if c.MaxFlows == 0 {
		c.MaxFlows = DefaultMaxFlows
	}
	if c.MaxHeld == 0 {
		c.MaxHeld = DefaultMaxHeld
	}
	if c.HoldTimeout == 0 {
		c.HoldTimeout = DefaultHoldTimeout
	}
	if c.CloseTimeout == 0 {
		c.CloseTimeout = DefaultCloseTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

func invalidf(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidConfig, field, fmt.Sprintf(format, args...))
}

// Validate checks the configuration with its defaults applied. Errors match
// ErrInvalidConfig and name the field.
func (c EngineConfig) Validate() error {
	c.setDefaults()
	if len(c.HostAddrs) == 0 {
		return invalidf("HostAddrs", "must list at least one address of the host")
	}
	for i, a := range c.HostAddrs {
		if err := ananta.ValidateUnicastAddr(fmt.Sprintf("HostAddrs[%d]", i), a); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	if len(c.MuxPrefixes) == 0 {
		return invalidf("MuxPrefixes", "must list at least one prefix (tunnel packets from other sources are dropped)")
	}
	for i, p := range c.MuxPrefixes {
		if !p.IsValid() || p.Addr().Zone() != "" || p.Addr().Is4In6() {
			return invalidf(fmt.Sprintf("MuxPrefixes[%d]", i), "must be a valid prefix without zone or IPv4-mapped address, got %s", p)
		}
	}
	switch {
	case c.MaxFlows < 1 || c.MaxFlows > 1<<26:
		return invalidf("MaxFlows", "must be between 1 and %d, got %d", 1<<26, c.MaxFlows)
	case c.MaxHeld < 1 || c.MaxHeld > 1<<20:
		return invalidf("MaxHeld", "must be between 1 and %d, got %d", 1<<20, c.MaxHeld)
	case c.HoldTimeout < time.Millisecond:
		return invalidf("HoldTimeout", "must be at least 1ms, got %s", c.HoldTimeout)
	case c.CloseTimeout < time.Millisecond:
		return invalidf("CloseTimeout", "must be at least 1ms, got %s", c.CloseTimeout)
	case c.SNATPoolLowWater < 0 || c.SNATPoolLowWater > ananta.LastSNATPort:
		return invalidf("SNATPoolLowWater", "must be between 0 and %d, got %d", ananta.LastSNATPort, c.SNATPoolLowWater)
	}
	return nil
}

// Engine is the Go data path of the Host Agent and the reference model of
// the DataPath contract: decapsulation, DNAT and reverse NAT (DSR), SNAT
// with leased port pools, connection tracking with idle timeouts and TCP
// resets, ICMP error translation and stateful ACLs. It does no I/O: the
// HostAgent (or a test, or a benchmark) feeds it packets and sends what it
// returns.
//
// Packets of tracked flows take the fast path: one lookup in a sharded,
// bounded table keyed by packed 5-tuples, an in-place rewrite with
// incremental checksums, no allocation. New flows consult an immutable
// configuration snapshot that configuration changes replace atomically.
type Engine struct {
	cfg     EngineConfig
	log     *slog.Logger
	flows   *flowTable
	snap    atomic.Pointer[snapshot]
	now     atomic.Int64 // Unix ns, moved by Advance
	base    time.Time    // creation time: Advance measures from it (monotonic when it can)
	closeTO int64
	holdTO  int64
	mux4    []prefix4 // the IPv4 MuxPrefixes, for a quick source check
	c       counters

	// mu guards the configuration below and serialises snapshot rebuilds.
	mu      sync.Mutex
	vips    map[netip.Addr]*ananta.VIPConfig
	vms     map[int][]netip.Addr
	health  map[netip.AddrPort]bool // false: down; absent: up
	states  map[stateKey]ananta.BackendState
	pools   map[poolKey]*snatPool
	poolIDs map[uint32]*snatPool
	nextID  uint32
	orphans []SNATRanges // ranges of removed pools, for the agent to release

	held    atomic.Int64  // packets held over all pools
	wake    chan struct{} // 1-buffered: a pool needs ports
	advMu   sync.Mutex    // serialises Advance
	scratch []byte        // Advance's packet buffer, under advMu
}

// NewEngine returns an engine with no VIPs and no VMs. It returns an error
// matching ErrInvalidConfig for an invalid configuration.
func NewEngine(cfg EngineConfig) (*Engine, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	cfg.HostAddrs = slices.Clone(cfg.HostAddrs)
	cfg.MuxPrefixes = slices.Clone(cfg.MuxPrefixes)
	e := &Engine{
		cfg:     cfg,
		log:     cfg.Logger,
		flows:   newFlowTable(cfg.MaxFlows),
		closeTO: int64(cfg.CloseTimeout),
		holdTO:  int64(cfg.HoldTimeout),
		vips:    make(map[netip.Addr]*ananta.VIPConfig),
		vms:     make(map[int][]netip.Addr),
		health:  make(map[netip.AddrPort]bool),
		states:  make(map[stateKey]ananta.BackendState),
		pools:   make(map[poolKey]*snatPool),
		poolIDs: make(map[uint32]*snatPool),
		wake:    make(chan struct{}, 1),
	}
	for _, p := range cfg.MuxPrefixes {
		if p.Addr().Is4() {
			b := p.Masked().Addr().As4()
			e.mux4 = append(e.mux4, prefix4{net: binary.BigEndian.Uint32(b[:]), mask: ^uint32(0) << (32 - p.Bits())})
		}
	}
	e.base = time.Now()
	e.now.Store(e.base.UnixNano())
	e.snap.Store(&snapshot{vips: map[netip.Addr]*vipState{}, local: map[netip.Addr]*localDIP{}})
	return e, nil
}

var _ DataPath = (*Engine)(nil)

type prefix4 struct{ net, mask uint32 }

// snapshot is an immutable view of the configuration used for new flows.
type snapshot struct {
	vips  map[netip.Addr]*vipState
	local map[netip.Addr]*localDIP
}

type vipState struct {
	addr  netip.Addr
	eps   map[epKey]*epState
	idle  int64       // VIP idle timeout (SNAT flows), ns
	pools []*snatPool // SNAT pools of the VIP's local DIPs
}

type epKey struct {
	proto ananta.Protocol
	port  uint16
}

type epState struct {
	index    int
	ep       ananta.Endpoint
	idle     int64
	floating bool
	rstIdle  bool
	acl      []ananta.ACLRule
	local    []localBackend
}

type localBackend struct {
	dip    netip.Addr
	port   uint16 // 0 keeps the destination port
	host   netip.Addr
	weight uint32
	vm     int
	usable bool // active, weight > 0 and healthy
}

type localDIP struct {
	vm   int
	snat *snatPool // pool used for the DIP's new outbound flows, or nil
}

// endpoint returns the endpoint for a packet to proto/port: exact port
// first, then the protocol's all-ports endpoint, then HA ports.
func (v *vipState) endpoint(proto ananta.Protocol, port uint16) *epState {
	if proto == ananta.ProtocolTCP || proto == ananta.ProtocolUDP {
		if e := v.eps[epKey{proto, port}]; e != nil {
			return e
		}
		if e := v.eps[epKey{proto, 0}]; e != nil {
			return e
		}
	}
	return v.eps[epKey{ananta.ProtocolAny, 0}]
}

// allows applies the endpoint's ACL to a new flow from src:port: the first
// matching rule decides; an empty ACL allows everything; a flow no rule
// matches is denied.
func (e *epState) allows(src netip.Addr, port uint16) bool {
	if len(e.acl) == 0 {
		return true
	}
	for i := range e.acl {
		if e.acl[i].Matches(src, port) {
			return e.acl[i].Action == ananta.ACLAllow
		}
	}
	return false
}

// pick chooses the local backend of a new flow: among the usable local
// backends whose Host is the tunnel's outer destination (or all usable
// local backends if none is), by weight, with a hash of the flow so that
// the choice is deterministic.
func (e *epState) pick(t *ananta.FiveTuple, outerDst netip.Addr) *localBackend {
	var total uint64
	match := false
	for i := range e.local {
		if b := &e.local[i]; b.usable && b.host == outerDst {
			match = true
			break
		}
	}
	for i := range e.local {
		if b := &e.local[i]; b.usable && (!match || b.host == outerDst) {
			total += uint64(b.weight)
		}
	}
	if total == 0 {
		return nil
	}
	k := makeKey(t, false)
	x := flowHash(&k) % total
	for i := range e.local {
		b := &e.local[i]
		if !b.usable || (match && b.host != outerDst) {
			continue
		}
		if x < uint64(b.weight) {
			return b
		}
		x -= uint64(b.weight)
	}
	return nil
}

func flowHash(k *flowKey) uint64 {
	var h uint64 = 14695981039346656037
	for _, b := range k.src {
		h = (h ^ uint64(b)) * 1099511628211
	}
	for _, b := range k.dst {
		h = (h ^ uint64(b)) * 1099511628211
	}
	h = (h ^ k.meta) * 1099511628211
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	return h ^ h>>33
}

// HealthPort returns the port under which the health of backend b of
// endpoint i of cfg is recorded (SetHealth): the probe's port if it sets
// one, else the backend's port. The agent's probes report under it.
func HealthPort(cfg *ananta.VIPConfig, i int, b ananta.Backend) uint16 {
	if p := cfg.EffectiveProbe(i); p.Kind != ananta.ProbeNone && p.Port != 0 {
		return p.Port
	}
	return b.Port
}

// rebuild makes a new snapshot from the configuration. e.mu must be held.
func (e *Engine) rebuild() {
	local := make(map[netip.Addr]*localDIP)
	for vm, dips := range e.vms {
		for _, d := range dips {
			local[d] = &localDIP{vm: vm}
		}
	}
	// Pools: one per (VIP with SNAT, local DIP backend of it).
	want := make(map[poolKey]bool)
	addrs := make([]netip.Addr, 0, len(e.vips))
	for a := range e.vips {
		addrs = append(addrs, a)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	vips := make(map[netip.Addr]*vipState, len(e.vips))
	for _, a := range addrs {
		cfg := e.vips[a]
		vs := &vipState{addr: a, eps: make(map[epKey]*epState, len(cfg.Endpoints)), idle: int64(cfg.Idle(-1))}
		for i := range cfg.Endpoints {
			ec := &cfg.Endpoints[i]
			es := &epState{
				index: i, ep: ec.Endpoint(a), idle: int64(cfg.Idle(i)),
				floating: ec.FloatingIP, rstIdle: ec.TCPResetOnIdle, acl: ec.ACL,
			}
			for _, b := range ec.Backends {
				ld := local[b.DIP]
				if ld == nil {
					continue
				}
				up, known := e.health[netip.AddrPortFrom(b.DIP, HealthPort(cfg, i, b))]
				es.local = append(es.local, localBackend{
					dip: b.DIP, port: b.Port, host: b.Host, weight: b.Weight, vm: ld.vm,
					usable: b.Usable() && (up || !known) && e.states[stateKey{a, b.DIP, b.Port}] == ananta.BackendActive,
				})
				if cfg.SNAT.Enabled {
					want[poolKey{a, b.DIP}] = true
				}
			}
			vs.eps[epKey{ec.Protocol, ec.Port}] = es
		}
		vips[a] = vs
	}
	// Create missing pools, retire unwanted ones.
	for k := range want {
		if e.pools[k] == nil {
			e.nextID++
			p := newSNATPool(e.nextID, k.vip, k.dip, e.cfg.SNATPoolLowWater)
			e.pools[k] = p
			e.poolIDs[p.id] = p
			e.log.Info("snat pool created", "vip", k.vip, "dip", k.dip)
		}
	}
	for k, p := range e.pools {
		if !want[k] {
			e.retirePool(p)
		}
	}
	// Attach pools: each local DIP uses the pool of the lowest VIP with
	// SNAT it backs.
	for _, a := range addrs {
		vs := vips[a]
		for k, p := range e.pools {
			if k.vip == a {
				vs.pools = append(vs.pools, p)
			}
		}
		slices.SortFunc(vs.pools, func(x, y *snatPool) int { return x.dip.Compare(y.dip) })
		for _, p := range vs.pools {
			if ld := local[p.dip]; ld != nil && ld.snat == nil {
				ld.snat = p
			}
		}
	}
	e.snap.Store(&snapshot{vips: vips, local: local})
}

// retirePool removes a pool: its flows end, its ranges go to the orphans
// for the agent to release, its held packets are dropped. e.mu must be
// held.
func (e *Engine) retirePool(p *snatPool) {
	delete(e.pools, poolKey{p.vip, p.dip})
	delete(e.poolIDs, p.id)
	p.mu.Lock()
	ranges := p.pool.Ranges()
	p.retired = true
	n := len(p.held)
	p.held = nil
	p.mu.Unlock()
	e.held.Add(int64(-n))
	e.c.drops[DropHoldTimeout].Add(uint64(n))
	if len(ranges) > 0 {
		e.orphans = append(e.orphans, SNATRanges{VIP: p.vip, DIP: p.dip, Ranges: ranges})
	}
	e.flushFlows(func(f *flow) bool { return f.pool == p.id })
	e.log.Info("snat pool removed", "vip", p.vip, "dip", p.dip, "ranges", len(ranges))
}

// flushFlows removes every flow for which match returns true.
func (e *Engine) flushFlows(match func(*flow) bool) int {
	n := 0
	for i := range e.flows.shards {
		s := &e.flows.shards[i]
		s.mu.Lock()
		for slot := range s.slots {
			if f := &s.slots[slot]; f.live && match(f) {
				e.flows.remove(s, uint32(slot))
				n++
			}
		}
		s.mu.Unlock()
	}
	if n > 0 {
		e.c.flowsExpired.Add(uint64(n))
	}
	return n
}

// SetVIP implements DataPath. The configuration is validated and copied.
func (e *Engine) SetVIP(cfg ananta.VIPConfig) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: vip %s: %w", ErrInvalidConfig, cfg.VIP, err)
	}
	c := cfg.Clone()
	e.mu.Lock()
	defer e.mu.Unlock()
	_, existed := e.vips[c.VIP]
	e.vips[c.VIP] = &c
	e.rebuild()
	if existed {
		e.log.Info("vip updated", "vip", c.VIP, "endpoints", len(c.Endpoints), "snat", c.SNAT.Enabled)
	} else {
		e.log.Info("vip added", "vip", c.VIP, "endpoints", len(c.Endpoints), "snat", c.SNAT.Enabled)
	}
	return nil
}

// DeleteVIP implements DataPath.
func (e *Engine) DeleteVIP(vip netip.Addr) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.vips[vip] == nil {
		return fmt.Errorf("%w: %s", ErrUnknownVIP, vip)
	}
	delete(e.vips, vip)
	e.rebuild()
	ext := pack(vip)
	n := e.flushFlows(func(f *flow) bool { return f.extAddr == ext && f.v6() == vip.Is6() })
	e.log.Info("vip deleted", "vip", vip, "flows_removed", n)
	return nil
}

// VIPs returns the configured VIPs in ascending order.
func (e *Engine) VIPs() []netip.Addr {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]netip.Addr, 0, len(e.vips))
	for a := range e.vips {
		out = append(out, a)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// VIP returns a copy of a VIP's configuration.
func (e *Engine) VIP(vip netip.Addr) (ananta.VIPConfig, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.vips[vip]
	if c == nil {
		return ananta.VIPConfig{}, false
	}
	return c.Clone(), true
}

// SetVM implements DataPath. A DIP may belong to one VM only.
func (e *Engine) SetVM(vm int, dips []netip.Addr) error {
	if vm < 0 || vm >= MaxVMs {
		return invalidf("vm", "must be between 0 and %d, got %d", MaxVMs-1, vm)
	}
	for i, d := range dips {
		if err := ananta.ValidateUnicastAddr(fmt.Sprintf("dips[%d]", i), d); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for other, ds := range e.vms {
		if other == vm {
			continue
		}
		for _, d := range dips {
			if slices.Contains(ds, d) {
				return invalidf("dips", "%s already belongs to VM %d", d, other)
			}
		}
	}
	e.vms[vm] = slices.Clone(dips)
	e.rebuild()
	e.log.Info("vm set", "vm", vm, "dips", dips)
	return nil
}

// DeleteVM removes a VM; its DIPs are no longer local. Flows already
// tracked expire normally.
func (e *Engine) DeleteVM(vm int) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.vms[vm]; !ok {
		return fmt.Errorf("%w: %d", ErrUnknownVM, vm)
	}
	delete(e.vms, vm)
	e.rebuild()
	e.log.Info("vm deleted", "vm", vm)
	return nil
}

// SetHealth implements DataPath.
func (e *Engine) SetHealth(dip netip.Addr, port uint16, healthy bool) {
	k := netip.AddrPortFrom(dip, port)
	e.mu.Lock()
	defer e.mu.Unlock()
	old, known := e.health[k]
	if known && old == healthy || !known && healthy {
		e.health[k] = healthy
		return
	}
	e.health[k] = healthy
	e.rebuild()
	e.log.Info("backend health changed", "dip", dip, "port", port, "healthy", healthy)
}

type stateKey struct {
	vip, dip netip.Addr
	port     uint16
}

// SetBackendState overrides the state of backend dip:port in every
// endpoint of vip (as a Manager relays health and drain decisions): a
// state other than active takes the backend out of new flows, on top of
// its configured state and of local health. Active removes the override.
func (e *Engine) SetBackendState(vip, dip netip.Addr, port uint16, state ananta.BackendState) error {
	if state > ananta.BackendDown {
		return invalidf("state", "must be active, draining or down, got %d", state)
	}
	k := stateKey{vip, dip, port}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.states[k] == state {
		return nil
	}
	if state == ananta.BackendActive {
		delete(e.states, k)
	} else {
		e.states[k] = state
	}
	e.rebuild()
	e.log.Info("backend state set", "vip", vip, "dip", dip, "port", port, "state", state)
	return nil
}

// Healthy reports the recorded health of dip:port (true if never set).
func (e *Engine) Healthy(dip netip.Addr, port uint16) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	up, known := e.health[netip.AddrPortFrom(dip, port)]
	return up || !known
}

// Flows returns the number of tracked flows.
func (e *Engine) Flows() int { return int(e.flows.count.Load()) }

// Now returns the engine's clock: the time of the last Advance (or of
// NewEngine).
func (e *Engine) Now() time.Time { return time.Unix(0, e.now.Load()) }
