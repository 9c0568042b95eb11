package waypoint

import (
	"bufio"
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
	"github.com/ambit-mesh/ambit/proxy/dial"
	"github.com/ambit-mesh/ambit/proxy/metrics"
	"github.com/ambit-mesh/ambit/proxy/relay"
	"github.com/ambit-mesh/ambit/waypoint/engine"
	"github.com/ambit-mesh/ambit/waypoint/policy"
	"github.com/ambit-mesh/ambit/waypoint/upstream"
)

// connectTimeout bounds establishing the L4 forward's upstream.
const connectTimeout = 10 * time.Second

// serveHBONE handles one CONNECT stream (503 until the state and L7 policies are loaded): the destination must be a service or workload bound to this
// waypoint (403 otherwise, 503 when unknown); HTTP ports go to the L7 engine, the rest is forwarded at L4.
func (w *Waypoint) serveHBONE(ctx context.Context, r *hbone.Request) error {
	if !w.configured.Load() {
		return hbone.NewFlagError(http.StatusServiceUnavailable, metrics.FlagConnect, "waypoint not ready: policy not loaded yet")
	}
	if !r.AuthorityAddr.IsValid() {
		return hbone.NewFlagError(http.StatusBadRequest, metrics.FlagConnect, "authority %q is not an IP address and port", r.Authority)
	}
	target := netip.AddrPortFrom(r.AuthorityAddr.Addr().Unmap(), r.AuthorityAddr.Port())
	me := w.self()
	addr := state.NetworkAddress{Network: w.cfg.Network, Addr: target.Addr()}
	dstWl := w.Store.WorkloadByAddr(addr)
	var svc *state.Service
	switch {
	case dstWl != nil:
		if !w.refersToMe(dstWl.Waypoint, me) {
			return hbone.NewFlagError(http.StatusForbidden, metrics.FlagConnect, "workload %s/%s is not bound to waypoint %s/%s",
				dstWl.Namespace, dstWl.Name, w.cfg.Namespace, w.cfg.Name)
		}
	default:
		svc = w.Store.ServiceByVIP(addr, me.Namespace)
		if svc == nil {
			return hbone.NewFlagError(http.StatusServiceUnavailable, metrics.FlagConnect, "%s is not a known service or workload", target)
		}
		if !w.refersToMe(svc.Waypoint, me) {
			return hbone.NewFlagError(http.StatusForbidden, metrics.FlagConnect, "service %s/%s is not bound to waypoint %s/%s",
				svc.Namespace, svc.Name, w.cfg.Namespace, w.cfg.Name)
		}
	}
	peerWl := w.Store.WorkloadByAddr(state.NetworkAddress{Network: w.cfg.Network, Addr: r.Remote.Addr().Unmap()})
	proto := w.protocol(svc, dstWl, target)
	if !isHTTP(proto) {
		return w.forwardTCP(ctx, r, me, peerWl, svc, target, nil)
	}
	down, err := r.Accept(nil)
	if err != nil {
		return nil
	}
	pc := &peekConn{Conn: down, r: bufio.NewReaderSize(down, 64)}
	if !pc.looksHTTP() {
		// Non-HTTP bytes on a port declared HTTP (a misnamed port, or a server-first protocol that
		// never speaks): forward as TCP, with TCP authorization semantics (HTTP-only ALLOW rules never
		// match, so L7 policies cannot be bypassed this way).
		w.log.Debug("non-HTTP stream on an HTTP port; forwarding as TCP", "dst.hbone_addr", target)
		return w.forwardTCP(ctx, r, me, peerWl, svc, target, pc)
	}
	c := &connmgr.Conn{Direction: connmgr.Inbound, Src: r.Remote, Dst: target, Protocol: "HTTP", Peer: peerWl, Service: svc,
		PeerIdentity: r.PeerID.String(), Start: time.Now(), Counters: &relay.Counters{}}
	sctx, cancel := context.WithCancelCause(ctx)
	untrack := w.Conns.Track(c, cancel)
	err = w.engine.ServeConn(sctx, pc, &engine.ConnInfo{PeerID: r.PeerID.String(), Source: peerWl, Remote: r.Remote,
		Target: target, Service: svc, Workload: dstWl, Protocol: proto})
	untrack()
	cancel(nil)
	if err != nil {
		w.log.Debug("HTTP stream ended", "err", err)
	}
	return nil
}

