package hostagent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/packetio"
)

// Addresses of the namespace topology:
//
//	client 198.18.1.2 ── .1.1 router .2.1 ── 198.18.2.2 mux (test helper)
//	                           .3.1
//	                            │
//	                      198.18.3.2 host (Host Agent) ── TUN ── vm 198.18.100.2
//
// The router sends the VIP 198.19.0.10 to the mux, which tunnels it to the
// host; the host's replies go straight to the router.
var (
	nsClient  = netip.MustParseAddr("198.18.1.2")
	nsMux     = netip.MustParseAddr("198.18.2.2")
	nsHost    = netip.MustParseAddr("198.18.3.2")
	nsRouterH = netip.MustParseAddr("198.18.3.1")
	nsDIP     = netip.MustParseAddr("198.18.100.2")
	nsVIP     = netip.MustParseAddr("198.19.0.10")
)

type topo struct {
	client, router, mux, host, vm *testutil.NetNS
	muxIf, hostIf, tun            string
	agent                         *HostAgent
	alloc                         *MemAllocator
	muxh                          *muxHelper
	reports                       chan HealthReport
}

func newTopo(t *testing.T) *topo {
	t.Helper()
	testutil.RequirePrivileged(t)
	tp := &topo{
		client: testutil.NewNetNS(t), router: testutil.NewNetNS(t), mux: testutil.NewNetNS(t),
		host: testutil.NewNetNS(t), vm: testutil.NewNetNS(t), reports: make(chan HealthReport, 64),
	}
	pfx := netip.MustParsePrefix
	_, rtC := testutil.Veth(t, tp.client, tp.router, pfx("198.18.1.2/24"), pfx("198.18.1.1/24"))
	muxIf, rtM := testutil.Veth(t, tp.mux, tp.router, pfx("198.18.2.2/24"), pfx("198.18.2.1/24"))
	hostIf, rtH := testutil.Veth(t, tp.host, tp.router, pfx("198.18.3.2/24"), pfx("198.18.3.1/24"))
	tp.muxIf, tp.hostIf = muxIf, hostIf
	// Tunnel packets are 20 bytes longer than the client's: jumbo links
	// between the router, the mux and the host.
	for _, x := range []struct {
		ns  *testutil.NetNS
		ifc string
	}{{tp.mux, muxIf}, {tp.router, rtM}, {tp.host, hostIf}, {tp.router, rtH}} {
		x.ns.Run(t, "ip", "link", "set", "dev", x.ifc, "mtu", "9000")
	}
	tp.router.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	for _, k := range []string{"all", "default", rtC, rtM, rtH} {
		tp.router.Run(t, "sysctl", "-qw", "net.ipv4.conf."+k+".rp_filter=0")
	}
	tp.router.Run(t, "ip", "route", "add", nsVIP.String()+"/32", "via", nsMux.String())
	tp.client.Run(t, "ip", "route", "add", "198.19.0.0/24", "via", "198.18.1.1")
	// The packet sockets must see wire-sized packets: no GSO on what the
	// router transmits towards them, no GRO where they read.
	for _, x := range []struct {
		ns  *testutil.NetNS
		ifc string
	}{{tp.router, rtM}, {tp.router, rtH}, {tp.mux, muxIf}} {
		if err := x.ns.Do(func() error { return packetio.DisableOffloads(x.ifc) }); err != nil {
			t.Fatal(err)
		}
	}
	var err error
	tp.alloc, err = NewMemAllocator(MemAllocatorConfig{})
	if err != nil {
		t.Fatal(err)
	}
	tp.muxh = startMuxHelper(t, tp.mux, muxIf, tp.router.MAC(t, rtM), tp.alloc)
	up, err := OpenUplink(UplinkConfig{Interface: hostIf, NetNS: tp.host.Path(), NextHop: tp.router.MAC(t, rtH)})
	if err != nil {
		t.Fatal(err)
	}
	tp.tun = "hat" + tp.vm.Name[len(tp.vm.Name)-6:]
	a, err := New(Config{
		Engine: EngineConfig{
			HostAddrs:   []netip.Addr{nsHost},
			MuxPrefixes: []netip.Prefix{pfx("198.18.2.0/24")},
		},
		Uplink:    up,
		VMs:       []VMConfig{{Name: "vm", DIPs: []netip.Addr{nsDIP}, TUN: tp.tun, NetNS: tp.vm.Path()}},
		Allocator: tp.alloc,
		Health: HealthReporterFunc(func(ctx context.Context, r HealthReport) error {
			select {
			case tp.reports <- r:
			default:
			}
			return nil
		}),
		TickInterval: 20 * time.Millisecond,
	})
	if err != nil {
		up.Close()
		t.Fatal(err)
	}
	tp.agent = a
	// The VM configures its NIC, the TUN device the agent made in its
	// namespace.
	tp.vm.Run(t, "ip", "addr", "add", nsDIP.String()+"/32", "dev", tp.tun)
	tp.vm.Run(t, "ip", "link", "set", tp.tun, "up")
	tp.vm.Run(t, "ip", "route", "add", "198.18.1.0/24", "dev", tp.tun)
	errc := make(chan error, 1)
	go func() { errc <- a.Run(context.Background()) }()
	t.Cleanup(func() {
		a.Close()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return tp
}

// muxHelper plays the Mux in the namespaces: it reads what the router sends
// it, tunnels packets to the VIP to the host (the SNAT return map gives the
// host of leased ports, else the VIP's backend host), and counts.
type muxHelper struct {
	port                   *packetio.AFPacket
	toVIP, toVIPBytes      atomic.Uint64
	fromVIP, fromVIPBytes  atomic.Uint64
	alloc                  *MemAllocator
	done                   chan struct{}
	readErr                error
	snatReturns, notTunnel atomic.Uint64
}

func startMuxHelper(t *testing.T, ns *testutil.NetNS, ifname string, router net.HardwareAddr, alloc *MemAllocator) *muxHelper {
	t.Helper()
	h := &muxHelper{alloc: alloc, done: make(chan struct{})}
	if err := ns.Do(func() error {
		var err error
		h.port, err = packetio.OpenAFPacket(packetio.AFPacketConfig{Interface: ifname, NextHop: router, Headroom: encap.OverheadIPv6})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	go h.loop()
	t.Cleanup(func() {
		h.port.Close()
		<-h.done
		if h.readErr != nil && !errors.Is(h.readErr, packetio.ErrClosed) {
			t.Errorf("mux helper: %v", h.readErr)
		}
	})
	return h
}

func (h *muxHelper) loop() {
	defer close(h.done)
	msgs := packetio.NewBatch(32, 9216+64, encap.OverheadIPv6)
	var out []packetio.Message
	for {
		n, err := h.port.ReadBatch(msgs)
		if err != nil {
			h.readErr = err
			return
		}
		out = out[:0]
		for i := range msgs[:n] {
			m := &msgs[i]
			var p encap.Packet
			if encap.Parse(m.Packet(), &p) != nil {
				continue
			}
			if p.Tuple.Src == nsVIP {
				h.fromVIP.Add(1)
				h.fromVIPBytes.Add(uint64(m.N))
			}
			if p.Tuple.Dst != nsVIP {
				continue
			}
			h.toVIP.Add(1)
			h.toVIPBytes.Add(uint64(m.N))
			host := nsHost
			if l, ok := h.alloc.Owner(nsVIP, p.Tuple.DstPort); ok {
				host = l.Host
				h.snatReturns.Add(1)
			}
			start, err := encap.Encap(m.Buf, m.Off, m.Off+p.TotalLen, nsMux, host, encap.EncapOptions{})
			if err != nil {
				continue
			}
			out = append(out, packetio.Message{Buf: m.Buf, Off: start, N: m.Off + p.TotalLen - start})
		}
		for len(out) > 0 {
			k, err := h.port.WriteBatch(out)
			if err == nil {
				break
			}
			out = out[min(k+1, len(out)):]
		}
	}
}

// listen opens a TCP listener inside ns.
func listen(t *testing.T, ns *testutil.NetNS, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func dial(ns *testutil.NetNS, addr string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, 10*time.Second)
		return err
	})
	return c, err
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7+i/251)
	}
	return b
}

