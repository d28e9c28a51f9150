package testutil

import (
	"bytes"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// ignoredGoroutines are stack fragments of goroutines that belong to the
// runtime, the testing package or long-lived standard-library workers, not
// to the code under test.
var ignoredGoroutines = []string{
	"created by testing.(*T).Run",      // other tests' runners (t.Parallel)
	"created by testing.runFuzzing",    // fuzzing workers
	"created by testing.(*F).Fuzz",     // fuzzing workers
	"testing.(*M).",                    // the test main
	"runtime.ensureSigM",               // os/signal
	"os/signal.signal_recv",            // os/signal
	"created by runtime.gc",            // GC workers
	"created by time.goFunc",           // timer callbacks in flight
	"created by os/signal.Notify.func", // os/signal
}

// goroutines returns the stacks of all goroutines, keyed by goroutine ID.
func goroutines() map[int]string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	out := make(map[int]string)
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		s := string(g)
		rest, ok := strings.CutPrefix(s, "goroutine ")
		if !ok {
			continue
		}
		id, _, _ := strings.Cut(rest, " ")
		n, err := strconv.Atoi(id)
		if err != nil {
			continue
		}
		out[n] = s
	}
	return out
}

// CheckGoroutines records the goroutines running now and, when the test
// ends, fails it if goroutines started since are still running after a
// grace period of 5 s. Call it first in a test, before starting anything.
// Goroutines of other parallel tests are recognised by their creator and
// ignored.
func CheckGoroutines(tb testing.TB) {
	tb.Helper()
	before := goroutines()
	tb.Cleanup(func() {
		var leaked []string
		deadline := time.Now().Add(5 * time.Second)
		for {
			leaked = leaked[:0]
			for id, stack := range goroutines() {
				if _, old := before[id]; old || ignored(stack) {
					continue
				}
				leaked = append(leaked, stack)
			}
			if len(leaked) == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if len(leaked) > 0 {
			tb.Errorf("%d goroutine(s) leaked:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
	})
}

func ignored(stack string) bool {
	for _, s := range ignoredGoroutines {
		if strings.Contains(stack, s) {
			return true
		}
	}
	return false
}
