package hashring

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"math/bits"
	"slices"
)

// Table sizes, seed and member limit.
const (
	// DefaultSize is the table size used when Config.Size is 0: the prime
	// 65537, as in the Maglev paper. Keep M >= 100*N for member shares
	// within about 1% of their ideal.
	DefaultSize = 65537
	// MinSize is the smallest accepted table size (a prime).
	MinSize = 251
	// MaxSize is the largest accepted table size (the prime 2^20-3).
	MaxSize = 1048573
	// DefaultSeed is the key hash seed used when Config.Seed is 0: the ASCII
	// bytes "ananta01" read as a big-endian integer.
	DefaultSeed uint64 = 0x616e616e74613031
	// MaxMembers is the largest member set: entries are uint16 indices.
	MaxMembers = 65535
)

// Errors returned by Config.Validate, New and Changed. The returned errors
// carry detail (the size, the member index and key) and match these
// sentinels with errors.Is.
var (
	ErrInvalidSize     = errors.New("hashring: invalid table size")
	ErrEmptyKey        = errors.New("hashring: member has an empty key")
	ErrDuplicateMember = errors.New("hashring: duplicate member key")
	ErrZeroWeight      = errors.New("hashring: member has weight 0")
	ErrTooManyMembers  = errors.New("hashring: too many members")
	ErrSizeMismatch    = errors.New("hashring: tables differ in size")
)

// detailError is an error with its own message that matches a sentinel.
type detailError struct {
	sentinel error
	msg      string
}

func (e *detailError) Error() string { return e.msg }
func (e *detailError) Unwrap() error { return e.sentinel }

func errorf(sentinel error, format string, args ...any) error {
	return &detailError{sentinel: sentinel, msg: "hashring: " + fmt.Sprintf(format, args...)}
}

// Member is one entry of the member set, usually a backend.
type Member struct {
	// Key is the member's stable identity, for example the DIP and port
	// bytes. It decides the member's place in every table, so it must be
	// the same in every process and must not change while the member lives.
	// It must be non-empty and unique within the set.
	Key []byte
	// Weight is the member's relative share of the table; it must be > 0.
	Weight uint32
}

// Config sets the table's size and hash seed. The zero value is valid and
// selects DefaultSize and DefaultSeed.
type Config struct {
	// Size is the number of table entries M: a prime in [MinSize, MaxSize].
	// 0 means DefaultSize.
	Size int
	// Seed selects the key hash; 0 means DefaultSeed. Every process that
	// must agree on the tables must use the same seed.
	Seed uint64
}

