package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
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

// inputs is everything the agent's proxies (outbound, inbound, sameNode) use, and nothing more: the
// state, this node's identity in it, the sockets and the HBONE pool they dial with, connection tracking
// and telemetry (after ztunnel's ProxyInputs). The proxies never reach the Agent.
type inputs struct {
	node, network    string
	connectTimeout   time.Duration
	preserveSourceIP bool

	// configured is set once the first complete configuration has been applied (istiod's first Address
	// and Authorization responses, or the files); until then the proxies refuse every connection, since
	// a policy that would deny it may not have arrived yet (fail closed).
	configured *atomic.Bool

	store   *state.Store
	sockets redirect.SocketFactory
	pool    *hbone.Pool
	conns   *connmgr.Manager
	metrics *metrics.Metrics
	rec     metrics.Recorder
	log     *slog.Logger

	// demand asks istiod for addresses the state lacks (Config.XDSOnDemand); nil otherwise.
	demand *onDemand

	// live counts the relays running; shutdown waits for them.
	live liveRelays
}

// errNotConfigured refuses a connection that arrived before the first complete configuration.
var errNotConfigured = hbone.NewFlagError(http.StatusServiceUnavailable, metrics.FlagConnect,
	"agent not ready: policy not loaded yet")

// localWorkload returns the workload on this node that owns ip, or nil.
func (in *inputs) localWorkload(ip netip.Addr) *state.Workload {
	w := in.store.WorkloadByAddr(state.NetworkAddress{Network: in.network, Addr: ip.Unmap()})
	if w == nil || w.Node != in.node {
		return nil
	}
	return w
}

// captured reports whether the agent captures w: an HBONE workload on this node with its own IPs.
func (in *inputs) captured(w *state.Workload) bool {
	return w.Node == in.node && w.Protocol == state.TunnelHBONE && !w.NativeTunnel &&
		w.NetworkMode == state.NetworkStandard && len(w.Addresses) > 0
}

// delivery is a connection to deliver to a local pod, however it arrived: HBONE, plaintext, or from
// this node's own outbound side.
type delivery struct {
	peer    authz.Peer
	src     netip.AddrPort // the client as the pod will see it
	dst     netip.AddrPort // the pod's IP and target port
	local   *state.Workload
	service *state.Service
	mtls    bool
	// remoteNetwork: the connection came from another network through its east-west gateway
	// (x-forwarded-network), so src is the gateway's address, not the client's.
	remoteNetwork bool
}

// result describes a delivery for telemetry, with reporter destination.
func (in *inputs) result(d *delivery, protocol string) *metrics.ConnectionResult {
	var peerWl *state.Workload
	if !d.remoteNetwork {
		peerWl = in.store.WorkloadByAddr(state.NetworkAddress{Network: in.network, Addr: d.src.Addr()})
	}
	res := &metrics.ConnectionResult{
		Conn: &connmgr.Conn{Direction: connmgr.Inbound, Src: d.src, Dst: d.dst, Hop: d.dst, Protocol: protocol,
			Workload: d.local, Peer: peerWl, Service: d.service, Start: time.Now(), Counters: &relay.Counters{}},
		Labels: metrics.ConnLabels{Reporter: metrics.ReporterDestination, Source: peerWl, Destination: d.local, Service: d.service,
			MutualTLS: d.mtls, ResponseFlags: metrics.FlagNone},
	}
	if d.peer.Principal != "" {
		res.Conn.PeerIdentity = "spiffe://" + d.peer.Principal
		res.Labels.SourcePrincipal = res.Conn.PeerIdentity
	}
	if d.mtls {
		res.Labels.DestPrincipal = d.local.Identity()
	}
	return res
}

