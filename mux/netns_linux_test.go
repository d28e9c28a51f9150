package mux

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/encap"
	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/packetio"
	"golang.org/x/sys/unix"
)

// e2eTopology is three namespaces:
//
//	client ns ── veth ── mux ns ── veth ── host ns ── veth ── client ns
//	198.18.1.1    198.18.1.2  198.18.2.1   198.18.2.2  198.18.3.2   198.18.3.1
//
// The client routes the VIP to the Mux. The Mux, on AF_PACKET, tunnels
// IP-in-IP to the host (198.18.2.2). The host reads the tunnel packets with
// a raw IPPROTO_IPIP (or IPPROTO_IPV6) socket, decapsulates them and writes
// the inner packets into a TUN device; its loopback holds the VIP, so its
// kernel's TCP server answers, and the answers go straight back to the
// client over the third link (direct server return).
type e2eTopology struct {
	client, mux, host  *testutil.NetNS
	muxIn, muxOut      string // the Mux's interfaces towards client and host
	clientMAC, hostMAC net.HardwareAddr
}

var (
	e2eVIP4     = netip.MustParseAddr("198.19.0.10")
	e2eVIP6     = netip.MustParseAddr("2001:db8:19::10")
	e2eHost     = netip.MustParseAddr("198.18.2.2")
	e2eClient4  = netip.MustParseAddr("198.18.1.1")
	e2eClient6  = netip.MustParseAddr("2001:db8:1::1")
	e2eMuxAddr4 = netip.MustParseAddr("198.18.2.1")
)

