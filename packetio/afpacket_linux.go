package packetio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// AFPacketConfig configures an AF_PACKET port.
type AFPacketConfig struct {
	// Interface is the name of the interface to bind to, in the namespace
	// of the calling thread. Required.
	Interface string
	// Headroom is the Off at which ReadBatch places packets. Default 0.
	Headroom int
	// BatchSize is the most messages one recvmmsg or sendmmsg call
	// handles; longer batches are split. Default 64, at most 1024.
	BatchSize int
	// NextHop is the link-layer destination of every packet written, for
	// example the router's MAC address (see LookupNeighbor). Its length
	// must match the interface's hardware address. It may be empty on an
	// interface without link-layer addresses (TUN) or for a port that only
	// reads; WriteBatch then returns ErrNoNextHop on an interface that has
	// them.
	NextHop net.HardwareAddr
	// FanoutGroup, when non-zero, joins the socket to the PACKET_FANOUT
	// group with that ID (1 to 65535) in hash mode: the kernel spreads
	// received packets over the group's sockets by flow hash, so that
	// several workers each own one port on the same interface.
	FanoutGroup int
	// RecvBuffer and SendBuffer set the socket buffer sizes in bytes
	// (SO_RCVBUFFORCE/SO_SNDBUFFORCE with CAP_NET_ADMIN, else capped by
	// net.core.rmem_max/wmem_max). Zero keeps the kernel default.
	RecvBuffer, SendBuffer int
}

const (
	defaultBatchSize = 64
	maxBatchSize     = 1024
)

func (c *AFPacketConfig) setDefaults() {
	if c.BatchSize == 0 {
		c.BatchSize = defaultBatchSize
	}
}

// Validate reports whether the config, with its defaults applied, is usable.
// Errors wrap ErrInvalidConfig. It does not look the interface up.
func (c AFPacketConfig) Validate() error {
	c.setDefaults()
	switch {
	case c.Interface == "" || len(c.Interface) >= unix.IFNAMSIZ:
		return fmt.Errorf("%w: Interface must be a name of 1 to %d bytes, got %q", ErrInvalidConfig, unix.IFNAMSIZ-1, c.Interface)
	case c.Headroom < 0:
		return fmt.Errorf("%w: Headroom must be >= 0, got %d", ErrInvalidConfig, c.Headroom)
	case c.BatchSize < 1 || c.BatchSize > maxBatchSize:
		return fmt.Errorf("%w: BatchSize must be in [1, %d], got %d", ErrInvalidConfig, maxBatchSize, c.BatchSize)
	case len(c.NextHop) > 8:
		return fmt.Errorf("%w: NextHop must be at most 8 bytes, got %d", ErrInvalidConfig, len(c.NextHop))
	case c.FanoutGroup < 0 || c.FanoutGroup > 0xffff:
		return fmt.Errorf("%w: FanoutGroup must be in [0, 65535], got %d", ErrInvalidConfig, c.FanoutGroup)
	case c.RecvBuffer < 0 || c.SendBuffer < 0:
		return fmt.Errorf("%w: RecvBuffer and SendBuffer must be >= 0", ErrInvalidConfig)
	}
	return nil
}

