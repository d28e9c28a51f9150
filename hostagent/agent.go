package hostagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/internal/netns"
	"github.com/ananta-go/ananta/packetio"
)

// Agent defaults.
const (
	DefaultTickInterval       = 100 * time.Millisecond
	DefaultSNATRenewInterval  = time.Minute
	DefaultSNATRequestTimeout = 5 * time.Second
	DefaultBatchSize          = 64
	DefaultBufferSize         = 9216 + 64
	maxRetryBackoff           = 30 * time.Second
)

// VMConfig is one local VM: its DIPs and its NIC as the host sees it.
type VMConfig struct {
	// Name identifies the VM in logs. Required, unique.
	Name string
	// DIPs are the VM's addresses. Required.
	DIPs []netip.Addr
	// Port is the VM's NIC as seen from the host: what the VM sends is
	// read from it, what the agent delivers is written to it. If nil, the
	// agent creates a TUN device named TUN in the namespace NetNS.
	Port packetio.Port
	// TUN is the name of the TUN device to create when Port is nil.
	TUN string
	// NetNS is the path of the VM's network namespace (for example
	// /var/run/netns/vm1): health probes of the VM's DIPs run there, and a
	// created TUN device is created there (the agent keeps its file
	// descriptor). Empty means the agent's own namespace.
	NetNS string
}

