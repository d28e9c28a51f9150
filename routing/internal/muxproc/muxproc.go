// Package muxproc runs a BGP speaker (a Mux's routing/gobgp Speaker) or a
// routing/router Router as a child process inside a test's network
// namespace: the test binary re-executes itself under `ip netns exec`, so
// every socket and route of the child belongs to that namespace, and killing
// or stopping the child is a real failure. A test package's TestMain calls
// Main first.
//
// The child reads commands from stdin, one per line, and answers each with
// one line on stdout: "state ADDR" (the session state with that
// neighbour), "withdraw PREFIX", "close" (graceful Close, answers "closed"
// and exits). End of input makes it exit at once without withdrawing.
package muxproc

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/routing"
	"github.com/ananta-go/ananta/routing/gobgp"
	"github.com/ananta-go/ananta/routing/router"
)

const (
	envMode   = "ANANTA_ROUTING_MUXPROC"
	envConfig = "ANANTA_ROUTING_MUXPROC_CONFIG"
)

type childConfig struct {
	Speaker gobgp.Config
	Routes  []routing.Route
	Router  router.Config
}

// Main runs the child when the environment asks for it and exits; it
// returns at once otherwise. Call it first in TestMain.
func Main() {
	mode := os.Getenv(envMode)
	if mode == "" {
		return
	}
	if err := child(mode); err != nil {
		fmt.Fprintln(os.Stderr, "muxproc:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func child(mode string) error {
	var cfg childConfig
	if err := json.Unmarshal([]byte(os.Getenv(envConfig)), &cfg); err != nil {
		return err
	}
	lg := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	ctx := context.Background()
	var (
		sp    *gobgp.Speaker
		close func() error
	)
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
		sp, close = s, s.Close
	case "router":
		cfg.Router.Logger = lg
		r, err := router.New(cfg.Router)
		if err != nil {
			return err
		}
		sp, close = r.Speaker(), r.Close
	default:
		return fmt.Errorf("unknown mode %q", mode)
	}
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(strings.TrimSpace(sc.Text()), " ")
		switch cmd {
		case "state":
			a, err := netip.ParseAddr(arg)
			if err != nil {
				fmt.Println("error", err)
				continue
			}
			peers, err := sp.PeerStates(ctx)
			if err != nil {
				fmt.Println("error", err)
				continue
			}
			st := gobgp.StateUnknown
			for _, p := range peers {
				if p.Address == a {
					st = p.State
				}
			}
			fmt.Println(st)
		case "withdraw":
			p, err := netip.ParsePrefix(arg)
			if err == nil {
				err = sp.Withdraw(ctx, p)
			}
			if err != nil {
				fmt.Println("error", err)
				continue
			}
			fmt.Println("ok")
		case "close":
			if err := close(); err != nil {
				fmt.Println("error", err)
				return err
			}
			fmt.Println("closed")
			return nil
		default:
			fmt.Println("error unknown command", cmd)
		}
	}
	return nil // stdin closed: exit without withdrawing
}

// Proc is a running child.
type Proc = testutil.Child

// StartSpeaker starts a child Speaker in ns that announces routes, and
// waits until it is ready.
func StartSpeaker(t testing.TB, ns *testutil.NetNS, cfg gobgp.Config, routes []routing.Route) *Proc {
	t.Helper()
	return start(t, ns, "speaker", childConfig{Speaker: cfg, Routes: routes})
}

// StartRouter starts a child Router in ns and waits until it is ready.
func StartRouter(t testing.TB, ns *testutil.NetNS, cfg router.Config) *Proc {
	t.Helper()
	return start(t, ns, "router", childConfig{Router: cfg})
}

func start(t testing.TB, ns *testutil.NetNS, mode string, cfg childConfig) *Proc {
	t.Helper()
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// Plain TCP listeners: Go's default MPTCP listeners refuse TCP MD5
	// keys (see gobgp.ErrMD5MPTCP).
	return testutil.StartChild(t, ns, testutil.ChildOptions{
		Name: mode + "@" + ns.Name,
		Env:  []string{envMode + "=" + mode, envConfig + "=" + string(js), "GODEBUG=multipathtcp=0"},
	})
}
