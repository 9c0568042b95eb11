package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
	"github.com/ambit-mesh/ambit/proxy/dial"
	"github.com/ambit-mesh/ambit/proxy/metrics"
	"github.com/ambit-mesh/ambit/proxy/relay"
	"github.com/ambit-mesh/ambit/redirect"
)

// outbound carries the connections captured from local pods (:15001) as route.Build plans them.
type outbound struct {
	*inputs
	sameNode *sameNode
}

// serve carries one captured outbound connection.
func (o *outbound) serve(ctx context.Context, down *net.TCPConn) {
	res, plan := o.plan(ctx, down)
	switch {
	case res == nil:
	case plan.Protocol == route.ProtocolHBONE && plan.Path == route.PathDirect && !plan.DoubleHBONE() && o.captured(plan.Upstream):
		// Same-node HBONE: capture cannot intercept the agent's own dial to a local pod's :15008, so the
		// connection is delivered here, with the checks of the destination side.
		o.sameNode.serve(ctx, down, res, plan.Authority)
	default:
		if j := o.connect(ctx, down, res, &plan); j != nil {
			o.relay(ctx, j, nil)
		}
	}
}

// plan reads the connection's original destination and plans it; nil when it could not be planned or
// was refused (accounted and closed here). With on-demand xDS, a destination missing from the state is
// asked of istiod (see ondemand.go) and planned again.
func (o *outbound) plan(ctx context.Context, down *net.TCPConn) (*metrics.ConnectionResult, route.Plan) {
	srcAddr := addrPort(down.RemoteAddr())
	if !o.configured.Load() {
		o.log.Warn("outbound connection refused: policy not loaded yet", "src", srcAddr)
		down.Close()
		return nil, route.Plan{}
	}
	orig, err := redirect.OriginalDst(down)
	if err != nil {
		o.log.Warn("original destination", "src", srcAddr, "err", err)
		down.Close()
		return nil, route.Plan{}
	}
	src := o.localWorkload(srcAddr.Addr())
	req := route.Request{Source: src, SourceIP: srcAddr.Addr(), Destination: orig, Network: o.network}
	plan := route.Build(o.store, &req)
	if o.demand != nil && plan.Path != route.PathDirect && plan.Path != route.PathWaypoint {
		plan = o.demandPlan(ctx, &req, plan)
		src = req.Source
	}
	res := &metrics.ConnectionResult{
		Conn: &connmgr.Conn{Direction: connmgr.Outbound, Src: srcAddr, Dst: orig, Hop: plan.NextHop, Protocol: plan.Protocol.String(),
			Workload: src, Peer: plan.Workload, Service: plan.Service, Waypoint: route.WaypointName(o.store, &plan),
			Start: time.Now(), Counters: &relay.Counters{}},
		Labels: metrics.ConnLabels{Reporter: metrics.ReporterSource, Source: src, Destination: plan.Workload, Service: plan.Service,
			MutualTLS: plan.Protocol == route.ProtocolHBONE, ResponseFlags: metrics.FlagNone},
	}
	if plan.Authority.IsValid() {
		res.Conn.Authority = plan.Authority.String()
	} else if plan.DoubleHBONE() {
		res.Conn.Authority = net.JoinHostPort(plan.Host, strconv.Itoa(int(plan.HostPort)))
	}
	if plan.Protocol == route.ProtocolHBONE && src != nil {
		res.Labels.SourcePrincipal = src.Identity()
		if plan.Upstream != nil && plan.Path == route.PathDirect {
			res.Labels.DestPrincipal = plan.Upstream.Identity()
		}
	}
	if plan.Path == route.PathReject {
		o.rec.Fail(res, fmt.Errorf("rejected: %s", route.Describe(o.store, &req, &plan)))
		down.Close()
		return nil, route.Plan{}
	}
	return res, plan
}

// connect opens the planned next hop; nil when it failed (accounted and closed here).
func (o *outbound) connect(ctx context.Context, down net.Conn, res *metrics.ConnectionResult, p *route.Plan) *relayJob {
	dctx, cancel := context.WithTimeout(ctx, o.connectTimeout)
	up, err := o.dialUpstream(dctx, res.Conn.Workload, res.Conn.Src, p)
	cancel()
	if err != nil {
		o.rec.Fail(res, err) // a peer's 401 is DENY, anything else CONNECT
		down.Close()
		return nil
	}
	return &relayJob{res: res, down: down, up: up}
}

// dialUpstream opens the next hop of a plan from src: an HBONE stream over the pool or a marked TCP
// connection, both from the source pod's IP when source preservation is on. Plain TCP out of the mesh
// (passthrough, workloads outside the mesh) then leaves as the pod's own packets would, so the node's
// firewall and the CNI's egress policies keyed on pod IPs still see the pod, not the node.
func (o *outbound) dialUpstream(ctx context.Context, src *state.Workload, srcAddr netip.AddrPort, p *route.Plan) (net.Conn, error) {
	if p.Protocol != route.ProtocolHBONE && o.preserveSourceIP {
		return o.sockets.DialFrom(ctx, srcAddr.Addr(), p.NextHop)
	}
	t := hbone.Target{}
	if p.Protocol == route.ProtocolHBONE {
		id, err := spiffeid.FromString(src.Identity())
		if err != nil {
			return nil, fmt.Errorf("source identity: %w", err)
		}
		t.Source, t.Header = id, outboundHeaders(src, srcAddr, p)
		if o.preserveSourceIP {
			t.SourceIP = srcAddr.Addr()
		}
	}
	return dial.Upstream(ctx, p, o.pool, o.sockets, t, o.network)
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
