package packetio_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/packetio"
	"golang.org/x/sys/unix"
)

var (
	addrA4 = netip.MustParseAddr("198.18.10.1")
	addrB4 = netip.MustParseAddr("198.18.10.2")
	addrA6 = netip.MustParseAddr("2001:db8:10::1")
	addrB6 = netip.MustParseAddr("2001:db8:10::2")
)

// link is two namespaces joined by a veth pair, addressed in both families.
type link struct {
	a, b       *testutil.NetNS
	aIf, bIf   string
	aMAC, bMAC net.HardwareAddr
}

func newLink(t *testing.T) *link {
	t.Helper()
	testutil.RequirePrivileged(t)
	l := &link{a: testutil.NewNetNS(t), b: testutil.NewNetNS(t)}
	l.aIf, l.bIf = testutil.Veth(t, l.a, l.b, netip.PrefixFrom(addrA4, 24), netip.PrefixFrom(addrB4, 24))
	l.a.Run(t, "ip", "addr", "add", netip.PrefixFrom(addrA6, 64).String(), "dev", l.aIf, "nodad")
	l.b.Run(t, "ip", "addr", "add", netip.PrefixFrom(addrB6, 64).String(), "dev", l.bIf, "nodad")
	// The kernel installs an IPv6 address's local and prefix routes a
	// moment after `ip addr add` returns, even without DAD; until then it
	// drops packets to the address (Ip6InAddrErrors).
	for _, e := range []struct {
		ns   *testutil.NetNS
		addr netip.Addr
	}{{l.a, addrA6}, {l.b, addrB6}} {
		testutil.WaitFor(t, 5*time.Second, "IPv6 routes for "+e.addr.String(), func() bool {
			local, _ := e.ns.Output("ip", "-6", "route", "show", "table", "local", e.addr.String())
			prefix, _ := e.ns.Output("ip", "-6", "route", "show", netip.PrefixFrom(e.addr, 64).Masked().String())
			return strings.TrimSpace(local) != "" && strings.TrimSpace(prefix) != ""
		})
	}
	l.aMAC = ifMAC(t, l.a, l.aIf)
	l.bMAC = ifMAC(t, l.b, l.bIf)
	return l
}

func ifMAC(t *testing.T, ns *testutil.NetNS, name string) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(name)
		if err == nil {
			mac = ifi.HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return mac
}

