package redirect_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/ambit-mesh/ambit/redirect"
	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/proc"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// family picks a pod's IPv4 or IPv6 address.
type family struct {
	name string
	ip   func(*lab.Pod) netip.Addr
	node func(*lab.Node) netip.Addr
}

var families = []family{
	{"v4", func(p *lab.Pod) netip.Addr { return p.IP }, func(n *lab.Node) netip.Addr { return n.IP }},
	{"v6", func(p *lab.Pod) netip.Addr { return p.IP6 }, func(n *lab.Node) netip.Addr { return n.IP6 }},
}

// gateway is the address of the pods' host-side veths in the lab, the source of node connections to local pods.
func gateway(f family) netip.Addr {
	if f.name == "v4" {
		return netip.MustParseAddr("169.254.1.1")
	}
	return netip.MustParseAddr("fe80::1")
}

// setup builds a two-node lab with echo servers in every pod and an agent on node 0 in mode, with pod n0-p0
// enrolled.
func setup(t *testing.T, mode redirect.Mode) (*lab.Lab, *agent, *lab.Pod, *lab.Pod) {
	t.Helper()
	testutil.CheckGoroutines(t)
	l := lab.Start(t, lab.Options{Nodes: 2, PodsPerNode: 2})
	serveEcho(t, l)
	a := startAgent(t, l.Nodes[0], agentOptions(l.Nodes[0], mode))
	if got := a.r.Mode(); got != mode {
		t.Fatalf("mode = %s, want %s", got, mode)
	}
	enrolled, remote := l.Nodes[0].Pods[0], l.Nodes[1].Pods[0]
	a.enroll(t, enrolled)
	return l, a, enrolled, remote
}

func TestCapture(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			t.Run("outbound", func(t *testing.T) { testOutbound(t, mode) })
			t.Run("inbound plaintext", func(t *testing.T) { testInbound(t, mode) })
			t.Run("inbound hbone", func(t *testing.T) { testHBONE(t, mode) })
			t.Run("same node", func(t *testing.T) { testSameNode(t, mode) })
			t.Run("own connections", func(t *testing.T) { testOwnConnections(t, mode) })
			t.Run("time-wait reuse", func(t *testing.T) { testTimeWaitReuse(t, mode) })
			t.Run("time-wait reuse after unenroll", func(t *testing.T) { testTimeWaitReuseDraining(t, mode) })
			t.Run("pre-existing connections", func(t *testing.T) { testPreExisting(t, mode) })
			t.Run("unenroll", func(t *testing.T) { testUnenroll(t, mode) })
			t.Run("restart", func(t *testing.T) { testRestart(t, mode) })
			t.Run("cleanup", func(t *testing.T) { testCleanup(t, mode) })
		})
	}
}

// Outbound: TCP from an enrolled pod to anywhere reaches 15001 with the original destination; the agent's
// upstream connection comes from the node.
func testOutbound(t *testing.T, mode redirect.Mode) {
	l, a, pod, remote := setup(t, mode)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			dst := netip.AddrPortFrom(f.ip(remote), 8080)
			c := dial(t, pod.NS, dst)
			got := a.next(t)
			if got.role != "outbound" || got.orig != dst || got.remote.Addr() != f.ip(pod) {
				t.Fatalf("agent saw %+v, want outbound to %s from %s", got, dst, f.ip(pod))
			}
			if peer := peerOf(t, c.say(t, "hello")); peer != f.node(l.Nodes[0]) {
				t.Errorf("server saw %s, want the node address %s (proxied)", peer, f.node(l.Nodes[0]))
			}
		})
	}
}

// Inbound plaintext: TCP to an enrolled pod on a port other than 15008 reaches 15006 with the original
// destination and source; the agent delivers it keeping the client's address.
func testInbound(t *testing.T, mode redirect.Mode) {
	_, a, pod, remote := setup(t, mode)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			dst := netip.AddrPortFrom(f.ip(pod), 8080)
			c := dial(t, remote.NS, dst)
			got := a.next(t)
			if got.role != "inbound" || got.orig != dst || got.remote.Addr() != f.ip(remote) {
				t.Fatalf("agent saw %+v, want inbound to %s from %s", got, dst, f.ip(remote))
			}
			if peer := peerOf(t, c.say(t, "hello")); peer != f.ip(remote) {
				t.Errorf("pod saw %s, want the original client %s", peer, f.ip(remote))
			}
			a.none(t)
		})
	}
}

