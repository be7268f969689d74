// Package pgcluster runs a private PostgreSQL cluster for `flashgate dev` and
// for the integration tests, with the machine's PostgreSQL server binaries.
//
// The cluster lives in one directory (initdb on first use, reused after), is
// started as a child process on a free loopback port (as the `postgres` user
// when the caller is root: initdb refuses to run as root) and is stopped by
// Stop, or by the kernel when the parent dies (Pdeathsig), so a crashed dev
// stack never leaves a stray postmaster holding the data directory.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options configures a cluster.
type Options struct {
	// Dir is the data directory (created and initialised if empty).
	Dir string
	// Port to listen on, on 127.0.0.1; 0 picks a free one.
	Port int
	// Database is created if missing; default "flashgate".
	Database string
	// NoFsync turns fsync off: for throwaway test clusters only. A crash of the
	// PostgreSQL process alone still loses nothing (the OS keeps the page cache).
	NoFsync bool
	// Log receives the server's log; default <Dir>/../pg.log.
	Log io.Writer
	// Settings are extra `-c name=value` server settings.
	Settings map[string]string
}

// Cluster is a running private cluster.
type Cluster struct {
	opts Options
	port int
	bin  string
	cred *syscall.Credential
	logw io.Writer   // the server's output: opts.Log or <Dir>/../pg.log
	tail *outputTail // its last lines, for error messages
	cmd  *exec.Cmd
	done chan error // receives the server's exit
}

// User is the cluster's superuser (trust authentication on loopback only).
const User = "flashgate"

// ErrNoBinaries is returned when no PostgreSQL server binaries can be found.
var ErrNoBinaries = errors.New("PostgreSQL server binaries (initdb, postgres) not found on PATH or under /usr/lib/postgresql/*/bin; " +
	"possible fix: `apt-get install postgresql` (Debian/Ubuntu), or pass --database-url to use an existing server")

// BinDir returns the directory holding initdb and postgres.
func BinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if _, err := os.Stat(filepath.Join(filepath.Dir(p), "postgres")); err == nil {
			return filepath.Dir(p), nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	// Newest major version first.
	sort.Slice(dirs, func(i, j int) bool { return majorOf(dirs[i]) > majorOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	return "", ErrNoBinaries
}

func majorOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Start initialises opts.Dir if needed, starts the server and waits until it
// accepts connections and the database exists.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.Database == "" {
		opts.Database = "flashgate"
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	opts.Dir = dir
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	if err := prepareDir(dir, cred); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err != nil {
		if err := initdb(ctx, bin, dir, cred); err != nil {
			return nil, err
		}
	}
	c := &Cluster{opts: opts, port: opts.Port, bin: bin, cred: cred, logw: opts.Log, tail: &outputTail{}}
	if c.logw == nil {
		f, err := os.OpenFile(filepath.Join(filepath.Dir(dir), "pg.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		c.logw = f
	}
	if err := c.run(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// run starts the server and waits until it is ready. When the port was ours
// to choose and another process took it between our probe and the server's
// bind, it tries again on another port.
func (c *Cluster) run(ctx context.Context) error {
	for attempt := 1; ; attempt++ {
		if c.opts.Port == 0 && (c.port == 0 || attempt > 1) {
			port, err := freePort()
			if err != nil {
				return err
			}
			c.port = port
		}
		if err := waitPreviousServer(ctx, c.opts.Dir); err != nil {
			return err
		}
		c.done = make(chan error, 1)
		c.tail.reset()
		if err := c.start(); err != nil {
			return err
		}
		err := c.waitReady(ctx)
		if err == nil {
			return nil
		}
		c.Kill()
		if c.opts.Port != 0 || attempt == 5 || !c.tail.contains("Address already in use") {
			return err
		}
	}
}

// A postmaster of an earlier run may still hold the data directory: after a
// kill -9 of its parent it gets SIGINT (Pdeathsig) and takes a moment to shut
// down, and a restart in that moment would fail on the lock file. Wait for it
// while it says it is stopping (or for a short while in case it has not yet
// seen the signal); a server that keeps serving is someone else's, and the
// error says so.
const (
	previousServerGrace    = 5 * time.Second
	previousServerStopping = 60 * time.Second
)

func waitPreviousServer(ctx context.Context, dir string) error {
	start := time.Now()
	for {
		pid, status, ok := readPostmasterPid(dir)
		if !ok || syscall.Kill(pid, 0) == syscall.ESRCH {
			return nil
		}
		waited := time.Since(start)
		if waited > previousServerStopping || (status != "stopping" && waited > previousServerGrace) {
			return fmt.Errorf("another PostgreSQL server (PID %d, status %q) is running in %s: stop it (kill -INT %d) or use another directory", pid, status, dir, pid)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// readPostmasterPid reads the server's PID (line 1) and status (line 8:
// starting, stopping, ready, standby) from the data directory's lock file.
func readPostmasterPid(dir string) (pid int, status string, ok bool) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0, "", false
	}
	lines := strings.Split(string(b), "\n")
	pid, err = strconv.Atoi(strings.TrimSpace(lines[0]))
	if err != nil || pid <= 0 {
		return 0, "", false
	}
	if len(lines) > 7 {
		status = strings.TrimSpace(lines[7])
	}
	return pid, status, true
}

// serverCredential returns the credential to run initdb and postgres with:
// nil when not root, else the postgres user's.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root, but there is no `postgres` user to run the PostgreSQL server as (initdb refuses root): %w; "+
			"possible fix: install the postgresql package, or run as a non-root user", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

func prepareDir(dir string, cred *syscall.Credential) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("cannot create the PostgreSQL data directory: %w", err)
	}
	if cred == nil {
		return nil
	}
	if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("cannot hand %s to the postgres user: %w", dir, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	// The postgres user must be able to reach the directory.
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			return fmt.Errorf("the postgres user cannot reach %s: %s is mode %v; possible fix: `chmod o+x %s`, or use a --data-dir outside it",
				dir, p, st.Mode().Perm(), p)
		}
		if p == "/" || p == filepath.Dir(p) {
			return nil
		}
	}
}

func initdb(ctx context.Context, bin, dir string, cred *syscall.Credential) error {
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "initdb"),
		"-D", dir, "-U", User, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-instructions")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.Dir = "/"
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("initdb %s failed: %w\n%s", dir, err, out)
	}
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (c *Cluster) start() error {
	args := []string{"-D", c.opts.Dir, "-p", strconv.Itoa(c.port),
		"-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=", // no socket in /var/run/postgresql: not ours to use
		"-c", "max_connections=200",
		"-c", "shared_buffers=256MB",
		"-c", "max_wal_size=4GB",
		"-c", "logging_collector=off",
	}
	if c.opts.NoFsync {
		args = append(args, "-c", "fsync=off", "-c", "full_page_writes=off")
	}
	keys := make([]string, 0, len(c.opts.Settings))
	for k := range c.opts.Settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "-c", k+"="+c.opts.Settings[k])
	}
	out := io.MultiWriter(c.logw, c.tail)
	c.cmd = exec.Command(filepath.Join(c.bin, "postgres"), args...)
	c.cmd.Dir = "/"
	c.cmd.Stdout, c.cmd.Stderr = out, out
	// SIGINT is PostgreSQL's "fast shutdown": consistent, no recovery next time.
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred, Pdeathsig: syscall.SIGINT, Setpgid: true}
	started := make(chan error, 1)
	// Pdeathsig fires when the *thread* that forked the child exits, so fork
	// from a locked thread that stays alive as long as the server does.
	go func() {
		runtime.LockOSThread()
		if err := c.cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		c.done <- c.cmd.Wait()
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("cannot start postgres: %w", err)
	}
	return nil
}

