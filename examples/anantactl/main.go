package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/ananta-go/ananta/api"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit statuses.
const (
	exitOK    = 0
	exitAPI   = 1 // the API (or the connection) failed
	exitUsage = 2 // bad flags, arguments or file
)

// usageError is an error of the command line or of an input file.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// options are the global flags.
type options struct {
	managers string
	output   string
	timeout  time.Duration
}

func (o *options) register(fs *flag.FlagSet) {
	fs.StringVar(&o.managers, "manager", o.managers, "Manager replicas `host:port[,host:port...]`, tried in turn")
	fs.StringVar(&o.output, "o", o.output, "output `format`: table or json")
	fs.DurationVar(&o.timeout, "timeout", o.timeout, "time limit of the whole command")
}

// cli is one invocation.
type cli struct {
	opts   options
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	conns  []*grpc.ClientConn
	addrs  []string
}

const usageText = `usage: anantactl [--manager host:port[,...]] [-o table|json] [--timeout D] COMMAND

commands:
  vip create -f FILE [--wait D] [--idempotency-key K]
  vip update -f FILE [--version N] [--wait D] [--idempotency-key K]
  vip delete VIP [--version N] [--wait D] [--idempotency-key K]
  vip get VIP
  vip list [--tenant T]
  leases [--vip VIP] [--dip DIP]
  agents [--kind mux|host-agent]
`

// run runs anantactl with args (without the program name) and returns its
// exit status.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	c := &cli{
		opts:   options{output: "table", timeout: 10 * time.Second},
		stdin:  stdin,
		stdout: stdout,
		stderr: stderr,
	}
	if env := os.Getenv("ANANTA_MANAGER"); env != "" {
		c.opts.managers = env
	}
	defer c.close()
	name, err := c.dispatch(ctx, args)
	if err == nil {
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	prefix := "anantactl"
	if name != "" {
		prefix += ": " + name
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "%s: %v\n", prefix, err)
		return exitUsage
	}
	if s, ok := status.FromError(err); ok {
		fmt.Fprintf(stderr, "%s: %s: %s\n", prefix, s.Code(), s.Message())
	} else {
		fmt.Fprintf(stderr, "%s: %v\n", prefix, err)
	}
	return exitAPI
}

// dispatch parses the global flags and runs the command; it returns the
// command's name for error messages.
func (c *cli) dispatch(ctx context.Context, args []string) (string, error) {
	fs := c.flagSet("anantactl")
	fs.Usage = func() { fmt.Fprint(c.stderr, usageText) }
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", err
		}
		return "", usageError{err}
	}
	args = fs.Args()
	if len(args) == 0 {
		fmt.Fprint(c.stderr, usageText)
		return "", usagef("no command")
	}
	switch args[0] {
	case "vip":
		if len(args) < 2 {
			return "vip", usagef("want vip create|update|delete|get|list")
		}
		name := "vip " + args[1]
		var f func(context.Context, []string) error
		switch args[1] {
		case "create":
			f = c.vipCreate
		case "update":
			f = c.vipUpdate
		case "delete":
			f = c.vipDelete
		case "get":
			f = c.vipGet
		case "list":
			f = c.vipList
		default:
			return name, usagef("unknown command (want vip create|update|delete|get|list)")
		}
		return name, f(ctx, args[2:])
	case "leases":
		return "leases", c.leases(ctx, args[1:])
	case "agents":
		return "agents", c.agents(ctx, args[1:])
	case "help":
		fmt.Fprint(c.stdout, usageText)
		return "", nil
	}
	fmt.Fprint(c.stderr, usageText)
	return "", usagef("unknown command %q", args[0])
}

// flagSet returns a flag set with the global flags.
func (c *cli) flagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	c.opts.register(fs)
	return fs
}

// parse parses a command's flags, which may come before, between or after
// its positional arguments, and returns the positional arguments.
func (c *cli) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch c.opts.output {
	case "table", "json":
	default:
		return nil, usagef("-o %q: want table or json", c.opts.output)
	}
	return pos, nil
}

