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

// TestDialFromThroughOutputDNAT: a connection the agent dials from an enrolled pod's address to an address the
// node destination-NATs in output (kube-proxy's ClusterIP of a Service the agent does not route itself; backends
// on another node and on the same node) gets its replies, which come from the backend to the pod's address,
// delivered to the agent's socket, in both modes and families. Before, neither capture's socket lookup nor
// netfilter's found the socket (it is connected to the Service address), and the node forwarded the replies to
// the pod, which reset the connection.
func TestDialFromThroughOutputDNAT(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			l, a, pod, remote := setup(t, mode)
			local := l.Nodes[0].Pods[1]
			svc := map[string][2]netip.Addr{ // family -> Service addresses for remote and local
				"v4": {netip.MustParseAddr("10.96.0.60"), netip.MustParseAddr("10.96.0.61")},
				"v6": {netip.MustParseAddr("fd00:96::60"), netip.MustParseAddr("fd00:96::61")},
			}
			rules := fmt.Sprintf(`table inet ambit_test_outdnat {
	chain out {
		type nat hook output priority -100; policy accept;
		ip daddr %s tcp dport 80 dnat ip to %s:8080
		ip daddr %s tcp dport 80 dnat ip to %s:8080
		ip6 daddr %s tcp dport 80 dnat ip6 to [%s]:8080
		ip6 daddr %s tcp dport 80 dnat ip6 to [%s]:8080
	}
}
`, svc["v4"][0], remote.IP, svc["v4"][1], local.IP, svc["v6"][0], remote.IP6, svc["v6"][1], local.IP6)
			cmd := l.Nodes[0].NS.Command(t.Context(), "nft", "-f", "-")
			cmd.Stdin = strings.NewReader(rules)
			if out, err := proc.CombinedOutput(cmd); err != nil {
				t.Fatalf("install the output DNAT: %v: %s", err, out)
			}
			// A node routes Service addresses somewhere (its default route) before kube-proxy's DNAT rewrites them.
			nsRun(t, l.Nodes[0].NS, "ip", "route", "add", "10.96.0.0/24", "dev", l.Nodes[0].Uplink)
			nsRun(t, l.Nodes[0].NS, "ip", "-6", "route", "add", "fd00:96::/64", "dev", l.Nodes[0].Uplink)
			for _, f := range families {
				for i, where := range []string{"backend on another node", "backend on the same node"} {
					t.Run(f.name+"/"+where, func(t *testing.T) {
						ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
						defer cancel()
						conn, err := a.sf.DialFrom(ctx, f.ip(pod), netip.AddrPortFrom(svc[f.name][i], 80))
						if err != nil {
							t.Fatal(err)
						}
						defer conn.Close()
						c := &client{c: conn, br: newReader(conn)}
						if peer := peerOf(t, c.say(t, "hello")); peer != f.ip(pod) {
							t.Errorf("backend saw %s, want the pod's %s", peer, f.ip(pod))
						}
					})
				}
			}
		})
	}
}
