//go:build linux

package encap

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ananta-go/ananta"
	"github.com/ananta-go/ananta/internal/testutil"
)

// The tests in this file check the package against the Linux kernel: they
// parse packets the kernel produced and hand the kernel packets this package
// built, in two network namespaces joined by a veth pair. They need root and
// the ip tool; testutil.RequirePrivileged skips them otherwise (or fails
// them under ANANTA_E2E=1).

const kernelWait = 5 * time.Second

// kernelPair is two namespaces, A and B, joined by a veth pair, with
// 198.18.0.1/24 and 2001:db8::1/64 on A's end and 198.18.0.2/24 and
// 2001:db8::2/64 on B's.
type kernelPair struct {
	a, b           *testutil.NetNS
	aIf, bIf       string
	aIdx, bIdx     int
	aMAC, bMAC     net.HardwareAddr
	a4, b4, a6, b6 netip.Addr
}

func newKernelPair(t *testing.T) *kernelPair {
	t.Helper()
	testutil.RequirePrivileged(t, "ip")
	k := &kernelPair{
		a4: netip.MustParseAddr("198.18.0.1"), b4: netip.MustParseAddr("198.18.0.2"),
		a6: netip.MustParseAddr("2001:db8::1"), b6: netip.MustParseAddr("2001:db8::2"),
	}
	k.a, k.b = testutil.NewNetNS(t), testutil.NewNetNS(t)
	k.aIf, k.bIf = testutil.Veth(t, k.a, k.b, netip.PrefixFrom(k.a4, 24), netip.PrefixFrom(k.b4, 24))
	k.a.Run(t, "ip", "addr", "add", "2001:db8::1/64", "dev", k.aIf, "nodad")
	k.b.Run(t, "ip", "addr", "add", "2001:db8::2/64", "dev", k.bIf, "nodad")
	k.aIdx, k.aMAC = ifaceIn(t, k.a, k.aIf)
	k.bIdx, k.bMAC = ifaceIn(t, k.b, k.bIf)
	return k
}

