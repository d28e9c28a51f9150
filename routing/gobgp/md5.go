package gobgp

import (
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// ErrMD5Unsupported: a peer has a Password but the kernel has no TCP MD5
// signature support (CONFIG_TCP_MD5SIG): the session could never come up.
var ErrMD5Unsupported = errors.New("gobgp: TCP MD5 signatures (RFC 2385) not supported by this kernel")

// ErrMD5MPTCP: a peer has a Password and the Speaker listens, but Go makes
// listening sockets Multipath TCP when the kernel has MPTCP (Go >= 1.24),
// and MPTCP sockets refuse TCP MD5 keys, so passive MD5 sessions could
// never come up. Set GODEBUG=multipathtcp=0 in the environment, or put
// `//go:debug multipathtcp=0` in the main package.
var ErrMD5MPTCP = errors.New("gobgp: TCP MD5 needs plain TCP listeners; Go made them MPTCP (set GODEBUG=multipathtcp=0)")

// listenerMD5 checks that a listener made the way GoBGP makes it accepts a
// TCP MD5 key. It listens briefly on an ephemeral loopback port; if
// loopback is unusable it reports nothing.
func listenerMD5() error {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil
	}
	defer l.Close()
	sc, err := l.(*net.TCPListener).SyscallConn()
	if err != nil {
		return nil
	}
	var serr error
	_ = sc.Control(func(fd uintptr) {
		if p, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL); err == nil && p == unix.IPPROTO_MPTCP {
			serr = ErrMD5MPTCP
		}
	})
	return serr
}

// MD5Supported reports whether the kernel accepts TCP MD5 signature keys,
// by setting one on a throwaway socket.
func MD5Supported() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("gobgp: probe TCP MD5: %w", err)
	}
	defer unix.Close(fd)
	sig := unix.TCPMD5Sig{Keylen: 4}
	sig.Addr.Family = unix.AF_INET
	copy(sig.Key[:], "test")
	// 198.18.0.0/15 is the benchmarking range; no packet is sent.
	copy(sig.Addr.Data[2:], []byte{198, 18, 0, 1})
	if err := unix.SetsockoptTCPMD5Sig(fd, unix.IPPROTO_TCP, unix.TCP_MD5SIG, &sig); err != nil {
		if errors.Is(err, unix.ENOPROTOOPT) {
			return ErrMD5Unsupported
		}
		return fmt.Errorf("gobgp: probe TCP MD5: %w", err)
	}
	return nil
}