// Inbound HBONE: TCP to an enrolled pod's 15008 reaches the HBONE listener, which knows the dialled pod.
func testHBONE(t *testing.T, mode redirect.Mode) {
	_, a, pod, remote := setup(t, mode)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			dst := netip.AddrPortFrom(f.ip(pod), 15008)
			c := dial(t, remote.NS, dst)
			got := a.next(t)
			if got.role != "hbone" || got.orig != dst || got.remote.Addr() != f.ip(remote) {
				t.Fatalf("agent saw %+v, want hbone to %s from %s", got, dst, f.ip(remote))
			}
			if reply := c.say(t, "x"); reply != "hbone "+dst.String() {
				t.Errorf("reply %q, want the agent's", reply)
			}
		})
	}
}

// Same node: an unenrolled pod's connection to an enrolled pod on the same node is captured as inbound, and an
// enrolled pod's connection to a local unenrolled pod as outbound.
func testSameNode(t *testing.T, mode redirect.Mode) {
	l, a, pod, _ := setup(t, mode)
	other := l.Nodes[0].Pods[1]
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			dst := netip.AddrPortFrom(f.ip(pod), 8080)
			c := dial(t, other.NS, dst)
			if got := a.next(t); got.role != "inbound" || got.orig != dst {
				t.Fatalf("agent saw %+v, want inbound to %s", got, dst)
			}
			if peer := peerOf(t, c.say(t, "in")); peer != f.ip(other) {
				t.Errorf("pod saw %s, want %s", peer, f.ip(other))
			}
			dst = netip.AddrPortFrom(f.ip(other), 8080)
			c = dial(t, pod.NS, dst)
			if got := a.next(t); got.role != "outbound" || got.orig != dst {
				t.Fatalf("agent saw %+v, want outbound to %s", got, dst)
			}
			c.say(t, "out")
		})
	}
}

// Own connections: the agent's connections to an enrolled pod (plaintext and 15008) and to a remote pod are
// never captured by itself.
func testOwnConnections(t *testing.T, mode redirect.Mode) {
	l, a, pod, remote := setup(t, mode)
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			for _, dst := range []netip.AddrPort{
				netip.AddrPortFrom(f.ip(pod), 8080),
				netip.AddrPortFrom(f.ip(pod), 15008),
				netip.AddrPortFrom(f.ip(remote), 15008),
			} {
				ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
				conn, err := a.sf.DialContext(ctx, "tcp", dst.String())
				cancel()
				if err != nil {
					t.Fatalf("agent dial %s: %v", dst, err)
				}
				c := &client{c: conn, br: newReader(conn)}
				// The pod's own server answers (the agent's HBONE stand-in would not echo), from a node address.
				if peer := peerOf(t, c.say(t, "own")); peer != f.node(l.Nodes[0]) && peer != gateway(f) {
					t.Errorf("%s saw %s, want a node address", dst, peer)
				}
				conn.Close()
			}
			a.none(t)
		})
	}
}

// Pre-existing connections keep their direct path after enrollment; new ones are captured.
func testPreExisting(t *testing.T, mode redirect.Mode) {
	l := lab.Start(t, lab.Options{Nodes: 2, PodsPerNode: 1})
	serveEcho(t, l)
	a := startAgent(t, l.Nodes[0], agentOptions(l.Nodes[0], mode))
	pod, remote := l.Nodes[0].Pods[0], l.Nodes[1].Pods[0]
	out := dial(t, pod.NS, netip.AddrPortFrom(remote.IP, 8080))
	in := dial(t, remote.NS, netip.AddrPortFrom(pod.IP6, 8080))
	out.say(t, "before")
	in.say(t, "before")
	a.enroll(t, pod)
	if peer := peerOf(t, out.say(t, "after")); peer != pod.IP {
		t.Errorf("outbound pre-existing: server saw %s, want the pod %s (direct)", peer, pod.IP)
	}
	if peer := peerOf(t, in.say(t, "after")); peer != remote.IP6 {
		t.Errorf("inbound pre-existing: pod saw %s, want %s", peer, remote.IP6)
	}
	a.none(t)
	c := dial(t, pod.NS, netip.AddrPortFrom(remote.IP, 8080))
	if got := a.next(t); got.role != "outbound" {
		t.Fatalf("new connection after enroll: agent saw %+v", got)
	}
	c.say(t, "new")
}

