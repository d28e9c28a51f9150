package testutil

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ChildOptions says how StartChild runs the test binary as a child.
type ChildOptions struct {
	// Name names the child in failure messages; default "child@NS".
	Name string
	// Args are the test binary's arguments; default "-test.run=^$" (no
	// test: the child's code runs from TestMain).
	Args []string
	// Env is added to the parent's environment.
	Env []string
	// Prefix, if set, marks the protocol lines on the child's stdout (the
	// testing package writes there too): only lines that start with it are
	// answers, without it; the others go to Output. Empty: every line is
	// an answer.
	Prefix string
	// Ready is the first answer the child gives once it is ready; default
	// "ready". ReadyTimeout bounds the wait for it; default 20 s.
	Ready        string
	ReadyTimeout time.Duration
	// Timeout bounds the wait for Send's answer; default 10 s.
	Timeout time.Duration
	// Setpgid puts the child in a process group of its own: Kill and the
	// cleanup kill the whole group. (`ip netns exec` execs the command, so
	// the command keeps the group and the parent-death signal.)
	Setpgid bool
	// Pdeathsig, if not 0, is the signal the child gets when the parent
	// dies.
	Pdeathsig syscall.Signal
}

// Child is a child process started by StartChild: the test binary,
// re-executed inside a network namespace, that answers lines on its stdin
// with lines on its stdout.
type Child struct {
	name    string
	timeout time.Duration
	pid     int
	pgid    bool
	stdin   io.WriteCloser
	lines   chan string
	exited  chan struct{}
	state   *os.ProcessState // set before exited closes
	output  lockedBuilder    // stderr and non-protocol stdout
}

type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(b)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// StartChild re-executes the test binary under `ip netns exec` in ns (or
// directly if ns is nil) and waits until it answers the ready line. On
// tb.Cleanup the child (its group, with Setpgid) is killed if still
// running and waited for; if the test failed its output is logged.
func StartChild(tb testing.TB, ns *NetNS, opts ChildOptions) *Child {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	args := opts.Args
	if args == nil {
		args = []string{"-test.run=^$"}
	}
	where := "host"
	var cmd *exec.Cmd
	if ns != nil {
		where = ns.Name
		cmd = ns.Command(context.Background(), exe, args...)
	} else {
		cmd = exec.Command(exe, args...)
	}
	c := &Child{name: opts.Name, timeout: opts.Timeout, pgid: opts.Setpgid, lines: make(chan string, 16), exited: make(chan struct{})}
	if c.name == "" {
		c.name = "child@" + where
	}
	if c.timeout == 0 {
		c.timeout = 10 * time.Second
	}
	ready, readyTimeout := opts.Ready, opts.ReadyTimeout
	if ready == "" {
		ready = "ready"
	}
	if readyTimeout == 0 {
		readyTimeout = 20 * time.Second
	}
	cmd.Env = append(os.Environ(), opts.Env...)
	if opts.Setpgid || opts.Pdeathsig != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: opts.Setpgid, Pdeathsig: opts.Pdeathsig}
	}
	cmd.Stderr = &c.output
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	c.pid = cmd.Process.Pid
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), opts.Prefix); ok {
				c.lines <- l
			} else {
				fmt.Fprintln(&c.output, sc.Text())
			}
		}
		close(c.lines)
		_ = cmd.Wait()
		c.state = cmd.ProcessState
		close(c.exited)
	}()
	tb.Cleanup(func() {
		select {
		case <-c.exited:
		default:
			_ = c.kill(syscall.SIGCONT) // a stopped child dies at once
			_ = c.kill(syscall.SIGKILL)
		}
		_ = c.stdin.Close()
		select {
		case <-c.exited:
		case <-time.After(10 * time.Second):
			tb.Errorf("%s: child %d did not exit", c.name, c.pid)
		}
		if tb.Failed() {
			tb.Logf("%s output:\n%s", c.name, c.Output())
		}
	})
	if got := c.Read(tb, readyTimeout); got != ready {
		tb.Fatalf("%s: start: %q; output:\n%s", c.name, got, c.Output())
	}
	return c
}

// Output returns what the child wrote to stderr, and to stdout outside
// the protocol, so far.
func (c *Child) Output() string {
	return c.output.String()
}

// Name returns the child's name in messages.
func (c *Child) Name() string { return c.name }

// Pid returns the child's process ID.
func (c *Child) Pid() int { return c.pid }

// Exited is closed when the child has exited.
func (c *Child) Exited() <-chan struct{} { return c.exited }

// Read returns the child's next answer, or "<exited>" once it has exited.
// The test fails if none comes within timeout.
func (c *Child) Read(tb testing.TB, timeout time.Duration) string {
	tb.Helper()
	select {
	case l, ok := <-c.lines:
		if !ok {
			return "<exited>"
		}
		return l
	case <-time.After(timeout):
		tb.Fatalf("%s: no answer within %s; output:\n%s", c.name, timeout, c.Output())
		return ""
	}
}

// Send writes one line to the child's stdin and returns its answer (see
// Read; ChildOptions.Timeout).
func (c *Child) Send(tb testing.TB, line string) string {
	tb.Helper()
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		tb.Fatalf("%s: send %q: %v", c.name, line, err)
	}
	return c.Read(tb, c.timeout)
}

// Ask is Send without failing the test: it returns an error if the write
// fails, the child exits or ctx ends first. It may be called from any
// goroutine, but one exchange at a time.
func (c *Child) Ask(ctx context.Context, line string) (string, error) {
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		return "", err
	}
	select {
	case l, ok := <-c.lines:
		if !ok {
			return "", fmt.Errorf("%s exited", c.name)
		}
		return l, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// Signal sends sig to the child process (SIGSTOP freezes it without
// closing its sockets: its peers see silence, as from a hung machine).
func (c *Child) Signal(tb testing.TB, sig syscall.Signal) {
	tb.Helper()
	if err := syscall.Kill(c.pid, sig); err != nil {
		tb.Fatalf("%s: kill %v: %v", c.name, sig, err)
	}
}

// Kill sends SIGKILL to the child, to its whole group with Setpgid: it
// dies at once and the kernel closes its sockets.
func (c *Child) Kill(tb testing.TB) {
	tb.Helper()
	if err := c.kill(syscall.SIGKILL); err != nil {
		tb.Fatalf("%s: kill -9 %d: %v", c.name, c.pid, err)
	}
}

func (c *Child) kill(sig syscall.Signal) error {
	if c.pgid {
		return syscall.Kill(-c.pid, sig)
	}
	return syscall.Kill(c.pid, sig)
}

// Wait waits for the child to exit and returns its state; the test fails
// if it has not exited within timeout.
func (c *Child) Wait(tb testing.TB, timeout time.Duration) *os.ProcessState {
	tb.Helper()
	select {
	case <-c.exited:
	case <-time.After(timeout):
		tb.Fatalf("%s: child %d did not exit", c.name, c.pid)
	}
	return c.state
}
