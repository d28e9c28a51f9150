package packetio_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/packetio"
)

const benchBatch = 32

// benchSizes are the IP packet sizes benchmarked: minimal UDP, and near a
// 1500-byte MTU.
var benchSizes = []int{64, 1400}

// BenchmarkMemPipe writes a batch of 32 packets into one end of a pipe and
// reads them from the other, on one goroutine. ns/op is per packet.
func BenchmarkMemPipe(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			a, z := pipe(b, packetio.MemConfig{QueueLen: 2 * benchBatch, MaxPacket: 1500, Headroom: 40})
			out := packetio.NewBatch(benchBatch, 1540, 40)
			pkt := udpPacket(netip.MustParseAddrPort("198.18.30.1:1000"), netip.MustParseAddrPort("198.18.30.2:2000"), make([]byte, size-28))
			for i := range out {
				fill(out[i:i+1], pkt)
			}
			in := packetio.NewBatch(benchBatch, 1540, 40)
			b.ReportAllocs()
			b.SetBytes(int64(size))
			b.ResetTimer()
			for sent := 0; sent < b.N; sent += benchBatch {
				k := min(benchBatch, b.N-sent)
				if n, err := a.WriteBatch(out[:k]); n != k || err != nil {
					b.Fatal(n, err)
				}
				if n, err := z.ReadBatch(in); n != k || err != nil {
					b.Fatal(n, err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pps")
		})
	}
}

// BenchmarkAFPacket sends b.N UDP packets in batches of 32 through an
// AF_PACKET port on one end of a veth pair and reads them, in batches of 32,
// from an AF_PACKET port on the other end, each end in its own namespace.
// ns/op and pps count packets received; the writer keeps at most
// benchWindow packets in flight so that the receiver's socket does not
// overflow. Packets lost anyway (none expected) are reported as lost.
func BenchmarkAFPacket(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) { benchAFPacket(b, size) })
	}
}

const benchWindow = 2048

func benchAFPacket(b *testing.B, size int) {
	testutil.RequirePrivileged(b)
	testutil.CheckGoroutines(b)
	nsA, nsB := testutil.NewNetNS(b), testutil.NewNetNS(b)
	aIf, bIf := testutil.Veth(b, nsA, nsB, netip.Prefix{}, netip.Prefix{})
	// No IPv6 chatter (router solicitations, MLD) on the measured link.
	nsA.Run(b, "sysctl", "-qw", "net.ipv6.conf."+aIf+".disable_ipv6=1")
	nsB.Run(b, "sysctl", "-qw", "net.ipv6.conf."+bIf+".disable_ipv6=1")
	var bMAC net.HardwareAddr
	if err := nsB.Do(func() error {
		ifi, err := net.InterfaceByName(bIf)
		if err == nil {
			bMAC = ifi.HardwareAddr
		}
		return err
	}); err != nil {
		b.Fatal(err)
	}
	w := openAF(b, nsA, packetio.AFPacketConfig{Interface: aIf, NextHop: bMAC, BatchSize: benchBatch})
	r := openAF(b, nsB, packetio.AFPacketConfig{Interface: bIf, BatchSize: benchBatch, RecvBuffer: 16 << 20})

	var received atomic.Int64
	progress := make(chan struct{}, 1)
	readerDone := make(chan error, 1)
	go func() {
		in := packetio.NewBatch(benchBatch, 2048, 40)
		for {
			n, err := r.ReadBatch(in)
			if err != nil {
				readerDone <- err
				return
			}
			k := 0
			for i := range n {
				if p := in[i].Packet(); p[0]>>4 == 4 && p[9] == 17 {
					k++
				}
			}
			received.Add(int64(k))
			select {
			case progress <- struct{}{}:
			default:
			}
		}
	}()
	defer func() {
		r.Close()
		if err := <-readerDone; !errors.Is(err, packetio.ErrClosed) {
			b.Errorf("reader: %v", err)
		}
	}()

	out := packetio.NewBatch(benchBatch, 2048, 40)
	pkt := udpPacket(netip.MustParseAddrPort("198.18.30.1:1000"), netip.MustParseAddrPort("198.18.30.2:2000"), make([]byte, size-28))
	for i := range out {
		fill(out[i:i+1], pkt)
	}
	stall := time.NewTimer(time.Hour)
	defer stall.Stop()
	lost := int64(0)
	// wait blocks until fewer than limit packets are in flight. A second
	// without progress declares the packets in flight lost.
	wait := func(limit int64, sent int) {
		for int64(sent)-received.Load()-lost > limit {
			stall.Reset(time.Second)
			select {
			case <-progress:
			case <-stall.C:
				lost = int64(sent) - received.Load()
			}
		}
	}

	b.ReportAllocs()
	b.SetBytes(int64(size))
	b.ResetTimer()
	sent := 0
	for sent < b.N {
		wait(benchWindow-benchBatch, sent)
		k := min(benchBatch, b.N-sent)
		n, err := w.WriteBatch(out[:k])
		if err != nil {
			b.Fatal(err)
		}
		sent += n
	}
	wait(0, sent)
	b.StopTimer()
	got := received.Load()
	b.ReportMetric(float64(got)/b.Elapsed().Seconds(), "pps")
	b.ReportMetric(float64(lost), "lost")
	if st := r.Stats(); st.RxDropped > 0 {
		b.Logf("receiver socket dropped %d packets", st.RxDropped)
	}
}
