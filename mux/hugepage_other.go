//go:build !linux

package mux

import "unsafe"

func adviseHugePages(p unsafe.Pointer, n uintptr) {}