func TestNetNS(t *testing.T) {
	testutil.CheckGoroutines(t)
	tp := newTopo(t)
	v := ananta.VIPConfig{
		VIP: nsVIP, Tenant: "t",
		Endpoints: []ananta.EndpointConfig{
			{Protocol: ananta.ProtocolTCP, Port: 80, Backends: []ananta.Backend{{DIP: nsDIP, Port: 8080, Host: nsHost, Weight: 1}}},
			{Protocol: ananta.ProtocolTCP, Port: 81, FloatingIP: true, Backends: []ananta.Backend{{DIP: nsDIP, Host: nsHost, Weight: 1}}},
			{Protocol: ananta.ProtocolTCP, Port: 82, IdleTimeout: time.Second, TCPResetOnIdle: true, Backends: []ananta.Backend{{DIP: nsDIP, Port: 8082, Host: nsHost, Weight: 1}}},
		},
		SNAT: ananta.SNATConfig{Enabled: true, Reserved: []ananta.PortRange{{First: 80, Last: 82}}},
	}
	if err := tp.agent.SetVIP(v); err != nil {
		t.Fatal(err)
	}
	t.Run("InboundDirectServerReturn", func(t *testing.T) { testInboundDSR(t, tp) })
	t.Run("FloatingIP", func(t *testing.T) { testFloatingIP(t, tp) })
	t.Run("SNAT", func(t *testing.T) { testKernelSNAT(t, tp) })
	t.Run("IdleReset", func(t *testing.T) { testIdleReset(t, tp) })
}

