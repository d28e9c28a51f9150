package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/internal/netns"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/manager/agent"
	"github.com/ananta-go/ananta/mux"
	"github.com/ananta-go/ananta/packetio"
	"github.com/ananta-go/ananta/routing/gobgp"
)

// A Mux process: the test binary re-executed under `ip netns exec` in a
// Mux's namespace with -test.run=^TestMuxChild$ and its configuration in
// envMuxChild. The whole process lives in the Mux's namespace, so its
// AF_PACKET port and its GoBGP speaker (which dials from threads it does
// not control) are there; only its gRPC connections to the Manager are
// dialled in the namespace the Managers listen in (ManagerNetNS). The
// speaker is the Mux's Config.Announcer: once the Mux has the VIP from the
// Manager the child calls SetSynced(true), the Mux announces the VIP
// (mux.Mux's lifecycle) and the child prints "ready". Commands on stdin: "stats" answers "stats JSON"
// (muxChildStats). End of input (the parent closed it or died) makes it
// withdraw and stop; it also gets SIGKILL when its parent dies
// (Pdeathsig). Protocol lines on stdout carry muxChildPrefix: the testing
// package writes there too.
const (
	envMuxChild    = "ANANTA_E2E_MUX_CHILD"
	muxChildPrefix = "ananta-mux-child: "
)

type muxChildConfig struct {
	ID        string           // the agent's ID
	Interface string           // the Mux's link to the router, in its namespace
	Addr      netip.Addr       // the Mux's address
	NextHop   net.HardwareAddr // the router's MAC on the link
	// Managers are the Manager replicas' gRPC addresses, reachable in the
	// network namespace bound at ManagerNetNS.
	Managers     []string
	ManagerNetNS string
	// The child is ready once its Mux has VIP with Backends active
	// backends.
	VIP      netip.Addr
	Backends int
	// Speaker is the Mux's Announcer.
	Speaker gobgp.Config
}

type muxChildStats struct {
	Forwarded uint64
	NewFlows  uint64 // the VIP's
	Active    int    // the VIP's active backends
	Announced []netip.Prefix
}

func childStats(st mux.Stats, v netip.Addr) muxChildStats {
	s := muxChildStats{Forwarded: st.Forwarded, NewFlows: st.VIPs[v].NewFlows}
	for _, b := range st.Backends {
		if b.Endpoint.VIP == v && b.State == ananta.BackendActive {
			s.Active++
		}
	}
	return s
}

// TestMuxChild is the Mux process's entry point, not a test of its own: it
// skips unless TestKill9Mux started it.
func TestMuxChild(t *testing.T) {
	js, ok := os.LookupEnv(envMuxChild)
	if !ok {
		t.Skip("the Mux process of TestKill9Mux; runs only as its child")
	}
	var cfg muxChildConfig
	if err := json.Unmarshal([]byte(js), &cfg); err != nil {
		t.Fatal(err)
	}
	if err := runMuxChild(cfg); err != nil {
		t.Fatal(err)
	}
}

