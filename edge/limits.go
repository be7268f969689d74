package edge

import (
	"fmt"
	"math"

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
}

func newLimiters(cfg *Config) (*limiters, error) {
	l := &limiters{cfgGlobal: cfg.RateGlobal, cfgIP: cfg.RatePerIP, cfgUser: cfg.RatePerUser}
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

// check applies the limits, most specific first, to a request of user from ip
// on shard; ok is true when all allow it. A request refused by one limit has
// not spent tokens of the ones after it (the ones before it it has).
func (l *limiters) check(shard int, user []byte, ip [16]byte, nowNs int64) (limited, bool) {
	if l.perUser != nil {
		if d := l.perUser.AllowKey(user, nowNs); !d.Allowed {
			return limited{d, "user", "too many requests for this user; retry after Retry-After seconds", l.cfgUser, limitedUserTotal}, false
		}
	}
	if l.perIP != nil {
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
