//go:build e2e

package kube

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/admin/dump"
	"github.com/ambit-mesh/ambit/test/kubelet"
	"github.com/ambit-mesh/ambit/test/lab"
)

// The agent must survive control-plane restarts: connections established through the mesh keep working while
// kube-apiserver or istiod is down and comes back, and afterwards the agent catches up (new pods are captured
// and annotated, new services are routed). Paths are asserted from the agents' live connections view (GET
// /connections on the admin port) and their access logs ("connection complete" lines).

const (
	rsServerNode   = "node-1"
	rsClientNode   = "node-0"
	rsPort         = 9080
	rsRedirection  = "ambient.istio.io/redirection"
	rsAgentName    = "ambit" // the agent's container in the DaemonSet
	rsAdminAddress = "127.0.0.1:15000"
)

// rsServerYAML is an echo Deployment and its Service, name, in ns on node.
func rsServerYAML(ns, name, node string, replicas int) string {
	return fmt.Sprintf(`---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  replicas: %[4]d
  selector: {matchLabels: {app: %[2]s}}
  template:
    metadata: {labels: {app: %[2]s}}
    spec:
      nodeSelector: {kubernetes.io/hostname: %[3]s}
      containers:
      - name: echo
        image: ambit-e2e/echo:1
        args: [--port=%[5]d]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{containerPort: %[5]d, name: http}]
        readinessProbe: {tcpSocket: {port: %[5]d}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: %[2]s, namespace: %[1]s}
spec:
  selector: {app: %[2]s}
  ports: [{name: http, port: %[5]d, targetPort: %[5]d}]
`, ns, name, node, replicas, rsPort)
}

// rsPodYAML is a bare echo pod with labels on node.
func rsPodYAML(ns, name, node, labels string) string {
	return fmt.Sprintf(`---
apiVersion: v1
kind: Pod
metadata: {name: %[2]s, namespace: %[1]s, labels: {%[4]s}}
spec:
  nodeSelector: {kubernetes.io/hostname: %[3]s}
  containers:
  - name: echo
    image: ambit-e2e/echo:1
    args: [--port=%[5]d]
    env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    readinessProbe: {tcpSocket: {port: %[5]d}, periodSeconds: 1}
`, ns, name, node, labels, rsPort)
}

// rsEnrolledPods waits until ns has at least n running pods matching selector, each captured (annotated by
// the agent) and known to the kubelet, and returns them by name.
func (c *cluster) rsEnrolledPods(t *testing.T, ns, selector string, n int) map[string]kubelet.Pod {
	t.Helper()
	var out map[string]kubelet.Pod
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d captured pods %s in %s", n, selector, ns), func() bool {
		list, err := c.client.CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false
		}
		out = map[string]kubelet.Pod{}
		for _, p := range list.Items {
			if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || p.Annotations[rsRedirection] != "enabled" || !rsReady(&p) {
				continue
			}
			if kp, ok := c.kubelet.Pod(ns, p.Name); ok {
				out[p.Name] = kp
			}
		}
		return len(out) >= n
	})
	return out
}

func rsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// rsNodeNS returns the network namespace of the lab node Kubernetes calls name.
func (c *cluster) rsNodeNS(t *testing.T, name string) lab.NS {
	t.Helper()
	for i := range c.lab.Nodes {
		if c.kubelet.NodeName(i) == name {
			return c.lab.Nodes[i].NS
		}
	}
	t.Fatalf("no lab node %s", name)
	return lab.NS{}
}

// rsConnections returns the live connections of the agent on node (its admin API, in the node's namespace).
func (c *cluster) rsConnections(t *testing.T, node string) []dump.Connection {
	t.Helper()
	ns := c.rsNodeNS(t, node)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) { return ns.Dial(ctx, network, addr) },
	}}
	defer hc.CloseIdleConnections()
	resp, err := hc.Get("http://" + rsAdminAddress + "/connections")
	if err != nil {
		t.Fatalf("agent on %s: connections: %v", node, err)
	}
	defer resp.Body.Close()
	var conns []dump.Connection
	if err := json.NewDecoder(resp.Body).Decode(&conns); err != nil {
		t.Fatalf("agent on %s: connections: %v", node, err)
	}
	return conns
}

