//go:build e2e

package kube

import (
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// twoPods is a server Deployment (echo, port 9080, with a Service) on node-1 and a client Deployment on node-0
// in namespace ns, labelled ambient when ambient is set.
func twoPods(ns string, ambient bool) string {
	labels := "{}"
	if ambient {
		labels = "{istio.io/dataplane-mode: ambient}"
	}
	return strings.NewReplacer("NS", ns, "LABELS", labels).Replace(`
apiVersion: v1
kind: Namespace
metadata: {name: NS, labels: LABELS}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-1}
      containers:
      - name: server
        image: ambit-e2e/echo:1
        args: [--port=9080]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        readinessProbe: {tcpSocket: {port: 9080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: NS}
spec:
  selector: {app: server}
  ports: [{name: http, port: 9080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: NS}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-0}
      containers:
      - name: client
        image: ambit-e2e/echo:1
        args: [--port=9080]
`)
}

// TestAgentRestart replaces both node agents (the DaemonSet controller recreates the deleted pods and the
// kubelet runs them): the new agents re-adopt the capture the old ones installed, the pods keep their
// redirection annotation throughout (istiod never sees them leave the mesh), and traffic flows over HBONE again.
func TestAgentRestart(t *testing.T) {
	c := need(t)
	ctx := t.Context()
	c.apply(t, twoPods("agent-restart", true))
	for _, d := range []string{"server", "client"} {
		c.kubectl(t, "rollout", "status", "deployment/"+d, "-n", "agent-restart", "--timeout=120s")
	}
	_, client := c.podBy(t, "agent-restart", "app=client")
	serverPod, _ := c.podBy(t, "agent-restart", "app=server")
	target := hostPort(c.kubectl(t, "get", "svc", "server", "-n", "agent-restart", "-o", "jsonpath={.spec.clusterIP}"), 9080)
	annotated := func() (bool, error) {
		list, err := c.client.CoreV1().Pods("agent-restart").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, p := range list.Items {
			if p.Annotations["ambient.istio.io/redirection"] != "enabled" {
				return false, nil
			}
		}
		return len(list.Items) == 2, nil
	}
	waitFor(t, time.Minute, "redirection annotations", func() bool { ok, _ := annotated(); return ok })
	viaHBONE := func(t *testing.T) {
		t.Helper()
		waitFor(t, 60*time.Second, "a request over HBONE", func() bool {
			body, local, err := get(ctx, client, target)
			if err != nil || !strings.HasPrefix(body, "server-") {
				return false
			}
			line := c.outboundLine(t, c.agentOn(t, "node-0"), local)
			return line["dst.hbone_addr"] == hostPort(serverPod.Status.PodIP, 9080) && line["protocol"] == "HBONE"
		})
	}
	viaHBONE(t)

	// Watch the annotations while the agents are replaced.
	var mu sync.Mutex
	var lost []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if ok, err := annotated(); err == nil && !ok {
				mu.Lock()
				lost = append(lost, time.Now().Format(time.StampMilli))
				mu.Unlock()
			}
		}
	})
	old := map[string]bool{c.agentOn(t, "node-0"): true, c.agentOn(t, "node-1"): true}
	c.kubectl(t, "delete", "pod", "-n", "istio-system", "-l", agentSelector, "--wait=true", "--timeout=60s")
	c.kubectl(t, "rollout", "status", "daemonset/"+agentDaemonSet, "-n", "istio-system", "--timeout=120s")
	for _, node := range []string{"node-0", "node-1"} {
		agent := c.agentOn(t, node)
		if old[agent] {
			t.Fatalf("agent pod on %s was not replaced", node)
		}
		waitFor(t, 30*time.Second, "re-adoption by the new agent on "+node, func() bool {
			return strings.Contains(c.kubelet.ReadLog("istio-system", agent, "ambit"), "re-adopted capture of a previous agent")
		})
	}
	viaHBONE(t)
	close(stop)
	wg.Wait()
	if len(lost) > 0 {
		t.Errorf("a pod lost its redirection annotation while the agents restarted, at %v", lost)
	}
	c.kubectl(t, "delete", "namespace", "agent-restart", "--wait=false")
}
