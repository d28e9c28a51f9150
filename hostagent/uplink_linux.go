package hostagent

import (
	"fmt"
	"net"
	"net/netip"
	"sync"

	"github.com/ananta-go/ananta/internal/netns"
	"github.com/ananta-go/ananta/packetio"
	"golang.org/x/sys/unix"
)

// UplinkConfig configures OpenUplink.
type UplinkConfig struct {
	// Interface is the host's interface towards the router. Required.
	Interface string
	// NetNS is the path of the network namespace the interface is in;
	// empty means the calling process's.
	NetNS string
	// NextHop is the router's link-layer address: every packet the agent
	// sends goes there. If empty, Router is looked up in the kernel's
	// neighbour table (the kernel must have resolved it, for example
	// because the host pinged the router).
	NextHop net.HardwareAddr
	// Router is the router's address, used when NextHop is empty.
	Router netip.Addr
	// BatchSize, RecvBuffer and SendBuffer are passed to
	// packetio.AFPacketConfig.
	BatchSize, RecvBuffer, SendBuffer int
	// KeepOffloads leaves GRO, GSO and TSO on the interface. By default
	// OpenUplink turns them off (packetio.DisableOffloads), so that the
	// packet socket sees wire-sized packets.
	KeepOffloads bool
}

// Uplink is the Host Agent's port on the host's interface: an AF_PACKET
// port (packetio.AFPacket) plus raw IP sockets for protocols 4 and 41 that
// keep the kernel, which also receives every tunnel packet (AF_PACKET is a
// tap), from answering them with ICMP "protocol unreachable": with a raw
// socket open for a protocol, the kernel delivers to it instead. The raw
// sockets drop everything in a socket filter.
type Uplink struct {
	*packetio.AFPacket
	raw       []int
	closeOnce sync.Once
}

// OpenUplink opens the uplink in cfg.NetNS. It needs CAP_NET_RAW and
// CAP_NET_ADMIN.
func OpenUplink(cfg UplinkConfig) (*Uplink, error) {
	if cfg.Interface == "" {
		return nil, invalidf("Interface", "is required")
	}
	if len(cfg.NextHop) == 0 && !cfg.Router.IsValid() {
		return nil, invalidf("NextHop", "or Router is required")
	}
	u := &Uplink{}
	err := netns.Do(cfg.NetNS, func() error {
		hop := cfg.NextHop
		if len(hop) == 0 {
			var err error
			if hop, err = packetio.LookupNeighbor(cfg.Interface, cfg.Router); err != nil {
				return err
			}
		}
		if !cfg.KeepOffloads {
			if err := packetio.DisableOffloads(cfg.Interface); err != nil {
				return err
			}
		}
		for _, s := range []struct{ family, proto int }{
			{unix.AF_INET, unix.IPPROTO_IPIP}, {unix.AF_INET, unix.IPPROTO_IPV6},
			{unix.AF_INET6, unix.IPPROTO_IPIP}, {unix.AF_INET6, unix.IPPROTO_IPV6},
		} {
			fd, err := rawSink(s.family, s.proto)
			if err != nil {
				return err
			}
			u.raw = append(u.raw, fd)
		}
		p, err := packetio.OpenAFPacket(packetio.AFPacketConfig{
			Interface: cfg.Interface, NextHop: hop, BatchSize: cfg.BatchSize,
			RecvBuffer: cfg.RecvBuffer, SendBuffer: cfg.SendBuffer,
		})
		u.AFPacket = p
		return err
	})
	if err != nil {
		for _, fd := range u.raw {
			unix.Close(fd)
		}
		return nil, fmt.Errorf("hostagent: uplink %s: %w", cfg.Interface, err)
	}
	return u, nil
}

// rawSink opens a raw socket for proto that drops every packet.
func rawSink(family, proto int) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, proto)
	if err != nil {
		return -1, fmt.Errorf("raw socket (family %d, protocol %d): %w", family, proto, err)
	}
	dropAll := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	prog := unix.SockFprog{Len: 1, Filter: &dropAll[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("raw socket filter: %w", err)
	}
	return fd, nil
}

// Close closes the packet socket and the raw sockets. It is idempotent.
func (u *Uplink) Close() error {
	var err error
	u.closeOnce.Do(func() {
		for _, fd := range u.raw {
			unix.Close(fd)
		}
		err = u.AFPacket.Close()
	})
	return err
}

var _ packetio.Port = (*Uplink)(nil)
