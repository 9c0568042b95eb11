//go:build e2e

package kube

import (
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/admin/dump"
)

// bookinfo is a bookinfo-like application of echo servers in namespace default (labelled ambient by the test):
// productpage, details, ratings and reviews v1/v2/v3 on port 9080, and a client. Each Deployment has its own
// service account, as bookinfo's do. reviews-v2 runs on node-1 and the client on node-0, so that at least
// one path crosses nodes.
func bookinfo() string {
	var b strings.Builder
	deploy := func(app, version, node string) {
		name := app + "-" + version
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: ServiceAccount
metadata: {name: bookinfo-%[1]s, namespace: default}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[2]s, namespace: default, labels: {app: %[1]s, version: %[3]s}}
spec:
  replicas: 1
  selector: {matchLabels: {app: %[1]s, version: %[3]s}}
  template:
    metadata: {labels: {app: %[1]s, version: %[3]s}}
    spec:
      serviceAccountName: bookinfo-%[1]s
      nodeSelector: {kubernetes.io/hostname: %[4]s}
      containers:
      - name: %[1]s
        image: ambit-e2e/echo:1
        args: [--port=9080]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{containerPort: 9080, name: http}]
        readinessProbe: {tcpSocket: {port: 9080}, periodSeconds: 1}
`, app, name, version, node)
	}
	svc := func(app string) {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: default, labels: {app: %[1]s, service: %[1]s}}
spec:
  selector: {app: %[1]s}
  ports: [{name: http, port: 9080, targetPort: 9080}]
`, app)
	}
	deploy("productpage", "v1", "node-1")
	deploy("details", "v1", "node-0")
	deploy("ratings", "v1", "node-1")
	deploy("reviews", "v1", "node-0")
	deploy("reviews", "v2", "node-1")
	deploy("reviews", "v3", "node-0")
	deploy("client", "v1", "node-0")
	for _, app := range []string{"productpage", "details", "ratings", "reviews"} {
		svc(app)
	}
	return b.String()
}

