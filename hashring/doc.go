// Package hashring builds Maglev lookup tables: the consistent hash a Mux
// uses to pick a backend (DIP) for a new flow, after Eisenbud et al.,
// "Maglev: A Fast and Reliable Software Network Load Balancer" (NSDI 2016),
// section 3.4, extended with weights.
//
// Build a Table with New from the usable backends, each a Member with a
// stable Key (for example the DIP and port bytes) and a Weight, and pick a
// backend for a flow with Table.Lookup. Build a new table when the set
// changes; Changed tells how many entries moved.
//
// # Algorithm
//
// A table has M entries, M prime (DefaultSize = 65537; any prime in
// [MinSize, MaxSize] is accepted). Each member derives a permutation of
// 0..M-1 from its key: offset = h1 % M, skip = h2 % (M-1) + 1, and its j-th
// preferred entry is (offset + j*skip) % M; because M is prime and
// 0 < skip < M, this visits every entry exactly once. Members take turns;
// in its turn a member claims its most preferred entry that is still
// unclaimed, until all M entries are claimed. A flow goes to the member
// that owns the entry its hash maps to. Adding or removing one of N members
// moves the M/N entries that must move plus some collateral change; this
// package's tests measure about 1.5*M/N in all for N = 100.
//
// # Weights
//
// Weights use "turn frequency": Envoy's weighted Maglev, in integers
// (Cilium derives its own variant from it). The build runs in rounds
// 0, 1, 2, ...; within a round members take turns in key order. A member
// of weight w that has had k turns takes one in round i if i*w >= k*wmax,
// where wmax is the largest weight of the set. So every member takes a turn
// in round 0 (each gets at least one entry), a member of weight wmax takes
// one in every round and one of weight wmax/3 in every third round: entries
// are shared in proportion to weight, within about N*w/W + 2 entries of
// M*w/W for weight w out of a total W. With equal weights this is the
// paper's round robin and every member gets floor(M/N) or ceil(M/N)
// entries. Weight 0 is an error: leave unusable backends out of the member
// set instead.
//
// # Determinism
//
// A table depends only on the set of (key, weight) pairs, the size and the
// seed: not on the order of the members passed to New, nor on the process,
// machine or Go version. New sorts members by key bytes before building,
// and hashes keys with a 64-bit hash defined here, with no external
// dependency: h = seed + len(key)*0x9e3779b97f4a7c15; for each little-endian
// 64-bit word w of the key (the last one zero-padded), h = mix(h ^ w);
// the result is mix(h), where mix is the splitmix64 finalizer. h1 hashes
// with the seed and h2 with seed^0xc2b2ae3d27d4eb4f, the two independent
// hashes the paper asks for. So every Mux given the same backends sends a
// flow to the same backend. Golden tests pin the hash and whole tables:
// a change that would split a fleet running mixed versions fails them.
//
// # Seed
//
// Config.Seed selects the hash function; 0 means DefaultSeed (so the seed 0
// itself cannot be chosen). A deployment may set its own seed so that its
// tables cannot be predicted from public backend addresses; every Mux of the
// deployment must then use the same seed.
//
// # Lookup
//
// Lookup maps a 64-bit flow hash onto [0, M) without division: it takes the
// high word of the 128-bit product flowHash*M (bits.Mul64), that is
// floor(flowHash*M / 2^64). This uses the high bits of the hash, so
// flowHash must be well mixed over all 64 bits (a good hash of the
// 5-tuple, not a raw port or counter). Tables are immutable after New;
// Lookup is O(1), allocation-free and safe for concurrent use. Entries are
// stored as []uint16 member indices (128 KiB at the default size), hence
// the limit of MaxMembers members.
//
// # Cost
//
// A build makes about M*ln(M) probes into the table whatever the number of
// members, so it costs about the same for 10 or 1000 members: about 1.5 ms
// at the default size on a current x86 core (docs/benchmarks.md), 30 ms at
// MaxSize. Strongly skewed weights are scheduled with a heap rather than by
// scanning every member in every round, which bounds the cost for any
// weights to about M*log2(N) steps more.
package hashring
