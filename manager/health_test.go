package manager_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/hostagent"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/manager/agent"
	"github.com/ananta-go/ananta/mux"
	"github.com/ananta-go/ananta/packetio"
)

// TestHostAgentHealthReachesMux: a real Host Agent follows the Manager
// (agent.HostAgentTarget), probes its DIP with TCP, and reports through
// agent.HealthClient; the Manager relays the change to a real Mux
// (agent.MuxTarget), which marks the backend down, then active again when
// the DIP's server is back.
func TestHostAgentHealthReachesMux(t *testing.T) {
	testutil.CheckGoroutines(t)
	tm := startManager(t, []uint64{1, 2}, nil, nil)
	ctx := ctxT(t, 60*time.Second)

	// The DIP's server: a loopback address the Host Agent probes in its own
	// namespace.
	dip := netip.MustParseAddr("127.0.0.2")
	ln, err := net.Listen("tcp4", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	serve := func(ln net.Listener) {
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
	serve(ln)

	m, err := mux.New(mux.Config{Addr4: netip.MustParseAddr("198.18.255.1"), FlowTableBytes: 1 << 20, Logger: quietLogger})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	startAgent(t, "mux-1", agent.KindMux, agent.MuxTarget(m), tm.addr)

	host := netip.MustParseAddr("198.18.20.2")
	pipe := func() *packetio.Mem {
		a, b, err := packetio.Pipe(packetio.MemConfig{QueueLen: 64, MaxPacket: 2048})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return a
	}
	ha, err := hostagent.New(hostagent.Config{
		Engine: hostagent.EngineConfig{HostAddrs: []netip.Addr{host}, MuxPrefixes: []netip.Prefix{netip.MustParsePrefix("198.18.255.0/24")}},
		Uplink: pipe(),
		VMs:    []hostagent.VMConfig{{Name: "vm", DIPs: []netip.Addr{dip}, Port: pipe()}},
		Health: agent.NewHealthClient(tm.conn, "ha-1"),
		Logger: quietLogger,
	})
	if err != nil {
		t.Fatal(err)
	}
	haDone := make(chan error, 1)
	go func() { haDone <- ha.Run(context.Background()) }()
	defer func() {
		ha.Close()
		if err := <-haDone; err != nil {
			t.Error(err)
		}
	}()
	startAgent(t, "ha-1", agent.KindHostAgent, agent.HostAgentTarget(ha), tm.addr)

	const vip = "198.19.0.90"
	cfg := &api.VIPConfig{Vip: vip, Tenant: "t", Endpoints: []*api.Endpoint{{
		Protocol: api.Protocol_PROTOCOL_TCP, Port: 80,
		Backends: []*api.Backend{{Dip: dip.String(), Port: uint32(port), Host: host.String(), Weight: 1}},
	}}, Probe: &api.HealthProbe{
		Kind: api.ProbeKind_PROBE_KIND_TCP, Interval: durationpb.New(200 * time.Millisecond),
		Timeout: durationpb.New(100 * time.Millisecond), Rise: 2, Fall: 2,
	}}
	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: cfg}); err != nil {
		t.Fatal(err)
	}

	backend := netip.AddrPortFrom(dip, port)
	state := func() (ananta.BackendState, bool) {
		for _, b := range m.Stats().Backends {
			if b.Endpoint.VIP.String() == vip && b.DIP == backend {
				return b.State, true
			}
		}
		return 0, false
	}
	probed := func(healthy bool) bool {
		for _, h := range ha.Health() {
			if h.DIP == dip && h.Port == port && h.Healthy == healthy {
				return true
			}
		}
		return false
	}
	testutil.WaitFor(t, 10*time.Second, "the Host Agent probing the DIP as healthy", func() bool { return probed(true) })
	testutil.WaitFor(t, 10*time.Second, "the Mux to have the backend active", func() bool { s, ok := state(); return ok && s == ananta.BackendActive })

	ln.Close()
	testutil.WaitFor(t, 10*time.Second, "the Mux to mark the stopped backend down", func() bool { s, _ := state(); return s == ananta.BackendDown })

	ln2, err := net.Listen("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	serve(ln2)
	testutil.WaitFor(t, 10*time.Second, "the Mux to mark the restarted backend active", func() bool { s, _ := state(); return s == ananta.BackendActive })
}
