package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/mesh/authz"
	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
	"github.com/ambit-mesh/ambit/proxy/metrics"
	"github.com/ambit-mesh/ambit/proxy/relay"
	"github.com/ambit-mesh/ambit/redirect"
)

// inbound describes a connection arriving for a local pod, however it arrived (HBONE, plaintext,
// or handed over from the agent's own outbound side).
type inbound struct {
	peer    authz.Peer
	src     netip.AddrPort // the client as the pod will see it
	dst     netip.AddrPort // the pod's IP and target port
	local   *state.Workload
	service *state.Service
	mtls    bool
}

// statusErr builds the HBONE status for a refused request.
func statusErr(code int, format string, args ...any) *hbone.StatusError {
	return &hbone.StatusError{Code: code, Err: fmt.Errorf(format, args...)}
}

// prepare runs every check that must pass before the client is told the connection is established,
// in ztunnel's order: the destination, authorization (401), then the upstream dial (503).
func (a *Agent) prepare(ctx context.Context, in *inbound) (net.Conn, authz.Decision, *hbone.StatusError) {
	for _, p := range route.AgentPorts {
		if in.dst.Port() == p {
			return nil, authz.Decision{}, statusErr(http.StatusServiceUnavailable, "attempted recursive call to the agent's port %d", p)
		}
	}
	conn := &authz.Conn{Peer: in.peer, SourceIP: in.src.Addr(), DestinationIP: in.dst.Addr(), DestinationPort: in.dst.Port()}
	d := authz.Evaluate(a.Store.PoliciesFor(in.local), conn)
	if d.DryRun != nil {
		a.log.Info("dry-run policy would deny", "policy", d.DryRun.Key(), "src", in.src, "dst", in.dst)
	}
	if !d.Allow {
		return nil, d, statusErr(http.StatusUnauthorized, "RBAC: %s", d.Reason())
	}
	dctx, cancel := context.WithTimeout(ctx, a.cfg.ConnectTimeout)
	defer cancel()
	var up net.Conn
	var err error
	if *a.cfg.PreserveSourceIP {
		up, err = a.sockets.DialFrom(dctx, in.src.Addr(), in.dst)
	} else {
		up, err = a.sockets.DialContext(dctx, "tcp", in.dst.String())
	}
	if err != nil {
		return nil, d, statusErr(http.StatusServiceUnavailable, "connect to %s: %w", in.dst, err)
	}
	return up, d, nil
}

// recheck returns the function connmgr calls after a policy change to decide whether an inbound
// connection may stay open.
func (a *Agent) recheck(in *inbound) func() bool {
	conn := authz.Conn{Peer: in.peer, SourceIP: in.src.Addr(), DestinationIP: in.dst.Addr(), DestinationPort: in.dst.Port()}
	uid := in.local.UID
	return func() bool {
		w := a.Store.Workload(uid)
		if w == nil {
			return false
		}
		return authz.Evaluate(a.Store.PoliciesFor(w), &conn).Allow
	}
}

func (a *Agent) inboundConn(in *inbound, protocol string) (*connmgr.Conn, *metrics.ConnLabels) {
	peerWl := a.Store.WorkloadByAddr(state.NetworkAddress{Network: a.cfg.Network, Addr: in.src.Addr()})
	c := &connmgr.Conn{
		Direction: connmgr.Inbound, Src: in.src, Dst: in.dst, Hop: in.dst, Protocol: protocol,
		Workload: in.local, Peer: peerWl, Service: in.service, Start: time.Now(), Counters: &relay.Counters{},
	}
	lbl := &metrics.ConnLabels{Reporter: metrics.ReporterDestination, Source: peerWl, Destination: in.local, Service: in.service,
		MutualTLS: in.mtls, ResponseFlags: metrics.FlagNone}
	if in.peer.Principal != "" {
		c.PeerIdentity = "spiffe://" + in.peer.Principal
		lbl.SourcePrincipal = c.PeerIdentity
	}
	if in.mtls {
		lbl.DestPrincipal = in.local.Identity()
	}
	return c, lbl
}

// serveHBONE handles one CONNECT stream for a local pod (ztunnel's inbound phases).
func (a *Agent) serveHBONE(ctx context.Context, r *hbone.Request) error {
	j, err := a.startHBONE(ctx, r)
	if j != nil {
		a.relay(ctx, j)
	}
	return err
}

