package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/test/netns"
	"github.com/ambit-mesh/ambit/test/owner"
	"github.com/ambit-mesh/ambit/test/proc"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// NamePrefix starts the name of every lab. Default names continue with "t<pid>-<random>" (for people; ownership
// is the lab's lock, see LockDir).
const NamePrefix = "ambitlab-"

// bpffsDir is where labs keep per-node bpffs pin directories (see Node.PinDir).
const bpffsDir = "/sys/fs/bpf"

// Options configures a lab. The zero value is a valid two-node, two-pods-per-node lab.
type Options struct {
	// Nodes is the number of node namespaces (default 2, at most 200).
	Nodes int
	// PodsPerNode is the number of pod namespaces per node (default 2, at most 200).
	PodsPerNode int
	// Name names the lab; it must start with NamePrefix. Default: NamePrefix + "t<pid>-<random>", unique. A fixed
	// name is owned by one process at a time: New fails with ErrInUse while a live process owns it, and removes
	// what a dead owner left under that name.
	Name string
	// Keep makes the lab outlive its owner (hack/lab up): Sweep leaves it alone until Remove.
	Keep bool
	// NoConntrack leaves conntrack off in the node namespaces. By default every node gets KubeProxyTable, as
	// kube-proxy and the CNI give every real node NAT rules, which turn conntrack on for all of the node's
	// traffic (captured or not).
	NoConntrack bool
	// Logger receives progress at debug level; nil discards.
	Logger *slog.Logger
}

// Lab is a running set of network namespaces. Its fields are read-only.
type Lab struct {
	// Name is the prefix of everything the lab created.
	Name string
	// Fabric is the namespace holding the bridge "br0" that joins the nodes.
	Fabric NS
	// Nodes are the nodes, in index order.
	Nodes []*Node

	lock *owner.Lock // ownership of Name; nil once closed or released
}

// Node is one node namespace: where an agent (and its redirector) runs.
type Node struct {
	// Index is the node's position in Lab.Nodes.
	Index int
	// NS is the node's network namespace.
	NS NS
	// IP and IP6 are the node's addresses on the fabric (on Uplink).
	IP, IP6 netip.Addr
	// Uplink is the name of the node's interface to the fabric, inside NS.
	Uplink string
	// PinDir is a bpffs directory reserved for this node (not created by the lab; removed by Close).
	PinDir string
	// Pods are the node's pods, in index order.
	Pods []*Pod
}

// Pod is one pod namespace wired to its node.
type Pod struct {
	// Index is the pod's position in Node.Pods.
	Index int
	// Node is the pod's node.
	Node *Node
	// Name is "<node index>-<pod index>" style: "n0-p1".
	Name string
	// UID is a stable unique identifier, as a Kubernetes pod UID would be.
	UID string
	// NS is the pod's network namespace.
	NS NS
	// IP and IP6 are the pod's addresses (on its eth0).
	IP, IP6 netip.Addr
	// HostVeth is the name of the node side of the pod's veth, inside Node.NS.
	HostVeth string
}

// IPs returns the pod's addresses, IPv4 first.
func (p *Pod) IPs() []netip.Addr { return []netip.Addr{p.IP, p.IP6} }

// Pods returns every pod of every node.
func (l *Lab) Pods() []*Pod {
	var out []*Pod
	for _, n := range l.Nodes {
		out = append(out, n.Pods...)
	}
	return out
}

// Start builds a lab for a test: it requires root (testutil.RequireRoot), sweeps the labs of dead owners (logging,
// not failing, what it cannot remove: the next Sweep retries), and removes the lab when the test ends, whether it
// passed or not.
func Start(tb testing.TB, opts Options) *Lab {
	tb.Helper()
	testutil.RequireRoot(tb)
	if err := Sweep(); err != nil {
		tb.Logf("sweep stale labs: %v", err)
	}
	l, err := New(tb.Context(), opts)
	if err != nil {
		tb.Fatalf("start lab: %v", err)
	}
	tb.Cleanup(func() {
		if err := l.Close(); err != nil {
			tb.Errorf("close lab: %v", err)
		}
	})
	return l
}

