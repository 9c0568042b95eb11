//go:build e2e

package kube

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestEnrollmentFollowsLabels changes istio-cni's selector labels at runtime: capture and the redirection
// annotation follow the namespace label and a pod's own opt-out, without restarting anything.
func TestEnrollmentFollowsLabels(t *testing.T) {
	c := need(t)
	ctx := t.Context()
	const ns = "enroll-labels"
	c.apply(t, twoPods(ns, false))
	for _, d := range []string{"server", "client"} {
		c.kubectl(t, "rollout", "status", "deployment/"+d, "-n", ns, "--timeout=120s")
	}
	clientPod, client := c.podBy(t, ns, "app=client")
	serverPod, _ := c.podBy(t, ns, "app=server")
	// The pod IP: outside the mesh nothing serves Service VIPs here (no kube-proxy).
	target := hostPort(serverPod.Status.PodIP, 9080)
	clientAgent, serverAgent := c.agentOn(t, "node-0"), c.agentOn(t, "node-1")
	annotation := func(name string) string {
		p, err := c.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p.Annotations["ambient.istio.io/redirection"]
	}
	// request sends one request and reports the access-log lines it left: the client agent's outbound
	// line and the server agent's inbound line (either may be absent). Absence is checked after the
	// request completed and the other agent has logged, so a late line cannot be missed by much.
	type seen struct{ outbound, inbound logLine }
	inboundLines := func() []logLine {
		return c.accessLines("istio-system", serverAgent, "ambit", map[string]string{"direction": "inbound", "dst.workload": serverPod.Name})
	}
	request := func(t *testing.T) seen {
		t.Helper()
		n0 := len(inboundLines())
		body, local, err := get(ctx, client, target)
		if err != nil || !strings.HasPrefix(body, "server-") {
			t.Fatalf("GET %s: %q, %v", target, body, err)
		}
		var s seen
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) && (s.outbound == nil || s.inbound == nil) {
			if ls := c.accessLines("istio-system", clientAgent, "ambit", map[string]string{"src.addr": local, "direction": "outbound", "src.namespace": ns}); len(ls) > 0 {
				s.outbound = ls[0]
			}
			// The server agent's lines since the request: plaintext keeps the client's address, HBONE names
			// the client workload.
			if ls := inboundLines(); len(ls) > n0 {
				for _, l := range ls[n0:] {
					if l["src.addr"] == local || l["src.workload"] == clientPod.Name {
						s.inbound = l
					}
				}
			}
			time.Sleep(200 * time.Millisecond)
		}
		return s
	}

	t.Run("outside the mesh nothing is captured", func(t *testing.T) {
		if a := annotation(clientPod.Name) + annotation(serverPod.Name); a != "" {
			t.Fatalf("annotations before enrollment: %q", a)
		}
		if s := request(t); s.outbound != nil || s.inbound != nil {
			t.Errorf("captured before enrollment: %v", s)
		}
	})
	t.Run("labelling the namespace ambient captures both pods", func(t *testing.T) {
		c.kubectl(t, "label", "namespace", ns, "istio.io/dataplane-mode=ambient")
		waitFor(t, 30*time.Second, "both pods annotated", func() bool {
			return annotation(clientPod.Name) == "enabled" && annotation(serverPod.Name) == "enabled"
		})
		waitFor(t, 30*time.Second, "HBONE from client to server", func() bool {
			s := request(t)
			return s.outbound != nil && s.outbound["protocol"] == "HBONE" && s.inbound != nil && s.inbound["protocol"] == "HBONE"
		})
	})
	t.Run("a pod labelled dataplane-mode=none leaves the mesh; the server still captures its plaintext", func(t *testing.T) {
		c.kubectl(t, "label", "pod", clientPod.Name, "-n", ns, "istio.io/dataplane-mode=none")
		waitFor(t, 30*time.Second, "the client's annotation removed", func() bool { return annotation(clientPod.Name) == "" })
		waitFor(t, 30*time.Second, "plaintext from the client, captured inbound only", func() bool {
			s := request(t)
			return s.outbound == nil && s.inbound != nil && s.inbound["protocol"] == "TCP"
		})
		if a := annotation(serverPod.Name); a != "enabled" {
			t.Errorf("server annotation %q", a)
		}
	})
	t.Run("removing the namespace label releases the server too", func(t *testing.T) {
		c.kubectl(t, "label", "namespace", ns, "istio.io/dataplane-mode-")
		waitFor(t, 30*time.Second, "the server's annotation removed", func() bool { return annotation(serverPod.Name) == "" })
		waitFor(t, 30*time.Second, "no capture at either end", func() bool {
			s := request(t)
			return s.outbound == nil && s.inbound == nil
		})
	})
	c.kubectl(t, "delete", "namespace", ns, "--wait=false")
}
