package mux

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/packetio"
	"github.com/ananta-go/ananta/routing"
)

const waitLimit = 10 * time.Second

var (
	vip4b = netip.MustParseAddr("198.19.0.11")
	nh4   = netip.MustParseAddr("198.18.0.100")
)

func host(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// waitRoutes waits until mem announces exactly the prefixes ps.
func waitRoutes(t *testing.T, mem *routing.Memory, ps ...netip.Prefix) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	err := mem.Wait(ctx, func(rs []routing.Route) bool {
		got := make([]netip.Prefix, len(rs))
		for i, r := range rs {
			got[i] = r.Prefix
		}
		return slices.Equal(got, ps)
	})
	if err != nil {
		t.Fatalf("waiting for routes %v: %v (have %v)", ps, err, mem.Routes())
	}
}

// waitRounds waits until the lifecycle loop has completed n more rounds
// (self-check and reconciliation) from now.
func waitRounds(t *testing.T, m *Mux, n uint64) {
	t.Helper()
	r0 := m.lc.rounds.Load()
	testutil.WaitFor(t, waitLimit, "lifecycle rounds", func() bool { return m.lc.rounds.Load() >= r0+n })
}

// startRun runs m.Run until the test ends and returns its result channel
// and cancel function.
func startRun(t *testing.T, m *Mux) (<-chan error, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	fin := make(chan struct{})
	go func() {
		defer close(fin)
		done <- m.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-fin:
		case <-time.After(waitLimit):
			t.Error("Run did not return")
		}
	})
	testutil.WaitFor(t, waitLimit, "Run to start", m.lc.workers.Load)
	return done, cancel
}

func lifecycleMux(t *testing.T, mem *routing.Memory, mod func(*Config)) *Mux {
	return newMux(t, testConfig(func(c *Config) {
		c.Announcer = mem
		c.SelfCheckInterval = 10 * time.Millisecond
		if mod != nil {
			mod(c)
		}
	}))
}

// TestLifecycleAnnounce: nothing is announced before Run and SetSynced;
// every VIP afterwards, with the configured next hops and attributes; VIP
// additions and removals follow; SetSynced(false) and the end of Run
// withdraw.
func TestLifecycleAnnounce(t *testing.T) {
	testutil.CheckGoroutines(t)
	mem := routing.NewMemory()
	m := lifecycleMux(t, mem, func(c *Config) {
		c.NextHop4 = nh4 // NextHop6 defaults to Addr6
		c.Communities = []uint32{65000<<16 | 7}
		c.MED = 42
	})
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 3)))
	mustSetVIP(t, m, simpleVIP(vip6, 80, backends6(1, 2)))

	// Synced, but Run is not running: no announcement.
	m.SetSynced(true)
	if ev := mem.Events(); len(ev) != 0 {
		t.Fatalf("announced before Run: %v", ev)
	}
	m.SetSynced(false)

	done, cancel := startRun(t, m)
	// Running and the self-check passes, but not synced.
	waitRounds(t, m, 3)
	if err := m.SelfCheck(); err != nil {
		t.Fatalf("SelfCheck: %v", err)
	}
	if ev := mem.Events(); len(ev) != 0 {
		t.Fatalf("announced before SetSynced: %v", ev)
	}

	m.SetSynced(true)
	waitRoutes(t, mem, host(vip4), host(vip6))
	r4, _ := mem.Lookup(host(vip4))
	r6, _ := mem.Lookup(host(vip6))
	want4 := routing.Route{Prefix: host(vip4), NextHop: nh4, Communities: []uint32{65000<<16 | 7}, MED: 42}
	want6 := routing.Route{Prefix: host(vip6), NextHop: mux6, Communities: []uint32{65000<<16 | 7}, MED: 42}
	if !r4.Equal(want4) || !r6.Equal(want6) {
		t.Fatalf("routes %+v %+v, want %+v %+v", r4, r6, want4, want6)
	}
	if got := m.Announced(); !slices.Equal(got, []netip.Prefix{host(vip4), host(vip6)}) {
		t.Errorf("Announced() = %v", got)
	}

	mustSetVIP(t, m, simpleVIP(vip4b, 443, backends4(4, 2)))
	waitRoutes(t, mem, host(vip4), host(vip4b), host(vip6))
	if err := m.DeleteVIP(vip4); err != nil {
		t.Fatal(err)
	}
	waitRoutes(t, mem, host(vip4b), host(vip6))

	m.SetSynced(false)
	waitRoutes(t, mem)
	m.SetSynced(true)
	waitRoutes(t, mem, host(vip4b), host(vip6))

	// Run stops: everything is withdrawn before it returns.
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Run did not return")
	}
	if rs := mem.Routes(); len(rs) != 0 {
		t.Fatalf("routes after Run returned: %v", rs)
	}
	if st := m.Stats(); st.SelfCheckFailures != 0 || st.AnnounceErrors != 0 {
		t.Errorf("self-check failures %d, announce errors %d", st.SelfCheckFailures, st.AnnounceErrors)
	}
}

