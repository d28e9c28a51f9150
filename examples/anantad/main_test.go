package main

import (
	"os"
	"testing"
)

func mkTemp() (string, error) { return os.MkdirTemp("", "anantad-test-") }

// TestMain removes the binary the process tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}