// self returns this instance as a workload: from the state when it is there, else synthesized from
// the configured identity and address.
func (w *Waypoint) self() *state.Workload {
	if wl := w.Store.WorkloadByAddr(state.NetworkAddress{Network: w.cfg.Network, Addr: w.cfg.PodIP}); wl != nil {
		return wl
	}
	wl := &state.Workload{UID: "waypoint/" + w.cfg.Namespace + "/" + w.cfg.Name, Name: w.cfg.Name, Namespace: w.cfg.Namespace,
		Addresses: []netip.Addr{w.cfg.PodIP}, ServiceAccount: w.cfg.ServiceAccount, TrustDomain: w.id.TrustDomain().Name(),
		Network: w.cfg.Network}
	_ = wl.Validate()
	return wl
}

// refersToMe is the binding check: whether a waypoint reference (istiod's Service.waypoint or
// Workload.waypoint, docs/waypoint-rules.md §4) designates this waypoint: the hostname of a service this
// instance is an endpoint of, one of those services' VIPs, or this instance's own address.
func (w *Waypoint) refersToMe(g *state.GatewayAddress, me *state.Workload) bool {
	if g == nil {
		return false
	}
	if !g.IsHostname() {
		if me.HasAddress(g.Address.Addr) {
			return true
		}
		if svc := w.Store.ServiceByVIP(g.Address, me.Namespace); svc != nil {
			return w.isEndpoint(svc, me)
		}
		return false
	}
	if svc := w.Store.Service(g.Hostname); svc != nil {
		return w.isEndpoint(svc, me)
	}
	// Without the waypoint's Service in the state, fall back to istiod's naming: <name>.<ns>.svc.<suffix>.
	return g.Hostname.Namespace == w.cfg.Namespace && len(g.Hostname.Hostname) > len(w.cfg.Name) &&
		g.Hostname.Hostname[:len(w.cfg.Name)+1] == w.cfg.Name+"."
}

func (w *Waypoint) isEndpoint(svc *state.Service, me *state.Workload) bool {
	for _, ep := range w.Store.Endpoints(svc.Key()) {
		if ep.UID == me.UID || ep.HasAddress(w.cfg.PodIP) {
			return true
		}
	}
	return false
}

// protocol returns the application protocol of the stream's destination port: the service port's, or
// for workload-addressed traffic the port of a service of the workload that targets it.
func (w *Waypoint) protocol(svc *state.Service, wl *state.Workload, target netip.AddrPort) state.AppProtocol {
	if svc != nil {
		if p, ok := svc.Port(target.Port()); ok {
			return p.AppProtocol
		}
		return state.AppProtocolUnknown
	}
	if wl == nil {
		return state.AppProtocolUnknown
	}
	for _, ref := range wl.Services {
		s := w.Store.Service(ref.Service)
		if s == nil {
			continue
		}
		for _, p := range s.Ports {
			if t, ok := ref.Target(p.ServicePort); ok && t == target.Port() || p.TargetPort == target.Port() {
				return p.AppProtocol
			}
		}
	}
	return state.AppProtocolUnknown
}

func isHTTP(p state.AppProtocol) bool {
	return p == state.AppProtocolHTTP11 || p == state.AppProtocolHTTP2 || p == state.AppProtocolGRPC
}

// peekConn is an accepted stream with its first bytes buffered for protocol detection.
type peekConn struct {
	net.Conn
	r *bufio.Reader
}

func (p *peekConn) Read(b []byte) (int, error) { return p.r.Read(b) }

// CloseWrite half-closes the stream (relay uses it).
func (p *peekConn) CloseWrite() error {
	if cw, ok := p.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return p.Conn.Close()
}

// looksHTTP reads the start of the stream (waiting up to 10 s for the client to speak) and reports
// whether it is an HTTP/1.x request line (an upper-case method and a space) or the HTTP/2 preface.
func (p *peekConn) looksHTTP() bool {
	p.Conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer p.Conn.SetReadDeadline(time.Time{})
	for n := 1; n <= 16; n++ {
		b, err := p.r.Peek(n)
		if len(b) < n {
			return false // closed or silent: not an HTTP client
		}
		c := b[n-1]
		switch {
		case c == ' ':
			return n > 1
		case c < 'A' || c > 'Z':
			return false
		}
		if err != nil {
			return false
		}
	}
	return false
}

// authorizeTCP applies the L7 AuthorizationPolicies targeting the destination (the service, this
// waypoint's Gateway or its GatewayClass: the engine's selection, the same as for HTTP requests) to a
// TCP stream with Istio's TCP semantics: HTTP-only conditions make an ALLOW rule never match and are
// ignored in a DENY rule.
func (w *Waypoint) authorizeTCP(r *hbone.Request, svc *state.Service, target netip.AddrPort) policy.Decision {
	return w.engine.AuthorizeTCP(&engine.ConnInfo{PeerID: r.PeerID.String(), Remote: r.Remote, Target: target, Service: svc})
}