func newE2ETopology(t *testing.T) *e2eTopology {
	t.Helper()
	testutil.RequirePrivileged(t, "sysctl")
	tp := &e2eTopology{client: testutil.NewNetNS(t), mux: testutil.NewNetNS(t), host: testutil.NewNetNS(t)}
	var clientIf, hostIf, hostRet, clientRet string
	clientIf, tp.muxIn = testutil.Veth(t, tp.client, tp.mux, netip.MustParsePrefix("198.18.1.1/24"), netip.MustParsePrefix("198.18.1.2/24"))
	tp.muxOut, hostIf = testutil.Veth(t, tp.mux, tp.host, netip.MustParsePrefix("198.18.2.1/24"), netip.MustParsePrefix("198.18.2.2/24"))
	hostRet, clientRet = testutil.Veth(t, tp.host, tp.client, netip.MustParsePrefix("198.18.3.2/24"), netip.MustParsePrefix("198.18.3.1/24"))
	tp.client.Run(t, "ip", "addr", "add", "2001:db8:1::1/64", "dev", clientIf, "nodad")
	tp.mux.Run(t, "ip", "addr", "add", "2001:db8:1::2/64", "dev", tp.muxIn, "nodad")
	tp.host.Run(t, "ip", "addr", "add", "2001:db8:3::2/64", "dev", hostRet, "nodad")
	tp.client.Run(t, "ip", "addr", "add", "2001:db8:3::1/64", "dev", clientRet, "nodad")
	// Client: the VIPs via the Mux; answers arrive over the return link,
	// which strict reverse-path filtering would drop.
	tp.client.Run(t, "ip", "route", "add", e2eVIP4.String()+"/32", "via", "198.18.1.2")
	tp.client.Run(t, "ip", "-6", "route", "add", e2eVIP6.String()+"/128", "via", "2001:db8:1::2")
	for _, ns := range []*testutil.NetNS{tp.client, tp.host} {
		ns.Run(t, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0")
	}
	tp.client.Run(t, "sysctl", "-qw", "net.ipv4.conf."+clientRet+".rp_filter=0", "net.ipv4.conf."+clientIf+".rp_filter=0")
	// Mux: the kernel must stay out of the VIPs' traffic, which its packet
	// sockets tap. With forwarding off IPv4 drops it silently, but IPv6
	// would answer "no route"; blackhole routes drop it quietly.
	tp.mux.Run(t, "ip", "route", "add", "blackhole", "198.19.0.0/24")
	tp.mux.Run(t, "ip", "-6", "route", "add", "blackhole", "2001:db8:19::/64")
	// Host: the VIPs on loopback, the return route to the client.
	tp.host.Run(t, "ip", "addr", "add", e2eVIP4.String()+"/32", "dev", "lo")
	tp.host.Run(t, "ip", "addr", "add", e2eVIP6.String()+"/128", "dev", "lo")
	tp.host.Run(t, "ip", "route", "add", "198.18.1.0/24", "via", "198.18.3.1")
	tp.host.Run(t, "ip", "-6", "route", "add", "2001:db8:1::/64", "via", "2001:db8:3::1")
	tp.host.Run(t, "sysctl", "-qw", "net.ipv4.conf."+hostIf+".rp_filter=0", "net.ipv4.conf."+hostRet+".rp_filter=0")
	// The Mux's AF_PACKET ports see wire-sized packets only with
	// segmentation offloads off on both sides of its input link.
	if err := tp.client.Do(func() error { return packetio.DisableOffloads(clientIf) }); err != nil {
		t.Fatal(err)
	}
	if err := tp.mux.Do(func() error { return packetio.DisableOffloads(tp.muxIn) }); err != nil {
		t.Fatal(err)
	}
	tp.clientMAC, tp.hostMAC = tp.client.MAC(t, clientIf), tp.host.MAC(t, hostIf)
	return tp
}

// startMux runs a Mux in the mux namespace with one worker over AF_PACKET
// and configures both VIPs with the host as their only backend.
func (tp *e2eTopology) startMux(t *testing.T, mod func(*Config)) *Mux {
	t.Helper()
	var in, out *packetio.AFPacket
	if err := tp.mux.Do(func() error {
		var err error
		in, err = packetio.OpenAFPacket(packetio.AFPacketConfig{Interface: tp.muxIn, Headroom: Headroom, NextHop: tp.clientMAC})
		if err != nil {
			return err
		}
		out, err = packetio.OpenAFPacket(packetio.AFPacketConfig{Interface: tp.muxOut, NextHop: tp.hostMAC})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Addr4: e2eMuxAddr4, Links: []Link{{In: in, Out: out}}, FlowTableBytes: 4 << 20}
	if mod != nil {
		mod(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		in.Close()
		out.Close()
		t.Fatal(err)
	}
	for _, vip := range []netip.Addr{e2eVIP4, e2eVIP6} {
		dip := netip.MustParseAddr("198.18.2.2")
		if vip.Is6() {
			dip = netip.MustParseAddr("2001:db8:3::2")
		}
		mustSetVIP(t, m, ananta.VIPConfig{VIP: vip, Tenant: "e2e", Endpoints: []ananta.EndpointConfig{{
			Protocol: ananta.ProtocolTCP, Port: 8080,
			Backends: []ananta.Backend{{DIP: dip, Host: e2eHost, Weight: 1}},
		}}})
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return")
		}
		m.Close()
	})
	return m
}

// startDecap runs the host's decapsulator: raw IP-in-IP sockets (IPv4 and
// IPv6 inside IPv4) feeding a TUN device. It returns a counter of packets
// written to the TUN.
func (tp *e2eTopology) startDecap(t *testing.T) func() int {
	t.Helper()
	var tun *packetio.TUN
	var files []*os.File
	if err := tp.host.Do(func() error {
		var err error
		if tun, err = packetio.OpenTUN(packetio.TUNConfig{}); err != nil {
			return err
		}
		for _, proto := range []int{unix.IPPROTO_IPIP, unix.IPPROTO_IPV6} {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
			if err != nil {
				return fmt.Errorf("raw socket %d: %w", proto, err)
			}
			// Room for bursts: this decapsulator reads one packet per call.
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
				unix.Close(fd)
				return err
			}
			files = append(files, os.NewFile(uintptr(fd), fmt.Sprintf("raw%d", proto)))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tp.host.Run(t, "ip", "link", "set", tun.Name(), "up")
	tp.host.Run(t, "sysctl", "-qw", "net.ipv4.conf."+tun.Name()+".rp_filter=0")
	var mu sync.Mutex
	written := 0
	var wg sync.WaitGroup
	for _, f := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 65536)
			for {
				n, err := f.Read(buf)
				if err != nil {
					return // closed
				}
				inner, src, err := encap.Decap(buf[:n])
				if err != nil || src.IsUnspecified() {
					t.Errorf("host received a bad tunnel packet: %v", err)
					continue
				}
				msg := []packetio.Message{{Buf: inner, N: len(inner)}}
				mu.Lock()
				if _, err := tun.WriteBatch(msg); err == nil {
					written++
				}
				mu.Unlock()
			}
		}()
	}
	t.Cleanup(func() {
		for _, f := range files {
			f.Close()
		}
		wg.Wait()
		tun.Close()
	})
	return func() int {
		mu.Lock()
		defer mu.Unlock()
		return written
	}
}

