// Package testutil holds test helpers shared by the project's packages: a
// gate for privileged tests (root, tools), network namespaces and veth pairs
// that always clean up, and a goroutine-leak check.
//
// Privileged tests call RequirePrivileged first. Without root or a named
// tool they are skipped with the reason, unless the environment sets
// ANANTA_E2E=1 (as CI does), in which case they fail: CI must never pass by
// skipping.
package testutil
