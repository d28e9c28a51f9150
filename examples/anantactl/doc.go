// Command anantactl configures VIPs on an Ananta Manager and shows its SNAT
// leases and agents, through the Manager's gRPC API (api/ananta.proto).
//
// Usage:
//
//	anantactl [--manager host:port[,host:port...]] [-o table|json] [--timeout 10s] COMMAND
//
//	vip create -f FILE [--wait 5s] [--idempotency-key KEY]
//	vip update -f FILE [--version N] [--wait 5s] [--idempotency-key KEY]
//	vip delete VIP [--version N] [--wait 5s] [--idempotency-key KEY]
//	vip get VIP
//	vip list [--tenant T]
//	leases [--vip VIP] [--dip DIP]
//	agents [--kind mux|host-agent]
//
// The global flags may also follow the command. --manager (default: the
// environment variable ANANTA_MANAGER) lists Manager replicas; each is tried in turn until one answers (a replica that is
// unreachable, returns Unavailable, is skipped). -o json prints the API's
// messages in protobuf JSON form (proto field names), -o table (the
// default) prints aligned columns.
//
// # File format
//
// A VIP file is the API's VIPConfig message (api.VIPConfig) in YAML or JSON
// (chosen by the extension .yaml, .yml or .json, else by the content; "-"
// reads standard input). Keys are the proto field names, which are also the
// names the Manager's validation errors use, e.g.
// "endpoints[0].backends[1].weight: must be > 0"; the lowerCamelCase JSON
// names are accepted too. Two conveniences over plain protobuf JSON: enum
// values may be written in short form (protocol: tcp, udp, any; state:
// active, draining, down; kind: none, tcp, http; action: allow, deny) as
// well as by their proto names (PROTOCOL_TCP), and durations may be written
// as Go durations ("4m", "500ms") as well as protobuf JSON seconds ("240s").
// See testdata/vip.yaml:
//
//	vip: 198.19.0.10
//	tenant: contoso
//	idle_timeout: 4m
//	endpoints:
//	  - protocol: tcp
//	    port: 80
//	    backends:
//	      - {dip: 10.1.0.1, port: 8080, host: 198.18.0.1, weight: 1}
//	      - {dip: 10.1.0.2, port: 8080, host: 198.18.0.2, weight: 2, state: draining}
//	    probe: {kind: http, port: 8080, path: /healthz, interval: 5s}
//	snat:
//	  enabled: true
//
// The output of "anantactl -o json vip get VIP" (a VIP message: config,
// version, shard) is accepted as well; "vip update" then passes its version
// as the expected version, unless --version says otherwise (--version 0
// updates whatever the current version is).
//
// # Errors
//
// An error of the API is printed with its gRPC status code and message,
// e.g. "anantactl: vip create: InvalidArgument: endpoints[0].backends[1].weight:
// must be > 0", and anantactl exits with status 1; a usage error or an
// unreadable file exits with status 2.
package main
