package packetio_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/packetio"
)

var (
	tunLocal4  = netip.MustParseAddr("198.18.20.1")
	tunRemote4 = netip.MustParseAddr("198.18.20.2")
	tunLocal6  = netip.MustParseAddr("2001:db8:20::1")
	tunRemote6 = netip.MustParseAddr("2001:db8:20::2")
)

// openTUN creates a TUN device in a new namespace, addresses it and brings
// it up.
func openTUN(t *testing.T, cfg packetio.TUNConfig) (*testutil.NetNS, *packetio.TUN) {
	t.Helper()
	testutil.RequirePrivileged(t)
	ns := testutil.NewNetNS(t)
	var tun *packetio.TUN
	if err := ns.Do(func() (err error) {
		tun, err = packetio.OpenTUN(cfg)
		return err
	}); err != nil {
		t.Fatalf("OpenTUN(%+v): %v", cfg, err)
	}
	t.Cleanup(func() { tun.Close() })
	name := tun.Name()
	ns.Run(t, "sysctl", "-qw", "net.ipv6.conf."+name+".accept_dad=0")
	ns.Run(t, "ip", "addr", "add", netip.PrefixFrom(tunLocal4, 24).String(), "dev", name)
	ns.Run(t, "ip", "addr", "add", netip.PrefixFrom(tunLocal6, 64).String(), "dev", name, "nodad")
	ns.Run(t, "ip", "link", "set", name, "up")
	testutil.WaitFor(t, 5*time.Second, "IPv6 routes on "+name, func() bool {
		local, _ := ns.Output("ip", "-6", "route", "show", "table", "local", tunLocal6.String())
		prefix, _ := ns.Output("ip", "-6", "route", "show", "2001:db8:20::/64")
		return strings.TrimSpace(local) != "" && strings.TrimSpace(prefix) != ""
	})
	return ns, tun
}

func TestTUNConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg packetio.TUNConfig
		ok  bool
	}{
		{packetio.TUNConfig{}, true},
		{packetio.TUNConfig{Name: "tun-ok", Headroom: 40}, true},
		{packetio.TUNConfig{Name: "a-very-long-interface"}, false},
		{packetio.TUNConfig{Headroom: -1}, false},
	} {
		err := tc.cfg.Validate()
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, packetio.ErrInvalidConfig)) {
			t.Errorf("%+v: Validate() = %v, want ok=%v", tc.cfg, err, tc.ok)
		}
	}
}

func TestTUNNameAndIndex(t *testing.T) {
	testutil.CheckGoroutines(t)
	ns, tun := openTUN(t, packetio.TUNConfig{}) // the kernel picks the name
	if !strings.HasPrefix(tun.Name(), "tun") {
		t.Errorf("Name() = %q", tun.Name())
	}
	out := ns.Run(t, "ip", "-o", "link", "show", tun.Name())
	if !strings.HasPrefix(out, strconv.Itoa(tun.Index())+": "+tun.Name()+":") {
		t.Errorf("Index() = %d, ip link says %q", tun.Index(), out)
	}
	// A named device; a second port on the same name attaches to the
	// first one's queue only if the device is persistent, so it fails.
	_, named := openTUN(t, packetio.TUNConfig{Name: "anttun0"})
	if named.Name() != "anttun0" {
		t.Errorf("Name() = %q", named.Name())
	}
}

