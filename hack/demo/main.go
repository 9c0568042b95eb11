// Command demo shows Ambit end to end on one machine (root): a two-node network-namespace lab with an
// agent per node, a small application, and Istio's waypoint story step by step, printing for each
// request the path it took, as the agents' access logs report it.
//
//	make demo           # builds bin/ambit and bin/ambitctl, then runs this
//	go run ./hack/demo -bin ./bin [-keep]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/template"
	"time"

	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/proc"
)

func main() {
	bin := flag.String("bin", "bin", "directory holding the ambit and ambitctl binaries")
	keep := flag.Bool("keep", false, "keep the lab and processes running at the end until Ctrl-C")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *bin, *keep); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// demo holds the lab, the processes it started and where their logs go.
type demo struct {
	lab    *lab.Lab
	bin    string
	dir    string
	config string
	procs  []*proc.Proc
	pods   map[string]*lab.Pod
	logs   map[string]string // node or waypoint name -> log file
}

const (
	reviewsVIP = "10.96.0.20"
	legacyVIP  = "10.96.0.30"
	externalIP = "240.240.0.10"
)

// placement says which lab pod plays which role: node index and pod index.
var placement = []struct {
	name string
	node int
	pod  int
}{
	{"client", 0, 0}, {"reviews-v1", 0, 1}, {"waypoint", 0, 2}, {"reviews-v2-pod-waypoint", 0, 3}, {"external", 0, 4},
	{"reviews-v2", 1, 0}, {"reviews-v3", 1, 1}, {"reviews-svc-waypoint", 1, 2}, {"legacy", 1, 3}, {"egress-gateway", 1, 4},
}

