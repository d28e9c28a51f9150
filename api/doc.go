// Package api holds the Manager's gRPC API (package ananta.v1 in
// ananta.proto) and its replicated log and snapshot formats
// (replication.proto), with the generated Go code.
//
// Three services:
//
//   - VIPService: create, update, delete, get and list VIPs (a cloud
//     controller).
//   - SNATService: lease, release, renew and list SNAT port ranges (Host
//     Agents).
//   - AgentService: Watch the configuration (Muxes and Host Agents), report
//     applied versions, health and traffic, list agents.
//
// Every replica of the Manager serves every call. The generated code is
// committed; `go generate ./api` reproduces it with protoc and the pinned
// plugins (see generate.sh).
package api

//go:generate ./generate.sh
