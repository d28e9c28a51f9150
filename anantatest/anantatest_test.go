package anantatest_test

import (
	"fmt"
	"math"
	"net/netip"
	"testing"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/anantatest"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/hostagent"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/mux"
)

var (
	vip  = netip.MustParseAddr("198.19.0.10")
	dip1 = netip.MustParseAddr("10.0.0.1")
	dip2 = netip.MustParseAddr("10.0.0.2")
	dip3 = netip.MustParseAddr("10.0.1.1")
	web  = netip.AddrPortFrom(vip, 80)
	be1  = netip.AddrPortFrom(dip1, 8080)
	be2  = netip.AddrPortFrom(dip2, 8080)
)

// deploy starts 3 Muxes and 2 hosts (dip1 and dip3 on host 0, dip2 on host
// 1) and configures tcp/vip:80 over dip1 and dip2 with weights w1 and w2.
func deploy(t *testing.T, w1, w2 uint32, opts anantatest.Options) *anantatest.Deployment {
	t.Helper()
	opts.Muxes = 3
	opts.Hosts = []anantatest.Host{{DIPs: []netip.Addr{dip1, dip3}}, {DIPs: []netip.Addr{dip2}}}
	d := anantatest.NewDeployment(t, opts)
	if err := d.SetVIP(webVIP(d, w1, w2, ananta.BackendActive, nil)); err != nil {
		t.Fatal(err)
	}
	return d
}

func webVIP(d *anantatest.Deployment, w1, w2 uint32, state2 ananta.BackendState, acl []ananta.ACLRule) ananta.VIPConfig {
	b2 := d.Backend(dip2, 8080, w2)
	b2.State = state2
	return ananta.VIPConfig{VIP: vip, Tenant: "test", Endpoints: []ananta.EndpointConfig{{
		Protocol: ananta.ProtocolTCP, Port: 80, ACL: acl,
		Backends: []ananta.Backend{d.Backend(dip1, 8080, w1), b2},
	}}}
}

// TestWeights: weights 1:3 give shares near 25/75 over 10,000 flows spread
// over every Mux, each flow's packets stay on its backend, and the
// components' counters agree with what the fabric saw.
func TestWeights(t *testing.T) {
	testutil.CheckGoroutines(t)
	d := deploy(t, 1, 3, anantatest.Options{})
	const n = 10000
	tally := d.Open(anantatest.Clients(web, 0, n))
	t.Log(tally)
	if tally.Total != n || tally.Landed(be1)+tally.Landed(be2) != n {
		t.Fatalf("not every flow landed on a backend: %v", tally)
	}
	if s := tally.Share(be2); math.Abs(s-0.75) > 0.03 {
		t.Errorf("share of the weight-3 backend = %.3f, want 0.75 ± 0.03 (%v)", s, tally)
	}
	if tally.Moved != 0 {
		t.Errorf("%d flows moved between their first and second packet", tally.Moved)
	}
	// ECMP used every Mux, and the Muxes forwarded every packet.
	var forwarded uint64
	newFlows := map[netip.AddrPort]uint64{}
	for i := 0; i < d.NumMuxes(); i++ {
		s := d.Mux(i).Stats()
		if s.Forwarded < n/10 {
			t.Errorf("mux %d forwarded %d packets: ECMP does not spread flows", i, s.Forwarded)
		}
		forwarded += s.Forwarded
		for _, b := range s.Backends {
			newFlows[b.DIP] += b.NewFlows
		}
	}
	if forwarded != 2*n {
		t.Errorf("Muxes forwarded %d packets, want %d", forwarded, 2*n)
	}
	if newFlows[be1] != uint64(tally.Landed(be1)) || newFlows[be2] != uint64(tally.Landed(be2)) {
		t.Errorf("Muxes pinned %v, the fabric saw %v", newFlows, tally)
	}
	h0, h1 := d.HostAgent(0).Stats(), d.HostAgent(1).Stats()
	if h0.FlowsCreated != uint64(tally.Landed(be1)) || h1.FlowsCreated != uint64(tally.Landed(be2)) {
		t.Errorf("hosts created %d and %d flows, want %d and %d", h0.FlowsCreated, h1.FlowsCreated, tally.Landed(be1), tally.Landed(be2))
	}
}

