// Package consensus is the replication interface the Manager builds on: a
// Node replicates commands to user-supplied StateMachines, one per shard,
// and returns each command's result once it is committed and applied.
//
// A Node serves several shards (multi-Raft): each shard is an independent
// replicated log with its own leader, so the throughput of a replicated
// service grows with the number of shards when their leaders sit on
// different replicas.
//
// Two implementations exist:
//
//   - consensus/dragonboat replicates over Raft with Dragonboat v4 and an
//     on-disk log; it is the default for real deployments.
//   - consensus/memory is a single replica in process, deterministic and
//     synchronous; it serves unit tests and single-process embedding.
//
// Both pass the conformance suite in consensus/consensustest, which is also
// the place to start when writing a new implementation.
//
// The contract in short:
//
//   - Propose returns the result of StateMachine.Apply once the command is
//     committed and applied. An error from Apply is a result, not a failure:
//     Propose returns it as a *RejectedError (errors.Is(err, ErrRejected)),
//     every replica carries on, and later commands are unaffected.
//   - Read runs StateMachine.Query after every command committed before the
//     call started has been applied locally (linearizable), on any replica.
//   - Watch reports leadership changes per shard.
//   - ErrTimeout and cancellation from Propose leave the outcome unknown:
//     the command may still be applied. Commands that must apply at most
//     once should carry a request ID the state machine deduplicates.
package consensus
