package consensustest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync/atomic"

	"github.com/ananta-go/ananta/consensus"
)

// ErrNotFound is the error KV's Get query returns for a missing key.
var ErrNotFound = errors.New("consensustest: key not found")

// Stats counts what the KV state machines of one factory did. All fields
// are updated atomically; read them with Load.
type Stats struct {
	// Created counts state machines the factory made.
	Created atomic.Int64
	// Applied counts commands applied (accepted or rejected).
	Applied atomic.Int64
	// Rejected counts commands Apply rejected.
	Rejected atomic.Int64
	// Saves and Restores count Save and Restore calls.
	Saves, Restores atomic.Int64
	// Violations counts breaches of the calling rules of
	// consensus.StateMachine seen by the state machines: Apply or Restore
	// running at the same time as any other call.
	Violations atomic.Int64
}

// NewFactory returns a factory of KV state machines that all count into
// the returned Stats.
func NewFactory() (consensus.Factory, *Stats) {
	st := new(Stats)
	return func(shard uint64) consensus.StateMachine {
		st.Created.Add(1)
		return &KV{shard: shard, stats: st, data: make(map[string]string), seen: make(map[uint64]uint64)}
	}, st
}

// KV is a small deterministic state machine for tests of consensus
// implementations: a string map, a log of sequence numbers with how often
// each was applied (to prove exactly-once application), and commands that
// the state machine rejects on purpose. Build commands and queries with
// Set, Seq, Reject, Get, Seqs, Dump and Count.
//
// It checks the locking rules of consensus.StateMachine and counts
// breaches in Stats.Violations.
type KV struct {
	shard uint64
	stats *Stats
	// guard is 0 when idle, -1 during Apply/Restore, the number of
	// running Query/Save calls otherwise.
	guard atomic.Int64

	data    map[string]string
	seqs    []uint64          // sequence numbers in the order applied
	seen    map[uint64]uint64 // sequence number -> times applied
	applied uint64            // commands accepted
}

const (
	opSet    = 's'
	opSeq    = 'n'
	opReject = 'r'

	qGet   = 'g'
	qSeqs  = 'q'
	qDump  = 'd'
	qCount = 'c'
)

// Set is a command that sets key to value; its result is the previous
// value (empty if none).
func Set(key, value string) []byte {
	b := []byte{opSet}
	b = binary.AppendUvarint(b, uint64(len(key)))
	return append(append(b, key...), value...)
}

// Seq is a command that records sequence number n; its result is how many
// times n has now been applied, as 8 bytes big-endian (1 the first time).
func Seq(n uint64) []byte { return binary.BigEndian.AppendUint64([]byte{opSeq}, n) }

// Reject is a command that KV rejects with an error whose text is msg.
func Reject(msg string) []byte { return append([]byte{opReject}, msg...) }

// Get is a query for the value of key; it fails with ErrNotFound.
func Get(key string) []byte { return append([]byte{qGet}, key...) }

// Seqs is a query for the applied sequence numbers; decode with
// DecodeSeqs.
func Seqs() []byte { return []byte{qSeqs} }

// Dump is a query for the whole state, canonically encoded: two replicas
// are in the same state exactly when their dumps are equal.
func Dump() []byte { return []byte{qDump} }

// Count is a query for the number of commands accepted, as 8 bytes
// big-endian.
func Count() []byte { return []byte{qCount} }

// DecodeSeqs decodes the answer to a Seqs query.
func DecodeSeqs(b []byte) ([]uint64, error) {
	var out []uint64
	for len(b) > 0 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			return nil, errors.New("consensustest: bad seqs encoding")
		}
		out = append(out, v)
		b = b[n:]
	}
	return out, nil
}

// Uint64 decodes an 8-byte big-endian result (Seq, Count); it returns 0 for
// anything else.
func Uint64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func (kv *KV) enterWrite() {
	if !kv.guard.CompareAndSwap(0, -1) {
		kv.stats.Violations.Add(1)
	}
}

func (kv *KV) exitWrite() { kv.guard.CompareAndSwap(-1, 0) }

func (kv *KV) enterRead() {
	for {
		v := kv.guard.Load()
		if v < 0 {
			kv.stats.Violations.Add(1)
			return
		}
		if kv.guard.CompareAndSwap(v, v+1) {
			return
		}
	}
}

func (kv *KV) exitRead() {
	for {
		v := kv.guard.Load()
		if v <= 0 || kv.guard.CompareAndSwap(v, v-1) {
			return
		}
	}
}

