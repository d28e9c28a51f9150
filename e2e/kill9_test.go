package e2e

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/packetio"
	"github.com/ananta-go/ananta/routing"
	"github.com/ananta-go/ananta/routing/gobgp"
	"github.com/ananta-go/ananta/routing/router"
)

// newKill9Topology is the topology of newTopologyRouting (with BGP) except
// that mux1 is a separate process (muxchild_test.go) holding its whole
// role: its data path, its Watch client and its BGP speaker. The returned
// topology's muxes lists only mux2, the in-process Mux.
func newKill9Topology(t *testing.T) (*topology, *muxProc) {
	t.Helper()
	testutil.RequirePrivileged(t, "sysctl", "cat")
	tp := &topology{client: testutil.NewNetNS(t), router: testutil.NewNetNS(t)}
	pfx := netip.MustParsePrefix
	var rtC string
	tp.clientIf, rtC = testutil.Veth(t, tp.client, tp.router, pfx(clientAddr.String()+"/24"), pfx(routerAddr.String()+"/24"))
	tp.client.Run(t, "ip", "route", "add", "198.19.0.0/24", "via", routerAddr.String())
	tp.router.Run(t, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.fib_multipath_hash_policy=1",
		"net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0", "net.ipv4.conf."+rtC+".rp_filter=0")

	// The links as in newTopologyRouting.
	link := func(ns *testutil.NetNS, subnet int) (ifc string, routerMAC net.HardwareAddr, addr netip.Addr) {
		addr = netip.AddrFrom4([4]byte{198, 18, byte(subnet), 2})
		gw := netip.AddrFrom4([4]byte{198, 18, byte(subnet), 1})
		ifc, rt := testutil.Veth(t, ns, tp.router, netip.PrefixFrom(addr, 24), netip.PrefixFrom(gw, 24))
		ns.Run(t, "ip", "link", "set", "dev", ifc, "mtu", "9000")
		tp.router.Run(t, "ip", "link", "set", "dev", rt, "mtu", "9000")
		tp.router.Run(t, "sysctl", "-qw", "net.ipv4.conf."+rt+".rp_filter=0")
		if err := tp.router.Do(func() error { return packetio.DisableOffloads(rt) }); err != nil {
			t.Fatal(err)
		}
		return ifc, tp.router.MAC(t, rt), addr
	}
	var muxes []*muxNode
	var macs []net.HardwareAddr
	var muxPrefixes []netip.Prefix
	for i := range numMuxes {
		n := &muxNode{ns: testutil.NewNetNS(t)}
		var mac net.HardwareAddr
		n.ifc, mac, n.addr = link(n.ns, 2+i)
		muxPrefixes = append(muxPrefixes, netip.PrefixFrom(n.addr, 24).Masked())
		n.ns.Run(t, "ip", "route", "add", "blackhole", "198.19.0.0/24")
		if err := n.ns.Do(func() error { return packetio.DisableOffloads(n.ifc) }); err != nil {
			t.Fatal(err)
		}
		muxes, macs = append(muxes, n), append(macs, mac)
	}
	var hostMACs []net.HardwareAddr
	for i := range numHosts {
		n := &hostNode{ns: testutil.NewNetNS(t), vm: testutil.NewNetNS(t)}
		var mac net.HardwareAddr
		n.ifc, mac, n.addr = link(n.ns, 11+i)
		n.dip = netip.AddrFrom4([4]byte{198, 18, byte(101 + i), 2})
		tp.hosts, hostMACs = append(tp.hosts, n), append(hostMACs, mac)
	}

	tp.startManager(t)
	tp.startMux(t, 1, muxes[1], macs[1])
	tp.muxes = []*muxNode{muxes[1]}
	for i, h := range tp.hosts {
		tp.startHost(t, i, h, hostMACs[i], muxPrefixes)
	}
	tp.createVIP(t) // waits for mux2 and the Host Agents

	rc := router.Config{Speaker: gobgp.Config{ASN: routerASN, RouterID: routerAddr, ListenPort: 179}}
	for i, m := range muxes {
		rc.Speaker.Peers = append(rc.Speaker.Peers, gobgp.PeerConfig{Address: m.addr, ASN: uint32(65001 + i), Passive: true})
	}
	startBGP(t, tp.router, "router", childConfig{Router: rc})
	speaker := func(i int) (gobgp.Config, []routing.Route) {
		gw := muxes[i].addr.As4()
		gw[3] = 1
		return gobgp.Config{ASN: uint32(65001 + i), RouterID: muxes[i].addr, ListenPort: -1,
				Peers: []gobgp.PeerConfig{{Address: netip.AddrFrom4(gw), ASN: routerASN}}},
			[]routing.Route{{Prefix: netip.PrefixFrom(vip, 32), NextHop: muxes[i].addr}}
	}
	sp, routes := speaker(1)
	muxes[1].bgp = startBGP(t, muxes[1].ns, "speaker", childConfig{Speaker: sp, Routes: routes})
	sp, _ = speaker(0)
	m1 := startMuxChild(t, muxes[0].ns, muxChildConfig{
		ID: "mux-1", Interface: muxes[0].ifc, Addr: muxes[0].addr, NextHop: macs[0],
		Managers: tp.managerAddrs, ManagerNetNS: fmt.Sprintf("/proc/%d/ns/net", syscall.Getpid()),
		VIP: vip, Backends: numHosts, Speaker: sp,
	})
	testutil.WaitFor(t, 20*time.Second, "the router to install the VIP over both Muxes", func() bool {
		return len(tp.nextHops(t)) == numMuxes
	})
	return tp, m1
}

