package mux

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
)

type testFlow struct {
	src  netip.Addr
	port uint16
	host netip.Addr
}

func (f *testFlow) pkt(vip netip.Addr) []byte { return tcp4(f.src, f.port, vip, 80, encap.TCPFlagACK) }

// establishFlows sends two packets of n flows (so they are trusted) and
// records their hosts.
func establishFlows(t *testing.T, m *Mux, n int, seed uint64) []testFlow {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	flows := make([]testFlow, n)
	for i := range flows {
		f := &flows[i]
		f.src = netip.AddrFrom4([4]byte{198, 18, byte(128 + rng.IntN(64)), byte(rng.IntN(256))})
		f.port = uint16(1024 + rng.IntN(60000))
		process(m, f.pkt(vip4))
		r := process(m, f.pkt(vip4))
		if r.v != verdictForward {
			t.Fatalf("flow %d: %v", i, r.v)
		}
		f.host = r.outer
	}
	return flows
}

// hostsNow returns where each flow's next packet goes.
func hostsNow(m *Mux, flows []testFlow) []netip.Addr {
	out := make([]netip.Addr, len(flows))
	for i := range flows {
		out[i] = process(m, flows[i].pkt(vip4)).outer
	}
	return out
}

// statelessHosts returns where a Mux without state sends each flow under
// config c: what the flows would do without the flow table.
func statelessHosts(t *testing.T, c ananta.VIPConfig, flows []testFlow) []netip.Addr {
	m := newMux(t, testConfig(nil))
	mustSetVIP(t, m, c)
	return hostsNow(m, flows)
}

// TestBackendChanges: adding a backend keeps every tracked flow on its
// backend; draining keeps them; down moves them (DownMove) or keeps them
// (DownKeep); removal moves them.
func TestBackendChanges(t *testing.T) {
	for _, policy := range []DownPolicy{DownMove, DownKeep} {
		t.Run(policy.String(), func(t *testing.T) {
			m := newMux(t, testConfig(func(c *Config) { c.DownBackendFlows = policy }))
			cfg := simpleVIP(vip4, 80, backends4(1, 10))
			mustSetVIP(t, m, cfg)
			flows := establishFlows(t, m, 5000, 1)

			// Add 5 backends: no tracked flow moves, though Maglev moves
			// about a third of them.
			cfg = simpleVIP(vip4, 80, backends4(1, 15))
			mustSetVIP(t, m, cfg)
			would := 0
			for i, h := range statelessHosts(t, cfg, flows) {
				if h != flows[i].host {
					would++
				}
			}
			if would < 1000 {
				t.Fatalf("only %d of 5000 flows would move without the table", would)
			}
			for i, h := range hostsNow(m, flows) {
				if h != flows[i].host {
					t.Fatalf("after adding backends flow %d moved from %s to %s", i, flows[i].host, h)
				}
			}

			// Drain backend 1: its flows stay, new flows avoid it.
			if err := m.SetBackendState(vip4, dip4(1), 0, ananta.BackendDraining); err != nil {
				t.Fatal(err)
			}
			on1 := 0
			for i, h := range hostsNow(m, flows) {
				if h != flows[i].host {
					t.Fatalf("after draining flow %d moved from %s to %s", i, flows[i].host, h)
				}
				if h == host4(1) {
					on1++
				}
			}
			if on1 == 0 {
				t.Fatal("no flow on backend 1: the drain test proves nothing")
			}
			for _, f := range establishFlows(t, m, 2000, 2) {
				if f.host == host4(1) {
					t.Fatalf("a new flow went to the draining backend")
				}
			}

			// Backend 2 goes down.
			if err := m.SetBackendState(vip4, dip4(2), 0, ananta.BackendDown); err != nil {
				t.Fatal(err)
			}
			on2, stayed := 0, 0
			for i, h := range hostsNow(m, flows) {
				switch {
				case flows[i].host == host4(2):
					on2++
					if h == host4(2) {
						stayed++
					}
				case h != flows[i].host:
					t.Fatalf("flow %d of a healthy backend moved from %s to %s", i, flows[i].host, h)
				}
			}
			if on2 == 0 {
				t.Fatal("no flow on backend 2")
			}
			if policy == DownMove && stayed != 0 {
				t.Errorf("DownMove: %d of %d flows stayed on the down backend", stayed, on2)
			}
			if policy == DownKeep && stayed != on2 {
				t.Errorf("DownKeep: %d of %d flows stayed on the down backend", stayed, on2)
			}
			if policy == DownMove && m.Stats().Flows.Moves != uint64(on2) {
				t.Errorf("Moves = %d, want %d", m.Stats().Flows.Moves, on2)
			}
			// A moved flow stays where it moved to.
			now := hostsNow(m, flows)
			for i, h := range hostsNow(m, flows) {
				if h != now[i] {
					t.Fatalf("flow %d moved again, from %s to %s", i, now[i], h)
				}
			}
			if err := m.SetBackendState(vip4, dip4(2), 0, ananta.BackendActive); err != nil {
				t.Fatal(err)
			}

			// Remove backend 3 from the config: its flows move, others stay.
			mustSetVIP(t, m, simpleVIP(vip4, 80, append(backends4(1, 2), backends4(4, 12)...)))
			before := now
			on3 := 0
			for i, h := range hostsNow(m, flows) {
				if before[i] == host4(3) {
					on3++
					if h == host4(3) {
						t.Fatalf("a flow stayed on the removed backend")
					}
				} else if h != before[i] {
					t.Fatalf("flow %d moved from %s to %s when backend 3 was removed", i, before[i], h)
				}
			}
			if on3 == 0 {
				t.Fatal("no flow on backend 3")
			}
			// Health state outlives SetVIP while the backend stays.
			for _, b := range m.Stats().Backends {
				if b.DIP.Addr() == dip4(1) && b.State != ananta.BackendDraining {
					t.Errorf("backend 1 is %v after SetVIP, want draining", b.State)
				}
			}
		})
	}
}

