package broker

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

const (
	testTopic    = "security.test"
	testUser     = "orders-svc"
	testPassword = "Right-Pa55word-7f3c"
	wrongPass    = "Wrong-Pa55word-91ab"
)

// startKfake starts a one-broker cluster on 127.0.0.1 with testTopic.
func startKfake(t *testing.T, opts ...kfake.Opt) (*kfake.Cluster, string) {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(1, testTopic)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	addr := c.ListenAddrs()[0]
	if host, _, _ := net.SplitHostPort(addr); host != "127.0.0.1" {
		t.Fatalf("kfake listens on %s, want loopback", addr)
	}
	return c, addr
}

// answerPlainLikeKafka makes c refuse a wrong PLAIN password the way Apache
// Kafka does, with SASL_AUTHENTICATION_FAILED and a message; kfake itself
// hangs up, which clients see as a bare EOF.
func answerPlainLikeKafka(c *kfake.Cluster, pass string) {
	c.ControlKey(int16(kmsg.SASLAuthenticate), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := kreq.(*kmsg.SASLAuthenticateRequest)
		parts := strings.SplitN(string(req.SASLAuthBytes), "\x00", 3)
		if len(parts) == 3 && parts[2] == pass {
			return nil, nil, false // kfake logs the user in
		}
		resp := req.ResponseKind().(*kmsg.SASLAuthenticateResponse)
		resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
		msg := "Authentication failed: Invalid username or password"
		resp.ErrorMessage = &msg
		return resp, nil, true
	})
}

// roundTrip connects with sec, then produces a record and consumes it back.
// A connection that fails returns Ping's error: the first one a client sees.
func roundTrip(t *testing.T, addr string, sec Security) error {
	t.Helper()
	opts, err := sec.Opts()
	if err != nil {
		t.Fatalf("Opts: %v", err)
	}
	cl, err := kgo.NewClient(append(opts,
		kgo.SeedBrokers(addr),
		kgo.ConsumeTopics(testTopic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DialTimeout(5*time.Second),
	)...)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := cl.Ping(ctx); err != nil {
		return err
	}
	value := []byte(fmt.Sprint("order-", time.Now().UnixNano()))
	if err := cl.ProduceSync(ctx, &kgo.Record{Topic: testTopic, Key: []byte("u1"), Value: value}).FirstErr(); err != nil {
		t.Fatalf("connected, but produce failed: %v", err)
	}
	for {
		fs := cl.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatalf("connected, but consume failed: %v", err)
		}
		for _, r := range fs.Records() {
			if bytes.Equal(r.Value, value) {
				return nil
			}
		}
	}
}

func TestSASLRoundTrip(t *testing.T) {
	ca := newTestCA(t)
	for _, c := range []struct {
		mech, kfakeMethod string
		tls               bool // PLAIN is refused without TLS
	}{
		{SASLSCRAMSHA256, "SCRAM-SHA-256", false},
		{SASLSCRAMSHA512, "SCRAM-SHA-512", false},
		{SASLPlain, "PLAIN", true},
		{"SCRAM-SHA-512", "SCRAM-SHA-512", false}, // Kafka's own spelling works too
	} {
		t.Run(c.mech, func(t *testing.T) {
			opts := []kfake.Opt{kfake.EnableSASL(), kfake.Superuser(c.kfakeMethod, testUser, testPassword)}
			sec := Security{SASLMechanism: c.mech, SASLUser: testUser, SASLPassword: testPassword}
			if c.tls {
				opts = append(opts, kfake.TLS(ca.serverConfig(t, "")))
				sec.TLS, sec.TLSCAFile = true, ca.caFile
			}
			cluster, addr := startKfake(t, opts...)
			if c.kfakeMethod == "PLAIN" {
				answerPlainLikeKafka(cluster, testPassword)
			}
			if err := roundTrip(t, addr, sec); err != nil {
				t.Fatalf("right credentials: %v", sec.Explain(err))
			}

			bad := sec
			bad.SASLPassword = wrongPass
			err := bad.Explain(roundTrip(t, addr, bad))
			if err == nil {
				t.Fatal("a wrong password connected")
			}
			t.Logf("wrong password: %v", err)
			if !strings.Contains(err.Error(), "possible fix: check --kafka-sasl-user") || !strings.Contains(err.Error(), "$"+EnvSASLPassword) {
				t.Errorf("wrong password: %v; want it to point at the user and $%s", err, EnvSASLPassword)
			}
			if strings.Contains(err.Error(), wrongPass) || strings.Contains(err.Error(), testPassword) {
				t.Fatalf("the error shows a password: %v", err)
			}

			none := Security{TLS: sec.TLS, TLSCAFile: sec.TLSCAFile}
			err = none.Explain(roundTrip(t, addr, none))
			if err == nil {
				t.Fatal("a client without SASL connected to a SASL broker")
			}
			t.Logf("no SASL: %v", err)
		})
	}
}

