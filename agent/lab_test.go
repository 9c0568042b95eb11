package agent_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/test/lab"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// cluster is a lab with one in-process agent per node, all reading one local configuration file.
type cluster struct {
	t       *testing.T
	lab     *lab.Lab
	agents  []*agent.Agent
	logs    []*syncBuffer
	stops   []func()
	config  string
	dir     string
	capture string
	mutate  func(int, *agent.Config)
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startCluster brings up a lab and one agent per node with the configuration produced by yaml;
// mutate, if set, adjusts each node's agent configuration.
func startCluster(t *testing.T, nodes, pods int, capture string, yaml func(*lab.Lab) string, mutate ...func(int, *agent.Config)) *cluster {
	t.Helper()
	l := lab.Start(t, lab.Options{Nodes: nodes, PodsPerNode: pods})
	dir := t.TempDir()
	c := &cluster{t: t, lab: l, config: filepath.Join(dir, "config.yaml"), dir: dir, capture: capture}
	if len(mutate) > 0 {
		c.mutate = mutate[0]
	}
	if err := os.WriteFile(c.config, []byte(yaml(l)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.agents = make([]*agent.Agent, nodes)
	c.logs = make([]*syncBuffer, nodes)
	c.stops = make([]func(), nodes)
	t.Cleanup(func() {
		for _, stop := range c.stops {
			if stop != nil {
				stop()
			}
		}
	})
	for i := range l.Nodes {
		c.startAgent(i)
	}
	return c
}

// startAgent (re)starts the agent of node i and waits until it is ready.
func (c *cluster) startAgent(i int) {
	t := c.t
	n := c.lab.Nodes[i]
	if c.logs[i] == nil {
		c.logs[i] = &syncBuffer{}
	}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(c.logs[i], testWriter{t, n.Index}), &slog.HandlerOptions{Level: slog.LevelInfo}))
	cfg := agent.Config{
		NodeName:    fmt.Sprintf("node%d", n.Index),
		ConfigFiles: []string{c.config},
		ConfigPoll:  100 * time.Millisecond,
		CADir:       filepath.Join(c.dir, "ca"),
		Capture:     c.capture,
		NetNS:       n.NS.Path(),
		Uplinks:     []string{n.Uplink},
		PinDir:      n.PinDir,
	}
	if c.mutate != nil {
		c.mutate(i, &cfg)
	}
	a, err := agent.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx); err != nil {
			t.Errorf("agent %d: %v", n.Index, err)
		}
	}()
	c.agents[i] = a
	c.stops[i] = func() {
		cancel()
		<-done
	}
	tu.WaitFor(t, 20*time.Second, "agent ready", func() bool { ok, _ := a.Ready(); return ok })
}

// stopAgent stops the agent of node i (capture stays installed, as after a crash or an upgrade).
func (c *cluster) stopAgent(i int) {
	c.stops[i]()
	c.stops[i] = nil
}

type testWriter struct {
	t    *testing.T
	node int
}

func (w testWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.t.Logf("node%d: %s", w.node, strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

// serve runs an echo server on port in a pod: each connection gets one line "<pod> <remote addr>"
// after the client's first line, then the server echoes until EOF.
func serve(t *testing.T, p *lab.Pod, port int) {
	t.Helper()
	ln, err := p.NS.Listen(context.Background(), "tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				if _, err := r.ReadString('\n'); err != nil {
					return
				}
				fmt.Fprintf(c, "%s %s\n", p.Name, c.RemoteAddr())
				io.Copy(c, r)
			}()
		}
	}()
}

