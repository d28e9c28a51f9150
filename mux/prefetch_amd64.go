package mux

import "unsafe"

// prefetch hints the CPU to load the cache line at p (PREFETCHT0). It is
// not a memory access in the Go memory model: it reads nothing and
// cannot fault.
//
//go:noescape
func prefetch(p unsafe.Pointer)