// Config configures a HostAgent. It is passed by value; New validates it.
type Config struct {
	// Engine configures the data path: host addresses, Mux prefixes,
	// table sizes, timeouts.
	Engine EngineConfig
	// Uplink is the host's port to the network: the agent reads tunnel
	// packets from the Muxes there and sends replies and outbound traffic
	// to the router (see OpenUplink). Required. The agent owns it and
	// closes it in Close.
	Uplink packetio.Port
	// VMs are the local VMs; VM number i in the Engine is VMs[i]. The agent
	// owns their ports and closes them in Close.
	VMs []VMConfig
	// Allocator leases SNAT ports. Nil: SNAT pools get ports only through
	// SetSNATRanges (a Manager's configuration stream), and the agent
	// neither requests, renews nor releases leases.
	Allocator PortAllocator
	// Health receives health changes of local backends. Nil: they are only
	// applied locally.
	Health HealthReporter
	// TickInterval is the period of the engine clock, flow expiry and SNAT
	// upkeep. Default DefaultTickInterval.
	TickInterval time.Duration
	// SNATRenewInterval is the period of lease renewals. Default
	// DefaultSNATRenewInterval; keep it well below the leases' TTL.
	SNATRenewInterval time.Duration
	// SNATRequestTimeout bounds each call to the Allocator. Default
	// DefaultSNATRequestTimeout.
	SNATRequestTimeout time.Duration
	// SNATKeepPorts is how many ports each SNAT pool keeps when its ranges
	// go idle (the rest go back to the Allocator after the VIP's idle
	// timeout without flows). Default 0: every idle range goes back.
	SNATKeepPorts int
	// BatchSize is the number of packets read per call. Default 64.
	BatchSize int
	// BufferSize is the size of each packet buffer: the largest packet the
	// agent reads plus the ports' headroom. Default DefaultBufferSize.
	BufferSize int
	// Logger receives configuration changes and rare events. Nil discards.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.TickInterval == 0 {
		c.TickInterval = DefaultTickInterval
	}
	if c.SNATRenewInterval == 0 {
		c.SNATRenewInterval = DefaultSNATRenewInterval
	}
	if c.SNATRequestTimeout == 0 {
		c.SNATRequestTimeout = DefaultSNATRequestTimeout
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.BufferSize == 0 {
		c.BufferSize = DefaultBufferSize
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Engine.Logger == nil {
		c.Engine.Logger = c.Logger
	}
}

// Validate checks the configuration with its defaults applied. Errors match
// ErrInvalidConfig and name the field.
func (c Config) Validate() error {
	c.setDefaults()
	if err := c.Engine.Validate(); err != nil {
		return fmt.Errorf("Engine: %w", err)
	}
	if c.Uplink == nil {
		return invalidf("Uplink", "is required")
	}
	if len(c.VMs) > MaxVMs {
		return invalidf("VMs", "must have at most %d entries", MaxVMs)
	}
	names := map[string]int{}
	dips := map[netip.Addr]int{}
	for i, vm := range c.VMs {
		f := fmt.Sprintf("VMs[%d]", i)
		if vm.Name == "" {
			return invalidf(f+".Name", "must not be empty")
		}
		if j, dup := names[vm.Name]; dup {
			return invalidf(f+".Name", "duplicates VMs[%d] (%q)", j, vm.Name)
		}
		names[vm.Name] = i
		if len(vm.DIPs) == 0 {
			return invalidf(f+".DIPs", "must not be empty")
		}
		for k, d := range vm.DIPs {
			if err := ananta.ValidateUnicastAddr(fmt.Sprintf("%s.DIPs[%d]", f, k), d); err != nil {
				return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
			}
			if j, dup := dips[d]; dup {
				return invalidf(fmt.Sprintf("%s.DIPs[%d]", f, k), "%s also belongs to VMs[%d]", d, j)
			}
			dips[d] = i
		}
		if vm.Port == nil && (vm.TUN == "" || len(vm.TUN) > 15) {
			return invalidf(f+".TUN", "must be an interface name of 1 to 15 bytes when Port is nil")
		}
		if vm.Port != nil && vm.TUN != "" {
			return invalidf(f+".TUN", "must be empty when Port is set")
		}
	}
	switch {
	case c.TickInterval < time.Millisecond || c.TickInterval > 10*time.Second:
		return invalidf("TickInterval", "must be between 1ms and 10s, got %s", c.TickInterval)
	case c.SNATRenewInterval < time.Millisecond:
		return invalidf("SNATRenewInterval", "must be at least 1ms, got %s", c.SNATRenewInterval)
	case c.SNATRequestTimeout < time.Millisecond:
		return invalidf("SNATRequestTimeout", "must be at least 1ms, got %s", c.SNATRequestTimeout)
	case c.SNATKeepPorts < 0 || c.SNATKeepPorts > 65536:
		return invalidf("SNATKeepPorts", "must be between 0 and 65536, got %d", c.SNATKeepPorts)
	case c.BatchSize < 1 || c.BatchSize > 1024:
		return invalidf("BatchSize", "must be between 1 and 1024, got %d", c.BatchSize)
	case c.BufferSize < 1280 || c.BufferSize > 1<<17:
		return invalidf("BufferSize", "must be between 1280 and %d, got %d", 1<<17, c.BufferSize)
	}
	return nil
}

// HostAgent is one host's agent: it runs the Engine over the uplink and the
// VMs' ports, probes the local backends, and leases SNAT ports. Configure
// it with SetVIP, DeleteVIP and SetSNATRanges (directly, or from a
// Manager's configuration stream); they may be called before and during
// Run, from any goroutine.
type HostAgent struct {
	cfg     Config
	log     *slog.Logger
	eng     *Engine
	vmPorts []packetio.Port
	vmOf    map[netip.Addr]int // DIP -> VM number
	health  health

	running   atomic.Bool
	closeOnce sync.Once
	closed    chan struct{} // closed by Close
	done      chan struct{} // closed when Run returns (if it ran)

	// snatMu guards inflight and backoff.
	snatMu   sync.Mutex
	inflight map[poolKey]bool
	backoff  map[poolKey]retry
	grants   map[poolKey][]grant // recent PortAllocator grants
	snatWG   sync.WaitGroup

	snatRequests, snatRequestErrors, snatPortsGranted atomic.Uint64
	snatRangesFreed, snatRenewals, snatLost           atomic.Uint64
	healthChanges, txErrors                           atomic.Uint64
}

type grant struct {
	r  ananta.PortRange
	at time.Time
}

// SNATGrantGrace is how long SetVIPSNATRanges keeps a range granted by the
// PortAllocator that its input does not list.
const SNATGrantGrace = 30 * time.Second

type retry struct {
	next  time.Time
	delay time.Duration
}

// New validates cfg, builds the engine and opens the TUN devices of VMs
// without a Port. It returns an error matching ErrInvalidConfig for an
// invalid configuration, or the error of opening a TUN device (with the
// ports opened so far closed; the ports of cfg are not closed).
func New(cfg Config) (*HostAgent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	cfg.VMs = slices.Clone(cfg.VMs)
	eng, err := NewEngine(cfg.Engine)
	if err != nil {
		return nil, err
	}
	a := &HostAgent{
		cfg:      cfg,
		log:      cfg.Logger,
		eng:      eng,
		vmOf:     make(map[netip.Addr]int),
		closed:   make(chan struct{}),
		done:     make(chan struct{}),
		inflight: make(map[poolKey]bool),
		backoff:  make(map[poolKey]retry),
		grants:   make(map[poolKey][]grant),
	}
	a.health = health{a: a, probers: make(map[probeTarget]*prober)}
	var created []packetio.Port
	for i, vm := range cfg.VMs {
		port := vm.Port
		if port == nil {
			var tun *packetio.TUN
			err := netns.Do(vm.NetNS, func() error {
				var err error
				tun, err = packetio.OpenTUN(packetio.TUNConfig{Name: vm.TUN})
				return err
			})
			if err != nil {
				for _, p := range created {
					p.Close()
				}
				return nil, fmt.Errorf("hostagent: VM %q: TUN %q: %w", vm.Name, vm.TUN, err)
			}
			port = tun
			created = append(created, tun)
		}
		a.vmPorts = append(a.vmPorts, port)
		if err := eng.SetVM(i, vm.DIPs); err != nil {
			return nil, err // unreachable: validated
		}
		for _, d := range vm.DIPs {
			a.vmOf[d] = i
		}
	}
	a.log.Info("host agent created", "hosts", cfg.Engine.HostAddrs, "muxes", cfg.Engine.MuxPrefixes, "vms", len(cfg.VMs))
	return a, nil
}

// Engine returns the agent's data path, for inspection and tests.
func (a *HostAgent) Engine() *Engine { return a.eng }

// VMPort returns the port of VM number i (the TUN device the agent created,
// or Config.VMs[i].Port).
func (a *HostAgent) VMPort(i int) packetio.Port { return a.vmPorts[i] }

// SetVIP adds or replaces a VIP (see Engine.SetVIP) and updates the health
// probes. Errors match ErrInvalidConfig.
func (a *HostAgent) SetVIP(cfg ananta.VIPConfig) error {
	if err := a.eng.SetVIP(cfg); err != nil {
		return err
	}
	a.health.reconcile()
	a.eng.signal() // new pools may want ports
	return nil
}

// DeleteVIP removes a VIP, its flows and its probes; its SNAT ranges go
// back to the Allocator. Errors match ErrUnknownVIP.
func (a *HostAgent) DeleteVIP(vip netip.Addr) error {
	if err := a.eng.DeleteVIP(vip); err != nil {
		return err
	}
	a.health.reconcile()
	return nil
}

// SetSNATRanges sets the exact port ranges of the SNAT pool of (vip, dip),
// as the Manager leased them (see Engine.SetSNATRanges).
func (a *HostAgent) SetSNATRanges(vip, dip netip.Addr, ranges []ananta.PortRange) error {
	return a.eng.SetSNATRanges(vip, dip, ranges)
}

// SNATLease is a VIP port range leased to a DIP on a host, as a Manager
// distributes them.
type SNATLease struct {
	Range     ananta.PortRange
	DIP, Host netip.Addr
}

// SetVIPSNATRanges takes the complete set of a VIP's leased ranges (of all
// DIPs and hosts, as a Manager's configuration stream sends them) and makes
// the pools of the local DIPs hold exactly theirs. Ranges the agent got
// from the PortAllocator in the last SNATGrantGrace are kept even when the
// set does not list them yet (the stream may lag behind the grant). Errors
// match ErrRange; the pools of other DIPs are still updated.
func (a *HostAgent) SetVIPSNATRanges(vip netip.Addr, leases []SNATLease) error {
	want := map[netip.Addr][]ananta.PortRange{}
	for _, l := range leases {
		if _, local := a.vmOf[l.DIP]; local {
			want[l.DIP] = append(want[l.DIP], l.Range)
		}
	}
	now := time.Now()
	var errs []error
	for _, p := range a.eng.SNATPools() {
		if p.VIP != vip {
			continue
		}
		rs := want[p.DIP]
		a.snatMu.Lock()
		for _, g := range a.grants[poolKey{vip, p.DIP}] {
			if now.Sub(g.at) < SNATGrantGrace && slices.Contains(p.Ranges, g.r) && !slices.Contains(rs, g.r) {
				rs = append(rs, g.r)
			}
		}
		a.snatMu.Unlock()
		if err := a.eng.SetSNATRanges(vip, p.DIP, rs); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// SetBackendState applies a backend state a Manager relays (see
// Engine.SetBackendState).
func (a *HostAgent) SetBackendState(vip, dip netip.Addr, port uint16, state ananta.BackendState) error {
	return a.eng.SetBackendState(vip, dip, port, state)
}

// Health returns the state of every probed backend service.
func (a *HostAgent) Health() []BackendHealth { return a.health.status() }

// Stats returns the engine's and the agent's counters.
func (a *HostAgent) Stats() Stats {
	s := a.eng.Stats()
	s.SNATRequests = a.snatRequests.Load()
	s.SNATRequestErrors = a.snatRequestErrors.Load()
	s.SNATPortsGranted = a.snatPortsGranted.Load()
	s.SNATRangesFreed = a.snatRangesFreed.Load()
	s.SNATLeaseRenewals = a.snatRenewals.Load()
	s.SNATLeasesLost = a.snatLost.Load()
	s.HealthChanges = a.healthChanges.Load()
	s.TxErrors = a.txErrors.Load()
	return s
}

// Run moves packets until ctx ends or Close is called, then closes the
// ports and returns nil; it returns an error if a port fails. It may be
// called once (ErrRunning after that, ErrClosed after Close).
func (a *HostAgent) Run(ctx context.Context) error {
	select {
	case <-a.closed:
		return ErrClosed
	default:
	}
	if !a.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer close(a.done)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 2+len(a.vmPorts))
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		errc <- a.uplinkLoop()
	}()
	for i := range a.vmPorts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errc <- a.vmLoop(i)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.controlLoop(ctx)
	}()
	a.health.startAll(ctx)
	a.log.Info("host agent running")
	var err error
	select {
	case <-ctx.Done():
	case <-a.closed:
	case err = <-errc:
	}
	cancel()
	a.closePorts()
	a.health.stopAll()
	wg.Wait()
	a.snatWG.Wait()
	a.log.Info("host agent stopped", "err", err)
	return err
}