func run(ctx context.Context, bin string, keep bool) error {
	if os.Geteuid() != 0 {
		return errors.New("the demo needs root (network namespaces and eBPF); run it with sudo")
	}
	for _, b := range []string{"ambit", "ambitctl"} {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return fmt.Errorf("%s not found in %s; run `make build` first", b, bin)
		}
	}
	abs, err := filepath.Abs(bin)
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "ambit-demo-")
	if err != nil {
		return err
	}
	// The name is fixed and owned by one demo at a time: a concurrent demo fails here instead of tearing this one
	// down, and what a killed demo left under it is removed first (test/lab).
	l, err := lab.New(ctx, lab.Options{Name: lab.NamePrefix + "demo", Nodes: 2, PodsPerNode: 5})
	if err != nil {
		return fmt.Errorf("build the lab: %w", err)
	}
	d := &demo{lab: l, bin: abs, dir: dir, config: filepath.Join(dir, "mesh.yaml"), pods: map[string]*lab.Pod{}, logs: map[string]string{}}
	defer d.close()
	for _, p := range placement {
		d.pods[p.name] = l.Nodes[p.node].Pods[p.pod]
	}
	step("Ambit demo: two nodes, one agent each, an application, and Istio's waypoint model")
	fmt.Printf("  lab %s; logs and configuration in %s\n", l.Name, dir)
	for _, p := range placement {
		pod := d.pods[p.name]
		fmt.Printf("  %-24s node%d  %s\n", p.name, p.node, pod.IP)
	}

	if err := d.writeConfig(scene{}); err != nil {
		return err
	}
	// The first agent creates the local CA; the others load it.
	for i, n := range l.Nodes {
		if err := d.startAgent(ctx, n); err != nil {
			return err
		}
		if i == 0 {
			if err := d.waitReady(ctx); err != nil {
				return err
			}
		}
	}
	for _, wp := range []struct{ pod, ns string }{{"waypoint", "demo"}, {"reviews-svc-waypoint", "demo"},
		{"reviews-v2-pod-waypoint", "demo"}, {"egress-gateway", "common-infrastructure"}} {
		if err := d.startWaypoint(ctx, wp.pod, wp.ns); err != nil {
			return err
		}
	}
	for _, name := range []string{"reviews-v1", "reviews-v2", "reviews-v3"} {
		d.serve(name, 9080)
	}
	d.serve("legacy", 8080)
	d.serve("external", 80)
	if err := d.waitReady(ctx); err != nil {
		return err
	}

	step("1. Direct: no waypoint. The client's agent carries each connection over HBONE (mTLS) to the destination pod's agent")
	d.requests(ctx, "reviews (service VIP)", reviewsVIP+":9080", 4)
	d.requests(ctx, "reviews-v2 (pod IP)", d.pods["reviews-v2"].IP.String()+":9080", 1)
	d.requests(ctx, "legacy (outside the mesh)", legacyVIP+":8080", 1)

	step("2. A namespace waypoint. Generate it as istioctl would, then label the namespace with istio.io/use-waypoint")
	d.show("ambitctl", "waypoint", "generate", "--for", "service", "-n", "demo")
	if err := d.apply(ctx, scene{namespaceWaypoint: true}); err != nil {
		return err
	}
	d.show("ambitctl", "waypoint", "bindings", "-f", d.config, "-n", "demo")
	d.requests(ctx, "reviews (service VIP)", reviewsVIP+":9080", 4)
	d.requests(ctx, "reviews-v2 (pod IP; the waypoint is for services)", d.pods["reviews-v2"].IP.String()+":9080", 1)

	step("3. A service-level waypoint on reviews, and a pod-level waypoint (--for workload) on reviews-v2")
	if err := d.apply(ctx, scene{namespaceWaypoint: true, serviceWaypoint: true, podWaypoint: true}); err != nil {
		return err
	}
	d.show("ambitctl", "explain", "-f", d.config, "--from", "demo/client", "--to", reviewsVIP+":9080")
	d.requests(ctx, "reviews (service VIP: only the service waypoint)", reviewsVIP+":9080", 4)
	d.requests(ctx, "reviews-v2 (pod IP: only the pod waypoint)", d.pods["reviews-v2"].IP.String()+":9080", 1)

	step("4. A cross-namespace waypoint: a ServiceEntry uses common-infrastructure/egress-gateway (allowedRoutes: Selector)")
	if err := d.apply(ctx, scene{namespaceWaypoint: true, serviceWaypoint: true, podWaypoint: true, egress: true}); err != nil {
		return err
	}
	d.show("ambitctl", "waypoint", "bindings", "-f", d.config, "-n", "demo")
	d.show("ambitctl", "waypoint", "bindings", "-f", d.config, "-n", "other")
	d.requests(ctx, "ext.example.com (ServiceEntry)", externalIP+":80", 1)

	step("5. An L4 AuthorizationPolicy denies the client on reviews-v1; the destination agent refuses with 401")
	if err := d.apply(ctx, scene{namespaceWaypoint: true, serviceWaypoint: true, podWaypoint: true, egress: true, deny: true}); err != nil {
		return err
	}
	d.requests(ctx, "reviews-v1 (pod IP, denied)", d.pods["reviews-v1"].IP.String()+":9080", 1)
	d.requests(ctx, "reviews-v3 (pod IP, allowed)", d.pods["reviews-v3"].IP.String()+":9080", 1)

	if err := d.l7Steps(ctx); err != nil {
		return err
	}

	step("Done. Everything above came from the agents' and waypoints' access logs.")
	if keep {
		fmt.Println("  -keep: the lab stays up until Ctrl-C; try: ip netns exec", d.pods["client"].NS.Name, "curl", reviewsVIP+":9080")
		<-ctx.Done()
	}
	return nil
}

func step(s string) { fmt.Printf("\n\033[1m== %s\033[0m\n", s) }

// scene selects what the configuration contains.
type scene struct {
	namespaceWaypoint, serviceWaypoint, podWaypoint, egress, deny bool
	// l7 holds extra documents (routes and L7 policies) for the L7 steps.
	l7 string
}

