package edge

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// logCapture collects what the process logs (slog's default logger, every
// level) while a test runs.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (c *logCapture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.Write(p)
}

func captureLogs(t *testing.T) *logCapture {
	t.Helper()
	c := &logCapture{}
	prev := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(c, &slog.HandlerOptions{Level: slog.LevelDebug})))
	t.Cleanup(func() { slog.SetDefault(prev) })
	return c
}

// assertNotLogged fails the test if any secret (token, key, signature)
// appears in the captured logs.
func (c *logCapture) assertNotLogged(t *testing.T, secrets ...string) {
	t.Helper()
	c.mu.Lock()
	logs := c.buf.String()
	c.mu.Unlock()
	for _, s := range secrets {
		if s != "" && strings.Contains(logs, s) {
			t.Errorf("a secret is in the logs: %.12q...", s)
		}
	}
}
