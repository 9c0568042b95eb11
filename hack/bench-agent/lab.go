package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/proc"
)

// Ports the servers listen on in every server pod.
const (
	iperfPort = 5201
	httpPort  = 8080
	holdPort  = 9000
)

// bench is the running lab: agents on both nodes, servers in the server pods.
type bench struct {
	o           options
	tools       tools
	lab         *lab.Lab
	dir         string
	config      string
	captureMode string
	agents      []*server // by node index
	servers     []*server
	pods        map[string]*lab.Pod
	profiling   bool // the -profile pass is running
}

// Pod roles: node index and pod index in the lab. The "mesh" namespace is ambient, "plain" is not, so the
// plain pods are never captured and their traffic is the direct baseline on the very same nodes.
var roles = []struct {
	name, namespace string
	node, pod       int
}{
	{"mesh-client", "mesh", 0, 0}, {"mesh-server-same", "mesh", 0, 1}, {"mesh-server-cross", "mesh", 1, 0},
	{"plain-client", "plain", 0, 2}, {"plain-server-same", "plain", 0, 3}, {"plain-server-cross", "plain", 1, 1},
}

// topology is one client -> server path.
type topology struct {
	where  string // "same" or "cross" node
	mesh   bool
	client *lab.Pod
	server *lab.Pod
}

func (t topology) name() string {
	if t.mesh {
		return t.where + "/mesh"
	}
	return t.where + "/direct"
}

func (b *bench) topo(where string, mesh bool) topology {
	ns := "plain"
	if mesh {
		ns = "mesh"
	}
	return topology{where: where, mesh: mesh, client: b.pods[ns+"-client"], server: b.pods[ns+"-server-"+where]}
}

func (b *bench) topologies() []topology {
	return []topology{b.topo("same", false), b.topo("same", true), b.topo("cross", false), b.topo("cross", true)}
}

var configTmpl = template.Must(template.New("mesh").Parse(`apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
{{range .}}---
apiVersion: v1
kind: Pod
metadata: {name: {{.Name}}, namespace: {{.Namespace}}, labels: {app: {{.Name}}}}
spec: {nodeName: node{{.Node}}, serviceAccountName: {{.Name}}, containers: [{name: c, image: c}]}
status: {podIP: {{.IP}}}
{{end}}`))

func newBench(ctx context.Context, o options, t tools) (_ *bench, err error) {
	ambit, err := filepath.Abs(filepath.Join(o.bin, "ambit"))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(ambit); err != nil {
		return nil, fmt.Errorf("%s not found; run `make build` first (or `make bench-agent`)", ambit)
	}
	t.ambit = ambit
	dir, err := os.MkdirTemp("", "ambit-bench-agent-")
	if err != nil {
		return nil, fmt.Errorf("make temp dir: %w", err)
	}
	// A fixed name owned by one run at a time (test/lab): a concurrent run fails instead of tearing this one down,
	// and what a killed run left is removed first.
	l, err := lab.New(ctx, lab.Options{Name: lab.NamePrefix + o.lab, Nodes: 2, PodsPerNode: 4})
	if err != nil {
		return nil, fmt.Errorf("build the lab: %w", err)
	}
	b := &bench{o: o, tools: t, lab: l, dir: dir, config: filepath.Join(dir, "mesh.yaml"), pods: map[string]*lab.Pod{},
		agents: make([]*server, len(l.Nodes))}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	type podDoc struct {
		Name, Namespace string
		Node            int
		IP              string
	}
	var docs []podDoc
	for _, r := range roles {
		p := l.Nodes[r.node].Pods[r.pod]
		b.pods[r.name] = p
		docs = append(docs, podDoc{r.name, r.namespace, r.node, p.IP.String()})
	}
	var cfg strings.Builder
	if err := configTmpl.Execute(&cfg, docs); err != nil {
		return nil, fmt.Errorf("render config: %w", err)
	}
	if err := os.WriteFile(b.config, []byte(cfg.String()), 0o644); err != nil {
		return nil, fmt.Errorf("write config: %w", err)
	}
	if err := b.tune(); err != nil {
		return nil, err
	}
	// The first agent creates the local CA; the second loads it.
	for i := range l.Nodes {
		if err := b.startAgent(ctx, i); err != nil {
			return nil, err
		}
	}
	b.captureMode = b.agents[0].field("capture installed", "mode")
	for _, r := range roles {
		if !strings.Contains(r.name, "server") {
			continue
		}
		p := b.pods[r.name]
		if err := b.startServers(ctx, r.name, p); err != nil {
			return nil, err
		}
	}
	return b, b.waitServers(ctx)
}

