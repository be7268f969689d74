// Package edge is flashgate's order intake: a gnet HTTP/1.1 server whose
// event loops parse, authenticate, admit (stock) and hand orders to Kafka,
// answering 202 only after the broker acknowledged the record.
package edge

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/flashgate/flashgate/lib/broker"
	"github.com/flashgate/flashgate/lib/payment"
)

// Config configures an edge. Every default says why it is what it is.
type Config struct {
	Addr    string   // listen address of the HTTP server
	Brokers []string // Kafka seed brokers
	// KafkaOpts are extra producer client options: TLS, SASL.
	KafkaOpts []kgo.Opt
	Auth      string // "dev": trust X-User-ID; "jwt": verified bearer tokens
	JWT       JWTConfig
	// TrustProxy lists the peers whose X-Forwarded-For is believed.
	TrustProxy []netip.Prefix

	// Loops is the number of gnet event loops (shards); 0 = one per core.
	Loops int
	// NodeID tells edge instances apart inside order ids (0-63).
	NodeID int
	// LeaseTTL > 0 turns stock leases on (leases.go): the edge leases blocks
	// of each SKU's units from the ledger instead of loading its whole stock,
	// so several edges (each with its own NodeID) can sell the same SKUs. A
	// lease not renewed for LeaseTTL is reclaimed by the other edges.
	LeaseTTL time.Duration
	// LeaseHorizon sizes a block: the units the edge sells in this long at
	// its recent rate (at least LeaseMinBlock).
	LeaseHorizon  time.Duration
	LeaseMinBlock int64
	// LeaseWait is how long an order that finds the edge dry, while the
	// ledger's pool still has units, waits for the next grant before it is
	// answered 503 (0: answered at once).
	LeaseWait time.Duration

	// Protocol limits. Small: order requests are a few hundred bytes.
	MaxRequestLineBytes int // 414 past it
	MaxHeaderBytes      int // 431 past it
	MaxHeaders          int // 431 past it
	MaxBodyBytes        int // 413 past it
	// MaxPipeline caps the requests in flight per connection; past it the
	// connection is not read until responses leave.
	MaxPipeline int
	// MaxConns caps open connections; past it new ones get 503 and are closed.
	MaxConns int
	// MaxOutputBytes caps the responses a connection that does not read may
	// hold; past it the connection is closed.
	MaxOutputBytes int
	// HeaderReadTimeout bounds the time from a request's first byte to its
	// last (slowloris): 408 and close.
	HeaderReadTimeout time.Duration
	// IdleTimeout closes keep-alive connections without traffic.
	IdleTimeout time.Duration

	// MaxSKUs sizes the sale table.
	MaxSKUs int
	// PurchaseSlots sizes the per-(user, SKU) purchase counters of SKUs with a
	// per-user limit (24 bytes each, allocated at start).
	PurchaseSlots int

	// Kafka hand-off.
	ProduceLinger      time.Duration // batching delay of the producer
	ProduceBatchBytes  int           // largest produce batch per partition
	ProduceCompressMin int           // batches smaller than this go to Kafka uncompressed
	MaxBufferedRecords int           // past it new orders get 503 at once
	MaxBufferedBytes   int           // the same in record bytes
	DeliveryTimeout    time.Duration // a produce not acked by then is "unknown"
	// The circuit breaker: opened by BreakerFailures produce failures in a
	// row, or by BreakerStall without any produce completing while some
	// wait; while open, orders get 503 at once; after BreakerCooldown one
	// order probes.
	BreakerFailures int
	BreakerStall    time.Duration
	BreakerCooldown time.Duration
	// Orders of unknown produce outcome are looked up in the ledger
	// ReconcileAfter their failure, once ingest (IngestGroup) has caught up
	// with Kafka; at most MaxUnknownOrders wait.
	ReconcileAfter   time.Duration
	MaxUnknownOrders int
	IngestGroup      string

	// MaxReadsInFlight bounds concurrent ledger reads (GET /v1/orders/{id}).
	MaxReadsInFlight int
	// MaxEventStreams bounds open GET /v1/orders/{id}/events streams.
	MaxEventStreams int
	// MaxBatchOrders bounds the lines of a POST /v1/orders/batch, and
	// MaxBatchesInFlight the batches being answered at once.
	MaxBatchOrders     int
	MaxBatchesInFlight int
	// RecentOrders sizes the table answering "accepted" for orders not yet in
	// the ledger (144 bytes an entry): keep it above the orders accepted
	// during the longest ingest lag you plan for.
	RecentOrders int
	// IdempotencyBytes sizes the Idempotency-Key cache (oldest keys go first).
	IdempotencyBytes int

	// UnsafeNoKafka answers 202 right after admission without producing: for
	// measuring the HTTP + admission path alone. Orders are NOT recorded.
	UnsafeNoKafka bool

	// Rate limits on orders and order reads (429 past them).
	RateGlobal  RateLimit // whole edge, split evenly across event loops
	RatePerIP   RateLimit // per client IP (mind carrier-grade NAT: many buyers, one IP)
	RatePerUser RateLimit // per user id
	// APIKeys are partners' keys (X-API-Key) with their own limits; a
	// request with a key is limited by it instead of by its client IP.
	APIKeys map[string]RateLimit
	// Payments are the providers whose webhooks are taken at
	// POST /v1/payments/{provider}/webhook.
	Payments []payment.Provider
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Addr:                "127.0.0.1:8080",
		Auth:                "dev",
		TrustProxy:          []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		MaxRequestLineBytes: 2048,
		MaxHeaderBytes:      8192,
		MaxHeaders:          64,
		MaxBodyBytes:        16384,
		MaxPipeline:         64,
		MaxConns:            50_000, // below the usual RLIMIT_NOFILE of a service unit
		MaxOutputBytes:      1 << 20,
		HeaderReadTimeout:   10 * time.Second,
		IdleTimeout:         60 * time.Second,
		MaxSKUs:             100_000,
		PurchaseSlots:       1 << 20,                // 24 MiB; room for ~800K buyers of limited SKUs
		ProduceLinger:       200 * time.Microsecond, // twice the orders per batch: 54.4K -> 64.5K orders/s on one core (tuning.md)
		ProduceBatchBytes:   1 << 20,                // franz-go's default; ~5K orders at the usual ~200 bytes
		ProduceCompressMin:  broker.CompressMin,
		MaxBufferedRecords:  100_000,  // ~1 s of orders at full speed
		MaxBufferedBytes:    64 << 20, // 100K orders of up to ~650 bytes
		DeliveryTimeout:     5 * time.Second,
		BreakerFailures:     10,
		BreakerStall:        time.Second, // acks take milliseconds; a second of silence is an outage
		BreakerCooldown:     time.Second,
		ReconcileAfter:      30 * time.Second, // well past a broker's request timeout
		LeaseHorizon:        2 * time.Second,
		LeaseMinBlock:       16,
		LeaseWait:           time.Second,
		MaxUnknownOrders:    100_000,
		IngestGroup:         "flashgate-ingest",
		MaxReadsInFlight:    256,
		MaxEventStreams:     10_000,
		MaxBatchOrders:      100,
		MaxBatchesInFlight:  256,
		RecentOrders:        1 << 18,  // 36 MiB: 2.6 s of orders at 100K/s
		IdempotencyBytes:    64 << 20, // ~400K keys of ~150 bytes
		// Generous defaults: protection against floods, not traffic shaping.
		RateGlobal:  RateLimit{Rate: 500_000, Burst: 100_000},
		RatePerIP:   RateLimit{Rate: 2000, Burst: 4000, Slots: 1 << 20}, // 8 MiB
		RatePerUser: RateLimit{Rate: 20, Burst: 40, Slots: 1 << 20},     // 8 MiB
	}
}