// connect prepares clients for the Manager replicas (grpc connects lazily).
func (c *cli) connect() error {
	if c.conns != nil {
		return nil
	}
	for _, a := range strings.Split(c.opts.managers, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		conn, err := grpc.NewClient(a, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return usagef("--manager %q: %v", a, err)
		}
		c.conns = append(c.conns, conn)
		c.addrs = append(c.addrs, a)
	}
	if len(c.conns) == 0 {
		return usagef("--manager host:port (or $ANANTA_MANAGER) is required")
	}
	return nil
}

func (c *cli) close() {
	for _, conn := range c.conns {
		conn.Close()
	}
}

// call runs f against each Manager replica in turn until one answers: an
// Unavailable replica is skipped, any other result (success or an error of
// the API) is final.
func (c *cli) call(ctx context.Context, f func(ctx context.Context, conn *grpc.ClientConn) error) error {
	if err := c.connect(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.timeout)
	defer cancel()
	var failures []string
	for i, conn := range c.conns {
		err := f(ctx, conn)
		if status.Code(err) != codes.Unavailable {
			return err
		}
		failures = append(failures, c.addrs[i]+": "+status.Convert(err).Message())
	}
	return status.Error(codes.Unavailable, "no Manager reachable ("+strings.Join(failures, "; ")+")")
}

// changeFlags are the flags of the commands that change a VIP.
type changeFlags struct {
	wait    time.Duration
	key     string
	version uint64
	file    string
}

func (c *cli) changeFlagSet(name string, f *changeFlags, withFile, withVersion bool) *flag.FlagSet {
	fs := c.flagSet(name)
	fs.DurationVar(&f.wait, "wait", 0, "wait up to this long for the agents to apply the change")
	fs.StringVar(&f.key, "idempotency-key", "", "idempotency `key` of the change (a retry with the same key is harmless)")
	if withFile {
		fs.StringVar(&f.file, "f", "", "VIP `file`, YAML or JSON (- for standard input)")
	}
	if withVersion {
		fs.Uint64Var(&f.version, "version", 0, "change only if the VIP's version is still `N` (0: any version)")
	}
	return fs
}

func waitFor(d time.Duration) *durationpb.Duration {
	if d <= 0 {
		return nil
	}
	return durationpb.New(d)
}

func (c *cli) readFile(f *changeFlags, pos []string) (*vipFile, error) {
	if len(pos) != 0 {
		return nil, usagef("unexpected argument %q", pos[0])
	}
	if f.file == "" {
		return nil, usagef("-f FILE is required")
	}
	vf, err := readVIPFile(f.file, c.stdin)
	if err != nil {
		return nil, usageError{err}
	}
	return vf, nil
}

func (c *cli) vipCreate(ctx context.Context, args []string) error {
	var f changeFlags
	fs := c.changeFlagSet("vip create", &f, true, false)
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	vf, err := c.readFile(&f, pos)
	if err != nil {
		return err
	}
	var resp *api.VIPResponse
	err = c.call(ctx, func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = api.NewVIPServiceClient(conn).CreateVIP(ctx, &api.CreateVIPRequest{
			Config: vf.config, IdempotencyKey: f.key, WaitForAgents: waitFor(f.wait),
		})
		return err
	})
	if err != nil {
		return err
	}
	return c.printChange("created", resp, f.wait > 0)
}

func (c *cli) vipUpdate(ctx context.Context, args []string) error {
	var f changeFlags
	fs := c.changeFlagSet("vip update", &f, true, true)
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	vf, err := c.readFile(&f, pos)
	if err != nil {
		return err
	}
	version := f.version
	versionSet := false
	fs.Visit(func(fl *flag.Flag) { versionSet = versionSet || fl.Name == "version" })
	if !versionSet && vf.hasVersion {
		version = vf.version
	}
	var resp *api.VIPResponse
	err = c.call(ctx, func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = api.NewVIPServiceClient(conn).UpdateVIP(ctx, &api.UpdateVIPRequest{
			Config: vf.config, ExpectedVersion: version, IdempotencyKey: f.key, WaitForAgents: waitFor(f.wait),
		})
		return err
	})
	if err != nil {
		return err
	}
	return c.printChange("updated", resp, f.wait > 0)
}