// Unenroll: connections the agent holds keep working; new connections go direct.
func testUnenroll(t *testing.T, mode redirect.Mode) {
	_, a, pod, remote := setup(t, mode)
	out := dial(t, pod.NS, netip.AddrPortFrom(remote.IP, 8080))
	a.next(t)
	in := dial(t, remote.NS, netip.AddrPortFrom(pod.IP6, 8080))
	a.next(t)
	out.say(t, "before")
	in.say(t, "before")
	if err := a.r.Unenroll(t.Context(), pod.UID); err != nil {
		t.Fatalf("unenroll: %v", err)
	}
	if err := a.r.Unenroll(t.Context(), pod.UID); err != nil {
		t.Fatalf("second unenroll: %v", err)
	}
	if pods, err := a.r.Enrolled(t.Context()); err != nil || len(pods) != 0 {
		t.Fatalf("enrolled after unenroll = %v, %v", pods, err)
	}
	out.say(t, "held outbound")
	in.say(t, "held inbound")
	c := dial(t, pod.NS, netip.AddrPortFrom(remote.IP, 8080))
	if peer := peerOf(t, c.say(t, "new")); peer != pod.IP {
		t.Errorf("new outbound after unenroll: server saw %s, want the pod %s (direct)", peer, pod.IP)
	}
	c = dial(t, remote.NS, netip.AddrPortFrom(pod.IP, 8080))
	c.say(t, "new")
	a.none(t)
	// Enrolling again captures again.
	a.enroll(t, pod)
	c = dial(t, pod.NS, netip.AddrPortFrom(remote.IP, 8080))
	if got := a.next(t); got.role != "outbound" {
		t.Fatalf("after re-enroll: agent saw %+v", got)
	}
	c.say(t, "again")
}

// Restart: capture stays while no agent runs (new SYNs wait), and a new agent re-adopts it without duplicating
// programs or links.
func testRestart(t *testing.T, mode redirect.Mode) {
	l, a, pod, remote := setup(t, mode)
	node := l.Nodes[0]
	before := hooks(t, node)
	if mode == redirect.ModeEBPF && (before.MaxPerIface != 1 || before.Lookups != 1) {
		t.Fatalf("hooks = %+v, want one tc program per hooked interface and one sk_lookup program", before)
	}
	a.stop()

	// While no agent runs, a new connection from the enrolled pod is held (its SYNs are dropped), not leaked.
	type result struct {
		c   *client
		err error
	}
	res := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		conn, err := pod.NS.Dial(ctx, "tcp", netip.AddrPortFrom(remote.IP, 8080).String())
		if err != nil {
			res <- result{err: err}
			return
		}
		res <- result{c: &client{c: conn, br: newReader(conn)}}
	}()
	select {
	case r := <-res:
		if r.err == nil {
			r.c.c.Close()
		}
		t.Fatalf("connection completed while no agent ran (err %v)", r.err)
	case <-time.After(300 * time.Millisecond):
	}

	b := startAgent(t, node, agentOptions(node, mode))
	pods, err := b.r.Enrolled(t.Context())
	if err != nil || len(pods) != 1 || pods[0].UID != pod.UID || len(pods[0].IPs) != 2 {
		t.Fatalf("enrolled after restart = %+v, %v", pods, err)
	}
	r := <-res
	if r.err != nil {
		t.Fatalf("connection started during the restart: %v", r.err)
	}
	defer r.c.c.Close()
	if got := b.next(t); got.role != "outbound" {
		t.Fatalf("agent saw %+v", got)
	}
	if peer := peerOf(t, r.c.say(t, "late")); peer != node.IP {
		t.Errorf("server saw %s, want the node %s", peer, node.IP)
	}
	if after := hooks(t, node); after != before {
		t.Errorf("hooks after restart = %+v, before = %+v", after, before)
	}
}