// Close stops Run (and waits for it to return) and closes the ports. It is
// idempotent.
func (a *HostAgent) Close() error {
	a.closeOnce.Do(func() {
		close(a.closed)
		if !a.running.Load() {
			a.closePorts()
		}
	})
	if a.running.Load() {
		<-a.done
	}
	return nil
}

func (a *HostAgent) closePorts() {
	a.cfg.Uplink.Close()
	for _, p := range a.vmPorts {
		p.Close()
	}
}

// portErr turns a read error into the loop's result: nil once the port was
// closed by the agent.
func portErr(name string, err error) error {
	if errors.Is(err, packetio.ErrClosed) {
		return nil
	}
	return fmt.Errorf("hostagent: %s: %w", name, err)
}

// uplinkLoop reads the uplink and delivers to the VMs.
func (a *HostAgent) uplinkLoop() error {
	msgs := packetio.NewBatch(a.cfg.BatchSize, a.cfg.BufferSize, 0)
	toVM := make([][]packetio.Message, len(a.vmPorts))
	var toUp []packetio.Message
	for {
		n, err := a.cfg.Uplink.ReadBatch(msgs)
		if err != nil {
			return portErr("uplink", err)
		}
		for i := range msgs[:n] {
			m := &msgs[i]
			r := a.eng.ProcessInbound(m.Buf, m.Off, m.Off+m.N)
			switch r.Verdict {
			case ToVM:
				if r.VM < len(toVM) {
					toVM[r.VM] = append(toVM[r.VM], packetio.Message{Buf: m.Buf, Off: r.Start, N: r.End - r.Start})
				}
			case ToUplink:
				toUp = append(toUp, packetio.Message{Buf: m.Buf, Off: r.Start, N: r.End - r.Start})
			}
		}
		for vm, out := range toVM {
			if len(out) > 0 {
				a.write(a.vmPorts[vm], out)
				clear(out)
				toVM[vm] = out[:0]
			}
		}
		if len(toUp) > 0 {
			a.write(a.cfg.Uplink, toUp)
			clear(toUp)
			toUp = toUp[:0]
		}
	}
}

