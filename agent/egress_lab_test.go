package agent_test

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/test/lab"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// TestEgressKeepsThePodIP: plain TCP that a captured pod sends outside the mesh (a workload that is not
// enrolled, on this node or another) leaves with the pod's IP, as the pod's own packets would, so that the
// node's firewall and the CNI's policies keyed on pod IPs still apply to captured pods.
func TestEgressKeepsThePodIP(t *testing.T) {
	tu.RequireRoot(t)
	for _, mode := range []string{agent.CaptureEBPF, agent.CaptureTPROXY} {
		t.Run(mode, func(t *testing.T) { testEgressKeepsThePodIP(t, mode) })
	}
}

func testEgressKeepsThePodIP(t *testing.T, mode string) {
	if _, err := exec.LookPath("nft"); err != nil {
		t.Fatal("nft is needed (apt-get install nftables)")
	}
	c := startCluster(t, 2, 3, mode, meshYAML(""), func(_ int, cfg *agent.Config) { cfg.ConnectTimeout = 2 * time.Second })
	n0, n1 := c.Lab.Nodes[0].Pods, c.Lab.Nodes[1].Pods
	client, plain, outsider := n0[0], n1[1], n0[2]
	for _, p := range []*lab.Pod{plain, outsider} {
		serve(t, p, 8080)
	}
	for _, dst := range []*lab.Pod{plain, outsider} {
		where := "another node"
		if dst.Node == client.Node {
			where = "the same node"
		}
		t.Run("to a workload outside the mesh on "+where, func(t *testing.T) {
			addr := dst.IP.String() + ":8080"
			got, err := call(t, client, addr)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(got, dst.Name+" "+client.IP.String()+":") {
				t.Errorf("answer %q: %s saw the connection from another address than the pod's %s", got, dst.Name, client.IP)
			}
			// A node firewall rule for the pod's IP (what a CNI's egress NetworkPolicy amounts to) applies to
			// the captured pod's egress as it does to an uncaptured one.
			table := fmt.Sprintf("ambit_egress_test_%d", dst.Node.Index)
			rules := fmt.Sprintf(`table inet %s {
	chain post {
		type filter hook postrouting priority 0; policy accept;
		ip saddr %s ip daddr %s tcp dport 8080 drop
	}
}`, table, client.IP, dst.IP)
			nft(t, client.Node, "-f", "-", rules)
			t.Cleanup(func() { nft(t, client.Node, "delete", "table", "inet", table) })
			if got, err := call(t, client, addr); err == nil {
				t.Errorf("the drop rule for %s -> %s did not apply: got answer %q", client.IP, addr, got)
			}
			if got, err := call(t, outsider, plain.IP.String()+":8080"); dst == plain && err != nil {
				t.Errorf("a pod the rule does not name was dropped too: %q, %v", got, err)
			}
		})
	}
	t.Run("to a host outside the cluster through the node's masquerade", func(t *testing.T) {
		// An external host: an address on the fabric bridge. Node 0 masquerades pod traffic to it, as nodes do
		// for destinations outside the cluster; replies come back to the node's address and conntrack
		// restores the pod's, after which they must still reach the agent's connection.
		ext := c.Lab.Fabric
		if out, err := exec.Command("ip", "netns", "exec", ext.Name, "ip", "addr", "add", "172.30.0.200/24", "dev", "br0").CombinedOutput(); err != nil {
			t.Fatalf("add the external address: %v\n%s", err, out)
		}
		ln, err := ext.Listen(t.Context(), "tcp", "172.30.0.200:8080")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() { // ends when the listener closes
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer conn.Close()
					buf := make([]byte, 64)
					conn.Read(buf)
					fmt.Fprintf(conn, "external %s\n", conn.RemoteAddr())
				}()
			}
		}()
		nft(t, client.Node, "-f", "-", fmt.Sprintf(`table inet ambit_egress_masq {
	chain post {
		type nat hook postrouting priority 100; policy accept;
		ip saddr %s ip daddr 172.30.0.200 masquerade
	}
}`, client.IP))
		t.Cleanup(func() { nft(t, client.Node, "delete", "table", "inet", "ambit_egress_masq") })
		got, err := call(t, client, "172.30.0.200:8080")
		if err != nil {
			t.Fatal(err)
		}
		if want := "external " + client.Node.IP.String() + ":"; !strings.HasPrefix(got, want) {
			t.Errorf("answer %q, want %q... (the node's masquerade applied to the pod's connection)", got, want)
		}
	})
}

// nft runs nft in node's namespace; with "-f -" the last argument is the ruleset read from standard input.
func nft(t *testing.T, node *lab.Node, args ...string) {
	t.Helper()
	var stdin string
	if len(args) > 1 && args[0] == "-f" && args[1] == "-" {
		stdin, args = args[len(args)-1], args[:len(args)-1]
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", node.NS.Name, "nft"}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
