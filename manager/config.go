package manager

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"

	"github.com/ananta-go/ananta/consensus"
	"github.com/ananta-go/ananta/snat"
)

// Defaults of the zero fields of Config.
const (
	DefaultMaxMessageBytes = 4 << 20
	DefaultMaxPortsPerDIP  = snat.DefaultMaxPortsPerDIP
	DefaultDedupWindow     = 2 * time.Minute
	DefaultDedupEntries    = 1 << 16
	DefaultAgentForget     = time.Hour
	DefaultTrafficTTL      = 5 * time.Minute
	DefaultLeaseTTL        = 10 * time.Minute
	DefaultExpireInterval  = time.Second
	DefaultAgentTimeout    = 15 * time.Second
	DefaultWatchLogSize    = 1 << 14
	DefaultSNATBatchSize   = 256
	DefaultSNATInflight    = 2
	DefaultSNATQueueLimit  = 4096
	DefaultSNATRate        = 200
	DefaultSNATBurst       = 50
	DefaultProposeTimeout  = 3 * time.Second
	DefaultRequestTimeout  = 30 * time.Second
)

// Config configures one Manager replica. Pass it by value to New; the zero
// value of each optional field means its default. The fields marked
// "replicated" decide the results of the replicated state machine and must
// be equal on every replica (a replica restoring a snapshot taken with
// other values refuses it).
type Config struct {
	// Listener is where Run serves the gRPC API. Required. Run closes it.
	Listener net.Listener

	// Consensus opens this replica's consensus.Node with the Manager's
	// state machine factory, for example
	//
	//	func(f consensus.Factory) (consensus.Node, error) {
	//		return dragonboat.New(dbConfig, f)
	//	}
	//
	// Every replica must serve the same shards: a VIP belongs to the shard
	// picked by a stable hash of its address modulo the number of shards,
	// so the shard set is fixed for the life of a deployment. Required.
	// The Manager closes the Node in Close.
	Consensus func(consensus.Factory) (consensus.Node, error)

	// Logger receives the Manager's logs; nil means slog.Default().
	Logger *slog.Logger

	// ServerOptions are added to the gRPC server's options (TLS
	// credentials, interceptors).
	ServerOptions []grpc.ServerOption

	// Peers maps the replica ID of every replica (this one may be
	// included) to its gRPC address. When set, a replica hands
	// AllocatePorts for a shard it does not lead to the leader's replica,
	// so that the shard's requests are queued and batched in one place
	// (larger batches, cluster-wide per-DIP limits). Nil: every replica
	// batches the requests it receives itself.
	Peers map[uint64]string
	// PeerDialOptions are the options for connections to Peers; nil means
	// insecure transport credentials.
	PeerDialOptions []grpc.DialOption

	// MaxMessageBytes is the largest request the server accepts; larger
	// ones fail with RESOURCE_EXHAUSTED. 0 means 4 MiB.
	MaxMessageBytes int

	// MaxPortsPerDIP caps the ports one DIP may hold from one VIP.
	// Replicated. 0 means 32768.
	MaxPortsPerDIP int
	// DedupWindow is how long the state machine remembers results of
	// proposals and idempotency keys, so that retries within it are safe.
	// Replicated. 0 means 2 minutes.
	DedupWindow time.Duration
	// DedupEntries caps each of the remembered-result caches. Replicated.
	// 0 means 65536.
	DedupEntries int
	// AgentForget: an agent not heard of for this long is removed from
	// the registry. Replicated. 0 means 1 hour.
	AgentForget time.Duration
	// TrafficTTL: traffic reports older than this are dropped.
	// Replicated. 0 means 5 minutes.
	TrafficTTL time.Duration

	// LeaseTTL is the life of a SNAT lease until renewed. 0 means 10
	// minutes.
	LeaseTTL time.Duration
	// ExpireInterval is how often the leader of a shard reclaims expired
	// leases. 0 means 1 s.
	ExpireInterval time.Duration
	// AgentTimeout: an agent whose last report is older than this is not
	// waited for and shows as disconnected. 0 means 15 s. Agents
	// (package manager/agent) report at least every third of it.
	AgentTimeout time.Duration
	// WatchLogSize is how many changes per shard this replica retains for
	// Watch streams that resume; an agent further behind gets a full
	// snapshot. 0 means 16384.
	WatchLogSize int

	// SNATBatchSize caps the allocation requests of one proposal. 0 means
	// 256.
	SNATBatchSize int
	// SNATInflight caps the allocation proposals in flight per shard (and,
	// as many again, proposals for VIPs that have nothing in flight). 0
	// means 2.
	SNATInflight int
	// SNATQueueLimit caps the requests waiting in one VIP's queue; more
	// fail with RESOURCE_EXHAUSTED. 0 means 4096.
	SNATQueueLimit int
	// SNATRate and SNATBurst limit each DIP's allocation requests (a token
	// bucket on this replica). 0 means 200 per second with a burst of 50.
	SNATRate  float64
	SNATBurst int
	// SNATVIPRate and SNATVIPBurst limit each VIP's allocation requests on
	// this replica (a token bucket per VIP), so that one tenant's flood
	// cannot take the whole machine from the others. 0 means no limit
	// (the per-VIP queues still share the proposals round-robin); a
	// burst of 0 means a tenth of a second's worth, at least 1.
	SNATVIPRate  float64
	SNATVIPBurst int

	// ProposeTimeout bounds one attempt to propose; a proposal whose
	// outcome is unknown is retried (safely: proposals carry IDs the
	// state machine deduplicates) until the call's deadline. 0 means 3 s.
	ProposeTimeout time.Duration
	// RequestTimeout bounds calls whose context has no deadline. 0 means
	// 30 s.
	RequestTimeout time.Duration

	// Now is the clock that stamps commands; nil means time.Now. The state
	// machine itself never reads a clock.
	Now func() time.Time
}

