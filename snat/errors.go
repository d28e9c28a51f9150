package snat

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Errors returned by this package. Returned errors carry detail (the VIP,
// the range, the size) and match these sentinels with errors.Is.
var (
	// ErrInvalidSize: a range size that is not a power of two from
	// MinRangeSize to MaxRangeSize.
	ErrInvalidSize = errors.New("snat: invalid range size")
	// ErrInvalidRange: a port range that is empty, reversed, not aligned
	// to its power-of-two size, or outside FirstSNATPort..LastSNATPort.
	ErrInvalidRange = errors.New("snat: invalid port range")
	// ErrExhausted: no free range of the requested size is left.
	ErrExhausted = errors.New("snat: port space exhausted")
	// ErrNotAllocated: the range is not allocated (or not leased).
	ErrNotAllocated = errors.New("snat: range not allocated")
	// ErrOverlap: the range overlaps an allocated range, or two reserved
	// ranges overlap each other.
	ErrOverlap = errors.New("snat: ranges overlap")
	// ErrReserved: the range covers ports that SNAT must never use
	// (reserved ranges, ports below FirstSNATPort).
	ErrReserved = errors.New("snat: range covers reserved ports")
	// ErrUnknownVIP: the VIP has not been configured.
	ErrUnknownVIP = errors.New("snat: unknown VIP")
	// ErrNotHolder: the lease is held by another DIP.
	ErrNotHolder = errors.New("snat: lease held by another DIP")
	// ErrLimit: the DIP would hold more ports of the VIP than the limit.
	ErrLimit = errors.New("snat: per-DIP port limit reached")
	// ErrInvalidAddr: an address that is not a usable unicast address, or
	// a DIP of another address family than its VIP.
	ErrInvalidAddr = errors.New("snat: invalid address")
	// ErrInvalidTime: a time outside the range of int64 Unix nanoseconds
	// (including the zero time.Time), a TTL out of range, or an expiry that
	// would overflow.
	ErrInvalidTime = errors.New("snat: invalid time or TTL")
	// ErrInvalidConfig: a configuration value out of range.
	ErrInvalidConfig = errors.New("snat: invalid configuration")
	// ErrDuplicate: the same DIP appears twice in one request.
	ErrDuplicate = errors.New("snat: duplicate DIP")
	// ErrInUse: a Pool range still has flows.
	ErrInUse = errors.New("snat: ports in use")
	// ErrBadSnapshot: a snapshot that cannot be decoded or describes an
	// impossible state.
	ErrBadSnapshot = errors.New("snat: bad snapshot")
)

// detailError is an error with its own message that matches a sentinel.
type detailError struct {
	sentinel error
	msg      string
}

func (e *detailError) Error() string { return e.msg }
func (e *detailError) Unwrap() error { return e.sentinel }

func errorf(sentinel error, format string, args ...any) error {
	return &detailError{sentinel: sentinel, msg: "snat: " + fmt.Sprintf(format, args...)}
}

// Bounds of the int64 Unix-nanosecond clock every stored time uses.
var (
	minTime = time.Unix(0, math.MinInt64)
	maxTime = time.Unix(0, math.MaxInt64)
)

// nanos converts t to Unix nanoseconds; false when t is out of range (the
// zero time.Time is).
func nanos(t time.Time) (int64, bool) {
	if t.Before(minTime) || t.After(maxTime) {
		return 0, false
	}
	return t.UnixNano(), true
}

// clampNanos converts t to Unix nanoseconds, saturating out-of-range times.
func clampNanos(t time.Time) int64 {
	if t.Before(minTime) {
		return math.MinInt64
	}
	if t.After(maxTime) {
		return math.MaxInt64
	}
	return t.UnixNano()
}

// timeOf returns the canonical time.Time of Unix nanoseconds ns: UTC, no
// monotonic reading, so that equal instants compare equal with ==.
func timeOf(ns int64) time.Time { return time.Unix(0, ns).UTC() }