// Validate reports whether c is usable. It returns an error matching
// ErrInvalidSize when Size is out of range or not prime.
func (c Config) Validate() error {
	if c.Size == 0 {
		return nil
	}
	if c.Size < MinSize || c.Size > MaxSize {
		return errorf(ErrInvalidSize, "table size %d is out of range [%d, %d]", c.Size, MinSize, MaxSize)
	}
	if !isPrime(c.Size) {
		return errorf(ErrInvalidSize, "table size %d is not prime", c.Size)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Size == 0 {
		c.Size = DefaultSize
	}
	if c.Seed == 0 {
		c.Seed = DefaultSeed
	}
	return c
}

// isPrime reports whether n is prime, by trial division (n <= MaxSize, so at
// most about 500 divisions).
func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	if n%2 == 0 {
		return n == 2
	}
	for d := 3; d*d <= n; d += 2 {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// Table is a Maglev lookup table. It is immutable after New and safe for
// concurrent use.
type Table struct {
	entries []uint16 // member index (input order) per entry; nil without members
	size    int
	keys    [][]byte // member keys in input order, copied
	counts  []int    // entries per member, input order
}

// empty marks an unclaimed entry during the build. It is never a member
// index because there are at most MaxMembers = 0xffff members.
const empty = 0xffff

// scanFactor bounds the work of the simple round scheduler: it is used
// while it checks at most scanFactor members per entry filled on average
// (n*wmax <= scanFactor*sum(w)); beyond that, with strongly skewed weights,
// a heap schedules the turns. Both give the same table.
const scanFactor = 4

// member is a member's build state.
type member struct {
	target uint64 // turns taken * wmax: its next turn comes in the first round i with i*weight >= target
	weight uint64
	pos    uint32 // its next preferred entry, offset + j*skip mod M
	skip   uint32
	index  uint16 // index in the caller's slice
}

// New builds the table of members. The result does not depend on the order
// of members; indices returned by Lookup and Counts refer to members as
// passed. New copies the keys and does not retain members.
//
// An empty member set gives a table whose Lookup returns -1. New returns an
// error matching ErrInvalidSize for a bad cfg.Size, ErrTooManyMembers for
// more than MaxMembers members or more members than table entries,
// ErrEmptyKey, ErrZeroWeight, or ErrDuplicateMember.
func New(members []Member, cfg Config) (*Table, error) {
	return build(members, cfg, schedAuto)
}

// Schedulers of the turns; tests force each one to check they agree.
const (
	schedAuto = iota
	schedScan
	schedHeap
)

func build(members []Member, cfg Config, sched int) (*Table, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	m := cfg.Size
	n := len(members)
	if n > MaxMembers {
		return nil, errorf(ErrTooManyMembers, "%d members exceed the limit of %d", n, MaxMembers)
	}
	if n > m {
		return nil, errorf(ErrTooManyMembers, "%d members exceed the table size %d", n, m)
	}
	keyBytes := 0
	for i, mb := range members {
		if len(mb.Key) == 0 {
			return nil, errorf(ErrEmptyKey, "member %d has an empty key", i)
		}
		if mb.Weight == 0 {
			return nil, errorf(ErrZeroWeight, "member %d (key %s) has weight 0", i, hex.EncodeToString(mb.Key))
		}
		keyBytes += len(mb.Key)
	}

	t := &Table{size: m, keys: make([][]byte, n), counts: make([]int, n)}
	buf := make([]byte, 0, keyBytes)
	for i, mb := range members {
		buf = append(buf, mb.Key...)
		t.keys[i] = buf[len(buf)-len(mb.Key) : len(buf) : len(buf)]
	}
	if n == 0 {
		return t, nil
	}

	// Key order makes the build independent of the input order.
	order := make([]uint16, n)
	for i := range order {
		order[i] = uint16(i)
	}
	slices.SortFunc(order, func(a, b uint16) int { return bytes.Compare(t.keys[a], t.keys[b]) })
	for i := 1; i < n; i++ {
		if bytes.Equal(t.keys[order[i-1]], t.keys[order[i]]) {
			a, b := min(order[i-1], order[i]), max(order[i-1], order[i])
			return nil, errorf(ErrDuplicateMember, "members %d and %d have the same key %s", a, b, hex.EncodeToString(t.keys[a]))
		}
	}

	ms := make([]member, n)
	var wmax, wsum uint64
	for s, i := range order {
		w := uint64(members[i].Weight)
		wmax = max(wmax, w)
		wsum += w
		ms[s] = member{
			weight: w,
			pos:    uint32(hash64(t.keys[i], cfg.Seed) % uint64(m)),
			skip:   uint32(hash64(t.keys[i], cfg.Seed^skipSeedXor)%uint64(m-1) + 1),
			index:  i,
		}
	}

	t.entries = make([]uint16, m)
	for i := range t.entries {
		t.entries[i] = empty
	}
	if sched == schedAuto {
		sched = schedHeap
		if uint64(n)*wmax <= scanFactor*wsum {
			sched = schedScan
		}
	}
	if sched == schedScan {
		t.fillScan(ms, wmax)
	} else {
		t.fillHeap(ms, wmax)
	}
	return t, nil
}

// take gives member mb its next preferred entry that is still empty.
func (t *Table) take(mb *member) {
	e := t.entries
	m := uint32(len(e))
	pos, skip := mb.pos, mb.skip
	for e[pos] != empty {
		pos += skip
		if pos >= m {
			pos -= m
		}
	}
	e[pos] = mb.index
	t.counts[mb.index]++
	pos += skip
	if pos >= m {
		pos -= m
	}
	mb.pos = pos
}

// fillScan fills the table round by round, checking every member in key
// order in each round.
func (t *Table) fillScan(ms []member, wmax uint64) {
	left := len(t.entries)
	for round := uint64(0); ; round++ {
		for s := range ms {
			mb := &ms[s]
			if round*mb.weight < mb.target {
				continue
			}
			mb.target += wmax
			t.take(mb)
			if left--; left == 0 {
				return
			}
		}
	}
}

// fillHeap produces the same table as fillScan, but visits only the members
// that take a turn: a min-heap holds each member's next turn as
// round<<16 | key-order position, so turns come out by round, then key order.
func (t *Table) fillHeap(ms []member, wmax uint64) {
	m := uint64(len(t.entries))
	// Every member takes a turn in round 0: the heap starts sorted.
	h := make([]uint64, len(ms))
	for s := range h {
		h[s] = uint64(s)
	}
	left := m
	for {
		s := h[0] & 0xffff
		mb := &ms[s]
		mb.target += wmax
		t.take(mb)
		if left--; left == 0 {
			return
		}
		// Next round with round*weight >= target. A member of weight wmax
		// takes a turn in every round and fills one entry per round, so
		// the table is full before round m: later turns are dropped.
		next := (mb.target + mb.weight - 1) / mb.weight
		if next < m {
			h[0] = next<<16 | s
		} else {
			last := len(h) - 1
			h[0] = h[last]
			h = h[:last]
		}
		siftDown(h)
	}
}

// siftDown restores the min-heap property of h after h[0] grew.
func siftDown(h []uint64) {
	n := len(h)
	i := 0
	x := h[0]
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if c+1 < n && h[c+1] < h[c] {
			c++
		}
		if x <= h[c] {
			break
		}
		h[i] = h[c]
		i = c
	}
	h[i] = x
}

// Lookup returns the member for a flow: an index into the members slice as
// passed to New, or -1 if the table has no members. It maps flowHash onto
// the entries with the high word of flowHash*Size() (no division), so
// flowHash must be well mixed in its high bits. Lookup does not allocate.
func (t *Table) Lookup(flowHash uint64) int {
	if len(t.entries) == 0 {
		return -1
	}
	i, _ := bits.Mul64(flowHash, uint64(len(t.entries)))
	return int(t.entries[i])
}

// Size returns the number of table entries M.
func (t *Table) Size() int { return t.size }

// Len returns the number of members.
func (t *Table) Len() int { return len(t.keys) }

// Counts returns the number of entries of each member, in the order the
// members were passed to New. The caller owns the returned slice.
func (t *Table) Counts() []int { return slices.Clone(t.counts) }

// Changed returns the number of entries whose member, compared by key,
// differs between a and b: the share of flows a change of member set moves
// is Changed/Size. Entries of a table without members have no member, so
// they differ from every entry of a table with members. a and b must be
// non-nil; Changed returns an error matching ErrSizeMismatch if their sizes
// differ.
func Changed(a, b *Table) (int, error) {
	if a == nil || b == nil {
		return 0, errorf(ErrSizeMismatch, "cannot compare a nil table")
	}
	if a.size != b.size {
		return 0, errorf(ErrSizeMismatch, "cannot compare tables of size %d and %d", a.size, b.size)
	}
	if len(a.entries) == 0 || len(b.entries) == 0 {
		if len(a.entries) == len(b.entries) {
			return 0, nil
		}
		return a.size, nil
	}
	inB := make(map[string]int32, len(b.keys))
	for i, k := range b.keys {
		inB[string(k)] = int32(i)
	}
	// aToB maps a's member indices to b's, or -1 for members not in b.
	aToB := make([]int32, len(a.keys))
	for i, k := range a.keys {
		j, ok := inB[string(k)]
		if !ok {
			j = -1
		}
		aToB[i] = j
	}
	changed := 0
	for i, e := range a.entries {
		if aToB[e] != int32(b.entries[i]) {
			changed++
		}
	}
	return changed, nil
}

// EqualMembers reports whether two member lists are the same, in the same
// order: equal keys and weights. Callers use it to keep a table when a
// configuration change leaves its members as they were.
func EqualMembers(a, b []Member) bool {
	return slices.EqualFunc(a, b, func(x, y Member) bool {
		return x.Weight == y.Weight && string(x.Key) == string(y.Key)
	})
}
