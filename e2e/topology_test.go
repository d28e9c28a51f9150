package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/dragonboat"
	"github.com/ananta-go/ananta/hostagent"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/manager"
	"github.com/ananta-go/ananta/manager/agent"
	"github.com/ananta-go/ananta/mux"
	"github.com/ananta-go/ananta/packetio"
)

// Addresses of the topology (all in 198.18.0.0/15):
//
//	client  198.18.1.2  ── 198.18.1.1  router
//	mux i   198.18.2+i.2 ── 198.18.2+i.1 router
//	host i  198.18.11+i.2 ── 198.18.11+i.1 router; its VM's DIP 198.18.101+i.2
//	VIP     198.19.0.10, TCP port 80 -> DIP port 8080 on both VMs, SNAT on
var (
	clientAddr = netip.MustParseAddr("198.18.1.2")
	routerAddr = netip.MustParseAddr("198.18.1.1")
	vip        = netip.MustParseAddr("198.19.0.10")
)

const (
	vipPort     = 80
	backendPort = 8080
	numMuxes    = 2
	numHosts    = 2
	// snatPortsPerDIP is the VIP's SNAT preallocation per DIP.
	snatPortsPerDIP = 8
)

var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// muxNode is one Mux namespace: a mux.Mux on an AF_PACKET port of its link
// to the router, following the Manager through an agent Client.
type muxNode struct {
	ns       *testutil.NetNS
	addr     netip.Addr // the Mux's address, the router's next hop for the VIP
	ifc      string     // its interface towards the router
	mux      *mux.Mux
	watch    *agent.Client
	stopOnce sync.Once
	stopFn   func()
	bgp      *bgpProc // its BGP speaker, with routing
	// ann is the Mux's Config.Announcer, through bgp once routing has
	// started; the Mux announces only after SetSynced(true).
	ann procAnnouncer
}

// stop ends the Mux's data path at once (no withdrawal of anything): its
// packet socket closes and the packets the router still sends it are lost.
func (n *muxNode) stop() { n.stopOnce.Do(n.stopFn) }

// hostNode is one host namespace with a Host Agent and one VM namespace
// attached to it by a TUN device.
type hostNode struct {
	ns, vm *testutil.NetNS
	addr   netip.Addr // the host's address, the backends' Host
	dip    netip.Addr // the VM's address
	ifc    string     // the host's interface towards the router
	agent  *hostagent.HostAgent
	target *hostTarget
	watch  *agent.Client
	server *backend
}

// topology is the whole system of DESIGN.md section 5.
type topology struct {
	client, router *testutil.NetNS
	clientIf       string
	muxes          []*muxNode
	hosts          []*hostNode
	managerAddrs   []string
	conn           *grpc.ClientConn
	vips           api.VIPServiceClient
	snat           api.SNATServiceClient
}

// newTopology builds the namespaces, starts the Manager replicas, the
// Muxes, the Host Agents, their Watch clients and a backend HTTP server in
// each VM, routes the VIP over both Muxes with a static multipath route in
// the router, and creates the VIP through the Manager's API. It returns once
// every Mux and Host Agent has the VIP. Everything is torn down on
// t.Cleanup.
func newTopology(t *testing.T) *topology { t.Helper(); return newTopologyRouting(t, false) }

