package edge

import (
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/flashgate/flashgate/lib/testenv"
)

func TestJWTVerifier(t *testing.T) {
	hsSecret := []byte(strings.Repeat("s", 32))
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	_, otherPriv, _ := ed25519.GenerateKey(rand.Reader)
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	v, err := newJWTVerifier(JWTConfig{HS256Secrets: [][]byte{[]byte(strings.Repeat("old", 11)), hsSecret}, EdDSAKeys: []ed25519.PublicKey{edPub}, Leeway: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	v.now = func() time.Time { return now }
	edOnly, err := newJWTVerifier(JWTConfig{EdDSAKeys: []ed25519.PublicKey{edPub}})
	if err != nil {
		t.Fatal(err)
	}
	edOnly.now = v.now

	claims := func(sub string, exp, nbf time.Duration) jwt.RegisteredClaims {
		c := jwt.RegisteredClaims{Subject: sub, ExpiresAt: jwt.NewNumericDate(now.Add(exp))}
		if nbf != 0 {
			c.NotBefore = jwt.NewNumericDate(now.Add(nbf))
		}
		return c
	}
	sign := func(m jwt.SigningMethod, key any, c jwt.Claims) string {
		s, err := jwt.NewWithClaims(m, c).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	noneTok := sign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims("alice", time.Hour, 0))
	cases := []struct {
		name string
		v    *jwtVerifier
		tok  string
		want string // user, or "" for refused
	}{
		{"hs256", v, sign(jwt.SigningMethodHS256, hsSecret, claims("alice", time.Hour, 0)), "alice"},
		{"eddsa", v, sign(jwt.SigningMethodEdDSA, edPriv, claims("bob", time.Hour, 0)), "bob"},
		{"expired", v, sign(jwt.SigningMethodHS256, hsSecret, claims("alice", -time.Minute, 0)), ""},
		{"not yet valid", v, sign(jwt.SigningMethodHS256, hsSecret, claims("alice", time.Hour, time.Minute)), ""},
		{"no exp", v, sign(jwt.SigningMethodHS256, hsSecret, jwt.RegisteredClaims{Subject: "alice"}), ""},
		{"wrong hs secret", v, sign(jwt.SigningMethodHS256, []byte(strings.Repeat("x", 32)), claims("alice", time.Hour, 0)), ""},
		{"wrong ed key", v, sign(jwt.SigningMethodEdDSA, otherPriv, claims("bob", time.Hour, 0)), ""},
		{"alg none", v, noneTok, ""},
		{"HS256 keyed with the Ed25519 public key (confusion)", edOnly, sign(jwt.SigningMethodHS256, []byte(edPub), claims("eve", time.Hour, 0)), ""},
		{"bad subject", v, sign(jwt.SigningMethodHS256, hsSecret, claims("a b", time.Hour, 0)), ""},
		{"RS-like alg", v, strings.Replace(sign(jwt.SigningMethodHS256, hsSecret, claims("alice", time.Hour, 0)), "eyJhbGciOiJIUzI1NiIs", "eyJhbGciOiJSUzI1NiIs", 1), ""},
		{"garbage", v, "not.a.token", ""},
	}
	for _, c := range cases {
		for round := 0; round < 2; round++ { // the second round hits the cache
			user, err := c.v.user([]byte("Bearer "+c.tok), nil)
			if c.want == "" && err == nil {
				t.Errorf("%s (round %d): accepted as %q", c.name, round, user)
			}
			if c.want != "" && (err != nil || string(user) != c.want) {
				t.Errorf("%s (round %d): %q, %v; want %q", c.name, round, user, err, c.want)
			}
		}
	}
	if _, err := v.user([]byte(cases[0].tok), nil); err == nil {
		t.Error("a token without the Bearer prefix was accepted")
	}

	// A cached token still expires.
	short := sign(jwt.SigningMethodHS256, hsSecret, claims("carol", 10*time.Second, 0))
	if _, err := v.user([]byte("Bearer "+short), nil); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 0, 128)
	auth := []byte("Bearer " + short)
	if n := testing.AllocsPerRun(100, func() { v.user(auth, buf) }); n != 0 {
		t.Errorf("a cached token costs %v allocations", n)
	}
	now = now.Add(12 * time.Second) // past exp + leeway
	if user, err := v.user([]byte("Bearer "+short), nil); err == nil {
		t.Fatalf("expired cached token accepted as %q", user)
	}
}

func TestJWTNeedsAKey(t *testing.T) {
	if _, err := newJWTVerifier(JWTConfig{}); err == nil {
		t.Fatal("--auth jwt without keys accepted")
	}
}

// With --auth jwt the order's user is the token's subject; X-User-ID is ignored.
func TestOrdersWithJWT(t *testing.T) {
	logs := captureLogs(t)
	secret := []byte(strings.Repeat("k", 32))
	kf := testenv.Broker(t, 1)
	s := startTestEdge(t, kf, "J-1", 5, func(c *Config) {
		c.Auth = "jwt"
		c.JWT = JWTConfig{HS256Secrets: [][]byte{secret}, CacheBytes: 1 << 20}
	})
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{Subject: "jwt-user", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		auth, user string
		want       int
	}{{"Bearer " + tok, "someone-else", 202}, {"", "someone-else", 401}, {"Bearer " + tok + "x", "", 401}} {
		req, _ := http.NewRequest("POST", "http://"+s.cfg.Addr+"/v1/orders", strings.NewReader(`{"sku":"J-1","qty":1}`))
		if c.auth != "" {
			req.Header.Set("Authorization", c.auth)
		}
		if c.user != "" {
			req.Header.Set("X-User-ID", c.user)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != c.want || c.want == 202 && !strings.Contains(string(b), `"user_id":"jwt-user"`) {
			t.Errorf("auth %.20q: %d %s, want %d", c.auth, resp.StatusCode, b, c.want)
		}
	}
	// Neither the tokens (good or bad) nor the key reach the logs.
	logs.assertNotLogged(t, tok, tok[strings.LastIndexByte(tok, '.')+1:], string(secret))
}