// TestLifecycleSelfCheckFailure: when the data path loses its published
// configuration (real packets to the VIP are dropped), the self-check fails
// and every VIP is withdrawn; when it is restored, they are announced
// again. An endpoint without a usable backend is not a data-path failure.
func TestLifecycleSelfCheckFailure(t *testing.T) {
	testutil.CheckGoroutines(t)
	mem := routing.NewMemory()
	m := lifecycleMux(t, mem, nil)
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 3)))
	mustSetVIP(t, m, simpleVIP(vip6, 80, backends6(1, 2)))
	startRun(t, m)
	m.SetSynced(true)
	waitRoutes(t, mem, host(vip4), host(vip6))

	// Break the data path: the published snapshot loses every VIP.
	saved := m.snap.Load()
	m.snap.Store(&snapshot{vips: newVIPIndex(nil)})
	if r := process(m, tcp4(client, 1000, vip4, 80, encap.TCPFlagSYN)); r.v.Action != ActionDrop || r.v.Reason != DropNoVIP {
		t.Fatalf("broken data path: verdict %v, want a no-vip drop", r.v)
	}
	waitRoutes(t, mem)
	if err := m.SelfCheck(); err == nil {
		t.Fatal("SelfCheck passes on a broken data path")
	}
	if n := m.Stats().SelfCheckFailures; n == 0 {
		t.Error("SelfCheckFailures = 0")
	}
	if v := gatherOne(t, m, "ananta_mux_self_check_failures_total"); v == 0 {
		t.Error("ananta_mux_self_check_failures_total = 0")
	}
	if v := gatherOne(t, m, "ananta_mux_announced_vips"); v != 0 {
		t.Errorf("ananta_mux_announced_vips = %v while the check fails", v)
	}

	// Repair: announced again.
	m.snap.Store(saved)
	waitRoutes(t, mem, host(vip4), host(vip6))
	if r := process(m, tcp4(client, 1000, vip4, 80, encap.TCPFlagSYN)); r.v.Action != ActionForward {
		t.Fatalf("repaired data path: verdict %v", r.v)
	}
	if v := gatherOne(t, m, "ananta_mux_announced_vips"); v != 2 {
		t.Errorf("ananta_mux_announced_vips = %v, want 2", v)
	}

	// Every backend of vip4 down: packets are dropped (no backend), but
	// the data path works, so vip4 stays announced.
	for _, b := range backends4(1, 3) {
		if err := m.SetBackendState(vip4, b.DIP, b.Port, ananta.BackendDown); err != nil {
			t.Fatal(err)
		}
	}
	if r := process(m, tcp4(client, 1001, vip4, 80, encap.TCPFlagSYN)); r.v.Reason != DropNoBackend {
		t.Fatalf("no backend: verdict %v", r.v)
	}
	f0 := m.Stats().SelfCheckFailures
	waitRounds(t, m, 3)
	if err := m.SelfCheck(); err != nil {
		t.Fatalf("SelfCheck with no usable backend: %v", err)
	}
	if f := m.Stats().SelfCheckFailures; f != f0 {
		t.Errorf("self-check failures went from %d to %d with no usable backend", f0, f)
	}
	if rs := mem.Routes(); len(rs) != 2 {
		t.Errorf("routes %v, want both VIPs", rs)
	}
}

