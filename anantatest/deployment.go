package anantatest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/memory"
	"github.com/ananta-go/ananta/hostagent"
	"github.com/ananta-go/ananta/manager"
	"github.com/ananta-go/ananta/manager/agent"
	"github.com/ananta-go/ananta/mux"
	"github.com/ananta-go/ananta/packetio"
)

// Options configures a Deployment. The zero value of each field but Hosts
// selects a default.
type Options struct {
	// Muxes is the number of Muxes; default 2.
	Muxes int
	// Hosts are the Host Agents; host i gets address HostAddr(i). At least
	// one is required.
	Hosts []Host
	// Shards is the number of Manager shards; default 2.
	Shards int
	// FlowTableBytes is each Mux's flow-table quota; default 4 MiB (about
	// 87,000 flows).
	FlowTableBytes int
	// Handler, if set, answers for every VM (see Handler).
	Handler Handler
	// SyncTimeout bounds the wait for the agents to apply a change
	// (Sync); default 10 s.
	SyncTimeout time.Duration
	// Logger receives the components' logs; nil discards them.
	Logger *slog.Logger
}

// Host is one Host Agent: its VMs, one per DIP.
type Host struct {
	// DIPs are the host's VM addresses; VM number i holds DIPs[i]. A DIP
	// belongs to one host only.
	DIPs []netip.Addr
}

// Handler answers packets delivered to a VM, as the VM's network stack
// would: pkt is the packet as the VM received it (destination DIP:port after
// the Host Agent's NAT), and the returned packet, if not nil, is what the VM
// sends back. Reply builds a typical answer. A Handler must be safe for
// concurrent use.
type Handler func(vm netip.Addr, pkt []byte) []byte

// MuxPrefix holds the Muxes' addresses; Host Agents accept tunnel packets
// from it only.
var MuxPrefix = netip.MustParsePrefix("198.18.254.0/24")

// HostAddr returns the address of host number i.
func HostAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(i / 250), byte(i%250 + 1)})
}

// MuxAddr returns the address of Mux number i.
func MuxAddr(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, 254, byte(i + 1)})
}

// Deployment is a running in-memory deployment. Its methods are safe for
// concurrent use. It is closed when the test ends (t.Cleanup).
type Deployment struct {
	t       testing.TB
	opts    Options
	mgr     *manager.Manager
	conn    *grpc.ClientConn
	vips    api.VIPServiceClient
	muxes   []*mux.Mux
	hosts   []*hostagent.HostAgent
	clients []*agent.Client
	hostOf  map[netip.Addr]int // host address -> host number
	dipHost map[netip.Addr]int // DIP -> host number
	vmDIP   [][]netip.Addr     // host number -> VM number -> DIP
}

