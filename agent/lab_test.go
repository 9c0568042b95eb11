package agent_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/test/lab"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

func TestAgentMesh(t *testing.T) {
	for _, mode := range []string{agent.CaptureEBPF, agent.CaptureTPROXY} {
		t.Run(mode, func(t *testing.T) { testAgentMesh(t, mode) })
	}
}

func testAgentMesh(t *testing.T, mode string) {
	c := startCluster(t, 2, 3, mode, meshYAML(""))
	n0, n1 := c.Lab.Nodes[0].Pods, c.Lab.Nodes[1].Pods
	client, serverA, serverB, plain, outsider := n0[0], n0[1], n1[0], n1[1], n0[2]
	for _, p := range []*lab.Pod{serverA, serverB, plain} {
		serve(t, p, 8080)
	}

	t.Run("direct HBONE across nodes keeps the client IP", func(t *testing.T) {
		got, err := call(t, client, serverB.IP.String()+":8080")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(got, serverB.Name+" "+client.IP.String()+":") {
			t.Errorf("answer %q, want %s seeing %s", got, serverB.Name, client.IP)
		}
		tu.WaitFor(t, 5*time.Second, "inbound HBONE access log on node1", func() bool {
			return strings.Contains(c.Logs[1].String(), "direction=inbound protocol=HBONE") &&
				strings.Contains(c.Logs[0].String(), "dst.hbone_addr="+serverB.IP.String()+":8080")
		})
	})
	t.Run("same-node HBONE", func(t *testing.T) {
		got, err := call(t, client, serverA.IP.String()+":8080")
		if err != nil || !strings.HasPrefix(got, serverA.Name+" "+client.IP.String()+":") {
			t.Fatalf("answer %q, %v", got, err)
		}
	})
	t.Run("service VIP reaches both endpoints", func(t *testing.T) {
		seen := map[string]bool{}
		for i := 0; i < 40 && len(seen) < 2; i++ {
			got, err := call(t, client, "10.96.0.10:80")
			if err != nil {
				t.Fatal(err)
			}
			seen[strings.Fields(got)[0]] = true
		}
		if !seen[serverA.Name] || !seen[serverB.Name] {
			t.Errorf("endpoints reached: %v", seen)
		}
	})
	t.Run("workload outside the mesh gets plain TCP", func(t *testing.T) {
		got, err := call(t, client, plain.IP.String()+":8080")
		if err != nil || !strings.HasPrefix(got, plain.Name) {
			t.Fatalf("answer %q, %v", got, err)
		}
	})
	t.Run("plaintext from outside the mesh reaches a captured pod", func(t *testing.T) {
		got, err := call(t, outsider, serverB.IP.String()+":8080")
		if err != nil || !strings.HasPrefix(got, serverB.Name+" "+outsider.IP.String()+":") {
			t.Fatalf("answer %q, %v", got, err)
		}
		tu.WaitFor(t, 5*time.Second, "inbound plaintext log", func() bool {
			return strings.Contains(c.Logs[1].String(), "direction=inbound protocol=TCP")
		})
	})
	if counter(c.Agents[0], "istio_tcp_connections_opened_total") == 0 || counter(c.Agents[1], "istio_tcp_received_bytes_total") == 0 {
		t.Error("no TCP metrics recorded")
	}
	t.Run("admin, metrics and readiness endpoints", func(t *testing.T) {
		node := c.Lab.Nodes[0].NS
		get := func(addr, path string) (int, string) {
			t.Helper()
			hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return node.Dial(ctx, "tcp", addr)
			}}}
			resp, err := hc.Get("http://" + addr + path)
			if err != nil {
				t.Fatalf("GET %s%s: %v", addr, path, err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return resp.StatusCode, string(b)
		}
		if code, body := get("127.0.0.1:15021", "/healthz/ready"); code != 200 || strings.TrimSpace(body) != "ready" {
			t.Errorf("readiness: %d %q", code, body)
		}
		if code, body := get("127.0.0.1:15020", "/metrics"); code != 200 || !strings.Contains(body, "istio_tcp_connections_opened_total{") {
			t.Errorf("metrics: %d, %d bytes", code, len(body))
		}
		code, body := get("127.0.0.1:15000", "/config_dump")
		var dump struct {
			Workloads    []map[string]any `json:"workloads"`
			Services     []map[string]any `json:"services"`
			Certificates []map[string]any `json:"certificates"`
		}
		if err := json.Unmarshal([]byte(body), &dump); code != 200 || err != nil {
			t.Fatalf("config_dump: %d %v", code, err)
		}
		if len(dump.Workloads) != 5 || len(dump.Services) != 1 || len(dump.Certificates) == 0 {
			t.Errorf("config_dump has %d workloads, %d services, %d certificates", len(dump.Workloads), len(dump.Services), len(dump.Certificates))
		}
		if strings.Contains(body, "PRIVATE KEY") {
			t.Error("config_dump leaks a private key")
		}
	})

	t.Run("STRICT peer authentication denies plaintext, closes open ones, keeps HBONE", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		open, err := outsider.NS.Dial(ctx, "tcp", serverB.IP.String()+":8080")
		if err != nil {
			t.Fatal(err)
		}
		defer open.Close()
		io.WriteString(open, "hello\n")
		r := bufio.NewReader(open)
		if _, err := r.ReadString('\n'); err != nil {
			t.Fatal(err)
		}
		c.Rewrite(t, meshYAML(`---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
`)(c.Lab))
		// The open plaintext connection is closed by the policy change.
		open.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := r.ReadString('\n'); err == nil {
			t.Error("plaintext connection still open after STRICT")
		}
		tu.WaitFor(t, 10*time.Second, "new plaintext connections denied", func() bool {
			_, err := call(t, outsider, serverB.IP.String()+":8080")
			return err != nil
		})
		if got, err := call(t, client, serverB.IP.String()+":8080"); err != nil || !strings.HasPrefix(got, serverB.Name) {
			t.Errorf("mTLS call after STRICT: %q, %v", got, err)
		}
	})
	t.Run("L4 DENY policy refuses HBONE", func(t *testing.T) {
		c.Rewrite(t, meshYAML(`---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: app}
spec:
  selector: {matchLabels: {app: server}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/app/sa/client]}}]}]
`)(c.Lab))
		// A call in flight when the policy arrives may be closed by the policy change instead; keep
		// calling until one is refused with 401 by the destination agent.
		tu.WaitFor(t, 10*time.Second, "HBONE refused with 401", func() bool {
			_, err := call(t, client, serverB.IP.String()+":8080")
			return err != nil && strings.Contains(c.Logs[1].String(), "explicitly denied by app/deny-client")
		})
	})
	t.Run("invalid config keeps the last good state", func(t *testing.T) {
		c.Rewrite(t, "apiVersion: v1\nkind: Pod\nmetadata: [broken\n")
		tu.WaitFor(t, 5*time.Second, "rejection logged", func() bool {
			return strings.Contains(c.Logs[0].String(), "configuration rejected")
		})
		if _, err := call(t, client, serverB.IP.String()+":8080"); err == nil {
			t.Error("DENY policy lost after an invalid config")
		}
		if got, err := call(t, client, plain.IP.String()+":8080"); err != nil || !strings.HasPrefix(got, plain.Name) {
			t.Errorf("mesh stopped working after an invalid config: %q %v", got, err)
		}
	})
}