func TestTLSRoundTrip(t *testing.T) {
	ca := newTestCA(t)
	_, addr := startKfake(t, kfake.TLS(ca.serverConfig(t, "")))

	if err := roundTrip(t, addr, Security{TLS: true, TLSCAFile: ca.caFile}); err != nil {
		t.Fatalf("TLS with the CA file: %v", err)
	}

	// Without the CA file the system's roots apply, and they do not know
	// our CA; neither does another CA's file.
	other := newTestCA(t)
	for _, sec := range []Security{{TLS: true}, {TLS: true, TLSCAFile: other.caFile}} {
		err := sec.Explain(roundTrip(t, addr, sec))
		if err == nil {
			t.Fatalf("%v connected: the broker's certificate was not verified", sec)
		}
		if !strings.Contains(err.Error(), "certificate signed by unknown authority") || !strings.Contains(err.Error(), "possible fix: --kafka-tls-ca") {
			t.Errorf("%v: %v; want the unknown authority and --kafka-tls-ca", sec, err)
		}
		t.Logf("%v: %v", sec, err)
	}

	if err := roundTrip(t, addr, Security{}); err == nil {
		t.Fatal("a plaintext client talked to a TLS listener")
	}

	// A certificate for another name than the one dialled.
	_, misnamed := startKfake(t, kfake.TLS(ca.serverConfig(t, "broker.invalid")))
	sec := Security{TLS: true, TLSCAFile: ca.caFile}
	if err := sec.Explain(roundTrip(t, misnamed, sec)); err == nil || !strings.Contains(err.Error(), "possible fix: --kafka-brokers with a host name") {
		t.Errorf("certificate for another name: %v; want a pointer to --kafka-brokers", err)
	}
}

// Brokers that require client certificates (ssl.client.auth=required).
func TestMutualTLSRoundTrip(t *testing.T) {
	ca := newTestCA(t)
	sc := ca.serverConfig(t, "")
	sc.ClientAuth = tls.RequireAndVerifyClientCert
	sc.ClientCAs = ca.pool
	_, addr := startKfake(t, kfake.TLS(sc))

	certFile, keyFile := ca.issueFiles(t, "client", false)
	if err := roundTrip(t, addr, Security{TLS: true, TLSCAFile: ca.caFile, TLSCertFile: certFile, TLSKeyFile: keyFile}); err != nil {
		t.Fatalf("mTLS with a client certificate: %v", err)
	}
	otherCert, otherKey := newTestCA(t).issueFiles(t, "client", false)
	for _, sec := range []Security{
		{TLS: true, TLSCAFile: ca.caFile},                                               // no client certificate
		{TLS: true, TLSCAFile: ca.caFile, TLSCertFile: otherCert, TLSKeyFile: otherKey}, // another CA's
	} {
		err := sec.Explain(roundTrip(t, addr, sec))
		if err == nil {
			t.Fatalf("%v connected to a broker requiring a certificate from its CA", sec)
		}
		if !strings.Contains(err.Error(), "possible fix: --kafka-tls-cert and --kafka-tls-key") {
			t.Errorf("%v: %v; want a pointer to --kafka-tls-cert", sec, err)
		}
		t.Logf("%v: %v", sec, err)
	}
}

