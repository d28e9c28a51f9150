package testutil

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ananta-go/ananta/internal/netns"
	"golang.org/x/sys/unix"
)

// nsCounter makes names unique within a process; the process ID makes them
// unique across the test binaries `go test ./...` runs in parallel.
var nsCounter atomic.Uint32

// uniqueSuffix returns a short string unique to this process and call, fit
// for namespace and interface names (interface names are limited to 15
// bytes).
func uniqueSuffix() string {
	return fmt.Sprintf("%x%03x", os.Getpid()&0xffffff, nsCounter.Add(1)&0xfff)
}

// NetNS is a network namespace created for one test.
type NetNS struct {
	// Name is the namespace's name under /var/run/netns.
	Name string
	tb   testing.TB
}

// NewNetNS creates a uniquely named network namespace with loopback up and
// registers its deletion (with every interface and process left in it) on
// tb.Cleanup. The namespace has no route to the machine's network.
func NewNetNS(tb testing.TB) *NetNS {
	tb.Helper()
	name := "ant-" + uniqueSuffix()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		tb.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	ns := &NetNS{Name: name, tb: tb}
	tb.Cleanup(func() { ns.destroy() })
	ns.Run(tb, "ip", "link", "set", "lo", "up")
	return ns
}

// destroy kills every process still inside the namespace, then deletes it.
func (ns *NetNS) destroy() {
	if out, err := exec.Command("ip", "netns", "pids", ns.Name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
				_ = unix.Kill(pid, unix.SIGKILL)
			}
		}
	}
	if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
		ns.tb.Errorf("ip netns del %s: %v: %s", ns.Name, err, out)
	}
}

// Path returns the namespace's bind-mount path.
func (ns *NetNS) Path() string { return "/var/run/netns/" + ns.Name }

// Run runs a command inside the namespace (ip netns exec) with a 30 s
// deadline and fails the test if it fails. It returns the command's stdout.
func (ns *NetNS) Run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := ns.Output(name, args...)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return out
}

// Output runs a command inside the namespace and returns its stdout, or an
// error that carries its stderr.
func (ns *NetNS) Output(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := ns.Command(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("netns %s: %s %s: %w: %s", ns.Name, name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// Command returns an unstarted command that runs inside the namespace.
func (ns *NetNS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Do runs fn on a locked OS thread switched into the namespace. Sockets fn
// creates belong to the namespace and may be used from any goroutine
// afterwards. fn must not start goroutines that expect to be in the
// namespace: they run on other threads.
func (ns *NetNS) Do(fn func() error) error {
	return DoInNetNS(ns.Path(), fn)
}

// DoInNetNS runs fn on a locked OS thread switched into the network
// namespace bound at path (see internal/netns.Do).
func DoInNetNS(path string, fn func() error) error { return netns.Do(path, fn) }

// Veth creates a veth pair with one end in a and the other in b, assigns
// the given addresses (either may be invalid to leave an end unaddressed),
// brings both ends up and returns the interface names. IPv6 duplicate
// address detection is disabled on both ends so addresses are usable at
// once. The interfaces die with their namespaces.
func Veth(tb testing.TB, a, b *NetNS, aAddr, bAddr netip.Prefix) (aIf, bIf string) {
	tb.Helper()
	s := uniqueSuffix()
	aIf, bIf = "va"+s, "vb"+s
	if out, err := exec.Command("ip", "link", "add", aIf, "netns", a.Name, "type", "veth",
		"peer", "name", bIf, "netns", b.Name).CombinedOutput(); err != nil {
		tb.Fatalf("ip link add veth %s/%s: %v: %s", aIf, bIf, err, out)
	}
	for _, e := range []struct {
		ns   *NetNS
		ifc  string
		addr netip.Prefix
	}{{a, aIf, aAddr}, {b, bIf, bAddr}} {
		e.ns.Run(tb, "sysctl", "-qw", "net.ipv6.conf."+e.ifc+".accept_dad=0")
		if e.addr.IsValid() {
			args := []string{"addr", "add", e.addr.String(), "dev", e.ifc}
			if e.addr.Addr().Is6() {
				args = append(args, "nodad")
			}
			e.ns.Run(tb, "ip", args...)
		}
		e.ns.Run(tb, "ip", "link", "set", e.ifc, "up")
	}
	return aIf, bIf
}

// WaitFor polls cond every 10 ms until it returns true or the deadline
// passes, in which case the test fails with msg. It is the way to wait in
// tests: never sleep for a fixed time and hope.
func WaitFor(tb testing.TB, timeout time.Duration, msg string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// MAC returns the hardware address of interface ifname in the namespace,
// failing the test if it has none.
func (ns *NetNS) MAC(tb testing.TB, ifname string) net.HardwareAddr {
	tb.Helper()
	var hw net.HardwareAddr
	if err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err == nil {
			hw = ifi.HardwareAddr
		}
		return err
	}); err != nil {
		tb.Fatalf("netns %s: interface %s: %v", ns.Name, ifname, err)
	}
	return hw
}
