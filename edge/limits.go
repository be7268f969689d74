package edge

import (
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/flashgate/flashgate/lib/order"

	"github.com/flashgate/flashgate/lib/ratelimit"
)

// RateLimit is one token-bucket limit: rate per second and burst. A zero rate
// turns the limit off.
type RateLimit struct {
	Rate  float64
	Burst int
	Slots int // per-key tables only: buckets (8 bytes each), shared by colliding keys
}

func (l RateLimit) on() bool { return l.Rate > 0 }

// windowSec is the time a drained bucket takes to fill: the policy's window.
func (l RateLimit) windowSec() int { return max(1, int(math.Ceil(float64(l.Burst)/l.Rate))) }

// limiters are the edge's rate limits: global (split across shards), per
// client IP, per user. All preallocated; checking them does not allocate.
type limiters struct {
	global    []*ratelimit.Bucket // one per shard
	perIP     *ratelimit.Table
	perUser   *ratelimit.Table
	cfgGlobal RateLimit
	cfgIP     RateLimit
	cfgUser   RateLimit
	// apiKeys are the partners' keys, each with its own bucket (read-only
	// after start). A request with a key is limited by it instead of by its IP.
	apiKeys map[string]apiKeyLimit
}

type apiKeyLimit struct {
	bucket *ratelimit.Bucket
	limit  RateLimit
}

func newLimiters(cfg *Config) (*limiters, error) {
	l := &limiters{cfgGlobal: cfg.RateGlobal, cfgIP: cfg.RatePerIP, cfgUser: cfg.RatePerUser, apiKeys: map[string]apiKeyLimit{}}
	for key, lim := range cfg.APIKeys {
		b, err := ratelimit.NewBucket(lim.Rate, lim.Burst)
		if err != nil {
			return nil, fmt.Errorf("API key %.4s…: %w", key, err)
		}
		l.apiKeys[key] = apiKeyLimit{b, lim}
	}
	if l.cfgGlobal.on() {
		n := cfg.loops()
		for i := 0; i < n; i++ {
			b, err := ratelimit.NewBucket(l.cfgGlobal.Rate/float64(n), max(1, l.cfgGlobal.Burst/n))
			if err != nil {
				return nil, fmt.Errorf("-edge.rateGlobal: %w", err)
			}
			l.global = append(l.global, b)
		}
	}
	var err error
	if l.cfgIP.on() {
		if l.perIP, err = ratelimit.NewTable(l.cfgIP.Slots, l.cfgIP.Rate, l.cfgIP.Burst); err != nil {
			return nil, fmt.Errorf("-edge.ratePerIP: %w", err)
		}
	}
	if l.cfgUser.on() {
		if l.perUser, err = ratelimit.NewTable(l.cfgUser.Slots, l.cfgUser.Rate, l.cfgUser.Burst); err != nil {
			return nil, fmt.Errorf("-edge.ratePerUser: %w", err)
		}
	}
	return l, nil
}

// limited is a refusal by one of the limits.
type limited struct {
	d      ratelimit.Decision
	name   string
	detail string
	limit  RateLimit
	total  interface{ Inc() }
}

// errUnknownAPIKey marks a request whose X-API-Key is not configured.
var errUnknownAPIKey = limited{name: "api-key", detail: "unknown X-API-Key"}

// check applies the limits, most specific first, to a request of user from ip
// on shard, with an optional partner API key; ok is true when all allow it.
// A request refused by one limit has not spent tokens of the ones after it
// (the ones before it it has). A request with an unknown API key is refused
// as errUnknownAPIKey.
func (l *limiters) check(shard int, user []byte, ip [16]byte, apiKey []byte, nowNs int64) (limited, bool) {
	if l.perUser != nil {
		if d := l.perUser.AllowKey(user, nowNs); !d.Allowed {
			return limited{d, "user", "too many requests for this user; retry after Retry-After seconds", l.cfgUser, limitedUserTotal}, false
		}
	}
	if len(apiKey) > 0 {
		k, ok := l.apiKeys[string(apiKey)]
		if !ok {
			return errUnknownAPIKey, false
		}
		if d := k.bucket.Allow(nowNs); !d.Allowed {
			return limited{d, "api-key", "too many requests for this API key; retry after Retry-After seconds", k.limit, limitedAPIKeyTotal}, false
		}
	} else if l.perIP != nil {
		if d := l.perIP.AllowKey(ip[:], nowNs); !d.Allowed {
			return limited{d, "ip", "too many requests from this address; retry after Retry-After seconds", l.cfgIP, limitedIPTotal}, false
		}
	}
	if l.global != nil {
		if d := l.global[shard%len(l.global)].Allow(nowNs); !d.Allowed {
			return limited{d, "global", "the edge is at its request rate; retry after Retry-After seconds", l.cfgGlobal, limitedGlobalTotal}, false
		}
	}
	return limited{}, true
}

// LoadAPIKeys reads partner API keys: one per line, "<key> <rate per second>
// <burst>"; blank lines and lines starting with # are skipped.
func LoadAPIKeys(path string) (map[string]RateLimit, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	keys := map[string]RateLimit{}
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("%s:%d: want \"<key> <rate per second> <burst>\"", path, n+1)
		}
		rate, err1 := strconv.ParseFloat(f[1], 64)
		burst, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil || rate <= 0 || burst < 1 {
			return nil, fmt.Errorf("%s:%d: rate must be a positive number and burst a positive integer", path, n+1)
		}
		if len(f[0]) < 16 || !order.ValidIdemKey(f[0]) {
			return nil, fmt.Errorf("%s:%d: an API key must be 16-255 visible ASCII bytes", path, n+1)
		}
		if _, dup := keys[f[0]]; dup {
			return nil, fmt.Errorf("%s:%d: the key is listed twice", path, n+1)
		}
		keys[f[0]] = RateLimit{Rate: rate, Burst: burst}
	}
	return keys, nil
}
