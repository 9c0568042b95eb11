//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/testutil"
)

// TestAmbitAgentAgainstIstiod builds and runs the ambit binary as a node agent fed by istiod (no local
// file, no capture), and reads istiod's view back from its admin API.
func TestAmbitAgentAgainstIstiod(t *testing.T) {
	ctx := context.Background()
	setUpScenario(t, ctx)
	dir := t.TempDir()
	bin := filepath.Join(dir, "ambit")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/ambit")
	build.Dir = "../.."
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build ambit: %v\n%s", err, out)
	}
	ports, err := freePorts(6)
	if err != nil {
		t.Fatal(err)
	}
	at := func(i int) string { return fmt.Sprintf("127.0.0.1:%d", ports[i]) }
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, "agent", "--node-name", "node1", "--pod-name", "ztunnel-abc", "--pod-namespace", "istio-system",
		"--instance-ip", "10.0.0.1", "--xds-address", stack.PlainXDSAddr, "--xds-plaintext", "--token-file", stack.TokenFile,
		"--identity", "local-ca", "--ca-dir", filepath.Join(dir, "ca"), "--capture", "none",
		"--outbound-addr", at(0), "--inbound-addr", at(1), "--hbone-addr", at(2), "--admin-addr", at(3),
		"--metrics-addr", at(4), "--readiness-addr", at(5))
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			data, _ := os.ReadFile(filepath.Join(dir, "agent.log"))
			t.Logf("agent log:\n%s", data)
		}
	}()

	get := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testutil.WaitFor(t, 60*time.Second, "agent ready", func() bool {
		select {
		case err := <-exited:
			t.Fatalf("agent exited: %v", err)
		default:
		}
		code, _ := get("http://" + at(5) + "/healthz/ready")
		return code == http.StatusOK
	})
	var dump string
	testutil.WaitFor(t, 30*time.Second, "istiod's scenario in the agent's config dump", func() bool {
		_, dump = get("http://" + at(3) + "/config_dump")
		return strings.Contains(dump, "Kubernetes//Pod/demo/echo-1") && strings.Contains(dump, "waypoint.demo.svc.cluster.local") &&
			strings.Contains(dump, "istio_converted_static_strict")
	})
	for _, want := range []string{"cross.other.svc.cluster.local", "demo/allow-echo", "10.244.0.5"} {
		if !strings.Contains(dump, want) {
			t.Errorf("config dump lacks %q", want)
		}
	}
}