// newTopologyRouting is newTopology; with bgp, the Muxes announce the VIP
// over BGP (routing/gobgp speakers) and the router installs the ECMP route
// (routing/router) instead of the static route.
func newTopologyRouting(t *testing.T, bgp bool) *topology {
	t.Helper()
	testutil.RequirePrivileged(t, "sysctl", "cat")
	tp := &topology{client: testutil.NewNetNS(t), router: testutil.NewNetNS(t)}
	pfx := netip.MustParsePrefix
	var rtC string
	tp.clientIf, rtC = testutil.Veth(t, tp.client, tp.router, pfx(clientAddr.String()+"/24"), pfx(routerAddr.String()+"/24"))
	tp.client.Run(t, "ip", "route", "add", "198.19.0.0/24", "via", routerAddr.String())
	tp.router.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf."+rtC+".rp_filter=0")

	var muxPrefixes []netip.Prefix
	routerMAC := map[string]net.HardwareAddr{} // by the far end's interface
	link := func(ns *testutil.NetNS, subnet int) (ifc, rt string, addr netip.Addr) {
		addr = netip.AddrFrom4([4]byte{198, 18, byte(subnet), 2})
		gw := netip.AddrFrom4([4]byte{198, 18, byte(subnet), 1})
		ifc, rt = testutil.Veth(t, ns, tp.router, netip.PrefixFrom(addr, 24), netip.PrefixFrom(gw, 24))
		// Tunnel packets are 20 bytes longer than the client's: jumbo
		// links between the router and the Muxes and hosts.
		ns.Run(t, "ip", "link", "set", "dev", ifc, "mtu", "9000")
		tp.router.Run(t, "ip", "link", "set", "dev", rt, "mtu", "9000")
		tp.router.Run(t, "sysctl", "-qw", "net.ipv4.conf."+rt+".rp_filter=0")
		// The packet sockets must see wire-sized packets: no GSO on what
		// the router sends them.
		if err := tp.router.Do(func() error { return packetio.DisableOffloads(rt) }); err != nil {
			t.Fatal(err)
		}
		routerMAC[ifc] = tp.router.MAC(t, rt)
		return ifc, rt, addr
	}
	for i := range numMuxes {
		n := &muxNode{ns: testutil.NewNetNS(t)}
		n.ifc, _, n.addr = link(n.ns, 2+i)
		muxPrefixes = append(muxPrefixes, netip.PrefixFrom(n.addr, 24).Masked())
		// The Mux's kernel must stay out of the VIP's traffic, which its
		// packet socket taps.
		n.ns.Run(t, "ip", "route", "add", "blackhole", "198.19.0.0/24")
		if err := n.ns.Do(func() error { return packetio.DisableOffloads(n.ifc) }); err != nil {
			t.Fatal(err)
		}
		tp.muxes = append(tp.muxes, n)
	}
	for i := range numHosts {
		n := &hostNode{ns: testutil.NewNetNS(t), vm: testutil.NewNetNS(t)}
		n.ifc, _, n.addr = link(n.ns, 11+i)
		n.dip = netip.AddrFrom4([4]byte{198, 18, byte(101 + i), 2})
		tp.hosts = append(tp.hosts, n)
	}
	var hops []string
	for _, m := range tp.muxes {
		hops = append(hops, "nexthop", "via", m.addr.String())
	}
	if !bgp {
		tp.router.Run(t, "ip", append([]string{"route", "add", vip.String() + "/32"}, hops...)...)
	}

	tp.startManager(t)
	for i, m := range tp.muxes {
		tp.startMux(t, i, m, routerMAC[m.ifc])
	}
	for i, h := range tp.hosts {
		tp.startHost(t, i, h, routerMAC[h.ifc], muxPrefixes)
	}
	tp.createVIP(t)
	if bgp {
		tp.startRouting(t)
	}
	return tp
}

// freeAddrs returns n loopback addresses with ports free right now.
func freeAddrs(t testing.TB, n int) []string {
	t.Helper()
	var out []string
	var ls []net.Listener
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().String())
	}
	for _, l := range ls {
		l.Close()
	}
	return out
}

