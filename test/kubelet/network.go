package kubelet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ambit-mesh/ambit/test/lab"
	tnetns "github.com/ambit-mesh/ambit/test/netns"
)

var podGateway = netip.MustParseAddr("169.254.1.1")

// ipPool hands out the addresses of a node's pod CIDR (.2 to .254).
type ipPool struct {
	mu     sync.Mutex
	prefix netip.Prefix
	used   map[netip.Addr]bool // guarded by mu
}

func (p *ipPool) get() (netip.Addr, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	a := p.prefix.Addr().Next().Next()
	for ; p.prefix.Contains(a) && a.As4()[3] < 255; a = a.Next() {
		if !p.used[a] {
			p.used[a] = true
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("pod CIDR %s exhausted", p.prefix)
}

func (p *ipPool) put(a netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.used, a)
}

// addNS creates the named network namespace (package test/netns: as `ip netns add` does) with lo up.
func addNS(name string) (lab.NS, error) {
	ns, err := tnetns.Create(name)
	if err != nil {
		return ns, fmt.Errorf("add netns %s: %w", name, err)
	}
	h, err := ns.Handle()
	if err != nil {
		return ns, err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return ns, fmt.Errorf("find lo in %s: %w", name, err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return ns, fmt.Errorf("set lo up in %s: %w", name, err)
	}
	return ns, nil
}

// delNS deletes a namespace made by addNS (its veth goes with it).
func delNS(name string) error {
	return tnetns.Delete(name)
}

// wirePod connects pod namespace ns to the node with a veth (hostVeth in the node, eth0 in the pod),
// point-to-point: ip/32 on the pod's eth0, a host route to it on the node, and a default route in the pod via
// 169.254.1.1 (the node side).
func wirePod(node lab.NS, ns lab.NS, hostVeth string, ip netip.Addr) error {
	nh, err := node.Handle()
	if err != nil {
		return err
	}
	defer nh.Close()
	ph, err := ns.Handle()
	if err != nil {
		return err
	}
	defer ph.Close()
	podNS, err := netns.GetFromPath(ns.Path())
	if err != nil {
		return fmt.Errorf("open pod netns: %w", err)
	}
	defer podNS.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostVeth}, PeerName: "eth0", PeerNamespace: netlink.NsFd(podNS)}
	if err := nh.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth %s: %w", hostVeth, err)
	}
	host, err := nh.LinkByName(hostVeth)
	if err != nil {
		return fmt.Errorf("find %s: %w", hostVeth, err)
	}
	if err := nh.AddrAdd(host, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(podGateway, 32))}); err != nil {
		return fmt.Errorf("address %s: %w", hostVeth, err)
	}
	if err := nh.LinkSetUp(host); err != nil {
		return fmt.Errorf("set %s up: %w", hostVeth, err)
	}
	if err := nh.RouteReplace(&netlink.Route{LinkIndex: host.Attrs().Index, Dst: ipnet(netip.PrefixFrom(ip, 32)), Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("route to pod %s: %w", ip, err)
	}
	eth, err := ph.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find pod eth0: %w", err)
	}
	if err := ph.AddrAdd(eth, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(ip, 32))}); err != nil {
		return fmt.Errorf("address pod %s: %w", ip, err)
	}
	if err := ph.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set pod eth0 up: %w", err)
	}
	idx := eth.Attrs().Index
	for _, r := range []*netlink.Route{
		{LinkIndex: idx, Dst: ipnet(netip.PrefixFrom(podGateway, 32)), Scope: netlink.SCOPE_LINK},
		{LinkIndex: idx, Gw: podGateway.AsSlice()},
	} {
		if err := ph.RouteReplace(r); err != nil {
			return fmt.Errorf("pod route %s: %w", r, err)
		}
	}
	return nil
}

// addDefaultRoute gives a node namespace a default route out of its uplink, as a real node has (the agent
// finds its uplinks from the default routes).
func addDefaultRoute(n *lab.Node) error {
	h, err := n.NS.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	up, err := h.LinkByName(n.Uplink)
	if err != nil {
		return fmt.Errorf("find uplink: %w", err)
	}
	if err := h.RouteReplace(&netlink.Route{LinkIndex: up.Attrs().Index, Scope: netlink.SCOPE_LINK,
		Dst: ipnet(netip.MustParsePrefix("0.0.0.0/0"))}); err != nil {
		return fmt.Errorf("default route: %w", err)
	}
	return nil
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// ServiceProxy makes a control-plane Service reachable by ClusterIP inside the lab: VIP answers in every pod
// and node namespace and each connection is forwarded to Target on the host (for example the API server on
// 127.0.0.1), as kube-proxy would send it to the Service's endpoint.
type ServiceProxy struct {
	VIP    netip.AddrPort
	Target string
}

// proxies serves a set of ServiceProxy listeners inside one namespace until closed.
type proxies struct {
	lns []net.Listener
	wg  sync.WaitGroup
}

// startProxies adds each VIP to ns's lo and forwards connections to it.
func startProxies(ctx context.Context, ns lab.NS, sps []ServiceProxy, log *slog.Logger) (*proxies, error) {
	p := &proxies{}
	if len(sps) == 0 {
		return p, nil
	}
	h, err := ns.Handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo: %w", err)
	}
	added := map[netip.Addr]bool{}
	for _, sp := range sps {
		if a := sp.VIP.Addr(); !added[a] {
			added[a] = true
			if err := h.AddrReplace(lo, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(a, a.BitLen()))}); err != nil {
				return nil, fmt.Errorf("add %s to lo: %w", a, err)
			}
		}
		ln, err := ns.Listen(ctx, "tcp", sp.VIP.String())
		if err != nil {
			p.close()
			return nil, fmt.Errorf("listen %s in %s: %w", sp.VIP, ns.Name, err)
		}
		p.lns = append(p.lns, ln)
		p.wg.Go(func() { serveProxy(ln, sp.Target, log) })
	}
	return p, nil
}

func serveProxy(ln net.Listener, target string, log *slog.Logger) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Warn("service proxy accept", "err", err)
			}
			return
		}
		wg.Go(func() {
			defer c.Close()
			up, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{})
			go func() {
				_, _ = io.Copy(up, c)
				if tc, ok := up.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				close(done)
			}()
			_, _ = io.Copy(c, up)
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
			<-done
		})
	}
}

// close stops accepting and waits for the accept loops (open connections end when either side closes).
func (p *proxies) close() {
	if p == nil {
		return
	}
	for _, ln := range p.lns {
		ln.Close()
	}
	p.wg.Wait()
}
