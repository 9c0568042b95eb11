package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
	"github.com/ambit-mesh/ambit/proxy/metrics"
	"github.com/ambit-mesh/ambit/proxy/relay"
	"github.com/ambit-mesh/ambit/redirect"
)

// serveOutbound carries one captured outbound connection as route.Build plans it.
func (a *Agent) serveOutbound(ctx context.Context, down *net.TCPConn) {
	if j := a.startOutbound(ctx, down); j != nil {
		a.relay(ctx, j)
	}
}

// startOutbound plans and opens the upstream of a captured connection; nil when it was refused or
// failed (accounted and closed here).
func (a *Agent) startOutbound(ctx context.Context, down *net.TCPConn) *relayJob {
	srcAddr := addrPort(down.RemoteAddr())
	orig, err := redirect.OriginalDst(down)
	if err != nil {
		a.log.Warn("original destination", "src", srcAddr, "err", err)
		down.Close()
		return nil
	}
	src := a.localWorkload(srcAddr.Addr())
	req := route.Request{Source: src, SourceIP: srcAddr.Addr(), Destination: orig, Network: a.cfg.Network}
	plan := route.Build(a.Store, &req)

	c := &connmgr.Conn{
		Direction: connmgr.Outbound, Src: srcAddr, Dst: orig, Hop: plan.NextHop, Protocol: plan.Protocol.String(),
		Workload: src, Peer: plan.Workload, Service: plan.Service, Waypoint: route.WaypointName(a.Store, &plan),
		Start: time.Now(), Counters: &relay.Counters{},
	}
	if plan.Authority.IsValid() {
		c.Authority = plan.Authority.String()
	}
	lbl := &metrics.ConnLabels{Reporter: metrics.ReporterSource, Source: src, Destination: plan.Workload, Service: plan.Service,
		MutualTLS: plan.Protocol == route.ProtocolHBONE, ResponseFlags: metrics.FlagNone}
	if plan.Protocol == route.ProtocolHBONE && src != nil {
		lbl.SourcePrincipal = src.Identity()
		if plan.Upstream != nil && plan.Path == route.PathDirect {
			lbl.DestPrincipal = plan.Upstream.Identity()
		}
	}
	if plan.Path == route.PathReject {
		lbl.ResponseFlags = metrics.FlagConnect
		a.recordFailure(c, lbl, fmt.Errorf("rejected: %s", route.Describe(a.Store, &req, &plan)))
		down.Close()
		return nil
	}

	// Same-node HBONE: capture cannot intercept the agent's own dial to a local pod's :15008, so the
	// agent hands the connection to its inbound side directly, with the same checks.
	if plan.Protocol == route.ProtocolHBONE && plan.Path == route.PathDirect && a.captured(plan.Upstream) {
		return a.startLocal(ctx, down, c, lbl, src, plan.Authority)
	}

	dctx, cancel := context.WithTimeout(ctx, a.cfg.ConnectTimeout)
	up, err := a.dialUpstream(dctx, src, srcAddr, &plan)
	cancel()
	if err != nil {
		lbl.ResponseFlags = metrics.FlagConnect
		var se *hbone.StatusError
		if errors.As(err, &se) && se.Code == http.StatusUnauthorized {
			lbl.ResponseFlags = metrics.FlagDeny
		}
		a.recordFailure(c, lbl, err)
		down.Close()
		return nil
	}
	return &relayJob{c: c, lbl: lbl, down: down, up: up}
}

// dialUpstream opens the next hop of a plan: an HBONE stream over the pool, or a marked TCP connection.
func (a *Agent) dialUpstream(ctx context.Context, src *state.Workload, srcAddr netip.AddrPort, p *route.Plan) (net.Conn, error) {
	if p.Protocol != route.ProtocolHBONE {
		return a.sockets.DialContext(ctx, "tcp", p.NextHop.String())
	}
	srcID, err := spiffeid.FromString(src.Identity())
	if err != nil {
		return nil, fmt.Errorf("source identity: %w", err)
	}
	var expected []spiffeid.ID
	p.ExpectedIdentities(func(s string) {
		if id, err := spiffeid.FromString(s); err == nil {
			expected = append(expected, id)
		}
	})
	t := hbone.Target{
		NextHop:   p.NextHop,
		Authority: p.Authority.String(),
		Source:    srcID,
		Expected:  expected,
		Header:    outboundHeaders(src, srcAddr, p),
	}
	if *a.cfg.PreserveSourceIP {
		t.SourceIP = srcAddr.Addr()
	}
	return a.pool.Dial(ctx, t)
}

// outboundHeaders are the CONNECT headers ztunnel sends: baggage describing the source workload,
// forwarded with the client address (and the service host), and a fresh traceparent.
func outboundHeaders(src *state.Workload, srcAddr netip.AddrPort, p *route.Plan) http.Header {
	h := make(http.Header, 3)
	h.Set(hbone.HeaderBaggage, baggageOf(src).String())
	fwd := hbone.Forwarded{For: srcAddr.String()}
	if p.Service != nil {
		fwd.Host = p.Service.Hostname
	}
	h.Set(hbone.HeaderForwarded, fwd.String())
	h.Set(hbone.HeaderTraceparent, hbone.NewTraceparent().String())
	return h
}

func baggageOf(w *state.Workload) hbone.Baggage {
	if w == nil {
		return hbone.Baggage{}
	}
	return hbone.Baggage{ClusterID: w.ClusterID, Namespace: w.Namespace, WorkloadType: w.WorkloadType.String(),
		WorkloadName: w.WorkloadName, ServiceName: w.CanonicalName, Revision: w.CanonicalRevision,
		Region: w.Locality.Region, Zone: w.Locality.Zone}
}

// relayJob is an established connection ready to relay. The set-up that built it has returned by the
// time it relays, so the goroutine carrying the connection for its lifetime keeps only small frames on
// its stack: the runtime shrinks a stack at GC only while less than a quarter of it is in use, so a set-up
// frame of a kilobyte left below the relay keeps an idle connection's goroutine at 8 KiB instead of 4.
type relayJob struct {
	c       *connmgr.Conn
	lbl     *metrics.ConnLabels
	down    net.Conn
	up      net.Conn
	recheck func() bool // for inbound connections: is the connection still allowed
	// outer and outerLbl, for a same-node delivery, are its outbound side, accounted after the relay
	// with the same counters.
	outer    *connmgr.Conn
	outerLbl *metrics.ConnLabels
}

// relay tracks j.c, copies bytes between j.down and j.up until both ends finish or the connection is
// closed (policy change, shutdown), then records telemetry.
func (a *Agent) relay(ctx context.Context, j *relayJob) {
	c, lbl := j.c, j.lbl
	c.Recheck = j.recheck
	rctx, cancel := context.WithCancelCause(ctx)
	untrack := a.Conns.Track(c, cancel)
	a.Metrics.ActiveConnections.WithLabelValues(string(c.Direction)).Inc()
	err := relay.Bidi(rctx, j.down, j.up, c.Counters)
	a.Metrics.ActiveConnections.WithLabelValues(string(c.Direction)).Dec()
	if cause := context.Cause(rctx); cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
		if errors.Is(cause, connmgr.ErrPolicyChanged) {
			lbl.ResponseFlags = metrics.FlagDeny
		}
	} else if errors.Is(err, context.Canceled) {
		err = nil // the agent is stopping; the connection was closed on purpose
	}
	untrack()
	cancel(nil)
	a.record(c, lbl, c.Counters, err)
	if j.outer != nil {
		a.record(j.outer, j.outerLbl, j.outer.Counters, nil)
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
