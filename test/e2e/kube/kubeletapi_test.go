//go:build e2e

package kube

import (
	"bufio"
	"context"
	"errors"
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
// port, `kubectl logs` of its container, and `kubectl exec` (WebSocket v5 from kubectl, SPDY v4 to the kubelet)
// into it: the command runs in the container, as its user, with its standard streams and exit
// code.
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

	t.Run("exec", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		run := func(stdin string, args ...string) (string, string, int) {
			cmd := exec.CommandContext(ctx, c.stack.Bin.Kubectl, append([]string{"--kubeconfig", c.stack.Kubeconfig, "exec"}, args...)...)
			var o, e strings.Builder
			cmd.Stdout, cmd.Stderr, cmd.Stdin = &o, &e, strings.NewReader(stdin)
			err := proc.Run(cmd)
			code := 0
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				code = ee.ExitCode()
			} else if err != nil {
				t.Fatalf("kubectl exec %v: %v", args, err)
			}
			return o.String(), e.String(), code
		}
		// The agent container: root, its read-only root, its environment; stdin, stdout, stderr and the exit code.
		out, errOut, code := run("hello\n", "-i", "-n", "istio-system", agent, "-c", "ambit", "--",
			"sh", "-c", `echo "uid=$(id -u) node=$NODE_NAME"; echo to-stderr >&2; read x; echo "got $x"; `+
				`touch /root-is-writable 2>/dev/null && echo writable; exit 3`)
		if out != "uid=0 node=node-0\ngot hello\n" || !strings.Contains(errOut, "to-stderr") || code != 3 {
			t.Errorf("kubectl exec into the agent: stdout %q stderr %q exit %d; want uid 0 on node-0, stdin echoed, "+
				"a read-only root, exit 3", out, errOut, code)
		}
		// No stdin; a command that is not there fails as in a container.
		if _, _, code := run("", "-n", "istio-system", agent, "-c", "ambit", "--", "/no/such/program"); code == 0 {
			t.Error("kubectl exec of a missing program exited 0")
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