// TestWalkthrough is Istio's waypoint walkthrough on the real control plane, driven with kubectl and
// ambitctl, asserting from Ambit's access logs which path every request took.
func TestWalkthrough(t *testing.T) {
	c := need(t)
	ctx := t.Context()
	c.kubectl(t, "label", "namespace", "default", "istio.io/dataplane-mode=ambient", "--overwrite")
	c.apply(t, bookinfo())
	for _, d := range []string{"productpage-v1", "details-v1", "ratings-v1", "reviews-v1", "reviews-v2", "reviews-v3", "client-v1"} {
		c.kubectl(t, "rollout", "status", "deployment/"+d, "-n", "default", "--timeout=120s")
	}
	clientPod, client := c.podBy(t, "default", "app=client")
	agent := c.agentOn(t, clientPod.Spec.NodeName)
	svcIP := map[string]string{}
	for _, s := range []string{"productpage", "details", "ratings", "reviews"} {
		svcIP[s] = c.kubectl(t, "get", "svc", s, "-n", "default", "-o", "jsonpath={.spec.clusterIP}")
	}
	podIP := func(selector string) string {
		_, kp := c.podBy(t, "default", selector)
		return kp.IP.String()
	}
	// Every pod of the namespace is captured and marked for istiod.
	waitFor(t, time.Minute, "redirection annotation on every bookinfo pod", func() bool {
		list, err := c.client.CoreV1().Pods("default").List(ctx, metav1.ListOptions{})
		if err != nil || len(list.Items) < 7 {
			return false
		}
		for _, p := range list.Items {
			if p.Annotations["ambient.istio.io/redirection"] != "enabled" {
				return false
			}
		}
		return true
	})

	// path sends one request from the client to target until its access-log line shows the expected
	// waypoint ("" for none: direct HBONE to the destination's node agent), for up to 30 s while istiod's
	// update propagates; it returns the last response body and access-log line.
	path := func(t *testing.T, target, waypoint string) (string, logLine) {
		t.Helper()
		var body string
		var line logLine
		var err error
		deadline := time.Now().Add(30 * time.Second)
		for {
			var local string
			body, local, err = get(ctx, client, target)
			if err == nil {
				line = c.outboundLine(t, agent, local)
				if line["waypoint"] == waypoint && line["dst.hbone_addr"] != "" {
					return body, line
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET %s: want waypoint %q, last: err=%v body=%q access log %v", target, waypoint, err, body, line)
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
	allServices := func(t *testing.T, waypoint string) {
		t.Helper()
		for _, s := range []string{"productpage", "details", "ratings", "reviews"} {
			body, line := path(t, hostPort(svcIP[s], 9080), waypoint)
			if !strings.HasPrefix(body, s+"-") {
				t.Errorf("%s answered by %q", s, body)
			}
			if line["dst.service"] != s+".default.svc.cluster.local" {
				t.Errorf("%s: access log dst.service %q", s, line["dst.service"])
			}
		}
	}

	// Each step builds on the previous one: stop at the first that fails.
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}
	step("before any waypoint every service is reached directly over HBONE", func(t *testing.T) {
		allServices(t, "")
	})

	step("generate and apply a namespace waypoint; istiod deploys it and it is Programmed", func(t *testing.T) {
		gen := c.mustAmbitctl(t, "waypoint", "generate", "--for", "service", "-n", "default")
		for _, want := range []string{"kind: Gateway", "gatewayClassName: istio-waypoint", "istio.io/waypoint-for: service", "port: 15008", "protocol: HBONE"} {
			if !strings.Contains(gen, want) {
				t.Fatalf("generate output lacks %q:\n%s", want, gen)
			}
		}
		if err := c.stack.Apply(ctx, gen); err != nil {
			t.Fatal(err)
		}
		out := c.mustAmbitctl(t, "waypoint", "apply", "-n", "default", "--wait")
		if want := "✅ waypoint default/waypoint applied\n✅ waypoint default/waypoint is ready!\n"; out != want {
			t.Errorf("apply --wait printed %q, want %q", out, want)
		}
		c.kubectl(t, "rollout", "status", "deployment/waypoint", "-n", "default", "--timeout=120s")
		list := c.mustAmbitctl(t, "waypoint", "list", "-n", "default")
		if !strings.Contains(list, "waypoint     default      service          True") {
			t.Errorf("waypoint list:\n%s", list)
		}
		status := c.mustAmbitctl(t, "waypoint", "status", "-n", "default")
		if !strings.Contains(status, "waypoint     True       Programmed") {
			t.Errorf("waypoint status:\n%s", status)
		}
		// The waypoint pod runs `ambit waypoint` (the class configuration replaced Envoy).
		wp, _ := c.podBy(t, "default", "gateway.networking.k8s.io/gateway-name=waypoint")
		if img := wp.Spec.Containers[0].Image; !strings.HasPrefix(img, "ghcr.io/ambit-mesh/ambit-waypoint:") {
			t.Errorf("waypoint image %q", img)
		}
		// Not enrolled yet: still direct.
		path(t, hostPort(svcIP["productpage"], 9080), "")
	})

	step("enroll the namespace; every service is reached through the waypoint", func(t *testing.T) {
		out := c.mustAmbitctl(t, "waypoint", "apply", "-n", "default", "--enroll-namespace", "--wait")
		if !strings.Contains(out, "✅ namespace default labeled with \"istio.io/use-waypoint: waypoint\"") {
			t.Errorf("apply --enroll-namespace printed %q", out)
		}
		allServices(t, "default/waypoint")
		// The waypoint itself logged the connections it carried, with the client's identity.
		wp, _ := c.podBy(t, "default", "gateway.networking.k8s.io/gateway-name=waypoint")
		waitFor(t, 10*time.Second, "waypoint access log", func() bool {
			return len(c.accessLines("default", wp.Name, "istio-proxy",
				map[string]string{"src.identity": "spiffe://cluster.local/ns/default/sa/bookinfo-client"})) > 0
		})
		// Pod-addressed traffic skips a service-only waypoint.
		path(t, hostPort(podIP("app=details"), 9080), "")
	})

	step("a service waypoint on reviews and a workload waypoint on reviews-v2; nothing transits twice", func(t *testing.T) {
		c.mustAmbitctl(t, "waypoint", "apply", "-n", "default", "--name", "reviews-svc-waypoint", "--wait")
		c.mustAmbitctl(t, "waypoint", "apply", "-n", "default", "--name", "reviews-v2-pod-waypoint", "--for", "workload", "--wait")
		for _, d := range []string{"reviews-svc-waypoint", "reviews-v2-pod-waypoint"} {
			c.kubectl(t, "rollout", "status", "deployment/"+d, "-n", "default", "--timeout=120s")
		}
		c.kubectl(t, "label", "service", "reviews", "-n", "default", "istio.io/use-waypoint=reviews-svc-waypoint")
		c.kubectl(t, "label", "pod", "-n", "default", "-l", "app=reviews,version=v2", "istio.io/use-waypoint=reviews-v2-pod-waypoint")
		path(t, hostPort(svcIP["reviews"], 9080), "default/reviews-svc-waypoint")
		v2 := podIP("app=reviews,version=v2")
		path(t, hostPort(v2, 9080), "default/reviews-v2-pod-waypoint")
		path(t, hostPort(podIP("app=reviews,version=v1"), 9080), "")
		// Service traffic that lands on reviews-v2 goes through the service waypoint only: the pod waypoint
		// sees none of it, and the destination agent sees the service waypoint's identity.
		podWP, _ := c.podBy(t, "default", "gateway.networking.k8s.io/gateway-name=reviews-v2-pod-waypoint")
		before := len(c.accessLines("default", podWP.Name, "istio-proxy", nil))
		v2Pod, _ := c.podBy(t, "default", "app=reviews,version=v2")
		svcWP, _ := c.podBy(t, "default", "gateway.networking.k8s.io/gateway-name=reviews-svc-waypoint")
		landed := 0
		for i := 0; i < 60 && landed < 2; i++ {
			body, _ := path(t, hostPort(svcIP["reviews"], 9080), "default/reviews-svc-waypoint")
			if strings.HasPrefix(body, "reviews-v2-") {
				landed++
			}
		}
		if landed == 0 {
			t.Fatal("no service request reached reviews-v2 in 60 tries")
		}
		// The service waypoint sent them to reviews-v2 itself ...
		waitFor(t, 10*time.Second, "the service waypoint's requests to reviews-v2", func() bool {
			return len(c.accessLines("default", svcWP.Name, "istio-proxy", map[string]string{"upstream": hostPort(v2, 9080)})) >= landed
		})
		// ... over HBONE straight to reviews-v2's node agent, which holds the waypoint's (pooled) connection,
		// with the service waypoint's identity.
		svcWPID := "spiffe://cluster.local/ns/default/sa/reviews-svc-waypoint"
		var seen []dump.Connection
		waitFor(t, 10*time.Second, "an inbound connection from the service waypoint on reviews-v2's node", func() bool {
			seen = c.connections(t, v2Pod.Spec.NodeName)
			for _, conn := range seen {
				if conn.Direction == "inbound" && conn.PeerIdentity == svcWPID && conn.Dst == hostPort(v2, 9080) {
					return true
				}
			}
			t.Logf("connections on %s: %+v", v2Pod.Spec.NodeName, seen)
			return false
		})
		time.Sleep(time.Second)
		if after := len(c.accessLines("default", podWP.Name, "istio-proxy", nil)); after != before {
			t.Errorf("the pod waypoint carried %d connections of service-addressed traffic", after-before)
		}
	})

	step("waypoint-for workload, all and none", func(t *testing.T) {
		pp := podIP("app=productpage")
		svc := hostPort(svcIP["productpage"], 9080)
		pod := hostPort(pp, 9080)
		for _, tc := range []struct{ forType, svcWP, podWP string }{
			{"workload", "", "default/waypoint"},
			{"all", "default/waypoint", "default/waypoint"},
			{"none", "", ""},
			{"service", "default/waypoint", ""},
		} {
			t.Run(tc.forType, func(t *testing.T) {
				c.kubectl(t, "label", "gateway", "waypoint", "-n", "default", "istio.io/waypoint-for="+tc.forType, "--overwrite")
				path(t, svc, tc.svcWP)
				path(t, pod, tc.podWP)
			})
		}
	})

	step("a cross-namespace waypoint used by a ServiceEntry, and a denied attachment", func(t *testing.T) {
		c.kubectl(t, "label", "namespace", "default", "waypoint-access=allowed", "--overwrite")
		c.apply(t, crossNamespace)
		c.kubectl(t, "rollout", "status", "deployment/ratings-v1", "-n", "denied-ns", "--timeout=120s")
		c.kubectl(t, "rollout", "status", "deployment/egress-waypoint", "-n", "common-infrastructure", "--timeout=120s")
		out := c.mustAmbitctl(t, "waypoint", "status", "-n", "common-infrastructure", "--name", "egress-waypoint")
		if !strings.Contains(out, "egress-waypoint     True       Programmed") {
			t.Errorf("status:\n%s", out)
		}
		// The ServiceEntry in default (allowed by the selector) goes through the other namespace's waypoint.
		body, _ := path(t, "240.240.0.10:80", "common-infrastructure/egress-waypoint")
		if !strings.HasPrefix(body, "details-") {
			t.Errorf("ServiceEntry answered by %q", body)
		}
		waitFor(t, 30*time.Second, "WaypointBound on the ServiceEntry", func() bool {
			out, _ := c.stack.Kubectl(ctx, "get", "serviceentry", "details-external", "-n", "default", "-o",
				`jsonpath={.status.conditions[?(@.type=="istio.io/WaypointBound")].message}`)
			return strings.TrimSpace(string(out)) == "Successfully attached to waypoint common-infrastructure/egress-waypoint"
		})
		// The one in unlabelled namespace denied-ns is refused: istiod says why, and traffic goes direct.
		waitFor(t, 30*time.Second, "AttachmentDenied on the denied ServiceEntry", func() bool {
			out, _ := c.stack.Kubectl(ctx, "get", "serviceentry", "ratings-external", "-n", "denied-ns", "-o",
				`jsonpath={.status.conditions[?(@.type=="istio.io/WaypointBound")].reason}`)
			return strings.TrimSpace(string(out)) == "AttachmentDenied"
		})
		path(t, "240.240.0.11:80", "")
	})

	step("cleanup restores direct paths", func(t *testing.T) {
		out := c.mustAmbitctl(t, "waypoint", "delete", "--all", "-n", "default")
		for _, name := range []string{"waypoint", "reviews-svc-waypoint", "reviews-v2-pod-waypoint"} {
			if !strings.Contains(out, "waypoint default/"+name+" deleted") {
				t.Errorf("delete --all printed %q", out)
			}
		}
		c.mustAmbitctl(t, "waypoint", "delete", "--all", "-n", "common-infrastructure")
		c.kubectl(t, "label", "namespace", "default", "istio.io/use-waypoint-")
		c.kubectl(t, "label", "service", "reviews", "-n", "default", "istio.io/use-waypoint-")
		c.kubectl(t, "label", "pod", "-n", "default", "-l", "app=reviews,version=v2", "istio.io/use-waypoint-")
		c.kubectl(t, "delete", "serviceentry", "details-external", "-n", "default")
		allServices(t, "")
		path(t, hostPort(podIP("app=reviews,version=v2"), 9080), "")
		if out := c.mustAmbitctl(t, "waypoint", "list", "-n", "default"); out != "No waypoints found.\n" {
			t.Errorf("list after delete --all: %q", out)
		}
	})
}

// crossNamespace is a waypoint in common-infrastructure that admits routes from namespaces labelled
// waypoint-access=allowed, used by a ServiceEntry in default (labelled so) through use-waypoint-namespace,
// and refused to one in denied-ns (not labelled). Both ServiceEntries select pods of their namespace by
// workloadSelector.
const crossNamespace = `
apiVersion: v1
kind: Namespace
metadata: {name: common-infrastructure}
---
apiVersion: v1
kind: Namespace
metadata: {name: denied-ns, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: egress-waypoint
  namespace: common-infrastructure
  labels: {istio.io/waypoint-for: service}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
    allowedRoutes:
      namespaces:
        from: Selector
        selector:
          matchLabels: {waypoint-access: allowed}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: details-external
  namespace: default
  labels:
    istio.io/use-waypoint: egress-waypoint
    istio.io/use-waypoint-namespace: common-infrastructure
spec:
  hosts: [details.external.example]
  addresses: [240.240.0.10]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 9080}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: details}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: ratings-external
  namespace: denied-ns
  labels:
    istio.io/use-waypoint: egress-waypoint
    istio.io/use-waypoint-namespace: common-infrastructure
spec:
  hosts: [ratings.external.example]
  addresses: [240.240.0.11]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 9080}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: ratings}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ratings-v1, namespace: denied-ns, labels: {app: ratings, version: v1}}
spec:
  replicas: 1
  selector: {matchLabels: {app: ratings}}
  template:
    metadata: {labels: {app: ratings, version: v1}}
    spec:
      containers:
      - name: ratings
        image: ambit-e2e/echo:1
        args: [--port=9080]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        readinessProbe: {tcpSocket: {port: 9080}, periodSeconds: 1}
`
