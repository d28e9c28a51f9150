package mux

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ananta-go/ananta/packetio"
)

// housekeepingInterval is how often the Mux's background goroutine
// refreshes the coarse clock and sweeps a slice of the flow table.
const housekeepingInterval = 10 * time.Millisecond

// sweepPasses: the sweeper visits every bucket once in this many
// housekeeping intervals (one second).
const sweepPasses = 100

// Mux is the Go data path of a Mux: it balances packets to VIPs over their
// backends and tunnels them to the backends' hosts. See the package
// documentation.
//
// Process forwards one packet and may be called from any number of
// goroutines; Run does it for the packet I/O of Config.Links. The
// configuration methods (the DataPath interface) may be called at any
// time. Close releases the Mux.
type Mux struct {
	cfg         Config
	log         *slog.Logger
	snap        atomic.Pointer[snapshot]
	ft          *flowTable
	seed        uint64
	src4, src6  source
	mtu         int
	ttl         uint8
	downKeep    bool
	untrustedMS uint32
	clock       func() time.Duration
	epoch       time.Time
	tick        atomic.Uint64 // coarse clock: ms since epoch

	drops   [stripes]dropStripe
	replies atomic.Uint64 // ICMP errors sent
	limiter limiter
	talkers talkers

	txErrors, rxErrors atomic.Uint64

	// mu guards the control state below.
	mu      sync.Mutex
	closed  bool
	vips    map[netip.Addr]*vipCtl
	alloc   slotAlloc
	changes map[uint32]*backend // slots changed since the last publish
	retired struct{ packets, bytes, newFlows uint64 }

	running   atomic.Bool
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	portsOnce sync.Once
	hkDone    chan struct{} // closed when the housekeeper exits

	lc lifecycle
}

type dropStripe struct {
	n [NumDropReasons]atomic.Uint64
	_ [128 - NumDropReasons*8%128]byte
}

// New validates cfg and returns a Mux with no VIPs. It allocates the flow
// table (Config.FlowTableBytes) and starts a housekeeping goroutine (the
// coarse clock, flow-table sweeping, top-talker sampling) that Close
// stops: call Close when done with the Mux, also if Run is never called.
// It returns a *ananta.ValidationError for an invalid config.
func New(cfg Config) (*Mux, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	cfg.Links = append([]Link(nil), cfg.Links...)
	cfg.Communities = append([]uint32(nil), cfg.Communities...)
	m := &Mux{
		cfg:         cfg,
		log:         cfg.Logger,
		ft:          newFlowTable(cfg.FlowTableBytes, cfg.FlowTableShards, cfg.UntrustedShare),
		seed:        cfg.FlowHashSeed,
		src4:        newSource(cfg.Addr4, cfg.SourcePrefix4),
		src6:        newSource(cfg.Addr6, cfg.SourcePrefix6),
		mtu:         cfg.MTU,
		ttl:         cfg.TTL,
		downKeep:    cfg.DownBackendFlows == DownKeep,
		untrustedMS: durMS(cfg.UntrustedIdleTimeout),
		clock:       cfg.Clock,
		epoch:       time.Now(),
		vips:        make(map[netip.Addr]*vipCtl),
		changes:     make(map[uint32]*backend),
		done:        make(chan struct{}),
		hkDone:      make(chan struct{}),
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.lc.init()
	m.limiter.init(cfg.TooBigRate, cfg.TooBigBurst)
	m.talkers.init(cfg.TalkerWindow)
	m.snap.Store(&snapshot{vips: newVIPIndex(nil)})
	go m.housekeep()
	m.log.Info("mux: created", "flow_capacity", m.ft.capacity, "shards", len(m.ft.shards), "mtu", cfg.MTU, "links", len(cfg.Links))
	return m, nil
}

// Close withdraws every announced VIP by closing Config.Announcer, then
// stops Run, closes the ports of Config.Links and stops the housekeeping
// goroutine. Configuration methods and Run then return
// ErrClosed; Process keeps working on the last configuration. Close is
// idempotent and always returns nil.
func (m *Mux) Close() error {
	m.closeOnce.Do(func() {
		m.lc.closed.Store(true)
		if a := m.cfg.Announcer; a != nil {
			m.lc.annMu.Lock()
			if err := a.Close(); err != nil {
				m.lc.announceErrors.Add(1)
				m.log.Warn("mux: announcer close", "error", err)
			}
			clear(m.lc.announced)
			m.lc.annMu.Unlock()
		}
		m.mu.Lock()
		m.closed = true
		m.mu.Unlock()
		close(m.done)
		m.closePorts()
		<-m.hkDone
		m.log.Info("mux: closed")
	})
	return nil
}

func (m *Mux) closePorts() {
	m.portsOnce.Do(func() {
		for _, l := range m.cfg.Links {
			for _, p := range []packetio.Port{l.In, l.Out, l.Reply} {
				if p != nil {
					_ = p.Close()
				}
			}
		}
	})
}

// elapsed is the time since the Mux's epoch (or Config.Clock's time).
func (m *Mux) elapsed() time.Duration {
	if m.clock != nil {
		return m.clock()
	}
	return time.Since(m.epoch)
}

// now returns the flow-table time in ms. Without Config.Clock it is the
// coarse clock, refreshed per batch by the workers and every 10 ms by the
// housekeeper.
func (m *Mux) now() uint32 {
	if m.clock != nil {
		return uint32(m.clock() / time.Millisecond)
	}
	return uint32(m.tick.Load())
}

// refreshClock advances the coarse clock to the monotonic time; it never
// moves it back.
func (m *Mux) refreshClock() {
	if m.clock != nil {
		return
	}
	t := uint64(time.Since(m.epoch) / time.Millisecond)
	for {
		old := m.tick.Load()
		if t <= old || m.tick.CompareAndSwap(old, t) {
			return
		}
	}
}

// housekeep runs until Close: the coarse clock, incremental sweeping of the
// flow table (every bucket once per second), top-talker samples.
func (m *Mux) housekeep() {
	defer close(m.hkDone)
	t := time.NewTicker(housekeepingInterval)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
		}
		m.refreshClock()
		now := m.now()
		for i := range m.ft.shards {
			s := &m.ft.shards[i]
			s.sweep(now, (s.nb+sweepPasses-1)/sweepPasses)
		}
		m.talkers.maybeSample(m.elapsed())
	}
}