// Cleanup removes everything; traffic flows directly again.
func testCleanup(t *testing.T, mode redirect.Mode) {
	l, a, pod, remote := setup(t, mode)
	node := l.Nodes[0]
	a.stop()
	opts := agentOptions(node, mode)
	for range 2 {
		if err := redirect.Cleanup(t.Context(), opts); err != nil {
			t.Fatalf("cleanup: %v", err)
		}
	}
	if h := hooks(t, node); h != (hookState{}) {
		t.Errorf("after cleanup: %+v", h)
	}
	c := dial(t, pod.NS, netip.AddrPortFrom(remote.IP, 8080))
	if peer := peerOf(t, c.say(t, "direct")); peer != pod.IP {
		t.Errorf("after cleanup: server saw %s, want the pod %s", peer, pod.IP)
	}
}

// hookState summarises what capture installed in a node.
type hookState struct {
	Programs    int  // TCX ingress programs over all interfaces
	MaxPerIface int  // most TCX ingress programs on one interface
	Lookups     int  // sk_lookup programs attached to the node namespace
	PinnedLinks int  // files under <PinDir>/links
	PinnedMaps  int  // map pins under <PinDir>
	Rules       int  // policy rules pointing at the capture table
	Routes      int  // routes in the capture table
	NFTTable    bool // the nftables table exists
}

func hooks(tb testing.TB, node *lab.Node) hookState {
	tb.Helper()
	var h hookState
	if ents, err := os.ReadDir(filepath.Join(node.PinDir, "links")); err == nil {
		h.PinnedLinks = len(ents)
	}
	for _, m := range []string{"pods", "listeners", "stats"} {
		if _, err := os.Stat(filepath.Join(node.PinDir, m)); err == nil {
			h.PinnedMaps++
		}
	}
	nh, err := node.NS.Handle()
	if err != nil {
		tb.Fatal(err)
	}
	defer nh.Close()
	links, err := nh.LinkList()
	if err != nil {
		tb.Fatal(err)
	}
	err = node.NS.Do(func() error {
		for _, l := range links {
			res, err := link.QueryPrograms(link.QueryOptions{Target: l.Attrs().Index, Attach: ebpf.AttachTCXIngress})
			if err != nil {
				return err
			}
			h.Programs += len(res.Programs)
			h.MaxPerIface = max(h.MaxPerIface, len(res.Programs))
		}
		ns, err := os.Open(node.NS.Path())
		if err != nil {
			return err
		}
		defer ns.Close()
		res, err := link.QueryPrograms(link.QueryOptions{Target: int(ns.Fd()), Attach: ebpf.AttachSkLookup})
		if err != nil {
			return err
		}
		h.Lookups = len(res.Programs)
		return nil
	})
	if err != nil {
		tb.Fatalf("query tcx: %v", err)
	}
	rules, err := nh.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		tb.Fatal(err)
	}
	for _, r := range rules {
		if r.Table == redirect.DefaultRouteTable {
			h.Rules++
		}
	}
	routes, err := nh.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: redirect.DefaultRouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		tb.Fatal(err)
	}
	h.Routes = len(routes)
	h.NFTTable = node.NS.Command(tb.Context(), "nft", "list", "table", "inet", redirect.DefaultNFTTable).Run() == nil
	return h
}

func TestProbeAndAutoMode(t *testing.T) {
	l := lab.Start(t, lab.Options{Nodes: 1, PodsPerNode: 1})
	opts := agentOptions(l.Nodes[0], redirect.ModeAuto)
	for _, m := range []redirect.Mode{redirect.ModeEBPF, redirect.ModeTPROXY} {
		if err := redirect.Probe(t.Context(), m, opts); err != nil {
			t.Errorf("probe %s on Linux 6.18: %v", m, err)
		}
	}
	// This kernel has every feature, so auto picks eBPF.
	a := startAgent(t, l.Nodes[0], opts)
	if a.r.Mode() != redirect.ModeEBPF {
		t.Errorf("auto mode chose %s", a.r.Mode())
	}
}