// testInboundDSR: a kernel TCP client sends 64 KiB to the VIP and gets
// 1 MiB back from a kernel TCP server in the VM. Everything the client
// sends crosses the mux; nothing the server sends does.
func testInboundDSR(t *testing.T, tp *topo) {
	const up, down = 64 << 10, 1 << 20
	ln := listen(t, tp.vm, "198.18.100.2:8080")
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(30 * time.Second))
		got := make([]byte, up)
		if _, err := io.ReadFull(c, got); err != nil {
			srvErr <- fmt.Errorf("server read: %w", err)
			return
		}
		if !bytes.Equal(got, pattern(up, 1)) {
			srvErr <- errors.New("server got corrupted data")
			return
		}
		if _, err := c.Write(pattern(down, 2)); err != nil {
			srvErr <- fmt.Errorf("server write: %w", err)
			return
		}
		srvErr <- nil
	}()
	muxBytes0, fromVIP0 := tp.muxh.toVIPBytes.Load(), tp.muxh.fromVIP.Load()
	c, err := dial(tp.client, "198.19.0.10:80")
	if err != nil {
		t.Fatalf("dial VIP: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != nsClient.String() {
		t.Fatalf("client address %s", got)
	}
	if _, err := c.Write(pattern(up, 1)); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, down)
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("client read: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(pattern(down, 2)) {
		t.Fatal("client got corrupted data")
	}
	if err := <-srvErr; err != nil {
		t.Fatal(err)
	}
	muxBytes := tp.muxh.toVIPBytes.Load() - muxBytes0
	fromVIP := tp.muxh.fromVIP.Load() - fromVIP0
	t.Logf("mux tunnelled %d bytes of client traffic; the client received %d bytes from the VIP; the mux saw %d packets from the VIP", muxBytes, down, fromVIP)
	if muxBytes < up {
		t.Fatalf("mux carried %d bytes, less than the %d the client sent: the inbound path bypassed it", muxBytes, up)
	}
	// Headers, ACKs and any retransmission stay far below the 1 MiB reply.
	if muxBytes > 3*up {
		t.Fatalf("mux carried %d bytes for %d sent by the client: replies went through it", muxBytes, up)
	}
	if fromVIP != 0 {
		t.Fatalf("the mux saw %d packets from the VIP: replies must go straight to the router", fromVIP)
	}
	st := tp.agent.Stats()
	if st.Inbound.ToVM == 0 || st.Outbound.ToUplink == 0 || st.TxErrors != 0 {
		t.Fatalf("agent stats %+v", st)
	}
}

// testFloatingIP: the VM holds the VIP on its loopback and serves on it.
func testFloatingIP(t *testing.T, tp *topo) {
	tp.vm.Run(t, "ip", "addr", "add", nsVIP.String()+"/32", "dev", "lo")
	defer tp.vm.Run(t, "ip", "addr", "del", nsVIP.String()+"/32", "dev", "lo")
	ln := listen(t, tp.vm, "198.19.0.10:81")
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		fmt.Fprintf(c, "local %s\n", c.LocalAddr())
	}()
	c, err := dial(tp.client, "198.19.0.10:81")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "local 198.19.0.10:81\n" {
		t.Fatalf("server saw %q, want the VIP as its local address", b)
	}
}