// New builds a lab. On error, everything it created is removed.
func New(ctx context.Context, opts Options) (*Lab, error) {
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.PodsPerNode == 0 {
		opts.PodsPerNode = 2
	}
	if opts.Nodes < 1 || opts.Nodes > 200 || opts.PodsPerNode < 0 || opts.PodsPerNode > 200 {
		return nil, fmt.Errorf("lab size %d nodes x %d pods out of range", opts.Nodes, opts.PodsPerNode)
	}
	if opts.Name == "" {
		opts.Name = fmt.Sprintf("%st%d-%04x", NamePrefix, os.Getpid(), rand.IntN(1<<16))
	}
	if !strings.HasPrefix(opts.Name, NamePrefix) {
		return nil, fmt.Errorf("lab name %q must start with %q", opts.Name, NamePrefix)
	}
	if !validName.MatchString(opts.Name) {
		return nil, fmt.Errorf("lab name %q: want %s", opts.Name, validName)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	lock, err := lockLab(opts.Name)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(keepPath(opts.Name)); err == nil {
		lock.Release()
		return nil, fmt.Errorf("lab %s already exists (kept; remove it first)", opts.Name)
	}
	// Anything under this name now is a dead owner's leftover.
	if err := removeResources(opts.Name); err != nil {
		lock.Release()
		return nil, fmt.Errorf("remove what a dead owner left of lab %s: %w", opts.Name, err)
	}
	if opts.Keep {
		if err := os.WriteFile(keepPath(opts.Name), []byte("kept by pid "+strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			lock.Release()
			return nil, fmt.Errorf("mark lab %s kept: %w", opts.Name, err)
		}
	}
	l := &Lab{Name: opts.Name, lock: lock}
	if err := l.build(ctx, opts, log); err != nil {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, err
	}
	log.Debug("lab up", "name", l.Name, "nodes", opts.Nodes, "pods_per_node", opts.PodsPerNode)
	return l, nil
}

func (l *Lab) build(ctx context.Context, opts Options, log *slog.Logger) error {
	var err error
	if l.Fabric, err = l.newNS("fab", false); err != nil {
		return err
	}
	fh, err := l.Fabric.Handle()
	if err != nil {
		return err
	}
	defer fh.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := fh.LinkAdd(br); err != nil {
		return fmt.Errorf("add fabric bridge: %w", err)
	}
	if err := fh.LinkSetUp(br); err != nil {
		return fmt.Errorf("set fabric bridge up: %w", err)
	}
	for i := range opts.Nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := &Node{
			Index:  i,
			IP:     netip.AddrFrom4([4]byte{172, 30, 0, byte(i + 1)}),
			IP6:    netip.MustParseAddr(fmt.Sprintf("fd00:30::%x", i+1)),
			Uplink: "eth0",
			PinDir: filepath.Join(bpffsDir, l.Name, fmt.Sprintf("n%d", i)),
		}
		l.Nodes = append(l.Nodes, n)
		if n.NS, err = l.newNS(fmt.Sprintf("n%d", i), true); err != nil {
			return err
		}
		if err := l.wireNode(fh, n); err != nil {
			return err
		}
		for j := range opts.PodsPerNode {
			p := &Pod{
				Index:    j,
				Node:     n,
				Name:     fmt.Sprintf("n%d-p%d", i, j),
				IP:       netip.AddrFrom4([4]byte{10, 244, byte(i), byte(j + 2)}),
				IP6:      netip.MustParseAddr(fmt.Sprintf("fd00:244:%x::%x", i, j+2)),
				HostVeth: fmt.Sprintf("vp%d", j),
			}
			p.UID = fmt.Sprintf("%s-%s", l.Name, p.Name)
			n.Pods = append(n.Pods, p)
			if p.NS, err = l.newNS(p.Name, false); err != nil {
				return err
			}
			if err := wirePod(n, p); err != nil {
				return err
			}
		}
	}
	for _, n := range l.Nodes {
		if err := l.routeNode(n); err != nil {
			return err
		}
		if !opts.NoConntrack {
			if err := kubeProxy(ctx, n); err != nil {
				return err
			}
		}
	}
	log.Debug("lab wired", "name", l.Name)
	return nil
}

// newNS creates the namespace <lab>-<suffix>, brings lo up and sets the sysctls every lab namespace needs.
func (l *Lab) newNS(suffix string, forward bool) (NS, error) {
	ns, err := netns.Create(l.Name + "-" + suffix)
	if err != nil {
		return ns, err
	}
	sysctls := [][2]string{
		{"net/ipv6/conf/all/accept_dad", "0"},
		{"net/ipv6/conf/default/accept_dad", "0"},
	}
	if forward {
		sysctls = append(sysctls,
			[2]string{"net/ipv4/ip_forward", "1"},
			[2]string{"net/ipv6/conf/all/forwarding", "1"},
		)
	}
	err = ns.Do(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up: %w", err)
		}
		for _, s := range sysctls {
			if err := os.WriteFile(filepath.Join("/proc/sys", s[0]), []byte(s[1]), 0o644); err != nil {
				return fmt.Errorf("set sysctl %s: %w", s[0], err)
			}
		}
		return nil
	})
	return ns, err
}

