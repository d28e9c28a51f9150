package testutil

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	envEchoChild = "ANANTA_TESTUTIL_ECHO_CHILD"
	echoPrefix   = "echo-child: "
)

// TestEchoChild is the child of TestChild, not a test of its own. It
// answers "echo X" with X, "ifaces" with its interfaces' names, "noise X"
// with X outside the protocol, then ok, "exit N" by exiting with N.
func TestEchoChild(t *testing.T) {
	if os.Getenv(envEchoChild) == "" {
		t.Skip("the child of TestChild; runs only as its child")
	}
	fmt.Println(echoPrefix + "ready")
	fmt.Fprintln(os.Stderr, "child stderr")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		switch cmd {
		case "echo":
			fmt.Println(echoPrefix + arg)
		case "ifaces":
			ifs, err := net.Interfaces()
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, i := range ifs {
				names = append(names, i.Name)
			}
			fmt.Println(echoPrefix + strings.Join(names, " "))
		case "noise":
			fmt.Println(arg)
			fmt.Println(echoPrefix + "ok")
		case "exit":
			n, _ := strconv.Atoi(arg)
			os.Exit(n)
		}
	}
}

func startEcho(t *testing.T, ns *NetNS) *Child {
	t.Helper()
	return StartChild(t, ns, ChildOptions{
		Name:   "echo",
		Args:   []string{"-test.run=^TestEchoChild$", "-test.count=1"},
		Env:    []string{envEchoChild + "=1"},
		Prefix: echoPrefix, Setpgid: true, Pdeathsig: syscall.SIGKILL,
	})
}

func TestChild(t *testing.T) {
	RequirePrivileged(t, "ip")
	ns := NewNetNS(t)

	t.Run("answers", func(t *testing.T) {
		c := startEcho(t, ns)
		if got := c.Send(t, "echo hello"); got != "hello" {
			t.Fatalf("echo: %q", got)
		}
		if got := c.Send(t, "ifaces"); got != "lo" {
			t.Fatalf("interfaces in the namespace: %q, want lo", got)
		}
		if got := c.Send(t, "noise outside the protocol"); got != "ok" {
			t.Fatalf("noise: %q", got)
		}
		if got, err := c.Ask(context.Background(), "echo again"); err != nil || got != "again" {
			t.Fatalf("Ask: %q, %v", got, err)
		}
		if out := c.Output(); !strings.Contains(out, "outside the protocol") || !strings.Contains(out, "child stderr") {
			t.Fatalf("output %q lacks the non-protocol stdout line or stderr", out)
		}
		c.Signal(t, syscall.SIGSTOP)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		if got, err := c.Ask(ctx, "echo stopped"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("a stopped child answered: %q, %v", got, err)
		}
		c.Signal(t, syscall.SIGCONT)
		if got := c.Read(t, 10*time.Second); got != "stopped" {
			t.Fatalf("after SIGCONT: %q", got)
		}
	})

	t.Run("exit", func(t *testing.T) {
		c := startEcho(t, nil)
		if got := c.Send(t, "exit 3"); got != "<exited>" {
			t.Fatalf("after exit: %q", got)
		}
		if st := c.Wait(t, 10*time.Second); st.ExitCode() != 3 {
			t.Fatalf("exit status %v, want 3", st)
		}
		select {
		case <-c.Exited():
		default:
			t.Fatal("Exited not closed after Wait")
		}
	})

	t.Run("kill", func(t *testing.T) {
		c := startEcho(t, ns)
		c.Kill(t)
		ws := c.Wait(t, 10*time.Second).Sys().(syscall.WaitStatus)
		if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
			t.Fatalf("status %v, want killed", ws)
		}
		if _, err := c.Ask(context.Background(), "echo dead"); err == nil {
			t.Fatal("Ask to a dead child succeeded")
		}
	})

	// Cleanup kills a child still running and waits for it.
	var pid int
	t.Run("cleanup", func(t *testing.T) {
		pid = startEcho(t, ns).Pid()
	})
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Fatalf("child %d still there after its test's cleanup: %v", pid, err)
	}
}
