package agent_test

import (
	"context"
	"net/netip"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/hostagent"
	"github.com/ananta-go/ananta/manager/agent"
	"github.com/ananta-go/ananta/mux"
)

// muxTarget adapts a mux.Mux to agent.Target: only the SNAT range type
// differs.
type muxTarget struct{ m *mux.Mux }

func (t muxTarget) SetVIP(c ananta.VIPConfig) error { return t.m.SetVIP(c) }
func (t muxTarget) DeleteVIP(v netip.Addr) error    { return t.m.DeleteVIP(v) }
func (t muxTarget) SetBackendState(v, d netip.Addr, p uint16, s ananta.BackendState) error {
	return t.m.SetBackendState(v, d, p, s)
}
func (t muxTarget) SetSNATRanges(v netip.Addr, rs []agent.SNATRange) error {
	out := make([]mux.SNATRange, len(rs))
	for i, r := range rs {
		out[i] = mux.SNATRange{Range: r.Range, DIP: r.DIP, Host: r.Host}
	}
	return t.m.SetSNATRanges(v, out)
}

// hostAgentTarget adapts a hostagent.HostAgent to agent.Target: it keeps
// the SNAT ranges of the DIPs of its own host, per DIP, and ignores
// backend states (the Host Agent probes its DIPs itself).
type hostAgentTarget struct {
	ha   *hostagent.HostAgent
	host netip.Addr
	mu   sync.Mutex
	dips map[netip.Addr]map[netip.Addr]bool // vip -> DIPs given ranges
}

func (t *hostAgentTarget) SetVIP(c ananta.VIPConfig) error { return t.ha.SetVIP(c) }
func (t *hostAgentTarget) DeleteVIP(v netip.Addr) error {
	t.mu.Lock()
	delete(t.dips, v)
	t.mu.Unlock()
	return t.ha.DeleteVIP(v)
}
func (t *hostAgentTarget) SetBackendState(netip.Addr, netip.Addr, uint16, ananta.BackendState) error {
	return nil
}
func (t *hostAgentTarget) SetSNATRanges(v netip.Addr, rs []agent.SNATRange) error {
	byDIP := make(map[netip.Addr][]ananta.PortRange)
	for _, r := range rs {
		if r.Host == t.host {
			byDIP[r.DIP] = append(byDIP[r.DIP], r.Range)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for d := range t.dips[v] {
		if _, still := byDIP[d]; !still {
			byDIP[d] = nil // its ranges are gone
		}
	}
	if t.dips == nil {
		t.dips = make(map[netip.Addr]map[netip.Addr]bool)
	}
	t.dips[v] = make(map[netip.Addr]bool)
	for d, ranges := range byDIP {
		if len(ranges) > 0 {
			t.dips[v][d] = true
		}
		if err := t.ha.SetSNATRanges(v, d, ranges); err != nil {
			return err
		}
	}
	return nil
}

// The interfaces fit.
var (
	_ agent.Target            = muxTarget{}
	_ agent.Target            = (*hostAgentTarget)(nil)
	_ hostagent.PortAllocator = (*agent.SNATClient)(nil)
)

// A Mux follows the Manager through a Client.
func Example() {
	var m *mux.Mux // built with mux.New
	c, err := agent.New(agent.Config{
		Addrs:  []string{"127.0.0.1:7000", "127.0.0.2:7000", "127.0.0.3:7000"},
		ID:     "mux-1",
		Kind:   agent.KindMux,
		Target: muxTarget{m},
	})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // a real daemon runs until it is told to stop
	c.Run(ctx)
}

// A Host Agent leases its SNAT ports from the Manager.
func ExampleSNATClient() {
	conn, err := grpc.NewClient("127.0.0.1:7000", grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	var alloc hostagent.PortAllocator = agent.NewSNATClient(conn)
	_ = alloc // hostagent.Config's allocator
}
