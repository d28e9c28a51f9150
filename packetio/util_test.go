package packetio_test

import (
	"encoding/binary"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ananta-go/ananta/internal/testutil"
	"github.com/ananta-go/ananta/packetio"
)

// checksum is the RFC 1071 Internet checksum of b with an initial sum.
func checksum(b []byte, sum uint32) uint16 {
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// pseudoSum is the unfolded sum of the TCP/UDP pseudo-header.
func pseudoSum(src, dst netip.Addr, proto uint8, length int) uint32 {
	var sum uint32
	for _, a := range [][]byte{src.AsSlice(), dst.AsSlice()} {
		for i := 0; i < len(a); i += 2 {
			sum += uint32(a[i])<<8 | uint32(a[i+1])
		}
	}
	return sum + uint32(proto) + uint32(length)
}

// udpPacket builds an IPv4 or IPv6 UDP packet with correct checksums.
func udpPacket(src, dst netip.AddrPort, payload []byte) []byte {
	udpLen := 8 + len(payload)
	var ip []byte
	if src.Addr().Is4() {
		ip = make([]byte, 20)
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], uint16(20+udpLen))
		binary.BigEndian.PutUint16(ip[4:], 0x1234) // ID
		ip[6] = 0x40                               // DF
		ip[8] = 64                                 // TTL
		ip[9] = 17
		s, d := src.Addr().As4(), dst.Addr().As4()
		copy(ip[12:], s[:])
		copy(ip[16:], d[:])
		binary.BigEndian.PutUint16(ip[10:], checksum(ip, 0))
	} else {
		ip = make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(udpLen))
		ip[6] = 17
		ip[7] = 64
		s, d := src.Addr().As16(), dst.Addr().As16()
		copy(ip[8:], s[:])
		copy(ip[24:], d[:])
	}
	udp := make([]byte, udpLen)
	binary.BigEndian.PutUint16(udp[0:], src.Port())
	binary.BigEndian.PutUint16(udp[2:], dst.Port())
	binary.BigEndian.PutUint16(udp[4:], uint16(udpLen))
	copy(udp[8:], payload)
	c := checksum(udp, pseudoSum(src.Addr(), dst.Addr(), 17, udpLen))
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], c)
	return append(ip, udp...)
}

// ipInfo is what the tests check of a packet.
type ipInfo struct {
	version    int
	proto      uint8
	src, dst   netip.Addr
	l4         []byte // transport header and payload
	headerOK   bool   // IPv4 header checksum verifies (always true for IPv6)
	totalMatch bool   // the length field matches the packet's length
}

// parseIP parses an IPv4 (no options needed, but honoured) or IPv6 (no
// extension headers) packet minimally.
func parseIP(b []byte) (ipInfo, bool) {
	if len(b) < 1 {
		return ipInfo{}, false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return ipInfo{}, false
		}
		ihl := int(b[0]&0xf) * 4
		if ihl < 20 || len(b) < ihl {
			return ipInfo{}, false
		}
		return ipInfo{
			version:    4,
			proto:      b[9],
			src:        netip.AddrFrom4([4]byte(b[12:16])),
			dst:        netip.AddrFrom4([4]byte(b[16:20])),
			l4:         b[ihl:],
			headerOK:   checksum(b[:ihl], 0) == 0,
			totalMatch: int(binary.BigEndian.Uint16(b[2:])) == len(b),
		}, true
	case 6:
		if len(b) < 40 {
			return ipInfo{}, false
		}
		return ipInfo{
			version:    6,
			proto:      b[6],
			src:        netip.AddrFrom16([16]byte(b[8:24])),
			dst:        netip.AddrFrom16([16]byte(b[24:40])),
			l4:         b[40:],
			headerOK:   true,
			totalMatch: int(binary.BigEndian.Uint16(b[4:]))+40 == len(b),
		}, true
	}
	return ipInfo{}, false
}

// isUDPTo reports whether pkt is a UDP packet to dst whose payload has the
// given prefix.
func isUDPTo(pkt []byte, dst netip.AddrPort, prefix string) bool {
	ip, ok := parseIP(pkt)
	if !ok || ip.proto != 17 || ip.dst != dst.Addr() || len(ip.l4) < 8 {
		return false
	}
	return binary.BigEndian.Uint16(ip.l4[2:]) == dst.Port() && strings.HasPrefix(string(ip.l4[8:]), prefix)
}

// waitBlocked waits until a goroutine whose stack contains fn is parked
// (in the netpoller, a channel operation or a select).
func waitBlocked(t *testing.T, fn string) {
	t.Helper()
	testutil.WaitFor(t, 5*time.Second, fn+" to block", func() bool {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if !strings.Contains(g, fn) {
				continue
			}
			head, _, _ := strings.Cut(g, "\n")
			for _, state := range []string{"[IO wait", "[select", "[chan receive", "[chan send"} {
				if strings.Contains(head, state) {
					return true
				}
			}
		}
		return false
	})
}

// collector reads a port on its own goroutine and passes copies of the
// packets on, until the port is closed.
type collector struct {
	ch   chan []byte
	done chan error
}

// collect starts reading p with batches of n messages of size bytes each.
// On cleanup it closes p and waits for the reader to end.
func collect(t *testing.T, p packetio.Port, n, size, headroom int) *collector {
	t.Helper()
	c := &collector{ch: make(chan []byte, 65536), done: make(chan error, 1)}
	msgs := packetio.NewBatch(n, size, headroom)
	go func() {
		for {
			k, err := p.ReadBatch(msgs)
			if err != nil {
				c.done <- err
				close(c.ch)
				return
			}
			for i := range k {
				if msgs[i].Off != headroom {
					c.done <- errOff
					close(c.ch)
					return
				}
				c.ch <- append([]byte(nil), msgs[i].Packet()...)
			}
		}
	}()
	t.Cleanup(func() {
		p.Close()
		select {
		case <-c.done:
		case <-time.After(10 * time.Second):
			t.Error("reader did not end within 10 s of Close")
		}
	})
	return c
}

var errOff = errorString("ReadBatch returned a message whose Off is not the headroom")

type errorString string

func (e errorString) Error() string { return string(e) }

// expect returns the first packet for which match is true, failing the
// test if none arrives within the timeout. Other packets are returned in
// skipped.
func (c *collector) expect(t *testing.T, timeout time.Duration, what string, match func([]byte) bool) (pkt []byte, skipped [][]byte) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case p, ok := <-c.ch:
			if !ok {
				t.Fatalf("port reader ended (%v) before %s", <-c.done, what)
			}
			if match(p) {
				return p, skipped
			}
			skipped = append(skipped, p)
		case <-deadline.C:
			t.Fatalf("no %s within %s (%d other packets read)", what, timeout, len(skipped))
		}
	}
}
