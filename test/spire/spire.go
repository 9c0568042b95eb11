package spire

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/proc"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// Version is the SPIRE release the harness expects (the module version hack/peers/build-spire.sh builds).
const Version = "v1.13.3"

// Environment variables the harness reads.
const (
	BinDirEnv       = "AMBIT_SPIRE_BIN_DIR"
	PeerCacheEnv    = "AMBIT_PEER_CACHE"
	RequirePeersEnv = "AMBIT_REQUIRE_PEERS"
)

// DefaultPeerCache is the peer cache root used when AMBIT_PEER_CACHE is unset.
const DefaultPeerCache = "/var/cache/ambit-peers"

// FindBinaries returns the directory holding spire-server and spire-agent: AMBIT_SPIRE_BIN_DIR if set, else
// the peer cache entry for Version.
func FindBinaries() (string, error) {
	dir := os.Getenv(BinDirEnv)
	if dir == "" {
		root := os.Getenv(PeerCacheEnv)
		if root == "" {
			root = DefaultPeerCache
		}
		dir = filepath.Join(root, "spire-"+Version, "bin")
	}
	for _, b := range []string{"spire-server", "spire-agent"} {
		st, err := os.Stat(filepath.Join(dir, b))
		if err != nil {
			return "", fmt.Errorf("find spire binaries: %w", err)
		}
		if st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("find spire binaries: %s is not executable", filepath.Join(dir, b))
		}
	}
	return dir, nil
}

// RequireBinaries returns the SPIRE binary directory or skips tb with instructions; with
// AMBIT_REQUIRE_PEERS=1 a missing binary fails tb instead.
func RequireBinaries(tb testing.TB) string {
	tb.Helper()
	dir, err := FindBinaries()
	if err == nil {
		return dir
	}
	msg := fmt.Sprintf("SPIRE %s binaries not found (%v); build them with hack/peers/build-spire.sh or set %s", Version, err, BinDirEnv)
	if os.Getenv(RequirePeersEnv) == "1" {
		tb.Fatalf("%s; %s=1 forbids skipping", msg, RequirePeersEnv)
	}
	tb.Skip(msg + " (" + RequirePeersEnv + "=1 makes this a failure)")
	return ""
}

// Options configures Start.
type Options struct {
	// BinDir holds spire-server and spire-agent (default: RequireBinaries).
	BinDir string
	// TrustDomain (default "example.org").
	TrustDomain string
	// DefaultX509SVIDTTL is the server's default SVID lifetime (default 1h).
	DefaultX509SVIDTTL time.Duration
}

// Cluster is one running SPIRE server and agent.
type Cluster struct {
	bin         string
	dir         string
	trustDomain string
	serverSock  string
	agentSock   string
	agentID     string
	server      *process
	agent       *process
}

// Start launches a SPIRE server and an agent attested by a join token in a fresh temporary directory, waits
// until both are healthy, and stops them when tb ends.
func Start(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	if opts.BinDir == "" {
		opts.BinDir = RequireBinaries(tb)
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = "example.org"
	}
	if opts.DefaultX509SVIDTTL <= 0 {
		opts.DefaultX509SVIDTTL = time.Hour
	}
	// Unix socket paths are limited to 108 bytes; keep the directory short.
	dir, err := os.MkdirTemp("", "spire")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	c := &Cluster{
		bin:         opts.BinDir,
		dir:         dir,
		trustDomain: opts.TrustDomain,
		serverSock:  filepath.Join(dir, "server", "api.sock"),
		agentSock:   filepath.Join(dir, "agent", "api.sock"),
	}
	for _, d := range []string{"server/data", "agent/data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			tb.Fatal(err)
		}
	}
	// Outside the ephemeral range, so no outgoing connection can take it before the server binds it.
	ports, err := testutil.FreePorts(1)
	if err != nil {
		tb.Fatal(err)
	}
	port := ports[0]

	serverConf := filepath.Join(dir, "server", "server.conf")
	writeFile(tb, serverConf, fmt.Sprintf(`server {
    bind_address = "127.0.0.1"
    bind_port = "%d"
    socket_path = %q
    trust_domain = %q
    data_dir = %q
    log_level = "DEBUG"
    ca_key_type = "ec-p256"
    ca_ttl = "24h"
    default_x509_svid_ttl = %q
    experimental {
        cache_reload_interval = "1s"
    }
}
plugins {
    DataStore "sql" {
        plugin_data {
            database_type = "sqlite3"
            connection_string = %q
        }
    }
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
}
`, port, c.serverSock, c.trustDomain, filepath.Join(dir, "server", "data"), opts.DefaultX509SVIDTTL.String(),
		filepath.Join(dir, "server", "data", "datastore.sqlite3")))

	c.server = startProcess(tb, filepath.Join(c.bin, "spire-server"), filepath.Join(dir, "server.log"), "run", "-config", serverConf)
	tb.Cleanup(func() { c.server.stop(tb) })
	c.waitHealthy(tb, "spire-server", c.serverSock, c.server)

	out := c.ServerCLI(tb, "token", "generate", "-ttl", "600")
	m := regexp.MustCompile(`Token: (\S+)`).FindStringSubmatch(out)
	if m == nil {
		tb.Fatalf("spire-server token generate: unexpected output %q", out)
	}
	token := m[1]
	c.agentID = fmt.Sprintf("spiffe://%s/spire/agent/join_token/%s", c.trustDomain, token)
	bundle := filepath.Join(dir, "agent", "bundle.pem")
	writeFile(tb, bundle, c.ServerCLI(tb, "bundle", "show"))

	agentConf := filepath.Join(dir, "agent", "agent.conf")
	writeFile(tb, agentConf, fmt.Sprintf(`agent {
    data_dir = %q
    log_level = "DEBUG"
    server_address = "127.0.0.1"
    server_port = "%d"
    socket_path = %q
    trust_bundle_path = %q
    trust_domain = %q
    join_token = %q
    experimental {
        sync_interval = "1s"
    }
}
plugins {
    NodeAttestor "join_token" {
        plugin_data {}
    }
    KeyManager "memory" {
        plugin_data {}
    }
    WorkloadAttestor "unix" {
        plugin_data {}
    }
}
`, filepath.Join(dir, "agent", "data"), port, c.agentSock, bundle, c.trustDomain, token))
	c.agent = startProcess(tb, filepath.Join(c.bin, "spire-agent"), filepath.Join(dir, "agent.log"), "run", "-config", agentConf)
	tb.Cleanup(func() { c.agent.stop(tb) })
	c.waitHealthy(tb, "spire-agent", c.agentSock, c.agent)
	return c
}

