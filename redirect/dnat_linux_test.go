package redirect_test

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/proc"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// Service addresses the test's kube-proxy-like DNAT translates to the enrolled pod's :8080.
var (
	testClusterIP4 = netip.MustParseAddr("10.96.0.50")
	testClusterIP6 = netip.MustParseAddr("fd00:96::50")
)

const testNodePort = 30080

// installNodeDNAT adds, in node's namespace, what kube-proxy installs for a Service whose endpoint is pod: a
// ClusterIP (port 80) and a NodePort on the node's addresses, both translated to the pod's :8080 (priority
// dstnat, as kube-proxy's nftables mode), and rules counting the packets conntrack finds invalid.
func installNodeDNAT(t *testing.T, node *lab.Node, pod *lab.Pod) {
	t.Helper()
	rules := fmt.Sprintf(`table inet ambit_test_dnat {
	chain services {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr %s tcp dport 80 dnat ip to %s:8080
		ip6 daddr %s tcp dport 80 dnat ip6 to [%s]:8080
		ip daddr %s tcp dport %d dnat ip to %s:8080
		ip6 daddr %s tcp dport %d dnat ip6 to [%s]:8080
	}
	chain input { type filter hook input priority 0; policy accept; ct state invalid counter drop; }
	chain output { type filter hook output priority 0; policy accept; ct state invalid counter drop; }
}
`, testClusterIP4, pod.IP, testClusterIP6, pod.IP6, node.IP, testNodePort, pod.IP, node.IP6, testNodePort, pod.IP6)
	cmd := node.NS.Command(t.Context(), "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := proc.CombinedOutput(cmd); err != nil {
		t.Fatalf("install the DNAT rules: %v: %s", err, out)
	}
}

// TestCaptureNodeDNAT: a connection to an enrolled pod that the node destination-NATs itself (kube-proxy's
// ClusterIP for a pod outside the mesh on the same node, a NodePort from another node) is captured after the
// DNAT: the agent's InboundDNAT listener accepts it with the pod's address as the original destination, and
// the client, which dialled the service address, gets the agent's replies from that address (conntrack undoes
// the DNAT). Capture before the DNAT sees only the service address, so without the postdnat chain the
// connection reached the pod around the agent.
func TestCaptureNodeDNAT(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			l, a, pod, remote := setup(t, mode)
			other := l.Nodes[0].Pods[1] // outside the mesh, on the pod's node
			installNodeDNAT(t, l.Nodes[0], pod)
			for _, f := range families {
				t.Run(f.name, func(t *testing.T) {
					clusterIP := testClusterIP6
					if f.name == "v4" {
						clusterIP = testClusterIP4
					}
					for _, tc := range []struct {
						name     string
						from     *lab.Pod
						dst      netip.AddrPort
						wantPeer netip.Addr // the client as the pod sees it (through the agent)
					}{
						{"ClusterIP from a pod outside the mesh", other, netip.AddrPortFrom(clusterIP, 80), f.ip(other)},
						// The client's node masquerades pod traffic to node addresses: the pod sees that node.
						{"NodePort from another node", remote, netip.AddrPortFrom(f.node(l.Nodes[0]), testNodePort), f.node(l.Nodes[1])},
					} {
						t.Run(tc.name, func(t *testing.T) {
							c := dial(t, tc.from.NS, tc.dst)
							got := a.next(t)
							if want := netip.AddrPortFrom(f.ip(pod), 8080); got.role != "inbound-dnat" || got.orig != want {
								t.Fatalf("agent saw %+v, want inbound-dnat to %s", got, want)
							}
							if peer := peerOf(t, c.say(t, "hello")); peer != tc.wantPeer {
								t.Errorf("the pod saw %s, want %s", peer, tc.wantPeer)
							}
							if got := c.c.RemoteAddr().String(); got != tc.dst.String() {
								t.Errorf("client's peer %s, want %s", got, tc.dst)
							}
						})
					}
				})
			}
			out, err := proc.CombinedOutput(l.Nodes[0].NS.Command(t.Context(), "nft", "list", "table", "inet", "ambit_test_dnat"))
			if err != nil {
				t.Fatalf("list the DNAT table: %v: %s", err, out)
			}
			if regexp.MustCompile(`counter packets [1-9]`).Match(out) {
				t.Errorf("conntrack found packets invalid:\n%s", out)
			}
		})
	}
}

// TestCaptureNodeDNATFailsClosed: without an InboundDNAT listener a connection the node DNATs to an enrolled
// pod is dropped, never delivered to the pod around the agent.
func TestCaptureNodeDNATFailsClosed(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			testutil.CheckGoroutines(t)
			l := lab.Start(t, lab.Options{Nodes: 2, PodsPerNode: 2})
			serveEcho(t, l)
			a := startAgentListeners(t, l.Nodes[0], agentOptions(l.Nodes[0], mode), false)
			pod, other := l.Nodes[0].Pods[0], l.Nodes[0].Pods[1]
			a.enroll(t, pod)
			installNodeDNAT(t, l.Nodes[0], pod)
			for _, dst := range []netip.AddrPort{netip.AddrPortFrom(testClusterIP4, 80), netip.AddrPortFrom(testClusterIP6, 80)} {
				ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
				c, err := other.NS.Dial(ctx, "tcp", dst.String())
				cancel()
				if err == nil {
					c.Close()
					t.Fatalf("a connection to %s reached the enrolled pod without the agent", dst)
				}
			}
			a.none(t)
			// The pod itself stays reachable through capture.
			c := dial(t, other.NS, netip.AddrPortFrom(pod.IP, 8080))
			if got := a.next(t); got.role != "inbound" {
				t.Fatalf("agent saw %+v, want inbound", got)
			}
			c.say(t, "hello")
		})
	}
}
