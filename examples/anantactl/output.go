package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/ananta-go/ananta/api"
)

// printJSON writes m in protobuf JSON form with the proto field names (the
// form VIP files use) and zero values written out, indented the same way
// every time (protojson's own indentation deliberately varies).
func (c *cli) printJSON(m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitDefaultValues: true}.Marshal(m)
	if err != nil {
		return err
	}
	var out bytes.Buffer
	if err := json.Indent(&out, b, "", "  "); err != nil {
		return err
	}
	out.WriteByte('\n')
	_, err = c.stdout.Write(out.Bytes())
	return err
}

func (c *cli) table() *tabwriter.Writer {
	return tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
}

// enumName returns an enum value's proto name without its prefix, in lower
// case: PROTOCOL_TCP is "tcp".
func enumName(s, prefix string) string {
	return strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(s, prefix), "_", "-"))
}

func backends(cfg *api.VIPConfig) int {
	n := 0
	for _, e := range cfg.GetEndpoints() {
		n += len(e.GetBackends())
	}
	return n
}

func endpoints(cfg *api.VIPConfig) string {
	var parts []string
	for _, e := range cfg.GetEndpoints() {
		parts = append(parts, enumName(e.GetProtocol().String(), "PROTOCOL_")+"/"+strconv.Itoa(int(e.GetPort())))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ",")
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

const vipHeader = "VIP\tTENANT\tVERSION\tSHARD\tENDPOINTS\tBACKENDS\tSNAT"

func vipRow(v *api.VIP) string {
	cfg := v.GetConfig()
	return fmt.Sprintf("%s\t%s\t%d\t%d\t%s\t%d\t%s", cfg.GetVip(), orDash(cfg.GetTenant()), v.GetVersion(), v.GetShard(),
		endpoints(cfg), backends(cfg), onOff(cfg.GetSnat().GetEnabled()))
}

func (c *cli) printVIPTable(vips []*api.VIP) error {
	w := c.table()
	fmt.Fprintln(w, vipHeader)
	for _, v := range vips {
		fmt.Fprintln(w, vipRow(v))
	}
	return w.Flush()
}

// printVIP prints one VIP: its summary, then its backends.
func (c *cli) printVIP(v *api.VIP) error {
	if err := c.printVIPTable([]*api.VIP{v}); err != nil {
		return err
	}
	fmt.Fprintln(c.stdout)
	w := c.table()
	fmt.Fprintln(w, "ENDPOINT\tDIP\tPORT\tHOST\tWEIGHT\tSTATE")
	for _, e := range v.GetConfig().GetEndpoints() {
		ep := enumName(e.GetProtocol().String(), "PROTOCOL_") + "/" + strconv.Itoa(int(e.GetPort()))
		for _, b := range e.GetBackends() {
			fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%d\t%s\n", ep, b.GetDip(), b.GetPort(), b.GetHost(), b.GetWeight(),
				enumName(b.GetState().String(), "BACKEND_STATE_"))
		}
	}
	return w.Flush()
}

// printChange prints the result of a create, update or delete; with
// waited, also whether the agents applied it.
func (c *cli) printChange(what string, r *api.VIPResponse, waited bool) error {
	if c.opts.output == "json" {
		return c.printJSON(r)
	}
	v := r.GetVip()
	fmt.Fprintf(c.stdout, "%s VIP %s (version %d, shard %d)\n", what, v.GetConfig().GetVip(), v.GetVersion(), v.GetShard())
	d := r.GetDistribution()
	switch {
	case !waited || d == nil:
		return nil
	case d.GetAgents() == 0 && len(d.GetLagging()) == 0:
		fmt.Fprintln(c.stdout, "no agents connected")
		return nil
	case d.GetComplete():
		fmt.Fprintf(c.stdout, "applied by all %d connected agents\n", d.GetAgents())
		return nil
	}
	fmt.Fprintf(c.stdout, "not applied by %d of %d connected agents in time:\n", len(d.GetLagging()), d.GetAgents())
	w := c.table()
	fmt.Fprintln(w, "AGENT\tKIND\tAPPLIED\tWANT")
	for _, l := range d.GetLagging() {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\n", l.GetAgentId(), enumName(l.GetKind().String(), "AGENT_KIND_"), l.GetApplied(), d.GetVersion())
	}
	return w.Flush()
}

func (c *cli) printLeases(leases []*api.Lease) error {
	w := c.table()
	fmt.Fprintln(w, "VIP\tPORTS\tCOUNT\tDIP\tHOST\tEXPIRES")
	for _, l := range leases {
		r := l.GetRange()
		n := 0
		if r.GetLast() >= r.GetFirst() {
			n = int(r.GetLast()-r.GetFirst()) + 1
		}
		exp := "-"
		if l.Expiry != nil {
			exp = l.GetExpiry().AsTime().UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%s\t%d-%d\t%d\t%s\t%s\t%s\n", l.GetVip(), r.GetFirst(), r.GetLast(), n, l.GetDip(), orDash(l.GetHost()), exp)
	}
	return w.Flush()
}

// shardVersions formats per-shard versions as "1:5 2:3".
func shardVersions(vs []*api.ShardVersion) string {
	if len(vs) == 0 {
		return "-"
	}
	parts := make([]string, len(vs))
	for i, v := range vs {
		parts[i] = fmt.Sprintf("%d:%d", v.GetShard(), v.GetVersion())
	}
	return strings.Join(parts, " ")
}

func (c *cli) printAgents(agents []*api.Agent) error {
	w := c.table()
	fmt.Fprintln(w, "ID\tKIND\tADDRESS\tCONNECTED\tLAST SEEN\tAPPLIED (SHARD:VERSION)\tLAG (SHARD:VERSIONS)\tMAX LAG")
	for _, a := range agents {
		var maxLag uint64
		for _, l := range a.GetLag() {
			maxLag = max(maxLag, l.GetVersion())
		}
		seen := "-"
		if a.LastSeen != nil {
			seen = a.GetLastSeen().AsTime().UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%t\t%s\t%s\t%s\t%d\n", a.GetId(), enumName(a.GetKind().String(), "AGENT_KIND_"),
			orDash(a.GetAddress()), a.GetConnected(), seen, shardVersions(a.GetApplied()), shardVersions(a.GetLag()), maxLag)
	}
	return w.Flush()
}
