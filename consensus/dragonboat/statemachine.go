package dragonboat

import (
	"errors"
	"fmt"
	"io"

	"github.com/ananta-go/ananta/consensus"
	sm "github.com/lni/dragonboat/v4/statemachine"
)

// Result.Value of an applied command: accepted (Data is Apply's result) or
// rejected (Data is the text of Apply's error).
const (
	resultAccepted uint64 = 1
	resultRejected uint64 = 2
)

// adapter runs a consensus.StateMachine as a Dragonboat sm.IStateMachine.
// Dragonboat holds its own lock for writing around Update and
// RecoverFromSnapshot and for reading around Lookup and SaveSnapshot, which
// is exactly the calling rules of consensus.StateMachine.
type adapter struct {
	shard uint64
	sm    consensus.StateMachine
}

var _ sm.IStateMachine = (*adapter)(nil)

// Update applies one entry. A rejection is a result: the error's text goes
// back to the proposer and the replica carries on.
func (a *adapter) Update(e sm.Entry) (sm.Result, error) {
	res, err := a.sm.Apply(e.Cmd)
	if err != nil {
		return sm.Result{Value: resultRejected, Data: []byte(err.Error())}, nil
	}
	return sm.Result{Value: resultAccepted, Data: res}, nil
}

// queryError carries Query's error out of Lookup, to tell it from
// Dragonboat's own errors.
type queryError struct{ err error }

func (e *queryError) Error() string { return e.err.Error() }

func (a *adapter) Lookup(q any) (any, error) {
	b, ok := q.([]byte)
	if !ok {
		return nil, fmt.Errorf("dragonboat: query of type %T, want []byte", q)
	}
	res, err := a.sm.Query(b)
	if err != nil {
		return nil, &queryError{err}
	}
	return res, nil
}

func (a *adapter) SaveSnapshot(w io.Writer, _ sm.ISnapshotFileCollection, _ <-chan struct{}) error {
	if err := a.sm.Save(w); err != nil {
		return fmt.Errorf("dragonboat: shard %d: save: %w", a.shard, err)
	}
	return nil
}

func (a *adapter) RecoverFromSnapshot(r io.Reader, _ []sm.SnapshotFile, _ <-chan struct{}) error {
	if err := a.sm.Restore(r); err != nil {
		return fmt.Errorf("dragonboat: shard %d: restore: %w", a.shard, err)
	}
	return nil
}

func (a *adapter) Close() error {
	if c, ok := a.sm.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// decodeResult turns the Result of a completed proposal into what Propose
// returns.
func decodeResult(shard uint64, r sm.Result) ([]byte, error) {
	switch r.Value {
	case resultAccepted:
		return r.Data, nil
	case resultRejected:
		return nil, &consensus.RejectedError{Shard: shard, Msg: string(r.Data)}
	default:
		return nil, fmt.Errorf("dragonboat: shard %d: unexpected result code %d", shard, r.Value)
	}
}

// decodeQuery turns what Lookup returned into what Read returns.
func decodeQuery(shard uint64, v any, err error) ([]byte, error) {
	var qe *queryError
	if errors.As(err, &qe) {
		return nil, &consensus.RejectedError{Shard: shard, Msg: qe.err.Error(), Err: qe.err}
	}
	if err != nil {
		return nil, err
	}
	b, _ := v.([]byte)
	return b, nil
}