func runMuxChild(cfg muxChildConfig) error {
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cfg.Speaker.Logger = lg
	sp, err := gobgp.New(cfg.Speaker)
	if err != nil {
		return err
	}
	port, err := packetio.OpenAFPacket(packetio.AFPacketConfig{Interface: cfg.Interface, Headroom: mux.Headroom, NextHop: cfg.NextHop})
	if err != nil {
		sp.Close()
		return err
	}
	// The Mux owns the port and the speaker: Close closes both, after
	// withdrawing the VIP.
	m, err := mux.New(mux.Config{
		Addr4: cfg.Addr, Links: []mux.Link{{In: port}}, MTU: 9000,
		FlowTableBytes: 4 << 20, Logger: lg, Announcer: sp,
	})
	if err != nil {
		port.Close()
		sp.Close()
		return err
	}
	defer m.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		if err := m.Run(ctx); err != nil {
			lg.Error("mux: Run", "err", err)
		}
	})

	dial := func(ctx context.Context, addr string) (c net.Conn, err error) {
		err = netns.Do(cfg.ManagerNetNS, func() (err error) {
			var d net.Dialer
			c, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
	applied := make(chan struct{}, 1)
	w, err := agent.New(agent.Config{
		Addrs: cfg.Managers, ID: cfg.ID, Kind: agent.KindMux, Address: cfg.Addr.String(), Target: agent.MuxTarget(m),
		DialOptions:    []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithContextDialer(dial)},
		ReportInterval: time.Second, Logger: lg,
		OnApplied: func(uint64, uint64) {
			select {
			case applied <- struct{}{}:
			default:
			}
		},
	})
	if err != nil {
		return err
	}
	defer w.Close()
	wg.Go(func() {
		if err := w.Run(ctx); err != nil {
			lg.Error("agent: Run", "err", err)
		}
	})
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	st := func() muxChildStats {
		s := childStats(m.Stats(), cfg.VIP)
		s.Announced = m.Announced()
		return s
	}
	for st().Active != cfg.Backends {
		select {
		case <-applied:
		case <-tick.C:
		case <-deadline.C:
			return fmt.Errorf("no VIP %s with %d active backends from the Manager after 30 s: %+v", cfg.VIP, cfg.Backends, st())
		}
	}
	m.SetSynced(true)
	for !slices.Contains(st().Announced, netip.PrefixFrom(cfg.VIP, 32)) {
		select {
		case <-tick.C:
		case <-deadline.C:
			return fmt.Errorf("the Mux did not announce %s within 30 s: %+v", cfg.VIP, st())
		}
	}
	fmt.Println(muxChildPrefix + "ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch cmd := strings.TrimSpace(sc.Text()); cmd {
		case "stats":
			js, err := json.Marshal(st())
			if err != nil {
				return err
			}
			fmt.Println(muxChildPrefix + "stats " + string(js))
		default:
			fmt.Println(muxChildPrefix + "error unknown command " + cmd)
		}
	}
	return nil
}

// muxProc is a running Mux process.
type muxProc struct {
	*testutil.Child
	ns  *testutil.NetNS
	pid int
}

// startMuxChild starts a Mux process in ns, in a process group of its own,
// and waits until it is ready. It is killed (its whole group) on
// t.Cleanup if still running.
func startMuxChild(t *testing.T, ns *testutil.NetNS, cfg muxChildConfig) *muxProc {
	t.Helper()
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := testutil.StartChild(t, ns, testutil.ChildOptions{
		Name:   "mux process",
		Args:   []string{"-test.run=^TestMuxChild$", "-test.count=1"},
		Env:    []string{envMuxChild + "=" + string(js)},
		Prefix: muxChildPrefix, Setpgid: true, Pdeathsig: syscall.SIGKILL,
		ReadyTimeout: 40 * time.Second, Timeout: 40 * time.Second,
	})
	return &muxProc{Child: c, ns: ns, pid: c.Pid()}
}

func (p *muxProc) stats(t *testing.T) muxChildStats {
	t.Helper()
	l := p.Send(t, "stats")
	js, ok := strings.CutPrefix(l, "stats ")
	var st muxChildStats
	if !ok {
		t.Fatalf("mux process: stats: %q", l)
	}
	if err := json.Unmarshal([]byte(js), &st); err != nil {
		t.Fatalf("mux process: stats %q: %v", js, err)
	}
	return st
}

// kill sends SIGKILL to the Mux process's group: the process dies with
// its data path, Watch client and BGP speaker, and the kernel closes its
// sockets.
func (p *muxProc) kill(t *testing.T) {
	t.Helper()
	p.Kill(t)
}

// wait waits (at most 10 s) for the process to end and returns its status.
func (p *muxProc) wait(t *testing.T) syscall.WaitStatus {
	t.Helper()
	return p.Wait(t, 10*time.Second).Sys().(syscall.WaitStatus)
}

// nsPids lists the processes left in the process's namespace.
func (p *muxProc) nsPids(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "netns", "pids", p.ns.Name).Output()
	if err != nil {
		t.Fatalf("ip netns pids %s: %v", p.ns.Name, err)
	}
	return strings.TrimSpace(string(out))
}