// startHBONE checks a CONNECT request, opens the pod and accepts the stream; without a job when it
// refused the request (the status to answer) or the stream went away (accounted here).
func (a *Agent) startHBONE(ctx context.Context, r *hbone.Request) (*relayJob, error) {
	local := a.localWorkload(r.Local.Addr())
	if local == nil {
		return nil, statusErr(http.StatusServiceUnavailable, "no local workload with address %s", r.Local.Addr())
	}
	if !r.AuthorityAddr.IsValid() {
		return nil, statusErr(http.StatusBadRequest, "authority %q is not an IP address and port", r.Authority)
	}
	target := netip.AddrPortFrom(r.AuthorityAddr.Addr().Unmap(), r.AuthorityAddr.Port())
	if target.Addr() != r.Local.Addr().Unmap() && local.ApplicationTunnel == nil {
		return nil, statusErr(http.StatusBadRequest, "ip mismatch: authority %s on a connection to %s", target, r.Local.Addr())
	}
	in := &inbound{peer: authz.PeerFromSPIFFE(r.PeerID.String()), src: r.Remote, dst: netip.AddrPortFrom(r.Local.Addr().Unmap(), target.Port()),
		local: local, mtls: true}
	if in.src.Addr().Is4In6() {
		in.src = netip.AddrPortFrom(in.src.Addr().Unmap(), in.src.Port())
	}
	if f, err := hbone.ParseForwarded(r.Header.Values(hbone.HeaderForwarded)...); err == nil && f.Host != "" {
		in.service = a.Store.ServiceByHostname(f.Host, local.Namespace)
	}
	c, lbl := a.inboundConn(in, "HBONE")
	up, d, serr := a.prepare(ctx, in)
	if serr != nil {
		if !d.Allow && serr.Code == http.StatusUnauthorized {
			lbl.ResponseFlags = metrics.FlagDeny
		} else {
			lbl.ResponseFlags = metrics.FlagConnect
		}
		a.recordFailure(c, lbl, serr)
		return nil, serr
	}
	resp := make(http.Header, 1)
	resp.Set(hbone.HeaderBaggage, baggageOf(local).String())
	down, err := r.Accept(resp)
	if err != nil {
		up.Close()
		a.recordFailure(c, lbl, fmt.Errorf("accept stream: %w", err))
		return nil, nil
	}
	return &relayJob{c: c, lbl: lbl, down: down, up: up, recheck: a.recheck(in)}, nil
}

// servePlaintext handles traffic that reached a local pod without HBONE: authorization sees no peer
// identity, so STRICT peer authentication denies it.
func (a *Agent) servePlaintext(ctx context.Context, down *net.TCPConn) {
	if j := a.startPlaintext(ctx, down); j != nil {
		a.relay(ctx, j)
	}
}

// startPlaintext checks and opens the pod for a plaintext connection; nil when refused (accounted and
// closed here).
func (a *Agent) startPlaintext(ctx context.Context, down *net.TCPConn) *relayJob {
	src := addrPort(down.RemoteAddr())
	dst, err := redirect.OriginalDst(down)
	if err != nil {
		a.log.Warn("original destination", "src", src, "err", err)
		down.Close()
		return nil
	}
	local := a.localWorkload(dst.Addr())
	if local == nil {
		a.log.Warn("inbound plaintext for an unknown workload", "src", src, "dst", dst)
		down.Close()
		return nil
	}
	in := &inbound{src: src, dst: dst, local: local}
	c, lbl := a.inboundConn(in, "TCP")
	up, d, serr := a.prepare(ctx, in)
	if serr != nil {
		lbl.ResponseFlags = metrics.FlagConnect
		if !d.Allow && serr.Code == http.StatusUnauthorized {
			lbl.ResponseFlags = metrics.FlagDeny
		}
		a.recordFailure(c, lbl, serr)
		down.Close()
		return nil
	}
	return &relayJob{c: c, lbl: lbl, down: down, up: up, recheck: a.recheck(in)}
}

// startLocal prepares the delivery of an outbound HBONE connection whose destination pod is on this
// node without a network round trip: the same authorization and dial as inbound HBONE, with the source
// workload's identity as the peer, and telemetry for both directions. It returns nil when refused
// (accounted and closed here).
func (a *Agent) startLocal(ctx context.Context, down net.Conn, oc *connmgr.Conn, olbl *metrics.ConnLabels, src *state.Workload, target netip.AddrPort) *relayJob {
	in := &inbound{peer: authz.PeerFromSPIFFE(src.Identity()), src: oc.Src, dst: target, local: a.localWorkload(target.Addr()),
		service: oc.Service, mtls: true}
	if in.local == nil {
		a.recordFailure(oc, olbl, errors.New("local destination vanished"))
		down.Close()
		return nil
	}
	ic, ilbl := a.inboundConn(in, "HBONE")
	up, d, serr := a.prepare(ctx, in)
	if serr != nil {
		ilbl.ResponseFlags, olbl.ResponseFlags = metrics.FlagConnect, metrics.FlagConnect
		if !d.Allow && serr.Code == http.StatusUnauthorized {
			ilbl.ResponseFlags, olbl.ResponseFlags = metrics.FlagDeny, metrics.FlagDeny
		}
		a.recordFailure(ic, ilbl, serr)
		a.recordFailure(oc, olbl, serr)
		down.Close()
		return nil
	}
	// One relay, tracked as the inbound side (policy changes may close it); the outbound side shares
	// its counters for telemetry.
	oc.Counters = ic.Counters
	return &relayJob{c: ic, lbl: ilbl, down: down, up: up, recheck: a.recheck(in), outer: oc, outerLbl: olbl}
}