// openAF opens an AF_PACKET port inside ns and closes it on cleanup.
func openAF(t testing.TB, ns *testutil.NetNS, cfg packetio.AFPacketConfig) *packetio.AFPacket {
	t.Helper()
	var p *packetio.AFPacket
	if err := ns.Do(func() (err error) {
		p, err = packetio.OpenAFPacket(cfg)
		return err
	}); err != nil {
		t.Fatalf("OpenAFPacket(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// listenUDP opens a UDP socket inside ns.
func listenUDP(t testing.TB, ns *testutil.NetNS, addr netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() (err error) {
		c, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialUDP opens a connected UDP socket inside ns.
func dialUDP(t testing.TB, ns *testutil.NetNS, from, to netip.AddrPort) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	if err := ns.Do(func() (err error) {
		c, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(from), net.UDPAddrFromAddrPort(to))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// recvUDP reads one datagram within 5 s.
func recvUDP(t *testing.T, c *net.UDPConn) ([]byte, netip.AddrPort) {
	t.Helper()
	buf := make([]byte, 65536)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, from, err := c.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatalf("UDP read on %s: %v", c.LocalAddr(), err)
	}
	return buf[:n], netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
}

func TestAFPacketConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg packetio.AFPacketConfig
		ok  bool
	}{
		{packetio.AFPacketConfig{Interface: "eth0"}, true},
		{packetio.AFPacketConfig{Interface: "eth0", Headroom: 40, BatchSize: 1024, FanoutGroup: 65535, NextHop: net.HardwareAddr{1, 2, 3, 4, 5, 6}}, true},
		{packetio.AFPacketConfig{}, false},
		{packetio.AFPacketConfig{Interface: "a-very-long-interface"}, false},
		{packetio.AFPacketConfig{Interface: "eth0", Headroom: -1}, false},
		{packetio.AFPacketConfig{Interface: "eth0", BatchSize: 1025}, false},
		{packetio.AFPacketConfig{Interface: "eth0", BatchSize: -1}, false},
		{packetio.AFPacketConfig{Interface: "eth0", FanoutGroup: 65536}, false},
		{packetio.AFPacketConfig{Interface: "eth0", NextHop: make(net.HardwareAddr, 9)}, false},
		{packetio.AFPacketConfig{Interface: "eth0", RecvBuffer: -1}, false},
	} {
		err := tc.cfg.Validate()
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, packetio.ErrInvalidConfig)) {
			t.Errorf("%+v: Validate() = %v, want ok=%v", tc.cfg, err, tc.ok)
		}
	}
}

func TestAFPacketOpenErrors(t *testing.T) {
	l := newLink(t)
	err := l.a.Do(func() error {
		_, err := packetio.OpenAFPacket(packetio.AFPacketConfig{Interface: "nosuchif0"})
		return err
	})
	if err == nil {
		t.Error("OpenAFPacket on a missing interface succeeded")
	}
	err = l.a.Do(func() error {
		_, err := packetio.OpenAFPacket(packetio.AFPacketConfig{Interface: l.aIf, NextHop: net.HardwareAddr{1, 2, 3, 4}})
		return err
	})
	if !errors.Is(err, packetio.ErrInvalidConfig) {
		t.Errorf("4-byte NextHop on Ethernet: %v, want ErrInvalidConfig", err)
	}
	// The interface belongs to the namespace: from b's side it is unknown.
	err = l.b.Do(func() error {
		_, err := packetio.OpenAFPacket(packetio.AFPacketConfig{Interface: l.aIf})
		return err
	})
	if err == nil {
		t.Errorf("OpenAFPacket found %s outside its namespace", l.aIf)
	}
	p := openAF(t, l.a, packetio.AFPacketConfig{Interface: l.aIf})
	if p.Interface() != l.aIf || p.Index() <= 0 {
		t.Errorf("Interface() = %q, Index() = %d", p.Interface(), p.Index())
	}
	msgs := packetio.NewBatch(1, 100, 0)
	fill(msgs, udpPacket(netip.AddrPortFrom(addrA4, 1), netip.AddrPortFrom(addrB4, 2), nil))
	if _, err := p.WriteBatch(msgs); !errors.Is(err, packetio.ErrNoNextHop) {
		t.Errorf("WriteBatch without NextHop = %v, want ErrNoNextHop", err)
	}
}

// (a) Packets the other namespace's kernel stack sends arrive with the right
// bytes.
func TestAFPacketReadsKernelTraffic(t *testing.T) {
	testutil.CheckGoroutines(t)
	l := newLink(t)
	p := openAF(t, l.a, packetio.AFPacketConfig{Interface: l.aIf, Headroom: 40})
	c := collect(t, p, 8, 2048, 40)

	// UDP over IPv4 and IPv6 from b's stack to a's addresses; a listens,
	// so a's kernel stays quiet.
	for _, tc := range []struct{ src, dst netip.Addr }{{addrB4, addrA4}, {addrB6, addrA6}} {
		dst := netip.AddrPortFrom(tc.dst, 7001)
		listenUDP(t, l.a, dst)
		conn := dialUDP(t, l.b, netip.AddrPortFrom(tc.src, 0), dst)
		payload := "kernel-udp-" + tc.dst.String()
		if _, err := conn.Write([]byte(payload)); err != nil {
			t.Fatal(err)
		}
		pkt, _ := c.expect(t, 5*time.Second, "UDP to "+dst.String(), func(b []byte) bool { return isUDPTo(b, dst, "kernel-udp") })
		ip, _ := parseIP(pkt)
		src := conn.LocalAddr().(*net.UDPAddr).AddrPort()
		// The sender's veth left the UDP checksum to offload; the port
		// completed it.
		if checksum(ip.l4, pseudoSum(ip.src, ip.dst, 17, len(ip.l4))) != 0 {
			t.Errorf("UDP checksum of the packet read does not verify:\n% x", pkt)
		}
		if ip.src != tc.src || !ip.headerOK || !ip.totalMatch || string(ip.l4[8:]) != payload ||
			binary.BigEndian.Uint16(ip.l4[0:]) != src.Port() || int(binary.BigEndian.Uint16(ip.l4[4:])) != 8+len(payload) {
			t.Errorf("UDP packet read: %+v\n% x", ip, pkt)
		}
	}

	// A TCP SYN (and the rest of the handshake) from b to a listener in a.
	dst := netip.AddrPortFrom(addrA4, 7002)
	var ln net.Listener
	if err := l.a.Do(func() (err error) {
		ln, err = net.Listen("tcp", dst.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := l.b.Do(func() error {
		conn, err := net.DialTimeout("tcp", dst.String(), 5*time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	}); err != nil {
		t.Fatal(err)
	}
	pkt, _ := c.expect(t, 5*time.Second, "TCP SYN", func(b []byte) bool {
		ip, ok := parseIP(b)
		return ok && ip.proto == 6 && ip.dst == addrA4 && len(ip.l4) >= 20 &&
			binary.BigEndian.Uint16(ip.l4[2:]) == dst.Port() && ip.l4[13]&0x12 == 0x02
	})
	ip, _ := parseIP(pkt)
	if checksum(ip.l4, pseudoSum(ip.src, ip.dst, 6, len(ip.l4))) != 0 {
		t.Errorf("TCP checksum of the SYN read does not verify:\n% x", pkt)
	}
	if ip.src != addrB4 || !ip.headerOK || !ip.totalMatch || int(ip.l4[12]>>4)*4 < 20 || int(ip.l4[12]>>4)*4 > len(ip.l4) {
		t.Errorf("TCP SYN read: %+v\n% x", ip, pkt)
	}
	if st := p.Stats(); st.RxPackets < 3 || st.RxBytes == 0 || st.TxPackets != 0 {
		t.Errorf("stats %+v", st)
	}
}

// (b) Packets the port writes reach kernel sockets in the other namespace,
// IPv4 and IPv6, from headroom-shifted buffers.
func TestAFPacketWritesReachKernelSockets(t *testing.T) {
	testutil.CheckGoroutines(t)
	l := newLink(t)
	p := openAF(t, l.a, packetio.AFPacketConfig{Interface: l.aIf, NextHop: l.bMAC, Headroom: 40})
	for _, tc := range []struct{ src, dst netip.Addr }{{addrA4, addrB4}, {addrA6, addrB6}} {
		dst := netip.AddrPortFrom(tc.dst, 7003)
		src := netip.AddrPortFrom(tc.src, 5555)
		sock := listenUDP(t, l.b, dst)
		payload := []byte("written-by-afpacket-" + tc.dst.String())
		msgs := packetio.NewBatch(1, 2048, 40)
		fill(msgs, udpPacket(src, dst, payload))
		if n, err := p.WriteBatch(msgs); n != 1 || err != nil {
			t.Fatalf("WriteBatch = %d, %v", n, err)
		}
		got, from := recvUDP(t, sock)
		if !bytes.Equal(got, payload) || from != src {
			t.Errorf("received %q from %s, want %q from %s", got, from, payload, src)
		}
	}
	if st := p.Stats(); st.TxPackets != 2 || st.TxBytes == 0 || st.TxDropped != 0 {
		t.Errorf("stats %+v", st)
	}
	// A packet larger than the MTU is refused with ErrTooBig and EMSGSIZE;
	// the ones before it in the batch are sent.
	dst := netip.AddrPortFrom(addrB4, 7004)
	sock := listenUDP(t, l.b, dst)
	msgs := packetio.NewBatch(2, 4096, 0)
	fill(msgs, udpPacket(netip.AddrPortFrom(addrA4, 1), dst, []byte("small")),
		udpPacket(netip.AddrPortFrom(addrA4, 1), dst, make([]byte, 2000)))
	n, err := p.WriteBatch(msgs)
	if n != 1 || !errors.Is(err, packetio.ErrTooBig) || !errors.Is(err, unix.EMSGSIZE) {
		t.Errorf("WriteBatch with an oversize packet = %d, %v", n, err)
	}
	if got, _ := recvUDP(t, sock); string(got) != "small" {
		t.Errorf("received %q", got)
	}
	// Invalid messages stop the batch before any system call.
	bad := []packetio.Message{{Buf: []byte{0x10, 0}, N: 2}}
	if n, err := p.WriteBatch(bad); n != 0 || !errors.Is(err, packetio.ErrInvalidPacket) {
		t.Errorf("WriteBatch(version 1) = %d, %v", n, err)
	}
}

// (c) Batches larger than one, both ways, including batches longer than
// BatchSize, which are split.
func TestAFPacketBatches(t *testing.T) {
	testutil.CheckGoroutines(t)
	l := newLink(t)
	p := openAF(t, l.a, packetio.AFPacketConfig{Interface: l.aIf, NextHop: l.bMAC, BatchSize: 32})

	// Write 100 packets in one call (4 sendmmsg calls of at most 32).
	dst := netip.AddrPortFrom(addrB4, 7005)
	sock := listenUDP(t, l.b, dst)
	out := packetio.NewBatch(100, 256, 0)
	for i := range out {
		fill(out[i:i+1], udpPacket(netip.AddrPortFrom(addrA4, 6000), dst, fmt.Appendf(nil, "batch-%03d", i)))
	}
	if n, err := p.WriteBatch(out); n != 100 || err != nil {
		t.Fatalf("WriteBatch(100) = %d, %v", n, err)
	}
	for i := range 100 {
		got, _ := recvUDP(t, sock)
		if want := fmt.Sprintf("batch-%03d", i); string(got) != want {
			t.Fatalf("datagram %d = %q, want %q (order kept)", i, got, want)
		}
	}

	// b's stack sends 64 datagrams to a. a's own UDP socket receiving all
	// of them proves the port's socket has them queued too (packet taps run
	// before the IP stack), so one ReadBatch must return a full batch.
	aDst := netip.AddrPortFrom(addrA4, 7006)
	aSock := listenUDP(t, l.a, aDst)
	conn := dialUDP(t, l.b, netip.AddrPortFrom(addrB4, 0), aDst)
	for i := range 64 {
		if _, err := conn.Write(fmt.Appendf(nil, "in-%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	for range 64 {
		recvUDP(t, aSock)
	}
	guard := time.AfterFunc(10*time.Second, func() { p.Close() })
	defer guard.Stop()
	in := packetio.NewBatch(64, 256, 0)
	n, err := p.ReadBatch(in)
	if err != nil || n != 32 {
		t.Fatalf("first ReadBatch = %d, %v; want a full batch of BatchSize 32", n, err)
	}
	next := 0
	for next < 64 {
		for i := range n {
			if isUDPTo(in[i].Packet(), aDst, "in-") {
				ip, _ := parseIP(in[i].Packet())
				if want := fmt.Sprintf("in-%02d", next); string(ip.l4[8:]) != want {
					t.Fatalf("read %q, want %q", ip.l4[8:], want)
				}
				next++
			}
		}
		if next < 64 {
			if n, err = p.ReadBatch(in); err != nil {
				t.Fatalf("ReadBatch after %d datagrams: %v", next, err)
			}
		}
	}
}

// (d) The port reads neither its own transmissions nor the kernel's
// outgoing packets on the interface.
func TestAFPacketIgnoresOutgoing(t *testing.T) {
	testutil.CheckGoroutines(t)
	l := newLink(t)
	p := openAF(t, l.a, packetio.AFPacketConfig{Interface: l.aIf, NextHop: l.bMAC})
	c := collect(t, p, 16, 2048, 0)

	bDst := netip.AddrPortFrom(addrB4, 7007)
	bSock := listenUDP(t, l.b, bDst)
	out := packetio.NewBatch(8, 256, 0)
	for i := range out {
		fill(out[i:i+1], udpPacket(netip.AddrPortFrom(addrA4, 6001), bDst, []byte("outgoing-port")))
	}
	if n, err := p.WriteBatch(out); n != 8 || err != nil {
		t.Fatal(n, err)
	}
	kconn := dialUDP(t, l.a, netip.AddrPortFrom(addrA4, 0), bDst)
	if _, err := kconn.Write([]byte("outgoing-kernel")); err != nil {
		t.Fatal(err)
	}
	for range 9 {
		recvUDP(t, bSock) // all of them have left a
	}
	// A marker from b: everything a sent went out before it came in.
	aDst := netip.AddrPortFrom(addrA4, 7008)
	listenUDP(t, l.a, aDst)
	if _, err := dialUDP(t, l.b, netip.AddrPortFrom(addrB4, 0), aDst).Write([]byte("marker")); err != nil {
		t.Fatal(err)
	}
	_, before := c.expect(t, 5*time.Second, "marker", func(b []byte) bool { return isUDPTo(b, aDst, "marker") })
	for _, pkt := range before {
		if bytes.Contains(pkt, []byte("outgoing-")) {
			t.Errorf("port read an outgoing packet: % x", pkt)
		}
	}
}

// (e) Close unblocks a pending ReadBatch; later calls return ErrClosed.
func TestAFPacketCloseUnblocksRead(t *testing.T) {
	testutil.CheckGoroutines(t)
	l := newLink(t)
	p := openAF(t, l.a, packetio.AFPacketConfig{Interface: l.aIf, NextHop: l.bMAC})
	errc := make(chan error, 1)
	go func() {
		msgs := packetio.NewBatch(4, 2048, 0)
		for { // stray IPv6 control packets may arrive; keep reading
			if _, err := p.ReadBatch(msgs); err != nil {
				errc <- err
				return
			}
		}
	}()
	waitBlocked(t, "(*AFPacket).ReadBatch")
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, packetio.ErrClosed) {
			t.Fatalf("ReadBatch returned %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock ReadBatch")
	}
	if err := p.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	msgs := packetio.NewBatch(1, 2048, 0)
	if _, err := p.ReadBatch(msgs); !errors.Is(err, packetio.ErrClosed) {
		t.Errorf("ReadBatch after Close = %v", err)
	}
	fill(msgs, udpPacket(netip.AddrPortFrom(addrA4, 1), netip.AddrPortFrom(addrB4, 2), nil))
	if _, err := p.WriteBatch(msgs); !errors.Is(err, packetio.ErrClosed) {
		t.Errorf("WriteBatch after Close = %v", err)
	}
	_ = p.Stats() // still safe
}

// Packets that do not fit are dropped and counted; a full socket buffer is
// reported as RxDropped from the kernel's statistics.
func TestAFPacketTruncatedAndKernelDrops(t *testing.T) {
	testutil.CheckGoroutines(t)
	l := newLink(t)
	// Keep IPv6 control traffic out of this test.
	l.b.Run(t, "sysctl", "-qw", "net.ipv6.conf."+l.bIf+".disable_ipv6=1")
	p := openAF(t, l.a, packetio.AFPacketConfig{Interface: l.aIf})
	aDst := netip.AddrPortFrom(addrA4, 7009)
	aSock := listenUDP(t, l.a, aDst)
	conn := dialUDP(t, l.b, netip.AddrPortFrom(addrB4, 0), aDst)
	for _, size := range []int{10, 500, 32, 20} {
		if _, err := conn.Write(bytes.Repeat([]byte{'x'}, size)); err != nil {
			t.Fatal(err)
		}
	}
	for range 4 {
		recvUDP(t, aSock)
	}
	guard := time.AfterFunc(10*time.Second, func() { p.Close() })
	defer guard.Stop()
	// 28 bytes of headers + 20 of payload fit in 100-40; 528 do not; 60
	// fit exactly.
	in := packetio.NewBatch(4, 100, 40)
	var sizes []int
	for len(sizes) < 3 {
		n, err := p.ReadBatch(in)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			if isUDPTo(in[i].Packet(), aDst, "") {
				sizes = append(sizes, in[i].N)
			}
		}
	}
	if want := []int{38, 60, 48}; !equalInts(sizes, want) {
		t.Errorf("read packets of %v bytes, want %v", sizes, want)
	}
	if st := p.Stats(); st.RxTruncated != 1 {
		t.Errorf("RxTruncated = %d, want 1", st.RxTruncated)
	}

	// A tiny receive buffer overflows while nobody reads.
	small := openAF(t, l.a, packetio.AFPacketConfig{Interface: l.aIf, RecvBuffer: 1})
	for range 200 {
		if _, err := conn.Write(make([]byte, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WaitFor(t, 5*time.Second, "kernel drops on a full socket buffer", func() bool {
		return small.Stats().RxDropped > 0
	})
	d := small.Stats().RxDropped
	if d2 := small.Stats().RxDropped; d2 < d {
		t.Errorf("RxDropped went down from %d to %d: not accumulated", d, d2)
	}
}

// FanoutGroup spreads flows over the group's sockets: every packet is read
// by exactly one of them.
func TestAFPacketFanout(t *testing.T) {
	testutil.CheckGoroutines(t)
	l := newLink(t)
	l.b.Run(t, "sysctl", "-qw", "net.ipv6.conf."+l.bIf+".disable_ipv6=1")
	cfg := packetio.AFPacketConfig{Interface: l.aIf, FanoutGroup: 77}
	c1 := collect(t, openAF(t, l.a, cfg), 16, 2048, 0)
	c2 := collect(t, openAF(t, l.a, cfg), 16, 2048, 0)
	aDst := netip.AddrPortFrom(addrA4, 7010)
	aSock := listenUDP(t, l.a, aDst)
	const flows = 32
	for i := range flows {
		conn := dialUDP(t, l.b, netip.AddrPortFrom(addrB4, uint16(20000+i)), aDst)
		if _, err := conn.Write([]byte("fanout")); err != nil {
			t.Fatal(err)
		}
	}
	for range flows {
		recvUDP(t, aSock)
	}
	counts := [2]int{}
	deadline := time.After(5 * time.Second)
	for counts[0]+counts[1] < flows {
		select {
		case pkt := <-c1.ch:
			if isUDPTo(pkt, aDst, "fanout") {
				counts[0]++
			}
		case pkt := <-c2.ch:
			if isUDPTo(pkt, aDst, "fanout") {
				counts[1]++
			}
		case <-deadline:
			t.Fatalf("read %v of %d flows", counts, flows)
		}
	}
	if counts[0] == 0 || counts[1] == 0 {
		t.Errorf("fanout split %v: one socket got every flow", counts)
	}
	t.Logf("fanout split %d flows as %v", flows, counts)
}

func TestLookupNeighbor(t *testing.T) {
	testutil.CheckGoroutines(t)
	l := newLink(t)
	if err := l.a.Do(func() error {
		_, err := packetio.LookupNeighbor(l.aIf, addrB4)
		return err
	}); !errors.Is(err, packetio.ErrNoNeighbor) {
		t.Errorf("before any traffic: %v, want ErrNoNeighbor", err)
	}
	// Traffic from a to b makes a's kernel resolve b, in both families.
	for _, dst := range []netip.Addr{addrB4, addrB6} {
		bDst := netip.AddrPortFrom(dst, 7011)
		sock := listenUDP(t, l.b, bDst)
		if _, err := dialUDP(t, l.a, netip.AddrPort{}, bDst).Write([]byte("resolve")); err != nil {
			t.Fatal(err)
		}
		recvUDP(t, sock)
		for _, ifname := range []string{l.aIf, ""} {
			var mac net.HardwareAddr
			if err := l.a.Do(func() (err error) {
				mac, err = packetio.LookupNeighbor(ifname, dst)
				return err
			}); err != nil || !bytes.Equal(mac, l.bMAC) {
				t.Errorf("LookupNeighbor(%q, %s) = %v, %v; want %v", ifname, dst, mac, err, l.bMAC)
			}
		}
	}
	if err := l.a.Do(func() error {
		_, err := packetio.LookupNeighbor("lo", addrB4)
		return err
	}); !errors.Is(err, packetio.ErrNoNeighbor) {
		t.Errorf("on the wrong interface: %v, want ErrNoNeighbor", err)
	}
	if !strings.Contains(l.a.Run(t, "ip", "neigh", "show", "dev", l.aIf), l.bMAC.String()) {
		t.Error("ip neigh disagrees")
	}
}

// A bulk TCP transfer from a local stack over veth arrives as GSO
// super-packets, which the port drops and counts; with DisableOffloads on
// the sending end every segment arrives wire-sized with a valid checksum.
func TestAFPacketOffloads(t *testing.T) {
	testutil.CheckGoroutines(t)
	l := newLink(t)
	p := openAF(t, l.a, packetio.AFPacketConfig{Interface: l.aIf, RecvBuffer: 8 << 20})
	c := collect(t, p, 32, 2048, 0)
	dst := netip.AddrPortFrom(addrA4, 7012)
	var ln net.Listener
	if err := l.a.Do(func() (err error) {
		ln, err = net.Listen("tcp", dst.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	served := make(chan int64, 1)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				close(served)
				return
			}
			n, _ := io.Copy(io.Discard, conn)
			conn.Close()
			served <- n
		}
	}()
	const size = 256 << 10
	// transfer sends size bytes from b to a and returns the client port.
	transfer := func() (port uint16) {
		t.Helper()
		if err := l.b.Do(func() error {
			conn, err := net.DialTimeout("tcp", dst.String(), 5*time.Second)
			if err != nil {
				return err
			}
			port = conn.LocalAddr().(*net.TCPAddr).AddrPort().Port()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			if _, err := conn.Write(make([]byte, size)); err != nil {
				return err
			}
			return conn.Close()
		}); err != nil {
			t.Fatal(err)
		}
		select {
		case n := <-served:
			if n != size {
				t.Fatalf("server read %d bytes, want %d", n, size)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("transfer did not finish")
		}
		return port
	}
	// payload counts the TCP payload bytes the port read from b's port
	// to dst, and checks each packet.
	payload := func(want int, from uint16) {
		t.Helper()
		got := 0
		deadline := time.After(10 * time.Second)
		for got < want {
			select {
			case pkt := <-c.ch:
				ip, ok := parseIP(pkt)
				if !ok || ip.proto != 6 || ip.dst != addrA4 || binary.BigEndian.Uint16(ip.l4[0:]) != from || binary.BigEndian.Uint16(ip.l4[2:]) != dst.Port() {
					continue
				}
				if len(pkt) > 1500 || !ip.totalMatch || checksum(ip.l4, pseudoSum(ip.src, ip.dst, 6, len(ip.l4))) != 0 {
					t.Fatalf("bad TCP packet read: %d bytes, checksum ok %v", len(pkt), checksum(ip.l4, pseudoSum(ip.src, ip.dst, 6, len(ip.l4))) == 0)
				}
				got += len(ip.l4) - int(ip.l4[12]>>4)*4
			case <-deadline:
				t.Fatalf("read %d of %d payload bytes (stats %+v)", got, want, p.Stats())
			}
		}
	}

	transfer()
	// A marker behind the transfer: once the port has read it, it has
	// handled every packet of the transfer.
	mDst := netip.AddrPortFrom(addrA4, 7013)
	listenUDP(t, l.a, mDst)
	if _, err := dialUDP(t, l.b, netip.AddrPortFrom(addrB4, 0), mDst).Write([]byte("marker")); err != nil {
		t.Fatal(err)
	}
	c.expect(t, 5*time.Second, "marker", func(b []byte) bool { return isUDPTo(b, mDst, "marker") })
	gso := p.Stats().RxGSO
	if gso == 0 {
		t.Errorf("no GSO super-packet counted with the default offloads: %+v", p.Stats())
	}
	t.Logf("with offloads: %+v", p.Stats())

	for _, e := range []struct {
		ns  *testutil.NetNS
		ifc string
	}{{l.a, l.aIf}, {l.b, l.bIf}} {
		if err := e.ns.Do(func() error { return packetio.DisableOffloads(e.ifc) }); err != nil {
			t.Fatal(err)
		}
	}
	payload(size, transfer())
	if st := p.Stats(); st.RxGSO != gso {
		t.Errorf("RxGSO grew from %d to %d with offloads off", gso, st.RxGSO)
	}
}
