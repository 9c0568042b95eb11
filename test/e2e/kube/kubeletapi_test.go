//go:build e2e

package kube

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/proc"
)

// TestKubeletAPI uses the kubelet API the way users do, through kubectl and the API server: `kubectl
// port-forward` (WebSocket from kubectl, tunnelled to the kubelet's SPDY by kube-apiserver) to an agent's admin
// port, and `kubectl logs` of its container.
func TestKubeletAPI(t *testing.T) {
	c := need(t)
	agent := c.agentOn(t, "node-0")

	t.Run("port-forward", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, c.stack.Bin.Kubectl, "--kubeconfig", c.stack.Kubeconfig, "port-forward",
			"-n", "istio-system", "pod/"+agent, "--address", "127.0.0.1", ":15000")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		p, err := proc.Start(cmd)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = p.Stop(5 * time.Second) }()
		// "Forwarding from 127.0.0.1:<port> -> 15000"
		line, err := bufio.NewReader(out).ReadString('\n')
		if err != nil {
			t.Fatalf("kubectl port-forward: %v", err)
		}
		m := regexp.MustCompile(`^Forwarding from (127\.0\.0\.1:\d+) -> 15000`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("kubectl port-forward printed %q", line)
		}
		go func() { _, _ = io.Copy(io.Discard, out) }()
		hc := &http.Client{Timeout: 20 * time.Second}
		for _, path := range []string{"/config_dump", "/healthz/ready"} {
			resp, err := hc.Get("http://" + m[1] + path)
			if err != nil {
				t.Fatalf("GET %s through kubectl port-forward: %v", path, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || path == "/config_dump" && !strings.Contains(string(b), `"workloads"`) {
				t.Errorf("GET %s through kubectl port-forward: %s %.200q", path, resp.Status, b)
			}
		}
	})

	t.Run("logs", func(t *testing.T) {
		out := c.kubectl(t, "logs", "-n", "istio-system", agent, "-c", "ambit")
		if !strings.Contains(out, `msg="agent ready"`) {
			t.Errorf("kubectl logs of %s has no \"agent ready\" line:\n%.2000s", agent, out)
		}
		if _, err := c.stack.Kubectl(t.Context(), "logs", "-n", "istio-system", agent, "-c", "nonexistent"); err == nil {
			t.Error("kubectl logs of a container the pod does not have succeeded")
		}
	})
}