// ErrInvalidConfig is wrapped by Config.Validate's errors.
var ErrInvalidConfig = errors.New("manager: invalid config")

func (c Config) withDefaults() Config {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defD := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	def(&c.MaxMessageBytes, DefaultMaxMessageBytes)
	def(&c.MaxPortsPerDIP, DefaultMaxPortsPerDIP)
	defD(&c.DedupWindow, DefaultDedupWindow)
	def(&c.DedupEntries, DefaultDedupEntries)
	defD(&c.AgentForget, DefaultAgentForget)
	defD(&c.TrafficTTL, DefaultTrafficTTL)
	defD(&c.LeaseTTL, DefaultLeaseTTL)
	defD(&c.ExpireInterval, DefaultExpireInterval)
	defD(&c.AgentTimeout, DefaultAgentTimeout)
	def(&c.WatchLogSize, DefaultWatchLogSize)
	def(&c.SNATBatchSize, DefaultSNATBatchSize)
	def(&c.SNATInflight, DefaultSNATInflight)
	def(&c.SNATQueueLimit, DefaultSNATQueueLimit)
	if c.SNATRate == 0 {
		c.SNATRate = DefaultSNATRate
	}
	def(&c.SNATBurst, DefaultSNATBurst)
	if c.SNATVIPRate > 0 && c.SNATVIPBurst == 0 {
		c.SNATVIPBurst = max(1, int(c.SNATVIPRate/10))
	}
	defD(&c.ProposeTimeout, DefaultProposeTimeout)
	defD(&c.RequestTimeout, DefaultRequestTimeout)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

func invalidConfig(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
}

// Validate reports the first problem of c, naming the field, as an error
// wrapping ErrInvalidConfig. New calls it.
func (c Config) Validate() error {
	if c.Listener == nil {
		return invalidConfig("Listener is required")
	}
	if c.Consensus == nil {
		return invalidConfig("Consensus is required")
	}
	d := c.withDefaults()
	switch {
	case d.MaxMessageBytes < 64<<10:
		return invalidConfig("MaxMessageBytes must be 0 or at least 64 KiB")
	case d.MaxPortsPerDIP < snat.MinRangeSize || d.MaxPortsPerDIP > snat.MaxPortsPerDIPLimit:
		return invalidConfig("MaxPortsPerDIP must be 0 or from %d to %d", snat.MinRangeSize, snat.MaxPortsPerDIPLimit)
	case d.DedupWindow < time.Second:
		return invalidConfig("DedupWindow must be 0 or at least 1s")
	case d.DedupEntries < 16:
		return invalidConfig("DedupEntries must be 0 or at least 16")
	case d.AgentForget < time.Minute:
		return invalidConfig("AgentForget must be 0 or at least 1m")
	case d.TrafficTTL < time.Second:
		return invalidConfig("TrafficTTL must be 0 or at least 1s")
	case d.LeaseTTL < time.Second || d.LeaseTTL > snat.MaxLeaseTTL:
		return invalidConfig("LeaseTTL must be 0 or from 1s to %s", snat.MaxLeaseTTL)
	case d.ExpireInterval < time.Millisecond:
		return invalidConfig("ExpireInterval must be 0 or at least 1ms")
	case d.AgentTimeout < 100*time.Millisecond:
		return invalidConfig("AgentTimeout must be 0 or at least 100ms")
	case d.WatchLogSize < 1:
		return invalidConfig("WatchLogSize must be >= 0")
	case d.SNATBatchSize < 1 || d.SNATBatchSize > 4096:
		return invalidConfig("SNATBatchSize must be 0 or from 1 to 4096")
	case d.SNATInflight < 1 || d.SNATInflight > 64:
		return invalidConfig("SNATInflight must be 0 or from 1 to 64")
	case d.SNATQueueLimit < 1:
		return invalidConfig("SNATQueueLimit must be >= 0")
	case d.SNATRate < 0:
		return invalidConfig("SNATRate must be >= 0")
	case d.SNATBurst < 1:
		return invalidConfig("SNATBurst must be >= 0")
	case d.SNATVIPRate < 0 || d.SNATVIPBurst < 0:
		return invalidConfig("SNATVIPRate and SNATVIPBurst must be >= 0")
	case d.ProposeTimeout < time.Millisecond:
		return invalidConfig("ProposeTimeout must be 0 or at least 1ms")
	case d.RequestTimeout < time.Millisecond:
		return invalidConfig("RequestTimeout must be 0 or at least 1ms")
	}
	return nil
}
