// Package meshlab runs node agents in a network-namespace lab (test/lab) for the tests of agent/ and
// waypoint/: one in-process agent per node, all reading one local configuration file, with helpers to
// serve and call TCP echo servers in lab pods. It is test code: production packages never import it.
package meshlab

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
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

// Cluster is a lab with one in-process agent per node, all reading one local configuration file.
type Cluster struct {
	t *testing.T
	// Lab is the network-namespace lab; Agents and Logs are per node; Config is the configuration file
	// every agent reads (rewrite it with Rewrite) and Dir the directory it is in (the CA lives there too).
	Lab     *lab.Lab
	Agents  []*agent.Agent
	Logs    []*SyncBuffer
	Config  string
	Dir     string
	stops   []func()
	dones   []chan struct{}
	olds    []chan struct{} // agents that handed their listeners off and drain
	gens    int             // agents started
	capture string
	mutate  func(int, *agent.Config)
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers (an agent's log).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// StartCluster brings up a lab and one agent per node with the configuration produced by yaml;
// mutate, if set, adjusts each node's agent configuration.
func StartCluster(t *testing.T, nodes, pods int, capture string, yaml func(*lab.Lab) string, mutate ...func(int, *agent.Config)) *Cluster {
	t.Helper()
	l := lab.Start(t, lab.Options{Nodes: nodes, PodsPerNode: pods})
	dir := t.TempDir()
	c := &Cluster{t: t, Lab: l, Config: filepath.Join(dir, "config.yaml"), Dir: dir, capture: capture}
	if len(mutate) > 0 {
		c.mutate = mutate[0]
	}
	if err := os.WriteFile(c.Config, []byte(yaml(l)), 0o600); err != nil {
		t.Fatal(err)
	}
	c.Agents = make([]*agent.Agent, nodes)
	c.Logs = make([]*SyncBuffer, nodes)
	c.stops = make([]func(), nodes)
	c.dones = make([]chan struct{}, nodes)
	t.Cleanup(func() {
		for _, stop := range c.stops {
			if stop != nil {
				stop()
			}
		}
		for _, done := range c.olds {
			<-done
		}
	})
	for i := range l.Nodes {
		c.StartAgent(i)
	}
	return c
}

// StartAgent (re)starts the agent of node i and waits until it is ready. Each node's agent serves its
// own listener hand-off socket (agent.Config.HandoffSocket), so starting one while another runs takes
// the running one's listeners (see RestartAgent).
func (c *Cluster) StartAgent(i int) {
	t := c.t
	n := c.Lab.Nodes[i]
	if c.Logs[i] == nil {
		c.Logs[i] = &SyncBuffer{}
	}
	c.gens++
	log := slog.New(slog.NewTextHandler(io.MultiWriter(c.Logs[i], TestWriter{t, n.Index}), &slog.HandlerOptions{Level: slog.LevelInfo})).
		With("agent", c.gens) // tells the agents of a node apart across restarts
	cfg := agent.Config{
		NodeName:    fmt.Sprintf("node%d", n.Index),
		ConfigFiles: []string{c.Config},
		ConfigPoll:  100 * time.Millisecond,
		CADir:       filepath.Join(c.Dir, "ca"),
		Capture:     c.capture,
		NetNS:       n.NS.Path(),
		Uplinks:     []string{n.Uplink},
		PinDir:      n.PinDir,

		HandoffSocket: filepath.Join(c.Dir, fmt.Sprintf("handoff%d.sock", n.Index)),
	}
	if c.mutate != nil {
		c.mutate(i, &cfg)
	}
	a, err := agent.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.HandoffSocket) > 100 {
		t.Fatalf("hand-off socket path %s is too long for a unix socket", cfg.HandoffSocket)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx); err != nil {
			t.Errorf("agent %d: %v", n.Index, err)
		}
	}()
	c.Agents[i] = a
	c.dones[i] = done
	c.stops[i] = func() {
		cancel()
		<-done
	}
	tu.WaitFor(t, 20*time.Second, "agent ready", func() bool { ok, _ := a.Ready(); return ok })
}

// StopAgent stops the agent of node i (capture stays installed, as after a crash or an upgrade).
func (c *Cluster) StopAgent(i int) {
	c.stops[i]()
	c.stops[i] = nil
}