var flagConfig = DefaultConfig()

func init() {
	flag.IntVar(&flagConfig.Loops, "edge.loops", flagConfig.Loops, "event loops (shards) of the edge; 0 = one per core")
	flag.DurationVar(&flagConfig.LeaseTTL, "edge.leaseTTL", flagConfig.LeaseTTL, "lease stock from the ledger in blocks, for several edges selling the same SKUs (each with its own -edge.nodeID); a lease not renewed this long is reclaimed; 0 = off: this edge loads each SKU's whole stock")
	flag.DurationVar(&flagConfig.LeaseHorizon, "edge.leaseHorizon", flagConfig.LeaseHorizon, "with leases: a block holds the units this edge sells in this long at its recent rate")
	flag.Int64Var(&flagConfig.LeaseMinBlock, "edge.leaseMinBlock", flagConfig.LeaseMinBlock, "with leases: the smallest block asked for")
	flag.DurationVar(&flagConfig.LeaseWait, "edge.leaseWait", flagConfig.LeaseWait, "with leases: an order that finds this edge out of leased units, while the ledger still has some, waits this long for the next grant before it gets 503 (0 = 503 at once)")
	flag.IntVar(&flagConfig.NodeID, "edge.nodeID", flagConfig.NodeID, "this edge's id (0-63), unique per edge instance sharing a Kafka cluster; it is part of every order id")
	flag.IntVar(&flagConfig.MaxRequestLineBytes, "edge.maxRequestLineBytes", flagConfig.MaxRequestLineBytes, "longest request line; longer gets 414")
	flag.IntVar(&flagConfig.MaxHeaderBytes, "edge.maxHeaderBytes", flagConfig.MaxHeaderBytes, "largest header section in bytes; larger gets 431")
	flag.IntVar(&flagConfig.MaxHeaders, "edge.maxHeaders", flagConfig.MaxHeaders, "most header fields per request; more gets 431")
	flag.IntVar(&flagConfig.MaxBodyBytes, "edge.maxBodyBytes", flagConfig.MaxBodyBytes, "largest request body in bytes; larger gets 413")
	flag.IntVar(&flagConfig.MaxPipeline, "edge.maxPipeline", flagConfig.MaxPipeline, "requests in flight per connection; past it the connection is not read until responses leave")
	flag.IntVar(&flagConfig.MaxConns, "edge.maxConns", flagConfig.MaxConns, "open connections; past it new connections get 503 and are closed (mind RLIMIT_NOFILE)")
	flag.IntVar(&flagConfig.MaxOutputBytes, "edge.maxOutputBytes", flagConfig.MaxOutputBytes, "response bytes a connection that does not read may hold before it is closed")
	flag.DurationVar(&flagConfig.HeaderReadTimeout, "edge.headerReadTimeout", flagConfig.HeaderReadTimeout, "time from a request's first byte to its last; slower gets 408 and close")
	flag.DurationVar(&flagConfig.IdleTimeout, "edge.idleTimeout", flagConfig.IdleTimeout, "keep-alive connections without traffic this long are closed")
	flag.IntVar(&flagConfig.MaxSKUs, "edge.maxSKUs", flagConfig.MaxSKUs, "capacity of the sale table")
	flag.IntVar(&flagConfig.PurchaseSlots, "edge.purchaseSlots", flagConfig.PurchaseSlots, "(user, SKU) pairs counted for per-user limits, 24 bytes each; keep it above 1.25x the buyers of limited SKUs, past it their new buyers get 503")
	flag.DurationVar(&flagConfig.ProduceLinger, "edge.produceLinger", flagConfig.ProduceLinger, "how long the Kafka producer waits after an order to fill its batch: fewer, larger batches cost less CPU; adds up to this to a 202's latency (0: send at once)")
	flag.IntVar(&flagConfig.MaxBufferedRecords, "edge.maxBufferedRecords", flagConfig.MaxBufferedRecords, "orders waiting for a Kafka ack; past it new orders get 503 at once")
	flag.DurationVar(&flagConfig.DeliveryTimeout, "edge.deliveryTimeout", flagConfig.DeliveryTimeout, "an order not acked by Kafka by then is answered 503 and reconciled later")
	flag.IntVar(&flagConfig.ProduceBatchBytes, "edge.produceBatchBytes", flagConfig.ProduceBatchBytes, "largest Kafka produce batch per partition, in bytes (at most the topic's max.message.bytes)")
	flag.IntVar(&flagConfig.ProduceCompressMin, "edge.produceCompressMin", flagConfig.ProduceCompressMin, "Kafka produce batches of fewer bytes go uncompressed, larger ones zstd (0: compress all)")
	flag.IntVar(&flagConfig.MaxBufferedBytes, "edge.maxBufferedBytes", flagConfig.MaxBufferedBytes, "record bytes waiting for a Kafka ack; past it new orders get 503")
	flag.IntVar(&flagConfig.BreakerFailures, "edge.breakerFailures", flagConfig.BreakerFailures, "Kafka produce failures in a row that open the circuit breaker (orders get 503 at once while it is open)")
	flag.DurationVar(&flagConfig.BreakerStall, "edge.breakerStall", flagConfig.BreakerStall, "time without any produce completing, while orders wait for acks, that opens the circuit breaker")
	flag.DurationVar(&flagConfig.BreakerCooldown, "edge.breakerCooldown", flagConfig.BreakerCooldown, "time the circuit breaker stays open before one order probes Kafka")
	flag.DurationVar(&flagConfig.ReconcileAfter, "edge.reconcileAfter", flagConfig.ReconcileAfter, "an order of unknown produce outcome is looked up in the ledger this long after its failure (keep it above the brokers' request timeout)")
	flag.IntVar(&flagConfig.MaxUnknownOrders, "edge.maxUnknownOrders", flagConfig.MaxUnknownOrders, "orders of unknown produce outcome awaiting reconciliation; past it they keep their stock until the edge restarts")
	flag.IntVar(&flagConfig.MaxBatchOrders, "edge.maxBatchOrders", flagConfig.MaxBatchOrders, "order lines per POST /v1/orders/batch (1-10000); more gets 413 (the body is bounded by -edge.maxBodyBytes too: raise both together, ~200 bytes a line)")
	flag.IntVar(&flagConfig.MaxBatchesInFlight, "edge.maxBatchesInFlight", flagConfig.MaxBatchesInFlight, "batches (POST /v1/orders/batch) being answered at once; past it a batch gets 503 at once (each holds up to -edge.maxBatchOrders records, ~1 KiB a line)")
	flag.IntVar(&flagConfig.MaxEventStreams, "edge.maxEventStreams", flagConfig.MaxEventStreams, "open order event streams (GET /v1/orders/{id}/events); past it 503")
	flag.IntVar(&flagConfig.MaxReadsInFlight, "edge.maxReadsInFlight", flagConfig.MaxReadsInFlight, "concurrent ledger reads for GET /v1/orders/{id}; past it 503")
	flag.IntVar(&flagConfig.IdempotencyBytes, "edge.idempotencyBytes", flagConfig.IdempotencyBytes, "memory of the Idempotency-Key cache; a retry after its key was evicted is a new order (the ledger's backstop catches it)")
	flag.BoolVar(&flagConfig.UnsafeNoKafka, "edge.unsafeNoKafka", false, "BENCHMARKS ONLY: answer 202 after admission without producing to Kafka; accepted orders are lost")
	rateFlags("edge.rateGlobal", &flagConfig.RateGlobal, "all orders and reads of this edge")
	rateFlags("edge.ratePerIP", &flagConfig.RatePerIP, "orders and reads per client IP")
	rateFlags("edge.ratePerUser", &flagConfig.RatePerUser, "orders and reads per user")
	flag.IntVar(&flagConfig.RecentOrders, "edge.recentOrders", flagConfig.RecentOrders, "entries (144 bytes each) of the recent-orders table that answers \"accepted\" until the ledger has an order; cover the longest ingest lag you plan for")
}

