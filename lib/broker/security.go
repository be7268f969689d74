package broker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// EnvSASLPassword names the environment variable holding the SASL password.
// It is never a flag: flags show in ps and in /proc/<pid>/cmdline.
const EnvSASLPassword = "FLASHGATE_KAFKA_SASL_PASSWORD"

// The SASL mechanisms Security accepts, as written in --kafka-sasl-mechanism.
const (
	SASLPlain       = "plain"
	SASLSCRAMSHA256 = "scram-sha-256"
	SASLSCRAMSHA512 = "scram-sha-512"
)

// Security is how clients authenticate to a real Kafka cluster and encrypt
// their traffic. The zero value is plaintext without SASL, which is what the
// embedded broker speaks.
//
// Its String, GoString and LogValue never show SASLPassword, so a Security
// may be printed or logged; errors from Opts never contain it either.
type Security struct {
	// TLS dials brokers over TLS (Kafka's SSL / SASL_SSL listeners).
	TLS bool
	// TLSCAFile is a PEM file of the CAs that sign the brokers'
	// certificates; empty: the system's roots. There is deliberately no
	// "skip verify": an unverified TLS connection hands a PLAIN password to
	// whoever answers; put a private CA here instead.
	TLSCAFile string
	// TLSCertFile and TLSKeyFile are the client's PEM certificate and key,
	// for brokers that require client certificates (mTLS); both or neither.
	TLSCertFile, TLSKeyFile string

	// SASLMechanism is "" (no SASL), SASLPlain, SASLSCRAMSHA256 or
	// SASLSCRAMSHA512 (case does not matter).
	SASLMechanism string
	SASLUser      string
	// SASLPassword comes from EnvSASLPassword when the Security was made by
	// RegisterFlags.
	SASLPassword string
}

// RegisterFlags defines the --kafka-tls* and --kafka-sasl-* flags on fs and
// returns the Security they fill once fs is parsed. SASLPassword is read
// from EnvSASLPassword now (environments do not change after start).
func RegisterFlags(fs *flag.FlagSet) *Security {
	s := &Security{SASLPassword: os.Getenv(EnvSASLPassword)}
	fs.BoolVar(&s.TLS, "kafka-tls", false, "dial the Kafka brokers over TLS (their SSL or SASL_SSL listener)")
	fs.StringVar(&s.TLSCAFile, "kafka-tls-ca", "", "PEM file of the CAs that sign the Kafka brokers' certificates (with --kafka-tls; default: the system's roots)")
	fs.StringVar(&s.TLSCertFile, "kafka-tls-cert", "", "PEM client certificate for brokers that require one (with --kafka-tls and --kafka-tls-key)")
	fs.StringVar(&s.TLSKeyFile, "kafka-tls-key", "", "PEM private key of --kafka-tls-cert")
	fs.StringVar(&s.SASLMechanism, "kafka-sasl-mechanism", "", "SASL authentication to Kafka: plain (needs --kafka-tls), scram-sha-256 or scram-sha-512; empty: none. The password is read from $"+EnvSASLPassword)
	fs.StringVar(&s.SASLUser, "kafka-sasl-user", "", "SASL user name (with --kafka-sasl-mechanism); the password comes from $"+EnvSASLPassword)
	return s
}

// validate says what to change when the settings do not make a working,
// safe client. Its errors never contain the password.
func (s *Security) validate() error {
	mech := strings.ToLower(s.SASLMechanism)
	switch {
	case !s.TLS && (s.TLSCAFile != "" || s.TLSCertFile != "" || s.TLSKeyFile != ""):
		return fmt.Errorf("kafka: --kafka-tls-ca, --kafka-tls-cert and --kafka-tls-key only apply with TLS; possible fix: add --kafka-tls")
	case (s.TLSCertFile == "") != (s.TLSKeyFile == ""):
		return fmt.Errorf("kafka: --kafka-tls-cert and --kafka-tls-key go together; possible fix: give both (or neither)")
	case mech != "" && mech != SASLPlain && mech != SASLSCRAMSHA256 && mech != SASLSCRAMSHA512:
		return fmt.Errorf("kafka: --kafka-sasl-mechanism=%s is unknown; possible fix: one of %s, %s, %s", s.SASLMechanism, SASLPlain, SASLSCRAMSHA256, SASLSCRAMSHA512)
	case mech == "" && s.SASLUser != "":
		return fmt.Errorf("kafka: --kafka-sasl-user is set but no --kafka-sasl-mechanism; possible fix: add --kafka-sasl-mechanism=%s (or whichever the brokers use)", SASLSCRAMSHA512)
	case mech == "" && s.SASLPassword != "":
		return fmt.Errorf("kafka: $%s is set but no --kafka-sasl-mechanism; possible fix: add --kafka-sasl-mechanism and --kafka-sasl-user, or unset $%s", EnvSASLPassword, EnvSASLPassword)
	case mech != "" && s.SASLUser == "":
		return fmt.Errorf("kafka: --kafka-sasl-user is required with --kafka-sasl-mechanism=%s", mech)
	case mech != "" && s.SASLPassword == "":
		return fmt.Errorf("kafka: --kafka-sasl-mechanism=%s needs a password; possible fix: set $%s", mech, EnvSASLPassword)
	case mech == SASLPlain && !s.TLS:
		// Kafka allows it (SASL_PLAINTEXT), but PLAIN sends the password as
		// is: anyone on the path reads it. SCRAM never sends it.
		return fmt.Errorf("kafka: --kafka-sasl-mechanism=plain without TLS sends the password in clear; possible fix: add --kafka-tls, or use scram-sha-512")
	}
	return nil
}