// prepare runs every check that must pass before the client is told the connection is established,
// in ztunnel's order: the destination, authorization (401, flag DENY), then the upstream dial (503,
// flag CONNECT). It returns the connection to the pod or the *hbone.FlagError to answer and record.
func (in *inputs) prepare(ctx context.Context, d *delivery) (net.Conn, error) {
	for _, p := range route.AgentPorts {
		if d.dst.Port() == p {
			return nil, hbone.NewFlagError(http.StatusServiceUnavailable, metrics.FlagConnect, "attempted recursive call to the agent's port %d", p)
		}
	}
	conn := &authz.Conn{Peer: d.peer, SourceIP: d.src.Addr(), DestinationIP: d.dst.Addr(), DestinationPort: d.dst.Port()}
	dec := authz.Evaluate(in.store.PoliciesFor(d.local), conn)
	if dec.DryRun != nil {
		in.log.Info("dry-run policy would deny", "policy", dec.DryRun.Key(), "src", d.src, "dst", d.dst)
	}
	if !dec.Allow {
		return nil, hbone.NewFlagError(http.StatusUnauthorized, metrics.FlagDeny, "RBAC: %s", dec.Reason())
	}
	dctx, cancel := context.WithTimeout(ctx, in.connectTimeout)
	defer cancel()
	var up net.Conn
	var err error
	if in.preserveSourceIP {
		up, err = in.sockets.DialFrom(dctx, d.src.Addr(), d.dst)
	} else {
		up, err = in.sockets.DialContext(dctx, "tcp", d.dst.String())
	}
	if err != nil {
		return nil, hbone.NewFlagError(http.StatusServiceUnavailable, metrics.FlagConnect, "connect to %s: %w", d.dst, err)
	}
	return up, nil
}

// recheck returns the function connmgr calls after a policy change to decide whether a delivered
// connection may stay open.
func (in *inputs) recheck(d *delivery) func() bool {
	conn := authz.Conn{Peer: d.peer, SourceIP: d.src.Addr(), DestinationIP: d.dst.Addr(), DestinationPort: d.dst.Port()}
	uid := d.local.UID
	return func() bool {
		w := in.store.Workload(uid)
		if w == nil {
			return false
		}
		return authz.Evaluate(in.store.PoliciesFor(w), &conn).Allow
	}
}

// relayJob is an established connection ready to relay. The set-up that built it returns once the relay
// is started: an idle connection then holds no goroutine at all (relay.Start), and its completion runs on
// whichever goroutine ends the relay.
type relayJob struct {
	res      *metrics.ConnectionResult
	down, up net.Conn
	recheck  func() bool // for delivered connections: is the connection still allowed
}

// relay tracks j's connection and starts copying bytes between j.down and j.up until both ends finish or
// the connection is closed (policy change, shutdown); it returns at once. When the relay ends, it
// records the connection, then calls then (may be nil). The tracker cancels the relay itself
// (relay.Relay.Cancel), so that a connection carries one cancellation hook on ctx and no context of its
// own.
func (in *inputs) relay(ctx context.Context, j *relayJob, then func()) {
	c := j.res.Conn
	c.Recheck = j.recheck
	active := in.metrics.ActiveConnections.WithLabelValues(string(c.Direction))
	active.Inc()
	in.live.add()
	var untrack func()
	r := relay.New(ctx, j.down, j.up, c.Counters, func(err error) {
		active.Dec()
		if errors.Is(err, context.Canceled) {
			err = nil // the agent is stopping, or the peer reset the stream; the connection was closed on purpose
		}
		untrack()
		in.rec.Complete(j.res, err)
		if then != nil {
			then()
		}
		in.live.done()
	})
	untrack = in.conns.Track(c, r.Cancel)
	r.Run()
}

// liveRelays counts the relays started and not ended, for shutdown to wait for (a relay outlives the
// goroutine that started it).
type liveRelays struct {
	mu   sync.Mutex
	n    int
	zero *sync.Cond
}

func (l *liveRelays) add() {
	l.mu.Lock()
	l.n++
	l.mu.Unlock()
}

func (l *liveRelays) done() {
	l.mu.Lock()
	l.n--
	if l.n == 0 && l.zero != nil {
		l.zero.Broadcast()
	}
	l.mu.Unlock()
}

// wait returns once no relay is running.
func (l *liveRelays) wait() {
	l.mu.Lock()
	if l.zero == nil {
		l.zero = sync.NewCond(&l.mu)
	}
	for l.n > 0 {
		l.zero.Wait()
	}
	l.mu.Unlock()
}

// baggageOf describes w in the baggage header ztunnel sends and answers with.
func baggageOf(w *state.Workload) hbone.Baggage {
	if w == nil {
		return hbone.Baggage{}
	}
	return hbone.Baggage{ClusterID: w.ClusterID, Namespace: w.Namespace, WorkloadType: w.WorkloadType.String(),
		WorkloadName: w.WorkloadName, ServiceName: w.CanonicalName, Revision: w.CanonicalRevision,
		Region: w.Locality.Region, Zone: w.Locality.Zone}
}

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
