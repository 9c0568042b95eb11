package agent_test

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/identity"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// TestAgentFailures covers the failure cases of issue 5 item 10 on real capture.
func TestAgentFailures(t *testing.T) {
	c := startCluster(t, 2, 3, agent.CaptureEBPF, meshYAML(""), func(_ int, cfg *agent.Config) {
		cfg.ConnectTimeout = 2 * time.Second
	})
	n0, n1 := c.Lab.Nodes[0].Pods, c.Lab.Nodes[1].Pods
	client, serverB, plain := n0[0], n1[0], n1[1]
	serve(t, serverB, 8080)
	serve(t, plain, 8080)

	t.Run("destination pod not listening: 503, the client sees the connection end, nothing leaks", func(t *testing.T) {
		if got, err := call(t, client, serverB.IP.String()+":9999"); err == nil {
			t.Fatalf("got an answer %q from a closed port", got)
		}
		tu.WaitFor(t, 5*time.Second, "503 logged on both sides", func() bool {
			return strings.Contains(c.Logs[1].String(), "connect to "+serverB.IP.String()+":9999") &&
				strings.Contains(c.Logs[0].String(), "503")
		})
		tu.WaitFor(t, 5*time.Second, "no tracked connections", func() bool {
			return c.Agents[0].Conns.Len() == 0 && c.Agents[1].Conns.Len() == 0
		})
	})

	t.Run("peer agent down, then restarted with capture kept", func(t *testing.T) {
		c.StopAgent(1)
		start := time.Now()
		if got, err := call(t, client, serverB.IP.String()+":8080"); err == nil {
			t.Fatalf("answer %q while the destination agent is down", got)
		}
		if d := time.Since(start); d > 8*time.Second {
			t.Errorf("the failure took %v; the connect timeout is 2s", d)
		}
		// Plain TCP to a pod outside the mesh does not depend on the peer agent.
		if got, err := call(t, client, plain.IP.String()+":8080"); err != nil || !strings.HasPrefix(got, plain.Name) {
			t.Errorf("out-of-mesh call while the peer agent is down: %q %v", got, err)
		}
		c.StartAgent(1)
		tu.WaitFor(t, 10*time.Second, "mesh restored after the restart", func() bool {
			got, err := call(t, client, serverB.IP.String()+":8080")
			return err == nil && strings.HasPrefix(got, serverB.Name+" "+client.IP.String()+":")
		})
	})
}

// TestAgentCertificateUnavailable runs the client's agent with a CA it cannot reach: mesh connections
// fail with a clear reason, nothing crashes, and traffic outside the mesh keeps working.
func TestAgentCertificateUnavailable(t *testing.T) {
	// A root file that exists, for a CA address where nothing answers.
	rootDir := t.TempDir()
	if _, err := identity.NewLocalCA(identity.LocalCAOptions{Dir: rootDir}); err != nil {
		t.Fatal(err)
	}
	rootFile := filepath.Join(rootDir, identity.RootCertFileName)
	c := startCluster(t, 2, 3, agent.CaptureEBPF, meshYAML(""), func(i int, cfg *agent.Config) {
		cfg.ConnectTimeout = 2 * time.Second
		if i == 0 {
			cfg.Identity, cfg.CAAddress, cfg.CARootFile = identity.SourceIstiod, "127.0.0.1:1", rootFile
		}
	})
	n0, n1 := c.Lab.Nodes[0].Pods, c.Lab.Nodes[1].Pods
	client, serverB, plain := n0[0], n1[0], n1[1]
	serve(t, serverB, 8080)
	serve(t, plain, 8080)
	if got, err := call(t, client, serverB.IP.String()+":8080"); err == nil {
		t.Fatalf("answer %q without a client certificate", got)
	}
	tu.WaitFor(t, 5*time.Second, "failure logged", func() bool {
		return strings.Contains(c.Logs[0].String(), "connection failed") && strings.Contains(c.Logs[0].String(), "identity")
	})
	if got, err := call(t, client, plain.IP.String()+":8080"); err != nil || !strings.HasPrefix(got, plain.Name) {
		t.Errorf("out-of-mesh call: %q %v", got, err)
	}
	if ok, _ := c.Agents[0].Ready(); !ok {
		t.Error("agent not ready after certificate failures")
	}
}
