package edge

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/maphash"
	"os"
	"time"

	"github.com/VictoriaMetrics/fastcache"
	"github.com/golang-jwt/jwt/v5"

	"github.com/flashgate/flashgate/lib/order"
)

// JWTConfig configures --auth jwt: HS256 secrets and/or Ed25519 public keys
// (several of each, for rotation). A token's algorithm picks the key set, so
// an HS256 token can never be checked against an Ed25519 key (no algorithm
// confusion), and "none" is never accepted.
type JWTConfig struct {
	HS256Secrets [][]byte
	EdDSAKeys    []ed25519.PublicKey
	Issuer       string        // required "iss" when set
	Audience     string        // required in "aud" when set
	Leeway       time.Duration // clock skew allowed on exp/nbf
	CacheBytes   int           // verified tokens remembered (by 128-bit hash)
}

// LoadEdDSAPublicKey reads a PEM "PUBLIC KEY" (PKIX) Ed25519 key.
func LoadEdDSAPublicKey(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("%s: no PEM block; possible fix: a PKIX \"PUBLIC KEY\" PEM file (openssl pkey -pubout)", path)
	}
	k, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ek, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s: not an Ed25519 public key", path)
	}
	return ek, nil
}

// jwtVerifier verifies bearer tokens and remembers verified ones, so the hot
// path of a client reusing its token is one hash and one cache lookup.
type jwtVerifier struct {
	cfg          JWTConfig
	parser       *jwt.Parser
	cache        *fastcache.Cache
	seed1, seed2 maphash.Seed
	now          func() time.Time
}

func newJWTVerifier(cfg JWTConfig) (*jwtVerifier, error) {
	var methods []string
	if len(cfg.HS256Secrets) > 0 {
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	if len(cfg.EdDSAKeys) > 0 {
		methods = append(methods, jwt.SigningMethodEdDSA.Alg())
	}
	if len(methods) == 0 {
		return nil, errors.New("--auth jwt needs a key; possible fix: -auth.hs256Secret, -auth.hs256SecretFile or -auth.eddsaPublicKey")
	}
	v := &jwtVerifier{cfg: cfg, cache: fastcache.New(max(cfg.CacheBytes, 1<<20)), seed1: maphash.MakeSeed(), seed2: maphash.MakeSeed(), now: time.Now}
	opts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithExpirationRequired(), jwt.WithLeeway(cfg.Leeway),
		jwt.WithTimeFunc(func() time.Time { return v.now() })}
	if cfg.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.Issuer))
	}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// user returns the verified subject of an "Authorization: Bearer" value,
// appended to buf, or an error saying what is wrong.
func (v *jwtVerifier) user(auth, buf []byte) ([]byte, error) {
	tok, ok := bytes.CutPrefix(auth, []byte("Bearer "))
	if !ok || len(tok) == 0 {
		return nil, errors.New("an Authorization: Bearer <JWT> header is required")
	}
	var k [16]byte
	binary.LittleEndian.PutUint64(k[:8], maphash.Bytes(v.seed1, tok))
	binary.LittleEndian.PutUint64(k[8:], maphash.Bytes(v.seed2, tok))
	nowUnix := v.now().Unix()
	if c := v.cache.Get(buf[:0], k[:]); len(c) > 8 {
		if exp := int64(binary.LittleEndian.Uint64(c[:8])); nowUnix < exp {
			return c[8:], nil
		}
		v.cache.Del(k[:])
		return nil, errors.New("token expired")
	}
	// First sight of this token: verify it (allocates; once per token).
	claims := jwt.RegisteredClaims{}
	if _, err := v.parser.ParseWithClaims(string(tok), &claims, v.key); err != nil {
		return nil, fmt.Errorf("invalid token: %w", err)
	}
	if !order.ValidUserID(claims.Subject) {
		return nil, errors.New("token subject must be 1-64 bytes of [A-Za-z0-9_-]")
	}
	// exp is required and nbf checked by the parser (with the leeway).
	exp := claims.ExpiresAt.Add(v.cfg.Leeway).Unix()
	val := binary.LittleEndian.AppendUint64(buf[:0], uint64(exp))
	v.cache.Set(k[:], append(val, claims.Subject...))
	return append(buf[:0], claims.Subject...), nil
}

// key picks the key set by the token's algorithm, which WithValidMethods has
// already restricted to the configured ones. Several keys: try each.
func (v *jwtVerifier) key(t *jwt.Token) (any, error) {
	switch t.Method.Alg() {
	case jwt.SigningMethodHS256.Alg():
		return jwt.VerificationKeySet{Keys: toKeys(v.cfg.HS256Secrets)}, nil
	case jwt.SigningMethodEdDSA.Alg():
		return jwt.VerificationKeySet{Keys: toKeys(v.cfg.EdDSAKeys)}, nil
	}
	return nil, fmt.Errorf("algorithm %q not accepted", t.Method.Alg())
}

func toKeys[K any](ks []K) []jwt.VerificationKey {
	out := make([]jwt.VerificationKey, len(ks))
	for i, k := range ks {
		out[i] = k
	}
	return out
}
