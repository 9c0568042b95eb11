package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/ambit-mesh/ambit/lifecycle"
	"github.com/ambit-mesh/ambit/redirect"
)

// Zero-gap restart (Config.HandoffSocket). The new agent takes the old one's listening sockets over the
// hand-off socket (redirect.Take: SCM_RIGHTS, the same kernel sockets), so in both capture modes the
// capture path never changes: the eBPF SOCKMAP keeps holding the same listeners and the TPROXY rules keep
// sending to the same ports, and the accept queues are shared. The old agent keeps accepting while the
// new one starts; the new one starts its accept loops only once it is ready (first configuration, pod
// listing, capture reconciled), then serves the hand-off socket itself and commits; on the commit the old
// agent stops accepting and drains its open connections for its drain timeout (Drain), as on any stop.

// listenerSpec is one of the agent's listening sockets, by the name the hand-off carries it under.
type listenerSpec struct {
	name    string
	addr    netip.AddrPort
	ln      **net.TCPListener
	tracked bool // made with SocketFactory.ListenTracked
}

func (a *Agent) listenerSpecs() []listenerSpec {
	specs := []listenerSpec{
		{name: "outbound", addr: a.cfg.OutboundAddr, ln: &a.lnOut},
		{name: "inbound", addr: a.cfg.InboundAddr, ln: &a.lnIn},
		{name: "hbone", addr: a.cfg.HBONEAddr, ln: &a.lnHBONE},
		{name: "admin", addr: a.cfg.AdminAddr, ln: &a.lnAdmin},
		{name: "metrics", addr: a.cfg.MetricsAddr, ln: &a.lnMetrics},
		{name: "readiness", addr: a.cfg.ReadinessAddr, ln: &a.lnReady},
	}
	if a.cfg.Capture != CaptureNone {
		specs = append(specs, listenerSpec{name: "inbound-dnat", addr: a.cfg.InboundDNATAddr, ln: &a.lnInDNAT, tracked: true})
	}
	if a.dns != nil {
		specs = append(specs, listenerSpec{name: "dns-tcp", addr: a.cfg.DNSAddr, ln: &a.lnDNSTCP})
	}
	return specs
}

// takeListeners takes the listeners of the agent serving Config.HandoffSocket into a's listener fields,
// those whose address matches the configuration (the others are closed and bound anew by bind). It
// reports whether a predecessor handed them off.
func (a *Agent) takeListeners(ctx context.Context) (bool, error) {
	t, err := redirect.Take(ctx, a.cfg.HandoffSocket)
	if errors.Is(err, redirect.ErrNoPredecessor) {
		a.log.Info("no running agent to take listeners from; binding", "handoff", a.cfg.HandoffSocket)
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("take listeners from the running agent: %w", err)
	}
	for _, s := range a.listenerSpecs() {
		ln := t.Listeners[s.name]
		if ln == nil {
			continue
		}
		delete(t.Listeners, s.name)
		if !sameListenAddr(ln.Addr(), s.addr) {
			a.log.Warn("handed-off listener has another address; binding anew", "name", s.name, "addr", ln.Addr(), "want", s.addr)
			ln.Close()
			continue
		}
		*s.ln = ln
	}
	for name, ln := range t.Listeners { // names this version does not know
		a.log.Warn("handed-off listener unknown; closing it", "name", name, "addr", ln.Addr())
		ln.Close()
	}
	for name, pc := range t.PacketConns {
		switch {
		case name != dnsUDPName || a.dns == nil:
			a.log.Warn("handed-off socket unknown; closing it", "name", name, "addr", pc.LocalAddr())
			pc.Close()
		case !sameListenAddr(pc.LocalAddr(), a.cfg.DNSAddr):
			a.log.Warn("handed-off socket has another address; binding anew", "name", name, "addr", pc.LocalAddr(), "want", a.cfg.DNSAddr)
			pc.Close()
		default:
			a.dnsUDP = a.in.sockets.DNSConnOf(pc)
		}
	}
	t.Listeners, t.PacketConns = nil, nil
	a.takeover = t
	a.log.Info("took listeners from the running agent", "handoff", a.cfg.HandoffSocket)
	return true, nil
}

// sameListenAddr reports whether a listener (or UDP socket) bound at got serves want (a port of 0 in want
// is any port).
func sameListenAddr(got net.Addr, want netip.AddrPort) bool {
	var ga netip.AddrPort
	switch a := got.(type) {
	case *net.TCPAddr:
		ga = a.AddrPort()
	case *net.UDPAddr:
		ga = a.AddrPort()
	default:
		return false
	}
	if ga.Addr().Unmap() != want.Addr().Unmap() {
		return false
	}
	return want.Port() == 0 || ga.Port() == want.Port()
}

// serveHandoff serves the hand-off socket for the next agent and commits a takeover in progress (the old
// agent then stops accepting). When a successor has taken the listeners, the agent stops and drains.
func (a *Agent) serveHandoff(g *lifecycle.Group) error {
	srv, err := redirect.ListenHandoff(a.cfg.HandoffSocket)
	if err != nil {
		if a.takeover != nil {
			a.takeover.Abort()
			a.takeover = nil
		}
		return err
	}
	a.handoff = srv
	if a.takeover != nil {
		err := a.takeover.Commit()
		a.takeover = nil
		if err != nil {
			// The old agent is gone already (it stops accepting on its own then); we serve either way.
			a.log.Warn("commit hand-off", "err", err)
		} else {
			a.log.Info("old agent told to stop accepting and drain")
		}
	}
	lns := make([]redirect.NamedListener, 0, 8)
	for _, s := range a.listenerSpecs() {
		lns = append(lns, redirect.NamedListener{Name: s.name, Ln: *s.ln})
	}
	if a.dnsUDP != nil {
		lns = append(lns, redirect.NamedListener{Name: dnsUDPName, PC: a.dnsUDP.UDPConn})
	}
	g.Go("handoff", func(ctx context.Context) error {
		err := srv.Serve(ctx, lns, func(err error) { a.log.Warn("listener hand-off failed; still serving", "err", err) })
		if err != nil {
			return err
		}
		a.log.Info("listeners handed off to a new agent; draining")
		a.handedOff.Store(true)
		g.Stop()
		return nil
	})
	return nil
}

// HandedOff reports whether a successor took this agent's listeners (Run then returned after draining
// because of it, not because its context ended).
func (a *Agent) HandedOff() bool { return a.handedOff.Load() }
