package manager_test

import (
	"bytes"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/api"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/manager"
	"github.com/ananta-go/ananta/manager/agent"
)

func wantCode(t *testing.T, err error, code codes.Code, msgPart string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code || !strings.Contains(st.Message(), msgPart) {
		t.Fatalf("got %v %q, want %v containing %q", st.Code(), st.Message(), code, msgPart)
	}
}

func TestVIPAPI(t *testing.T) {
	testutil.CheckGoroutines(t)
	tm := startManager(t, []uint64{1, 2, 3}, nil, nil)
	ctx := ctxT(t, 20*time.Second)
	const vip = "198.19.0.10"

	bad := vipConfig(vip, false, 3)
	bad.Endpoints[0].Backends[1].Weight = 0
	_, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: bad})
	wantCode(t, err, codes.InvalidArgument, "endpoints[0].backends[1].weight: must be > 0")

	r, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, true, 3), IdempotencyKey: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if r.Vip.Version == 0 || r.Vip.Config.Vip != vip {
		t.Fatalf("create: %v", r)
	}
	// A retry with the idempotency key returns the first result.
	r2, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, true, 3), IdempotencyKey: "c1"})
	if err != nil || !proto.Equal(r.Vip, r2.Vip) {
		t.Fatalf("retry: %v %v", r2, err)
	}
	_, err = tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, true, 3)})
	wantCode(t, err, codes.AlreadyExists, "already exists")

	_, err = tm.vips.UpdateVIP(ctx, &api.UpdateVIPRequest{Config: vipConfig(vip, true, 4), ExpectedVersion: r.Vip.Version + 1000})
	wantCode(t, err, codes.Aborted, "expected_version")
	u, err := tm.vips.UpdateVIP(ctx, &api.UpdateVIPRequest{Config: vipConfig(vip, true, 4), ExpectedVersion: r.Vip.Version})
	if err != nil || u.Vip.Version <= r.Vip.Version {
		t.Fatalf("update: %v %v", u, err)
	}
	// The old version no longer matches.
	_, err = tm.vips.UpdateVIP(ctx, &api.UpdateVIPRequest{Config: vipConfig(vip, true, 5), ExpectedVersion: r.Vip.Version})
	wantCode(t, err, codes.Aborted, "expected_version")

	g, err := tm.vips.GetVIP(ctx, &api.GetVIPRequest{Vip: vip})
	if err != nil || !proto.Equal(g, u.Vip) {
		t.Fatalf("get: %v %v, want %v", g, err, u.Vip)
	}
	_, err = tm.vips.GetVIP(ctx, &api.GetVIPRequest{Vip: "198.19.0.11"})
	wantCode(t, err, codes.NotFound, "198.19.0.11")

	// Listing pages through VIPs of every shard in address order.
	for i := 20; i < 45; i++ {
		v := "198.19.1." + itoa(i)
		if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(v, false, 1)}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	token := ""
	for pages := 0; ; pages++ {
		l, err := tm.vips.ListVIPs(ctx, &api.ListVIPsRequest{PageSize: 4, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range l.Vips {
			got = append(got, v.Config.Vip)
		}
		if l.NextPageToken == "" {
			break
		}
		token = l.NextPageToken
	}
	if len(got) != 26 || got[0] != vip {
		t.Fatalf("listed %d VIPs (%v), want 26", len(got), got)
	}
	for i := 1; i < len(got); i++ {
		if got[i-1] >= got[i] && len(got[i-1]) == len(got[i]) {
			t.Fatalf("not in order: %v", got)
		}
	}

	d, err := tm.vips.DeleteVIP(ctx, &api.DeleteVIPRequest{Vip: vip, ExpectedVersion: u.Vip.Version})
	if err != nil || d.Vip.Version <= u.Vip.Version {
		t.Fatalf("delete: %v %v", d, err)
	}
	_, err = tm.vips.DeleteVIP(ctx, &api.DeleteVIPRequest{Vip: vip})
	wantCode(t, err, codes.NotFound, "does not exist")
}

func itoa(i int) string { return strconv.Itoa(i) }

func TestSNATAPI(t *testing.T) {
	testutil.CheckGoroutines(t)
	tm := startManager(t, []uint64{1, 2}, nil, nil)
	ctx := ctxT(t, 20*time.Second)
	const vip = "198.19.0.20"
	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, true, 2)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig("198.19.0.21", false, 2)}); err != nil {
		t.Fatal(err)
	}
	a, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: "10.1.0.1", Host: "198.18.0.1", Hint: 100})
	if err != nil {
		t.Fatal(err)
	}
	if n := a.Lease.Range.Last - a.Lease.Range.First + 1; n != 128 || a.Lease.Range.First%128 != 0 {
		t.Fatalf("hint 100 gave %v, want an aligned range of 128", a.Lease.Range)
	}
	d, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: "10.1.0.9", Host: "198.18.0.9"})
	if err != nil {
		t.Fatal(err)
	}
	if n := d.Lease.Range.Last - d.Lease.Range.First + 1; n < 8 {
		t.Fatalf("demand-sized lease of %d ports", n)
	}
	_, err = tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: "198.19.0.99", Dip: "10.1.0.1", Host: "198.18.0.1"})
	wantCode(t, err, codes.NotFound, "198.19.0.99")
	_, err = tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: "198.19.0.21", Dip: "10.1.0.1", Host: "198.18.0.1"})
	wantCode(t, err, codes.FailedPrecondition, "SNAT")
	_, err = tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: "2001:db8::1", Host: "198.18.0.1"})
	wantCode(t, err, codes.InvalidArgument, "dip")

	l, err := tm.snat.ListLeases(ctx, &api.ListLeasesRequest{Vip: vip, Dip: "10.1.0.1"})
	if err != nil || len(l.Leases) != 2 { // preallocation + the allocation
		t.Fatalf("leases of 10.1.0.1: %v %v", l, err)
	}
	rn, err := tm.snat.RenewLeases(ctx, &api.RenewLeasesRequest{Vip: vip, Dip: "10.1.0.1"})
	if err != nil || len(rn.Leases) != 2 {
		t.Fatalf("renew: %v %v", rn, err)
	}
	// Another DIP cannot release the range; the holder can, once.
	_, err = tm.snat.ReleasePorts(ctx, &api.ReleasePortsRequest{Vip: vip, Dip: "10.1.0.2", Ranges: []*api.PortRange{a.Lease.Range}})
	wantCode(t, err, codes.FailedPrecondition, "leased to 10.1.0.1")
	rel, err := tm.snat.ReleasePorts(ctx, &api.ReleasePortsRequest{Vip: vip, Dip: "10.1.0.1", Ranges: []*api.PortRange{a.Lease.Range}})
	if err != nil || len(rel.Released) != 1 {
		t.Fatalf("release: %v %v", rel, err)
	}
	_, err = tm.snat.ReleasePorts(ctx, &api.ReleasePortsRequest{Vip: vip, Dip: "10.1.0.1", Ranges: []*api.PortRange{a.Lease.Range}})
	wantCode(t, err, codes.NotFound, "not leased")
	// The Host Agent's allocator over the same API.
	sc := agent.NewSNATClient(tm.conn)
	v, dp, h := netip.MustParseAddr(vip), netip.MustParseAddr("10.1.0.7"), netip.MustParseAddr("198.18.0.7")
	got, err := sc.AllocatePorts(ctx, v, dp, h, 64)
	if err != nil || len(got) != 1 || got[0].Len() != 64 {
		t.Fatalf("SNATClient.AllocatePorts: %v %v", got, err)
	}
	bogus := ananta.PortRange{First: 65528, Last: 65535}
	held, err := sc.RenewLeases(ctx, v, dp, []ananta.PortRange{got[0], bogus})
	if err != nil || len(held) != 1 || held[0] != got[0] {
		t.Fatalf("SNATClient.RenewLeases: %v %v", held, err)
	}
	if err := sc.ReleasePorts(ctx, v, dp, got); err != nil {
		t.Fatal(err)
	}
	if held, err := sc.RenewLeases(ctx, v, dp, got); err != nil || len(held) != 0 {
		t.Fatalf("renewed a released range: %v %v", held, err)
	}

	// Forced release of everything a DIP holds.
	rel, err = tm.snat.ReleasePorts(ctx, &api.ReleasePortsRequest{Vip: vip, Dip: "10.1.0.9", Force: true})
	if err != nil || len(rel.Released) != 1 {
		t.Fatalf("forced release: %v %v", rel, err)
	}
}

