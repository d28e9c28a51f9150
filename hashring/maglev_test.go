package hashring

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
)

// key returns a DIP+port style key: 10.a.b.c port 80.
func key(i int) []byte {
	return []byte{10, byte(i >> 16), byte(i >> 8), byte(i), 0, 80}
}

// equalMembers returns n members of weight 1 with keys key(0..n-1).
func equalMembers(n int) []Member {
	ms := make([]Member, n)
	for i := range ms {
		ms[i] = Member{Key: key(i), Weight: 1}
	}
	return ms
}

func mustNew(tb testing.TB, members []Member, cfg Config) *Table {
	tb.Helper()
	t, err := New(members, cfg)
	if err != nil {
		tb.Fatalf("New(%d members, %+v): %v", len(members), cfg, err)
	}
	return t
}

// digest hashes the table as the sequence of member keys per entry, so it
// is independent of the order the members were passed in.
func digest(t *Table) string {
	h := sha256.New()
	var n [2]byte
	for _, e := range t.entries {
		k := t.keys[e]
		binary.LittleEndian.PutUint16(n[:], uint16(len(k)))
		h.Write(n[:])
		h.Write(k)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// entriesDigest hashes the raw entries (input-order indices, little-endian
// uint16), the bytes a data path would load.
func entriesDigest(t *Table) string {
	h := sha256.New()
	b := make([]byte, 2*len(t.entries))
	for i, e := range t.entries {
		binary.LittleEndian.PutUint16(b[2*i:], e)
	}
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

func TestEqualWeightsBalanced(t *testing.T) {
	for _, m := range []int{MinSize, 1009, 4099, DefaultSize, 262139} {
		for _, n := range []int{1, 2, 3, 7, 100, 1000} {
			if n > m {
				continue
			}
			tbl := mustNew(t, equalMembers(n), Config{Size: m})
			lo, hi := m/n, (m+n-1)/n
			sum := 0
			for i, c := range tbl.Counts() {
				sum += c
				if c < lo || c > hi {
					t.Errorf("M=%d N=%d: member %d has %d entries, want %d or %d", m, n, i, c, lo, hi)
				}
			}
			if sum != m {
				t.Errorf("M=%d N=%d: counts sum to %d", m, n, sum)
			}
		}
	}
}

func TestWeightedShares(t *testing.T) {
	for _, m := range []int{1009, DefaultSize, MaxSize} {
		for _, seed := range []uint64{0, 1, 0xdeadbeef} {
			ms := []Member{
				{Key: key(1), Weight: 1},
				{Key: key(2), Weight: 2},
				{Key: key(3), Weight: 3},
			}
			tbl := mustNew(t, ms, Config{Size: m, Seed: seed})
			for i, c := range tbl.Counts() {
				share := float64(c) / float64(m)
				want := float64(ms[i].Weight) / 6
				if math.Abs(share-want) > 0.01 {
					t.Errorf("M=%d seed=%#x: weight %d has share %.4f, want %.4f ± 0.01", m, seed, ms[i].Weight, share, want)
				}
			}
		}
	}
}

// TestWeightedBound checks random weights against the bound that follows
// from turn frequency: a member of weight w gets within N*w/W + 2 entries
// of its ideal M*w/W (each member is at most one turn ahead or behind in
// the last round, which moves the round count by up to N turns).
func TestWeightedBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 20 {
		n := 1 + rng.IntN(300)
		maxW := []uint32{1, 3, 100, 65535, math.MaxUint32}[trial%5]
		ms := equalMembers(n)
		var wsum float64
		for i := range ms {
			ms[i].Weight = 1 + rng.Uint32N(maxW)
			wsum += float64(ms[i].Weight)
		}
		m := DefaultSize
		tbl := mustNew(t, ms, Config{Size: m})
		for i, c := range tbl.Counts() {
			w := float64(ms[i].Weight)
			ideal := float64(m) * w / wsum
			if d := math.Abs(float64(c) - ideal); d > float64(n)*w/wsum+2 || c < 1 {
				t.Errorf("trial %d N=%d: member %d weight %v has %d entries, ideal %.1f", trial, n, i, w, c, ideal)
			}
		}
	}
}

// TestSchedulersAgree checks that the round scan and the heap give the same
// table, for equal, mildly and strongly skewed weights.
func TestSchedulersAgree(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for trial := range 30 {
		n := 1 + rng.IntN(500)
		ms := equalMembers(n)
		for i := range ms {
			switch trial % 3 {
			case 1:
				ms[i].Weight = 1 + rng.Uint32N(10)
			case 2:
				ms[i].Weight = 1 + rng.Uint32N(2)
				if i == 0 {
					ms[i].Weight = 1000
				}
			}
		}
		m := []int{757, 4099, DefaultSize}[trial%3]
		if n > m {
			n = m
			ms = ms[:n]
		}
		scan, err := build(ms, Config{Size: m}, schedScan)
		if err != nil {
			t.Fatal(err)
		}
		heap, err := build(ms, Config{Size: m}, schedHeap)
		if err != nil {
			t.Fatal(err)
		}
		if d1, d2 := entriesDigest(scan), entriesDigest(heap); d1 != d2 {
			ch, _ := Changed(scan, heap)
			t.Errorf("trial %d (N=%d M=%d): scan and heap tables differ in %d entries", trial, n, m, ch)
		}
	}
}

func TestDisruption(t *testing.T) {
	const n = 100
	m := DefaultSize
	ideal := float64(m) / n
	base := mustNew(t, equalMembers(n), Config{})
	var worst, total float64
	runs := 0
	check := func(what string, other *Table) {
		t.Helper()
		ch, err := Changed(base, other)
		if err != nil {
			t.Fatal(err)
		}
		ratio := float64(ch) / ideal
		worst = max(worst, ratio)
		total += ratio
		runs++
		if ratio > 2 {
			t.Errorf("%s: %d entries changed, %.2fx the ideal %.0f (want <= 2x)", what, ch, ratio, ideal)
		}
	}
	for _, r := range []int{0, 1, 17, 42, 50, 99} {
		ms := equalMembers(n)
		ms = append(ms[:r], ms[r+1:]...)
		check(fmt.Sprintf("remove member %d", r), mustNew(t, ms, Config{}))
	}
	for _, a := range []int{n, n + 1, 1000, 123456} {
		ms := append(equalMembers(n), Member{Key: key(a), Weight: 1})
		check(fmt.Sprintf("add member %d", a), mustNew(t, ms, Config{}))
	}
	t.Logf("disruption for one member of %d at M=%d: mean %.3fx, worst %.3fx the ideal M/N=%.0f entries over %d changes",
		n, m, total/float64(runs), worst, ideal, runs)
}

func TestDeterministicUnderShuffle(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	ms := equalMembers(100)
	for i := range ms {
		ms[i].Weight = 1 + rng.Uint32N(5)
	}
	for _, cfg := range []Config{{}, {Size: 1009, Seed: 42}} {
		ref := mustNew(t, ms, cfg)
		want := digest(ref)
		shuffled := append([]Member(nil), ms...)
		for p := range 50 {
			rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			tbl := mustNew(t, shuffled, cfg)
			if got := digest(tbl); got != want {
				t.Fatalf("cfg %+v permutation %d: digest %s, want %s", cfg, p, got, want)
			}
			if ch, _ := Changed(ref, tbl); ch != 0 {
				t.Fatalf("cfg %+v permutation %d: Changed = %d, want 0", cfg, p, ch)
			}
			// Lookup answers in terms of the slice as passed.
			for range 100 {
				h := rng.Uint64()
				if a, b := ms[ref.Lookup(h)].Key, shuffled[tbl.Lookup(h)].Key; string(a) != string(b) {
					t.Fatalf("permutation %d: hash %#x goes to %x, want %x", p, h, b, a)
				}
			}
		}
	}
}

func TestSeedChangesTable(t *testing.T) {
	ms := equalMembers(10)
	a := mustNew(t, ms, Config{})
	b := mustNew(t, ms, Config{Seed: DefaultSeed})
	c := mustNew(t, ms, Config{Seed: 1})
	if digest(a) != digest(b) {
		t.Error("Seed 0 and DefaultSeed give different tables")
	}
	if ch, _ := Changed(a, c); ch < DefaultSize/2 {
		t.Errorf("another seed changed only %d of %d entries", ch, DefaultSize)
	}
}

// Golden values: they pin the hash, the permutation, the turn order and the
// entry layout. They were cross-checked against an independent Python
// transcription of the algorithm as the package comment describes it (all
// values below, the 1000-member skewed table included, matched). If one of these tests fails, the change would make processes
// of different versions pick different backends for the same flow; change
// the values only for a deliberate, documented format change.
func TestGoldenHash(t *testing.T) {
	for _, tc := range []struct {
		key  string
		seed uint64
		want uint64
	}{
		{"", DefaultSeed, 0x025113b1ebe4796c},
		{"a", DefaultSeed, 0xdf917828aab49be0},
		{"\x0a\x00\x00\x01\x00\x50", DefaultSeed, 0x657eb344e17fbb20},
		{"\x0a\x00\x00\x01\x00\x50", DefaultSeed ^ skipSeedXor, 0xdd2c03b786e8bc51},
		{"01234567", DefaultSeed, 0x98b667133ada0310},
		{"012345678", DefaultSeed, 0x76b54ae2df45ceeb},
		{"2001:db8::1 port 443, eighteen+", 1, 0x6798038d63d7d901},
	} {
		if got := hash64([]byte(tc.key), tc.seed); got != tc.want {
			t.Errorf("hash64(%q, %#x) = %#x, want %#x", tc.key, tc.seed, got, tc.want)
		}
	}
}

func TestGoldenTable(t *testing.T) {
	three := func(w1, w2, w3 uint32) []Member {
		return []Member{
			{Key: []byte{10, 0, 0, 1, 0, 80}, Weight: w1},
			{Key: []byte{10, 0, 0, 2, 0, 80}, Weight: w2},
			{Key: []byte{10, 0, 0, 3, 0, 80}, Weight: w3},
		}
	}
	skewed := equalMembers(1000)
	for i := range skewed {
		skewed[i].Weight = uint32(1 + i%3)
	}
	skewed[7].Weight = 5000 // takes the heap path
	for _, tc := range []struct {
		name    string
		members []Member
		cfg     Config
		first   string // first 32 entries, one hex digit per member index
		counts  string
		digest  string // entriesDigest
	}{
		{"equal/M=251", three(1, 1, 1), Config{Size: MinSize},
			"10110000012112001011111001201211", "[84 84 83]",
			"18ec8a7fc45a6671ba281c90e8db3ff7cb7e06489266428ab5d069f72cb16d3d"},
		{"weighted/M=251", three(1, 2, 3), Config{Size: MinSize},
			"22220220012212211011111011201211", "[42 84 125]",
			"96e0320d36326fcae20d3dde7a6de234438d869d12b973cc3178b5606bcb11a9"},
		{"equal/M=65537", three(1, 1, 1), Config{},
			"21220210012012002001201201010020", "[21846 21846 21845]",
			"009ab0ba764a9d106967ad4df0f876ffbc3dc138990e8a3e5e373e0a75c242b7"},
		{"seed/M=1009", three(3, 1, 2), Config{Size: 1009, Seed: 7},
			"01200000000012220022220000020000", "[505 168 336]",
			"bf5245003297684729f0331faa6630d1fc7fb265e576ac5b5905b7f97587e147"},
		{"1000-skewed/M=65537", skewed, Config{},
			"b77747f27777776737777d7e77779777", "[10 19 28 10 19 28 10 46565 28 10 19 28 10 19 28 10 19 28 10",
			"99c7d2d43fa09a364874d93bf5f5a9337178a8008cad27ab1ff8d033085432af"},
		{"1000-equal/M=65537", equalMembers(1000), Config{},
			"bca246f28093946635d0394ed21191b5", "[66 66 66 66 66 66 66 66 66 66 66 66 66 66 66 66 66 66 66 66",
			"416ff7e6cb33f0894eb4b81e85c97b3846aa8bd0d2e03e624783832f6cd7d71a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tbl := mustNew(t, tc.members, tc.cfg)
			var first strings.Builder
			for _, e := range tbl.entries[:32] {
				fmt.Fprintf(&first, "%x", e%16)
			}
			counts := fmt.Sprint(tbl.Counts())
			if len(counts) > 60 {
				counts = counts[:60]
			}
			if got := first.String(); got != tc.first {
				t.Errorf("first entries %q, want %q", got, tc.first)
			}
			if counts != tc.counts {
				t.Errorf("counts %q, want %q", counts, tc.counts)
			}
			if got := entriesDigest(tbl); got != tc.digest {
				t.Errorf("entries digest %s, want %s", got, tc.digest)
			}
		})
	}
}

func TestConfigValidate(t *testing.T) {
	for _, size := range []int{0, MinSize, 257, 1009, DefaultSize, MaxSize} {
		if err := (Config{Size: size}).Validate(); err != nil {
			t.Errorf("size %d: %v", size, err)
		}
	}
	for _, tc := range []struct {
		size int
		msg  string
	}{
		{65536, "hashring: table size 65536 is not prime"},
		{255, "hashring: table size 255 is not prime"},
		{1048569, "hashring: table size 1048569 is not prime"},
		{241, "hashring: table size 241 is out of range [251, 1048573]"},
		{1048583, "hashring: table size 1048583 is out of range [251, 1048573]"},
		{-1, "hashring: table size -1 is out of range [251, 1048573]"},
		{1, "hashring: table size 1 is out of range [251, 1048573]"},
	} {
		err := (Config{Size: tc.size}).Validate()
		if !errors.Is(err, ErrInvalidSize) || err.Error() != tc.msg {
			t.Errorf("size %d: got %v, want %q matching ErrInvalidSize", tc.size, err, tc.msg)
		}
		if _, err := New(equalMembers(3), Config{Size: tc.size}); !errors.Is(err, ErrInvalidSize) {
			t.Errorf("New with size %d: got %v, want ErrInvalidSize", tc.size, err)
		}
	}
}

// TestIsPrime checks the trial division against a sieve, over every size
// Config accepts and a margin around it.
func TestIsPrime(t *testing.T) {
	limit := MaxSize + 100
	composite := make([]bool, limit+1)
	composite[0], composite[1] = true, true
	for i := 2; i*i <= limit; i++ {
		if !composite[i] {
			for j := i * i; j <= limit; j += i {
				composite[j] = true
			}
		}
	}
	for n := 0; n <= limit; n++ {
		if isPrime(n) == composite[n] {
			t.Fatalf("isPrime(%d) = %v", n, isPrime(n))
		}
	}
	for _, n := range []int{MinSize, DefaultSize, MaxSize} {
		if composite[n] {
			t.Errorf("%d is not prime", n)
		}
	}
}

func TestNewErrors(t *testing.T) {
	tooMany := make([]Member, MaxMembers+1)
	for i := range tooMany {
		tooMany[i] = Member{Key: key(i), Weight: 1}
	}
	for _, tc := range []struct {
		name    string
		members []Member
		cfg     Config
		want    error
		msg     string
	}{
		{"duplicate", []Member{{key(1), 1}, {key(2), 1}, {key(1), 2}}, Config{},
			ErrDuplicateMember, "hashring: members 0 and 2 have the same key 0a0000010050"},
		{"empty key", []Member{{key(1), 1}, {[]byte{}, 1}}, Config{},
			ErrEmptyKey, "hashring: member 1 has an empty key"},
		{"nil key", []Member{{nil, 1}}, Config{},
			ErrEmptyKey, "hashring: member 0 has an empty key"},
		{"zero weight", []Member{{key(1), 1}, {key(2), 0}}, Config{},
			ErrZeroWeight, "hashring: member 1 (key 0a0000020050) has weight 0"},
		{"too many", tooMany, Config{Size: MaxSize},
			ErrTooManyMembers, "hashring: 65536 members exceed the limit of 65535"},
		{"more than size", equalMembers(MinSize + 1), Config{Size: MinSize},
			ErrTooManyMembers, "hashring: 252 members exceed the table size 251"},
		{"bad size", equalMembers(1), Config{Size: 1000},
			ErrInvalidSize, "hashring: table size 1000 is not prime"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tbl, err := New(tc.members, tc.cfg)
			if !errors.Is(err, tc.want) || err.Error() != tc.msg {
				t.Errorf("got %v, want %q matching %v", err, tc.msg, tc.want)
			}
			if tbl != nil {
				t.Errorf("got a table with the error")
			}
		})
	}
	// As many members as entries is allowed: one entry each.
	tbl := mustNew(t, equalMembers(MinSize), Config{Size: MinSize})
	for i, c := range tbl.Counts() {
		if c != 1 {
			t.Fatalf("member %d has %d entries, want 1", i, c)
		}
	}
}

