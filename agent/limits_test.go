package agent_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/test/meshlab"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// localAgent is an agent run in-process in the test's network namespace on loopback ports, without
// capture (connections are made to its listeners directly).
type localAgent struct {
	*agent.Agent
	hbone, metrics, ready, outbound string
	log                             *meshlab.SyncBuffer
}

// startLocalAgent starts an agent with capture none on free loopback ports; mutate adjusts its
// configuration. It does not wait for readiness. The agent stops at cleanup.
func startLocalAgent(t *testing.T, mutate func(*agent.Config)) *localAgent {
	t.Helper()
	tu.RequireRoot(t) // transparent listeners
	dir := t.TempDir()
	ports, err := tu.FreePorts(6)
	if err != nil {
		t.Fatal(err)
	}
	at := func(i int) netip.AddrPort { return netip.MustParseAddrPort(fmt.Sprintf("127.0.0.1:%d", ports[i])) }
	cfg := agent.Config{NodeName: "node1", CADir: filepath.Join(dir, "ca"), Capture: agent.CaptureNone,
		OutboundAddr: at(0), InboundAddr: at(1), HBONEAddr: at(2), AdminAddr: at(3), MetricsAddr: at(4), ReadinessAddr: at(5)}
	if mutate != nil {
		mutate(&cfg)
	}
	if len(cfg.ConfigFiles) == 0 && cfg.XDSAddress == "" {
		file := filepath.Join(dir, "mesh.yaml")
		if err := os.WriteFile(file, []byte(localMesh), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.ConfigFiles = []string{file}
	}
	logw := &meshlab.SyncBuffer{}
	a, err := agent.New(cfg, slog.New(slog.NewTextHandler(logw, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx); err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return &localAgent{Agent: a, hbone: at(2).String(), metrics: at(4).String(), ready: at(5).String(),
		outbound: at(0).String(), log: logw}
}

// localMesh is an ambient namespace with one pod of node1 at 127.0.0.1, so that the agent presents
// a certificate on its loopback HBONE listener.
const localMesh = `apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: local, namespace: app, labels: {app: local}}
spec: {nodeName: node1, serviceAccountName: local, containers: [{name: c, image: c}]}
status: {podIP: 127.0.0.1}
`

// get returns the status and body of GET url.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// scrape returns the agent's /metrics page.
func (a *localAgent) scrape(t *testing.T) string {
	t.Helper()
	code, body := get(t, "http://"+a.metrics+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", code, body)
	}
	return body
}

// TestHBONEConnectionCapInMetrics: with --hbone-max-connections 1, a second inbound HBONE connection
// while one is open is closed at accept, and /metrics shows it (issue 14 items 2-3 wiring).
func TestHBONEConnectionCapInMetrics(t *testing.T) {
	tu.CheckGoroutines(t)
	a := startLocalAgent(t, func(c *agent.Config) { c.HBONEMaxConns = 1 })
	tu.WaitFor(t, 20*time.Second, "agent ready", func() bool { ok, _ := a.Ready(); return ok })

	// The first connection never starts TLS: it holds the one slot for the handshake timeout (10 s).
	first, err := net.Dial("tcp", a.hbone)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	tu.WaitFor(t, 5*time.Second, "first connection counted", func() bool {
		return strings.Contains(a.scrape(t), `ambit_hbone_server_connections{server="inbound"} 1`)
	})
	second, err := net.Dial("tcp", a.hbone)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	_ = second.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := second.Read(make([]byte, 1)); err == nil || n != 0 || os.IsTimeout(err) {
		t.Fatalf("second connection beyond the cap: read %d, %v; want it closed", n, err)
	}
	page := a.scrape(t)
	for _, want := range []string{
		`ambit_hbone_server_connections_refused_total{server="inbound"} 1`,
		`ambit_hbone_server_connections_accepted_total{server="inbound"} 2`,
		`ambit_hbone_floods_total{kind="rapid_reset",name="inbound",side="server"} 0`,
		`ambit_hbone_client_connections{pool="outbound"} 0`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, grepLines(page, "ambit_hbone_"))
		}
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