func (c *Cluster) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	var lastErr error
	for time.Now().Before(deadline) {
		select {
		case err := <-c.done:
			c.done <- err
			return fmt.Errorf("postgres exited during start-up (%v); it said:\n%s", err, c.tail.String())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		// Bounded: whatever holds the port may accept and never answer (the
		// server then exits on "Address already in use", seen above).
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgx.Connect(cctx, c.url("postgres"))
		cancel()
		if err != nil {
			lastErr = err
			continue
		}
		var exists bool
		err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", c.opts.Database).Scan(&exists)
		if err == nil && !exists {
			_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{c.opts.Database}.Sanitize())
		}
		conn.Close(ctx)
		if err != nil {
			return fmt.Errorf("creating database %q: %w", c.opts.Database, err)
		}
		return nil
	}
	return fmt.Errorf("postgres did not accept connections within 60s (last error: %v); it said:\n%s", lastErr, c.tail.String())
}

func (c *Cluster) url(db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", User, c.port, db)
}

// URL is the connection string of the cluster's database.
func (c *Cluster) URL() string { return c.url(c.opts.Database) }

// Port is the TCP port the server listens on.
func (c *Cluster) Port() int { return c.port }

// Stop shuts the server down (fast shutdown: every committed transaction is
// kept) and waits for it to exit.
func (c *Cluster) Stop() error { return c.signalAndWait(syscall.SIGINT, 60*time.Second) }

// Kill stops the server with SIGKILL, as a crash would: for tests.
func (c *Cluster) Kill() error { return c.signalAndWait(syscall.SIGKILL, 10*time.Second) }

// Restart starts the server again after Stop or Kill, on the same port
// unless that was chosen freely and is taken now (URL tells).
func (c *Cluster) Restart(ctx context.Context) error { return c.run(ctx) }

func (c *Cluster) signalAndWait(sig syscall.Signal, grace time.Duration) error {
	if c.cmd == nil || c.cmd.Process == nil {
		return nil
	}
	// Signal the whole process group so backends die with a killed postmaster.
	pgid := -c.cmd.Process.Pid
	if sig != syscall.SIGKILL {
		pgid = c.cmd.Process.Pid // the postmaster shuts its backends down itself
	}
	_ = syscall.Kill(pgid, sig)
	select {
	case err := <-c.done:
		c.done <- err
		if sig == syscall.SIGKILL {
			c.waitGroupGone(grace) // backends still attached to shared memory block a restart
		}
		return exitErr(err, sig)
	case <-time.After(grace):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		err := <-c.done
		c.done <- err
		return fmt.Errorf("postgres did not stop within %v and was killed", grace)
	}
}

func exitErr(err error, sig syscall.Signal) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == sig {
			return nil
		}
	}
	if err != nil && !strings.Contains(err.Error(), "Wait was already called") {
		return err
	}
	return nil
}

// waitGroupGone waits until no process of the server's group is left.
func (c *Cluster) waitGroupGone(limit time.Duration) {
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if err := syscall.Kill(-c.cmd.Process.Pid, 0); errors.Is(err, syscall.ESRCH) {
			return
		}
	}
}

// outputTail keeps the last bytes the server wrote, for error messages (the
// log file may be gone by the time anyone reads the error).
type outputTail struct {
	mu  sync.Mutex
	buf []byte
}

const outputTailBytes = 4096

func (t *outputTail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > outputTailBytes {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-outputTailBytes:]...)
	}
	return len(p), nil
}

func (t *outputTail) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = t.buf[:0]
}

func (t *outputTail) contains(s string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Contains(string(t.buf), s)
}

func (t *outputTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