func TestChangedErrors(t *testing.T) {
	a := mustNew(t, equalMembers(3), Config{Size: MinSize})
	b := mustNew(t, equalMembers(3), Config{Size: 257})
	if _, err := Changed(a, b); !errors.Is(err, ErrSizeMismatch) {
		t.Errorf("Changed of sizes 251 and 257: got %v, want ErrSizeMismatch", err)
	}
}

func TestEmptyTable(t *testing.T) {
	for _, members := range [][]Member{nil, {}} {
		tbl := mustNew(t, members, Config{})
		if got := tbl.Lookup(12345); got != -1 {
			t.Errorf("Lookup = %d, want -1", got)
		}
		if tbl.Len() != 0 || tbl.Size() != DefaultSize || len(tbl.Counts()) != 0 {
			t.Errorf("Len %d, Size %d, Counts %v", tbl.Len(), tbl.Size(), tbl.Counts())
		}
		full := mustNew(t, equalMembers(2), Config{})
		if ch, err := Changed(tbl, tbl); ch != 0 || err != nil {
			t.Errorf("Changed(empty, empty) = %d, %v", ch, err)
		}
		if ch, err := Changed(tbl, full); ch != DefaultSize || err != nil {
			t.Errorf("Changed(empty, full) = %d, %v", ch, err)
		}
		if ch, err := Changed(full, tbl); ch != DefaultSize || err != nil {
			t.Errorf("Changed(full, empty) = %d, %v", ch, err)
		}
	}
}