// RestartAgent replaces the agent of node i by a new one as an upgrade does: the new agent starts while
// the old one runs, takes its listeners and, once ready, tells it to stop accepting and drain. It returns
// when the new agent is ready and the old one drains (its Run returns on its own when drained; the
// cluster's cleanup waits for it).
func (c *Cluster) RestartAgent(i int) {
	t := c.t
	old, oldStop, oldDone := c.Agents[i], c.stops[i], c.dones[i]
	c.stops[i] = nil
	c.StartAgent(i)
	tu.WaitFor(t, 20*time.Second, "old agent draining", func() bool { ok, _ := old.Ready(); return !ok })
	c.olds = append(c.olds, oldDone)
	c.t.Cleanup(oldStop) // after its drain, a no-op; cuts a drain the test did not wait for
}

// WaitDrained waits until every agent that RestartAgent replaced has returned from Run.
func (c *Cluster) WaitDrained() {
	for _, done := range c.olds {
		<-done
	}
}

// TestWriter forwards log lines of a node to the test log in verbose mode.
type TestWriter struct {
	T    *testing.T
	Node int
}

// Write implements io.Writer.
func (w TestWriter) Write(p []byte) (int, error) {
	if testing.Verbose() {
		w.T.Logf("node%d: %s", w.Node, strings.TrimSpace(string(p)))
	}
	return len(p), nil
}

// Serve runs an echo server on port in a pod: each connection gets one line "<pod> <remote addr>"
// after the client's first line, then the server echoes until EOF.
func Serve(t *testing.T, p *lab.Pod, port int) {
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

// Call dials addr from a pod, sends one line and returns the server's answer (its pod name and the
// client address it saw).
func Call(t *testing.T, from *lab.Pod, addr string) (string, error) {
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

// Rewrite replaces the configuration file; the agents pick it up.
func (c *Cluster) Rewrite(t *testing.T, yaml string) {
	t.Helper()
	if err := os.WriteFile(c.Config, []byte(yaml), 0o600); err != nil {
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

// Pod returns a Pod document for lab pod p in namespace ns, labelled app=<app> (plus extraLabels, ", k: v").
func Pod(name, ns, app, extraLabels string, p *lab.Pod) string {
	return fmt.Sprintf(podTemplate, name, ns, app, extraLabels, p.Node.Index, name, p.IP)
}

// MeshYAML: namespace app (ambient) with client (n0-p0), server-a (n0-p1), server-b (n1-p0) behind service
// svc 10.96.0.10:80, and a namespace legacy (not ambient) with pod plain (n1-p1) and outsider (n0-p2).
func MeshYAML(extra string) func(*lab.Lab) string {
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
` + Pod("client", "app", "client", "", n0[0]) + Pod("server-a", "app", "server", "", n0[1]) + Pod("server-b", "app", "server", "", n1[0]) +
			Pod("plain", "legacy", "plain", "", n1[1]) + Pod("outsider", "legacy", "outsider", "", n0[2]) + extra
	}
}

// Counter sums the series of counter (or gauge) name in a's registry.
func Counter(a *agent.Agent, name string) float64 {
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
			total += m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	return total
}

// SynRetransmits returns the pod's count of retransmitted SYNs (TcpExt TCPSynRetrans of its network
// namespace): a connection whose SYN went unanswered, as when nothing accepts on a capture port. The
// lab's links lose nothing, so an increase means a client waited for a listener.
func SynRetransmits(t *testing.T, p *lab.Pod) int64 {
	t.Helper()
	var b []byte
	err := p.NS.Do(func() error {
		var err error
		b, err = os.ReadFile("/proc/thread-self/net/netstat") // the thread's namespace, not the process's
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) == 0 || names[0] != "TcpExt:" || len(values) != len(names) || values[0] != "TcpExt:" {
			continue
		}
		for j, n := range names {
			if n == "TCPSynRetrans" {
				var v int64
				if _, err := fmt.Sscan(values[j], &v); err != nil {
					t.Fatalf("TCPSynRetrans %q: %v", values[j], err)
				}
				return v
			}
		}
	}
	t.Fatal("no TcpExt TCPSynRetrans in /proc/net/netstat")
	return 0
}