// AFPacket is a [Port] on a Linux AF_PACKET socket bound to one interface.
// It reads the IPv4 and IPv6 packets the interface receives for this host
// (unicast to its address, broadcast, multicast), not the ones it sends
// (PACKET_IGNORE_OUTGOING), and writes IP packets to NextHop. The EtherType
// of each written packet follows its IP version. recvmmsg and sendmmsg move
// a whole batch per system call through headers preallocated in the port.
//
// The socket is of type SOCK_RAW, because only raw packet sockets carry the
// virtio-net header used below, but the port carries IP packets like a
// SOCK_DGRAM ("cooked") socket: scatter/gather I/O puts the link-layer
// header (14 bytes on Ethernet, none on TUN-like interfaces) in a buffer of
// the port's own, and the port builds it from NextHop and the interface's
// address (read once, at open) when writing. Interfaces of other link types
// are refused.
//
// # Offloads
//
// Packets that the kernel has not finished are fixed or dropped on
// reading, so that ReadBatch returns packets as they would be on a wire:
//
//   - A packet whose transport checksum was left to offload
//     (CHECKSUM_PARTIAL: typical of packets a local stack sent through a
//     veth pair, even after forwarding) gets its checksum computed in
//     software; the port learns this per packet from a virtio-net header
//     (PACKET_VNET_HDR).
//   - A segmentation-offload super-packet (GSO from a local stack over veth,
//     GRO on the receiving interface; up to 64 KiB with one IP header) is
//     dropped and counted in Stats.RxGSO. Turn these offloads off with
//     DisableOffloads: on the port's own interface (GRO) and, for a veth,
//     on the peer that transmits into it (TSO/GSO).
type AFPacket struct {
	cfg     AFPacketConfig
	fd      *pollFD
	ifindex int
	l2len   int  // link-layer header length: 14 or 0
	hasL2   bool // the interface has link-layer addresses
	niov    int  // iovecs per message: virtio-net header, [link header,] packet

	// readMu guards the read-side fields below.
	readMu sync.Mutex
	rhdr   []unix.Mmsghdr
	riov   []unix.Iovec
	rvnet  []vnetHdr
	rl2    [][ethHdrLen]byte
	rcount int   // in: messages offered to recvmmsg
	rn     int   // out: messages received
	rerr   error // out: error other than EAGAIN
	readFn func(fd uintptr) bool

	// writeMu guards the write-side fields below.
	writeMu    sync.Mutex
	whdr       []unix.Mmsghdr
	wiov       []unix.Iovec
	wvnet      vnetHdr // all zero: no offload requested
	eth4, eth6 [ethHdrLen]byte
	sa4, sa6   unix.RawSockaddrLinklayer
	wcount     int   // in: messages to send
	wdone      int   // out: messages sent or dropped
	wdropped   int   // out: messages dropped by the kernel (ENOBUFS)
	wdbytes    int   // out: their bytes
	werr       error // out: error that stopped the batch
	writeFn    func(fd uintptr) bool

	rxPackets, rxBytes, rxTruncated, rxGSO, txPackets, txBytes, txDropped atomic.Uint64

	// statsMu guards kernelDrops, which accumulates PACKET_STATISTICS
	// (the kernel resets it on every read).
	statsMu     sync.Mutex
	kernelDrops uint64
}

const ethHdrLen = 14

// OpenAFPacket opens an AF_PACKET port on cfg.Interface in the network
// namespace of the calling OS thread (see the package documentation). It
// needs CAP_NET_RAW. Errors wrap ErrInvalidConfig for a bad config or an
// unsupported interface, or the kernel's error.
func OpenAFPacket(cfg AFPacketConfig) (*AFPacket, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	cfg.NextHop = append(net.HardwareAddr(nil), cfg.NextHop...)
	ifi, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("packetio: interface %q: %w", cfg.Interface, err)
	}
	if len(cfg.NextHop) > 0 && len(cfg.NextHop) != len(ifi.HardwareAddr) {
		return nil, fmt.Errorf("%w: NextHop %v has %d bytes, interface %s uses %d", ErrInvalidConfig, cfg.NextHop, len(cfg.NextHop), cfg.Interface, len(ifi.HardwareAddr))
	}
	// Protocol 0: the socket receives nothing until bind, after the filter
	// and options are in place.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("packetio: socket(AF_PACKET): %w", err)
	}
	l2len, err := linkHeaderLen(fd, cfg.Interface, ifi.HardwareAddr)
	if err == nil {
		err = setupPacketSocket(fd, ifi.Index, cfg)
	}
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	pfd, err := newPollFD(fd, "afpacket:"+cfg.Interface)
	if err != nil {
		return nil, err
	}
	p := &AFPacket{
		cfg:     cfg,
		fd:      pfd,
		ifindex: ifi.Index,
		l2len:   l2len,
		hasL2:   len(ifi.HardwareAddr) > 0,
		niov:    2,
		rhdr:    make([]unix.Mmsghdr, cfg.BatchSize),
		rvnet:   make([]vnetHdr, cfg.BatchSize),
		rl2:     make([][ethHdrLen]byte, cfg.BatchSize),
		whdr:    make([]unix.Mmsghdr, cfg.BatchSize),
	}
	if l2len > 0 {
		p.niov = 3
	}
	p.riov = make([]unix.Iovec, p.niov*cfg.BatchSize)
	p.wiov = make([]unix.Iovec, p.niov*cfg.BatchSize)
	for i, eth := range []*[ethHdrLen]byte{&p.eth4, &p.eth6} {
		copy(eth[0:6], cfg.NextHop)
		copy(eth[6:12], ifi.HardwareAddr)
		binary.BigEndian.PutUint16(eth[12:], [2]uint16{unix.ETH_P_IP, unix.ETH_P_IPV6}[i])
	}
	// The kernel takes the protocol of a raw frame from the address.
	for i, sa := range []*unix.RawSockaddrLinklayer{&p.sa4, &p.sa6} {
		sa.Family = unix.AF_PACKET
		sa.Protocol = htons([2]uint16{unix.ETH_P_IP, unix.ETH_P_IPV6}[i])
		sa.Ifindex = int32(ifi.Index)
		sa.Halen = uint8(len(cfg.NextHop))
		copy(sa.Addr[:], cfg.NextHop)
	}
	for i := range p.rhdr {
		riov, wiov := p.riov[p.niov*i:], p.wiov[p.niov*i:]
		riov[0].Base = &p.rvnet[i][0]
		riov[0].SetLen(vnetHdrLen)
		wiov[0].Base = &p.wvnet[0]
		wiov[0].SetLen(vnetHdrLen)
		if l2len > 0 {
			riov[1].Base = &p.rl2[i][0]
			riov[1].SetLen(l2len)
			wiov[1].SetLen(l2len) // Base set per packet: eth4 or eth6
		}
		p.rhdr[i].Hdr.Iov = &riov[0]
		p.rhdr[i].Hdr.SetIovlen(p.niov)
		p.whdr[i].Hdr.Iov = &wiov[0]
		p.whdr[i].Hdr.SetIovlen(p.niov)
		p.whdr[i].Hdr.Namelen = unix.SizeofSockaddrLinklayer
	}
	// Bound once: passing a method value to RawConn.Read on every call
	// would allocate.
	p.readFn = p.recvmmsg
	p.writeFn = p.sendmmsg
	return p, nil
}

