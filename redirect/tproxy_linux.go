package redirect

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"

	"github.com/vishvananda/netlink"
)

// tproxyRedirector is ModeTPROXY: nftables tproxy rules in the node namespace, enrollment in nftables sets.
type tproxyRedirector struct {
	o   Options
	ns  nsRunner
	log *slog.Logger
	nl  *netlink.Handle

	mu     sync.Mutex
	closed bool
	pods   map[string]*nftPod // enrolled pods by UID
	names  map[string]string  // UID -> Pod.Name, for pods enrolled by this process
}

var _ Redirector = (*tproxyRedirector)(nil)

func listenerPort(ln *net.TCPListener) uint16 {
	return ln.Addr().(*net.TCPAddr).AddrPort().Port()
}

func (r *tproxyRedirector) nftConfig() nftConfig {
	l := r.o.Listeners
	c := nftConfig{
		Table:     r.o.NFTTable,
		Marks:     r.o.Marks,
		Outbound:  listenerPort(l.Outbound),
		Inbound:   listenerPort(l.Inbound),
		HBONE:     listenerPort(l.HBONE),
		HBONEPort: r.o.HBONEPort,
		NoTrack:   !r.o.DisableNoTrack,
	}
	if l.InboundDNAT != nil {
		c.InboundDNAT = listenerPort(l.InboundDNAT)
	}
	if l.dns() {
		c.DNSUDP, c.DNSTCP = l.DNSUDP.local.Port(), listenerPort(l.DNSTCP)
	}
	return c
}

func newTPROXY(ctx context.Context, o Options, ns nsRunner) (_ *tproxyRedirector, err error) {
	if err := probeTPROXY(ctx, o, ns); err != nil {
		return nil, err
	}
	r := &tproxyRedirector{
		o:     o,
		ns:    ns,
		log:   o.Logger.With("component", "redirect", "mode", ModeTPROXY),
		pods:  map[string]*nftPod{},
		names: map[string]string{},
	}
	defer func() {
		if err != nil && r.nl != nil {
			r.nl.Close()
		}
	}()
	if r.nl, err = ns.handle(); err != nil {
		return nil, err
	}
	// eBPF capture left by an earlier run in the other mode would capture twice.
	if err := cleanupEBPF(o); err != nil {
		return nil, fmt.Errorf("remove ebpf capture: %w", err)
	}
	if err := installRouting(r.nl, o); err != nil {
		return nil, err
	}
	// The sets survive this transaction, so a restarted agent keeps its predecessor's enrollment.
	if err := applyNFT(ctx, ns, tproxyRuleset(r.nftConfig())); err != nil {
		return nil, fmt.Errorf("install tproxy rules: %w", err)
	}
	out, err := runNFT(ctx, ns, "", "-j", "list", "table", "inet", o.NFTTable)
	if err != nil {
		return nil, fmt.Errorf("read tproxy sets: %w", err)
	}
	if r.pods, err = parseNFTPods(out); err != nil {
		return nil, err
	}
	r.log.Info("capture ready", "pods", len(r.pods), "table", o.NFTTable)
	return r, nil
}

func (r *tproxyRedirector) Enroll(ctx context.Context, pod Pod) error {
	if err := pod.validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	np := nftPod{UID: pod.UID, Addrs: map[netip.Addr]string{}}
	for _, a := range pod.IPs {
		l, err := podLink(r.nl, a.AsSlice())
		if err != nil {
			return fmt.Errorf("enroll %s: %w", pod.UID, err)
		}
		np.Addrs[a.Unmap()] = l.Attrs().Name
	}
	var rs string
	// Addresses that move from another pod (IP reuse) leave that pod first.
	for uid, other := range r.pods {
		if uid == pod.UID {
			continue
		}
		for a := range np.Addrs {
			if iface, ok := other.Addrs[a]; ok {
				rs += unenrollRuleset(r.o.NFTTable, nftPod{UID: uid, Addrs: map[netip.Addr]string{a: iface}})
				delete(other.Addrs, a)
			}
		}
	}
	rs += enrollRuleset(r.o.NFTTable, r.pods[pod.UID], np)
	if err := applyNFT(ctx, r.ns, rs); err != nil {
		return fmt.Errorf("enroll %s: %w", pod.UID, err)
	}
	r.pods[pod.UID] = &np
	r.names[pod.UID] = pod.Name
	r.log.Info("enrolled", "pod", pod.Name, "uid", pod.UID, "ips", sortedAddrs(np.Addrs))
	return nil
}

func (r *tproxyRedirector) Unenroll(ctx context.Context, uid string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	p, ok := r.pods[uid]
	if !ok {
		return nil
	}
	if err := applyNFT(ctx, r.ns, unenrollRuleset(r.o.NFTTable, *p)); err != nil {
		return fmt.Errorf("unenroll %s: %w", uid, err)
	}
	delete(r.pods, uid)
	name := r.names[uid]
	delete(r.names, uid)
	r.log.Info("unenrolled", "pod", name, "uid", uid)
	return nil
}

func (r *tproxyRedirector) Enrolled(ctx context.Context) ([]Pod, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	m := make(map[string][]netip.Addr, len(r.pods))
	for uid, p := range r.pods {
		m[uid] = sortedAddrs(p.Addrs)
	}
	return enrolledList(m, r.names), nil
}

func (r *tproxyRedirector) OriginalDst(conn net.Conn) (netip.AddrPort, error) {
	return OriginalDst(conn)
}

func (r *tproxyRedirector) Mode() Mode { return ModeTPROXY }

func (r *tproxyRedirector) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	r.nl.Close()
	return nil
}