// Run forwards packets between the ports of Config.Links, one worker
// goroutine per link: each reads a batch from In, processes every packet
// (ProcessBatch) and writes the forwarded ones to Out and the ICMP answers to
// Reply, in batches. Run blocks until ctx ends or Close is called, then
// closes the ports and returns nil; it returns an error if a port fails
// for good (a port closed by someone else included), ErrRunning if Run is
// already running and ErrClosed after Close. Without links, Run just
// waits.
//
// While its workers are up, Run also runs the lifecycle loop: the
// self-check every Config.SelfCheckInterval and the announcements through
// Config.Announcer (see SetSynced). Before it stops the workers, and when
// a worker fails, it withdraws every VIP.
func (m *Mux) Run(ctx context.Context) error {
	select {
	case <-m.done:
		return ErrClosed
	default:
	}
	if !m.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer m.running.Store(false)
	m.log.Info("mux: running", "workers", len(m.cfg.Links))
	var stopping atomic.Bool
	errc := make(chan error, len(m.cfg.Links))
	var wg sync.WaitGroup
	for i, l := range m.cfg.Links {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := m.worker(i, l, &stopping); err != nil {
				errc <- err
			}
		}()
	}
	m.lc.workers.Store(true)
	lctx, lcancel := context.WithCancel(context.Background())
	lcDone := make(chan struct{})
	go func() {
		defer close(lcDone)
		m.lifecycleLoop(lctx)
	}()
	var err error
	select {
	case <-ctx.Done():
	case <-m.done:
	case err = <-errc:
		if m.stopped(&stopping) {
			err = nil // Close raced with the worker's read
		}
	}
	// Withdraw before the workers stop forwarding.
	m.lc.workers.Store(false)
	m.lc.checkOK.Store(false)
	lcancel()
	<-lcDone
	wctx, wcancel := context.WithTimeout(context.Background(), announceTimeout)
	_ = m.reconcile(wctx)
	wcancel()
	stopping.Store(true)
	m.closePorts()
	wg.Wait()
	m.log.Info("mux: stopped", "error", err)
	return err
}

// worker is Run's loop for one link.
func (m *Mux) worker(id int, l Link, stopping *atomic.Bool) error {
	out, reply := l.Out, l.Reply
	if out == nil {
		out = l.In
	}
	if reply == nil {
		reply = l.In
	}
	msgs := packetio.NewBatch(m.cfg.BatchSize, 2*Headroom+m.cfg.MaxPacket, Headroom)
	verdicts := make([]Verdict, len(msgs))
	fwd := make([]packetio.Message, 0, len(msgs))
	rpl := make([]packetio.Message, 0, len(msgs))
	var loggedRead bool
	for {
		n, err := l.In.ReadBatch(msgs)
		if err != nil {
			if m.stopped(stopping) {
				return nil
			}
			if errors.Is(err, packetio.ErrClosed) {
				return fmt.Errorf("mux: worker %d: %w", id, err)
			}
			m.rxErrors.Add(1)
			if !loggedRead {
				m.log.Warn("mux: read error", "worker", id, "error", err)
				loggedRead = true
			}
			// Back off: a failing port must not spin a core.
			select {
			case <-m.done:
			case <-time.After(time.Millisecond):
			}
			continue
		}
		m.refreshClock()
		now := m.now()
		fwd, rpl = fwd[:0], rpl[:0]
		m.processBatch(msgs[:n], verdicts[:n], now)
		for i, v := range verdicts[:n] {
			switch v.Action {
			case ActionForward:
				fwd = append(fwd, msgs[i])
			case ActionReply:
				rpl = append(rpl, msgs[i])
			}
		}
		if err := m.send(id, out, fwd, stopping); err != nil {
			return err
		}
		if err := m.send(id, reply, rpl, stopping); err != nil {
			return err
		}
	}
}

// stopped reports whether Run is stopping or the Mux is closed: a port
// error is then expected.
func (m *Mux) stopped(stopping *atomic.Bool) bool {
	if stopping.Load() {
		return true
	}
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// send writes msgs to p, skipping the packets the port refuses.
func (m *Mux) send(id int, p packetio.Port, msgs []packetio.Message, stopping *atomic.Bool) error {
	for len(msgs) > 0 {
		n, err := p.WriteBatch(msgs)
		if err == nil {
			return nil
		}
		if errors.Is(err, packetio.ErrClosed) {
			if m.stopped(stopping) {
				return nil
			}
			return fmt.Errorf("mux: worker %d: %w", id, err)
		}
		if m.txErrors.Add(1) == 1 {
			m.log.Warn("mux: write error", "worker", id, "error", err)
		}
		msgs = msgs[n+1:]
	}
	return nil
}
