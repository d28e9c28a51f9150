package packetio

import (
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TUNConfig configures a TUN port.
type TUNConfig struct {
	// Name is the device name. If a persistent TUN device of that name
	// exists, the port attaches to it; otherwise a new device is created
	// and disappears when the port closes. Empty lets the kernel choose
	// (tun0, tun1, ...); Name on the port reports the result.
	Name string
	// Headroom is the Off at which ReadBatch places packets. Default 0.
	Headroom int
}

// Validate reports whether the config is usable. Errors wrap
// ErrInvalidConfig.
func (c TUNConfig) Validate() error {
	switch {
	case len(c.Name) >= unix.IFNAMSIZ:
		return fmt.Errorf("%w: Name must be at most %d bytes, got %q", ErrInvalidConfig, unix.IFNAMSIZ-1, c.Name)
	case c.Headroom < 0:
		return fmt.Errorf("%w: Headroom must be >= 0, got %d", ErrInvalidConfig, c.Headroom)
	}
	return nil
}

// TUN is a [Port] on a Linux TUN device opened with IFF_TUN|IFF_NO_PI: what
// the kernel routes into the device is read, what is written is received by
// the kernel as if it had arrived on the device. Each packet costs one read
// or write system call; ReadBatch reads until the device has no more
// packets or the batch is full.
//
// The device is created down and without addresses: the caller brings it up
// and configures addresses and routes (ip link, ip addr, netlink).
type TUN struct {
	cfg   TUNConfig
	fd    *pollFD
	name  string
	index int

	// readMu guards the read-side fields below.
	readMu             sync.Mutex
	rmsgs              []Message // in: the batch being filled
	riov               [2]unix.Iovec
	overflow           [1]byte // riov[1]: a byte here means the packet did not fit
	rn, rbytes, rtrunc int     // out
	rerr               error   // out
	readFn             func(fd uintptr) bool

	// writeMu guards the write-side fields below.
	writeMu    sync.Mutex
	wmsgs      []Message // in: the batch being sent
	wn, wbytes int       // out
	werr       error     // out: kernel error
	winvalid   error     // out: checkWrite error
	writeFn    func(fd uintptr) bool

	rxPackets, rxBytes, rxTruncated, txPackets, txBytes atomic.Uint64
}

// OpenTUN creates (or attaches to) a TUN device in the network namespace of
// the calling OS thread (see the package documentation). It needs
// CAP_NET_ADMIN. Errors wrap ErrInvalidConfig for a bad config, or the
// kernel's error.
func OpenTUN(cfg TUNConfig) (*TUN, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("packetio: open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(cfg.Name)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: Name %q: %w", ErrInvalidConfig, cfg.Name, err)
	}
	ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("packetio: TUNSETIFF %q: %w", cfg.Name, err)
	}
	name := ifr.Name()
	index, err := interfaceIndex(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	pfd, err := newPollFD(fd, "tun:"+name)
	if err != nil {
		return nil, err
	}
	t := &TUN{cfg: cfg, fd: pfd, name: name, index: index}
	t.riov[1].Base = &t.overflow[0]
	t.riov[1].SetLen(len(t.overflow))
	t.readFn = t.read
	t.writeFn = t.write
	return t, nil
}

// interfaceIndex asks the kernel for the index of the named interface in
// the calling thread's namespace.
func interfaceIndex(name string) (int, error) {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("packetio: socket: %w", err)
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, fmt.Errorf("packetio: interface %q: %w", name, err)
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("packetio: SIOCGIFINDEX %q: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}

// Name returns the device's interface name.
func (t *TUN) Name() string { return t.name }

// Index returns the device's interface index.
func (t *TUN) Index() int { return t.index }

// ReadBatch implements [Port.ReadBatch]. It may also return a wrapped kernel
// error.
func (t *TUN) ReadBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	if err := checkRead(msgs, t.cfg.Headroom); err != nil {
		return 0, err
	}
	t.readMu.Lock()
	defer t.readMu.Unlock()
	t.rmsgs, t.rn, t.rbytes, t.rtrunc, t.rerr = msgs, 0, 0, 0, nil
	err := t.fd.rc.Read(t.readFn)
	t.rmsgs = nil
	t.rxPackets.Add(uint64(t.rn))
	t.rxBytes.Add(uint64(t.rbytes))
	t.rxTruncated.Add(uint64(t.rtrunc))
	if t.rn > 0 {
		// Packets read before an error are returned; a persistent error
		// shows again on the next call.
		return t.rn, nil
	}
	if err == nil {
		err = t.rerr
	}
	return 0, t.fd.wrap("read", err)
}

// read is the RawConn.Read callback: it reads packets until the batch is
// full or the device is empty, and returns false to wait for readability
// when it has read nothing.
func (t *TUN) read(fd uintptr) bool {
	h := t.cfg.Headroom
	for t.rn < len(t.rmsgs) {
		m := &t.rmsgs[t.rn]
		buf := m.Buf[h:]
		t.riov[0].Base = &buf[0]
		t.riov[0].SetLen(len(buf))
		r, _, e := unix.Syscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&t.riov[0])), 2)
		n := int(r)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return t.rn > 0
		case e != 0:
			t.rerr = e
			return true
		case n > len(buf):
			// The packet spilled into the overflow byte: it was cut.
			t.rtrunc++
			continue
		}
		m.Off, m.N = h, n
		t.rn++
		t.rbytes += n
	}
	return true
}

// WriteBatch implements [Port.WriteBatch]: one write system call per
// packet. It may also return a wrapped kernel error for a packet the
// kernel refuses.
func (t *TUN) WriteBatch(msgs []Message) (int, error) {
	if len(msgs) == 0 {
		return 0, nil
	}
	t.writeMu.Lock()
	defer t.writeMu.Unlock()
	if t.fd.closed.Load() {
		return 0, ErrClosed
	}
	t.wmsgs, t.wn, t.wbytes, t.werr, t.winvalid = msgs, 0, 0, nil, nil
	err := t.fd.rc.Write(t.writeFn)
	t.wmsgs = nil
	t.txPackets.Add(uint64(t.wn))
	t.txBytes.Add(uint64(t.wbytes))
	if err == nil {
		err = t.werr
	}
	if err != nil {
		return t.wn, t.fd.wrap("write", err)
	}
	return t.wn, t.winvalid
}

// write is the RawConn.Write callback.
func (t *TUN) write(fd uintptr) bool {
	for t.wn < len(t.wmsgs) {
		pkt, err := checkWrite(&t.wmsgs[t.wn])
		if err != nil {
			t.winvalid = err
			return true
		}
		_, err = unix.Write(int(fd), pkt)
		switch err {
		case nil:
			t.wn++
			t.wbytes += len(pkt)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			t.werr = err
			return true
		}
	}
	return true
}

// Stats implements [Port.Stats]. A TUN device never drops on the port's
// side: RxDropped and TxDropped stay zero (the kernel counts its own drops
// on the interface).
func (t *TUN) Stats() Stats {
	return Stats{
		RxPackets:   t.rxPackets.Load(),
		RxBytes:     t.rxBytes.Load(),
		TxPackets:   t.txPackets.Load(),
		TxBytes:     t.txBytes.Load(),
		RxTruncated: t.rxTruncated.Load(),
	}
}

// Close implements [Port.Close]. A device the port created disappears.
func (t *TUN) Close() error {
	if err := t.fd.close(); err != nil {
		return fmt.Errorf("packetio: close: %w", err)
	}
	return nil
}

var _ Port = (*TUN)(nil)
