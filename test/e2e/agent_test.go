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
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/proc"
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
	if out, err := proc.CombinedOutput(build); err != nil {
		t.Fatalf("build ambit: %v\n%s", err, out)
	}
	get := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	// The agent binds six ports it cannot take from us: on "address already in use" it is started again on others.
	var at func(int) string
	var agent *proc.Proc
	logPath := filepath.Join(dir, "agent.log")
	for attempt := 0; ; attempt++ {
		ports, err := testutil.FreePorts(6)
		if err != nil {
			t.Fatal(err)
		}
		at = func(i int) string { return fmt.Sprintf("127.0.0.1:%d", ports[i]) }
		logf, err := os.Create(logPath)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "agent", "--node-name", "node1", "--pod-name", "ztunnel-abc", "--pod-namespace", "istio-system",
			"--instance-ip", "10.0.0.1", "--xds-address", stack.PlainXDSAddr, "--xds-plaintext", "--token-file", stack.TokenFile,
			"--identity", "local-ca", "--ca-dir", filepath.Join(dir, "ca"), "--capture", "none",
			"--outbound-addr", at(0), "--inbound-addr", at(1), "--hbone-addr", at(2), "--admin-addr", at(3),
			"--metrics-addr", at(4), "--readiness-addr", at(5))
		cmd.Stdout, cmd.Stderr = logf, logf
		agent, err = proc.Start(cmd)
		logf.Close()
		if err != nil {
			t.Fatal(err)
		}
		ready := false
		testutil.WaitFor(t, 60*time.Second, "agent ready or exited", func() bool {
			if exited, _ := agent.Exited(); exited {
				return true
			}
			code, _ := get("http://" + at(5) + "/healthz/ready")
			ready = code == http.StatusOK
			return ready
		})
		if ready {
			break
		}
		data, _ := os.ReadFile(logPath)
		if !testutil.AddrInUse(string(data)) || attempt == 4 {
			t.Fatalf("agent exited: %v\n%s", agent.Wait(), data)
		}
	}
	defer func() {
		_ = agent.Stop(15 * time.Second)
		if t.Failed() {
			data, _ := os.ReadFile(logPath)
			t.Logf("agent log:\n%s", data)
		}
	}()
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