// The kernel's packets routed into the TUN are read; packets written into
// it reach kernel sockets; IPv4 and IPv6.
func TestTUNKernelTraffic(t *testing.T) {
	testutil.CheckGoroutines(t)
	ns, tun := openTUN(t, packetio.TUNConfig{Headroom: 40})
	c := collect(t, tun, 8, 2048, 40)
	for _, tc := range []struct{ local, remote netip.Addr }{{tunLocal4, tunRemote4}, {tunLocal6, tunRemote6}} {
		// Out: a kernel socket sends to the remote address, routed into
		// the device.
		remote := netip.AddrPortFrom(tc.remote, 7101)
		conn := dialUDP(t, ns, netip.AddrPortFrom(tc.local, 0), remote)
		if _, err := conn.Write([]byte("to-the-tun")); err != nil {
			t.Fatal(err)
		}
		pkt, _ := c.expect(t, 5*time.Second, "UDP to "+remote.String(), func(b []byte) bool { return isUDPTo(b, remote, "to-the-tun") })
		ip, _ := parseIP(pkt)
		if ip.src != tc.local || !ip.headerOK || !ip.totalMatch ||
			binary.BigEndian.Uint16(ip.l4[0:]) != conn.LocalAddr().(*net.UDPAddr).AddrPort().Port() {
			t.Errorf("packet read from the TUN: %+v\n% x", ip, pkt)
		}

		// In: a packet written into the device is delivered to a socket.
		local := netip.AddrPortFrom(tc.local, 7102)
		sock := listenUDP(t, ns, local)
		from := netip.AddrPortFrom(tc.remote, 5151)
		msgs := packetio.NewBatch(1, 2048, 40)
		fill(msgs, udpPacket(from, local, []byte("from-the-tun")))
		if n, err := tun.WriteBatch(msgs); n != 1 || err != nil {
			t.Fatalf("WriteBatch = %d, %v", n, err)
		}
		got, src := recvUDP(t, sock)
		if string(got) != "from-the-tun" || src != from {
			t.Errorf("received %q from %s", got, src)
		}
	}
	// A batch of writes, in order.
	local := netip.AddrPortFrom(tunLocal4, 7103)
	sock := listenUDP(t, ns, local)
	msgs := packetio.NewBatch(16, 256, 0)
	for i := range msgs {
		fill(msgs[i:i+1], udpPacket(netip.AddrPortFrom(tunRemote4, 5152), local, []byte{byte(i)}))
	}
	if n, err := tun.WriteBatch(msgs); n != 16 || err != nil {
		t.Fatalf("WriteBatch(16) = %d, %v", n, err)
	}
	for i := range 16 {
		if got, _ := recvUDP(t, sock); !bytes.Equal(got, []byte{byte(i)}) {
			t.Fatalf("datagram %d = %v", i, got)
		}
	}
	bad := []packetio.Message{{Buf: []byte{0x00, 1}, N: 2}}
	if n, err := tun.WriteBatch(append(msgs[:1:1], bad...)); n != 1 || !errors.Is(err, packetio.ErrInvalidPacket) {
		t.Errorf("WriteBatch(good, version 0) = %d, %v", n, err)
	}
	recvUDP(t, sock)
	if st := tun.Stats(); st.RxPackets < 2 || st.TxPackets != 2+16+1 {
		t.Errorf("stats %+v", st)
	}
}