// TestHostileInput: malformed and oversized requests fail with the right
// code and a message naming the problem, and leave the state untouched.
func TestHostileInput(t *testing.T) {
	testutil.CheckGoroutines(t)
	tm := startManager(t, []uint64{1, 2}, nil, func(c *manager.Config) { c.MaxMessageBytes = 1 << 20 })
	ctx := ctxT(t, 30*time.Second)
	const vip = "198.19.0.30"
	if _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: vipConfig(vip, true, 4)}); err != nil {
		t.Fatal(err)
	}
	before := tm.snapshot(t)

	tooMany := vipConfig("198.19.0.31", false, 1)
	for i := 0; i < 300; i++ {
		tooMany.Endpoints = append(tooMany.Endpoints, &api.Endpoint{Protocol: api.Protocol_PROTOCOL_TCP, Port: uint32(1000 + i), Backends: tooMany.Endpoints[0].Backends})
	}
	overlap := vipConfig("198.19.0.32", true, 1)
	overlap.Snat.Reserved = []*api.PortRange{{First: 2000, Last: 3000}, {First: 2500, Last: 2600}}
	badPort := vipConfig("198.19.0.33", false, 1)
	badPort.Endpoints[0].Port = 70000
	badAddr := vipConfig("198.19.0.34", false, 2)
	badAddr.Endpoints[0].Backends[1].Dip = "10.1.0.300"
	v6dip := vipConfig("198.19.0.35", false, 1)
	v6dip.Endpoints[0].Backends[0].Dip = "2001:db8::5"
	badEnum := vipConfig("198.19.0.36", false, 1)
	badEnum.Endpoints[0].Backends[0].State = 7
	dupBackend := vipConfig("198.19.0.37", false, 2)
	dupBackend.Endpoints[0].Backends[1] = dupBackend.Endpoints[0].Backends[0]
	huge := vipConfig("198.19.0.38", false, 1)
	huge.Tenant = strings.Repeat("x", 2<<20) // over the 1 MiB message limit

	cases := []struct {
		name string
		call func() error
		code codes.Code
		msg  string
	}{
		{"too many endpoints", func() error { _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: tooMany}); return err }, codes.InvalidArgument, "endpoints: must have at most 256"},
		{"overlapping reserved ranges", func() error { _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: overlap}); return err }, codes.InvalidArgument, "snat.reserved[1]: overlaps reserved[0]"},
		{"port out of range", func() error { _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: badPort}); return err }, codes.InvalidArgument, "endpoints[0].port: must be at most 65535"},
		{"invalid address", func() error { _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: badAddr}); return err }, codes.InvalidArgument, "endpoints[0].backends[1].dip"},
		{"dip of another family", func() error { _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: v6dip}); return err }, codes.InvalidArgument, "endpoints[0].backends[0].dip"},
		{"unknown enum", func() error { _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: badEnum}); return err }, codes.InvalidArgument, "endpoints[0].backends[0].state"},
		{"duplicate backend", func() error { _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: dupBackend}); return err }, codes.InvalidArgument, "duplicates backends[0]"},
		{"oversized message", func() error { _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{Config: huge}); return err }, codes.ResourceExhausted, ""},
		{"multicast vip", func() error { _, err := tm.vips.GetVIP(ctx, &api.GetVIPRequest{Vip: "224.0.0.1"}); return err }, codes.InvalidArgument, "vip: must not be multicast"},
		{"no config", func() error { _, err := tm.vips.CreateVIP(ctx, &api.CreateVIPRequest{}); return err }, codes.InvalidArgument, "config"},
		{"update unknown vip", func() error {
			_, err := tm.vips.UpdateVIP(ctx, &api.UpdateVIPRequest{Config: vipConfig("198.19.0.39", false, 1)})
			return err
		}, codes.NotFound, "198.19.0.39"},
		{"delete unknown vip", func() error { _, err := tm.vips.DeleteVIP(ctx, &api.DeleteVIPRequest{Vip: "198.19.0.39"}); return err }, codes.NotFound, "198.19.0.39"},
		{"negative wait", func() error {
			_, err := tm.vips.UpdateVIP(ctx, &api.UpdateVIPRequest{Config: vipConfig(vip, true, 4), WaitForAgents: &durationpb.Duration{Seconds: -1}})
			return err
		}, codes.InvalidArgument, "wait_for_agents"},
		{"allocate from unknown vip", func() error {
			_, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: "198.19.0.39", Dip: "10.1.0.1", Host: "198.18.0.1"})
			return err
		}, codes.NotFound, "198.19.0.39"},
		{"allocate with garbage dip", func() error {
			_, err := tm.snat.AllocatePorts(ctx, &api.AllocatePortsRequest{Vip: vip, Dip: "not-an-ip", Host: "198.18.0.1"})
			return err
		}, codes.InvalidArgument, "dip: must be an IP address"},
		{"release misaligned", func() error {
			_, err := tm.snat.ReleasePorts(ctx, &api.ReleasePortsRequest{Vip: vip, Dip: "10.1.0.1", Ranges: []*api.PortRange{{First: 1030, Last: 1037}}})
			return err
		}, codes.InvalidArgument, "ranges[0]: must be an aligned"},
		{"release a huge list", func() error {
			rs := make([]*api.PortRange, 9000)
			for i := range rs {
				rs[i] = &api.PortRange{First: 1024, Last: 1031}
			}
			_, err := tm.snat.ReleasePorts(ctx, &api.ReleasePortsRequest{Vip: vip, Dip: "10.1.0.1", Ranges: rs})
			return err
		}, codes.InvalidArgument, "ranges: at most"},
		{"release overlapping ranges", func() error {
			_, err := tm.snat.ReleasePorts(ctx, &api.ReleasePortsRequest{Vip: vip, Dip: "10.1.0.1", Ranges: []*api.PortRange{{First: 1024, Last: 2047}, {First: 1024, Last: 2047}}})
			return err
		}, codes.InvalidArgument, "listed twice"},
		{"health of unknown vip", func() error {
			_, err := tm.agent.ReportHealth(ctx, &api.ReportHealthRequest{AgentId: "ha-1", Reports: []*api.HealthReport{{Vip: "198.19.0.39", Dip: "10.1.0.1", Port: 8080}}})
			return err
		}, codes.NotFound, "unknown VIP"},
		{"health with a bad port", func() error {
			_, err := tm.agent.ReportHealth(ctx, &api.ReportHealthRequest{AgentId: "ha-1", Reports: []*api.HealthReport{{Vip: vip, Dip: "10.1.0.1", Port: 1 << 20}}})
			return err
		}, codes.InvalidArgument, "reports[0].port"},
		{"traffic of unknown vip", func() error {
			_, err := tm.agent.ReportTraffic(ctx, &api.ReportTrafficRequest{AgentId: "mux-1", Interval: durationpb.New(time.Second), Top: []*api.TrafficEntry{{Vip: "198.19.0.39"}}})
			return err
		}, codes.NotFound, "unknown VIP"},
		{"report for an unknown shard", func() error {
			_, err := tm.agent.ReportApplied(ctx, &api.ReportAppliedRequest{AgentId: "mux-1", Kind: api.AgentKind_AGENT_KIND_MUX, Applied: []*api.ShardVersion{{Shard: 77}}})
			return err
		}, codes.InvalidArgument, "applied[0].shard"},
		{"agent id with control characters", func() error {
			_, err := tm.agent.ReportApplied(ctx, &api.ReportAppliedRequest{AgentId: "mux\x00", Kind: api.AgentKind_AGENT_KIND_MUX})
			return err
		}, codes.InvalidArgument, "agent_id"},
		{"bad page token", func() error { _, err := tm.vips.ListVIPs(ctx, &api.ListVIPsRequest{PageToken: "zzz"}); return err }, codes.InvalidArgument, "page_token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			wantCode(t, tc.call(), tc.code, tc.msg)
		})
	}
	if after := tm.snapshot(t); !bytes.Equal(before, after) {
		t.Fatal("hostile requests changed the state")
	}
}