var configTmpl = template.Must(template.New("mesh").Parse(`
apiVersion: v1
kind: Namespace
metadata:
  name: demo
  labels:
    istio.io/dataplane-mode: ambient
{{- if .S.namespaceWaypoint}}
    istio.io/use-waypoint: waypoint
{{- end}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: Namespace
metadata: {name: common-infrastructure}
---
apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: demo
{{- if .S.serviceWaypoint}}
  labels: {istio.io/use-waypoint: reviews-svc-waypoint}
{{- end}}
spec: {clusterIP: {{.ReviewsVIP}}, selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: legacy}
spec: {clusterIP: {{.LegacyVIP}}, selector: {app: legacy}, ports: [{name: http, port: 8080}]}
{{range .Pods}}---
apiVersion: v1
kind: Pod
metadata:
  name: {{.Name}}
  namespace: {{.Namespace}}
  labels: { {{.Labels}} }
spec: {nodeName: {{.Node}}, serviceAccountName: {{.SA}}, containers: [{name: c, image: c}]}
status: {podIP: {{.IP}}}
{{end}}
{{range .Waypoints}}---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {{.Name}}
  namespace: {{.Namespace}}
  labels: {istio.io/waypoint-for: {{.For}}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
{{- if .Selector}}
    allowedRoutes:
      namespaces:
        from: Selector
        selector: {matchLabels: {istio.io/dataplane-mode: ambient}}
{{- end}}
status:
  addresses: [{type: IPAddress, value: {{.VIP}}}, {type: Hostname, value: {{.Name}}.{{.Namespace}}.svc.cluster.local}]
---
apiVersion: v1
kind: Service
metadata: {name: {{.Name}}, namespace: {{.Namespace}}, labels: {gateway.istio.io/managed: istio.io-mesh-controller}}
spec: {clusterIP: {{.VIP}}, selector: {gateway.networking.k8s.io/gateway-name: {{.Name}}}, ports: [{name: mesh, port: 15008}]}
{{end}}
{{- if .S.egress}}---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ext
  namespace: demo
  labels: {istio.io/use-waypoint: egress-gateway, istio.io/use-waypoint-namespace: common-infrastructure}
spec:
  hosts: [ext.example.com]
  addresses: [{{.ExternalIP}}]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: {{.ExternalPodIP}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ext
  namespace: other
  labels: {istio.io/use-waypoint: egress-gateway, istio.io/use-waypoint-namespace: common-infrastructure}
spec:
  hosts: [ext.example.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: {{.ExternalPodIP}}}]
{{end}}
{{- if .S.deny}}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client-on-v1, namespace: demo}
spec:
  selector: {matchLabels: {version: v1}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]
{{end}}
{{- if .L7}}---
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: demo}
spec: {clusterIP: 10.96.0.21, selector: {app: reviews, version: v1}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: demo, labels: {istio.io/use-waypoint: reviews-svc-waypoint}}
spec: {clusterIP: 10.96.0.22, selector: {app: reviews, version: v2}, ports: [{name: http, port: 9080}]}
---
{{.L7}}
{{end}}`))

type podDoc struct{ Name, Namespace, Labels, Node, SA, IP string }
type wpDoc struct {
	Name, Namespace, For, VIP string
	Selector                  bool
}

func (d *demo) writeConfig(s scene) error {
	pod := func(name, ns, labels string) podDoc {
		p := d.pods[name]
		return podDoc{Name: name, Namespace: ns, Labels: labels, Node: fmt.Sprintf("node%d", p.Node.Index), SA: name, IP: p.IP.String()}
	}
	v2 := "app: reviews, version: v2"
	if s.podWaypoint {
		v2 += ", istio.io/use-waypoint: reviews-v2-pod-waypoint"
	}
	wpLabels := func(name string) string {
		return "gateway.networking.k8s.io/gateway-name: " + name + ", istio.io/dataplane-mode: none"
	}
	data := map[string]any{
		"S":          map[string]bool{"namespaceWaypoint": s.namespaceWaypoint, "serviceWaypoint": s.serviceWaypoint, "egress": s.egress, "deny": s.deny},
		"L7":         s.l7,
		"ReviewsVIP": reviewsVIP, "LegacyVIP": legacyVIP, "ExternalIP": externalIP, "ExternalPodIP": d.pods["external"].IP.String(),
		"Pods": []podDoc{
			pod("client", "demo", "app: client"),
			pod("reviews-v1", "demo", "app: reviews, version: v1"),
			pod("reviews-v2", "demo", v2),
			pod("reviews-v3", "demo", "app: reviews, version: v3"),
			pod("legacy", "legacy", "app: legacy"),
			pod("external", "legacy", "app: external"),
			pod("waypoint", "demo", wpLabels("waypoint")),
			pod("reviews-svc-waypoint", "demo", wpLabels("reviews-svc-waypoint")),
			pod("reviews-v2-pod-waypoint", "demo", wpLabels("reviews-v2-pod-waypoint")),
			pod("egress-gateway", "common-infrastructure", wpLabels("egress-gateway")),
		},
		"Waypoints": []wpDoc{
			{Name: "waypoint", Namespace: "demo", For: "service", VIP: "10.96.1.1"},
			{Name: "reviews-svc-waypoint", Namespace: "demo", For: "service", VIP: "10.96.1.2"},
			{Name: "reviews-v2-pod-waypoint", Namespace: "demo", For: "workload", VIP: "10.96.1.3"},
			{Name: "egress-gateway", Namespace: "common-infrastructure", For: "service", VIP: "10.96.1.4", Selector: true},
		},
	}
	var b strings.Builder
	if err := configTmpl.Execute(&b, data); err != nil {
		return fmt.Errorf("render config: %w", err)
	}
	tmp := d.config + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, d.config) // atomic: the agents never read half a file
}

