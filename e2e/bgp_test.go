package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/routing"
	"github.com/ananta-go/ananta/routing/gobgp"
	"github.com/ananta-go/ananta/routing/router"
)

// BGP runs in child processes: GoBGP dials and listens from threads it does
// not control, so a speaker must live in a process inside its namespace.
// The test binary re-executes itself under `ip netns exec` (as
// routing/internal/muxproc does for the routing tests; that package is not
// importable from here). A child reads commands on stdin: "withdraw
// PREFIX" and "announce ROUTE-JSON" answer "ok" or "error ..."; end of
// input makes it exit without withdrawing.
const (
	envChild       = "ANANTA_E2E_BGP_CHILD"
	envChildConfig = "ANANTA_E2E_BGP_CONFIG"
	routerASN      = 65000
)

type childConfig struct {
	Speaker gobgp.Config
	Routes  []routing.Route
	Router  router.Config
}

func TestMain(m *testing.M) {
	if mode := os.Getenv(envChild); mode != "" {
		if err := runChild(mode); err != nil {
			fmt.Fprintln(os.Stderr, "e2e child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runChild(mode string) error {
	var cfg childConfig
	if err := json.Unmarshal([]byte(os.Getenv(envChildConfig)), &cfg); err != nil {
		return err
	}
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx := context.Background()
	var sp *gobgp.Speaker
	switch mode {
	case "speaker":
		cfg.Speaker.Logger = lg
		s, err := gobgp.New(cfg.Speaker)
		if err != nil {
			return err
		}
		for _, r := range cfg.Routes {
			if err := s.Announce(ctx, r); err != nil {
				return err
			}
		}
		sp = s
	case "router":
		cfg.Router.Logger = lg
		r, err := router.New(cfg.Router)
		if err != nil {
			return err
		}
		sp = r.Speaker()
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		var err error
		switch cmd {
		case "withdraw":
			var p netip.Prefix
			if p, err = netip.ParsePrefix(arg); err == nil {
				err = sp.Withdraw(ctx, p)
			}
		case "announce":
			var r routing.Route
			if err = json.Unmarshal([]byte(arg), &r); err == nil {
				err = sp.Announce(ctx, r)
			}
		default:
			fmt.Println("error unknown command", cmd)
			continue
		}
		if err != nil {
			fmt.Println("error", err)
			continue
		}
		fmt.Println("ok")
	}
	return nil
}

// bgpProc is a running child.
type bgpProc = testutil.Child

func startBGP(t *testing.T, ns *testutil.NetNS, mode string, cfg childConfig) *bgpProc {
	t.Helper()
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return testutil.StartChild(t, ns, testutil.ChildOptions{
		Name:    mode + "@" + ns.Name,
		Env:     []string{envChild + "=" + mode, envChildConfig + "=" + string(js)},
		Timeout: 20 * time.Second,
	})
}

// startBGP replaces nothing: call it on a topology built with bgp set. It
// starts the router's speaker (installing ECMP routes) and one speaker per
// Mux announcing the VIP with the Mux as next hop, and waits for the
// router's kernel route to list every Mux.
func (tp *topology) startRouting(t *testing.T) {
	t.Helper()
	rc := router.Config{Speaker: gobgp.Config{ASN: routerASN, RouterID: routerAddr, ListenPort: 179}}
	for i, m := range tp.muxes {
		rc.Speaker.Peers = append(rc.Speaker.Peers, gobgp.PeerConfig{Address: m.addr, ASN: uint32(65001 + i), Passive: true})
	}
	startBGP(t, tp.router, "router", childConfig{Router: rc})
	for i, m := range tp.muxes {
		gw := m.addr.As4()
		gw[3] = 1
		m.bgp = startBGP(t, m.ns, "speaker", childConfig{
			Speaker: gobgp.Config{ASN: uint32(65001 + i), RouterID: m.addr, ListenPort: -1,
				Peers: []gobgp.PeerConfig{{Address: netip.AddrFrom4(gw), ASN: routerASN}}},
			Routes: []routing.Route{{Prefix: netip.PrefixFrom(vip, 32), NextHop: m.addr}},
		})
		m.ann.set(m.bgp)
	}
	testutil.WaitFor(t, 20*time.Second, "the router to install the VIP over every Mux", func() bool {
		return len(tp.nextHops(t)) == len(tp.muxes)
	})
}

// nextHops returns the next hops of the router's kernel route to the VIP.
func (tp *topology) nextHops(t *testing.T) []string {
	t.Helper()
	out, err := tp.router.Output("ip", "route", "show", vip.String()+"/32")
	if err != nil {
		t.Fatal(err)
	}
	var hops []string
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "via" && i+1 < len(f) {
			hops = append(hops, f[i+1])
		}
	}
	return hops
}

// TestKillMux: with BGP, 40 idle established connections spread over both
// Muxes and a stream of new connections; mux1 dies hard: its data path
// closes and its BGP speaker freezes (SIGSTOP: the session goes silent, no
// withdrawal). The router drops mux1's next hop when the hold time (3 s)
// expires; every new connection afterwards succeeds, and the established
// connections are counted as they resume.
func TestKillMux(t *testing.T) {
	testutil.CheckGoroutines(t)
	tp := newTopologyRouting(t, true)
	const conns, fresh = 40, 50
	ks := openKeepAlives(t, tp, conns)
	onMux1 := tp.muxes[0].mux.Stats().VIPs[vip].NewFlows
	client := newClient(tp)
	defer client.CloseIdleConnections()

	// New connections keep coming while mux1 dies.
	stop := make(chan struct{})
	var lost, tried int
	var wg sync.WaitGroup
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
			tried++
			if _, err := get(c, fmt.Sprintf("http://%s/?size=1000", netip.AddrPortFrom(vip, vipPort)), 1000); err != nil {
				lost++
			}
		}
	})
	start := time.Now()
	tp.muxes[0].stop()
	tp.muxes[0].bgp.Signal(t, syscall.SIGSTOP)
	testutil.WaitFor(t, 10*time.Second, "the router to drop the dead Mux", func() bool { return len(tp.nextHops(t)) == 1 })
	detect := time.Since(start)
	close(stop)
	wg.Wait()
	if hops := tp.nextHops(t); len(hops) != 1 || hops[0] != tp.muxes[1].addr.String() {
		t.Fatalf("next hops %v, want only mux2", hops)
	}
	failed := 0
	for i := range fresh {
		if _, err := get(client, fmt.Sprintf("http://%s/?size=1000", netip.AddrPortFrom(vip, vipPort)), 1000); err != nil {
			failed++
			t.Errorf("new connection %d after the failover: %v", i, err)
		}
	}
	broken := 0
	for i, k := range ks {
		if b, err := k.get(4096); err != nil || b != k.backend {
			broken++
			t.Logf("established connection %d: %q %v", i, b, err)
		}
	}
	t.Logf("the router dropped the dead Mux after %s (hold time 3 s); during the outage %d of %d new connections failed (1 s timeout); afterwards %d of %d failed; %d of %d idle established connections (%d on mux1) broke",
		detect.Round(10*time.Millisecond), lost, tried, failed, fresh, broken, conns, onMux1)
	if detect > 4*time.Second {
		t.Errorf("failover took %s, more than the 3 s hold time and 1 s of slack", detect)
	}
	if lost == 0 {
		t.Errorf("no new connection failed while the dead Mux was still routed: the kill was not observed")
	}
}

// procAnnouncer is the routing.Announcer a Mux of the test process uses to
// announce through its namespace's speaker child. The child is set once
// routing has started; before, and for Close (the child belongs to the
// test), it does nothing.
type procAnnouncer struct {
	mu sync.Mutex // serialises commands; guards p
	p  *bgpProc
}

var _ routing.Announcer = (*procAnnouncer)(nil)

func (a *procAnnouncer) set(p *bgpProc) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.p = p
}

func (a *procAnnouncer) command(ctx context.Context, line string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.p == nil {
		return nil
	}
	l, err := a.p.Ask(ctx, line)
	if err != nil {
		return err
	}
	if l != "ok" {
		return fmt.Errorf("%s: %s", a.p.Name(), l)
	}
	return nil
}

func (a *procAnnouncer) Announce(ctx context.Context, r routing.Route) error {
	js, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return a.command(ctx, "announce "+string(js))
}

func (a *procAnnouncer) Withdraw(ctx context.Context, p netip.Prefix) error {
	return a.command(ctx, "withdraw "+p.String())
}

func (a *procAnnouncer) Close() error { return nil }