func rateFlags(name string, l *RateLimit, what string) {
	flag.Float64Var(&l.Rate, name, l.Rate, "token-bucket rate per second for "+what+"; 0 turns the limit off")
	flag.IntVar(&l.Burst, name+"Burst", l.Burst, "token-bucket burst for "+what)
	if l.Slots > 0 {
		flag.IntVar(&l.Slots, name+"Slots", l.Slots, "buckets of the "+name+" table, 8 bytes each; colliding keys share one (limits more, never less)")
	}
}

// JWT flags: key material is read at start.
var (
	jwtHS256Secret     = flag.String("auth.hs256Secret", os.Getenv("FLASHGATE_JWT_HS256_SECRET"), "HS256 secret(s) for --auth jwt, comma-separated for rotation (default $FLASHGATE_JWT_HS256_SECRET; prefer -auth.hs256SecretFile)")
	jwtHS256SecretFile = flag.String("auth.hs256SecretFile", "", "file holding the HS256 secret(s) for --auth jwt, one per line")
	jwtEdDSAKeys       = flag.String("auth.eddsaPublicKey", "", "PEM file(s) of Ed25519 public keys for --auth jwt, comma-separated for rotation")
	jwtIssuer          = flag.String("auth.issuer", "", "required \"iss\" of tokens (empty: not checked)")
	jwtAudience        = flag.String("auth.audience", "", "required \"aud\" of tokens (empty: not checked)")
	apiKeysFile        = flag.String("edge.apiKeysFile", "", "partner API keys, one per line: \"<key> <rate per second> <burst>\"; requests with X-API-Key are limited by their key instead of their IP, unknown keys get 401")
	jwtLeeway          = flag.Duration("auth.leeway", 30*time.Second, "clock skew allowed on exp and nbf")
	paymentProvider    = flag.String("payments.provider", "flashpay", "name of the payment provider whose signed webhooks (HMAC-SHA256, \"Flashgate-Signature: t=...,v1=...\") are taken at POST /v1/payments/{name}/webhook")
	paymentSecretsFile = flag.String("payments.secretsFile", "", "file with the provider's webhook secrets, one per line, newest first (default: $FLASHGATE_WEBHOOK_SECRETS, comma-separated); without secrets webhooks are refused")
)