// startManager starts three Manager replicas on Dragonboat on loopback of
// the root namespace (distinct ports, data in t.TempDir) and connects the
// test's API client to the first.
func (tp *topology) startManager(t *testing.T) {
	t.Helper()
	const n = 3
	raft := freeAddrs(t, n)
	members := make(map[uint64]string)
	for i, a := range raft {
		members[uint64(i+1)] = a
	}
	dir := t.TempDir()
	for i := range n {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		tp.managerAddrs = append(tp.managerAddrs, lis.Addr().String())
		dbc := dragonboat.Config{
			ReplicaID: uint64(i + 1), Members: members, Shards: []uint64{1, 2},
			DataDir:        filepath.Join(dir, fmt.Sprint("replica-", i+1)),
			RTTMillisecond: 10, ElectionRTT: 10, HeartbeatRTT: 1, Lightweight: true,
		}
		m, err := manager.New(manager.Config{
			Listener: lis,
			Consensus: func(f consensus.Factory) (consensus.Node, error) {
				return dragonboat.New(dbc, f)
			},
			Logger: quietLogger,
		})
		if err != nil {
			lis.Close()
			t.Fatalf("manager replica %d: %v", i+1, err)
		}
		done := make(chan error, 1)
		go func() { done <- m.Run(context.Background()) }()
		t.Cleanup(func() {
			m.Close()
			if err := <-done; err != nil {
				t.Errorf("manager replica %d: Run: %v", i+1, err)
			}
		})
	}
	conn, err := grpc.NewClient(tp.managerAddrs[0], grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	tp.conn = conn
	tp.vips = api.NewVIPServiceClient(conn)
	tp.snat = api.NewSNATServiceClient(conn)
}

// startWatch runs an agent Client that applies the Manager's configuration
// to target until the test ends.
func (tp *topology) startWatch(t *testing.T, id string, kind agent.Kind, addr netip.Addr, target agent.Target) *agent.Client {
	t.Helper()
	c, err := agent.New(agent.Config{
		Addrs: tp.managerAddrs, ID: id, Kind: kind, Address: addr.String(), Target: target,
		ReportInterval: time.Second, Logger: quietLogger,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(context.Background()) }()
	t.Cleanup(func() {
		c.Close()
		if err := <-done; err != nil {
			t.Errorf("agent %s: Run: %v", id, err)
		}
	})
	return c
}

// startMux opens the Mux's AF_PACKET port in its namespace (reading and
// sending on its one link to the router) and runs the Mux and its Watch
// client.
func (tp *topology) startMux(t *testing.T, i int, n *muxNode, router net.HardwareAddr) {
	t.Helper()
	var port *packetio.AFPacket
	if err := n.ns.Do(func() (err error) {
		port, err = packetio.OpenAFPacket(packetio.AFPacketConfig{Interface: n.ifc, Headroom: mux.Headroom, NextHop: router})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	m, err := mux.New(mux.Config{
		Addr4: n.addr, Links: []mux.Link{{In: port}}, MTU: 9000,
		FlowTableBytes: 4 << 20, Logger: quietLogger,
		Announcer: &n.ann,
	})
	if err != nil {
		port.Close()
		t.Fatal(err)
	}
	n.mux = m
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	n.stopFn = func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("mux %d: Run: %v", i+1, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("mux %d: Run did not return", i+1)
		}
		m.Close()
		port.Close()
	}
	t.Cleanup(n.stop)
	n.watch = tp.startWatch(t, fmt.Sprint("mux-", i+1), agent.KindMux, n.addr, agent.MuxTarget(m))
}

// hostTarget is agent.HostAgentTarget that also records the VIPs it was
// given, so that the test can wait for them.
type hostTarget struct {
	agent.Target
	mu   sync.Mutex
	vips map[netip.Addr]bool
}

func (t *hostTarget) SetVIP(c ananta.VIPConfig) error {
	if err := t.Target.SetVIP(c); err != nil {
		return err
	}
	t.mu.Lock()
	t.vips[c.VIP] = true
	t.mu.Unlock()
	return nil
}

func (t *hostTarget) DeleteVIP(v netip.Addr) error {
	t.mu.Lock()
	delete(t.vips, v)
	t.mu.Unlock()
	return t.Target.DeleteVIP(v)
}

func (t *hostTarget) has(v netip.Addr) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.vips[v]
}

// startHost opens the host's uplink, creates the Host Agent with its VM's
// TUN device in the VM's namespace, configures the VM, starts the backend
// server and the Watch client. The agent leases SNAT ports from the Manager
// over gRPC (agent.SNATClient is a hostagent.PortAllocator).
func (tp *topology) startHost(t *testing.T, i int, n *hostNode, router net.HardwareAddr, muxPrefixes []netip.Prefix) {
	t.Helper()
	up, err := hostagent.OpenUplink(hostagent.UplinkConfig{Interface: n.ifc, NetNS: n.ns.Path(), NextHop: router})
	if err != nil {
		t.Fatal(err)
	}
	tun := "hat" + n.vm.Name[len(n.vm.Name)-9:]
	a, err := hostagent.New(hostagent.Config{
		Engine:       hostagent.EngineConfig{HostAddrs: []netip.Addr{n.addr}, MuxPrefixes: muxPrefixes},
		Uplink:       up,
		VMs:          []hostagent.VMConfig{{Name: fmt.Sprint("vm", i+1), DIPs: []netip.Addr{n.dip}, TUN: tun, NetNS: n.vm.Path()}},
		Allocator:    agent.NewSNATClient(tp.conn),
		TickInterval: 20 * time.Millisecond,
	})
	if err != nil {
		up.Close()
		t.Fatal(err)
	}
	n.agent = a
	n.vm.Run(t, "ip", "addr", "add", n.dip.String()+"/32", "dev", tun)
	n.vm.Run(t, "ip", "link", "set", tun, "up")
	n.vm.Run(t, "ip", "route", "add", "198.18.0.0/16", "dev", tun)
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background()) }()
	t.Cleanup(func() {
		a.Close()
		if err := <-done; err != nil {
			t.Errorf("host agent %d: Run: %v", i+1, err)
		}
	})
	n.server = startBackend(t, n.vm, netip.AddrPortFrom(n.dip, backendPort), fmt.Sprint("vm", i+1))
	n.target = &hostTarget{Target: agent.HostAgentTarget(a), vips: make(map[netip.Addr]bool)}
	n.watch = tp.startWatch(t, fmt.Sprint("host-", i+1), agent.KindHostAgent, n.addr, n.target)
}