// Apply implements consensus.StateMachine. An empty command is accepted and
// changes nothing but the count.
func (kv *KV) Apply(cmd []byte) ([]byte, error) {
	kv.enterWrite()
	defer kv.exitWrite()
	kv.stats.Applied.Add(1)
	if len(cmd) == 0 {
		kv.applied++
		return nil, nil
	}
	switch cmd[0] {
	case opSet:
		klen, n := binary.Uvarint(cmd[1:])
		if n <= 0 || uint64(len(cmd)-1-n) < klen {
			kv.stats.Rejected.Add(1)
			return nil, errors.New("bad set command")
		}
		rest := cmd[1+n:]
		key, value := string(rest[:klen]), string(rest[klen:])
		prev := kv.data[key]
		kv.data[key] = value
		kv.applied++
		return []byte(prev), nil
	case opSeq:
		if len(cmd) != 9 {
			kv.stats.Rejected.Add(1)
			return nil, errors.New("bad seq command")
		}
		s := binary.BigEndian.Uint64(cmd[1:])
		kv.seqs = append(kv.seqs, s)
		kv.seen[s]++
		kv.applied++
		return binary.BigEndian.AppendUint64(nil, kv.seen[s]), nil
	case opReject:
		kv.stats.Rejected.Add(1)
		return nil, errors.New(string(cmd[1:]))
	default:
		kv.stats.Rejected.Add(1)
		return nil, fmt.Errorf("unknown command %q", cmd[0])
	}
}

// Query implements consensus.StateMachine.
func (kv *KV) Query(q []byte) ([]byte, error) {
	kv.enterRead()
	defer kv.exitRead()
	if len(q) == 0 {
		return nil, errors.New("empty query")
	}
	switch q[0] {
	case qGet:
		v, ok := kv.data[string(q[1:])]
		if !ok {
			return nil, fmt.Errorf("%w: %q", ErrNotFound, q[1:])
		}
		return []byte(v), nil
	case qSeqs:
		var b []byte
		for _, s := range kv.seqs {
			b = binary.AppendUvarint(b, s)
		}
		return b, nil
	case qDump:
		return kv.dump(), nil
	case qCount:
		return binary.BigEndian.AppendUint64(nil, kv.applied), nil
	default:
		return nil, fmt.Errorf("unknown query %q", q[0])
	}
}

// dump encodes the whole state canonically: shard, applied, sorted
// key/value pairs, the sequence log (the seen counts follow from it).
func (kv *KV) dump() []byte {
	b := binary.AppendUvarint(nil, kv.shard)
	b = binary.AppendUvarint(b, kv.applied)
	keys := make([]string, 0, len(kv.data))
	for k := range kv.data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = binary.AppendUvarint(b, uint64(len(k)))
		b = append(b, k...)
		b = binary.AppendUvarint(b, uint64(len(kv.data[k])))
		b = append(b, kv.data[k]...)
	}
	b = binary.AppendUvarint(b, uint64(len(kv.seqs)))
	for _, s := range kv.seqs {
		b = binary.AppendUvarint(b, s)
	}
	return b
}

// Save implements consensus.StateMachine: it writes the dump.
func (kv *KV) Save(w io.Writer) error {
	kv.enterRead()
	defer kv.exitRead()
	kv.stats.Saves.Add(1)
	_, err := w.Write(kv.dump())
	return err
}

// Restore implements consensus.StateMachine.
func (kv *KV) Restore(r io.Reader) error {
	kv.enterWrite()
	defer kv.exitWrite()
	kv.stats.Restores.Add(1)
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	bad := errors.New("consensustest: bad KV snapshot")
	b := bytes.NewReader(raw)
	uv := func() uint64 {
		v, e := binary.ReadUvarint(b)
		if e != nil && err == nil {
			err = bad
		}
		return v
	}
	str := func() string {
		n := uv()
		if n > uint64(b.Len()) {
			err = bad
			return ""
		}
		s := make([]byte, n)
		b.Read(s)
		return string(s)
	}
	shard, applied := uv(), uv()
	data := make(map[string]string)
	for n := uv(); n > 0 && err == nil; n-- {
		k := str()
		data[k] = str()
	}
	var seqs []uint64
	seen := make(map[uint64]uint64)
	for n := uv(); n > 0 && err == nil; n-- {
		s := uv()
		seqs = append(seqs, s)
		seen[s]++
	}
	if err != nil {
		return err
	}
	if shard != kv.shard {
		return fmt.Errorf("consensustest: snapshot of shard %d restored into shard %d", shard, kv.shard)
	}
	kv.applied, kv.data, kv.seqs, kv.seen = applied, data, seqs, seen
	return nil
}