// echoServer listens on the VIP in the host namespace and echoes.
func (tp *e2eTopology) echoServer(t *testing.T, vip netip.Addr) {
	t.Helper()
	var ln net.Listener
	if err := tp.host.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(vip, 8080).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(60 * time.Second))
				io.Copy(c, c)
			}()
		}
	}()
}

// echo connects from the client namespace to vip:8080, sends size random
// bytes and checks they come back.
func (tp *e2eTopology) echo(t *testing.T, vip netip.Addr, size int) {
	t.Helper()
	var conn net.Conn
	if err := tp.client.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", netip.AddrPortFrom(vip, 8080).String(), 10*time.Second)
		return err
	}); err != nil {
		t.Fatalf("connect to %s through the Mux: %v", vip, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	data := make([]byte, size)
	rand.Read(data)
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(data)
		werr <- err
	}()
	got := make([]byte, size)
	if _, err := io.ReadFull(conn, got); err != nil {
		t.Fatalf("read the echo from %s: %v", vip, err)
	}
	if err := <-werr; err != nil {
		t.Fatalf("write to %s: %v", vip, err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("echo from %s differs", vip)
	}
}

// TestE2ENetNS: a kernel TCP client reaches a kernel TCP server through a
// Mux on AF_PACKET, for an IPv4 VIP (4in4) and an IPv6 VIP (6in4), and 1 MB
// is echoed both ways; the server's answers return directly. The client's
// full-size segments exceed the tunnel MTU, so path MTU discovery through
// the Mux's ICMP answers is exercised too.
func TestE2ENetNS(t *testing.T) {
	testutil.CheckGoroutines(t)
	tp := newE2ETopology(t)
	m := tp.startMux(t, nil)
	decapped := tp.startDecap(t)
	for _, vip := range []netip.Addr{e2eVIP4, e2eVIP6} {
		tp.echoServer(t, vip)
	}
	for _, vip := range []netip.Addr{e2eVIP4, e2eVIP6} {
		t.Run(vip.String(), func(t *testing.T) {
			tp.echo(t, vip, 1<<20)
		})
	}
	st := m.Stats()
	t.Logf("forwarded %d packets (%d bytes), %d ICMP answers, drops %v, flows %+v, host decapsulated %d",
		st.Forwarded, st.ForwardedBytes, st.Replies, st.Drops, st.Flows, decapped())
	if st.Forwarded == 0 || st.VIPs[e2eVIP4].Packets == 0 || st.VIPs[e2eVIP6].Packets == 0 {
		t.Errorf("the Mux forwarded nothing for a VIP: %+v", st.VIPs)
	}
	if st.Replies == 0 {
		t.Errorf("no ICMP too-big answers: path MTU discovery was not exercised")
	}
	if st.Flows.Trusted < 2 {
		t.Errorf("%d trusted flows, want the 2 connections", st.Flows.Trusted)
	}
}
