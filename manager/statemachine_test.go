package manager

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/memory"
)

var testLimits = &api.Limits{
	MaxPortsPerDip: 4096,
	DedupWindow:    int64(time.Minute),
	DedupEntries:   64,
	AgentForget:    int64(time.Hour),
	TrafficTtl:     int64(time.Minute),
}

var testShards = []uint64{1, 2}

func newTestNode(t *testing.T) *memory.Node {
	t.Helper()
	n, err := memory.New(testShards, func(shard uint64) consensus.StateMachine {
		sm, err := newStateMachine(smConfig{shard: shard, limits: testLimits, logSize: 128})
		if err != nil {
			t.Fatal(err)
		}
		return sm
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

func snapshotOf(t *testing.T, n *memory.Node) []byte {
	t.Helper()
	var b bytes.Buffer
	if err := n.Snapshot(&b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func vipN(i int) string { return fmt.Sprintf("198.19.0.%d", i+1) }

func testVIP(vip string, snatOn bool, backends int) *api.VIPConfig {
	ep := &api.Endpoint{Protocol: api.Protocol_PROTOCOL_TCP, Port: 80}
	for i := 0; i < backends; i++ {
		ep.Backends = append(ep.Backends, &api.Backend{
			Dip: fmt.Sprintf("10.1.%d.%d", i/250, i%250+1), Port: 8080,
			Host: fmt.Sprintf("198.18.%d.%d", i/250, i%250+1), Weight: 1,
		})
	}
	return &api.VIPConfig{Vip: vip, Tenant: "tenant-" + vip, Endpoints: []*api.Endpoint{ep}, Snat: &api.SNATConfig{Enabled: snatOn}}
}

// propose applies cmd to the shard that owns its VIP (shard 1 for
// commands without one) and decodes the result.
func propose(t *testing.T, n consensus.Node, shard uint64, cmd *api.Command) *api.Result {
	t.Helper()
	out, err := n.Propose(context.Background(), shard, marshal(cmd))
	if err != nil {
		t.Fatalf("propose %v: %v", cmd, err)
	}
	var r api.Result
	if err := proto.Unmarshal(out, &r); err != nil {
		t.Fatal(err)
	}
	return &r
}

func shardFor(vip string) uint64 { return shardOf(netip.MustParseAddr(vip), testShards) }

// randomCommands returns a reproducible stream of commands of every kind,
// valid and invalid, with the shard each goes to.
func randomCommands(seed uint64, n int) (shards []uint64, cmds []*api.Command) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	now := t0
	for i := 0; i < n; i++ {
		now = now.Add(time.Duration(rng.IntN(2000)) * time.Millisecond)
		vip := vipN(rng.IntN(6))
		shard := shardFor(vip)
		c := &api.Command{Now: now.UnixNano()}
		if rng.IntN(4) == 0 {
			c.Id = []byte(fmt.Sprintf("id-%d", rng.IntN(i+1))) // repeats too
		}
		dip := netip.MustParseAddr(fmt.Sprintf("10.1.0.%d", rng.IntN(20)+1))
		host := netip.MustParseAddr(fmt.Sprintf("198.18.0.%d", rng.IntN(20)+1))
		switch k := rng.IntN(11); k {
		case 0, 1:
			cfg := testVIP(vip, rng.IntN(3) > 0, 1+rng.IntN(12))
			if rng.IntN(8) == 0 {
				cfg.Endpoints[0].Backends[0].Weight = 0 // invalid
			}
			c.Op = &api.Command_PutVip{PutVip: &api.PutVIPCommand{Config: cfg, Create: k == 0, Ttl: int64(time.Duration(1+rng.IntN(60)) * time.Second), IdempotencyKey: []string{"", "k1", "k2"}[rng.IntN(3)]}}
		case 2:
			c.Op = &api.Command_DeleteVip{DeleteVip: &api.DeleteVIPCommand{Vip: vip, ExpectedVersion: uint64(rng.IntN(3))}}
		case 3, 4:
			var items []*api.AllocateItem
			for j := rng.IntN(5); j >= 0; j-- {
				items = append(items, &api.AllocateItem{Vip: addrBytes(netip.MustParseAddr(vip)), Dip: addrBytes(dip), Host: addrBytes(host), Size: []uint32{0, 8, 64, 1000, 4096}[rng.IntN(5)]})
			}
			c.Op = &api.Command_Allocate{Allocate: &api.AllocateCommand{Ttl: int64(time.Duration(1+rng.IntN(30)) * time.Second), Items: items}}
		case 5:
			c.Op = &api.Command_Release{Release: &api.ReleaseCommand{Vip: addrBytes(netip.MustParseAddr(vip)), Dip: addrBytes(dip)}}
		case 6:
			c.Op = &api.Command_Renew{Renew: &api.RenewCommand{Vip: addrBytes(netip.MustParseAddr(vip)), Dip: addrBytes(dip), Ttl: int64(10 * time.Second)}}
		case 7:
			c.Op = &api.Command_Expire{Expire: &api.ExpireCommand{}}
		case 8:
			c.Op = &api.Command_Agents{Agents: &api.AgentsCommand{Updates: []*api.AgentUpdate{{Id: fmt.Sprintf("mux-%d", rng.IntN(3)), Kind: api.AgentKind_AGENT_KIND_MUX, Applied: uint64(rng.IntN(50)), Connected: rng.IntN(2) == 0, Session: "s"}}}}
		case 9:
			c.Op = &api.Command_Health{Health: &api.HealthCommand{AgentId: "ha-1", Reports: []*api.HealthReport{{Vip: vip, Dip: "10.1.0.1", Port: 8080, Healthy: rng.IntN(2) == 0}}}}
		case 10:
			c.Op = &api.Command_Traffic{Traffic: &api.TrafficCommand{AgentId: "mux-1", Interval: int64(time.Second), Entries: []*api.TrafficEntry{{Vip: vip, Packets: rng.Uint64N(1e6)}}}}
		}
		shards = append(shards, shard)
		cmds = append(cmds, c)
	}
	return shards, cmds
}

// TestDeterministicReplay: two state machines fed the same commands end in
// byte-identical snapshots and give identical results; and the state
// survives Save, Restore, Save byte for byte, at every step.
func TestDeterministicReplay(t *testing.T) {
	shards, cmds := randomCommands(1, 600)
	a, b := newTestNode(t), newTestNode(t)
	okCount := 0
	for i, c := range cmds {
		ra := propose(t, a, shards[i], c)
		rb := propose(t, b, shards[i], c)
		if !proto.Equal(ra, rb) {
			t.Fatalf("command %d: results differ:\n%v\n%v", i, ra, rb)
		}
		if ra.Code == uint32(codes.OK) {
			okCount++
		}
		if i%50 == 0 {
			checkSaveRestore(t, a)
		}
	}
	t.Logf("%d of %d commands succeeded; snapshot %d bytes", okCount, len(cmds), len(snapshotOf(t, a)))
	if okCount < len(cmds)/4 {
		t.Fatalf("only %d of %d commands succeeded: the generator does not exercise the state machine", okCount, len(cmds))
	}
	sa, sb := snapshotOf(t, a), snapshotOf(t, b)
	if !bytes.Equal(sa, sb) {
		t.Fatal("snapshots of two replicas fed the same commands differ")
	}
	checkSaveRestore(t, a)
	// A restored replica goes on exactly like the original.
	c := newTestNode(t)
	if err := c.Restore(bytes.NewReader(sa)); err != nil {
		t.Fatal(err)
	}
	shards2, cmds2 := randomCommands(2, 200)
	for i := range cmds2 {
		cmds2[i].Now += int64(24 * time.Hour) // after the first stream
		ra := propose(t, a, shards2[i], cmds2[i])
		rc := propose(t, c, shards2[i], cmds2[i])
		if !proto.Equal(ra, rc) {
			t.Fatalf("command %d after restore: results differ:\n%v\n%v", i, ra, rc)
		}
	}
	if !bytes.Equal(snapshotOf(t, a), snapshotOf(t, c)) {
		t.Fatal("restored replica diverged")
	}
}

func checkSaveRestore(t *testing.T, n *memory.Node) {
	t.Helper()
	s1 := snapshotOf(t, n)
	fresh := newTestNode(t)
	if err := fresh.Restore(bytes.NewReader(s1)); err != nil {
		t.Fatal(err)
	}
	if s2 := snapshotOf(t, fresh); !bytes.Equal(s1, s2) {
		t.Fatalf("save/restore/save differs (%d vs %d bytes)", len(s1), len(s2))
	}
}

func TestVIPLifecycle(t *testing.T) {
	n := newTestNode(t)
	vip := vipN(0)
	sh := shardFor(vip)
	put := func(create bool, cfg *api.VIPConfig, expected uint64, key string) *api.Result {
		return propose(t, n, sh, &api.Command{Now: t0.UnixNano(), Op: &api.Command_PutVip{PutVip: &api.PutVIPCommand{Config: cfg, Create: create, ExpectedVersion: expected, IdempotencyKey: key, Ttl: int64(time.Minute)}}})
	}
	r := put(true, testVIP(vip, true, 3), 0, "create-1")
	if r.Code != 0 || r.Vip.Version == 0 {
		t.Fatalf("create: %v", r)
	}
	v1 := r.Vip.Version
	// Preallocation: 3 DIPs of a pool of 3 get 1024 ports each.
	if r.Version != v1+3 {
		t.Fatalf("create made changes up to %d, want vip at %d then 3 preallocations", r.Version, v1)
	}
	// A retry with the same key returns the same result.
	if r2 := put(true, testVIP(vip, true, 3), 0, "create-1"); !proto.Equal(r, r2) {
		t.Fatalf("retry with the same key: %v, want %v", r2, r)
	}
	// The same key for another request is refused.
	if r2 := put(true, testVIP(vip, true, 4), 0, "create-1"); codes.Code(r2.Code) != codes.InvalidArgument {
		t.Fatalf("key reuse: %v", r2)
	}
	if r2 := put(true, testVIP(vip, true, 3), 0, ""); codes.Code(r2.Code) != codes.AlreadyExists {
		t.Fatalf("second create: %v", r2)
	}
	if r2 := put(false, testVIP(vip, true, 5), v1+100, ""); codes.Code(r2.Code) != codes.Aborted {
		t.Fatalf("update with a wrong version: %v", r2)
	}
	r3 := put(false, testVIP(vip, true, 5), v1, "")
	if r3.Code != 0 || r3.Vip.Version <= v1 {
		t.Fatalf("update: %v", r3)
	}
	if r2 := put(false, testVIP(vipN(1), true, 5), 0, ""); codes.Code(r2.Code) != codes.NotFound {
		t.Fatalf("update of a missing VIP: %v", r2)
	}
	var list api.ListLeasesResponse
	q := marshal(&api.Query{Q: &api.Query_ListLeases{ListLeases: &api.ListLeasesRequest{Vip: vip}}})
	out, err := n.Read(context.Background(), sh, q)
	if err != nil {
		t.Fatal(err)
	}
	proto.Unmarshal(out, &list)
	if len(list.Leases) != 5 {
		t.Fatalf("%d leases after growing the pool to 5, want 5 preallocations", len(list.Leases))
	}
	for _, l := range list.Leases {
		if n := l.Range.Last - l.Range.First + 1; n != 1024 {
			t.Errorf("preallocated %d ports, want 1024 (Azure table, <= 50 DIPs)", n)
		}
	}
	d := propose(t, n, sh, &api.Command{Now: t0.UnixNano(), Op: &api.Command_DeleteVip{DeleteVip: &api.DeleteVIPCommand{Vip: vip}}})
	if d.Code != 0 {
		t.Fatalf("delete: %v", d)
	}
	if _, err := n.Read(context.Background(), sh, q); err == nil {
		t.Fatal("leases of a deleted VIP are still listed")
	}
}

// TestRejectedCommandsLeaveStateUntouched: every failing command returns
// its code and the snapshot stays byte-identical.
func TestRejectedCommandsLeaveStateUntouched(t *testing.T) {
	n := newTestNode(t)
	vip := vipN(0)
	sh := shardFor(vip)
	now := t0.UnixNano()
	if r := propose(t, n, sh, &api.Command{Now: now, Op: &api.Command_PutVip{PutVip: &api.PutVIPCommand{Config: testVIP(vip, true, 2), Create: true, Ttl: int64(time.Minute)}}}); r.Code != 0 {
		t.Fatal(r)
	}
	v := netip.MustParseAddr(vip)
	bad := testVIP(vip, true, 2)
	bad.Endpoints[0].Backends[1].Weight = 0
	huge := testVIP(vip, true, 2)
	huge.Snat.PortsPerDip = 32768 // 2 x 32768 does not fit
	cases := []struct {
		name string
		op   any
		code codes.Code
	}{
		{"invalid config", &api.Command_PutVip{PutVip: &api.PutVIPCommand{Config: bad, Ttl: int64(time.Minute)}}, codes.InvalidArgument},
		{"preallocation does not fit", &api.Command_PutVip{PutVip: &api.PutVIPCommand{Config: huge, Ttl: int64(time.Minute)}}, codes.ResourceExhausted},
		{"create twice", &api.Command_PutVip{PutVip: &api.PutVIPCommand{Config: testVIP(vip, true, 2), Create: true, Ttl: int64(time.Minute)}}, codes.AlreadyExists},
		{"delete unknown", &api.Command_DeleteVip{DeleteVip: &api.DeleteVIPCommand{Vip: vipN(7)}}, codes.NotFound},
		{"delete stale version", &api.Command_DeleteVip{DeleteVip: &api.DeleteVIPCommand{Vip: vip, ExpectedVersion: 999}}, codes.Aborted},
		{"release unleased", &api.Command_Release{Release: &api.ReleaseCommand{Vip: addrBytes(v), Dip: addrBytes(netip.MustParseAddr("10.1.0.1")), Ranges: []*api.PortRange{{First: 60000, Last: 60007}}}}, codes.NotFound},
		{"release overlapping list", &api.Command_Release{Release: &api.ReleaseCommand{Vip: addrBytes(v), Dip: addrBytes(netip.MustParseAddr("10.1.0.1")), Ranges: []*api.PortRange{{First: 1024, Last: 2047}, {First: 1024, Last: 2047}}}}, codes.InvalidArgument},
		{"release of another DIP's range", &api.Command_Release{Release: &api.ReleaseCommand{Vip: addrBytes(v), Dip: addrBytes(netip.MustParseAddr("10.1.0.2")), Ranges: []*api.PortRange{{First: 1024, Last: 2047}}}}, codes.FailedPrecondition},
		{"renew unknown vip", &api.Command_Renew{Renew: &api.RenewCommand{Vip: addrBytes(netip.MustParseAddr(vipN(9))), Dip: addrBytes(netip.MustParseAddr("10.1.0.1")), Ttl: int64(time.Minute)}}, codes.NotFound},
		{"health of unknown backend", &api.Command_Health{Health: &api.HealthCommand{AgentId: "ha", Reports: []*api.HealthReport{{Vip: vip, Dip: "10.9.9.9", Port: 1}}}}, codes.NotFound},
		{"traffic of unknown vip", &api.Command_Traffic{Traffic: &api.TrafficCommand{AgentId: "mux", Interval: 1, Entries: []*api.TrafficEntry{{Vip: vipN(9)}}}}, codes.NotFound},
		{"agent without id", &api.Command_Agents{Agents: &api.AgentsCommand{Updates: []*api.AgentUpdate{{Kind: api.AgentKind_AGENT_KIND_MUX}}}}, codes.InvalidArgument},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := snapshotOf(t, n)
			c := &api.Command{Now: now + int64(time.Hour), Id: []byte(tc.name)}
			switch op := tc.op.(type) {
			case *api.Command_PutVip:
				c.Op = op
			case *api.Command_DeleteVip:
				c.Op = op
			case *api.Command_Release:
				c.Op = op
			case *api.Command_Renew:
				c.Op = op
			case *api.Command_Health:
				c.Op = op
			case *api.Command_Traffic:
				c.Op = op
			case *api.Command_Agents:
				c.Op = op
			}
			r := propose(t, n, sh, c)
			if codes.Code(r.Code) != tc.code {
				t.Fatalf("code %v (%s), want %v", codes.Code(r.Code), r.Message, tc.code)
			}
			if after := snapshotOf(t, n); !bytes.Equal(before, after) {
				t.Fatal("a rejected command changed the state")
			}
		})
	}
	// Bytes that are not a command are rejected by Apply.
	before := snapshotOf(t, n)
	for _, b := range [][]byte{{0xff, 0xff, 0xff}, marshal(&api.Command{Now: 1}), marshal(&api.Command{Op: &api.Command_Expire{Expire: &api.ExpireCommand{}}})} {
		if _, err := n.Propose(context.Background(), sh, b); err == nil {
			t.Errorf("%x accepted", b)
		}
	}
	if !bytes.Equal(before, snapshotOf(t, n)) {
		t.Fatal("a malformed command changed the state")
	}
}

func TestLeaseExpiryAndHealthRelay(t *testing.T) {
	n := newTestNode(t)
	vip := vipN(0)
	sh := shardFor(vip)
	now := t0.UnixNano()
	propose(t, n, sh, &api.Command{Now: now, Op: &api.Command_PutVip{PutVip: &api.PutVIPCommand{Config: testVIP(vip, true, 2), Create: true, Ttl: int64(time.Minute)}}})
	v := addrBytes(netip.MustParseAddr(vip))
	r := propose(t, n, sh, &api.Command{Now: now, Op: &api.Command_Allocate{Allocate: &api.AllocateCommand{Ttl: int64(10 * time.Second), Items: []*api.AllocateItem{
		{Vip: v, Dip: addrBytes(netip.MustParseAddr("10.1.0.1")), Host: addrBytes(netip.MustParseAddr("198.18.0.1")), Size: 64},
		{Vip: v, Dip: addrBytes(netip.MustParseAddr("10.1.0.1")), Host: addrBytes(netip.MustParseAddr("198.18.0.1")), Size: 65536}, // invalid size
	}}}})
	if r.Items[0].Code != 0 || r.Items[0].Last-r.Items[0].First+1 != 64 || codes.Code(r.Items[1].Code) != codes.InvalidArgument {
		t.Fatalf("allocate: %v", r)
	}
	leases := func() int {
		out, err := n.Read(context.Background(), sh, marshal(&api.Query{Q: &api.Query_ListLeases{ListLeases: &api.ListLeasesRequest{Vip: vip}}}))
		if err != nil {
			t.Fatal(err)
		}
		var l api.ListLeasesResponse
		proto.Unmarshal(out, &l)
		return len(l.Leases)
	}
	if got := leases(); got != 3 {
		t.Fatalf("%d leases, want 2 preallocated + 1", got)
	}
	// 11 s later the 10 s lease expires; the preallocations (1 min) stay.
	propose(t, n, sh, &api.Command{Now: now + int64(11*time.Second), Op: &api.Command_Expire{Expire: &api.ExpireCommand{}}})
	if got := leases(); got != 2 {
		t.Fatalf("%d leases after expiry, want 2", got)
	}
	// A time from the past does not turn the clock back: the state
	// machine's time is the latest it applied.
	r = propose(t, n, sh, &api.Command{Now: now, Op: &api.Command_Allocate{Allocate: &api.AllocateCommand{Ttl: int64(5 * time.Second), Items: []*api.AllocateItem{
		{Vip: v, Dip: addrBytes(netip.MustParseAddr("10.1.0.2")), Host: addrBytes(netip.MustParseAddr("198.18.0.2")), Size: 8},
	}}}})
	if want := now + int64(16*time.Second); r.Items[0].Expiry != want {
		t.Fatalf("expiry %d, want %d (clock kept at its latest)", r.Items[0].Expiry, want)
	}
	// Health: a down report changes the effective state once.
	h := func(healthy bool) *api.Result {
		return propose(t, n, sh, &api.Command{Now: now + int64(20*time.Second), Op: &api.Command_Health{Health: &api.HealthCommand{AgentId: "ha-1", Reports: []*api.HealthReport{{Vip: vip, Dip: "10.1.0.1", Port: 8080, Healthy: healthy}}}}})
	}
	r1 := h(false)
	r2 := h(false)
	r3 := h(true)
	if r2.Version != r1.Version || r3.Version != r1.Version+1 {
		t.Fatalf("health versions %d, %d, %d: want one change down and one up", r1.Version, r2.Version, r3.Version)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