// FlagConfig returns the configuration set by the command-line flags,
// reading the JWT key files they name.
func FlagConfig() (Config, error) {
	c := flagConfig
	if *apiKeysFile != "" {
		keys, err := LoadAPIKeys(*apiKeysFile)
		if err != nil {
			return c, fmt.Errorf("-edge.apiKeysFile: %w", err)
		}
		c.APIKeys = keys
	}
	hooks := strings.Split(os.Getenv("FLASHGATE_WEBHOOK_SECRETS"), ",")
	if *paymentSecretsFile != "" {
		b, err := os.ReadFile(*paymentSecretsFile)
		if err != nil {
			return c, fmt.Errorf("-payments.secretsFile: %w", err)
		}
		hooks = strings.Split(string(b), "\n")
	}
	var keys [][]byte
	for _, sec := range hooks {
		if sec = strings.TrimSpace(sec); sec != "" {
			keys = append(keys, []byte(sec))
		}
	}
	if len(keys) > 0 {
		p, err := payment.NewHMAC(*paymentProvider, keys...)
		if err != nil {
			return c, err
		}
		c.Payments = append(c.Payments, p)
	}
	c.JWT = JWTConfig{Issuer: *jwtIssuer, Audience: *jwtAudience, Leeway: *jwtLeeway, CacheBytes: 32 << 20}
	secrets := strings.Split(*jwtHS256Secret, ",")
	if *jwtHS256SecretFile != "" {
		b, err := os.ReadFile(*jwtHS256SecretFile)
		if err != nil {
			return c, fmt.Errorf("-auth.hs256SecretFile: %w", err)
		}
		secrets = append(secrets, strings.Split(string(b), "\n")...)
	}
	for _, sec := range secrets {
		if sec = strings.TrimSpace(sec); sec != "" {
			if len(sec) < 32 {
				return c, fmt.Errorf("an HS256 secret is %d bytes; possible fix: use at least 32 random bytes", len(sec))
			}
			c.JWT.HS256Secrets = append(c.JWT.HS256Secrets, []byte(sec))
		}
	}
	for _, path := range strings.Split(*jwtEdDSAKeys, ",") {
		if path = strings.TrimSpace(path); path != "" {
			k, err := LoadEdDSAPublicKey(path)
			if err != nil {
				return c, fmt.Errorf("-auth.eddsaPublicKey: %w", err)
			}
			c.JWT.EdDSAKeys = append(c.JWT.EdDSAKeys, k)
		}
	}
	return c, nil
}