// linkHeaderLen returns the length of the interface's link-layer header:
// 14 for Ethernet (veth, physical NICs, loopback), 0 for interfaces without
// one (TUN). Other link types wrap ErrInvalidConfig.
func linkHeaderLen(fd int, name string, hw net.HardwareAddr) (int, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, fmt.Errorf("%w: interface %q: %w", ErrInvalidConfig, name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFHWADDR, ifr); err != nil {
		return 0, fmt.Errorf("packetio: SIOCGIFHWADDR %q: %w", name, err)
	}
	switch typ := ifr.Uint16(); {
	case (typ == unix.ARPHRD_ETHER || typ == unix.ARPHRD_LOOPBACK) && len(hw) == 6:
		return ethHdrLen, nil
	case typ == unix.ARPHRD_NONE && len(hw) == 0:
		return 0, nil
	default:
		return 0, fmt.Errorf("%w: interface %q has link type %d; want Ethernet or none (TUN)", ErrInvalidConfig, name, typ)
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// ipFilter is a classic BPF program that accepts IPv4 and IPv6 packets whose
// packet type is host, broadcast or multicast, and drops everything else
// (ARP, other hosts' unicast, outgoing copies) in the kernel.
var ipFilter = []unix.SockFilter{
	{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: skfAdOff + skfAdPkttype},
	{Code: unix.BPF_JMP | unix.BPF_JGT | unix.BPF_K, Jt: 3, Jf: 0, K: unix.PACKET_MULTICAST},
	{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: skfAdOff + skfAdProtocol},
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 2, Jf: 0, K: unix.ETH_P_IP},
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, Jf: 0, K: unix.ETH_P_IPV6},
	{Code: unix.BPF_RET | unix.BPF_K, K: 0},
	{Code: unix.BPF_RET | unix.BPF_K, K: 0x40000},
}

// Ancillary data offsets of classic BPF (linux/filter.h).
const (
	skfAdOff      = 0xfffff000 // -0x1000 as uint32
	skfAdProtocol = 0
	skfAdPkttype  = 4
)

