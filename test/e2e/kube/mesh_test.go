//go:build e2e

package kube

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/admin/dump"
	"github.com/ambit-mesh/ambit/test/kubelet"
	"github.com/ambit-mesh/ambit/test/lab"
)

// Tools the walkthrough uses to drive traffic from a pod and to read the path each request took from Ambit's
// access logs ("connection complete" lines, one per connection, written when it closes).

// podBy returns the running pod of a namespace that matches selector (the first, by name), and its kubelet view.
func (c *cluster) podBy(t *testing.T, namespace, selector string) (corev1.Pod, kubelet.Pod) {
	t.Helper()
	var pod corev1.Pod
	var kp kubelet.Pod
	waitFor(t, 2*time.Minute, "a running pod "+namespace+"/"+selector, func() bool {
		list, err := c.client.CoreV1().Pods(namespace).List(t.Context(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false
		}
		for _, p := range list.Items {
			if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning {
				continue
			}
			if k, ok := c.kubelet.Pod(p.Namespace, p.Name); ok {
				pod, kp = p, k
				return true
			}
		}
		return false
	})
	return pod, kp
}

// agentOn returns the name of the Ambit agent pod on node.
func (c *cluster) agentOn(t *testing.T, node string) string {
	t.Helper()
	list, err := c.client.CoreV1().Pods("istio-system").List(t.Context(), metav1.ListOptions{LabelSelector: agentSelector,
		FieldSelector: "spec.nodeName=" + node})
	if err != nil || len(list.Items) != 1 {
		t.Fatalf("agent pod on %s: %v (%d pods)", node, err, len(list.Items))
	}
	return list.Items[0].Name
}

// get sends one HTTP/1.1 request from the pod to target (host:port) on a fresh connection, and returns the
// response body and the connection's local address (the key of its access-log line).
func get(ctx context.Context, from kubelet.Pod, target string) (body, local string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := from.NS.Dial(ctx, "tcp", target)
	if err != nil {
		return "", "", err
	}
	defer conn.Close()
	local = conn.LocalAddr().String()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := fmt.Fprintf(conn, "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", target); err != nil {
		return "", local, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return "", local, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", local, err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), local, fmt.Errorf("GET %s: %s", target, resp.Status)
	}
	return strings.TrimSpace(string(b)), local, nil
}

// logLine is one parsed slog text line.
type logLine map[string]string

// parseLogLine parses key=value pairs of log/slog's text handler (values quoted when they hold spaces).
func parseLogLine(s string) logLine {
	l := logLine{}
	for len(s) > 0 {
		s = strings.TrimLeft(s, " ")
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			break
		}
		key := s[:eq]
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			end := 1
			for end < len(s) && (s[end] != '"' || s[end-1] == '\\') {
				end++
			}
			val = strings.ReplaceAll(s[1:min(end, len(s))], `\"`, `"`)
			s = s[min(end+1, len(s)):]
		} else {
			sp := strings.IndexByte(s, ' ')
			if sp < 0 {
				sp = len(s)
			}
			val, s = s[:sp], s[sp:]
		}
		l[key] = val
	}
	return l
}

// accessLines returns the access-log lines of a container's log ("connection complete" of the agent and of the
// waypoint's TCP forwarding, "request complete" of the waypoint's HTTP engine) that match every key=value of want.
func (c *cluster) accessLines(namespace, pod, container string, want map[string]string) []logLine {
	var out []logLine
	for _, raw := range strings.Split(c.kubelet.ReadLog(namespace, pod, container), "\n") {
		if !strings.Contains(raw, `msg="connection complete"`) && !strings.Contains(raw, `msg="request complete"`) {
			continue
		}
		l := parseLogLine(raw)
		ok := true
		for k, v := range want {
			if l[k] != v {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, l)
		}
	}
	return out
}

// outboundLine waits for the client agent's access-log line of the outbound connection from local.
func (c *cluster) outboundLine(t *testing.T, agent, local string) logLine {
	t.Helper()
	var line logLine
	waitFor(t, 10*time.Second, "access log of "+local, func() bool {
		ls := c.accessLines("istio-system", agent, "ambit", map[string]string{"src.addr": local, "direction": "outbound"})
		if len(ls) == 0 {
			return false
		}
		line = ls[len(ls)-1]
		return true
	})
	return line
}

// waitFor polls cond every 250 ms until it holds or d passes (then fails t with what).
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// hostPort joins an address and a port.
func hostPort(ip string, port int) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }

// connections returns the live connections of the agent on node, from its admin API (localhost:15000 in the
// node's network namespace), as `ambitctl node connections` shows them.
func (c *cluster) connections(t *testing.T, node string) []dump.Connection {
	t.Helper()
	var n *lab.Node
	for i := range c.lab.Nodes {
		if c.kubelet.NodeName(i) == node {
			n = c.lab.Nodes[i]
		}
	}
	if n == nil {
		t.Fatalf("no lab node %s", node)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: n.NS.Dial}}
	resp, err := hc.Get("http://127.0.0.1:15000/connections")
	if err != nil {
		t.Fatalf("connections of %s: %v", node, err)
	}
	defer resp.Body.Close()
	var conns []dump.Connection
	if err := json.NewDecoder(resp.Body).Decode(&conns); err != nil {
		t.Fatalf("connections of %s: %v", node, err)
	}
	return conns
}
