package testutil

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// E2E reports whether ANANTA_E2E=1 is set: skips of privileged tests then
// become failures.
func E2E() bool { return os.Getenv("ANANTA_E2E") == "1" }

// Skip skips the test with reason, or fails it when E2E() is true.
func Skip(tb testing.TB, reason string) {
	tb.Helper()
	if E2E() {
		tb.Fatalf("ANANTA_E2E=1 but this test cannot run: %s", reason)
	}
	tb.Skipf("skipped: %s (set up the machine and run as root; ANANTA_E2E=1 turns this skip into a failure)", reason)
}

// RequirePrivileged skips (or, under ANANTA_E2E=1, fails) the test unless
// it runs as root and every named tool is on PATH. It also skips under
// -short, since privileged tests build namespaces and run real stacks.
func RequirePrivileged(tb testing.TB, tools ...string) {
	tb.Helper()
	if os.Geteuid() != 0 {
		Skip(tb, "needs root (network namespaces, raw sockets)")
	}
	var missing []string
	for _, t := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if len(missing) > 0 {
		Skip(tb, "needs tools not on PATH: "+strings.Join(missing, ", "))
	}
	if testing.Short() && !E2E() {
		tb.Skip("skipped in -short mode: privileged test")
	}
}
