package manager_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/memory"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/manager"
	"github.com/ananta-go/ananta/manager/agent"
)

var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// testManager is one Manager on an in-memory consensus node, serving on a
// loopback port of its own, with clients for its services.
type testManager struct {
	*manager.Manager
	addr  string
	conn  *grpc.ClientConn
	vips  api.VIPServiceClient
	snat  api.SNATServiceClient
	agent api.AgentServiceClient
	mem   *memory.Node
}

// wrapNode, if set, wraps the in-memory node (to add latency).
type nodeWrapper func(consensus.Node) consensus.Node

func startManager(t testing.TB, shards []uint64, wrap nodeWrapper, mod func(*manager.Config)) *testManager {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tm := &testManager{addr: lis.Addr().String()}
	cfg := manager.Config{
		Listener: lis,
		Consensus: func(f consensus.Factory) (consensus.Node, error) {
			n, err := memory.New(shards, f)
			if err != nil {
				return nil, err
			}
			tm.mem = n
			if wrap != nil {
				return wrap(n), nil
			}
			return n, nil
		},
		Logger: quietLogger,
	}
	if mod != nil {
		mod(&cfg)
	}
	m, err := manager.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tm.Manager = m
	done := make(chan error, 1)
	go func() { done <- m.Run(context.Background()) }()
	t.Cleanup(func() {
		m.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return after Close")
		}
	})
	tm.conn = dial(t, tm.addr)
	tm.vips = api.NewVIPServiceClient(tm.conn)
	tm.snat = api.NewSNATServiceClient(tm.conn)
	tm.agent = api.NewAgentServiceClient(tm.conn)
	return tm
}

func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// snapshot returns the in-memory node's snapshot of every shard.
func (tm *testManager) snapshot(t testing.TB) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := tm.mem.Snapshot(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// vipConfig returns a valid VIP configuration with n backends.
func vipConfig(vip string, snatOn bool, n int) *api.VIPConfig {
	ep := &api.Endpoint{Protocol: api.Protocol_PROTOCOL_TCP, Port: 80}
	for i := 0; i < n; i++ {
		ep.Backends = append(ep.Backends, &api.Backend{
			Dip: fmt.Sprintf("10.%d.%d.%d", 1+i/62500, (i/250)%250, i%250+1), Port: 8080,
			Host: fmt.Sprintf("198.18.%d.%d", (i/250)%250, i%250+1), Weight: 1,
		})
	}
	return &api.VIPConfig{Vip: vip, Tenant: "tenant", Endpoints: []*api.Endpoint{ep}, Snat: &api.SNATConfig{Enabled: snatOn}}
}

// vipsInShard returns n VIP addresses that the Manager puts in shard.
func vipsInShard(t testing.TB, m *manager.Manager, shard uint64, n int) []string {
	t.Helper()
	var out []string
	for i := 1; len(out) < n && i < 60000; i++ {
		v := fmt.Sprintf("198.19.%d.%d", i/250, i%250+1)
		if s, _ := m.ShardOf(v); s == shard {
			out = append(out, v)
		}
	}
	return out
}

// memTarget is an in-memory agent.Target that records what it applied.
type memTarget struct {
	mu       sync.Mutex
	vips     map[netip.Addr]ananta.VIPConfig
	snat     map[netip.Addr][]agent.SNATRange
	backends map[string]ananta.BackendState
	block    chan struct{} // if non-nil, SetVIP waits for it to close
}

func newMemTarget() *memTarget {
	return &memTarget{vips: make(map[netip.Addr]ananta.VIPConfig), snat: make(map[netip.Addr][]agent.SNATRange), backends: make(map[string]ananta.BackendState)}
}

func (m *memTarget) SetVIP(cfg ananta.VIPConfig) error {
	m.mu.Lock()
	b := m.block
	m.mu.Unlock()
	if b != nil {
		<-b
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.vips[cfg.VIP] = cfg.Clone()
	return nil
}

func (m *memTarget) DeleteVIP(vip netip.Addr) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.vips, vip)
	delete(m.snat, vip)
	return nil
}

func (m *memTarget) SetSNATRanges(vip netip.Addr, ranges []agent.SNATRange) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(ranges) == 0 {
		delete(m.snat, vip)
	} else {
		m.snat[vip] = slices.Clone(ranges)
	}
	return nil
}

func (m *memTarget) SetBackendState(vip, dip netip.Addr, port uint16, state ananta.BackendState) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.backends[fmt.Sprintf("%s/%s:%d", vip, dip, port)] = state
	return nil
}

// summary describes the target's state for comparisons.
func (m *memTarget) summary() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b bytes.Buffer
	for _, v := range slices.SortedFunc(mapKeys(m.vips), netip.Addr.Compare) {
		c := m.vips[v]
		fmt.Fprintf(&b, "vip %s tenant %s endpoints %d backends %d\n", v, c.Tenant, len(c.Endpoints), len(c.Endpoints[0].Backends))
		for _, r := range m.snat[v] {
			fmt.Fprintf(&b, "  snat %s %s %s\n", r.Range, r.DIP, r.Host)
		}
	}
	return b.String()
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// expectedSummary builds the summary a target should reach from the
// Manager's own state (VIPs and leases).
func expectedSummary(t testing.TB, tm *testManager) string {
	t.Helper()
	return expectedFrom(t, tm.vips, tm.snat)
}

// expectedFrom is expectedSummary through the given clients.
func expectedFrom(t testing.TB, vipsC api.VIPServiceClient, snatC api.SNATServiceClient) string {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	var b bytes.Buffer
	var all []*api.VIP
	token := ""
	for {
		l, err := vipsC.ListVIPs(ctx, &api.ListVIPsRequest{PageToken: token, PageSize: 7})
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, l.Vips...)
		if l.NextPageToken == "" {
			break
		}
		token = l.NextPageToken
	}
	for _, v := range all {
		fmt.Fprintf(&b, "vip %s tenant %s endpoints %d backends %d\n", v.Config.Vip, v.Config.Tenant, len(v.Config.Endpoints), len(v.Config.Endpoints[0].Backends))
		if !v.Config.GetSnat().GetEnabled() {
			continue
		}
		ls, err := snatC.ListLeases(ctx, &api.ListLeasesRequest{Vip: v.Config.Vip})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range ls.Leases {
			fmt.Fprintf(&b, "  snat %d-%d %s %s\n", l.Range.First, l.Range.Last, l.Dip, l.Host)
		}
	}
	return b.String()
}

// startAgent runs an agent client against addrs until the test ends.
func startAgent(t testing.TB, id string, kind agent.Kind, target agent.Target, addrs ...string) *agent.Client {
	t.Helper()
	c, err := agent.New(agent.Config{Addrs: addrs, ID: id, Kind: kind, Target: target, Logger: quietLogger, ReportInterval: time.Second, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(context.Background())
	}()
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	return c
}

// waitFor is testutil.WaitFor.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	testutil.WaitFor(t, d, what, cond)
}

func mustParse(s string) netip.Addr { return netip.MustParseAddr(s) }
