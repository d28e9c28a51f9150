package gobgp_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/routing"
	"github.com/ananta-go/ananta/routing/gobgp"
	"github.com/ananta-go/ananta/routing/internal/muxproc"
)

// TestBIRDInterop: two gobgp Speakers (Muxes, each in its namespace, as
// child processes) peer with BIRD 2 acting as the router in a third
// namespace. BIRD's kernel protocol merges the two paths into one ECMP
// route; withdrawing and closing a Speaker removes its next hop.
func TestBIRDInterop(t *testing.T) {
	testutil.RequirePrivileged(t, "bird", "birdc")
	t.Parallel()
	rns := testutil.NewNetNS(t)
	vip4 := netip.MustParsePrefix("198.19.0.20/32")
	vip6 := netip.MustParsePrefix("2001:db8:19::20/128")
	type mux struct {
		ns                 *testutil.NetNS
		addr4, addr6, rtr4 netip.Addr
		asn                uint32
	}
	var ms []mux
	var birdPeers strings.Builder
	for i := 1; i <= 2; i++ {
		m := mux{
			ns:    testutil.NewNetNS(t),
			addr4: netip.MustParseAddr(fmt.Sprintf("198.18.%d.2", i)),
			addr6: netip.MustParseAddr(fmt.Sprintf("2001:db8:%d::2", i)),
			rtr4:  netip.MustParseAddr(fmt.Sprintf("198.18.%d.1", i)),
			asn:   uint32(65100 + i),
		}
		rIf, mIf := testutil.Veth(t, rns, m.ns, netip.PrefixFrom(m.rtr4, 24), netip.PrefixFrom(m.addr4, 24))
		rns.Run(t, "ip", "addr", "add", fmt.Sprintf("2001:db8:%d::1/64", i), "dev", rIf, "nodad")
		m.ns.Run(t, "ip", "addr", "add", m.addr6.String()+"/64", "dev", mIf, "nodad")
		fmt.Fprintf(&birdPeers, `
protocol bgp mux%d {
	local %s as 65100;
	neighbor %s as %d;
	passive on;
	hold time 3;
	keepalive time 1;
	ipv4 { import all; export none; };
	ipv6 { import all; export none; extended next hop off; };
}
`, i, m.rtr4, m.addr4, m.asn)
		ms = append(ms, m)
	}
	dir := t.TempDir()
	conf := filepath.Join(dir, "bird.conf")
	sock := filepath.Join(dir, "bird.ctl")
	if err := os.WriteFile(conf, []byte(`
router id 198.18.255.2;
log stderr all;
protocol device { }
protocol direct { ipv4; ipv6; }
protocol kernel kernel4 { merge paths yes; ipv4 { import none; export all; }; }
protocol kernel kernel6 { merge paths yes; ipv6 { import none; export all; }; }
`+birdPeers.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	rns.Run(t, "sysctl", "-qw", "net.ipv4.fib_multipath_hash_policy=1", "net.ipv6.fib_multipath_hash_policy=1")
	ctx, cancel := context.WithCancel(context.Background())
	bird := rns.Command(ctx, "bird", "-f", "-c", conf, "-s", sock)
	var birdLog strings.Builder
	bird.Stderr = &birdLog
	if err := bird.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = bird.Wait()
		if t.Failed() {
			t.Logf("bird log:\n%s", birdLog.String())
		}
	})
	testutil.WaitFor(t, 10*time.Second, "bird control socket", func() bool {
		_, err := os.Stat(sock)
		return err == nil
	})

	var procs []*muxproc.Proc
	for _, m := range ms {
		procs = append(procs, muxproc.StartSpeaker(t, m.ns, gobgp.Config{
			ASN: m.asn, RouterID: m.addr4, ListenPort: -1,
			Peers: []gobgp.PeerConfig{{Address: m.rtr4, ASN: 65100}},
		}, []routing.Route{
			{Prefix: vip4, NextHop: m.addr4, Communities: []uint32{65100<<16 | 7}, MED: 20},
			{Prefix: vip6, NextHop: m.addr6},
		}))
	}
	nexthops := func(p netip.Prefix) []string {
		fam := "-4"
		if p.Addr().Is6() {
			fam = "-6"
		}
		out := rns.Run(t, "ip", fam, "route", "show", p.String(), "proto", "bird")
		var nhs []string
		fs := strings.Fields(out)
		for i, f := range fs {
			if f == "via" && i+1 < len(fs) {
				nhs = append(nhs, fs[i+1])
			}
		}
		slices.Sort(nhs)
		return nhs
	}
	waitNexthops := func(timeout time.Duration, p netip.Prefix, want ...string) time.Duration {
		t.Helper()
		slices.Sort(want)
		start := time.Now()
		testutil.WaitFor(t, timeout, fmt.Sprintf("BIRD's kernel route to %s via %v", p, want), func() bool {
			return slices.Equal(nexthops(p), want)
		})
		return time.Since(start)
	}
	waitNexthops(20*time.Second, vip4, ms[0].addr4.String(), ms[1].addr4.String())
	waitNexthops(5*time.Second, vip6, ms[0].addr6.String(), ms[1].addr6.String())
	t.Logf("BIRD namespace kernel:\n%s%s", rns.Run(t, "ip", "-4", "route", "show", vip4.String()), rns.Run(t, "ip", "-6", "route", "show", vip6.String()))
	// BIRD saw the attributes.
	if out := rns.Run(t, "birdc", "-s", sock, "show", "route", "for", vip4.String(), "all"); !strings.Contains(out, "(65100,7)") || !strings.Contains(out, "BGP.med: 20") {
		t.Errorf("BIRD's route lacks the community or MED:\n%s", out)
	}

	if got := procs[0].Send(t, "withdraw "+vip6.String()); got != "ok" {
		t.Fatalf("withdraw: %s", got)
	}
	waitNexthops(2*time.Second, vip6, ms[1].addr6.String())
	start := time.Now()
	if got := procs[0].Send(t, "close"); got != "closed" {
		t.Fatalf("close: %s", got)
	}
	waitNexthops(2*time.Second, vip4, ms[1].addr4.String())
	t.Logf("graceful Close of mux1: BIRD's kernel next hop removed %s after Close was called", time.Since(start))
}