// NewDeployment starts a deployment and registers its shutdown with
// t.Cleanup. It fails the test if a component does not start or an agent
// does not get the Manager's first snapshot within Options.SyncTimeout.
func NewDeployment(t testing.TB, opts Options) *Deployment {
	t.Helper()
	if opts.Muxes == 0 {
		opts.Muxes = 2
	}
	if opts.Shards == 0 {
		opts.Shards = 2
	}
	if opts.FlowTableBytes == 0 {
		opts.FlowTableBytes = 4 << 20
	}
	if opts.SyncTimeout == 0 {
		opts.SyncTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if len(opts.Hosts) == 0 || len(opts.Hosts) > 250*250 {
		t.Fatalf("anantatest: Options.Hosts: want 1 to %d hosts, got %d", 250*250, len(opts.Hosts))
	}
	if opts.Muxes < 0 || opts.Muxes > 254 {
		t.Fatalf("anantatest: Options.Muxes: want 1 to 254, got %d", opts.Muxes)
	}
	d := &Deployment{t: t, opts: opts, hostOf: map[netip.Addr]int{}, dipHost: map[netip.Addr]int{}}
	var closers []func()
	t.Cleanup(func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	})

	// Manager.
	shards := make([]uint64, opts.Shards)
	for i := range shards {
		shards[i] = uint64(i + 1)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("anantatest: %v", err)
	}
	addr := lis.Addr().String()
	m, err := manager.New(manager.Config{
		Listener: lis,
		Consensus: func(f consensus.Factory) (consensus.Node, error) {
			return memory.New(shards, f)
		},
		Logger: opts.Logger,
	})
	if err != nil {
		lis.Close()
		t.Fatalf("anantatest: manager: %v", err)
	}
	d.mgr = m
	runDone := make(chan error, 1)
	go func() { runDone <- m.Run(context.Background()) }()
	closers = append(closers, func() {
		m.Close()
		select {
		case err := <-runDone:
			if err != nil {
				t.Errorf("anantatest: manager Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("anantatest: manager Run did not return after Close")
		}
	})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("anantatest: %v", err)
	}
	closers = append(closers, func() { conn.Close() })
	d.conn = conn
	d.vips = api.NewVIPServiceClient(conn)

	startAgent := func(id string, kind agent.Kind, self netip.Addr, target agent.Target) {
		c, err := agent.New(agent.Config{
			Addrs: []string{addr}, ID: id, Kind: kind, Address: self.String(), Target: target,
			Logger: opts.Logger, ReportInterval: time.Second,
			MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
		})
		if err != nil {
			t.Fatalf("anantatest: agent %s: %v", id, err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.Run(context.Background())
		}()
		closers = append(closers, func() { c.Close(); <-done })
		d.clients = append(d.clients, c)
	}

	// Muxes.
	for i := 0; i < opts.Muxes; i++ {
		mx, err := mux.New(mux.Config{Addr4: MuxAddr(i), FlowTableBytes: opts.FlowTableBytes, Logger: opts.Logger})
		if err != nil {
			t.Fatalf("anantatest: mux %d: %v", i, err)
		}
		closers = append(closers, func() { mx.Close() })
		d.muxes = append(d.muxes, mx)
		startAgent(fmt.Sprintf("mux-%d", i), agent.KindMux, MuxAddr(i), agent.MuxTarget(mx))
	}

	// Host Agents.
	pipe := func() (a, b *packetio.Mem) {
		a, b, err := packetio.Pipe(packetio.MemConfig{QueueLen: 4, MaxPacket: 2048})
		if err != nil {
			t.Fatalf("anantatest: %v", err)
		}
		closers = append(closers, func() { a.Close(); b.Close() })
		return a, b
	}
	for i, h := range opts.Hosts {
		self := HostAddr(i)
		uplink, _ := pipe()
		cfg := hostagent.Config{
			Engine: hostagent.EngineConfig{HostAddrs: []netip.Addr{self}, MuxPrefixes: []netip.Prefix{MuxPrefix}, Logger: opts.Logger},
			Uplink: uplink,
			Logger: opts.Logger,
		}
		for v, dip := range h.DIPs {
			if j, dup := d.dipHost[dip]; dup {
				t.Fatalf("anantatest: Options.Hosts[%d].DIPs[%d]: %v already on host %d", i, v, dip, j)
			}
			d.dipHost[dip] = i
			port, _ := pipe()
			cfg.VMs = append(cfg.VMs, hostagent.VMConfig{Name: fmt.Sprintf("host%d-vm%d", i, v), DIPs: []netip.Addr{dip}, Port: port})
		}
		ha, err := hostagent.New(cfg)
		if err != nil {
			t.Fatalf("anantatest: host agent %d: %v", i, err)
		}
		closers = append(closers, func() { ha.Close() })
		d.hosts = append(d.hosts, ha)
		d.hostOf[self] = i
		d.vmDIP = append(d.vmDIP, append([]netip.Addr(nil), h.DIPs...))
		startAgent(fmt.Sprintf("host-%d", i), agent.KindHostAgent, self, agent.HostAgentTarget(ha))
	}

	// Every agent has the Manager's snapshot of every shard.
	deadline := time.Now().Add(opts.SyncTimeout)
	for _, c := range d.clients {
		for len(c.Versions()) < len(shards) {
			if time.Now().After(deadline) {
				t.Fatalf("anantatest: an agent got no snapshot of every shard within %v", opts.SyncTimeout)
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
	return d
}

// VIPs returns a client of the Manager's VIP service, the API a cloud
// controller uses. Call Sync after a change made through it.
func (d *Deployment) VIPs() api.VIPServiceClient { return d.vips }

// Conn returns the connection to the Manager, for the other services
// (api.NewSNATServiceClient, api.NewAgentServiceClient).
func (d *Deployment) Conn() grpc.ClientConnInterface { return d.conn }

// Manager returns the Manager.
func (d *Deployment) Manager() *manager.Manager { return d.mgr }

// Mux returns Mux number i.
func (d *Deployment) Mux(i int) *mux.Mux { return d.muxes[i] }

// NumMuxes returns the number of Muxes.
func (d *Deployment) NumMuxes() int { return len(d.muxes) }

// HostAgent returns Host Agent number i.
func (d *Deployment) HostAgent(i int) *hostagent.HostAgent { return d.hosts[i] }

// HostOf returns the number of the host that runs dip, and false if no host
// does.
func (d *Deployment) HostOf(dip netip.Addr) (int, bool) {
	i, ok := d.dipHost[dip]
	return i, ok
}

// Backend returns an active backend dip:port of the given weight, with the
// address of the host that runs dip. It fails the test if no host does.
func (d *Deployment) Backend(dip netip.Addr, port uint16, weight uint32) ananta.Backend {
	d.t.Helper()
	i, ok := d.dipHost[dip]
	if !ok {
		d.t.Fatalf("anantatest: Backend: no host runs %v", dip)
	}
	return ananta.Backend{DIP: dip, Port: port, Host: HostAddr(i), Weight: weight}
}

// SetVIP creates or replaces a VIP through the Manager's API and waits until
// every Mux and Host Agent applied it (Sync). Errors are the API's (gRPC
// status errors, INVALID_ARGUMENT naming the field) or Sync's.
func (d *Deployment) SetVIP(cfg ananta.VIPConfig) error {
	ctx, cancel := context.WithTimeout(context.Background(), d.opts.SyncTimeout)
	defer cancel()
	pb := manager.VIPConfigToProto(&cfg)
	wait := durationpb.New(d.opts.SyncTimeout)
	_, err := d.vips.UpdateVIP(ctx, &api.UpdateVIPRequest{Config: pb, WaitForAgents: wait})
	if status.Code(err) == codes.NotFound {
		_, err = d.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: pb, WaitForAgents: wait})
	}
	if err != nil {
		return err
	}
	return d.Sync()
}

// DeleteVIP deletes a VIP through the Manager's API and waits until every
// agent applied the deletion.
func (d *Deployment) DeleteVIP(vip netip.Addr) error {
	ctx, cancel := context.WithTimeout(context.Background(), d.opts.SyncTimeout)
	defer cancel()
	if _, err := d.vips.DeleteVIP(ctx, &api.DeleteVIPRequest{Vip: vip.String(), WaitForAgents: durationpb.New(d.opts.SyncTimeout)}); err != nil {
		return err
	}
	return d.Sync()
}

// Sync waits until every Mux's and Host Agent's Client applied every shard
// up to the version the Manager has now, so that a change made through the
// API before the call is in every data path. It returns an error naming a
// lagging agent after Options.SyncTimeout.
func (d *Deployment) Sync() error {
	want := map[uint64]uint64{}
	for _, s := range d.mgr.Shards() {
		v, _ := d.mgr.ShardVersion(s)
		want[s] = v
	}
	deadline := time.Now().Add(d.opts.SyncTimeout)
	for i, c := range d.clients {
		for {
			have := c.Versions()
			behind := uint64(0)
			for s, v := range want {
				if have[s] < v {
					behind = s
					break
				}
			}
			if behind == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("anantatest: agent %d (%s) has shard %d at version %d, want %d after %v",
					i, d.agentName(i), behind, have[behind], want[behind], d.opts.SyncTimeout)
			}
			time.Sleep(time.Millisecond)
		}
		if s := c.Stats(); s.TargetErrors != 0 {
			return fmt.Errorf("anantatest: agent %s refused %d changes (see Options.Logger)", d.agentName(i), s.TargetErrors)
		}
	}
	return nil
}

func (d *Deployment) agentName(i int) string {
	if i < len(d.muxes) {
		return fmt.Sprintf("mux-%d", i)
	}
	return fmt.Sprintf("host-%d", i-len(d.muxes))
}
