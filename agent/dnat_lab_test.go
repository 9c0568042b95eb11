package agent_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/test/proc"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// TestNodeDNATReachesTheAgent: a Service that kube-proxy translates on the node (a ClusterIP the agent does not
// know, called by a pod outside the mesh on the same node, and a NodePort called from another node) reaches an
// enrolled pod only through its node's agent, which applies inbound policy: allowed (plaintext, the caller's
// address kept) under PERMISSIVE, denied under STRICT. Capture sees the Service address before the node's DNAT,
// so these connections used to reach the pod around the agent, STRICT and L4 policy notwithstanding.
func TestNodeDNATReachesTheAgent(t *testing.T) {
	for _, mode := range []string{agent.CaptureEBPF, agent.CaptureTPROXY} {
		t.Run(mode, func(t *testing.T) {
			c := startCluster(t, 2, 3, mode, meshYAML(""))
			n0, n1 := c.Lab.Nodes[0], c.Lab.Nodes[1]
			serverA, outsider, plain := n0.Pods[1], n0.Pods[2], n1.Pods[1]
			serve(t, serverA, 8080)
			rules := fmt.Sprintf(`table ip ambit_test_svc {
	chain services {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr 10.96.1.50 tcp dport 80 dnat to %s:8080
		ip daddr %s tcp dport 30080 dnat to %s:8080
	}
}
`, serverA.IP, n0.IP, serverA.IP)
			cmd := n0.NS.Command(t.Context(), "nft", "-f", "-")
			cmd.Stdin = strings.NewReader(rules)
			if out, err := proc.CombinedOutput(cmd); err != nil {
				t.Fatalf("install the Service rules: %v: %s", err, out)
			}
			cases := []struct {
				name, from, addr, peer string
			}{
				{"ClusterIP from a pod outside the mesh", outsider.Name, "10.96.1.50:80", outsider.IP.String()},
				{"NodePort from another node", plain.Name, n0.IP.String() + ":30080", n1.IP.String()},
			}
			pods := map[string]func() (string, error){
				outsider.Name: func() (string, error) { return call(t, outsider, "10.96.1.50:80") },
				plain.Name:    func() (string, error) { return call(t, plain, n0.IP.String()+":30080") },
			}
			for _, tc := range cases {
				t.Run(tc.name+" under PERMISSIVE", func(t *testing.T) {
					got, err := pods[tc.from]()
					if err != nil || !strings.HasPrefix(got, serverA.Name+" "+tc.peer+":") {
						t.Fatalf("answer %q, %v; want %s seeing %s", got, err, serverA.Name, tc.peer)
					}
					tu.WaitFor(t, 5*time.Second, "the agent's inbound access log", func() bool {
						return strings.Contains(c.Logs[0].String(), "direction=inbound") &&
							strings.Contains(c.Logs[0].String(), "src.addr="+tc.peer+":")
					})
				})
			}
			c.Rewrite(t, meshYAML(`---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
`)(c.Lab))
			for _, tc := range cases {
				t.Run(tc.name+" under STRICT", func(t *testing.T) {
					tu.WaitFor(t, 10*time.Second, "plaintext through the Service denied", func() bool {
						_, err := pods[tc.from]()
						return err != nil
					})
				})
			}
		})
	}
}
