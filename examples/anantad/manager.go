package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"path/filepath"

	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/consensus/dragonboat"
	"github.com/ananta-go/ananta/consensus/memory"
	"github.com/ananta-go/ananta/manager"
)

func runManagerCmd(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("anantad manager", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config, applyCommon := commonFlags(fs)
	listen := fs.String("listen", "", "gRPC API address (host:port)")
	single := fs.Bool("single", false, "one replica with in-memory consensus")
	replica := fs.Uint64("replica-id", 0, "this replica's ID among the peers")
	dataDir := fs.String("data-dir", "", "Raft data directory")
	shards := fs.Int("shards", 0, fmt.Sprintf("number of shards (default %d)", defaultShards))
	var cfg ManagerConfig
	err := parseArgs(fs, args, config, &cfg, func() {
		applyCommon(&cfg.Common)
		fs.Visit(func(f *flag.Flag) {
			switch f.Name {
			case "listen":
				cfg.Listen = *listen
			case "single":
				cfg.Single = *single
			case "replica-id":
				cfg.ReplicaID = *replica
			case "data-dir":
				cfg.DataDir = *dataDir
			case "shards":
				cfg.Shards = *shards
			}
		})
	})
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return runManager(cfg, stderr)
}

func runManager(cfg ManagerConfig, stderr io.Writer) error {
	lg := newLogger(cfg.Common, stderr).With("role", "manager")
	shards := cfg.shardIDs()
	var open func(consensus.Factory) (consensus.Node, error)
	var peers map[uint64]string
	if cfg.Single {
		open = func(f consensus.Factory) (consensus.Node, error) { return memory.New(shards, f) }
	} else {
		members := make(map[uint64]string)
		for _, p := range cfg.Peers {
			members[p.ID] = p.Raft
			if p.GRPC != "" {
				if peers == nil {
					peers = make(map[uint64]string)
				}
				peers[p.ID] = p.GRPC
			}
		}
		dbc := dragonboat.Config{
			ReplicaID: cfg.ReplicaID, Members: members, Shards: shards,
			DataDir: filepath.Clean(cfg.DataDir), ListenAddress: cfg.RaftListen,
			RTTMillisecond: cfg.RTTMillisecond, SpreadLeaders: cfg.SpreadLeaders, Lightweight: cfg.Lightweight,
		}
		if err := dbc.Validate(); err != nil {
			return fmt.Errorf("%w: %v", errUsage, err)
		}
		open = func(f consensus.Factory) (consensus.Node, error) { return dragonboat.New(dbc, f) }
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return err
	}
	m, err := manager.New(manager.Config{Listener: lis, Consensus: open, Logger: lg, Peers: peers})
	if err != nil {
		lis.Close()
		return err
	}
	stopMetrics, err := serveMetrics(cfg.Metrics, m, lg)
	if err != nil {
		m.Close()
		return err
	}
	defer stopMetrics()
	ctx, cancel := signalContext()
	defer cancel()
	lg.Info("manager serving", "listen", lis.Addr().String(), "shards", len(shards), "single", cfg.Single, "replica_id", cfg.ReplicaID)
	runErr := m.Run(ctx)
	closeErr := m.Close()
	if runErr != nil && ctx.Err() == nil {
		return fmt.Errorf("run: %w", runErr)
	}
	if closeErr != nil {
		return fmt.Errorf("close: %w", closeErr)
	}
	lg.Info("manager stopped")
	return nil
}