// tune lets the connection-rate phase open tens of thousands of short connections per run: TIME_WAIT
// reuse and a wide ephemeral port range, set only inside the lab's own namespaces (pods and nodes).
func (b *bench) tune() error {
	var nss []lab.NS
	for _, n := range b.lab.Nodes {
		nss = append(nss, n.NS)
		for _, p := range n.Pods {
			nss = append(nss, p.NS)
		}
	}
	for _, ns := range nss {
		if err := ns.Sysctl("net/ipv4/tcp_tw_reuse", "1"); err != nil {
			return err
		}
		if err := ns.Sysctl("net/ipv4/ip_local_port_range", "20000 65000"); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) startAgent(ctx context.Context, i int) error {
	n := b.lab.Nodes[i]
	name := fmt.Sprintf("agent-node%d", i)
	// As the DaemonSet runs it: in the host's mount namespace (its pins, on the host's bpffs, outlive it and
	// a restarted agent re-adopts them), in the node's network namespace through --netns. Not under `ip netns
	// exec`, whose private mount namespace gets a bpffs that dies with the agent (which the agent refuses).
	p, err := b.startIn(lab.NS{}, name, b.agentEnv(), b.tools.ambit, "agent",
		"--node-name", fmt.Sprintf("node%d", i), "--netns", n.NS.Path(), "--config-file", b.config,
		"--ca-dir", filepath.Join(b.dir, "ca"), "--capture", b.o.capture,
		"--uplinks", n.Uplink, "--pin-dir", n.PinDir, "--drain-timeout", "1s")
	if err != nil {
		return err
	}
	b.agents[i] = p
	if err := p.waitLog(ctx, "agent ready", 30*time.Second); err != nil {
		return fmt.Errorf("agent on node%d: %w", i, err)
	}
	return nil
}

// restartAgents stops both agents and starts fresh ones (capture stays installed and is re-adopted).
func (b *bench) restartAgents(ctx context.Context) error {
	for i, a := range b.agents {
		a.stop()
		if err := b.startAgent(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) startServers(ctx context.Context, role string, p *lab.Pod) error {
	iperf, err := b.start(p.NS, role+"-iperf3", nil, b.tools.iperf3, "-s", "-p", fmt.Sprint(iperfPort))
	if err != nil {
		return err
	}
	fortio, err := b.start(p.NS, role+"-fortio", nil, b.tools.fortio, "server", "-http-port", fmt.Sprint(httpPort),
		"-grpc-port", "disabled", "-redirect-port", "disabled", "-tcp-port", "disabled", "-udp-port", "disabled")
	if err != nil {
		return err
	}
	hold, err := b.start(p.NS, role+"-hold", nil, b.tools.self, "hold", "-addr", fmt.Sprintf(":%d", holdPort))
	if err != nil {
		return err
	}
	holdDeny, err := b.start(p.NS, role+"-hold-deny", nil, b.tools.self, "hold", "-addr", fmt.Sprintf(":%d", denyPort))
	if err != nil {
		return err
	}
	b.servers = append(b.servers, iperf, fortio, hold, holdDeny)
	return nil
}

// waitServers waits until every server port answers from inside its pod.
func (b *bench) waitServers(ctx context.Context) error {
	for _, r := range roles {
		if !strings.Contains(r.name, "server") {
			continue
		}
		p := b.pods[r.name]
		for _, port := range []int{iperfPort, httpPort, holdPort, denyPort} {
			addr := fmt.Sprintf("%s:%d", p.IP, port)
			deadline := time.Now().Add(20 * time.Second)
			for {
				dctx, cancel := context.WithTimeout(ctx, time.Second)
				c, err := p.NS.Dial(dctx, "tcp", addr)
				cancel()
				if err == nil {
					c.Close()
					break
				}
				if time.Now().After(deadline) || ctx.Err() != nil {
					return fmt.Errorf("server %s in %s does not answer: %w", addr, r.name, err)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
	}
	return nil
}

// close stops every process this program started and removes the lab; logs stay in b.dir.
func (b *bench) close() {
	for _, p := range b.servers {
		p.stop()
	}
	for _, a := range b.agents {
		if a != nil {
			a.stop()
		}
	}
	proc.KillAll()
	if err := b.lab.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "bench-agent: remove lab:", err)
	}
	fmt.Fprintln(os.Stderr, "cleaned up: processes stopped, lab removed (logs kept in "+b.dir+")")
}

// server is a long-running process started inside a namespace, with its output in a log file.
type server struct {
	name string
	p    *proc.Proc
	log  string
	from int64 // log size when this process started (a restarted agent appends to the same log)
	done <-chan struct{}
}

// agentEnv is the agents' environment: this program's plus -agent-env.
func (b *bench) agentEnv() []string {
	env := os.Environ()
	for _, kv := range strings.Split(b.o.agentEnv, ",") {
		if kv = strings.TrimSpace(kv); kv != "" {
			env = append(env, kv)
		}
	}
	return env
}

// start runs bin inside ns with its output in <name>.log; env nil means this program's environment.
func (b *bench) start(ns lab.NS, name string, env []string, bin string, args ...string) (*server, error) {
	return b.startIn(ns, name, env, bin, args...)
}

// startIn is start, run in the current namespaces (the host's) when ns is the zero NS.
func (b *bench) startIn(ns lab.NS, name string, env []string, bin string, args ...string) (*server, error) {
	logName := filepath.Join(b.dir, name+".log")
	f, err := os.OpenFile(logName, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat log: %w", err)
	}
	cmd := exec.Command(bin, args...)
	if ns.Name != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", ns.Name, bin}, args...)...)
	}
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = env
	pr, err := proc.Start(cmd) // dies with this program (test/proc)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	return &server{name: name, p: pr, log: logName, from: st.Size(), done: pr.Done()}, nil
}

// stop sends SIGTERM to the process group and SIGKILL if it is still there after 10 s.
func (p *server) stop() {
	_ = p.p.Stop(10 * time.Second)
}

// output returns what the process logged since it started.
func (p *server) output() string {
	b, _ := os.ReadFile(p.log)
	if int64(len(b)) < p.from {
		return ""
	}
	return string(b[p.from:])
}

func (p *server) waitLog(ctx context.Context, msg string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.output(), msg) {
		select {
		case <-p.done:
			return fmt.Errorf("exited before %q; log:\n%s", msg, p.output())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %q after %s; log:\n%s", msg, timeout, p.output())
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// field returns key's value on the first log line containing msg ("" if none).
func (p *server) field(msg, key string) string {
	for _, line := range strings.Split(p.output(), "\n") {
		if !strings.Contains(line, msg) {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, key+"="); ok {
				return strings.Trim(v, `"`)
			}
		}
	}
	return ""
}

// runIn runs a short-lived tool inside a pod and returns its standard output; on failure the error
// carries the end of its standard error.
func runIn(ctx context.Context, p *lab.Pod, timeout time.Duration, bin string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", p.NS.Name, bin}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := proc.Output(cmd) // cancelling kills the process group (test/proc)
	if err != nil {
		msg := stderr.String()
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			err = fmt.Errorf("timed out after %s: %w", timeout, err)
		}
		return out, fmt.Errorf("%s %s: %w\n%s", filepath.Base(bin), strings.Join(args, " "), err, strings.TrimSpace(msg))
	}
	return out, nil
}