// TestSYNFloodKeepsTrustedFlows: a million SYNs from random sources churn
// the untrusted entries but evict no trusted flow. Afterwards the backend
// set changes, so that a flow that lost its entry would move.
func TestSYNFloodKeepsTrustedFlows(t *testing.T) {
	m := newMux(t, testConfig(func(c *Config) { c.FlowTableBytes = 4 << 20 }))
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 10)))
	flows := establishFlows(t, m, 20000, 3)
	before := m.Stats().Flows
	if before.Trusted != len(flows) {
		t.Fatalf("%d trusted flows, want %d", before.Trusted, len(flows))
	}
	// Distinct sources: i*odd is a permutation of 0..2^20-1.
	pkt := tcp4(client, 1, vip4, 80, encap.TCPFlagSYN)
	buf := make([]byte, Headroom+len(pkt))
	deadline := time.Now().Add(30 * time.Second)
	for i := range 1_000_000 {
		copy(buf[Headroom:], pkt)
		s := buf[Headroom:]
		v := uint32(i) * 0x9e3779b1 & (1<<20 - 1)
		copy(s[12:16], []byte{198, 19, 128 | byte(v>>13), byte(v >> 5)})
		s[20], s[21] = 0x80, byte(v&31)
		if vd, _, _ := m.Process(buf, Headroom, len(buf)); vd != verdictForward {
			t.Fatalf("SYN %d: %v", i, vd)
		}
		if i%65536 == 0 && time.Now().After(deadline) {
			t.Fatalf("flood took more than 30 s (%d SYNs)", i)
		}
	}
	after := m.Stats().Flows
	t.Logf("after the flood: %+v", after)
	if after.Trusted != len(flows) {
		t.Errorf("%d trusted flows after the flood, want %d", after.Trusted, len(flows))
	}
	if after.Evictions == 0 || after.Untrusted > after.MaxUntrusted {
		t.Errorf("the flood did not churn the untrusted quota as expected: %+v", after)
	}
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 20)))
	for i, h := range hostsNow(m, flows) {
		if h != flows[i].host {
			t.Fatalf("trusted flow %d moved from %s to %s after the flood", i, flows[i].host, h)
		}
	}
}