// call dials addr from a pod, sends one line and returns the server's answer (its pod name and the
// client address it saw).
func call(t *testing.T, from *lab.Pod, addr string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := from.NS.Dial(ctx, "tcp", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

func (c *cluster) rewrite(t *testing.T, yaml string) {
	t.Helper()
	if err := os.WriteFile(c.config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
}

const podTemplate = `---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {app: %s%s}}
spec: {nodeName: node%d, serviceAccountName: %s, containers: [{name: c, image: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: %s}
`

func pod(name, ns, app, extraLabels string, p *lab.Pod) string {
	return fmt.Sprintf(podTemplate, name, ns, app, extraLabels, p.Node.Index, name, p.IP)
}

// meshYAML: namespace app (ambient) with client (n0-p0), server-a (n0-p1), server-b (n1-p0) behind service
// svc 10.96.0.10:80, and a namespace legacy (not ambient) with pod plain (n1-p1) and outsider (n0-p2).
func meshYAML(extra string) func(*lab.Lab) string {
	return func(l *lab.Lab) string {
		n0, n1 := l.Nodes[0].Pods, l.Nodes[1].Pods
		return `apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: app}
spec: {clusterIP: 10.96.0.10, selector: {app: server}, ports: [{name: http, port: 80, targetPort: http}]}
` + pod("client", "app", "client", "", n0[0]) + pod("server-a", "app", "server", "", n0[1]) + pod("server-b", "app", "server", "", n1[0]) +
			pod("plain", "legacy", "plain", "", n1[1]) + pod("outsider", "legacy", "outsider", "", n0[2]) + extra
	}
}

func counter(a *agent.Agent, name string) float64 {
	mfs, err := a.Metrics.Registry.Gather()
	if err != nil {
		return -1
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			total += m.GetCounter().GetValue()
		}
	}
	return total
}

func TestAgentMesh(t *testing.T) {
	for _, mode := range []string{agent.CaptureEBPF, agent.CaptureTPROXY} {
		t.Run(mode, func(t *testing.T) { testAgentMesh(t, mode) })
	}
}

func testAgentMesh(t *testing.T, mode string) {
	c := startCluster(t, 2, 3, mode, meshYAML(""))
	n0, n1 := c.lab.Nodes[0].Pods, c.lab.Nodes[1].Pods
	client, serverA, serverB, plain, outsider := n0[0], n0[1], n1[0], n1[1], n0[2]
	for _, p := range []*lab.Pod{serverA, serverB, plain} {
		serve(t, p, 8080)
	}

	t.Run("direct HBONE across nodes keeps the client IP", func(t *testing.T) {
		got, err := call(t, client, serverB.IP.String()+":8080")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(got, serverB.Name+" "+client.IP.String()+":") {
			t.Errorf("answer %q, want %s seeing %s", got, serverB.Name, client.IP)
		}
		tu.WaitFor(t, 5*time.Second, "inbound HBONE access log on node1", func() bool {
			return strings.Contains(c.logs[1].String(), "direction=inbound protocol=HBONE") &&
				strings.Contains(c.logs[0].String(), "dst.hbone_addr="+serverB.IP.String()+":8080")
		})
	})
	t.Run("same-node HBONE", func(t *testing.T) {
		got, err := call(t, client, serverA.IP.String()+":8080")
		if err != nil || !strings.HasPrefix(got, serverA.Name+" "+client.IP.String()+":") {
			t.Fatalf("answer %q, %v", got, err)
		}
	})
	t.Run("service VIP reaches both endpoints", func(t *testing.T) {
		seen := map[string]bool{}
		for i := 0; i < 40 && len(seen) < 2; i++ {
			got, err := call(t, client, "10.96.0.10:80")
			if err != nil {
				t.Fatal(err)
			}
			seen[strings.Fields(got)[0]] = true
		}
		if !seen[serverA.Name] || !seen[serverB.Name] {
			t.Errorf("endpoints reached: %v", seen)
		}
	})
	t.Run("workload outside the mesh gets plain TCP", func(t *testing.T) {
		got, err := call(t, client, plain.IP.String()+":8080")
		if err != nil || !strings.HasPrefix(got, plain.Name) {
			t.Fatalf("answer %q, %v", got, err)
		}
	})
	t.Run("plaintext from outside the mesh reaches a captured pod", func(t *testing.T) {
		got, err := call(t, outsider, serverB.IP.String()+":8080")
		if err != nil || !strings.HasPrefix(got, serverB.Name+" "+outsider.IP.String()+":") {
			t.Fatalf("answer %q, %v", got, err)
		}
		tu.WaitFor(t, 5*time.Second, "inbound plaintext log", func() bool {
			return strings.Contains(c.logs[1].String(), "direction=inbound protocol=TCP")
		})
	})
	if counter(c.agents[0], "istio_tcp_connections_opened_total") == 0 || counter(c.agents[1], "istio_tcp_received_bytes_total") == 0 {
		t.Error("no TCP metrics recorded")
	}
	t.Run("admin, metrics and readiness endpoints", func(t *testing.T) {
		node := c.lab.Nodes[0].NS
		get := func(addr, path string) (int, string) {
			t.Helper()
			hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return node.Dial(ctx, "tcp", addr)
			}}}
			resp, err := hc.Get("http://" + addr + path)
			if err != nil {
				t.Fatalf("GET %s%s: %v", addr, path, err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		if code, body := get("127.0.0.1:15021", "/healthz/ready"); code != 200 || strings.TrimSpace(body) != "ready" {
			t.Errorf("readiness: %d %q", code, body)
		}
		if code, body := get("127.0.0.1:15020", "/metrics"); code != 200 || !strings.Contains(body, "istio_tcp_connections_opened_total{") {
			t.Errorf("metrics: %d, %d bytes", code, len(body))
		}
		code, body := get("127.0.0.1:15000", "/config_dump")
		var dump struct {
			Workloads    []map[string]any `json:"workloads"`
			Services     []map[string]any `json:"services"`
			Certificates []map[string]any `json:"certificates"`
		}
		if err := json.Unmarshal([]byte(body), &dump); code != 200 || err != nil {
			t.Fatalf("config_dump: %d %v", code, err)
		}
		if len(dump.Workloads) != 5 || len(dump.Services) != 1 || len(dump.Certificates) == 0 {
			t.Errorf("config_dump has %d workloads, %d services, %d certificates", len(dump.Workloads), len(dump.Services), len(dump.Certificates))
		}
		if strings.Contains(body, "PRIVATE KEY") {
			t.Error("config_dump leaks a private key")
		}
	})

	t.Run("STRICT peer authentication denies plaintext, closes open ones, keeps HBONE", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		open, err := outsider.NS.Dial(ctx, "tcp", serverB.IP.String()+":8080")
		if err != nil {
			t.Fatal(err)
		}
		defer open.Close()
		io.WriteString(open, "hello\n")
		r := bufio.NewReader(open)
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		c.rewrite(t, meshYAML(`---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
`)(c.lab))
		// The open plaintext connection is closed by the policy change.
		open.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := r.ReadString('\n'); err == nil {
			t.Error("plaintext connection still open after STRICT")
		}
		tu.WaitFor(t, 10*time.Second, "new plaintext connections denied", func() bool {
			_, err := call(t, outsider, serverB.IP.String()+":8080")
			return err != nil
		})
		if got, err := call(t, client, serverB.IP.String()+":8080"); err != nil || !strings.HasPrefix(got, serverB.Name) {
			t.Errorf("mTLS call after STRICT: %q, %v", got, err)
		}
	})
	t.Run("L4 DENY policy refuses HBONE", func(t *testing.T) {
		c.rewrite(t, meshYAML(`---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: app}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/app/sa/client]}}]}]
`)(c.lab))
		// A call in flight when the policy arrives may be closed by the policy change instead; keep
		// calling until one is refused with 401 by the destination agent.
		tu.WaitFor(t, 10*time.Second, "HBONE refused with 401", func() bool {
			_, err := call(t, client, serverB.IP.String()+":8080")
			return err != nil && strings.Contains(c.logs[1].String(), "explicitly denied by app/deny-client")
		})
	})
	t.Run("invalid config keeps the last good state", func(t *testing.T) {
		c.rewrite(t, "apiVersion: v1\nkind: Pod\nmetadata: [broken\n")
		tu.WaitFor(t, 5*time.Second, "rejection logged", func() bool {
			return strings.Contains(c.logs[0].String(), "configuration rejected")
		})
		if _, err := call(t, client, serverB.IP.String()+":8080"); err == nil {
			t.Error("DENY policy lost after an invalid config")
		}
		if got, err := call(t, client, plain.IP.String()+":8080"); err != nil || !strings.HasPrefix(got, plain.Name) {
			t.Errorf("mesh stopped working after an invalid config: %q %v", got, err)
		}
	})
}