// rsLiveOutbound returns the client agent's live outbound connection from src, failing t if there is none.
func (c *cluster) rsLiveOutbound(t *testing.T, src string) dump.Connection {
	t.Helper()
	var conns []dump.Connection
	for range 20 {
		conns = c.rsConnections(t, rsClientNode)
		for _, cn := range conns {
			if cn.Src == src && cn.Direction == "outbound" {
				return cn
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no live outbound connection from %s on %s's agent: %+v", src, rsClientNode, conns)
	return dump.Connection{}
}

// rsAgent returns the name of the agent pod on node.
func (c *cluster) rsAgent(t *testing.T, node string) string {
	t.Helper()
	list, err := c.client.CoreV1().Pods("istio-system").List(t.Context(), metav1.ListOptions{LabelSelector: agentSelector,
		FieldSelector: "spec.nodeName=" + node})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("agent pod on %s: %v (%d pods)", node, err, len(list.Items))
	}
	return list.Items[0].Name
}

// rsAccessLine waits for the "connection complete" line of node's agent whose attributes include want, and
// returns its attributes.
func (c *cluster) rsAccessLine(t *testing.T, e *rsEnv, node string, want map[string]string) map[string]string {
	t.Helper()
	var found logLine
	waitFor(t, 15*time.Second, fmt.Sprintf("access-log line %v on %s", want, node), func() bool {
		ls := c.accessLines("istio-system", e.agents[node], rsAgentName, want)
		if len(ls) == 0 {
			return false
		}
		found = ls[0]
		return true
	})
	return found
}

// rsConn is a long-lived HTTP/1.1 keep-alive connection from a pod, counting the bytes it sent and received.
type rsConn struct {
	conn       net.Conn
	br         *bufio.Reader
	target     string
	sent, recv int64
	// first is the first response: the same server answers every request of the connection.
	first string
}

// countingReader counts what the connection received.
type countingReader struct{ r *rsConn }

func (c countingReader) Read(p []byte) (int, error) {
	n, err := c.r.conn.Read(p)
	c.r.recv += int64(n)
	return n, err
}

func newRSConn(conn net.Conn, target string) *rsConn {
	r := &rsConn{conn: conn, target: target}
	r.br = bufio.NewReader(countingReader{r})
	return r
}

func rsDial(t *testing.T, from kubelet.Pod, target string) *rsConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn, err := from.NS.Dial(ctx, "tcp", target)
	if err != nil {
		t.Fatalf("dial %s: %v", target, err)
	}
	t.Cleanup(func() { conn.Close() })
	return newRSConn(conn, target)
}

// local is the client side's address: the key of the connection in the agent's views.
func (r *rsConn) local() string { return r.conn.LocalAddr().String() }

// get sends one request on the connection and returns the response body.
func (r *rsConn) get() (string, error) {
	return r.getWithin(10 * time.Second)
}

func (r *rsConn) getWithin(d time.Duration) (string, error) {
	if err := r.conn.SetDeadline(time.Now().Add(d)); err != nil {
		return "", err
	}
	n, err := fmt.Fprintf(r.conn, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", r.target)
	r.sent += int64(n)
	if err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(r.br, nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK || resp.Close {
		return string(b), fmt.Errorf("GET %s: %s (close %v)", r.target, resp.Status, resp.Close)
	}
	return strings.TrimSpace(string(b)), nil
}

// rsGetOnce sends one request on a fresh connection from a pod and returns the body and the connection's local
// address.
func rsGetOnce(t *testing.T, from kubelet.Pod, target string) (body, local string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	conn, err := from.NS.Dial(ctx, "tcp", target)
	if err != nil {
		return "", "", err
	}
	defer conn.Close()
	r := newRSConn(conn, target)
	body, err = r.getWithin(3 * time.Second)
	return body, r.local(), err
}

// rsEnv is one restart test's application: a server Deployment and Service on rsServerNode and a client pod on
// rsClientNode, in an ambient namespace of their own.
type rsEnv struct {
	ns     string
	client kubelet.Pod
	vip    string
	server map[string]kubelet.Pod
	// agents are the agent pods by node.
	agents map[string]string
}

func (c *cluster) rsSetUp(t *testing.T, ns string) *rsEnv {
	t.Helper()
	c.cliCreateNamespace(t, ns, map[string]string{"istio.io/dataplane-mode": "ambient"})
	// Pods are refused until the service-account controller made the namespace's default account.
	waitFor(t, time.Minute, "service account "+ns+"/default", func() bool {
		_, err := c.client.CoreV1().ServiceAccounts(ns).Get(t.Context(), "default", metav1.GetOptions{})
		return err == nil
	})
	c.apply(t, rsServerYAML(ns, "server", rsServerNode, 1)+rsPodYAML(ns, "client", rsClientNode, "app: client"))
	// The agent pods' names, looked up now: the API server is down for part of the test.
	e := &rsEnv{ns: ns, agents: map[string]string{}}
	for _, node := range []string{rsClientNode, rsServerNode} {
		e.agents[node] = c.rsAgent(t, node)
	}
	e.server = c.rsEnrolledPods(t, ns, "app=server", 1)
	e.client = c.rsEnrolledPods(t, ns, "app=client", 1)["client"]
	e.vip = c.kubectl(t, "get", "svc", "server", "-n", ns, "-o", "jsonpath={.spec.clusterIP}")
	return e
}

// rsOpenLongLived opens the long-lived connection to the server Service and checks its first request and the
// path it took: outbound HBONE from the client's agent to the server pod. It retries for a while, as istiod
// learns of the ready, captured server pod and pushes it to the client's agent.
func (c *cluster) rsOpenLongLived(t *testing.T, e *rsEnv) (*rsConn, dump.Connection) {
	t.Helper()
	pod := rsKeys(e.server)[0]
	sp := e.server[pod]
	var lc *rsConn
	var body string
	deadline := time.Now().Add(30 * time.Second)
	for {
		var err error
		lc = rsDial(t, e.client, net.JoinHostPort(e.vip, fmt.Sprint(rsPort)))
		if body, err = lc.get(); err == nil {
			break
		}
		lc.conn.Close()
		if time.Now().After(deadline) {
			t.Fatalf("first request on the long-lived connection: %v", err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	// The server saw the client pod's own address: the agents preserve the source across HBONE.
	if want := pod + " saw " + e.client.IP.String(); body != want {
		t.Errorf("response %q, want %q", body, want)
	}
	lc.first = body
	live := c.rsLiveOutbound(t, lc.local())
	t.Logf("long-lived connection %s -> %s: %q; client agent relays it as %s to %s (authority %s, service %s)",
		lc.local(), lc.target, body, live.Protocol, live.Hop, live.Authority, live.Service)
	hbone := net.JoinHostPort(sp.IP.String(), fmt.Sprint(rsPort))
	if live.Protocol != "HBONE" || live.Authority != hbone || live.Service != e.ns+"/server."+e.ns+".svc.cluster.local" ||
		live.Waypoint != "" {
		t.Errorf("live connection %+v: want HBONE to %s for service server, no waypoint", live, hbone)
	}
	return lc, live
}

// rsCheckSurvived sends another request on the long-lived connection and checks the agent still relays it as
// the same connection.
func (c *cluster) rsCheckSurvived(t *testing.T, lc *rsConn, before dump.Connection, what string) {
	t.Helper()
	body, err := lc.get()
	if err != nil {
		t.Fatalf("request on the connection established before the %s: %v", what, err)
	}
	if body != lc.first {
		t.Errorf("response after the %s: %q, want %q", what, body, lc.first)
	}
	after := c.rsLiveOutbound(t, lc.local())
	if after.ID != before.ID || after.Authority != before.Authority || after.BytesUpstream <= before.BytesUpstream {
		t.Errorf("after the %s the agent relays %+v, before %+v", what, after, before)
	}
}

// rsCloseLongLived closes the long-lived connection and checks both agents' access-log lines for it.
func (c *cluster) rsCloseLongLived(t *testing.T, e *rsEnv, lc *rsConn, live dump.Connection) {
	t.Helper()
	lc.conn.Close()
	// By the source namespace too: pod IPs are reused, and an earlier pod's connection may have had the port.
	out := c.rsAccessLine(t, e, rsClientNode, map[string]string{"src.addr": lc.local(), "direction": "outbound", "src.namespace": e.ns})
	if out["dst.hbone_addr"] != live.Authority || out["protocol"] != "HBONE" || out["dst.service"] != "server."+e.ns+".svc.cluster.local" ||
		out["error"] != "" || out["waypoint"] != "" {
		t.Errorf("client agent's access log: %v, want HBONE to %s for service server without error", out, live.Authority)
	}
	// The agent relayed exactly what the client sent and received over the connection's lifetime.
	if out["bytes_sent"] != fmt.Sprint(lc.sent) || out["bytes_recv"] != fmt.Sprint(lc.recv) {
		t.Errorf("client agent's access log: %v: want bytes_sent %d, bytes_recv %d", out, lc.sent, lc.recv)
	}
	// The server node's line of the same connection: same destination, same byte counts (the source port
	// there is the HBONE tunnel's, not the client's).
	in := c.rsAccessLine(t, e, rsServerNode, map[string]string{"direction": "inbound", "dst.addr": live.Authority,
		"src.workload": "client", "src.namespace": e.ns, "bytes_sent": out["bytes_sent"], "bytes_recv": out["bytes_recv"]})
	t.Logf("access log of the long-lived connection:\n  client node: %v\n  server node: %v", out, in)
	if in["error"] != "" || !strings.HasPrefix(in["src.addr"], e.client.IP.String()+":") || in["protocol"] != "HBONE" ||
		in["src.identity"] != "spiffe://cluster.local/ns/"+e.ns+"/sa/default" {
		t.Errorf("server agent's access log: %v", in)
	}
}

// rsReach checks that target is reachable from the client through the mesh within d, answered by one of pods,
// with the client agent's access-log line of that request showing HBONE to the answering pod (pod IP:port) for
// service svc ("" for none). Until d passes it retries (fresh connections) while routes propagate: istiod
// learns of a pod's capture from its annotation and then pushes it to the agents as an HBONE workload.
func (c *cluster) rsReach(t *testing.T, e *rsEnv, target string, pods map[string]kubelet.Pod, svc string, d time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(d)
	var last string
	for {
		body, local, err := rsGetOnce(t, e.client, target)
		last = fmt.Sprintf("response %q, error %v", body, err)
		if err == nil {
			name, _, _ := strings.Cut(body, " saw ")
			if p, ok := pods[name]; ok {
				line := c.rsAccessLine(t, e, rsClientNode, map[string]string{"src.addr": local, "direction": "outbound", "src.namespace": e.ns})
				hbone := net.JoinHostPort(p.IP.String(), fmt.Sprint(rsPort))
				if line["dst.hbone_addr"] == hbone && line["protocol"] == "HBONE" && line["dst.service"] == svc && line["error"] == "" {
					t.Logf("%s answered by %s: client agent's access log %v", target, name, line)
					return name
				}
				last = fmt.Sprintf("answered by %s, access log %v, want HBONE to %s, service %q", name, line, hbone, svc)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not reached through the mesh at any of %v within %v: last %s", target, rsKeys(pods), d, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// rsRestartWith restarts the stack's peer name (5 s down) and, once probe fails (the peer is down), runs during
// while it is; it returns when the peer is ready again.
func (c *cluster) rsRestartWith(t *testing.T, name string, probe func() error, during func()) {
	t.Helper()
	done := make(chan error, 1)
	t0 := time.Now()
	go func() { done <- c.stack.Restart(context.Background(), name, 5*time.Second) }()
	waited := false
	defer func() {
		if !waited {
			<-done // t failed in during: let the restart finish before the test ends
		}
	}()
	waitFor(t, 15*time.Second, name+" down", func() bool { return probe() != nil })
	during()
	err := <-done
	waited = true
	if err != nil {
		t.Fatalf("restart %s: %v", name, err)
	}
	t.Logf("%s restarted in %v (%s)", name, time.Since(t0).Round(time.Millisecond), c.rsRestartTimings())
}

// rsDialFails returns a probe that fails while addr (host:port on the host) accepts connections.
func rsDialFails(addr string) func() error {
	return func() error {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return err
		}
		conn.Close()
		return nil
	}
}

// rsRestartTimings formats the stack's last two timings: the restart's stop and start-to-ready.
func (c *cluster) rsRestartTimings() string {
	ts := c.stack.Timings[max(0, len(c.stack.Timings)-2):]
	var parts []string
	for _, tm := range ts {
		parts = append(parts, fmt.Sprintf("%s %v", tm.Phase, tm.Took.Round(time.Millisecond)))
	}
	return strings.Join(parts, ", ") + ", 5 s down between"
}

// rsKeys returns the sorted keys of m.
func rsKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }

// TestAPIServerRestart restarts kube-apiserver under an established mesh connection: the connection keeps
// working, and afterwards the agents capture and route new pods (they re-established their watches).
func TestAPIServerRestart(t *testing.T) {
	c := need(t)
	e := c.rsSetUp(t, "restart-apiserver")
	lc, live := c.rsOpenLongLived(t, e)

	svc := "server." + e.ns + ".svc.cluster.local"
	c.rsRestartWith(t, "kube-apiserver", rsDialFails(c.stack.APIServerAddr), func() {
		// While the API server is down: the established connection works, and so do new ones.
		c.rsCheckSurvived(t, lc, live, "kube-apiserver outage")
		c.rsReach(t, e, net.JoinHostPort(e.vip, fmt.Sprint(rsPort)), e.server, svc, 5*time.Second)
		if err := rsDialFails(c.stack.APIServerAddr)(); err == nil {
			t.Error("kube-apiserver came back before the checks of the outage were done")
		}
	})
	c.rsCheckSurvived(t, lc, live, "kube-apiserver restart")

	// Catch-up: a second replica on the server node and a new pod of the same Service on the client's node,
	// created after the restart, are captured by their nodes' agents and reachable through the mesh.
	c.kubectl(t, "scale", "deployment/server", "-n", e.ns, "--replicas=2")
	c.apply(t, rsPodYAML(e.ns, "server-extra", rsClientNode, "app: server"))
	t1 := time.Now()
	all := c.rsEnrolledPods(t, e.ns, "app=server", 3)
	t.Logf("new pods captured and annotated %v after the scale-up", time.Since(t1).Round(time.Millisecond))
	fresh := map[string]kubelet.Pod{}
	for name, p := range all {
		if _, old := e.server[name]; !old {
			fresh[name] = p
		}
	}
	if len(fresh) != 2 {
		t.Fatalf("new server pods: %v", rsKeys(fresh))
	}
	for name, p := range fresh {
		// By pod IP: the destination pod's agent captured it.
		c.rsReach(t, e, net.JoinHostPort(p.IP.String(), fmt.Sprint(rsPort)), map[string]kubelet.Pod{name: p}, "", 30*time.Second)
		// By the Service VIP: istiod sent the new endpoint (it learned of the pod's capture from the annotation).
		c.rsReach(t, e, net.JoinHostPort(e.vip, fmt.Sprint(rsPort)), map[string]kubelet.Pod{name: p}, svc, 60*time.Second)
	}

	c.rsCheckSurvived(t, lc, live, "catch-up")
	c.rsCloseLongLived(t, e, lc, live)
}

// TestIstiodRestart restarts istiod under an established mesh connection: the connection keeps working, and
// afterwards a new Service and its pod are reachable by the Service VIP (the agent reconnected to xDS and
// caught up).
func TestIstiodRestart(t *testing.T) {
	c := need(t)
	e := c.rsSetUp(t, "restart-istiod")
	lc, live := c.rsOpenLongLived(t, e)

	c.rsRestartWith(t, "istiod", rsDialFails(c.stack.XDSAddr), func() {
		// While istiod is down: the established connection works, and so do new ones (state and certificates
		// are the agent's).
		c.rsCheckSurvived(t, lc, live, "istiod outage")
		c.rsReach(t, e, net.JoinHostPort(e.vip, fmt.Sprint(rsPort)), e.server, "server."+e.ns+".svc.cluster.local", 3*time.Second)
		if err := rsDialFails(c.stack.XDSAddr)(); err == nil {
			t.Error("istiod came back before the checks of the outage were done")
		}
	})
	c.rsCheckSurvived(t, lc, live, "istiod restart")

	// Catch-up: a Service and pod created after the restart are known only through the new xDS stream.
	c.apply(t, rsServerYAML(e.ns, "server2", rsServerNode, 1))
	pods := c.rsEnrolledPods(t, e.ns, "app=server2", 1)
	vip2 := c.kubectl(t, "get", "svc", "server2", "-n", e.ns, "-o", "jsonpath={.spec.clusterIP}")
	t1 := time.Now()
	c.rsReach(t, e, net.JoinHostPort(vip2, fmt.Sprint(rsPort)), pods, "server2."+e.ns+".svc.cluster.local", 60*time.Second)
	t.Logf("new service reachable through the mesh %v after its pod was captured", time.Since(t1).Round(time.Millisecond))

	c.rsCheckSurvived(t, lc, live, "catch-up")
	c.rsCloseLongLived(t, e, lc, live)
}