func TestEnrollErrors(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			testutil.CheckFDs(t)
			l := lab.Start(t, lab.Options{Nodes: 2, PodsPerNode: 1})
			a := startAgent(t, l.Nodes[0], agentOptions(l.Nodes[0], mode))
			remotePod := l.Nodes[1].Pods[0]
			cases := []struct {
				name string
				pod  redirect.Pod
				want error
			}{
				{"pod of another node", redirect.Pod{UID: "x", IPs: []netip.Addr{remotePod.IP}}, redirect.ErrNotLocal},
				{"node address", redirect.Pod{UID: "x", IPs: []netip.Addr{l.Nodes[0].IP}}, redirect.ErrNotLocal},
				{"no addresses", redirect.Pod{UID: "x"}, redirect.ErrInvalidPod},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					if err := a.r.Enroll(t.Context(), tc.pod); !errors.Is(err, tc.want) {
						t.Errorf("Enroll = %v, want %v", err, tc.want)
					}
				})
			}
			if err := a.r.Unenroll(t.Context(), "never-enrolled"); err != nil {
				t.Errorf("unenroll unknown: %v", err)
			}
			a.stop()
			if err := a.r.Enroll(t.Context(), redirect.Pod{UID: "x", IPs: l.Nodes[0].Pods[0].IPs()}); !errors.Is(err, redirect.ErrClosed) {
				t.Errorf("enroll after close = %v, want ErrClosed", err)
			}
			if err := redirect.Cleanup(t.Context(), a.opts); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		})
	}
}

// TestReenrollMovesAddresses checks that enrolling a UID again replaces its addresses and that an address taken
// over by another pod (IP reuse) leaves its previous owner.
func TestReenrollMovesAddresses(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			l := lab.Start(t, lab.Options{Nodes: 1, PodsPerNode: 2})
			a := startAgent(t, l.Nodes[0], agentOptions(l.Nodes[0], mode))
			p0, p1 := l.Nodes[0].Pods[0], l.Nodes[0].Pods[1]
			ctx := t.Context()
			must := func(err error) {
				t.Helper()
				if err != nil {
					t.Fatal(err)
				}
			}
			must(a.r.Enroll(ctx, redirect.Pod{UID: "a", IPs: p0.IPs()}))
			must(a.r.Enroll(ctx, redirect.Pod{UID: "a", IPs: []netip.Addr{p0.IP}}))
			must(a.r.Enroll(ctx, redirect.Pod{UID: "b", IPs: []netip.Addr{p1.IP, p0.IP}}))
			got, err := a.r.Enrolled(ctx)
			must(err)
			// "a" lost its only remaining address to "b".
			if len(got) != 1 || got[0].UID != "b" || len(got[0].IPs) != 2 || got[0].IPs[0] != p0.IP || got[0].IPs[1] != p1.IP {
				t.Fatalf("enrolled = %+v, want only b with %s and %s", got, p0.IP, p1.IP)
			}
		})
	}
}

