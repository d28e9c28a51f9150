package mux

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/packetio"
	"golang.org/x/sys/unix"
)

// genEnv carries BenchmarkAFPacket's instructions to its generator
// process: "interface,nexthop-mac,count,flows".
const genEnv = "ANANTA_MUX_GEN"

var benchVIP = netip.MustParseAddr("198.19.0.10")

// TestAFPacketGenerator is not a test but the traffic generator of
// BenchmarkAFPacket, which runs this test binary again inside the
// generator's network namespace with ANANTA_MUX_GEN set. It writes count
// UDP packets of the given number of flows to the VIP with AF_PACKET, in
// batches, as fast as the kernel takes them, and prints how many it sent.
func TestAFPacketGenerator(t *testing.T) {
	spec := os.Getenv(genEnv)
	if spec == "" {
		t.Skip("helper process of BenchmarkAFPacket (needs " + genEnv + ")")
	}
	f := strings.Split(spec, ",")
	if len(f) != 4 {
		t.Fatalf("%s=%q: want interface,mac,count,flows", genEnv, spec)
	}
	mac, err := net.ParseMAC(f[1])
	if err != nil {
		t.Fatal(err)
	}
	count, _ := strconv.Atoi(f[2])
	flows, _ := strconv.Atoi(f[3])
	port, err := packetio.OpenAFPacket(packetio.AFPacketConfig{Interface: f[0], NextHop: mac, BatchSize: 256, SendBuffer: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer port.Close()
	pkts := make([]packetio.Message, flows)
	for i := range pkts {
		src := netip.AddrFrom4([4]byte{198, 18, byte(128 + i>>16&63), byte(i >> 8)})
		p := pktSpec{src: src, dst: benchVIP, sport: uint16(1024 + i&0xff), dport: 9000, proto: ananta.ProtocolUDP, payload: 18}.build()
		pkts[i] = packetio.Message{Buf: p, N: len(p)}
	}
	deadline := time.Now().Add(60 * time.Second)
	sent, i := 0, 0
	for sent < count && time.Now().Before(deadline) {
		n := min(256, count-sent, len(pkts)-i)
		w, err := port.WriteBatch(pkts[i : i+n])
		sent += w
		if err != nil && w < n {
			sent++ // skipped
			w++
		}
		i = (i + w) % len(pkts)
	}
	fmt.Printf("sent %d\n", sent)
}

// BenchmarkAFPacket measures a Mux forwarding UDP packets of 10,000 flows
// between two network namespaces over AF_PACKET: a generator process in
// the first namespace writes b.N packets (use -benchtime Nx), one Mux
// worker forwards them IP-in-IP to the third namespace, whose interface
// counts what arrives. It reports the forwarding rate over wall time, per
// CPU second of the Mux's process (the Mux's packet sockets and the
// kernel's veth work done on its behalf included), and the share of the
// generated packets that arrived.
func BenchmarkAFPacket(b *testing.B) {
	testutil.RequirePrivileged(b, "sysctl")
	gen, mns, sink := testutil.NewNetNS(b), testutil.NewNetNS(b), testutil.NewNetNS(b)
	genIf, muxIn := testutil.Veth(b, gen, mns, netip.MustParsePrefix("198.18.1.1/24"), netip.MustParsePrefix("198.18.1.2/24"))
	muxOut, sinkIf := testutil.Veth(b, mns, sink, netip.MustParsePrefix("198.18.2.1/24"), netip.MustParsePrefix("198.18.2.2/24"))
	mns.Run(b, "ip", "route", "add", "blackhole", "198.19.0.0/24")
	muxMAC, sinkMAC := mns.MAC(b, muxIn), sink.MAC(b, sinkIf)
	var in, out *packetio.AFPacket
	if err := mns.Do(func() error {
		var err error
		if in, err = packetio.OpenAFPacket(packetio.AFPacketConfig{Interface: muxIn, Headroom: Headroom, BatchSize: 256, RecvBuffer: 16 << 20}); err != nil {
			return err
		}
		out, err = packetio.OpenAFPacket(packetio.AFPacketConfig{Interface: muxOut, NextHop: sinkMAC, BatchSize: 256, SendBuffer: 16 << 20})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	m := newMux(b, Config{
		Addr4:          netip.MustParseAddr("198.18.2.1"),
		SourcePrefix4:  netip.MustParsePrefix("198.18.200.0/24"),
		FlowTableBytes: 64 << 20,
		Links:          []Link{{In: in, Out: out}},
		BatchSize:      256,
	})
	var bs []ananta.Backend
	for i := range 16 {
		bs = append(bs, ananta.Backend{DIP: netip.AddrFrom4([4]byte{198, 18, 3, byte(10 + i)}), Host: netip.AddrFrom4([4]byte{198, 18, 2, byte(10 + i)}), Weight: 1})
	}
	mustSetVIP(b, m, ananta.VIPConfig{VIP: benchVIP, Tenant: "bench", Endpoints: []ananta.EndpointConfig{{Protocol: ananta.ProtocolUDP, Port: 9000, Backends: bs}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		<-done
	})
	rx := func() int {
		out, err := sink.Output("cat", "/sys/class/net/"+sinkIf+"/statistics/rx_packets")
		if err != nil {
			b.Fatal(err)
		}
		n, _ := strconv.Atoi(strings.TrimSpace(out))
		return n
	}
	cpu := func() time.Duration {
		var ru unix.Rusage
		_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	rx0, fwd0, cpu0 := rx(), m.Stats().Forwarded, cpu()
	t0 := time.Now()
	b.ResetTimer()
	cmd := gen.Command(context.Background(), os.Args[0], "-test.run=^TestAFPacketGenerator$", "-test.bench=^$", "-test.v")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s,%s,%d,%d", genEnv, genIf, muxMAC, b.N, 10000))
	outb, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("generator: %v\n%s", err, outb)
	}
	// Wait (bounded) until the Mux has drained its queue: the forwarded
	// count stops moving.
	last, lastMove := m.Stats().Forwarded, time.Now()
	for time.Since(lastMove) < 50*time.Millisecond && time.Since(t0) < 120*time.Second {
		time.Sleep(5 * time.Millisecond)
		if f := m.Stats().Forwarded; f != last {
			last, lastMove = f, time.Now()
		}
	}
	b.StopTimer()
	elapsed := lastMove.Sub(t0)
	fwd := float64(m.Stats().Forwarded - fwd0)
	delivered := float64(rx() - rx0)
	used := cpu() - cpu0
	b.ReportMetric(fwd/elapsed.Seconds(), "fwd-pkts/s")
	b.ReportMetric(fwd/used.Seconds(), "pkts/cpu-s")
	b.ReportMetric(delivered/float64(b.N), "delivered/sent")
	st := m.Stats()
	b.Logf("N=%d forwarded %.0f delivered %.0f in %s, Mux process CPU %s, drops %v, port in %+v", b.N, fwd, delivered, elapsed, used, st.Drops, in.Stats())
}
