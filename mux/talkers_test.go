package mux

import (
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ananta-go/ananta/encap"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// TestTopTalkers: packet and new-flow rates per VIP over the sliding
// window, highest first; traffic older than the window stops counting.
func TestTopTalkers(t *testing.T) {
	clk := newFakeClock(time.Hour)
	m := newMux(t, testConfig(func(c *Config) { c.Clock = clk.now; c.TalkerWindow = 10 * time.Second }))
	vipA, vipB, vipC := vip4, netip.MustParseAddr("198.19.0.11"), netip.MustParseAddr("198.19.0.12")
	for _, v := range []netip.Addr{vipA, vipB, vipC} {
		mustSetVIP(t, m, simpleVIP(v, 80, backends4(1, 2)))
	}
	send := func(vip netip.Addr, flows, perFlow int) {
		for f := range flows {
			for range perFlow {
				process(m, tcp4(client, uint16(1000+f), vip, 80, encap.TCPFlagACK))
			}
		}
	}
	// 10 s of traffic, sampled every second: A 200 packets in 10 flows,
	// B 100 packets in 100 flows, C nothing.
	for range 10 {
		clk.advance(time.Second)
		m.talkers.maybeSample(m.elapsed())
	}
	send(vipA, 10, 20)
	send(vipB, 100, 1)
	top := m.TopTalkers(2)
	if len(top) != 2 || top[0].VIP != vipA || top[1].VIP != vipB {
		t.Fatalf("TopTalkers(2) = %+v, want A then B", top)
	}
	if math.Abs(top[0].PacketRate-20) > 0.01 || math.Abs(top[0].NewFlowRate-1) > 0.01 {
		t.Errorf("A: %+v, want 20 packets/s and 1 new flow/s", top[0])
	}
	if math.Abs(top[1].PacketRate-10) > 0.01 || math.Abs(top[1].NewFlowRate-10) > 0.01 {
		t.Errorf("B: %+v, want 10 packets/s and 10 new flows/s", top[1])
	}
	if all := m.TopTalkers(-1); len(all) != 3 || all[2].VIP != vipC || all[2].PacketRate != 0 {
		t.Errorf("TopTalkers(-1) = %+v", all)
	}
	// Ten more seconds without traffic: the window no longer holds it.
	for range 11 {
		clk.advance(time.Second)
		m.talkers.maybeSample(m.elapsed())
	}
	for _, tk := range m.TopTalkers(-1) {
		if tk.PacketRate != 0 {
			t.Errorf("%s still at %v packets/s a window later", tk.VIP, tk.PacketRate)
		}
	}
	if err := m.DeleteVIP(vipB); err != nil {
		t.Fatal(err)
	}
	if len(m.TopTalkers(-1)) != 2 {
		t.Errorf("a deleted VIP is still ranked")
	}
}

// TestCollector: the Prometheus collector reports the counters.
func TestCollector(t *testing.T) {
	m := newMux(t, testConfig(nil))
	mustSetVIP(t, m, simpleVIP(vip4, 80, backends4(1, 2)))
	for i := range 5 {
		process(m, tcp4(client, uint16(2000+i), vip4, 80, encap.TCPFlagSYN))
	}
	process(m, tcp4(client, 1, netip.MustParseAddr("198.19.9.9"), 80, 0))
	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(m); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	get := func(name string, labels map[string]string) float64 {
		t.Helper()
		for _, mf := range mfs {
			if mf.GetName() != name {
				continue
			}
		next:
			for _, mt := range mf.GetMetric() {
				for _, lp := range mt.GetLabel() {
					if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
						continue next
					}
				}
				return value(mt)
			}
		}
		t.Errorf("no metric %s%v", name, labels)
		return math.NaN()
	}
	if v := get("ananta_mux_vip_packets_total", map[string]string{"vip": vip4.String(), "tenant": "t1"}); v != 5 {
		t.Errorf("vip packets %v, want 5", v)
	}
	if v := get("ananta_mux_drops_total", map[string]string{"reason": "no_vip"}); v != 1 {
		t.Errorf("no_vip drops %v, want 1", v)
	}
	if v := get("ananta_mux_flow_table_entries", map[string]string{"class": "untrusted"}); v != 5 {
		t.Errorf("untrusted entries %v, want 5", v)
	}
	sum := get("ananta_mux_backend_new_flows_total", map[string]string{"dip": dip4(1).String() + ":0"}) +
		get("ananta_mux_backend_new_flows_total", map[string]string{"dip": dip4(2).String() + ":0"})
	if sum != 5 {
		t.Errorf("backend new flows %v, want 5", sum)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	if !strings.Contains(strings.Join(names, " "), "ananta_mux_flow_table_events_total") {
		t.Errorf("metrics %v", names)
	}
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return math.NaN()
}
