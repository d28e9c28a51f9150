package bpf

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/hashring"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/mux"
)

// BenchmarkXDPMux measures the XDP program under BPF_PROG_TEST_RUN, one
// packet per run (repeat 1: with a larger repeat the kernel would feed the
// program its own encapsulated output). ns/op is dominated by the bpf(2)
// syscall; the kernel-measured time of the run is reported as
// kernel-ns/pkt, and prog-ns/pkt subtracts the floor: the kernel-measured
// time of a program that only returns XDP_TX, measured the same way
// (floor-ns/pkt).
func BenchmarkXDPMux(b *testing.B) {
	testutil.RequirePrivileged(b)
	pinCPU(b)
	vip := netip.MustParseAddr("198.19.0.10")
	m, err := New(Config{
		Mux: mux.Config{
			SourcePrefix4: netip.MustParsePrefix("198.18.200.0/24"),
			Maglev:        hashring.Config{Size: hashring.DefaultSize},
		},
		GatewayMAC:       gwMAC,
		FlowTableEntries: 1 << 21,
	})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	var bes []ananta.Backend
	for i := range 16 {
		bes = append(bes, ananta.Backend{DIP: netip.AddrFrom4([4]byte{10, 1, 0, byte(i + 1)}), Port: 8080,
			Host: netip.AddrFrom4([4]byte{198, 18, 1, byte(i + 1)}), Weight: 1})
	}
	if err := m.SetVIP(ananta.VIPConfig{VIP: vip, Tenant: "t", Endpoints: []ananta.EndpointConfig{
		{Protocol: ananta.ProtocolTCP, Port: 80, Backends: bes},
	}}); err != nil {
		b.Fatal(err)
	}
	floor, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.XDP,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 3), asm.Return()},
		License:      "MIT",
	})
	if err != nil {
		b.Fatal(err)
	}
	defer floor.Close()

	pkt := build(pktSpec{src: netip.MustParseAddr("203.0.113.1"), dst: vip, proto: 6, sport: 40000, dport: 80, payload: 64, df: true})
	frame := append([]byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0}, pkt...)
	// setFlow makes frame flow i: source address 203.x.y.z and port.
	setFlow := func(i uint32) {
		binary.BigEndian.PutUint32(frame[14+12:], 0xcb000000|i>>4&0xffffff)
		binary.BigEndian.PutUint16(frame[14+20:], uint16(1024+i&15))
	}
	measure := func(b *testing.B, prog *ebpf.Program, next func(i int)) time.Duration {
		var total time.Duration
		for i := range b.N {
			next(i)
			ret, d, err := prog.Benchmark(frame, 1, nil)
			if err != nil {
				b.Fatal(err)
			}
			if ret != 3 {
				b.Fatalf("verdict %d, want XDP_TX", ret)
			}
			total += d
		}
		return total
	}
	floorNS := func() float64 {
		const n = 20000
		var total time.Duration
		for range n {
			_, d, err := floor.Benchmark(frame, 1, nil)
			if err != nil {
				b.Fatal(err)
			}
			total += d
		}
		return float64(total.Nanoseconds()) / n
	}()
	report := func(b *testing.B, total time.Duration) {
		k := float64(total.Nanoseconds()) / float64(b.N)
		b.ReportMetric(k, "kernel-ns/pkt")
		b.ReportMetric(floorNS, "floor-ns/pkt")
		b.ReportMetric(k-floorNS, "prog-ns/pkt")
	}

	b.Run("established", func(b *testing.B) {
		b.ReportAllocs()
		setFlow(1)
		if _, _, err := m.Program().Benchmark(frame, 1, nil); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		report(b, measure(b, m.Program(), func(int) {}))
	})
	b.Run("established-1M", func(b *testing.B) {
		b.ReportAllocs()
		const flows = 1 << 20
		for i := range uint32(flows) {
			setFlow(i + 1<<24)
			if _, _, err := m.Program().Benchmark(frame, 1, nil); err != nil {
				b.Fatal(err)
			}
		}
		b.ResetTimer()
		report(b, measure(b, m.Program(), func(i int) { setFlow(uint32(i*7919)%flows + 1<<24) }))
	})
	b.Run("new-flow", func(b *testing.B) {
		b.ReportAllocs()
		base := uint32(time.Now().UnixNano()) | 1<<27 // flows not seen before
		report(b, measure(b, m.Program(), func(i int) { setFlow(base + uint32(i)) }))
	})
	b.Run("floor-xdp-tx", func(b *testing.B) {
		b.ReportAllocs()
		report(b, measure(b, floor, func(int) {}))
	})
}
