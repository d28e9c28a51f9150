package packetio

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DisableOffloads turns off TCP segmentation offload, generic segmentation
// offload and generic receive offload on the named interface, in the
// network namespace of the calling OS thread, like
// `ethtool -K ifname tso off gso off gro off`. Offloads the interface does
// not support are skipped. It needs CAP_NET_ADMIN.
//
// With these offloads on, the kernel hands packet sockets super-packets of
// up to 64 KiB instead of wire-sized packets, which an [AFPacket] port drops
// (Stats.RxGSO). Call it for the port's own interface (GRO merges received
// segments before packet sockets see them) and, for a veth, for the peer
// that transmits into it, in the peer's namespace (TSO and GSO keep the
// segments of a local sender, or of a forwarding router, merged across the
// pair). Hardware LRO and hardware GRO, where a NIC has them, are not
// touched: turn them off with ethtool.
func DisableOffloads(ifname string) error {
	if ifname == "" || len(ifname) >= unix.IFNAMSIZ {
		return fmt.Errorf("%w: interface name %q", ErrInvalidConfig, ifname)
	}
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("packetio: socket: %w", err)
	}
	defer unix.Close(s)
	for _, op := range []struct {
		cmd  uint32
		name string
	}{{unix.ETHTOOL_STSO, "tso"}, {unix.ETHTOOL_SGSO, "gso"}, {unix.ETHTOOL_SGRO, "gro"}} {
		v := ethtoolValue{cmd: op.cmd}
		var ifr ifreqData
		copy(ifr.name[:], ifname)
		ifr.data = unsafe.Pointer(&v)
		_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(s), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
		if e != 0 && !errors.Is(e, unix.EOPNOTSUPP) {
			return fmt.Errorf("packetio: %s: turn %s off: %w", ifname, op.name, e)
		}
	}
	return nil
}

// ethtoolValue is struct ethtool_value.
type ethtoolValue struct {
	cmd  uint32
	data uint32
}

// ifreqData is struct ifreq with its union used as ifr_data.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [16]byte
}