func ifaceIn(t *testing.T, ns *testutil.NetNS, name string) (int, net.HardwareAddr) {
	t.Helper()
	var ifc *net.Interface
	if err := ns.Do(func() (err error) {
		ifc, err = net.InterfaceByName(name)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return ifc.Index, ifc.HardwareAddr
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// socketIn creates a socket inside ns, closed when the test ends, with a
// 100 ms receive timeout so that reads can poll a deadline.
func socketIn(t *testing.T, ns *testutil.NetNS, domain, typ, proto int) int {
	t.Helper()
	var fd int
	if err := ns.Do(func() (err error) {
		fd, err = syscall.Socket(domain, typ|syscall.SOCK_CLOEXEC, proto)
		return err
	}); err != nil {
		t.Fatalf("socket(%d, %d, %d): %v", domain, typ, proto, err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	tv := syscall.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, syscall.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	return fd
}

// packetSocket opens an AF_PACKET socket on interface ifindex of ns that
// sees every packet from the network header on (no Ethernet header).
func packetSocket(t *testing.T, ns *testutil.NetNS, ifindex int) int {
	t.Helper()
	fd := socketIn(t, ns, syscall.AF_PACKET, syscall.SOCK_DGRAM, int(htons(syscall.ETH_P_ALL)))
	if err := syscall.Bind(fd, &syscall.SockaddrLinklayer{Protocol: htons(syscall.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		t.Fatal(err)
	}
	return fd
}

// inject sends the IP packet pkt out of interface ifindex through the
// AF_PACKET socket fd, to the Ethernet address dst. The kernel does not
// touch the packet: the receiver checks every header and checksum.
func inject(t *testing.T, fd, ifindex int, dst net.HardwareAddr, pkt []byte) {
	t.Helper()
	proto := uint16(syscall.ETH_P_IP)
	if pkt[0]>>4 == 6 {
		proto = syscall.ETH_P_IPV6
	}
	sa := &syscall.SockaddrLinklayer{Protocol: htons(proto), Ifindex: ifindex, Halen: 6}
	copy(sa.Addr[:], dst)
	if err := syscall.Sendto(fd, pkt, 0, sa); err != nil {
		t.Fatalf("inject: %v", err)
	}
}

// receive reads from fd until match accepts a packet or kernelWait passes.
// incoming restricts AF_PACKET sockets to packets not sent by this host.
func receive(t *testing.T, fd int, incoming bool, what string, match func(b []byte) bool) []byte {
	t.Helper()
	buf := make([]byte, 65536)
	deadline := time.Now().Add(kernelWait)
	for time.Now().Before(deadline) {
		n, from, err := syscall.Recvfrom(fd, buf, 0)
		if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EINTR) {
			continue
		}
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if ll, ok := from.(*syscall.SockaddrLinklayer); ok && incoming && ll.Pkttype == syscall.PACKET_OUTGOING {
			continue
		}
		if match(buf[:n]) {
			return bytes.Clone(buf[:n])
		}
	}
	t.Fatalf("no %s within %v", what, kernelWait)
	return nil
}

// TestKernelSYNParses parses the SYN of a kernel TCP client, captured on
// the server's end of the veth.
func TestKernelSYNParses(t *testing.T) {
	k := newKernelPair(t)
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("ipv6=%v", v6), func(t *testing.T) {
			client, server := k.a4, k.b4
			if v6 {
				client, server = k.a6, k.b6
			}
			capture := packetSocket(t, k.b, k.bIdx)
			var ln net.Listener
			if err := k.b.Do(func() (err error) {
				ln, err = net.Listen("tcp", netip.AddrPortFrom(server, 0).String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			lport := uint16(ln.Addr().(*net.TCPAddr).Port)
			var conn net.Conn
			if err := k.a.Do(func() (err error) {
				conn, err = net.DialTimeout("tcp", ln.Addr().String(), kernelWait)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			cport := uint16(conn.LocalAddr().(*net.TCPAddr).Port)
			want := ananta.FiveTuple{Src: client, Dst: server, SrcPort: cport, DstPort: lport, Proto: ananta.ProtocolTCP}
			var p Packet
			receive(t, capture, true, "client SYN", func(b []byte) bool {
				return Parse(b, &p) == nil && p.Tuple == want && p.TCPFlags&TCPFlagSYN != 0
			})
			if p.TCPFlags&TCPFlagACK != 0 || p.Fragment != NotFragment || !p.DF || p.TTL == 0 {
				t.Errorf("SYN parsed as %+v", p)
			}
		})
	}
}

// TestKernelAcceptsNAT builds a TCP SYN and a UDP datagram to a VIP,
// rewrites the destination to the server with Rewrite (incremental
// checksums) and injects them: the server kernel answers the SYN with a
// SYN-ACK and delivers the datagram to its socket only if every checksum
// is right.
func TestKernelAcceptsNAT(t *testing.T) {
	k := newKernelPair(t)
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("ipv6=%v", v6), func(t *testing.T) {
			client, server, vip := k.a4, k.b4, netip.MustParseAddr("198.19.0.10")
			if v6 {
				client, server, vip = k.a6, k.b6, netip.MustParseAddr("2001:db8:1::10")
			}
			var (
				ln net.Listener
				pc net.PacketConn
			)
			if err := k.b.Do(func() (err error) {
				if ln, err = net.Listen("tcp", netip.AddrPortFrom(server, 0).String()); err != nil {
					return err
				}
				pc, err = net.ListenPacket("udp", netip.AddrPortFrom(server, 0).String())
				return err
			}); err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			defer pc.Close()
			tport := uint16(ln.Addr().(*net.TCPAddr).Port)
			uport := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
			sock := packetSocket(t, k.a, k.aIdx)

			// TCP: SYN to vip:80, DNAT to server:tport.
			syn := spec{src: client, dst: vip, proto: 6, sport: 40001, dport: 80, df: true, tcpFlags: TCPFlagSYN}.build()
			put16(syn, len(syn)-20+4, 0x1234) // sequence number
			put16(syn, len(syn)-20+16, 0)
			put16(syn, len(syn)-20+16, refTransportChecksum(syn, len(syn)-20, len(syn), 6, 16, true))
			var p Packet
			if err := Parse(syn, &p); err != nil {
				t.Fatal(err)
			}
			if err := Rewrite(syn, &p, Dst, server, tport); err != nil {
				t.Fatal(err)
			}
			// Control: a copy from another port with a wrong checksum goes
			// first; the server must not answer it.
			bad := bytes.Clone(syn)
			put16(bad, len(bad)-20, 40009)
			inject(t, sock, k.aIdx, k.bMAC, bad)
			inject(t, sock, k.aIdx, k.bMAC, syn)
			want := ananta.FiveTuple{Src: server, Dst: client, SrcPort: tport, DstPort: 40001, Proto: ananta.ProtocolTCP}
			var r Packet
			receive(t, sock, true, "SYN-ACK", func(b []byte) bool {
				if Parse(b, &r) == nil && r.Tuple.DstPort == 40009 {
					t.Errorf("the server answered a SYN with a wrong checksum: %v", r.Tuple)
				}
				return Parse(b, &r) == nil && r.Tuple == want && r.TCPFlags&(TCPFlagSYN|TCPFlagACK) == TCPFlagSYN|TCPFlagACK
			})

			// UDP: datagram to vip:53, DNAT to server:uport.
			payload := []byte("through the NAT")
			dgram := spec{src: client, dst: vip, proto: 17, sport: 40002, dport: 53, payload: payload}.build()
			if err := Parse(dgram, &p); err != nil {
				t.Fatal(err)
			}
			if err := Rewrite(dgram, &p, Dst, server, uport); err != nil {
				t.Fatal(err)
			}
			inject(t, sock, k.aIdx, k.bMAC, dgram)
			if err := pc.SetReadDeadline(time.Now().Add(kernelWait)); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 1500)
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				t.Fatalf("UDP datagram not delivered: %v", err)
			}
			if !bytes.Equal(buf[:n], payload) || from.(*net.UDPAddr).AddrPort() != netip.AddrPortFrom(client, 40002) {
				t.Errorf("received %q from %v", buf[:n], from)
			}
		})
	}
}

// TestKernelAcceptsEncap injects IP-in-IP packets built by Encap. The
// receiving kernel checks the outer header (length, IPv4 header checksum)
// and hands the packet to a raw socket of the tunnel protocol.
func TestKernelAcceptsEncap(t *testing.T) {
	k := newKernelPair(t)
	inner4 := spec{src: netip.MustParseAddr("198.19.0.50"), dst: netip.MustParseAddr("198.19.0.10"), proto: 17, sport: 1, dport: 2, df: true, tos: 0x28, payload: []byte("inner v4")}.build()
	inner6 := spec{src: netip.MustParseAddr("2001:db8:5::50"), dst: netip.MustParseAddr("2001:db8:1::10"), proto: 6, sport: 3, dport: 4, tos: 0x28, payload: []byte("inner v6")}.build()
	for _, c := range []struct {
		name    string
		inner   []byte
		outer6  bool
		tunnel  int
		ttl     uint8
		flowLbl uint32
	}{
		{"4in4", inner4, false, protoIPIP, 0, 0},
		{"6in4", inner6, false, protoIPv6, 17, 0},
		{"4in6", inner4, true, protoIPIP, 0, 0x12345},
		{"6in6", inner6, true, protoIPv6, 200, 0xabcde},
	} {
		t.Run(c.name, func(t *testing.T) {
			src, dst, domain := k.a4, k.b4, syscall.AF_INET
			if c.outer6 {
				src, dst, domain = k.a6, k.b6, syscall.AF_INET6
			}
			raw := socketIn(t, k.b, domain, syscall.SOCK_RAW, c.tunnel)
			buf := make([]byte, 40+len(c.inner))
			copy(buf[40:], c.inner)
			start, err := Encap(buf, 40, len(buf), src, dst, EncapOptions{TTL: c.ttl, FlowLabel: c.flowLbl})
			if err != nil {
				t.Fatal(err)
			}
			pkt := buf[start:]
			sock := packetSocket(t, k.a, k.aIdx)
			var bad []byte
			if !c.outer6 {
				// Control: a copy with a wrong outer header checksum goes
				// first; the kernel must drop it.
				bad = bytes.Clone(pkt)
				bad[10] ^= 0x01
				inject(t, sock, k.aIdx, k.bMAC, bad)
			}
			inject(t, sock, k.aIdx, k.bMAC, pkt)
			// An IPv4 raw socket returns the packet with its IP header, an
			// IPv6 raw socket without.
			want := pkt
			if c.outer6 {
				want = c.inner
			}
			receive(t, raw, false, "tunnel packet on the raw socket", func(b []byte) bool {
				if bad != nil && bytes.Equal(b, bad) {
					t.Errorf("the kernel accepted a wrong outer header checksum")
				}
				return bytes.Equal(b, want)
			})
			in, outerSrc, err := Decap(pkt)
			if err != nil || !bytes.Equal(in, c.inner) || outerSrc != src {
				t.Errorf("Decap = %v, %v", outerSrc, err)
			}
		})
	}
}

// TestKernelTooBigLowersPMTU sends a DF datagram from a kernel UDP socket,
// answers it with TooBig and checks that the sending kernel lowered its path
// MTU: the ICMP checksums, the quote and the MTU field were all accepted.
func TestKernelTooBigLowersPMTU(t *testing.T) {
	k := newKernelPair(t)
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("ipv6=%v", v6), func(t *testing.T) {
			client, server := k.a4, k.b4
			domain, level, discover, do, mtuOpt, mtu := syscall.AF_INET, syscall.IPPROTO_IP, syscall.IP_MTU_DISCOVER, syscall.IP_PMTUDISC_DO, syscall.IP_MTU, 1200
			var sa syscall.Sockaddr
			port := 33434
			if v6 {
				client, server = k.a6, k.b6
				domain, level, discover, do, mtuOpt, mtu = syscall.AF_INET6, syscall.IPPROTO_IPV6, syscall.IPV6_MTU_DISCOVER, syscall.IPV6_PMTUDISC_DO, syscall.IPV6_MTU, 1380
				sa = &syscall.SockaddrInet6{Port: port, Addr: server.As16()}
			} else {
				sa = &syscall.SockaddrInet4{Port: port, Addr: server.As4()}
			}
			capture := packetSocket(t, k.b, k.bIdx)
			udp := socketIn(t, k.a, domain, syscall.SOCK_DGRAM, syscall.IPPROTO_UDP)
			if err := syscall.SetsockoptInt(udp, level, discover, do); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Connect(udp, sa); err != nil {
				t.Fatal(err)
			}
			before, err := syscall.GetsockoptInt(udp, level, mtuOpt)
			if err != nil || before != 1500 {
				t.Fatalf("path MTU before = %d, %v; want 1500", before, err)
			}
			if _, err := syscall.Write(udp, make([]byte, 1400)); err != nil {
				t.Fatal(err)
			}
			var p Packet
			big := receive(t, capture, true, "client datagram", func(b []byte) bool {
				return Parse(b, &p) == nil && p.Tuple.Src == client && p.Tuple.Dst == server &&
					p.Tuple.Proto == ananta.ProtocolUDP && p.Tuple.DstPort == uint16(port)
			})
			if !NeedsTooBig(&p, Overhead(server), mtu+Overhead(server)) {
				t.Fatalf("NeedsTooBig(%d bytes, DF %v) = false", p.TotalLen, p.DF)
			}
			out := make([]byte, MaxTooBigIPv6)
			n, err := TooBig(out, big, server, mtu)
			if err != nil {
				t.Fatal(err)
			}
			sock := packetSocket(t, k.b, k.bIdx)
			// Control: the same answer with a lower MTU and a wrong ICMP
			// checksum goes first. Had the kernel taken it, the path MTU
			// would be stuck below mtu, as it only ever decreases.
			bad := make([]byte, MaxTooBigIPv6)
			nb, err := TooBig(bad, big, server, mtu-100)
			if err != nil {
				t.Fatal(err)
			}
			bad[nb-1] ^= 0xff
			inject(t, sock, k.bIdx, k.aMAC, bad[:nb])
			inject(t, sock, k.bIdx, k.aMAC, out[:n])
			testutil.WaitFor(t, kernelWait, "the path MTU to drop to "+strconv.Itoa(mtu), func() bool {
				got, err := syscall.GetsockoptInt(udp, level, mtuOpt)
				return err == nil && got == mtu
			})
			args := []string{"route", "get", server.String()}
			if v6 {
				args = append([]string{"-6"}, args...)
			}
			if route := k.a.Run(t, "ip", args...); !strings.Contains(route, "mtu "+strconv.Itoa(mtu)) {
				t.Errorf("ip route get: %q does not show mtu %d", route, mtu)
			}
		})
	}
}