// ParsePrefixes parses a comma list of CIDRs or addresses (--trust-proxy).
func ParsePrefixes(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(list, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("--trust-proxy: %q is neither a CIDR nor an address", s)
			}
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("--trust-proxy: %q is not a CIDR: %v", s, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// parseLimits are the protocol limits the parser enforces.
func (c *Config) parseLimits() parseLimits {
	return parseLimits{requestLine: c.MaxRequestLineBytes, headerBytes: c.MaxHeaderBytes, headers: c.MaxHeaders, body: c.MaxBodyBytes}
}

func (c *Config) loops() int {
	if c.Loops > 0 {
		return c.Loops
	}
	return baseProcs()
}

func (c *Config) validate() error {
	switch {
	case c.Auth != "dev" && c.Auth != "jwt":
		return fmt.Errorf("edge: --auth %q: want dev or jwt", c.Auth)
	case len(c.Brokers) == 0:
		return fmt.Errorf("edge: no Kafka brokers; possible fix: --kafka-brokers host:port")
	case c.loops() > 16:
		return fmt.Errorf("edge: %d event loops, at most 16 fit in an order id; possible fix: -edge.loops 16", c.loops())
	case c.LeaseTTL != 0 && (c.LeaseTTL < 3*time.Second || c.LeaseTTL < 2*c.DeliveryTimeout):
		return fmt.Errorf("edge: -edge.leaseTTL %v: use 0 (off) or at least 3s and twice -edge.deliveryTimeout (%v)", c.LeaseTTL, c.DeliveryTimeout)
	case c.LeaseTTL != 0 && (c.LeaseHorizon < 10*time.Millisecond || c.LeaseMinBlock < 1):
		return fmt.Errorf("edge: -edge.leaseHorizon %v and -edge.leaseMinBlock %d: want at least 10ms and 1", c.LeaseHorizon, c.LeaseMinBlock)
	case c.LeaseWait < 0 || c.LeaseWait > c.DeliveryTimeout:
		return fmt.Errorf("edge: -edge.leaseWait %v: want 0 to -edge.deliveryTimeout (%v): an order's wait for stock and for Kafka together stay within twice that", c.LeaseWait, c.DeliveryTimeout)
	case c.NodeID < 0 || c.NodeID > 63:
		return fmt.Errorf("edge: -edge.nodeID %d outside [0, 63]", c.NodeID)
	case c.MaxRequestLineBytes < 64 || c.MaxHeaderBytes < 256 || c.MaxHeaders < 4 || c.MaxBodyBytes < 64:
		return fmt.Errorf("edge: protocol limits too small to serve the API (need request line >= 64, header bytes >= 256, headers >= 4, body >= 64)")
	case c.MaxPipeline < 1 || c.MaxPipeline > 4096:
		return fmt.Errorf("edge: -edge.maxPipeline must be in [1, 4096]")
	case c.MaxConns < 1 || c.MaxOutputBytes < 4096:
		return fmt.Errorf("edge: -edge.maxConns must be positive and -edge.maxOutputBytes at least 4096")
	case c.HeaderReadTimeout < tickInterval || c.IdleTimeout < tickInterval:
		return fmt.Errorf("edge: -edge.headerReadTimeout and -edge.idleTimeout must be at least %v", tickInterval)
	case c.PurchaseSlots < maxProbeSlots:
		return fmt.Errorf("edge: -edge.purchaseSlots must be at least %d", maxProbeSlots)
	case c.RecentOrders < 1:
		return fmt.Errorf("edge: -edge.recentOrders must be positive")
	case c.MaxBatchOrders < 1 || c.MaxBatchOrders > 10_000 || c.MaxBatchesInFlight < 1:
		return fmt.Errorf("edge: -edge.maxBatchOrders must be in [1, 10000] and -edge.maxBatchesInFlight positive")
	case c.MaxEventStreams < 0:
		return fmt.Errorf("edge: -edge.maxEventStreams must not be negative")
	case c.MaxSKUs < 1 || c.MaxBufferedRecords < 1 || c.MaxReadsInFlight < 1 || c.MaxBufferedBytes < 1 || c.MaxUnknownOrders < 1:
		return fmt.Errorf("edge: -edge.maxSKUs, -edge.maxBufferedRecords, -edge.maxBufferedBytes, -edge.maxReadsInFlight and -edge.maxUnknownOrders must be positive")
	case c.ProduceBatchBytes < 1024 || c.ProduceBatchBytes > 1<<30:
		return fmt.Errorf("edge: -edge.produceBatchBytes must be in [1024, 1 GiB]")
	case c.BreakerFailures < 1 || c.BreakerStall < 10*time.Millisecond || c.BreakerCooldown < 10*time.Millisecond:
		return fmt.Errorf("edge: -edge.breakerFailures must be positive, -edge.breakerStall and -edge.breakerCooldown at least 10ms")
	case c.ProduceLinger < 0 || c.ProduceLinger >= c.DeliveryTimeout || c.ProduceLinger > time.Minute:
		return fmt.Errorf("edge: -edge.produceLinger (%v) must be at least 0 and less than -edge.deliveryTimeout (%v) and a minute", c.ProduceLinger, c.DeliveryTimeout)
	case c.ReconcileAfter < c.DeliveryTimeout:
		return fmt.Errorf("edge: -edge.reconcileAfter (%v) must be at least -edge.deliveryTimeout (%v)", c.ReconcileAfter, c.DeliveryTimeout)
	}
	return nil
}
