package fastpath

import (
	"crypto/hmac"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ananta-go/ananta"
)

// Defaults of VerifierConfig.
const (
	DefaultWindow    = 2 * time.Second
	DefaultMaxNonces = 1 << 20
)

// replayBuckets is how many time buckets cover one window.
const replayBuckets = 4

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	// Keyring holds the keys messages may be signed with. Required. Rotate
	// it in place; the Verifier sees the change at once.
	Keyring *Keyring
	// Window is the accepted clock skew: a message whose timestamp is more
	// than Window before or after now is refused. Zero means DefaultWindow.
	Window time.Duration
	// MaxNonces bounds the replay cache. Zero means DefaultMaxNonces. When
	// this many nonces are live the Verifier refuses new messages with
	// ErrReplayCacheFull: the connection then stays on the Muxes, which is
	// slower but correct. A nonce costs a few tens of bytes.
	MaxNonces int
}

// Validate checks the config; errors wrap ananta.ErrInvalidConfig.
func (c VerifierConfig) Validate() error {
	switch {
	case c.Keyring == nil:
		return fmt.Errorf("%w: fastpath: Keyring must be set", ananta.ErrInvalidConfig)
	case c.Window < 0:
		return fmt.Errorf("%w: fastpath: Window must be >= 0, got %v", ananta.ErrInvalidConfig, c.Window)
	case c.MaxNonces < 0:
		return fmt.Errorf("%w: fastpath: MaxNonces must be >= 0, got %d", ananta.ErrInvalidConfig, c.MaxNonces)
	}
	return nil
}

// Stats counts a Verifier's outcomes; every call of Verify adds one to
// exactly one counter.
type Stats struct {
	Accepted   uint64
	Malformed  uint64
	UnknownKey uint64
	BadMAC     uint64
	Stale      uint64
	Future     uint64
	Expired    uint64
	Replay     uint64
	CacheFull  uint64 // refused because the replay cache held MaxNonces
}

// Verifier authenticates redirects and refuses replays. It is safe for
// concurrent use.
type Verifier struct {
	keys      *Keyring
	window    int64 // ns
	width     int64 // ns per bucket
	maxNonces int

	accepted, malformed, unknownKey, badMAC, stale, future, expired, replay, cacheFull atomic.Uint64

	// mu guards buckets and live.
	mu      sync.Mutex
	buckets [2*replayBuckets + 2]bucket
	live    int // nonces in all buckets
}

// bucket holds the nonces of accepted messages whose timestamps fall in
// [idx*width, (idx+1)*width).
type bucket struct {
	idx    int64
	nonces map[[NonceSize]byte]struct{}
}

// NewVerifier returns a Verifier for cfg after validating it.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Window == 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.MaxNonces == 0 {
		cfg.MaxNonces = DefaultMaxNonces
	}
	v := &Verifier{
		keys:      cfg.Keyring,
		window:    int64(cfg.Window),
		width:     max(int64(cfg.Window)/replayBuckets, 1),
		maxNonces: cfg.MaxNonces,
	}
	for i := range v.buckets {
		v.buckets[i].idx = -1
	}
	return v, nil
}

// Verify decodes msg, checks its key ID, MAC, timestamp, expiry and nonce
// against now, and returns the redirect if all pass. Otherwise it returns an
// error wrapping ErrMalformed, ErrUnknownKey, ErrBadMAC, ErrStale,
// ErrFuture, ErrExpired, ErrReplay or ErrReplayCacheFull, and the caller
// drops the message. Every outcome is counted in Stats. Verify does not
// retain msg.
func (v *Verifier) Verify(msg []byte, now time.Time) (Redirect, error) {
	r, err := Decode(msg)
	if err != nil {
		v.malformed.Add(1)
		return Redirect{}, err
	}
	k := v.keys.lookup(r.KeyID)
	if k == nil {
		v.unknownKey.Add(1)
		return Redirect{}, fmt.Errorf("%w: %d", ErrUnknownKey, r.KeyID)
	}
	body := msg[:len(msg)-MACSize]
	var sum [MACSize]byte
	k.mac(body, &sum)
	if !hmac.Equal(sum[:], msg[len(body):]) {
		v.badMAC.Add(1)
		return Redirect{}, ErrBadMAC
	}
	n := now.UnixNano()
	ts := int64(binary.BigEndian.Uint64(msg[8:]))
	exp := int64(binary.BigEndian.Uint64(msg[16:]))
	switch {
	case ts < n-v.window:
		v.stale.Add(1)
		return Redirect{}, ErrStale
	case ts > n+v.window:
		v.future.Add(1)
		return Redirect{}, ErrFuture
	case n >= exp:
		v.expired.Add(1)
		return Redirect{}, ErrExpired
	}
	if err := v.remember(r.Nonce, ts, n); err != nil {
		return Redirect{}, err
	}
	v.accepted.Add(1)
	return r, nil
}

// remember records nonce for a message stamped ts, or reports that it was
// seen. A replayed message carries the same timestamp as the original (the
// MAC covers both), so only ts's bucket needs looking at.
func (v *Verifier) remember(nonce [NonceSize]byte, ts, now int64) error {
	idx := ts / v.width
	v.mu.Lock()
	defer v.mu.Unlock()
	b := &v.buckets[idx%int64(len(v.buckets))]
	if b.idx == idx {
		if _, ok := b.nonces[nonce]; ok {
			v.replay.Add(1)
			return ErrReplay
		}
	}
	if b.idx != idx || v.live >= v.maxNonces {
		// Starting a bucket (at most once per width) or full: forget
		// every bucket that holds only stale timestamps.
		v.expire(now)
	}
	if v.live >= v.maxNonces {
		v.cacheFull.Add(1)
		return ErrReplayCacheFull
	}
	if b.idx != idx {
		// The slot holds another bucket, at least len(buckets) indexes
		// from idx. The timestamps Verify accepts at this now span at
		// most 2*replayBuckets+1 indexes around idx, so that bucket
		// holds nothing that can still pass the time checks (unless
		// the caller's clock has gone back by more than a window). A
		// fresh map returns the old one's memory.
		v.live -= len(b.nonces)
		b.idx, b.nonces = idx, make(map[[NonceSize]byte]struct{})
	}
	b.nonces[nonce] = struct{}{}
	v.live++
	return nil
}

// expire drops the buckets whose every message is now stale.
func (v *Verifier) expire(now int64) {
	oldest := (now - v.window) / v.width // buckets before this one hold only stale timestamps
	for i := range v.buckets {
		b := &v.buckets[i]
		if b.idx >= 0 && b.idx < oldest && b.nonces != nil {
			v.live -= len(b.nonces)
			b.idx, b.nonces = -1, nil
		}
	}
}

// Nonces returns how many nonces the replay cache holds.
func (v *Verifier) Nonces() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.live
}

// Stats returns the counters so far.
func (v *Verifier) Stats() Stats {
	return Stats{
		Accepted:   v.accepted.Load(),
		Malformed:  v.malformed.Load(),
		UnknownKey: v.unknownKey.Load(),
		BadMAC:     v.badMAC.Load(),
		Stale:      v.stale.Load(),
		Future:     v.future.Load(),
		Expired:    v.expired.Load(),
		Replay:     v.replay.Load(),
		CacheFull:  v.cacheFull.Load(),
	}
}
