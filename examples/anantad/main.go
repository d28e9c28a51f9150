package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

// errUsage marks errors of the command line or the configuration (exit 2).
var errUsage = errors.New("usage")

func run(args []string, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: anantad manager|mux|hostagent [--config FILE] [flags]")
		return 2
	}
	var err error
	switch args[0] {
	case "manager":
		err = runManagerCmd(args[1:], stderr)
	case "mux":
		err = runMuxCmd(args[1:], stderr)
	case "hostagent":
		err = runHostAgentCmd(args[1:], stderr)
	case "-h", "--help", "help":
		fmt.Fprintln(stderr, "usage: anantad manager|mux|hostagent [--config FILE] [flags]")
		return 0
	default:
		fmt.Fprintf(stderr, "anantad: unknown subcommand %q (manager, mux, hostagent)\n", args[0])
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "anantad %s: %v\n", args[0], err)
		if errors.Is(err, errUsage) {
			return 2
		}
		return 1
	}
	return 0
}

// commonFlags registers the flags of Common on fs; apply copies those set
// on the command line into c, after the file was read.
func commonFlags(fs *flag.FlagSet) (config *string, apply func(c *Common)) {
	config = fs.String("config", "", "YAML configuration `file`")
	metrics := fs.String("metrics", "", "serve Prometheus metrics on `addr`/metrics")
	format := fs.String("log-format", "", "log format: text or json")
	level := fs.String("log-level", "", "log level: debug, info, warn, error")
	return config, func(c *Common) {
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "metrics":
				c.Metrics = *metrics
			case "log-format":
				c.LogFormat = *format
			case "log-level":
				c.LogLevel = *level
			}
		})
	}
}

// parseArgs parses the flags, reads the config file into cfg and applies
// the flags set (through apply) over it.
func parseArgs(fs *flag.FlagSet, args []string, config *string, cfg any, apply func()) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	if err := loadYAML(*config, cfg); err != nil {
		return fmt.Errorf("%w: %s: %v", errUsage, *config, err)
	}
	apply()
	return nil
}

func newLogger(c Common, w io.Writer) *slog.Logger {
	lvl, _ := parseLevel(c.LogLevel)
	opts := &slog.HandlerOptions{Level: lvl}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// serveMetrics serves /metrics for the collector (plus Go and process
// metrics) on addr until the returned stop is called. An empty addr
// serves nothing.
func serveMetrics(addr string, c prometheus.Collector, lg *slog.Logger) (stop func(), err error) {
	if addr == "" {
		return func() {}, nil
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := reg.Register(c); err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			lg.Error("metrics server", "err", err)
		}
	}()
	lg.Info("serving metrics", "addr", lis.Addr().String())
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}

// signalContext ends on SIGTERM or SIGINT.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}

// splitList splits a comma-separated flag value.
func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