// createVIP creates the VIP through the Manager's API, one backend per
// host, SNAT on, and waits until every Mux and Host Agent has it.
func (tp *topology) createVIP(t *testing.T) {
	t.Helper()
	ep := &api.Endpoint{Protocol: api.Protocol_PROTOCOL_TCP, Port: vipPort}
	for _, h := range tp.hosts {
		ep.Backends = append(ep.Backends, &api.Backend{Dip: h.dip.String(), Port: backendPort, Host: h.addr.String(), Weight: 1})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := tp.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: &api.VIPConfig{
		Vip: vip.String(), Tenant: "e2e", Endpoints: []*api.Endpoint{ep},
		// 8 ports preallocated per DIP: a VM that opens more connections
		// makes its Host Agent lease more from the Manager.
		Snat: &api.SNATConfig{Enabled: true, PortsPerDip: snatPortsPerDIP, Reserved: []*api.PortRange{{First: vipPort, Last: vipPort}}},
	}}); err != nil {
		t.Fatalf("CreateVIP: %v", err)
	}
	testutil.WaitFor(t, 20*time.Second, "every Mux and Host Agent to have the VIP", func() bool {
		for _, m := range tp.muxes {
			n := 0
			for _, b := range m.mux.Stats().Backends {
				if b.Endpoint.VIP == vip && b.State == ananta.BackendActive {
					n++
				}
			}
			if n != numHosts {
				return false
			}
		}
		for _, h := range tp.hosts {
			if !h.target.has(vip) {
				return false
			}
		}
		return true
	})
}

// leases lists the VIP's SNAT leases from the Manager.
func (tp *topology) leases(t *testing.T) []*api.Lease {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, err := tp.snat.ListLeases(ctx, &api.ListLeasesRequest{Vip: vip.String()})
	if err != nil {
		t.Fatalf("ListLeases: %v", err)
	}
	return r.GetLeases()
}

// ifStats reads an interface counter (rx_bytes, tx_packets, ...) in ns.
func ifStats(t *testing.T, ns *testutil.NetNS, ifc, counter string) uint64 {
	t.Helper()
	out := ns.Run(t, "cat", "/sys/class/net/"+ifc+"/statistics/"+counter)
	v, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("%s %s: %v", ifc, counter, err)
	}
	return v
}

// nsDialer returns a DialContext that opens its sockets in ns.
func nsDialer(ns *testutil.NetNS) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}