func setupPacketSocket(fd, ifindex int, cfg AFPacketConfig) error {
	prog := unix.SockFprog{Len: uint16(len(ipFilter)), Filter: &ipFilter[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		return fmt.Errorf("packetio: SO_ATTACH_FILTER: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1); err != nil {
		return fmt.Errorf("packetio: PACKET_IGNORE_OUTGOING: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return fmt.Errorf("packetio: PACKET_VNET_HDR: %w", err)
	}
	if err := setBuffer(fd, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, cfg.RecvBuffer); err != nil {
		return err
	}
	if err := setBuffer(fd, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, cfg.SendBuffer); err != nil {
		return err
	}
	sa := unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}
	if err := unix.Bind(fd, &sa); err != nil {
		return fmt.Errorf("packetio: bind AF_PACKET to %s (index %d): %w", cfg.Interface, ifindex, err)
	}
	if cfg.FanoutGroup != 0 {
		v := cfg.FanoutGroup | unix.PACKET_FANOUT_HASH<<16
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT, v); err != nil {
			return fmt.Errorf("packetio: PACKET_FANOUT group %d: %w", cfg.FanoutGroup, err)
		}
	}
	return nil
}

func setBuffer(fd, force, plain, size int) error {
	if size == 0 {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, force, size); err == nil {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, plain, size); err != nil {
		return fmt.Errorf("packetio: socket buffer %d bytes: %w", size, err)
	}
	return nil
}

// Interface returns the name of the interface the port is bound to.
func (p *AFPacket) Interface() string { return p.cfg.Interface }

// Index returns the index of the interface the port is bound to.
func (p *AFPacket) Index() int { return p.ifindex }

// ReadBatch implements [Port.ReadBatch] with one recvmmsg call, and returns
// at most BatchSize packets per call. It may also return a wrapped kernel
// error.
func (p *AFPacket) ReadBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	h := p.cfg.Headroom
	if err := checkRead(msgs, h); err != nil {
		return 0, err
	}
	p.readMu.Lock()
	defer p.readMu.Unlock()
	if len(msgs) > len(p.rhdr) {
		msgs = msgs[:len(p.rhdr)]
	}
	for {
		for i := range msgs {
			buf := msgs[i].Buf[h:]
			iov := &p.riov[p.niov*i+p.niov-1]
			iov.Base = &buf[0]
			iov.SetLen(len(buf))
			p.rhdr[i].Hdr.Flags = 0
			p.rhdr[i].Len = 0
		}
		p.rcount, p.rn, p.rerr = len(msgs), 0, nil
		err := p.fd.rc.Read(p.readFn)
		if err == nil {
			err = p.rerr
		}
		if err != nil {
			return 0, p.fd.wrap("recvmmsg", err)
		}
		n, bytes, dropped := p.rn, 0, 0
		for i := range n {
			v := &p.rvnet[i]
			switch {
			case v.gsoType() != unix.VIRTIO_NET_HDR_GSO_NONE:
				p.rxGSO.Add(1)
			case p.rhdr[i].Hdr.Flags&unix.MSG_TRUNC != 0 || int(p.rhdr[i].Len) <= vnetHdrLen+p.l2len:
				p.rxTruncated.Add(1)
			default:
				m := &msgs[i]
				m.Off, m.N = h, int(p.rhdr[i].Len)-vnetHdrLen-p.l2len
				if v.flags()&unix.VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
					// csum_start counts from the link-layer header.
					completeChecksum(m.Buf[h:h+m.N], int(v.csumStart())-p.l2len, int(v.csumOffset()))
				}
				bytes += m.N
				continue
			}
			dropped++
			p.rvnet[i][0] = 0xff // marks the message for compaction
		}
		if dropped > 0 {
			n = compact(msgs[:n], func(i int) bool { return p.rvnet[i][0] != 0xff })
		}
		p.rxPackets.Add(uint64(n))
		p.rxBytes.Add(uint64(bytes))
		if n > 0 {
			return n, nil
		}
	}
}

// recvmmsg is the RawConn.Read callback: it returns false to wait for the
// socket to become readable.
func (p *AFPacket) recvmmsg(fd uintptr) bool {
	for einval := 0; ; {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&p.rhdr[0])), uintptr(p.rcount), 0, 0, 0)
		switch e {
		case 0:
			p.rn = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		case unix.EINVAL:
			// The kernel consumed a super-packet whose offload type a
			// virtio-net header cannot describe (packet_rcv_vnet). The
			// arguments themselves are valid by construction; the bound
			// only guards against looping on a bug.
			if einval++; einval <= len(p.rhdr) {
				p.rxGSO.Add(1)
				continue
			}
			fallthrough
		default:
			p.rerr = e
			return true
		}
	}
}