// TrustDomain returns the cluster's trust domain name.
func (c *Cluster) TrustDomain() string { return c.trustDomain }

// AgentID returns the SPIFFE ID of the agent (the parent of workload entries).
func (c *Cluster) AgentID() string { return c.agentID }

// WorkloadAPIAddr returns the agent's Workload API address ("unix://...").
func (c *Cluster) WorkloadAPIAddr() string { return "unix://" + c.agentSock }

// CreateEntry registers spiffeID under the agent for workloads matching selectors (e.g. "unix:uid:0") with
// the given X509-SVID lifetime (0: server default) and returns the entry ID.
func (c *Cluster) CreateEntry(tb testing.TB, spiffeID string, x509TTL time.Duration, selectors ...string) string {
	tb.Helper()
	args := []string{"entry", "create", "-parentID", c.agentID, "-spiffeID", spiffeID}
	if x509TTL > 0 {
		args = append(args, "-x509SVIDTTL", strconv.Itoa(int(x509TTL/time.Second)))
	}
	for _, s := range selectors {
		args = append(args, "-selector", s)
	}
	out := c.ServerCLI(tb, args...)
	m := regexp.MustCompile(`Entry ID\s*:\s*(\S+)`).FindStringSubmatch(out)
	if m == nil {
		tb.Fatalf("spire-server entry create: unexpected output %q", out)
	}
	return m[1]
}

// DeleteEntry removes a registration entry.
func (c *Cluster) DeleteEntry(tb testing.TB, entryID string) {
	tb.Helper()
	c.ServerCLI(tb, "entry", "delete", "-entryID", entryID)
}

// ServerCLI runs `spire-server <args> -socketPath <server socket>` and returns its standard output.
func (c *Cluster) ServerCLI(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := c.cli(context.Background(), "spire-server", c.serverSock, args...)
	if err != nil {
		tb.Fatalf("spire-server %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (c *Cluster) cli(ctx context.Context, bin, sock string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// Subcommand flags follow the subcommand words: find where flags begin.
	i := 0
	for i < len(args) && !strings.HasPrefix(args[i], "-") {
		i++
	}
	full := append(append(append([]string{}, args[:i]...), "-socketPath", sock), args[i:]...)
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, bin), full...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := proc.Run(cmd); err != nil {
		return stdout.String() + stderr.String(), err
	}
	return stdout.String(), nil
}

// waitHealthy polls `<bin> healthcheck` until it succeeds, the process dies, or 90 s pass (cold starts on
// a loaded 2-core machine are slow).
func (c *Cluster) waitHealthy(tb testing.TB, bin, sock string, p *process) {
	tb.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, err := c.cli(context.Background(), bin, sock, "healthcheck")
		if err == nil {
			return
		}
		if p.exited() {
			tb.Fatalf("%s exited before becoming healthy; log tail:\n%s", bin, p.logTail())
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s not healthy after 90s: %v %s; log tail:\n%s", bin, err, out, p.logTail())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// process is one SPIRE daemon.
type process struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func startProcess(tb testing.TB, bin, logPath string, args ...string) *process {
	tb.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Own process group, killed if the test binary dies (package test/proc: no orphaned daemons).
	pr, err := proc.Start(cmd)
	if err != nil {
		_ = logf.Close()
		tb.Fatalf("start %s: %v", bin, err)
	}
	p := &process{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = pr.Wait()
		_ = logf.Close()
		close(p.done)
	}()
	return p
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after 10 s, and waits for the exit.
func (p *process) stop(tb testing.TB) {
	if p.exited() {
		if tb.Failed() {
			tb.Logf("%s had exited (%v); log tail:\n%s", p.cmd.Path, p.err, p.logTail())
		}
		return
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	if tb.Failed() {
		tb.Logf("%s log tail:\n%s", filepath.Base(p.cmd.Path), p.logTail())
	}
}

func (p *process) logTail() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) > 40 {
		lines = lines[len(lines)-40:]
	}
	return strings.Join(lines, "\n")
}

func writeFile(tb testing.TB, path, content string) {
	tb.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		tb.Fatal(err)
	}
}