// apply writes the scene and waits until every agent and waypoint has logged the new configuration.
func (d *demo) apply(ctx context.Context, s scene) error {
	before := map[string]int{}
	for name, f := range d.logs {
		before[name] = strings.Count(readFile(f), "configuration applied")
	}
	if err := d.writeConfig(s); err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for name, f := range d.logs {
		for strings.Count(readFile(f), "configuration applied") <= before[name] {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("%s did not apply the new configuration (see %s)", name, f)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

func readFile(name string) string {
	b, _ := os.ReadFile(name)
	return string(b)
}

// start runs a process inside a network namespace (with `ip netns exec`, which also gives it a mount
// namespace of its own) with its output in a log file.
func (d *demo) start(ctx context.Context, ns lab.NS, name string, args ...string) error {
	return d.startCmd(name, exec.Command("ip", append([]string{"netns", "exec", ns.Name}, args...)...))
}

// startCmd starts cmd with its output in the log file <name>.log.
func (d *demo) startCmd(name string, cmd *exec.Cmd) error {
	f, err := os.Create(filepath.Join(d.dir, name+".log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = f, f
	p, err := proc.Start(cmd)
	f.Close()
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	d.procs = append(d.procs, p)
	d.logs[name] = f.Name()
	return nil
}

// startAgent runs node n's agent the way the DaemonSet does: in the host's mount namespace (so its pinned
// capture state, on the host's bpffs, outlives it, and a restarted agent re-adopts it) with --netns naming the
// node's network namespace, where it binds its listeners and installs capture. Not `ip netns exec`: that
// gives the agent a private mount namespace and a bpffs that dies with it, which the agent refuses.
func (d *demo) startAgent(ctx context.Context, n *lab.Node) error {
	return d.startCmd(fmt.Sprintf("node%d", n.Index), exec.Command(filepath.Join(d.bin, "ambit"), "agent",
		"--node-name", fmt.Sprintf("node%d", n.Index), "--netns", n.NS.Path(), "--config-file", d.config, "--config-poll", "200ms",
		"--ca-dir", filepath.Join(d.dir, "ca"), "--uplinks", n.Uplink, "--pin-dir", n.PinDir,
		"--admin-addr", "127.0.0.1:15000"))
}

func (d *demo) startWaypoint(ctx context.Context, pod, ns string) error {
	p := d.pods[pod]
	return d.start(ctx, p.NS, pod, filepath.Join(d.bin, "ambit"), "waypoint", "--name", pod, "--namespace", ns,
		"--pod-ip", p.IP.String(), "--config-file", d.config, "--config-poll", "200ms", "--ca-dir", filepath.Join(d.dir, "ca"))
}

func (d *demo) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for name, f := range d.logs {
		for !strings.Contains(readFile(f), " ready") {
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("%s did not become ready; its log:\n%s", name, readFile(f))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

// serve answers HTTP requests in a pod with the pod's name and the client address it saw.
func (d *demo) serve(name string, port int) {
	p := d.pods[name]
	ln, err := p.NS.Listen(context.Background(), "tcp", fmt.Sprintf(":%d", port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo: serve", name, err)
		return
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		if strings.HasPrefix(r.URL.Path, "/flaky/") && firstTry(r.URL.Path) {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "%s failed the first try\n", name)
			return
		}
		fmt.Fprintf(w, "%s saw %s\n", name, host)
	}))
}

// requests sends n HTTP requests from the client pod and prints, for each, the path its connection
// took according to the client node's agent, and who answered.
func (d *demo) requests(ctx context.Context, label, addr string, n int) {
	client := d.pods["client"]
	fmt.Printf("  client -> %s  [%s]\n", addr, label)
	for range n {
		var local string
		tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			c, err := client.NS.Dial(ctx, network, a)
			if err == nil {
				local = c.LocalAddr().String()
			}
			return c, err
		}}
		hc := &http.Client{Transport: tr, Timeout: 5 * time.Second}
		resp, err := hc.Get("http://" + addr + "/")
		answer := ""
		if err != nil {
			answer = "refused: " + shortErr(err)
		} else {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			answer = strings.TrimSpace(string(b))
		}
		fmt.Printf("      %-72s %s\n", d.path(local), answer)
	}
}

func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}

// path finds the client agent's access-log line for the connection from local and describes the route.
func (d *demo) path(local string) string {
	if local == "" {
		return "(no connection)"
	}
	log := d.logs[fmt.Sprintf("node%d", d.pods["client"].Node.Index)]
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		sc := bufio.NewScanner(strings.NewReader(readFile(log)))
		for sc.Scan() {
			line := sc.Text()
			if !strings.Contains(line, "src.addr="+local+" ") || !strings.Contains(line, "direction=outbound") && !strings.Contains(line, "connection failed") {
				continue
			}
			f := fields(line)
			switch {
			case f["msg"] == "connection failed":
				return "rejected: " + f["error"]
			case f["waypoint"] != "":
				return fmt.Sprintf("via waypoint %s (%s, HBONE)", f["waypoint"], f["dst.addr"])
			case f["protocol"] == "HBONE":
				return fmt.Sprintf("direct HBONE to %s", f["dst.addr"])
			default:
				return fmt.Sprintf("plain TCP to %s (not in the mesh)", f["dst.addr"])
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "(no access log line)"
}

// fields parses a slog text line (key=value, values possibly quoted).
func fields(line string) map[string]string {
	out := map[string]string{}
	for len(line) > 0 {
		line = strings.TrimLeft(line, " ")
		eq := strings.IndexByte(line, '=')
		if eq < 0 {
			break
		}
		key := line[:eq]
		line = line[eq+1:]
		var val string
		if strings.HasPrefix(line, `"`) {
			end := 1
			for end < len(line) && (line[end] != '"' || line[end-1] == '\\') {
				end++
			}
			val = strings.ReplaceAll(line[1:min(end, len(line))], `\"`, `"`)
			line = line[min(end+1, len(line)):]
		} else {
			sp := strings.IndexByte(line, ' ')
			if sp < 0 {
				sp = len(line)
			}
			val, line = line[:sp], line[sp:]
		}
		out[key] = val
	}
	return out
}

// show runs an ambitctl command and prints its output, indented.
func (d *demo) show(name string, args ...string) {
	fmt.Printf("  $ %s %s\n", name, strings.Join(args, " "))
	out, err := proc.CombinedOutput(exec.Command(filepath.Join(d.bin, name), args...))
	for _, l := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Println("    " + l)
	}
	if err != nil {
		fmt.Println("    (", err, ")")
	}
}

func (d *demo) close() {
	for _, p := range d.procs {
		_ = p.Signal(syscall.SIGTERM)
	}
	for _, p := range d.procs {
		_ = p.Stop(10 * time.Second)
	}
	proc.KillAll()
	if err := d.lab.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "demo: remove lab:", err)
	}
	fmt.Println("\n  cleaned up: processes stopped, lab removed (logs kept in " + d.dir + ")")
}