// TestDraining: a draining backend keeps the flows it has (their later
// packets land on it) and gets no new flows.
func TestDraining(t *testing.T) {
	testutil.CheckGoroutines(t)
	d := deploy(t, 1, 1, anantatest.Options{})
	old := anantatest.Clients(web, 0, 2000)
	where := make([]netip.AddrPort, len(old))
	for i, f := range old {
		r := d.Send(anantatest.TCP(f, anantatest.SYN, nil))
		if !r.Delivered() {
			t.Fatalf("flow %v: %v", f, r)
		}
		where[i] = r.DIP
		if r := d.Send(anantatest.TCP(f, anantatest.ACK, nil)); r.DIP != where[i] {
			t.Fatalf("flow %v: SYN on %v, ACK %v", f, where[i], r)
		}
	}
	onBE2 := 0
	for _, w := range where {
		if w == be2 {
			onBE2++
		}
	}
	if onBE2 < 800 {
		t.Fatalf("only %d of %d flows on %v before draining", onBE2, len(old), be2)
	}
	if err := d.SetVIP(webVIP(d, 1, 1, ananta.BackendDraining, nil)); err != nil {
		t.Fatal(err)
	}
	for i, f := range old {
		if r := d.Send(anantatest.TCP(f, anantatest.ACK|anantatest.PSH, []byte("x"))); r.DIP != where[i] {
			t.Fatalf("established flow %v on %v before draining: %v", f, where[i], r)
		}
	}
	fresh := d.Open(anantatest.Clients(web, 100000, 2000))
	if fresh.Landed(be2) != 0 || fresh.Landed(be1) != 2000 {
		t.Errorf("new flows while %v drains: %v, want all on %v", be2, fresh, be1)
	}
	for i := 0; i < d.NumMuxes(); i++ {
		for _, b := range d.Mux(i).Stats().Backends {
			if b.DIP == be2 && b.State != ananta.BackendDraining {
				t.Errorf("mux %d has %v %v, want draining", i, be2, b.State)
			}
		}
	}
}

// TestACL: a deny rule drops new flows at the Host Agent (the Mux forwards
// them), counted under DropACL; other sources pass.
func TestACL(t *testing.T) {
	testutil.CheckGoroutines(t)
	d := deploy(t, 1, 1, anantatest.Options{})
	acl := []ananta.ACLRule{
		{Action: ananta.ACLDeny, Source: netip.MustParsePrefix("100.64.0.0/24")},
		{Action: ananta.ACLAllow, Source: netip.MustParsePrefix("0.0.0.0/0")},
	}
	if err := d.SetVIP(webVIP(d, 1, 1, ananta.BackendActive, acl)); err != nil {
		t.Fatal(err)
	}
	denied := anantatest.Clients(web, 0, 100) // 100.64.0.0
	allowed := anantatest.Clients(web, 50000*300, 100)
	if !netip.MustParsePrefix("100.64.1.0/24").Contains(allowed[0].Src) {
		t.Fatalf("allowed client %v is not where the test expects", allowed[0].Src)
	}
	for _, f := range denied {
		r := d.Send(anantatest.TCP(f, anantatest.SYN, nil))
		if r.DroppedBy != anantatest.StageHost || r.HostReason != hostagent.DropACL || r.MuxAction != mux.ActionForward {
			t.Fatalf("denied flow %v: %v, want forwarded by the Mux and dropped by the host's ACL", f, r)
		}
	}
	acls := d.HostAgent(0).Stats().Drops[hostagent.DropACL] + d.HostAgent(1).Stats().Drops[hostagent.DropACL]
	if acls != uint64(len(denied)) {
		t.Errorf("hosts counted %d ACL drops, want %d", acls, len(denied))
	}
	if tally := d.Open(allowed); tally.Landed(be1)+tally.Landed(be2) != len(allowed) {
		t.Errorf("allowed flows: %v", tally)
	}
}

// TestMuxesAgree: a flow sent through any Mux lands on the same backend
// (same Maglev tables, same flow hash), so ECMP changes break nothing.
func TestMuxesAgree(t *testing.T) {
	testutil.CheckGoroutines(t)
	d := deploy(t, 1, 2, anantatest.Options{})
	seen := map[netip.AddrPort]int{}
	for _, f := range anantatest.Clients(web, 0, 1000) {
		pkt := anantatest.TCP(f, anantatest.SYN, nil)
		first := d.SendVia(0, pkt)
		if !first.Delivered() {
			t.Fatalf("flow %v via mux 0: %v", f, first)
		}
		seen[first.DIP]++
		for i := 1; i < d.NumMuxes(); i++ {
			if r := d.SendVia(i, pkt); r.DIP != first.DIP || r.Mux != i {
				t.Fatalf("flow %v: mux 0 sent it to %v, mux %d: %v", f, first.DIP, i, r)
			}
		}
	}
	if seen[be1] == 0 || seen[be2] == 0 {
		t.Errorf("flows landed on %v: the check needs both backends", seen)
	}
}