// gatherOne returns the value of the unlabelled metric name of m's
// collector.
func gatherOne(t *testing.T, m *Mux, name string) float64 {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(m); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return value(mf.GetMetric()[0])
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestSelfCheckProbes: the probes reach TCP, UDP, all-ports and IPv6
// endpoints, and change no flow and no counter.
func TestSelfCheckProbes(t *testing.T) {
	m := newMux(t, testConfig(nil))
	cfg := simpleVIP(vip4, 80, backends4(1, 3))
	cfg.Endpoints = append(cfg.Endpoints,
		ananta.EndpointConfig{Protocol: ananta.ProtocolUDP, Port: 53, Backends: backends4(4, 2)},
		ananta.EndpointConfig{Protocol: ananta.ProtocolTCP, Backends: backends4(6, 2)}) // all ports
	mustSetVIP(t, m, cfg)
	mustSetVIP(t, m, simpleVIP(vip6, 443, backends6(3, 2)))
	if err := m.SelfCheck(); err == nil {
		t.Fatal("SelfCheck passes without Run")
	}
	m.lc.workers.Store(true) // as Run does, without its loop
	defer m.lc.workers.Store(false)
	before := m.Stats()
	for range 10 {
		if err := m.SelfCheck(); err != nil {
			t.Fatalf("SelfCheck: %v", err)
		}
	}
	after := m.Stats()
	if after.Forwarded != before.Forwarded || after.Dropped() != before.Dropped() ||
		after.Flows.Inserts != before.Flows.Inserts || after.Flows.Trusted+after.Flows.Untrusted != 0 {
		t.Fatalf("self-check changed the counters: before %+v after %+v", before, after)
	}
	// Each probe, built alone, is what the real data path forwards.
	for _, s := range []probeSpec{{vip4, ananta.ProtocolTCP, 80}, {vip4, ananta.ProtocolUDP, 53}, {vip4, ananta.ProtocolTCP, 0}, {vip6, ananta.ProtocolTCP, 443}} {
		pkt := buildProbe(make([]byte, 0, 60), s)
		var p encap.Packet
		if err := encap.Parse(pkt, &p); err != nil {
			t.Fatalf("%v: probe does not parse: %v", s, err)
		}
		if r := process(m, pkt); r.v.Action != ActionForward {
			t.Errorf("%v: Process verdict %v", s, r.v)
		}
	}
	// A VIP whose endpoint the data path does not know fails.
	if err := m.probe(m.snap.Load(), probeSpec{vip4, ananta.ProtocolUDP, 54}, make([]byte, Headroom+60)); err == nil {
		t.Error("probe of an unknown endpoint passes")
	}
}

// TestLifecycleWorkerFailure: a worker that fails for good (its port closed
// under it) ends Run, and every VIP is withdrawn.
func TestLifecycleWorkerFailure(t *testing.T) {
	testutil.CheckGoroutines(t)
	in, inPeer, err := packetio.Pipe(packetio.MemConfig{Headroom: Headroom})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inPeer.Close() })
	mem := routing.NewMemory()
	m := lifecycleMux(t, mem, func(c *Config) { c.Links = []Link{{In: in}} })
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 3)))
	done, _ := startRun(t, m)
	m.SetSynced(true)
	waitRoutes(t, mem, host(vip4))
	in.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Run returned nil after its port failed")
		}
	case <-time.After(waitLimit):
		t.Fatal("Run did not return")
	}
	if rs := mem.Routes(); len(rs) != 0 {
		t.Fatalf("routes after the worker failed: %v", rs)
	}
	if err := m.SelfCheck(); err == nil {
		t.Error("SelfCheck passes without workers")
	}
}