// wireNode connects the node to the fabric bridge: "eth0" in the node, "n<i>" in the fabric.
func (l *Lab) wireNode(fh *netlink.Handle, n *Node) error {
	nh, err := n.NS.Handle()
	if err != nil {
		return err
	}
	defer nh.Close()
	fabNS, err := vnetns.GetFromPath(l.Fabric.Path())
	if err != nil {
		return fmt.Errorf("open fabric netns: %w", err)
	}
	defer fabNS.Close()
	peer := fmt.Sprintf("n%d", n.Index)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: n.Uplink}, PeerName: peer, PeerNamespace: netlink.NsFd(fabNS)}
	if err := nh.LinkAdd(veth); err != nil {
		return fmt.Errorf("add node %d uplink: %w", n.Index, err)
	}
	fl, err := fh.LinkByName(peer)
	if err != nil {
		return fmt.Errorf("find fabric port %s: %w", peer, err)
	}
	br, err := fh.LinkByName("br0")
	if err != nil {
		return fmt.Errorf("find fabric bridge: %w", err)
	}
	if err := fh.LinkSetMaster(fl, br); err != nil {
		return fmt.Errorf("attach %s to bridge: %w", peer, err)
	}
	if err := fh.LinkSetUp(fl); err != nil {
		return fmt.Errorf("set %s up: %w", peer, err)
	}
	up, err := nh.LinkByName(n.Uplink)
	if err != nil {
		return fmt.Errorf("find node uplink: %w", err)
	}
	for _, a := range []netip.Prefix{netip.PrefixFrom(n.IP, 24), netip.PrefixFrom(n.IP6, 64)} {
		if err := nh.AddrAdd(up, addr(a)); err != nil {
			return fmt.Errorf("add %s to node %d: %w", a, n.Index, err)
		}
	}
	if err := nh.LinkSetUp(up); err != nil {
		return fmt.Errorf("set node uplink up: %w", err)
	}
	return nil
}

var (
	gw4 = netip.MustParseAddr("169.254.1.1")
	gw6 = netip.MustParseAddr("fe80::1")
)

// wirePod creates the pod's veth (HostVeth in the node, eth0 in the pod) with point-to-point routing.
func wirePod(n *Node, p *Pod) error {
	nh, err := n.NS.Handle()
	if err != nil {
		return err
	}
	defer nh.Close()
	ph, err := p.NS.Handle()
	if err != nil {
		return err
	}
	defer ph.Close()
	podNS, err := vnetns.GetFromPath(p.NS.Path())
	if err != nil {
		return fmt.Errorf("open pod netns: %w", err)
	}
	defer podNS.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: p.HostVeth}, PeerName: "eth0", PeerNamespace: netlink.NsFd(podNS)}
	if err := nh.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth for pod %s: %w", p.Name, err)
	}
	host, err := nh.LinkByName(p.HostVeth)
	if err != nil {
		return fmt.Errorf("find %s: %w", p.HostVeth, err)
	}
	for _, a := range []netip.Prefix{netip.PrefixFrom(gw4, 32), netip.PrefixFrom(gw6, 64)} {
		if err := nh.AddrAdd(host, addr(a)); err != nil {
			return fmt.Errorf("add %s to %s: %w", a, p.HostVeth, err)
		}
	}
	if err := nh.LinkSetUp(host); err != nil {
		return fmt.Errorf("set %s up: %w", p.HostVeth, err)
	}
	for _, a := range []netip.Addr{p.IP, p.IP6} {
		r := &netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipnet(netip.PrefixFrom(a, a.BitLen())), Scope: netlink.SCOPE_LINK}
		if err := nh.RouteReplace(r); err != nil {
			return fmt.Errorf("add node route to pod %s: %w", a, err)
		}
	}
	eth, err := ph.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find pod eth0: %w", err)
	}
	for _, a := range []netip.Prefix{netip.PrefixFrom(p.IP, 32), netip.PrefixFrom(p.IP6, 128)} {
		if err := ph.AddrAdd(eth, addr(a)); err != nil {
			return fmt.Errorf("add %s to pod %s: %w", a, p.Name, err)
		}
	}
	if err := ph.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set pod eth0 up: %w", err)
	}
	idx := eth.Attrs().Index
	routes := []*netlink.Route{
		{LinkIndex: idx, Dst: ipnet(netip.PrefixFrom(gw4, 32)), Scope: netlink.SCOPE_LINK},
		{LinkIndex: idx, Gw: gw4.AsSlice()},
		{LinkIndex: idx, Gw: gw6.AsSlice()},
	}
	for _, r := range routes {
		if err := ph.RouteReplace(r); err != nil {
			return fmt.Errorf("add pod %s route %s: %w", p.Name, r, err)
		}
	}
	return nil
}