// TestReplyAndDelete: a Handler's answer leaves the host from VIP:80 to the
// client (reverse NAT, Direct Server Return); a deleted VIP is dropped by
// the Muxes; an unknown VIP too.
func TestReplyAndDelete(t *testing.T) {
	testutil.CheckGoroutines(t)
	var vms = map[netip.Addr]bool{}
	d := deploy(t, 1, 1, anantatest.Options{Handler: func(vm netip.Addr, pkt []byte) []byte {
		if vm != dip1 && vm != dip2 {
			panic("handler called for " + vm.String())
		}
		return anantatest.Reply(pkt)
	}})
	for _, f := range anantatest.Clients(web, 0, 50) {
		r := d.Send(anantatest.TCP(f, anantatest.SYN, nil))
		if !r.Delivered() || r.VM != r.DIP.Addr() {
			t.Fatalf("flow %v: %v (VM %v)", f, r, r.VM)
		}
		vms[r.VM] = true
		var p encap.Packet
		if err := encap.Parse(r.Reply, &p); err != nil {
			t.Fatalf("flow %v: reply %x (%v %v): %v", f, r.Reply, r.ReplyVerdict, r.ReplyReason, err)
		}
		if want := f.Reverse(); p.Tuple != want || p.TCPFlags != anantatest.SYN|anantatest.ACK {
			t.Fatalf("flow %v: reply %v flags %#x, want %v SYN-ACK", f, p.Tuple, p.TCPFlags, want)
		}
	}
	if len(vms) != 2 {
		t.Errorf("replies came from %v, want both VMs", vms)
	}
	if err := d.DeleteVIP(vip); err != nil {
		t.Fatal(err)
	}
	f := anantatest.Clients(web, 0, 1)[0]
	if r := d.Send(anantatest.TCP(f, anantatest.ACK, nil)); r.DroppedBy != anantatest.StageMux || r.MuxReason != mux.DropNoVIP {
		t.Errorf("packet to a deleted VIP: %v", r)
	}
	if err := d.SetVIP(ananta.VIPConfig{VIP: vip, Tenant: "test", Endpoints: []ananta.EndpointConfig{{
		Protocol: ananta.ProtocolTCP, Port: 80, Backends: []ananta.Backend{{DIP: dip1, Port: 8080, Host: anantatest.HostAddr(0), Weight: 0}},
	}}}); err == nil {
		t.Errorf("SetVIP accepted a backend of weight 0")
	}
}

// TestSNAT: with SNAT on, the Manager's preallocated ports reach the Host
// Agents and the Muxes: a VM's connection leaves from VIP:leased port, and
// the answer, sent by the server to that port, comes back through a Mux to
// the VM's own address and port.
func TestSNAT(t *testing.T) {
	testutil.CheckGoroutines(t)
	d := anantatest.NewDeployment(t, anantatest.Options{Muxes: 2, Hosts: []anantatest.Host{{DIPs: []netip.Addr{dip1}}, {DIPs: []netip.Addr{dip2}}}})
	cfg := webVIP(d, 1, 1, ananta.BackendActive, nil)
	cfg.SNAT = ananta.SNATConfig{Enabled: true, PortsPerDIP: 64}
	if err := d.SetVIP(cfg); err != nil {
		t.Fatal(err)
	}
	server := netip.MustParseAddrPort("203.0.113.7:443")
	for _, dip := range []netip.Addr{dip1, dip2} {
		ports := map[uint16]bool{}
		for sport := uint16(40000); sport < 40010; sport++ {
			f := ananta.FiveTuple{Src: dip, Dst: server.Addr(), SrcPort: sport, DstPort: server.Port(), Proto: ananta.ProtocolTCP}
			out := d.SendFromVM(dip, anantatest.TCP(f, anantatest.SYN, nil))
			if out.Verdict != hostagent.ToUplink {
				t.Fatalf("%v: %v %v", f, out.Verdict, out.Reason)
			}
			var p encap.Packet
			if err := encap.Parse(out.Packet, &p); err != nil {
				t.Fatal(err)
			}
			if p.Tuple.Src != vip || p.Tuple.Dst != server.Addr() || p.Tuple.SrcPort < ananta.FirstSNATPort || ports[p.Tuple.SrcPort] {
				t.Fatalf("%v left as %v (ports so far %v)", f, p.Tuple, ports)
			}
			ports[p.Tuple.SrcPort] = true
			back := d.Send(anantatest.TCP(p.Tuple.Reverse(), anantatest.SYN|anantatest.ACK, nil))
			if !back.Delivered() || back.VM != dip || back.DIP != netip.AddrPortFrom(dip, sport) {
				t.Fatalf("answer to %v: %v, want delivered to %v:%d", p.Tuple, back, dip, sport)
			}
		}
		h, _ := d.HostOf(dip)
		if s := d.HostAgent(h).Stats(); s.SNATPorts < 64 || s.SNATFlowsActive != 10 {
			t.Errorf("host %d: %d SNAT ports, %d SNAT flows; want >= 64 and 10", h, s.SNATPorts, s.SNATFlowsActive)
		}
	}
}

// TestConcurrentSend: Send may be called from many goroutines; every flow
// stays on one backend and the Muxes count every packet.
func TestConcurrentSend(t *testing.T) {
	testutil.CheckGoroutines(t)
	d := deploy(t, 1, 1, anantatest.Options{})
	const workers, per = 8, 500
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		go func() {
			tally := d.Open(anantatest.Clients(web, w*per, per))
			if tally.Moved != 0 || tally.Landed(be1)+tally.Landed(be2) != per {
				errs <- fmt.Errorf("worker %d: %v, %d moved", w, tally, tally.Moved)
				return
			}
			errs <- nil
		}()
	}
	for w := 0; w < workers; w++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	var forwarded uint64
	for i := 0; i < d.NumMuxes(); i++ {
		forwarded += d.Mux(i).Stats().Forwarded
	}
	if forwarded != 2*workers*per {
		t.Errorf("Muxes forwarded %d packets, want %d", forwarded, 2*workers*per)
	}
}