// vmLoop reads VM number vm's port and sends to the uplink.
func (a *HostAgent) vmLoop(vm int) error {
	port := a.vmPorts[vm]
	msgs := packetio.NewBatch(a.cfg.BatchSize, a.cfg.BufferSize, 0)
	var toUp, toVM []packetio.Message
	for {
		n, err := port.ReadBatch(msgs)
		if err != nil {
			return portErr("vm "+a.cfg.VMs[vm].Name, err)
		}
		for i := range msgs[:n] {
			m := &msgs[i]
			r := a.eng.ProcessOutbound(vm, m.Buf, m.Off, m.Off+m.N)
			switch r.Verdict {
			case ToUplink:
				toUp = append(toUp, packetio.Message{Buf: m.Buf, Off: r.Start, N: r.End - r.Start})
			case ToVM:
				if r.VM == vm {
					toVM = append(toVM, packetio.Message{Buf: m.Buf, Off: r.Start, N: r.End - r.Start})
				}
			}
		}
		if len(toUp) > 0 {
			a.write(a.cfg.Uplink, toUp)
			clear(toUp)
			toUp = toUp[:0]
		}
		if len(toVM) > 0 {
			a.write(port, toVM)
			clear(toVM)
			toVM = toVM[:0]
		}
	}
}

