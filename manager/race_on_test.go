//go:build race

package manager_test

// raceEnabled reports whether the race detector is on: it slows the
// process several times, which distorts the timing measurements of the
// fairness test (CPU contention instead of scheduling).
const raceEnabled = true