// testKernelSNAT: the VM connects to a server outside; the server sees the
// VIP and a leased port; the return traffic comes back through the mux's
// return map.
func testKernelSNAT(t *testing.T, tp *topo) {
	ln := listen(t, tp.client, "198.18.1.2:9000")
	seen := make(chan string, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		seen <- c.RemoteAddr().String()
		io.Copy(c, c)
	}()
	returns0 := tp.muxh.snatReturns.Load()
	c, err := dial(tp.vm, "198.18.1.2:9000")
	if err != nil {
		t.Fatalf("VM dial: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	remote := netip.MustParseAddrPort(<-seen)
	if remote.Addr() != nsVIP {
		t.Fatalf("server sees %s, want the VIP", remote)
	}
	l, ok := tp.alloc.Owner(nsVIP, remote.Port())
	if !ok || l.DIP != nsDIP || l.Host != nsHost {
		t.Fatalf("port %d: lease %+v %v", remote.Port(), l, ok)
	}
	msg := pattern(200<<10, 3)
	go c.Write(msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("echo: %v", err)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("echo corrupted")
	}
	if n := tp.muxh.snatReturns.Load() - returns0; n == 0 {
		t.Fatal("no return traffic crossed the mux's SNAT return map")
	}
	t.Logf("VM %s reached the server as %s (lease %s); %d return packets tunnelled", c.LocalAddr(), remote, l.Range, tp.muxh.snatReturns.Load()-returns0)
}

// testIdleReset: an established connection to an endpoint with a 1 s idle
// timeout and TCPResetOnIdle is reset at both ends by the agent.
func testIdleReset(t *testing.T, tp *topo) {
	ln := listen(t, tp.vm, "198.18.100.2:8082")
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		c.Write([]byte("hello"))
		_, err = c.Read(make([]byte, 10))
		srvErr <- err
	}()
	resets0 := tp.agent.Stats().IdleResets
	c, err := dial(tp.client, "198.19.0.10:82")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 10)
	if n, err := io.ReadAtLeast(c, buf, 5); err != nil || string(buf[:n]) != "hello" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
	// Idle now: both reads end with a reset after about one second.
	start := time.Now()
	_, err = c.Read(buf)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read after idle: %v, want connection reset", err)
	}
	if err := <-srvErr; !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("server read after idle: %v, want connection reset", err)
	}
	t.Logf("reset %s after the last packet", time.Since(start).Round(10*time.Millisecond))
	if n := tp.agent.Stats().IdleResets - resets0; n != 2 {
		t.Fatalf("%d resets sent, want 2", n)
	}
}