// write sends msgs, skipping the packets the port refuses.
func (a *HostAgent) write(p packetio.Port, msgs []packetio.Message) {
	for len(msgs) > 0 {
		n, err := p.WriteBatch(msgs)
		if err == nil {
			return
		}
		if errors.Is(err, packetio.ErrClosed) {
			return
		}
		if a.txErrors.Add(1) == 1 {
			a.log.Warn("port refused a packet (logged once)", "err", err)
		}
		msgs = msgs[min(n+1, len(msgs)):]
	}
}

// emit sends a packet the engine originated.
func (a *HostAgent) emit(v Verdict, vm int, pkt []byte) {
	msg := []packetio.Message{{Buf: pkt, N: len(pkt)}}
	switch v {
	case ToUplink:
		a.write(a.cfg.Uplink, msg)
	case ToVM:
		if vm >= 0 && vm < len(a.vmPorts) {
			a.write(a.vmPorts[vm], msg)
		}
	}
}

// controlLoop runs the clock, expiry and SNAT upkeep.
func (a *HostAgent) controlLoop(ctx context.Context) {
	tick := time.NewTicker(a.cfg.TickInterval)
	defer tick.Stop()
	renew := time.NewTicker(a.cfg.SNATRenewInterval)
	defer renew.Stop()
	lastIdle := time.Now()
	a.requestPorts(ctx, time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			a.eng.Advance(now, a.emit)
			a.requestPorts(ctx, now)
			if now.Sub(lastIdle) >= time.Second {
				lastIdle = now
				a.releaseIdle(ctx, now)
			}
		case <-a.eng.SNATWake():
			a.requestPorts(ctx, time.Now())
		case <-renew.C:
			a.renewLeases(ctx)
		}
	}
}

// hostFor returns the host address the Muxes send a DIP's traffic to: its
// Backend.Host in the VIP's configuration.
func (a *HostAgent) hostFor(vip, dip netip.Addr) netip.Addr {
	if cfg, ok := a.eng.VIP(vip); ok {
		for _, ep := range cfg.Endpoints {
			for _, b := range ep.Backends {
				if b.DIP == dip {
					return b.Host
				}
			}
		}
	}
	return a.cfg.Engine.HostAddrs[0]
}

// requestPorts asks the Allocator for ports for every pool that needs them
// and has no request in flight, one goroutine per request.
func (a *HostAgent) requestPorts(ctx context.Context, now time.Time) {
	if a.cfg.Allocator == nil {
		return
	}
	for _, need := range a.eng.SNATNeeds(now) {
		k := poolKey{need.VIP, need.DIP}
		a.snatMu.Lock()
		if a.inflight[k] || now.Before(a.backoff[k].next) {
			a.snatMu.Unlock()
			continue
		}
		a.inflight[k] = true
		a.snatMu.Unlock()
		a.snatWG.Add(1)
		go func() {
			defer a.snatWG.Done()
			a.allocate(ctx, k, need)
		}()
	}
}