// TestCaptureUnderStrictConntrack: with conntrack on in the node namespace (the lab's kube-proxy table) and a
// firewall that drops what conntrack finds invalid in every hook the agent's packets cross, captured
// connections still work in both directions, with their original destinations: conntrack sees neither side of
// a captured connection (a SYN-ACK from a listener whose SYN it never saw is invalid) and both sides of the
// agent's own dials (their ACKs would be invalid if it never saw the replies).
func TestCaptureUnderStrictConntrack(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			l, a, pod, remote := setup(t, mode)
			other := l.Nodes[0].Pods[1]
			const table = "ambit_test_strict"
			rules := "table inet " + table + " {\n"
			for _, hook := range []string{"prerouting", "input", "output", "postrouting"} {
				rules += fmt.Sprintf("\tchain %s { type filter hook %s priority 0; policy accept; ct state invalid counter drop; }\n", hook, hook)
			}
			rules += "}\n"
			cmd := l.Nodes[0].NS.Command(t.Context(), "nft", "-f", "-")
			cmd.Stdin = strings.NewReader(rules)
			if out, err := proc.CombinedOutput(cmd); err != nil {
				t.Fatalf("install %s: %v: %s", table, err, out)
			}
			for _, f := range families {
				t.Run(f.name, func(t *testing.T) {
					for _, tc := range []struct {
						role     string
						from     *lab.Pod
						dst      netip.AddrPort
						wantPeer netip.Addr // seen by the echo server, if set
					}{
						{"outbound", pod, netip.AddrPortFrom(f.ip(remote), 8080), f.node(l.Nodes[0])},
						{"outbound", pod, netip.AddrPortFrom(f.ip(other), 8080), netip.Addr{}}, // from a node address
						{"inbound", remote, netip.AddrPortFrom(f.ip(pod), 8080), f.ip(remote)},
						{"inbound", other, netip.AddrPortFrom(f.ip(pod), 8080), f.ip(other)},
						{"hbone", remote, netip.AddrPortFrom(f.ip(pod), 15008), netip.Addr{}},
					} {
						c := dial(t, tc.from.NS, tc.dst)
						if got := a.next(t); got.role != tc.role || got.orig != tc.dst || got.remote.Addr() != f.ip(tc.from) {
							t.Fatalf("agent saw %+v, want %s to %s from %s", got, tc.role, tc.dst, f.ip(tc.from))
						}
						if tc.role == "hbone" {
							if reply := c.say(t, "x"); reply != "hbone "+tc.dst.String() {
								t.Errorf("reply %q, want the agent's", reply)
							}
							continue
						}
						if peer := peerOf(t, c.say(t, "hello")); tc.wantPeer.IsValid() && peer != tc.wantPeer {
							t.Errorf("%s %s -> %s: server saw %s, want %s", tc.role, tc.from.Name, tc.dst, peer, tc.wantPeer)
						}
					}
				})
			}
			out, err := proc.CombinedOutput(l.Nodes[0].NS.Command(t.Context(), "nft", "list", "table", "inet", table))
			if err != nil {
				t.Fatalf("list %s: %v: %s", table, err, out)
			}
			if regexp.MustCompile(`counter packets [1-9]`).Match(out) {
				t.Errorf("conntrack found packets invalid:\n%s", out)
			}
		})
	}
}

// TestDialFromThroughMasquerade: a connection the agent dials from an enrolled pod's address to a host outside
// the cluster leaves through the node's masquerade (the lab's kube-proxy table masquerades pod traffic to the
// fabric), as the pod's own would, and its replies, addressed to the node and translated back by conntrack,
// reach the agent's socket, in both modes and families.
func TestDialFromThroughMasquerade(t *testing.T) {
	for _, mode := range modes {
		t.Run(string(mode), func(t *testing.T) {
			l, a, pod, _ := setup(t, mode)
			for _, f := range families {
				t.Run(f.name, func(t *testing.T) {
					ext := netip.MustParseAddr("172.30.0.200")
					prefix := "/24"
					if f.name == "v6" {
						ext, prefix = netip.MustParseAddr("fd00:30::c8"), "/64"
					}
					nsRun(t, l.Fabric, "ip", "addr", "add", ext.String()+prefix, "dev", "br0", "nodad")
					ln, err := l.Fabric.Listen(t.Context(), "tcp", netip.AddrPortFrom(ext, 8080).String())
					if err != nil {
						t.Fatal(err)
					}
					defer ln.Close()
					go func() { // ends when the listener closes
						for {
							c, err := ln.Accept()
							if err != nil {
								return
							}
							go func() {
								defer c.Close()
								newReader(c).ReadString('\n')
								fmt.Fprintf(c, "%s x\n", c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap())
							}()
						}
					}()
					ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
					defer cancel()
					conn, err := a.sf.DialFrom(ctx, f.ip(pod), netip.AddrPortFrom(ext, 8080))
					if err != nil {
						t.Fatal(err)
					}
					defer conn.Close()
					c := &client{c: conn, br: newReader(conn)}
					if peer := peerOf(t, c.say(t, "hello")); peer != f.node(l.Nodes[0]) {
						t.Errorf("external host saw %s, want the node's %s (masqueraded)", peer, f.node(l.Nodes[0]))
					}
				})
			}
		})
	}
}
