//go:build e2e

package kube

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// procStatus reads /proc/<pid>/status of a pod's first container (the kubelet's container ID is netns://<pid>).
func procStatus(t *testing.T, pod corev1.Pod) map[string]string {
	t.Helper()
	if len(pod.Status.ContainerStatuses) == 0 {
		t.Fatalf("pod %s/%s has no container status", pod.Namespace, pod.Name)
	}
	pid, err := strconv.Atoi(strings.TrimPrefix(pod.Status.ContainerStatuses[0].ContainerID, "netns://"))
	if err != nil {
		t.Fatalf("container ID %q: %v", pod.Status.ContainerStatuses[0].ContainerID, err)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	f := map[string]string{}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(line, ":")
		f[k] = strings.Join(strings.Fields(v), " ")
	}
	return f
}

// TestSecurityContexts checks, from the processes the kubelet runs, that every container of the tier runs under
// its declared securityContext: istiod's waypoint template (only image, args and env swapped by the chart) as uid
// 1337 with no capability, the agent as root with exactly the chart's capabilities; and that a container that
// must not run as root but would is held in CreateContainerConfigError, as a kubelet holds it.
func TestSecurityContexts(t *testing.T) {
	c := need(t)
	const ns = "security-context"
	c.apply(t, `apiVersion: v1
kind: Namespace
metadata: {name: `+ns+`}
`+strings.ReplaceAll(cliWaypointYAML("waypoint"), "{ns}", ns)+`---
apiVersion: v1
kind: Pod
metadata: {name: root-image, namespace: `+ns+`}
spec:
  containers:
  - name: echo
    image: ambit-e2e/echo:1
    args: [--port=9080]
    securityContext: {runAsNonRoot: true}
`)
	defer c.kubectl(t, "delete", "namespace", ns, "--wait=false")

	t.Run("istiod's waypoint runs as 1337 with no capabilities", func(t *testing.T) {
		c.kubectl(t, "rollout", "status", "deployment/waypoint", "-n", ns, "--timeout=120s")
		pod, _ := c.podBy(t, ns, "gateway.networking.k8s.io/gateway-name=waypoint")
		st := procStatus(t, pod)
		for k, want := range map[string]string{"Uid": "1337 1337 1337 1337", "Gid": "1337 1337 1337 1337", "CapPrm": "0000000000000000",
			"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1"} {
			if st[k] != want {
				t.Errorf("waypoint %s: %q, want %q", k, st[k], want)
			}
		}
		if sc := pod.Spec.Containers[0].SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("waypoint container security context %+v: istiod's template has readOnlyRootFilesystem", sc)
		}
	})
	t.Run("the agent has exactly NET_ADMIN, BPF and PERFMON", func(t *testing.T) {
		pod, _ := c.podBy(t, "istio-system", agentSelector)
		st := procStatus(t, pod)
		const want = 1<<12 | 1<<38 | 1<<39 // CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF
		if st["Uid"] != "0 0 0 0" || st["CapEff"] != fmt.Sprintf("%016x", want) || st["CapBnd"] != fmt.Sprintf("%016x", want) {
			t.Errorf("agent Uid %q CapEff %q CapBnd %q, want root with %016x", st["Uid"], st["CapEff"], st["CapBnd"], want)
		}
	})
	t.Run("runAsNonRoot with a root image: CreateContainerConfigError", func(t *testing.T) {
		var last corev1.ContainerStatus
		waitFor(t, time.Minute, "root-image held in CreateContainerConfigError", func() bool {
			p, err := c.client.CoreV1().Pods(ns).Get(t.Context(), "root-image", metav1.GetOptions{})
			if err != nil || len(p.Status.ContainerStatuses) == 0 {
				return false
			}
			last = p.Status.ContainerStatuses[0]
			return p.Status.Phase == corev1.PodPending && last.State.Waiting != nil && last.State.Waiting.Reason == "CreateContainerConfigError"
		})
		if !strings.HasPrefix(last.State.Waiting.Message, "container has runAsNonRoot and image will run as root (pod: ") {
			t.Errorf("waiting message %q", last.State.Waiting.Message)
		}
	})
}