func (a *HostAgent) allocate(ctx context.Context, k poolKey, need SNATNeed) {
	defer func() {
		a.snatMu.Lock()
		delete(a.inflight, k)
		a.snatMu.Unlock()
	}()
	a.snatRequests.Add(1)
	rctx, cancel := context.WithTimeout(ctx, a.cfg.SNATRequestTimeout)
	ranges, err := a.cfg.Allocator.AllocatePorts(rctx, k.vip, k.dip, a.hostFor(k.vip, k.dip), need.Ports)
	cancel()
	if err == nil {
		err = a.eng.AddSNATRanges(k.vip, k.dip, ranges)
		if err != nil {
			// The pool went away or the grant overlaps: give it back.
			rctx, cancel := context.WithTimeout(ctx, a.cfg.SNATRequestTimeout)
			_ = a.cfg.Allocator.ReleasePorts(rctx, k.vip, k.dip, ranges)
			cancel()
		}
	}
	a.snatMu.Lock()
	if err == nil {
		now := time.Now()
		gs := slices.DeleteFunc(a.grants[k], func(g grant) bool { return now.Sub(g.at) >= SNATGrantGrace })
		for _, r := range ranges {
			gs = append(gs, grant{r, now})
		}
		a.grants[k] = gs
	}
	if err != nil {
		b := a.backoff[k]
		b.delay = min(max(2*b.delay, a.cfg.TickInterval), maxRetryBackoff)
		b.next = time.Now().Add(b.delay)
		a.backoff[k] = b
	} else {
		delete(a.backoff, k)
	}
	a.snatMu.Unlock()
	if err != nil {
		a.snatRequestErrors.Add(1)
		if ctx.Err() == nil {
			a.log.Warn("snat port request failed", "vip", k.vip, "dip", k.dip, "ports", need.Ports, "err", err)
		}
		return
	}
	n := 0
	for _, r := range ranges {
		n += r.Len()
	}
	a.snatPortsGranted.Add(uint64(n))
	// Send the held packets now rather than at the next tick.
	a.eng.Advance(time.Now(), a.emit)
}

// releaseIdle gives idle ranges back to the Allocator.
func (a *HostAgent) releaseIdle(ctx context.Context, now time.Time) {
	if a.cfg.Allocator == nil {
		return
	}
	for _, r := range a.eng.ReleaseIdleSNAT(now, a.cfg.SNATKeepPorts) {
		a.snatRangesFreed.Add(uint64(len(r.Ranges)))
		rctx, cancel := context.WithTimeout(ctx, a.cfg.SNATRequestTimeout)
		err := a.cfg.Allocator.ReleasePorts(rctx, r.VIP, r.DIP, r.Ranges)
		cancel()
		if err != nil && ctx.Err() == nil {
			a.log.Warn("snat port release failed (the leases will expire)", "vip", r.VIP, "dip", r.DIP, "ranges", r.Ranges, "err", err)
		}
	}
}

// renewLeases renews every pool's ranges; the ones the Allocator no longer
// grants leave their pool.
func (a *HostAgent) renewLeases(ctx context.Context) {
	if a.cfg.Allocator == nil {
		return
	}
	for _, p := range a.eng.SNATPools() {
		if len(p.Ranges) == 0 {
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, a.cfg.SNATRequestTimeout)
		kept, err := a.cfg.Allocator.RenewLeases(rctx, p.VIP, p.DIP, p.Ranges)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("snat lease renewal failed", "vip", p.VIP, "dip", p.DIP, "err", err)
			}
			continue
		}
		a.snatRenewals.Add(uint64(len(kept)))
		var lost []ananta.PortRange
		for _, r := range p.Ranges {
			if !slices.Contains(kept, r) {
				lost = append(lost, r)
			}
		}
		if len(lost) > 0 {
			a.snatLost.Add(uint64(len(lost)))
			a.log.Warn("snat leases lost", "vip", p.VIP, "dip", p.DIP, "ranges", lost)
			_ = a.eng.RemoveSNATRanges(p.VIP, p.DIP, lost)
		}
	}
}