// TestDrain: Drain withdraws at once, keeps forwarding while packets
// arrive, returns only once none has arrived for the settle time, and the
// Mux is not announced again.
func TestDrain(t *testing.T) {
	testutil.CheckGoroutines(t)
	mem := routing.NewMemory()
	m := lifecycleMux(t, mem, nil)
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 3)))
	startRun(t, m)
	m.SetSynced(true)
	waitRoutes(t, mem, host(vip4))

	// Traffic from a goroutine, as routers still sending to the Mux.
	var sent, forwarded atomic.Uint64
	var lastSent atomic.Int64 // UnixNano after the last Process
	stop := make(chan struct{})
	feederDone := make(chan struct{})
	go func() {
		defer close(feederDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			r := process(m, tcp4(client, uint16(1000+i%1000), vip4, 80, encap.TCPFlagACK))
			lastSent.Store(time.Now().UnixNano())
			sent.Add(1)
			if r.v.Action == ActionForward {
				forwarded.Add(1)
			}
			if i%64 == 0 {
				select {
				case <-stop:
					return
				case <-time.After(time.Millisecond): // pace, not synchronisation
				}
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-feederDone
	}()

	const settle = 100 * time.Millisecond
	start := time.Now()
	drained := make(chan error, 1)
	go func() { drained <- m.Drain(context.Background(), settle) }()
	waitRoutes(t, mem)
	f0 := forwarded.Load()
	testutil.WaitFor(t, waitLimit, "traffic for three settle times", func() bool {
		return time.Since(start) > 3*settle && forwarded.Load() > f0+100
	})
	select {
	case err := <-drained:
		t.Fatalf("Drain returned (%v) while packets still arrive", err)
	default:
	}
	if forwarded.Load() != sent.Load() {
		t.Errorf("forwarded %d of %d packets while draining", forwarded.Load(), sent.Load())
	}

	close(stop)
	<-feederDone
	select {
	case err := <-drained:
		if err != nil {
			t.Fatalf("Drain: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Drain did not return after the traffic stopped")
	}
	if quiet := time.Since(time.Unix(0, lastSent.Load())); quiet < settle {
		t.Errorf("Drain returned %s after the last packet, want at least %s", quiet, settle)
	}

	// Drained for good: SetSynced does not announce again.
	m.SetSynced(true)
	waitRounds(t, m, 3)
	if rs := mem.Routes(); len(rs) != 0 {
		t.Fatalf("announced after Drain: %v", rs)
	}
	// The Mux still forwards until Close.
	if r := process(m, tcp4(client, 5000, vip4, 80, encap.TCPFlagSYN)); r.v.Action != ActionForward {
		t.Errorf("after Drain: verdict %v", r.v)
	}
}

// TestDrainDeadline: with traffic that never stops, Drain returns ctx's
// error, having withdrawn.
func TestDrainDeadline(t *testing.T) {
	mem := routing.NewMemory()
	m := lifecycleMux(t, mem, nil)
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 3)))
	startRun(t, m)
	m.SetSynced(true)
	waitRoutes(t, mem, host(vip4))
	stop := make(chan struct{})
	feederDone := make(chan struct{})
	go func() {
		defer close(feederDone)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
			process(m, tcp4(client, 1000, vip4, 80, encap.TCPFlagACK))
		}
	}()
	defer func() { close(stop); <-feederDone }()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := m.Drain(ctx, time.Minute); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain: %v, want DeadlineExceeded", err)
	}
	if rs := mem.Routes(); len(rs) != 0 {
		t.Fatalf("routes after Drain: %v", rs)
	}
}

// TestLifecycleClose: Close withdraws every VIP (closing the Announcer)
// before it returns, and Run returns.
func TestLifecycleClose(t *testing.T) {
	testutil.CheckGoroutines(t)
	mem := routing.NewMemory()
	m := lifecycleMux(t, mem, nil)
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 3)))
	mustSetVIP(t, m, simpleVIP(vip6, 80, backends6(1, 2)))
	done, _ := startRun(t, m)
	m.SetSynced(true)
	waitRoutes(t, mem, host(vip4), host(vip6))
	m.Close()
	if !mem.Closed() || len(mem.Routes()) != 0 {
		t.Fatalf("after Close: closed %v, routes %v", mem.Closed(), mem.Routes())
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Run did not return")
	}
	if st := m.Stats(); st.AnnounceErrors != 0 {
		t.Errorf("announce errors: %d", st.AnnounceErrors)
	}
}

// TestLifecycleConfig: next hops of the wrong family and a too short
// self-check interval are refused.
func TestLifecycleConfig(t *testing.T) {
	for name, mod := range map[string]func(*Config){
		"NextHop4":          func(c *Config) { c.NextHop4 = mux6 },
		"NextHop6":          func(c *Config) { c.NextHop6 = mux4 },
		"SelfCheckInterval": func(c *Config) { c.SelfCheckInterval = time.Microsecond },
	} {
		err := testConfig(mod).Validate()
		var ve *ananta.ValidationError
		if !errors.As(err, &ve) || ve.Field != name {
			t.Errorf("%s: %v", name, err)
		}
	}
}