func TestOptsRefusesBadSettings(t *testing.T) {
	ca := newTestCA(t)
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	os.WriteFile(notPEM, []byte("hello"), 0o600)
	certFile, keyFile := ca.issueFiles(t, "client", false)
	_, otherKey := ca.issueFiles(t, "other", false)
	scram := func(s Security) Security {
		s.SASLMechanism, s.SASLUser, s.SASLPassword = SASLSCRAMSHA512, testUser, testPassword
		return s
	}
	for _, c := range []struct {
		name string
		sec  Security
		want string
	}{
		{"ca without tls", Security{TLSCAFile: ca.caFile}, "possible fix: add --kafka-tls"},
		{"cert without key", Security{TLS: true, TLSCertFile: certFile}, "--kafka-tls-cert and --kafka-tls-key go together"},
		{"key without cert", Security{TLS: true, TLSKeyFile: keyFile}, "--kafka-tls-cert and --kafka-tls-key go together"},
		{"missing ca file", Security{TLS: true, TLSCAFile: filepath.Join(dir, "nope.pem")}, "--kafka-tls-ca: open"},
		{"ca file not PEM", Security{TLS: true, TLSCAFile: notPEM}, "holds no PEM certificate"},
		{"key of another cert", Security{TLS: true, TLSCertFile: certFile, TLSKeyFile: otherKey}, "private key does not match"},
		{"unknown mechanism", Security{SASLMechanism: "gssapi", SASLUser: testUser, SASLPassword: testPassword}, "--kafka-sasl-mechanism=gssapi is unknown"},
		{"user without mechanism", Security{SASLUser: testUser}, "--kafka-sasl-user is set but no --kafka-sasl-mechanism"},
		{"password without mechanism", Security{SASLPassword: testPassword}, "$FLASHGATE_KAFKA_SASL_PASSWORD is set but no --kafka-sasl-mechanism"},
		{"plain without user", Security{TLS: true, SASLMechanism: "plain", SASLPassword: testPassword}, "kafka: --kafka-sasl-user is required with --kafka-sasl-mechanism=plain"},
		{"scram without password", Security{SASLMechanism: SASLSCRAMSHA256, SASLUser: testUser}, "possible fix: set $FLASHGATE_KAFKA_SASL_PASSWORD"},
		{"plain without tls", Security{SASLMechanism: SASLPlain, SASLUser: testUser, SASLPassword: testPassword}, "sends the password in clear"},
		{"scram and a bad ca", scram(Security{TLS: true, TLSCAFile: notPEM}), "holds no PEM certificate"},
	} {
		opts, err := c.sec.Opts()
		switch {
		case err == nil:
			t.Errorf("%s: no error, %d options", c.name, len(opts))
		case !strings.Contains(err.Error(), c.want):
			t.Errorf("%s: %v; want it to say %q", c.name, err, c.want)
		case strings.Contains(err.Error(), testPassword):
			t.Errorf("%s: the error shows the password: %v", c.name, err)
		}
	}

	for _, ok := range []Security{{}, {TLS: true}, scram(Security{}), scram(Security{TLS: true, TLSCAFile: ca.caFile, TLSCertFile: certFile, TLSKeyFile: keyFile})} {
		opts, err := ok.Opts()
		if err != nil {
			t.Errorf("%v: %v", ok, err)
		}
		if want := btoi(ok.TLS) + btoi(ok.SASLMechanism != ""); len(opts) != want {
			t.Errorf("%v: %d options, want %d", ok, len(opts), want)
		}
	}
}