// TestKill9Mux: with BGP, 40 idle established connections spread over both
// Muxes and a stream of new connections; mux1 is a separate process (its
// data path on AF_PACKET, its Watch client, its GoBGP speaker as the Mux's
// Announcer) and its process group gets SIGKILL, as when its host dies. The kernel closes the dead speaker's TCP
// session, so the router drops mux1's next hop well before the hold time
// (3 s); every new connection started after that succeeds; the established
// connections are counted as they resume through mux2 (same Maglev tables
// and seed) or break.
func TestKill9Mux(t *testing.T) {
	testutil.CheckGoroutines(t)
	tp, m1 := newKill9Topology(t)
	m2 := tp.muxes[0]
	const conns, fresh, afterLoad = 40, 50, 20
	ks := openKeepAlives(t, tp, conns)
	onMux1 := m1.stats(t).NewFlows
	mux2Flows := m2.mux.Stats().VIPs[vip].NewFlows
	t.Logf("mux1 (pid %d) carries %d and mux2 %d of the %d established connections", m1.pid, onMux1, mux2Flows, conns)
	if onMux1 == 0 || mux2Flows == 0 {
		t.Fatalf("the established connections are not spread over both Muxes (%d, %d)", onMux1, mux2Flows)
	}

	// New connections keep coming while mux1 dies.
	type attempt struct {
		at  time.Time
		err error
	}
	var (
		mu       sync.Mutex
		attempts []attempt
		wg       sync.WaitGroup
		stop     = make(chan struct{})
		stopOnce sync.Once
	)
	stopLoad := func() { stopOnce.Do(func() { close(stop) }); wg.Wait() }
	defer stopLoad()
	wg.Go(func() {
		c := newClient(tp)
		c.Timeout = time.Second
		defer c.CloseIdleConnections()
		for {
			select {
			case <-stop:
				return
			default:
			}
			at := time.Now()
			_, err := get(c, fmt.Sprintf("http://%s/?size=1000", netip.AddrPortFrom(vip, vipPort)), 1000)
			mu.Lock()
			attempts = append(attempts, attempt{at, err})
			mu.Unlock()
		}
	})
	startedSince := func(since time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, a := range attempts {
			if !a.at.Before(since) {
				n++
			}
		}
		return n
	}
	testutil.WaitFor(t, 20*time.Second, "the new-connection load to run", func() bool { return startedSince(time.Time{}) >= 10 })

	start := time.Now()
	m1.kill(t)
	testutil.WaitFor(t, 10*time.Second, "the router to drop the killed Mux", func() bool { return len(tp.nextHops(t)) == 1 })
	removed := time.Now()
	detect := removed.Sub(start)
	if hops := tp.nextHops(t); len(hops) != 1 || hops[0] != m2.addr.String() {
		t.Fatalf("next hops %v, want only mux2 %s", hops, m2.addr)
	}
	ws := m1.wait(t)
	if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Errorf("the Mux process ended with %v, want killed by SIGKILL", ws)
	}
	if pids := m1.nsPids(t); pids != "" {
		t.Errorf("processes left in mux1's namespace after the kill: %q", pids)
	}
	testutil.WaitFor(t, 30*time.Second, "new connections after the route removal", func() bool { return startedSince(removed) >= afterLoad })
	stopLoad()

	var lost, tried, lostAfter, triedAfter int
	for _, a := range attempts {
		if !a.at.Before(removed) {
			triedAfter++
			if a.err != nil {
				lostAfter++
				t.Errorf("new connection started %s after the route removal failed: %v", a.at.Sub(removed).Round(time.Millisecond), a.err)
			}
			continue
		}
		// Those started up to the 1 s timeout before the kill may have
		// been in flight when it came.
		if !a.at.Before(start.Add(-time.Second)) {
			tried++
			if a.err != nil {
				lost++
			}
		}
	}
	client := newClient(tp)
	defer client.CloseIdleConnections()
	failed := 0
	for i := range fresh {
		if _, err := get(client, fmt.Sprintf("http://%s/?size=1000", netip.AddrPortFrom(vip, vipPort)), 1000); err != nil {
			failed++
			t.Errorf("new connection %d after the failover: %v", i, err)
		}
	}
	broken := 0
	for i, k := range ks {
		b, err := k.get(4096)
		switch {
		case err != nil:
			broken++
			t.Logf("established connection %d broke: %v", i, err)
		case b != k.backend:
			broken++
			t.Logf("established connection %d answered by %s after the kill, by %s before", i, b, k.backend)
		}
	}
	moved := m2.mux.Stats().VIPs[vip].NewFlows - mux2Flows
	t.Logf("SIGKILL of the Mux process: the router removed its next hop after %s (hold time %s); new connections: %d of %d in flight at the kill or started before the removal failed (1 s timeout), %d of %d started after it failed, %d of %d sequential ones afterwards failed; established: %d of %d broke (%d were on mux1); mux2 took %d new flows",
		detect.Round(time.Millisecond), gobgp.DefaultHoldTime, lost, tried, lostAfter, triedAfter, failed, fresh, broken, conns, onMux1, moved)
	if detect >= gobgp.DefaultHoldTime {
		t.Errorf("the router took %s to drop the killed Mux, not less than the %s hold time: the session's close was not seen", detect, gobgp.DefaultHoldTime)
	}
	if uint64(broken) > onMux1 {
		t.Errorf("%d established connections broke, more than the %d mux1 carried: connections through mux2 broke", broken, onMux1)
	}
	if moved < uint64(fresh+triedAfter) {
		t.Errorf("mux2 took %d new flows, fewer than the %d new connections after the failover", moved, fresh+triedAfter)
	}
}
