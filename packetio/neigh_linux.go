package packetio

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// LookupNeighbor returns the link-layer address the kernel's neighbour table
// (ARP for IPv4, NDP for IPv6) holds for addr on the interface named ifname
// (any interface if ifname is empty), in the network namespace of the
// calling OS thread. Use it to fill AFPacketConfig.NextHop with a router's
// address. It does not trigger resolution: if the kernel has not resolved
// addr yet (send it any packet first, e.g. a ping) or resolution failed, it
// returns an error wrapping ErrNoNeighbor.
func LookupNeighbor(ifname string, addr netip.Addr) (net.HardwareAddr, error) {
	addr = addr.Unmap().WithZone("")
	if !addr.IsValid() {
		return nil, fmt.Errorf("%w: invalid address", ErrInvalidConfig)
	}
	ifindex := 0
	if ifname != "" {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return nil, fmt.Errorf("packetio: interface %q: %w", ifname, err)
		}
		ifindex = ifi.Index
	}
	family := unix.AF_INET
	if addr.Is6() {
		family = unix.AF_INET6
	}
	rib, err := syscall.NetlinkRIB(unix.RTM_GETNEIGH, family)
	if err != nil {
		return nil, fmt.Errorf("packetio: neighbour dump: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return nil, fmt.Errorf("packetio: neighbour dump: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Type != unix.RTM_NEWNEIGH {
			continue
		}
		dst, lladdr, idx, state, ok := parseNeighbor(m.Data)
		if !ok || dst != addr || (ifindex != 0 && idx != ifindex) {
			continue
		}
		if state&(unix.NUD_INCOMPLETE|unix.NUD_FAILED) != 0 || state == unix.NUD_NONE || len(lladdr) == 0 {
			continue
		}
		return lladdr, nil
	}
	return nil, fmt.Errorf("%w: %s on %q", ErrNoNeighbor, addr, ifname)
}

// parseNeighbor decodes an ndmsg and its NDA_DST and NDA_LLADDR attributes.
func parseNeighbor(b []byte) (dst netip.Addr, lladdr net.HardwareAddr, ifindex int, state uint16, ok bool) {
	if len(b) < unix.SizeofNdMsg {
		return dst, nil, 0, 0, false
	}
	ifindex = int(int32(binary.NativeEndian.Uint32(b[4:8])))
	state = binary.NativeEndian.Uint16(b[8:10])
	for a := b[unix.SizeofNdMsg:]; len(a) >= 4; {
		l := int(binary.NativeEndian.Uint16(a[0:2]))
		typ := binary.NativeEndian.Uint16(a[2:4])
		if l < 4 || l > len(a) {
			break
		}
		v := a[4:l]
		switch typ {
		case unix.NDA_DST:
			dst, _ = netip.AddrFromSlice(v)
		case unix.NDA_LLADDR:
			lladdr = append(net.HardwareAddr(nil), v...)
		}
		l = (l + 3) &^ 3
		if l > len(a) {
			break
		}
		a = a[l:]
	}
	return dst, lladdr, ifindex, state, dst.IsValid()
}
