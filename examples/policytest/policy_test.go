package policytest_test

import (
	"net/netip"
	"testing"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/anantatest"
	"github.com/ananta-go/ananta/hostagent"
)

var (
	vip     = netip.MustParseAddr("198.19.0.10")
	service = netip.AddrPortFrom(vip, 443)
	blue    = netip.MustParseAddr("10.1.0.1") // the old version
	green   = netip.MustParseAddr("10.1.0.2") // the new version
)

// policy is the VIP as our controller would configure it: blue and green
// behind tcp/443 with the given weights, green in greenState, and the
// 100.64.0.0/24 clients blocked.
func policy(d *anantatest.Deployment, wBlue, wGreen uint32, greenState ananta.BackendState) ananta.VIPConfig {
	g := d.Backend(green, 8443, wGreen)
	g.State = greenState
	return ananta.VIPConfig{
		VIP:    vip,
		Tenant: "shop",
		Endpoints: []ananta.EndpointConfig{{
			Protocol: ananta.ProtocolTCP,
			Port:     443,
			Backends: []ananta.Backend{d.Backend(blue, 8443, wBlue), g},
			ACL: []ananta.ACLRule{
				{Action: ananta.ACLDeny, Source: netip.MustParsePrefix("100.64.0.0/24")},
				{Action: ananta.ACLAllow, Source: netip.MustParsePrefix("0.0.0.0/0")},
			},
		}},
	}
}

func TestCanaryPolicy(t *testing.T) {
	d := anantatest.NewDeployment(t, anantatest.Options{
		Muxes: 2,
		Hosts: []anantatest.Host{{DIPs: []netip.Addr{blue}}, {DIPs: []netip.Addr{green}}},
	})
	blueBE, greenBE := netip.AddrPortFrom(blue, 8443), netip.AddrPortFrom(green, 8443)

	// Canary: green takes about 10% of new connections (weights 9:1).
	if err := d.SetVIP(policy(d, 9, 1, ananta.BackendActive)); err != nil {
		t.Fatal(err)
	}
	// Clients 50000*256 and on come from 100.64.1.0 onwards, past the ACL.
	canary := anantatest.Clients(service, 50000*256, 5000)
	tally := d.Open(canary)
	if s := tally.Share(greenBE); s < 0.08 || s > 0.12 {
		t.Errorf("green's share = %.3f, want about 0.10 (%v)", s, tally)
	}
	if tally.Landed(blueBE)+tally.Landed(greenBE) != len(canary) {
		t.Errorf("some connections did not land: %v", tally)
	}

	// Roll back: drain green. Its open connections keep working...
	if err := d.SetVIP(policy(d, 9, 1, ananta.BackendDraining)); err != nil {
		t.Fatal(err)
	}
	if after := d.Continue(canary); after.Landed(greenBE) != tally.Landed(greenBE) {
		t.Errorf("green's connections after draining: %d, want %d (%v)", after.Landed(greenBE), tally.Landed(greenBE), after)
	}
	// ...and it gets no new ones.
	if fresh := d.Open(anantatest.Clients(service, 60000*256, 1000)); fresh.Landed(greenBE) != 0 {
		t.Errorf("draining green got new connections: %v", fresh)
	}

	// The ACL: 100.64.0.0/24 is dropped at the Host Agent.
	blocked := anantatest.Clients(service, 0, 10)[3]
	r := d.Send(anantatest.TCP(blocked, anantatest.SYN, nil))
	if r.Delivered() || r.HostReason != hostagent.DropACL {
		t.Errorf("blocked client %v: %v, want dropped by the ACL", blocked.Src, r)
	}
}