// forwardTCP relays one stream at L4 to the endpoint route.Build picks, after L4 authorization. down is
// the already accepted stream, or nil to accept once the upstream is connected (so that failures are
// reported as the CONNECT status).
func (w *Waypoint) forwardTCP(ctx context.Context, r *hbone.Request, me, peerWl *state.Workload, svc *state.Service, target netip.AddrPort, down net.Conn) error {
	fail := func(err error) error {
		if down != nil {
			down.Close()
			return nil
		}
		return err
	}
	res := &metrics.ConnectionResult{
		Conn: &connmgr.Conn{Direction: connmgr.Inbound, Src: r.Remote, Dst: target, Peer: peerWl, Service: svc,
			PeerIdentity: r.PeerID.String(), Start: time.Now(), Counters: &relay.Counters{}},
		Labels: metrics.ConnLabels{Reporter: metrics.ReporterWaypoint, Source: peerWl, SourcePrincipal: r.PeerID.String(),
			Service: svc, MutualTLS: true, ResponseFlags: metrics.FlagNone},
	}
	if d := w.authorizeTCP(r, svc, target); !d.Allow {
		err := hbone.NewFlagError(http.StatusUnauthorized, metrics.FlagDeny, "%s", d.Reason())
		w.rec.Fail(res, err)
		return fail(err)
	}
	// Planned as traffic from this instance: a waypoint's own traffic goes direct to the endpoint.
	req := route.Request{Source: me, SourceIP: w.cfg.PodIP, Destination: target, Network: w.cfg.Network}
	plan := route.Build(w.Store, &req)
	if plan.Path != route.PathDirect && svc != nil {
		// A DNS ServiceEntry's endpoints have a hostname, not an address: resolve it now (TLS passthrough
		// and other TCP egress through the waypoint).
		if eps, err := upstream.HostEndpoints(ctx, w.Store.Endpoints(svc.Key()), svc, target.Port(), w.resolver.Lookup); len(eps) > 0 {
			ep := eps[rand.IntN(len(eps))]
			plan = route.Plan{Path: route.PathDirect, Protocol: route.ProtocolTCP, NextHop: ep.Addr, Service: svc, Workload: ep.Workload}
		} else if err != nil {
			w.log.Debug("DNS endpoints not resolved", "service", svc.Hostname, "err", err)
		}
	}
	c := res.Conn
	c.Hop, c.Protocol, c.Workload = plan.NextHop, plan.Protocol.String(), plan.Workload
	if plan.Authority.IsValid() {
		c.Authority = plan.Authority.String()
	}
	res.Labels.Destination = plan.Workload
	if plan.Path != route.PathDirect {
		err := hbone.NewFlagError(http.StatusServiceUnavailable, metrics.FlagConnect, "no route: %s", route.Describe(w.Store, &req, &plan))
		w.rec.Fail(res, err)
		return fail(err)
	}
	dctx, cancel := context.WithTimeout(ctx, connectTimeout)
	up, err := dial.Upstream(dctx, &plan, w.pool, w.sockets, hbone.Target{Source: w.id, Header: forwardHeaders(r, &plan)}, w.cfg.Network)
	cancel()
	if err != nil {
		err := hbone.NewFlagError(http.StatusServiceUnavailable, metrics.FlagConnect, "connect to %s: %w", plan.NextHop, err)
		w.rec.Fail(res, err)
		return fail(err)
	}
	if down == nil {
		if down, err = r.Accept(nil); err != nil {
			up.Close()
			return nil
		}
	}
	setStreamIdle(down, w.cfg.TCPIdleTimeout)
	rctx, rcancel := context.WithCancelCause(ctx)
	untrack := w.Conns.Track(c, rcancel)
	err = relay.Bidi(rctx, down, up, c.Counters)
	untrack()
	rcancel(nil)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	w.rec.Complete(res, err)
	return nil
}

// setStreamIdle sets the idle timeout of the HBONE stream under c (a stream, or a peekConn over one).
func setStreamIdle(c net.Conn, d time.Duration) {
	if pc, ok := c.(*peekConn); ok {
		c = pc.Conn
	}
	if s, ok := c.(*hbone.Stream); ok {
		s.SetIdleTimeout(d)
	}
}

// forwardHeaders are the CONNECT headers of the forwarded stream: the client's baggage and traceparent,
// and forwarded naming the client (and the service host).
func forwardHeaders(r *hbone.Request, p *route.Plan) http.Header {
	h := make(http.Header, 3)
	for _, k := range []string{hbone.HeaderBaggage, hbone.HeaderTraceparent} {
		if v := r.Header.Get(k); v != "" {
			h.Set(k, v)
		}
	}
	fwd := hbone.Forwarded{For: r.Remote.String()}
	if p.Service != nil {
		fwd.Host = p.Service.Hostname
	}
	h.Set(hbone.HeaderForwarded, fwd.String())
	return h
}