func (c *cli) vipDelete(ctx context.Context, args []string) error {
	var f changeFlags
	fs := c.changeFlagSet("vip delete", &f, false, true)
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one VIP address")
	}
	var resp *api.VIPResponse
	err = c.call(ctx, func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = api.NewVIPServiceClient(conn).DeleteVIP(ctx, &api.DeleteVIPRequest{
			Vip: pos[0], ExpectedVersion: f.version, IdempotencyKey: f.key, WaitForAgents: waitFor(f.wait),
		})
		return err
	})
	if err != nil {
		return err
	}
	return c.printChange("deleted", resp, f.wait > 0)
}

func (c *cli) vipGet(ctx context.Context, args []string) error {
	fs := c.flagSet("vip get")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("want exactly one VIP address")
	}
	var v *api.VIP
	err = c.call(ctx, func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		v, err = api.NewVIPServiceClient(conn).GetVIP(ctx, &api.GetVIPRequest{Vip: pos[0]})
		return err
	})
	if err != nil {
		return err
	}
	if c.opts.output == "json" {
		return c.printJSON(v)
	}
	return c.printVIP(v)
}

// listVIPs reads every page of ListVIPs.
func (c *cli) listVIPs(ctx context.Context, tenant string) ([]*api.VIP, error) {
	var all []*api.VIP
	err := c.call(ctx, func(ctx context.Context, conn *grpc.ClientConn) error {
		all = nil
		client := api.NewVIPServiceClient(conn)
		token := ""
		for {
			resp, err := client.ListVIPs(ctx, &api.ListVIPsRequest{Tenant: tenant, PageSize: 1000, PageToken: token})
			if err != nil {
				return err
			}
			all = append(all, resp.Vips...)
			if resp.NextPageToken == "" {
				return nil
			}
			token = resp.NextPageToken
		}
	})
	return all, err
}

func (c *cli) vipList(ctx context.Context, args []string) error {
	fs := c.flagSet("vip list")
	tenant := fs.String("tenant", "", "only the VIPs of this `tenant`")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	vips, err := c.listVIPs(ctx, *tenant)
	if err != nil {
		return err
	}
	if c.opts.output == "json" {
		return c.printJSON(&api.ListVIPsResponse{Vips: vips})
	}
	return c.printVIPTable(vips)
}

func (c *cli) leases(ctx context.Context, args []string) error {
	fs := c.flagSet("leases")
	vip := fs.String("vip", "", "only this `VIP`'s leases (default: every VIP with SNAT enabled)")
	dip := fs.String("dip", "", "only this `DIP`'s leases")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	vips := []string{*vip}
	if *vip == "" {
		all, err := c.listVIPs(ctx, "")
		if err != nil {
			return err
		}
		vips = vips[:0]
		for _, v := range all {
			if v.GetConfig().GetSnat().GetEnabled() {
				vips = append(vips, v.GetConfig().GetVip())
			}
		}
	}
	out := &api.ListLeasesResponse{}
	for _, v := range vips {
		err := c.call(ctx, func(ctx context.Context, conn *grpc.ClientConn) error {
			resp, err := api.NewSNATServiceClient(conn).ListLeases(ctx, &api.ListLeasesRequest{Vip: v, Dip: *dip})
			if err != nil {
				return err
			}
			out.Leases = append(out.Leases, resp.Leases...)
			return nil
		})
		if err != nil {
			return err
		}
	}
	if c.opts.output == "json" {
		return c.printJSON(out)
	}
	return c.printLeases(out.Leases)
}

func (c *cli) agents(ctx context.Context, args []string) error {
	fs := c.flagSet("agents")
	kindName := fs.String("kind", "", "only agents of this `kind`: mux or host-agent")
	pos, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	var kind api.AgentKind
	switch *kindName {
	case "":
	case "mux":
		kind = api.AgentKind_AGENT_KIND_MUX
	case "host-agent", "hostagent", "host":
		kind = api.AgentKind_AGENT_KIND_HOST_AGENT
	default:
		return usagef("--kind %q: want mux or host-agent", *kindName)
	}
	var resp *api.ListAgentsResponse
	err = c.call(ctx, func(ctx context.Context, conn *grpc.ClientConn) (err error) {
		resp, err = api.NewAgentServiceClient(conn).ListAgents(ctx, &api.ListAgentsRequest{Kind: kind})
		return err
	})
	if err != nil {
		return err
	}
	if c.opts.output == "json" {
		return c.printJSON(resp)
	}
	return c.printAgents(resp.Agents)
}