// TestExpiry: untrusted flows expire after UntrustedIdleTimeout, trusted
// ones after their endpoint's idle timeout, by lookup or by the sweeper.
func TestExpiry(t *testing.T) {
	clk := newFakeClock(time.Hour)
	m := newMux(t, testConfig(func(c *Config) { c.Clock = clk.now; c.UntrustedIdleTimeout = time.Second }))
	cfg := simpleVIP(vip4, 80, backends4(1, 4))
	cfg.Endpoints[0].IdleTimeout = 5 * time.Second
	mustSetVIP(t, m, cfg)
	a := tcp4(client, 1000, vip4, 80, encap.TCPFlagSYN)
	b := tcp4(client, 1001, vip4, 80, encap.TCPFlagSYN)
	process(m, a)
	process(m, b)
	process(m, b) // b is trusted
	check := func(what string, trusted, untrusted int) {
		t.Helper()
		if st := m.Stats().Flows; st.Trusted != trusted || st.Untrusted != untrusted {
			t.Errorf("%s: %d trusted, %d untrusted, want %d, %d", what, st.Trusted, st.Untrusted, trusted, untrusted)
		}
	}
	check("start", 1, 1)
	sweepAll := func() {
		for i := range m.ft.shards {
			m.ft.shards[i].sweep(m.now(), m.ft.shards[i].nb)
		}
	}
	clk.advance(999 * time.Millisecond)
	sweepAll()
	check("after 999 ms", 1, 1)
	clk.advance(time.Millisecond)
	sweepAll()
	check("after 1 s", 1, 0)
	clk.advance(3999 * time.Millisecond)
	sweepAll()
	check("after 4.999 s", 1, 0)
	// A packet refreshes the trusted flow's timeout (lazy path: no sweep).
	process(m, b)
	clk.advance(4999 * time.Millisecond)
	if r := process(m, b); r.v != verdictForward {
		t.Fatal(r.v)
	}
	check("refreshed", 1, 0)
	clk.advance(5 * time.Second)
	// Lazy expiry: the lookup frees the expired entry; the packet is a new
	// (untrusted) flow.
	process(m, b)
	check("expired on lookup", 0, 1)
	if st := m.Stats().Flows; st.Expirations != 2 {
		t.Errorf("%d expirations, want 2", st.Expirations)
	}
}

// TestQuotas: the untrusted quota is never exceeded (new flows replace
// untrusted ones), a second packet finding the trusted quota full leaves
// its flow untrusted, and with no room at all packets are balanced
// statelessly (fallbacks).
func TestQuotas(t *testing.T) {
	m := newMux(t, testConfig(func(c *Config) {
		c.FlowTableBytes = MinFlowTableBytes
		c.FlowTableShards = 1
		c.UntrustedShare = 0.5
	}))
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 4)))
	st := m.Stats().Flows
	if st.Capacity != MinFlowTableBytes/FlowEntryBytes/8*8 || st.MaxTrusted+st.MaxUntrusted != st.Capacity {
		t.Fatalf("capacity %d (%d + %d), want %d", st.Capacity, st.MaxTrusted, st.MaxUntrusted, MinFlowTableBytes/FlowEntryBytes/8*8)
	}
	// Twice the capacity in trusted flows.
	establishFlows(t, m, 2*st.Capacity, 5)
	st = m.Stats().Flows
	t.Logf("%+v", st)
	if st.Trusted > st.MaxTrusted || st.Untrusted > st.MaxUntrusted {
		t.Errorf("quotas exceeded: %+v", st)
	}
	if st.Trusted < st.MaxTrusted*9/10 {
		t.Errorf("trusted entries %d of a quota of %d", st.Trusted, st.MaxTrusted)
	}
	if st.PromotionsRefused == 0 || st.Evictions == 0 {
		t.Errorf("no refused promotions or evictions: %+v", st)
	}
	// Fill the untrusted part with trusted-looking load is impossible; make
	// every entry trusted by giving all the capacity to trusted flows.
	m2 := newMux(t, testConfig(func(c *Config) {
		c.FlowTableBytes = MinFlowTableBytes
		c.FlowTableShards = 1
		c.UntrustedShare = 0.01
	}))
	mustSetVIP(t, m2, simpleVIP(vip4, 80, backends4(1, 4)))
	establishFlows(t, m2, 3*st.Capacity, 6)
	st2 := m2.Stats().Flows
	t.Logf("%+v", st2)
	if st2.Fallbacks == 0 {
		t.Errorf("no fallbacks with a full table: %+v", st2)
	}
	drops := m2.Stats().Dropped()
	if drops != 0 {
		t.Errorf("a full table dropped %d packets", drops)
	}
}