// Opts validates s and returns the franz-go options that apply it: none for
// the zero value. Files are read now, so a bad path fails at start-up.
func (s *Security) Opts() ([]kgo.Opt, error) {
	if err := s.validate(); err != nil {
		return nil, err
	}
	var opts []kgo.Opt
	if s.TLS {
		c, err := s.tlsConfig()
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.DialTLSConfig(c))
	}
	if m := s.saslMechanism(); m != nil {
		opts = append(opts, kgo.SASL(m))
	}
	return opts, nil
}

// tlsConfig builds the client's TLS configuration. ServerName stays empty:
// franz-go sets it per broker from the address it dials.
func (s *Security) tlsConfig() (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if s.TLSCAFile != "" {
		pem, err := os.ReadFile(s.TLSCAFile)
		if err != nil {
			return nil, fmt.Errorf("kafka: --kafka-tls-ca: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kafka: --kafka-tls-ca %s holds no PEM certificate; possible fix: give the CA's certificate (-----BEGIN CERTIFICATE-----)", s.TLSCAFile)
		}
	}
	if s.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(s.TLSCertFile, s.TLSKeyFile)
		if err != nil {
			// crypto/tls's messages name the problem, never the key's bytes.
			return nil, fmt.Errorf("kafka: --kafka-tls-cert %s / --kafka-tls-key %s: %w", s.TLSCertFile, s.TLSKeyFile, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

func (s *Security) saslMechanism() sasl.Mechanism {
	switch strings.ToLower(s.SASLMechanism) {
	case SASLPlain:
		return plain.Auth{User: s.SASLUser, Pass: s.SASLPassword}.AsMechanism()
	case SASLSCRAMSHA256:
		return scram.Auth{User: s.SASLUser, Pass: s.SASLPassword}.AsSha256Mechanism()
	case SASLSCRAMSHA512:
		return scram.Auth{User: s.SASLUser, Pass: s.SASLPassword}.AsSha512Mechanism()
	}
	return nil
}

// Explain adds to an error of connecting with s (from Ping or the first
// request at start-up) what to change, when the error tells which setting is
// wrong. Other errors, and nil, come back as they were.
//
// It exists because the rawest failures say little: kfake, like brokers
// before Kafka 1.0, hangs up on a wrong SASL password instead of answering
// SASL_AUTHENTICATION_FAILED, and franz-go reports a bare "EOF".
func (s *Security) Explain(err error) error {
	mech := strings.ToLower(s.SASLMechanism)
	var (
		firstEOF  *kgo.ErrFirstReadEOF
		unknownCA x509.UnknownAuthorityError
		hostname  x509.HostnameError
		op        *net.OpError
	)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kerr.SaslAuthenticationFailed):
		return fmt.Errorf("kafka: the brokers refused the SASL %s login of %q: %w; possible fix: check --kafka-sasl-user and $%s", mech, s.SASLUser, err, EnvSASLPassword)
	case errors.Is(err, kerr.UnsupportedSaslMechanism):
		return fmt.Errorf("kafka: the brokers do not enable SASL %s: %w; possible fix: --kafka-sasl-mechanism with one of the listener's sasl.enabled.mechanisms", mech, err)
	case errors.As(err, &firstEOF):
		return err // franz-go already says whether TLS or SASL is missing
	case mech != "" && errors.Is(err, io.EOF):
		return fmt.Errorf("kafka: the broker hung up during the SASL %s login of %q (%w); possible fix: check --kafka-sasl-user, $%s, and that the listener enables %s", mech, s.SASLUser, err, EnvSASLPassword, mech)
	case errors.As(err, &unknownCA):
		return fmt.Errorf("kafka: %w; possible fix: --kafka-tls-ca with the CA that signs the brokers' certificates", err)
	case errors.As(err, &hostname):
		return fmt.Errorf("kafka: %w; possible fix: --kafka-brokers with a host name the brokers' certificates carry", err)
	case errors.As(err, &op) && op.Op == "remote error" && strings.Contains(op.Err.Error(), "tls:"):
		// A TLS alert from the broker during the handshake: in practice
		// its verdict on our client certificate, or the lack of one.
		return fmt.Errorf("kafka: the broker refused the TLS handshake: %w; possible fix: --kafka-tls-cert and --kafka-tls-key with a certificate from a CA the brokers trust", err)
	}
	return err
}

// String describes s for logs, with the password redacted.
func (s Security) String() string {
	var b strings.Builder
	if s.TLS {
		b.WriteString("tls")
		if s.TLSCAFile != "" {
			b.WriteString(" ca=" + s.TLSCAFile)
		}
		if s.TLSCertFile != "" {
			b.WriteString(" cert=" + s.TLSCertFile + " key=" + s.TLSKeyFile)
		}
	} else {
		b.WriteString("plaintext")
	}
	if s.SASLMechanism != "" {
		b.WriteString(" sasl=" + strings.ToLower(s.SASLMechanism) + " user=" + s.SASLUser + " password=" + redacted(s.SASLPassword))
	}
	return b.String()
}

// GoString keeps %#v from printing the password field by field.
func (s Security) GoString() string { return "broker.Security{" + s.String() + "}" }

// LogValue keeps slog from printing the password.
func (s Security) LogValue() slog.Value { return slog.StringValue(s.String()) }

func redacted(p string) string {
	if p == "" {
		return "(none)"
	}
	return "(redacted)"
}