func TestLookupHitsEveryMember(t *testing.T) {
	const n = 1000
	tbl := mustNew(t, equalMembers(n), Config{})
	if tbl.Len() != n || tbl.Size() != DefaultSize {
		t.Fatalf("Len %d, Size %d", tbl.Len(), tbl.Size())
	}
	hits := make([]int, n)
	rng := rand.New(rand.NewPCG(7, 8))
	const lookups = 1 << 20
	for range lookups {
		hits[tbl.Lookup(rng.Uint64())]++
	}
	want := float64(lookups) / n
	for i, h := range hits {
		// Each member owns 65 or 66 of 65537 entries; allow wide sampling noise.
		if float64(h) < want*0.8 || float64(h) > want*1.2 {
			t.Errorf("member %d got %d of %d lookups, want about %.0f", i, h, lookups, want)
		}
	}
}

// TestLookupMapping checks the documented mapping: entry i serves the
// hashes h with floor(h*M / 2^64) = i, the smallest being ceil(i*2^64/M).
func TestLookupMapping(t *testing.T) {
	tbl := mustNew(t, equalMembers(7), Config{Size: 1009})
	m := uint64(tbl.Size())
	for i := range m {
		q, r := bits.Div64(i, 0, m)
		if r != 0 {
			q++
		}
		if got, want := tbl.Lookup(q), int(tbl.entries[i]); got != want {
			t.Fatalf("Lookup(%#x) = %d, want entry %d = %d", q, got, i, want)
		}
		if q > 0 && i > 0 {
			if got, want := tbl.Lookup(q-1), int(tbl.entries[i-1]); got != want {
				t.Fatalf("Lookup(%#x) = %d, want entry %d = %d", q-1, got, i-1, want)
			}
		}
	}
	if got, want := tbl.Lookup(math.MaxUint64), int(tbl.entries[m-1]); got != want {
		t.Fatalf("Lookup(max) = %d, want last entry %d", got, want)
	}
}

