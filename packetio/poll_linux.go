package packetio

import (
	"fmt"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// pollFD wraps a non-blocking file descriptor in an *os.File so that reads
// and writes wait in the Go runtime's netpoller, and Close wakes them up.
type pollFD struct {
	f      *os.File
	rc     syscall.RawConn
	closed atomic.Bool
}

// newPollFD takes ownership of fd, which must be non-blocking; on error fd
// is closed.
func newPollFD(fd int, name string) (*pollFD, error) {
	f := os.NewFile(uintptr(fd), name)
	if f == nil {
		unix.Close(fd)
		return nil, fmt.Errorf("packetio: invalid file descriptor %d", fd)
	}
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("packetio: %s: %w", name, err)
	}
	return &pollFD{f: f, rc: rc}, nil
}

// close closes the file once; it unblocks pending reads and writes.
func (p *pollFD) close() error {
	if p.closed.Swap(true) {
		return nil
	}
	return p.f.Close()
}

// wrap turns an error from the file into ErrClosed if the port was closed,
// and otherwise tags it with op.
func (p *pollFD) wrap(op string, err error) error {
	if p.closed.Load() {
		return ErrClosed
	}
	if err == unix.EMSGSIZE {
		return fmt.Errorf("packetio: %s: %w: %w", op, ErrTooBig, err)
	}
	return fmt.Errorf("packetio: %s: %w", op, err)
}