// routeNode adds routes to every other node's pod CIDRs via that node's fabric address.
func (l *Lab) routeNode(n *Node) error {
	nh, err := n.NS.Handle()
	if err != nil {
		return err
	}
	defer nh.Close()
	for _, o := range l.Nodes {
		if o == n {
			continue
		}
		dsts := []struct {
			dst netip.Prefix
			gw  netip.Addr
		}{
			{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(o.Index), 0}), 24), o.IP},
			{netip.MustParsePrefix(fmt.Sprintf("fd00:244:%x::/64", o.Index)), o.IP6},
		}
		for _, d := range dsts {
			if err := nh.RouteReplace(&netlink.Route{Dst: ipnet(d.dst), Gw: d.gw.AsSlice()}); err != nil {
				return fmt.Errorf("add route %s via %s on node %d: %w", d.dst, d.gw, n.Index, err)
			}
		}
	}
	return nil
}

// KubeProxyTable is the nftables table (family inet) that New installs in every node namespace unless
// Options.NoConntrack is set: what kube-proxy and the CNI put on a real node, reduced to what changes how the
// node treats packets. Its NAT chain masquerades pod traffic to the fabric's non-pod addresses (other nodes,
// hosts a test adds to the fabric) as a node does for destinations outside the cluster, and its forward chain
// drops packets conntrack finds invalid, as kube-proxy does. Both turn conntrack on in the node namespace, for
// IPv4 and IPv6. It lives in the node namespace, so it goes with the lab. (Its name does not contain "ambit":
// tests check that Ambit's cleanup leaves no table of Ambit's behind.)
const KubeProxyTable = "lab-kubeproxy"

// kubeProxyRuleset renders KubeProxyTable.
func kubeProxyRuleset() string {
	return fmt.Sprintf(`table inet %s {
	chain nat-postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr %s ip daddr %s ip daddr != %s masquerade
		ip6 saddr %s ip6 daddr %s ip6 daddr != %s masquerade
	}
	chain filter-forward {
		type filter hook forward priority filter; policy accept;
		ct state invalid drop
	}
}
`, KubeProxyTable, podCIDR4, fabricCIDR4, podCIDR4, podCIDR6, fabricCIDR6, podCIDR6)
}

// The lab's address plan (see the package comment).
const (
	podCIDR4    = "10.244.0.0/16"
	podCIDR6    = "fd00:244::/32"
	fabricCIDR4 = "172.30.0.0/24"
	fabricCIDR6 = "fd00:30::/64"
)

// kubeProxy installs KubeProxyTable in n's namespace.
func kubeProxy(ctx context.Context, n *Node) error {
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("node %d: nft is needed for the kube-proxy rules (apt-get install nftables; "+
			"Options.NoConntrack goes without): %w", n.Index, err)
	}
	cmd := n.NS.Command(ctx, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(kubeProxyRuleset())
	if out, err := proc.CombinedOutput(cmd); err != nil {
		return fmt.Errorf("install %s on node %d: %w: %s", KubeProxyTable, n.Index, err, bytes.TrimSpace(out))
	}
	return nil
}

// Close removes every namespace and bpffs directory of the lab and gives up its name. It is safe to call more than
// once.
func (l *Lab) Close() error {
	if l.lock == nil {
		return nil
	}
	if err := removeResources(l.Name); err != nil {
		return err // keep the lock: the lab is still ours, and a retried Close (or our exit and a Sweep) finishes
	}
	err := l.lock.Remove()
	l.lock = nil
	return err
}

// Release gives up the lab's ownership without removing it: a lab made with Options.Keep then stays until
// Remove; any other lab is removed by the next Sweep.
func (l *Lab) Release() error {
	if l.lock == nil {
		return nil
	}
	err := l.lock.Release()
	l.lock = nil
	return err
}

func addr(p netip.Prefix) *netlink.Addr {
	a := &netlink.Addr{IPNet: ipnet(p)}
	if p.Addr().Is6() {
		a.Flags = unix.IFA_F_NODAD
	}
	return a
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
