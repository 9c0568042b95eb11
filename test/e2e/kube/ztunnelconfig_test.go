//go:build e2e

package kube

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/kubelet"
)

// zcNS is the namespace of TestIstioctlZtunnelConfig.
const zcNS = "zc"

// zcPolicy is an L4 AuthorizationPolicy (istiod hands it to ztunnel-style agents) that lets the namespace reach
// its server.
const zcPolicy = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-zc, namespace: zc}
spec:
  selector: {matchLabels: {app: server}}
  action: ALLOW
  rules:
  - from:
    - source: {namespaces: [zc]}
`

// TestIstioctlZtunnelConfig runs the real istioctl's ztunnel-config commands live, without -f, against the
// agent DaemonSet: istioctl finds the agents as it finds ztunnel (daemonset/ztunnel in istio-system, pods
// labelled app=ztunnel, the pod of --node through the DaemonSet's selector), port-forwards through the API
// server and the kubelet to each one's admin port 15000, and reads /config_dump. Each command must name the
// namespace's workloads, service, policy, the client's certificate and its live connection, and print exactly
// what istioctl prints for the same agent's dump read from a file (-f).
func TestIstioctlZtunnelConfig(t *testing.T) {
	c := need(t)
	c.apply(t, twoPods(zcNS, true))
	t.Cleanup(func() {
		_, _ = c.stack.Kubectl(t.Context(), "delete", "namespace", zcNS, "--wait=false")
	})
	c.apply(t, zcPolicy)
	client := c.rsEnrolledPods(t, zcNS, "app=client", 1)
	server := c.rsEnrolledPods(t, zcNS, "app=server", 1)
	var clientName, serverName string
	var from kubelet.Pod
	for name, p := range client {
		clientName, from = name, p
	}
	for name := range server {
		serverName = name
	}
	vip := c.kubectl(t, "get", "service", "server", "-n", zcNS, "-o", "jsonpath={.spec.clusterIP}")
	// A connection that stays open: the client's agent (node-0) lists it, and holds the client's certificate.
	conn := rsDial(t, from, hostPort(vip, 9080))
	waitFor(t, time.Minute, "a response from the server over HBONE", func() bool {
		body, err := conn.get()
		if err != nil {
			conn = rsDial(t, from, hostPort(vip, 9080))
		}
		return err == nil && strings.Contains(body, serverName)
	})
	agent0 := c.agentOn(t, "node-0")

	istioctl := func(t *testing.T, args ...string) string {
		t.Helper()
		r := c.cliRun(t, toolIstioctl, append([]string{"ztunnel-config"}, args...)...)
		if r.code != 0 {
			t.Fatalf("istioctl ztunnel-config %s: exit %d\n%s", strings.Join(args, " "), r.code, r)
		}
		return r.stdout
	}
	// fromFile is what istioctl prints for the dump of the agent on node, read with -f.
	fromFile := func(t *testing.T, node string, args ...string) string {
		t.Helper()
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: c.rsNodeNS(t, node).Dial}}
		resp, err := hc.Get("http://127.0.0.1:15000/config_dump")
		if err != nil {
			t.Fatalf("config dump of %s: %v", node, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("config dump of %s: %s %v", node, resp.Status, err)
		}
		f := filepath.Join(t.TempDir(), "dump.json")
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return istioctl(t, append(args, "-f", f)...)
	}
	// row reports whether out has a line whose columns match cols in order (regular expressions, whole columns).
	row := func(out string, cols ...string) bool {
		re := regexp.MustCompile(`(?m)^` + strings.Join(cols, `\s+`) + `(\s|$)`)
		return re.MatchString(out)
	}
	q := regexp.QuoteMeta
	ip := `\d+\.\d+\.\d+\.\d+`

	cases := []struct {
		name string
		args []string
		// node is the agent the command reads, and fileArgs the same command for that agent's dump read with
		// -f; node "" skips the comparison (the command reads either agent).
		node     string
		fileArgs []string
		header   string
		rows     [][]string
	}{
		{"workloads", []string{"workloads"}, "", nil, "NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL", [][]string{
			{zcNS, q(clientName), ip, "node-0", "None", "HBONE"},
			{zcNS, q(serverName), ip, "node-1", "None", "HBONE"},
		}},
		{"workloads of one agent by pod name", []string{"workloads", agent0 + ".istio-system", "--workload-namespace", zcNS}, "node-0",
			[]string{"workloads", "--workload-namespace", zcNS},
			"NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL", [][]string{{zcNS, q(serverName), ip, "node-1", "None", "HBONE"}}},
		{"services", []string{"services"}, "", nil, "NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS", [][]string{
			{zcNS, "server", q(vip), "None", "1/1"},
		}},
		{"policies", []string{"policies"}, "", nil, "NAMESPACE POLICY NAME ACTION SCOPE", [][]string{
			{zcNS, "allow-zc", "Allow", "WorkloadSelector"},
		}},
		{"certificates", []string{"certificates", "--node", "node-0"}, "node-0", []string{"certificates"},
			"CERTIFICATE NAME TYPE STATUS VALID CERT SERIAL NUMBER NOT AFTER NOT BEFORE", [][]string{
				{q("spiffe://cluster.local/ns/zc/sa/default"), "Leaf", "Available", "true"},
			}},
		{"connections", []string{"connections", "--node", "node-0"}, "node-0", []string{"connections"},
			"WORKLOAD DIRECTION LOCAL REMOTE REMOTE TARGET PROTOCOL", [][]string{
				{q(clientName + ".zc"), "Outbound", q(clientName+".zc") + `:\d+`, q(serverName+".zc") + `:15008`,
					q("server.zc.svc.cluster.local:9080"), "HBONE"},
			}},
		// Naming a workload pod reads its node's agent and keeps the pod's own connections (not a -f filter).
		{"connections of a workload pod", []string{"connections", clientName + "." + zcNS}, "", nil,
			"WORKLOAD DIRECTION LOCAL REMOTE REMOTE TARGET PROTOCOL", [][]string{
				{q(clientName + ".zc"), "Outbound", q(clientName+".zc") + `:\d+`, q(serverName+".zc") + `:15008`,
					q("server.zc.svc.cluster.local:9080"), "HBONE"},
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out string
			// istiod's pushes settle (the policy, the service's endpoints) while the first tries run.
			waitFor(t, time.Minute, "istioctl ztunnel-config "+strings.Join(tc.args, " ")+" to list the namespace", func() bool {
				out = istioctl(t, tc.args...)
				for _, r := range tc.rows {
					if !row(out, r...) {
						return false
					}
				}
				return true
			})
			t.Logf("istioctl ztunnel-config %s:\n%s", strings.Join(tc.args, " "), out)
			first, _, _ := strings.Cut(out, "\n")
			if strings.Join(strings.Fields(first), " ") != tc.header {
				t.Errorf("header %q, want the columns %q", first, tc.header)
			}
			if tc.node == "" {
				return
			}
			// The live answer is the agent's own dump: the same as with -f (a few tries: connections and
			// certificates may change between the two reads).
			var file string
			for range 5 {
				if file = fromFile(t, tc.node, tc.fileArgs...); file == istioctl(t, tc.args...) {
					return
				}
				time.Sleep(time.Second)
			}
			t.Errorf("live output differs from the agent's dump read with -f\n=== live\n%s=== -f\n%s", out, file)
		})
	}
	if t.Failed() {
		t.Logf("kubelet log: %s", filepath.Join(c.dir, "kubelet.log"))
	}
}