func TestExplainLeavesOtherErrorsAlone(t *testing.T) {
	sec := Security{SASLMechanism: SASLSCRAMSHA512, SASLUser: testUser, SASLPassword: testPassword}
	if err := sec.Explain(nil); err != nil {
		t.Fatalf("Explain(nil) = %v", err)
	}
	other := errors.New("UNKNOWN_TOPIC_OR_PARTITION")
	if err := sec.Explain(other); err != other {
		t.Fatalf("Explain changed an unrelated error: %v", err)
	}
	// Without SASL a hang-up is not blamed on a password.
	if err := (&Security{}).Explain(io.EOF); err != io.EOF {
		t.Fatalf("Explain blamed SASL without SASL: %v", err)
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestRegisterFlags(t *testing.T) {
	t.Setenv(EnvSASLPassword, testPassword)
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	sec := RegisterFlags(fs)
	err := fs.Parse([]string{"--kafka-tls", "--kafka-tls-ca", "/ca.pem", "--kafka-tls-cert", "/c.pem", "--kafka-tls-key", "/k.pem",
		"--kafka-sasl-mechanism", "scram-sha-512", "--kafka-sasl-user", testUser})
	if err != nil {
		t.Fatal(err)
	}
	want := Security{TLS: true, TLSCAFile: "/ca.pem", TLSCertFile: "/c.pem", TLSKeyFile: "/k.pem", SASLMechanism: SASLSCRAMSHA512, SASLUser: testUser, SASLPassword: testPassword}
	if *sec != want {
		t.Fatalf("flags gave %#v, want %#v", *sec, want)
	}
	if fs.Lookup("kafka-sasl-password") != nil {
		t.Fatal("a password flag exists: it would show in ps")
	}
	var usage bytes.Buffer
	fs.SetOutput(&usage)
	fs.PrintDefaults()
	if strings.Contains(usage.String(), testPassword) {
		t.Fatalf("the usage text shows the password:\n%s", usage.String())
	}
}

// The password must not leak through any way a Security is printed.
func TestSecurityPrintsNoPassword(t *testing.T) {
	sec := Security{TLS: true, TLSCAFile: "/ca.pem", SASLMechanism: SASLPlain, SASLUser: testUser, SASLPassword: testPassword}
	// A config that holds it in an exported field prints through String too
	// (fmt cannot call methods on unexported fields: keep it exported).
	type config struct{ Kafka Security }
	var out bytes.Buffer
	fmt.Fprintf(&out, "%v %+v %#v %s %v %+v %#v %+v\n", sec, sec, sec, &sec, &sec, &sec, &sec, config{sec})
	slog.New(slog.NewJSONHandler(&out, nil)).Info("kafka", "security", sec, "ptr", &sec)
	slog.New(slog.NewTextHandler(&out, nil)).Info("kafka", "security", sec, "ptr", &sec)
	if strings.Contains(out.String(), testPassword) {
		t.Fatalf("the password shows:\n%s", out.String())
	}
	if !strings.Contains(out.String(), "user="+testUser) || !strings.Contains(out.String(), "password=(redacted)") {
		t.Fatalf("the description lacks the user or the redaction:\n%s", out.String())
	}
}

// testCA is a CA made for one test, with its certificate in a PEM file.
type testCA struct {
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	pool   *x509.CertPool
	caFile string
	dir    string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "flashgate test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, pool: x509.NewCertPool(), dir: t.TempDir()}
	ca.pool.AddCert(cert)
	ca.caFile = filepath.Join(ca.dir, "ca.pem")
	writePEM(t, ca.caFile, "CERTIFICATE", der)
	return ca
}

// issue signs a leaf certificate: a server's for the DNS name, or for
// 127.0.0.1 when name is "", else a client's.
func (ca *testCA) issue(t *testing.T, name string, server bool) (certDER, keyDER []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	switch {
	case server && name == "":
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	case server:
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{name}
	}
	certDER, err = x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err = x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return certDER, keyDER
}

// issueFiles writes a leaf certificate and its key as PEM files.
func (ca *testCA) issueFiles(t *testing.T, name string, server bool) (certFile, keyFile string) {
	t.Helper()
	certDER, keyDER := ca.issue(t, name, server)
	certFile, keyFile = filepath.Join(ca.dir, name+".pem"), filepath.Join(ca.dir, name+"-key.pem")
	writePEM(t, certFile, "CERTIFICATE", certDER)
	writePEM(t, keyFile, "PRIVATE KEY", keyDER)
	return certFile, keyFile
}

// serverConfig is a broker's TLS configuration with a certificate for the
// DNS name, or for 127.0.0.1 when name is "".
func (ca *testCA) serverConfig(t *testing.T, name string) *tls.Config {
	t.Helper()
	certDER, keyDER := ca.issue(t, name, true)
	key, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{{Certificate: [][]byte{certDER}, PrivateKey: key}},
	}
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
