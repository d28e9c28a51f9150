package hostagent

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/packetio"
	"github.com/prometheus/client_golang/prometheus"
)

// memAgent is an agent on in-memory ports: net is the network side of the
// uplink (the Mux and the router), vms[i] the inside of VM i's NIC.
type memAgent struct {
	*HostAgent
	net  *packetio.Mem
	vms  []*packetio.Mem
	errc chan error
}

func pipe(t testing.TB) (agentSide, otherSide *packetio.Mem) {
	t.Helper()
	a, b, err := packetio.Pipe(packetio.MemConfig{QueueLen: 1024, MaxPacket: 2048})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return a, b
}

func newMemAgent(t testing.TB, mod func(*Config)) *memAgent {
	t.Helper()
	up, net := pipe(t)
	vm0, in0 := pipe(t)
	vm1, in1 := pipe(t)
	cfg := Config{
		Engine: EngineConfig{
			HostAddrs:   []netip.Addr{hostAddr},
			MuxPrefixes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")},
		},
		Uplink:       up,
		VMs:          []VMConfig{{Name: "vm0", DIPs: []netip.Addr{dip1}, Port: vm0}, {Name: "vm1", DIPs: []netip.Addr{dip2}, Port: vm1}},
		TickInterval: 10 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := &memAgent{HostAgent: a, net: net, vms: []*packetio.Mem{in0, in1}, errc: make(chan error, 1)}
	go func() { m.errc <- a.Run(context.Background()) }()
	t.Cleanup(func() {
		a.Close()
		// ErrClosed: the test ended before Run started.
		if err := <-m.errc; err != nil && !errors.Is(err, ErrClosed) {
			t.Errorf("Run: %v", err)
		}
	})
	return m
}

func read(t testing.TB, p *packetio.Mem) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pkt, err := p.ReadPacket(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return pkt
}

func tunnelled(t testing.TB, pkt []byte, host netip.Addr) []byte {
	b, s := tunnel(t, pkt, muxAddr, host)
	return b[s:]
}

func TestAgentInboundAndDirectReturn(t *testing.T) {
	testutil.CheckGoroutines(t)
	m := newMemAgent(t, nil)
	if err := m.SetVIP(webVIP()); err != nil {
		t.Fatal(err)
	}
	client := ap("198.18.1.2:40000")
	vip := netip.AddrPortFrom(vipAddr, 80)
	dip := netip.AddrPortFrom(dip1, 8080)
	if err := m.net.WritePacket(tunnelled(t, build(pktSpec{src: client, dst: vip, proto: ananta.ProtocolTCP, flags: tcpSYN}), hostAddr)); err != nil {
		t.Fatal(err)
	}
	wantTuple(t, read(t, m.vms[0]), client, dip)
	if err := m.vms[0].WritePacket(build(pktSpec{src: dip, dst: client, proto: ananta.ProtocolTCP, flags: tcpSYN | tcpACK})); err != nil {
		t.Fatal(err)
	}
	wantTuple(t, read(t, m.net), vip, client)
	// A tunnel packet from outside the Mux prefixes goes nowhere.
	b, s := tunnel(t, build(pktSpec{src: client, dst: vip, proto: ananta.ProtocolTCP, flags: tcpSYN}), addr("198.18.7.7"), hostAddr)
	m.net.WritePacket(b[s:])
	testutil.WaitFor(t, 5*time.Second, "the spoofed tunnel packet counted", func() bool { return m.Stats().Drops[DropNotMux] == 1 })
	if q := m.vms[0].Queued() + m.vms[1].Queued(); q != 0 {
		t.Fatalf("%d packets delivered from a non-Mux source", q)
	}
}

// gatedAllocator blocks AllocatePorts until open is closed, and can lose
// leases on renewal.
type gatedAllocator struct {
	*MemAllocator
	open   chan struct{}
	mu     sync.Mutex
	calls  int
	losing bool
}

func (g *gatedAllocator) AllocatePorts(ctx context.Context, vip, dip, host netip.Addr, hint int) ([]ananta.PortRange, error) {
	g.mu.Lock()
	g.calls++
	g.mu.Unlock()
	select {
	case <-g.open:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return g.MemAllocator.AllocatePorts(ctx, vip, dip, host, hint)
}

func (g *gatedAllocator) RenewLeases(ctx context.Context, vip, dip netip.Addr, ranges []ananta.PortRange) ([]ananta.PortRange, error) {
	g.mu.Lock()
	losing := g.losing
	g.mu.Unlock()
	if losing {
		return nil, nil
	}
	return g.MemAllocator.RenewLeases(ctx, vip, dip, ranges)
}

func newGated(t testing.TB) *gatedAllocator {
	mem, err := NewMemAllocator(MemAllocatorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	return &gatedAllocator{MemAllocator: mem, open: make(chan struct{})}
}

// muxReturn plays the Mux's SNAT return role: it tunnels a packet to a
// VIP:port to the host of the lease that holds the port.
func muxReturn(t testing.TB, alloc *MemAllocator, pkt []byte) []byte {
	t.Helper()
	p := parse(t, pkt)
	l, ok := alloc.Owner(p.Tuple.Dst, p.Tuple.DstPort)
	if !ok {
		t.Fatalf("no lease holds %s:%d", p.Tuple.Dst, p.Tuple.DstPort)
	}
	return tunnelled(t, pkt, l.Host)
}

func TestAgentSNATHoldLeaseAndReturn(t *testing.T) {
	testutil.CheckGoroutines(t)
	alloc := newGated(t)
	m := newMemAgent(t, func(c *Config) { c.Allocator = alloc })
	if err := m.SetVIP(snatVIP()); err != nil {
		t.Fatal(err)
	}
	// The pools ask for nothing before they see demand.
	if needs := m.Engine().SNATNeeds(time.Now()); len(needs) != 0 {
		t.Fatalf("needs %+v before any demand", needs)
	}
	server := ap("198.18.50.2:443")
	src := netip.AddrPortFrom(dip1, 40000)
	if err := m.vms[0].WritePacket(build(pktSpec{src: src, dst: server, proto: ananta.ProtocolTCP, flags: tcpSYN, seq: 1})); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 5*time.Second, "the SYN held and ports requested", func() bool {
		alloc.mu.Lock()
		defer alloc.mu.Unlock()
		return m.Stats().Held == 1 && alloc.calls > 0
	})
	if n := m.net.Queued(); n != 0 {
		t.Fatalf("%d packets left before ports arrived", n)
	}
	close(alloc.open)
	out := read(t, m.net)
	p := parse(t, out)
	checkSums(t, out)
	if p.Tuple.Src != vipAddr || p.Tuple.Dst != server.Addr() {
		t.Fatalf("released SYN is %s", p.Tuple)
	}
	l, ok := alloc.Owner(vipAddr, p.Tuple.SrcPort)
	if !ok || l.DIP != dip1 || l.Host != hostAddr {
		t.Fatalf("port %d: lease %+v, %v", p.Tuple.SrcPort, l, ok)
	}
	// The SYN-ACK comes back through the Mux's return map to the VM.
	synack := build(pktSpec{src: server, dst: netip.AddrPortFrom(vipAddr, p.Tuple.SrcPort), proto: ananta.ProtocolTCP, flags: tcpSYN | tcpACK, ack: 2})
	m.net.WritePacket(muxReturn(t, alloc.MemAllocator, synack))
	wantTuple(t, read(t, m.vms[0]), server, src)
	st := m.Stats()
	if st.SNATRequests == 0 || st.SNATPortsGranted == 0 || st.HeldReleased != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Losing the lease ends the flow: the allocator no longer renews.
	alloc.mu.Lock()
	alloc.losing = true
	alloc.mu.Unlock()
	m.renewLeases(context.Background())
	if st := m.Stats(); st.SNATLeasesLost == 0 || st.Flows != 0 {
		t.Fatalf("after a lost lease: lost %d, flows %d", st.SNATLeasesLost, st.Flows)
	}
}

func TestAgentSNATIdleRangesGoBack(t *testing.T) {
	testutil.CheckGoroutines(t)
	alloc := newGated(t)
	close(alloc.open)
	m := newMemAgent(t, func(c *Config) { c.Allocator = alloc; c.SNATRenewInterval = 50 * time.Millisecond })
	v := snatVIP()
	v.IdleTimeout = time.Second
	if err := m.SetVIP(v); err != nil {
		t.Fatal(err)
	}
	m.vms[0].WritePacket(build(pktSpec{src: netip.AddrPortFrom(dip1, 40000), dst: ap("198.18.50.2:443"), proto: ananta.ProtocolUDP}))
	read(t, m.net)
	if alloc.PortsHeld(vipAddr, dip1) == 0 {
		t.Fatal("no ports leased")
	}
	// The flow idles out after 1 s, the range a further second later: it
	// goes back to the allocator. Renewals run meanwhile.
	testutil.WaitFor(t, 10*time.Second, "idle ports given back", func() bool { return alloc.PortsHeld(vipAddr, dip1) == 0 })
	// Nothing asks for them again without new demand.
	if needs := m.Engine().SNATNeeds(time.Now()); len(needs) != 0 {
		t.Fatalf("needs %+v right after the idle ranges went back", needs)
	}
	st := m.Stats()
	if st.SNATRangesFreed == 0 || st.SNATLeaseRenewals == 0 || st.SNATPorts != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestConfigValidateNamesField(t *testing.T) {
	up, _ := pipe(t)
	good := Config{
		Engine: EngineConfig{HostAddrs: []netip.Addr{hostAddr}, MuxPrefixes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}},
		Uplink: up,
		VMs:    []VMConfig{{Name: "a", DIPs: []netip.Addr{dip1}, TUN: "t0"}},
	}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for field, mod := range map[string]func(*Config){
		"Engine: " + ErrInvalidConfig.Error() + ": HostAddrs": func(c *Config) { c.Engine.HostAddrs = nil },
		"MuxPrefixes":    func(c *Config) { c.Engine.MuxPrefixes = nil },
		"MaxFlows":       func(c *Config) { c.Engine.MaxFlows = -1 },
		"Uplink":         func(c *Config) { c.Uplink = nil },
		"VMs[0].Name":    func(c *Config) { c.VMs[0].Name = "" },
		"VMs[1].Name":    func(c *Config) { c.VMs = append(c.VMs, VMConfig{Name: "a", DIPs: []netip.Addr{dip2}, TUN: "t1"}) },
		"VMs[1].DIPs":    func(c *Config) { c.VMs = append(c.VMs, VMConfig{Name: "b", DIPs: []netip.Addr{dip1}, TUN: "t1"}) },
		"VMs[0].TUN":     func(c *Config) { c.VMs[0].TUN = "" },
		"TickInterval":   func(c *Config) { c.TickInterval = time.Hour },
		"BufferSize":     func(c *Config) { c.BufferSize = 10 },
		"VMs[0].DIPs[0]": func(c *Config) { c.VMs[0].DIPs = []netip.Addr{{}} },
	} {
		c := good
		c.VMs = append([]VMConfig(nil), good.VMs...)
		mod(&c)
		err := c.Validate()
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: got %v", field, err)
		}
		if _, err := New(c); err == nil {
			t.Errorf("%s: New accepted an invalid config", field)
		}
	}
}

func TestCollector(t *testing.T) {
	m := newMemAgent(t, nil)
	m.SetVIP(webVIP())
	m.net.WritePacket(tunnelled(t, build(pktSpec{src: ap("198.18.1.2:1"), dst: netip.AddrPortFrom(vipAddr, 80), proto: ananta.ProtocolTCP, flags: tcpSYN}), hostAddr))
	read(t, m.vms[0])
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(m.HostAgent); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]float64{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range mt.GetLabel() {
				name += "," + l.GetName() + "=" + l.GetValue()
			}
			if c := mt.GetCounter(); c != nil {
				found[name] = c.GetValue()
			} else if g := mt.GetGauge(); g != nil {
				found[name] = g.GetValue()
			}
		}
	}
	if found["ananta_hostagent_packets_total,direction=inbound,verdict=to_vm"] != 1 || found["ananta_hostagent_flows"] != 1 {
		t.Fatalf("metrics %v", found)
	}
}