// WriteBatch implements [Port.WriteBatch] with one sendmmsg call per batch
// of up to BatchSize messages. Packets the kernel drops for lack of buffer
// space (ENOBUFS, a full transmit queue) count as written (n includes them)
// and in Stats.TxDropped instead of TxPackets, as a NIC drops. A packet
// larger than the interface MTU stops the batch with an error matching
// ErrTooBig and unix.EMSGSIZE. It may also return ErrNoNextHop or a wrapped
// kernel error.
func (p *AFPacket) WriteBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	p.writeMu.Lock()
	defer p.writeMu.Unlock()
	if p.fd.closed.Load() {
		return 0, ErrClosed
	}
	if p.hasL2 && len(p.cfg.NextHop) == 0 {
		return 0, ErrNoNextHop
	}
	sent := 0
	for sent < len(msgs) {
		k := 0
		var invalid error
		for k < len(p.whdr) && sent+k < len(msgs) {
			pkt, err := checkWrite(&msgs[sent+k])
			if err != nil {
				invalid = err
				break
			}
			iov := p.wiov[p.niov*k : p.niov*(k+1)]
			iov[p.niov-1].Base = &pkt[0]
			iov[p.niov-1].SetLen(len(pkt))
			sa, eth := &p.sa4, &p.eth4
			if pkt[0]>>4 == 6 {
				sa, eth = &p.sa6, &p.eth6
			}
			p.whdr[k].Hdr.Name = (*byte)(unsafe.Pointer(sa))
			if p.l2len > 0 {
				iov[1].Base = &eth[0]
			}
			k++
		}
		if k > 0 {
			p.wcount, p.wdone, p.wdropped, p.wdbytes, p.werr = k, 0, 0, 0, nil
			err := p.fd.rc.Write(p.writeFn)
			if err == nil {
				err = p.werr
			}
			bytes := 0
			for i := range p.wdone {
				bytes += msgs[sent+i].N
			}
			p.txPackets.Add(uint64(p.wdone - p.wdropped))
			bytes -= p.wdbytes
			p.txBytes.Add(uint64(bytes))
			p.txDropped.Add(uint64(p.wdropped))
			sent += p.wdone
			if err != nil {
				return sent, p.fd.wrap("sendmmsg", err)
			}
		}
		if invalid != nil {
			return sent, invalid
		}
	}
	return sent, nil
}

// sendmmsg is the RawConn.Write callback: it returns false to wait for the
// socket to become writable.
func (p *AFPacket) sendmmsg(fd uintptr) bool {
	for p.wdone < p.wcount {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&p.whdr[p.wdone])), uintptr(p.wcount-p.wdone), 0, 0, 0)
		switch e {
		case 0:
			p.wdone += int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		case unix.ENOBUFS:
			p.wdropped++
			p.wdbytes += int(p.wiov[p.niov*p.wdone+p.niov-1].Len)
			p.wdone++
		default:
			p.werr = e
			return true
		}
	}
	return true
}

// Stats implements [Port.Stats]. RxDropped is the kernel's count of packets
// dropped because the socket's receive buffer was full.
func (p *AFPacket) Stats() Stats {
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	if !p.fd.closed.Load() {
		var st *unix.TpacketStats
		var err error
		cerr := p.fd.rc.Control(func(fd uintptr) {
			st, err = unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS)
		})
		if cerr == nil && err == nil {
			p.kernelDrops += uint64(st.Drops)
		}
	}
	return Stats{
		RxPackets:   p.rxPackets.Load(),
		RxBytes:     p.rxBytes.Load(),
		TxPackets:   p.txPackets.Load(),
		TxBytes:     p.txBytes.Load(),
		RxDropped:   p.kernelDrops,
		RxTruncated: p.rxTruncated.Load(),
		RxGSO:       p.rxGSO.Load(),
		TxDropped:   p.txDropped.Load(),
	}
}

// Close implements [Port.Close].
func (p *AFPacket) Close() error {
	if err := p.fd.close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("packetio: close: %w", err)
	}
	return nil
}

var _ Port = (*AFPacket)(nil)

// vnetHdr is struct virtio_net_hdr in host byte order, as packet sockets
// use it.
type vnetHdr [vnetHdrLen]byte

const vnetHdrLen = 10

func (v *vnetHdr) flags() uint8       { return v[0] }
func (v *vnetHdr) gsoType() uint8     { return v[1] &^ unix.VIRTIO_NET_HDR_GSO_ECN }
func (v *vnetHdr) csumStart() uint16  { return binary.NativeEndian.Uint16(v[6:]) }
func (v *vnetHdr) csumOffset() uint16 { return binary.NativeEndian.Uint16(v[8:]) }

// completeChecksum finishes a checksum left to offload: the 16-bit field at
// start+offset holds the pseudo-header sum, and the Internet checksum of
// pkt[start:] goes there. Out-of-range values leave pkt alone.
func completeChecksum(pkt []byte, start, offset int) {
	if start < 0 || offset < 0 || start+offset+2 > len(pkt) {
		return
	}
	c := ^fold(sum(pkt[start:], 0))
	if c == 0 {
		c = 0xffff // as the kernel does: 0 means "no checksum" for UDP
	}
	binary.BigEndian.PutUint16(pkt[start+offset:], c)
}

// sum adds b as big-endian 16-bit words to s (RFC 1071), 8 bytes at a time.
func sum(b []byte, s uint64) uint64 {
	for len(b) >= 8 {
		v := binary.BigEndian.Uint64(b)
		s1 := s + v>>32 + v&0xffffffff
		s = s1
		b = b[8:]
	}
	for len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return s
}

// fold folds a 64-bit one's-complement sum to 16 bits.
func fold(s uint64) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