func TestLookupAllocs(t *testing.T) {
	tbl := mustNew(t, equalMembers(100), Config{})
	h := uint64(0x9e3779b97f4a7c15)
	if a := testing.AllocsPerRun(1000, func() {
		h = h*6364136223846793005 + 1442695040888963407
		_ = tbl.Lookup(h)
	}); a != 0 {
		t.Errorf("Lookup allocates %v times per call", a)
	}
}

func TestNewDoesNotRetain(t *testing.T) {
	ms := equalMembers(10)
	tbl := mustNew(t, ms, Config{Size: 1009})
	want := digest(tbl)
	for i := range ms {
		ms[i].Key[0] = 0xff
		ms[i].Weight = 7
	}
	ms[0] = Member{Key: []byte("x"), Weight: 1}
	if got := digest(tbl); got != want {
		t.Error("changing the caller's members changed the table")
	}
	counts := tbl.Counts()
	counts[0] = -1
	if tbl.Counts()[0] == -1 {
		t.Error("Counts returned the table's own slice")
	}
}

func TestConcurrentLookup(t *testing.T) {
	tbl := mustNew(t, equalMembers(50), Config{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			for range 10000 {
				if i := tbl.Lookup(rng.Uint64()); i < 0 || i >= 50 {
					t.Errorf("Lookup = %d", i)
					return
				}
			}
		})
	}
	wg.Wait()
}

func TestEqualMembers(t *testing.T) {
	a := []Member{{Key: []byte("a"), Weight: 1}, {Key: []byte("b"), Weight: 2}}
	if !EqualMembers(a, []Member{{Key: []byte("a"), Weight: 1}, {Key: []byte("b"), Weight: 2}}) {
		t.Error("equal lists reported different")
	}
	for _, b := range [][]Member{
		{{Key: []byte("a"), Weight: 1}},
		{{Key: []byte("a"), Weight: 1}, {Key: []byte("b"), Weight: 3}},
		{{Key: []byte("a"), Weight: 1}, {Key: []byte("c"), Weight: 2}},
		{{Key: []byte("b"), Weight: 2}, {Key: []byte("a"), Weight: 1}},
	} {
		if EqualMembers(a, b) {
			t.Errorf("EqualMembers(%v, %v) = true", a, b)
		}
	}
}