// Several queued packets come back from one ReadBatch; a packet too big for
// its buffer is dropped and counted.
func TestTUNBatchAndTruncated(t *testing.T) {
	testutil.CheckGoroutines(t)
	ns, tun := openTUN(t, packetio.TUNConfig{})
	// IPv6 router solicitations and MLD reports also go out on the device.
	ns.Run(t, "sysctl", "-qw", "net.ipv6.conf."+tun.Name()+".disable_ipv6=1")
	remote := netip.AddrPortFrom(tunRemote4, 7104)
	conn := dialUDP(t, ns, netip.AddrPortFrom(tunLocal4, 0), remote)
	// 28 bytes of headers: 10+28 fits, 500+28 does not, 72+28 fits exactly.
	for _, size := range []int{10, 500, 20, 72, 30} {
		if _, err := conn.Write(bytes.Repeat([]byte{'y'}, size)); err != nil {
			t.Fatal(err)
		}
	}
	guard := time.AfterFunc(10*time.Second, func() { tun.Close() })
	defer guard.Stop()
	in := packetio.NewBatch(8, 140, 40)
	var sizes []int
	for len(sizes) < 4 {
		n, err := tun.ReadBatch(in)
		if err != nil {
			t.Fatal(err)
		}
		first := len(sizes) == 0
		for i := range n {
			if isUDPTo(in[i].Packet(), remote, "") {
				sizes = append(sizes, in[i].N)
			}
		}
		if first && len(sizes) != 4 {
			t.Errorf("first ReadBatch returned %d of the 4 queued UDP packets that fit (%d packets in all)", len(sizes), n)
		}
	}
	if want := []int{38, 48, 100, 58}; !equalInts(sizes, want) {
		t.Errorf("read UDP packets of %v bytes, want %v", sizes, want)
	}
	if st := tun.Stats(); st.RxTruncated != 1 {
		t.Errorf("RxTruncated = %d, want 1", st.RxTruncated)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestTUNCloseUnblocksRead(t *testing.T) {
	testutil.CheckGoroutines(t)
	ns, tun := openTUN(t, packetio.TUNConfig{})
	errc := make(chan error, 1)
	go func() {
		msgs := packetio.NewBatch(4, 2048, 0)
		for {
			if _, err := tun.ReadBatch(msgs); err != nil {
				errc <- err
				return
			}
		}
	}()
	waitBlocked(t, "(*TUN).ReadBatch")
	if err := tun.Close(); err != nil {
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
	if err := tun.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
	msgs := packetio.NewBatch(1, 2048, 0)
	fill(msgs, udpPacket(netip.AddrPortFrom(tunRemote4, 1), netip.AddrPortFrom(tunLocal4, 2), nil))
	if _, err := tun.WriteBatch(msgs); !errors.Is(err, packetio.ErrClosed) {
		t.Errorf("WriteBatch after Close = %v", err)
	}
	// The device the port created is gone with it.
	testutil.WaitFor(t, 5*time.Second, "the TUN device to disappear", func() bool {
		_, err := ns.Output("ip", "link", "show", tun.Name())
		return err != nil
	})
}

// An AF_PACKET port works on an interface without a link-layer header: what
// the TUN's owner writes, the AF_PACKET port reads, and the reverse.
func TestAFPacketOnTUN(t *testing.T) {
	testutil.CheckGoroutines(t)
	ns, tun := openTUN(t, packetio.TUNConfig{})
	ns.Run(t, "sysctl", "-qw", "net.ipv6.conf."+tun.Name()+".disable_ipv6=1")
	af := openAF(t, ns, packetio.AFPacketConfig{Interface: tun.Name(), Headroom: 20})
	afIn := collect(t, af, 4, 2048, 20)
	tunIn := collect(t, tun, 4, 2048, 0)

	toKernel := netip.AddrPortFrom(tunLocal4, 7201)
	msgs := packetio.NewBatch(1, 2048, 0)
	fill(msgs, udpPacket(netip.AddrPortFrom(tunRemote4, 1), toKernel, []byte("via-tun-fd")))
	if n, err := tun.WriteBatch(msgs); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	pkt, _ := afIn.expect(t, 5*time.Second, "the TUN write on the AF_PACKET port", func(b []byte) bool { return isUDPTo(b, toKernel, "via-tun-fd") })
	if !bytes.Equal(pkt, msgs[0].Packet()) {
		t.Errorf("AF_PACKET read\n% x\nwant\n% x", pkt, msgs[0].Packet())
	}

	toRemote := netip.AddrPortFrom(tunRemote4, 7202)
	fill(msgs, udpPacket(netip.AddrPortFrom(tunLocal4, 1), toRemote, []byte("via-afpacket")))
	if n, err := af.WriteBatch(msgs); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	pkt, _ = tunIn.expect(t, 5*time.Second, "the AF_PACKET write on the TUN fd", func(b []byte) bool { return isUDPTo(b, toRemote, "via-afpacket") })
	if !bytes.Equal(pkt, msgs[0].Packet()) {
		t.Errorf("TUN read\n% x\nwant\n% x", pkt, msgs[0].Packet())
	}
}