func TestNetNSHealthProbes(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.RequirePrivileged(t)
	vm := testutil.NewNetNS(t)
	vm.Run(t, "ip", "addr", "add", "198.18.100.2/32", "dev", "lo")
	up, _ := pipe(t)
	vmPort, _ := pipe(t)
	reports := make(chan HealthReport, 64)
	a, err := New(Config{
		Engine: EngineConfig{HostAddrs: []netip.Addr{nsHost}, MuxPrefixes: []netip.Prefix{netip.MustParsePrefix("198.18.2.0/24")}},
		Uplink: up,
		VMs:    []VMConfig{{Name: "vm", DIPs: []netip.Addr{nsDIP}, Port: vmPort, NetNS: vm.Path()}},
		Health: HealthReporterFunc(func(ctx context.Context, r HealthReport) error { reports <- r; return nil }),
	})
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- a.Run(context.Background()) }()
	defer func() {
		a.Close()
		if err := <-errc; err != nil {
			t.Error(err)
		}
	}()
	const interval = 300 * time.Millisecond
	tcpProbe := &ananta.HealthProbe{Kind: ananta.ProbeTCP, Interval: interval, Timeout: 200 * time.Millisecond, Rise: 2, Fall: 3}
	httpProbe := &ananta.HealthProbe{Kind: ananta.ProbeHTTP, Port: 8090, Path: "/healthz", Interval: interval, Timeout: 200 * time.Millisecond, Rise: 2, Fall: 2}
	v := ananta.VIPConfig{
		VIP: nsVIP, Tenant: "t",
		Endpoints: []ananta.EndpointConfig{
			{Protocol: ananta.ProtocolTCP, Port: 80, Probe: tcpProbe, Backends: []ananta.Backend{{DIP: nsDIP, Port: 8080, Host: nsHost, Weight: 1}}},
			{Protocol: ananta.ProtocolTCP, Port: 443, Probe: httpProbe, Backends: []ananta.Backend{{DIP: nsDIP, Port: 8443, Host: nsHost, Weight: 1}}},
		},
	}
	// The TCP server runs in the VM's namespace, on its DIP only: a probe
	// from any other namespace would fail.
	var ln net.Listener
	listenTCP := func() {
		if err := vm.Do(func() (err error) { ln, err = net.Listen("tcp4", "198.18.100.2:8080"); return err }); err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	listenTCP()
	var status atomic.Int32
	status.Store(200)
	var hln net.Listener
	if err := vm.Do(func() (err error) { hln, err = net.Listen("tcp4", "198.18.100.2:8090"); return err }); err != nil {
		t.Fatal(err)
	}
	var srvWG sync.WaitGroup
	srvWG.Add(1)
	go func() {
		defer srvWG.Done()
		for {
			c, err := hln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				req := make([]byte, 4096)
				n, _ := c.Read(req)
				if !bytes.HasPrefix(req[:n], []byte("GET /healthz HTTP/1.1")) {
					fmt.Fprintf(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
					return
				}
				fmt.Fprintf(c, "HTTP/1.1 %d X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", status.Load())
			}()
		}
	}()
	defer func() { hln.Close(); srvWG.Wait() }()
	if err := a.SetVIP(v); err != nil {
		t.Fatal(err)
	}
	next := func(what string, timeout time.Duration) (HealthReport, time.Duration) {
		t.Helper()
		start := time.Now()
		select {
		case r := <-reports:
			return r, time.Since(start)
		case <-time.After(timeout):
			t.Fatalf("no health report (%s) within %s; health %+v", what, timeout, a.Health())
		}
		return HealthReport{}, 0
	}
	// Both start healthy and stay so: probes succeed.
	testutil.WaitFor(t, 5*time.Second, "both probes running", func() bool {
		h := a.Health()
		return len(h) == 2 && h[0].Healthy && h[1].Healthy
	})
	// Stop the TCP backend: reported down within interval x fall.
	ln.Close()
	r, took := next("tcp down", 10*time.Second)
	limit := time.Duration(tcpProbe.Fall)*interval + interval/2
	t.Logf("tcp backend reported down %s after it stopped (interval %s x fall %d)", took, interval, tcpProbe.Fall)
	if r.Healthy || r.Backend != netip.AddrPortFrom(nsDIP, 8080) || r.Endpoint.Port != 80 || r.Detail == "" {
		t.Fatalf("report %+v", r)
	}
	if took > limit {
		t.Errorf("down reported after %s, want within interval x fall (+ half an interval of slack) = %s", took, limit)
	}
	if a.Engine().Healthy(nsDIP, 8080) {
		t.Fatal("down backend still healthy in the data path")
	}
	// New flows to it are refused locally.
	syn := build(pktSpec{src: ap("198.18.1.2:1000"), dst: netip.AddrPortFrom(nsVIP, 80), proto: ananta.ProtocolTCP, flags: tcpSYN})
	b, s := tunnel(t, syn, nsMux, nsHost)
	if res := a.Engine().ProcessInbound(b, s, len(b)); res.Verdict != Drop || res.Reason != DropNoBackend {
		t.Fatalf("new flow to a down backend: %s (%s)", res.Verdict, res.Reason)
	}
	// Start it again: up after rise successes.
	listenTCP()
	r, took = next("tcp up", 10*time.Second)
	t.Logf("tcp backend reported up %s after it restarted (rise %d)", took, tcpProbe.Rise)
	if !r.Healthy || took > time.Duration(tcpProbe.Rise+1)*interval {
		t.Fatalf("report %+v after %s", r, took)
	}
	ln.Close()
	// The HTTP backend answers 503: down after fall; 200 again: up.
	r, _ = next("tcp down again", 10*time.Second)
	if r.Healthy || r.Endpoint.Port != 80 {
		t.Fatalf("report %+v", r)
	}
	status.Store(503)
	r, took = next("http down", 10*time.Second)
	t.Logf("http backend reported down %s after it answered 503 (fall %d): %s", took, httpProbe.Fall, r.Detail)
	if r.Healthy || r.Endpoint.Port != 443 || r.Backend != netip.AddrPortFrom(nsDIP, 8443) || took > time.Duration(httpProbe.Fall)*interval+interval/2 {
		t.Fatalf("report %+v after %s", r, took)
	}
	status.Store(200)
	r, _ = next("http up", 10*time.Second)
	if !r.Healthy || r.Endpoint.Port != 443 {
		t.Fatalf("report %+v", r)
	}
	if n := a.Stats().HealthChanges; n != 5 {
		t.Fatalf("%d health changes counted, want 5", n)
	}
}