func TestAgentManagerStyleUpdates(t *testing.T) {
	alloc := newGated(t)
	close(alloc.open)
	m := newMemAgent(t, func(c *Config) { c.Allocator = alloc })
	if err := m.SetVIP(snatVIP()); err != nil {
		t.Fatal(err)
	}
	// The complete set of the VIP's leases: the local DIPs' and another
	// host's. Each local pool takes its own.
	leases := []SNATLease{
		{Range: ananta.PortRange{First: 2048, Last: 2055}, DIP: dip1, Host: hostAddr},
		{Range: ananta.PortRange{First: 2056, Last: 2063}, DIP: dip2, Host: hostAddr},
		{Range: ananta.PortRange{First: 2064, Last: 2071}, DIP: addr("198.18.200.9"), Host: addr("198.18.4.2")},
	}
	if err := m.SetVIPSNATRanges(vipAddr, leases); err != nil {
		t.Fatal(err)
	}
	for i, d := range []netip.Addr{dip1, dip2} {
		got, _ := m.Engine().SNATRanges(vipAddr, d)
		if len(got) != 1 || got[0] != leases[i].Range {
			t.Fatalf("pool of %s holds %v", d, got)
		}
	}
	// A grant from the allocator survives a stream update that lags behind
	// it; the rest follows the stream.
	m.allocate(context.Background(), poolKey{vipAddr, dip1}, SNATNeed{VIP: vipAddr, DIP: dip1, Ports: 8})
	granted, _ := m.Engine().SNATRanges(vipAddr, dip1)
	if len(granted) != 2 {
		t.Fatalf("pool of dip1 after a grant: %v", granted)
	}
	if err := m.SetVIPSNATRanges(vipAddr, nil); err != nil {
		t.Fatal(err)
	}
	got, _ := m.Engine().SNATRanges(vipAddr, dip1)
	if len(got) != 1 || got[0] == leases[0].Range {
		t.Fatalf("pool of dip1 holds %v, want only the fresh grant", got)
	}
	if got, _ := m.Engine().SNATRanges(vipAddr, dip2); len(got) != 0 {
		t.Fatalf("pool of dip2 holds %v, want none", got)
	}
	// Backend states relayed by a Manager take backends out of new flows.
	syn := func(port uint16) []byte {
		return tunnelled(t, build(pktSpec{src: netip.AddrPortFrom(addr("198.18.1.2"), port), dst: netip.AddrPortFrom(vipAddr, 80), proto: ananta.ProtocolTCP, flags: tcpSYN}), hostAddr)
	}
	for _, d := range []netip.Addr{dip1, dip2} {
		if err := m.SetBackendState(vipAddr, d, 8080, ananta.BackendDraining); err != nil {
			t.Fatal(err)
		}
	}
	b := syn(1000)
	if r := m.Engine().ProcessInbound(b, 0, len(b)); r.Verdict != Drop || r.Reason != DropNoBackend {
		t.Fatalf("new flow while every backend drains: %s (%s)", r.Verdict, r.Reason)
	}
	m.SetBackendState(vipAddr, dip2, 8080, ananta.BackendActive)
	b = syn(1001)
	if r := m.Engine().ProcessInbound(b, 0, len(b)); r.Verdict != ToVM || r.VM != 1 {
		t.Fatalf("new flow with dip2 active again: %s VM %d", r.Verdict, r.VM)
	}
	if err := m.SetBackendState(vipAddr, dip2, 8080, 7); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("bad state: %v", err)
	}
}
