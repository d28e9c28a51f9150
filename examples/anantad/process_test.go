package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ananta-go/ananta/api"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

// binary builds anantad once per test run.
func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := mkTemp()
		if err != nil {
			buildErr = err
			return
		}
		buildDir = dir
		binPath = filepath.Join(dir, "anantad")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// daemon is a running anantad process whose JSON logs are read into records.
type daemon struct {
	cmd     *exec.Cmd
	records chan map[string]any
	done    chan struct{}
	err     error // Wait's, valid after done
}

// startDaemon starts cmd (an anantad with --log-format json) and kills it
// at the end of the test if it is still running.
func startDaemon(t *testing.T, cmd *exec.Cmd) *daemon {
	t.Helper()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{cmd: cmd, records: make(chan map[string]any, 1024), done: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(cmd.Path) + " " + strings.Join(cmd.Args[1:], " ")
	var wg sync.WaitGroup
	wg.Go(func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			t.Logf("%s: %s", name, sc.Text())
			var rec map[string]any
			if json.Unmarshal(sc.Bytes(), &rec) == nil {
				select {
				case d.records <- rec:
				default:
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	})
	go func() {
		wg.Wait()
		d.err = cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			_ = cmd.Process.Kill()
			<-d.done
		}
	})
	return d
}

// await returns the first log record with message msg.
func (d *daemon) await(t *testing.T, msg string, timeout time.Duration) map[string]any {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case rec := <-d.records:
			if rec["msg"] == msg {
				return rec
			}
		case <-d.done:
			t.Fatalf("process ended (%v) before logging %q", d.err, msg)
		case <-deadline:
			t.Fatalf("no log %q within %v", msg, timeout)
		}
	}
}

// stop sends SIGTERM and checks the process exits with status 0 in time.
func (d *daemon) stop(t *testing.T, timeout time.Duration) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
	case <-time.After(timeout):
		t.Fatalf("still running %v after SIGTERM", timeout)
	}
	var ee *exec.ExitError
	switch {
	case errors.As(d.err, &ee):
		t.Fatalf("exit after SIGTERM: %v, want status 0", ee)
	case d.err != nil:
		t.Fatal(d.err)
	}
}

// startManager runs `anantad manager --single` with listen and metrics on
// port 0 of host and returns its gRPC and metrics addresses, read from its
// logs.
func startManager(t *testing.T, cmd func(args ...string) *exec.Cmd, host string) (d *daemon, grpcAddr, metricsAddr string) {
	t.Helper()
	d = startDaemon(t, cmd("manager", "--single", "--listen", host+":0", "--metrics", host+":0", "--log-format", "json", "--shards", "2"))
	metricsAddr, _ = d.await(t, "serving metrics", 20*time.Second)["addr"].(string)
	grpcAddr, _ = d.await(t, "manager serving", 20*time.Second)["listen"].(string)
	if grpcAddr == "" || metricsAddr == "" {
		t.Fatalf("addresses not logged: grpc %q, metrics %q", grpcAddr, metricsAddr)
	}
	return d, grpcAddr, metricsAddr
}

func TestManagerProcess(t *testing.T) {
	bin := binary(t)
	d, grpcAddr, metricsAddr := startManager(t, func(args ...string) *exec.Cmd { return exec.Command(bin, args...) }, "127.0.0.1")

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "ananta_manager_") || !strings.Contains(string(body), "go_goroutines") {
		t.Fatalf("/metrics: %s\n%.2000s", resp.Status, body)
	}

	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	vips, err := api.NewVIPServiceClient(conn).ListVIPs(ctx, &api.ListVIPsRequest{})
	if err != nil {
		t.Fatalf("ListVIPs: %v", err)
	}
	if len(vips.GetVips()) != 0 {
		t.Errorf("ListVIPs of a new Manager: %v", vips)
	}
	if _, err := api.NewAgentServiceClient(conn).ListAgents(ctx, &api.ListAgentsRequest{}); err != nil {
		t.Fatalf("ListAgents: %v", err)
	}

	d.stop(t, 10*time.Second)
}
