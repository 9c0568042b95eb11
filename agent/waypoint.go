package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/agent/connmgr"
	"github.com/ambit-mesh/ambit/agent/identity"
	"github.com/ambit-mesh/ambit/agent/metrics"
	"github.com/ambit-mesh/ambit/agent/relay"
	"github.com/ambit-mesh/ambit/agent/route"
	"github.com/ambit-mesh/ambit/agent/state"
	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/redirect"
)

// ReporterWaypoint is the reporter label of metrics a waypoint records.
const ReporterWaypoint = "waypoint"

// WaypointConfig configures `ambit waypoint`. The common fields mean what they mean in Config.
type WaypointConfig struct {
	// Name and Namespace are the waypoint Gateway's; ServiceAccount defaults to Name (as istiod deploys
	// waypoints), so the identity is spiffe://<td>/ns/<Namespace>/sa/<ServiceAccount>.
	Name, Namespace, ServiceAccount string
	// PodIP is this instance's address (env INSTANCE_IP). It identifies the instance among the
	// waypoint's workloads, so that its own traffic to the workloads it serves goes direct.
	PodIP netip.Addr

	ConfigFiles                                       []string
	ConfigPoll                                        time.Duration
	TrustDomain, DomainSuffix, ClusterID, Network     string
	Identity, CADir, CAAddress, CARootFile, TokenFile string
	SPIFFESocket                                      string
	CertTTL                                           time.Duration
	// NetNS runs the listener and dials in this network namespace (tests run waypoints in lab pods).
	NetNS        string
	HBONEAddr    netip.AddrPort
	DrainTimeout time.Duration
}

// Waypoint is the waypoint mode: it terminates HBONE addressed to the services and workloads bound to
// it and forwards each stream over HBONE to the chosen endpoint, with its own identity, so the
// destination's agent sees the waypoint as the client. This is the L4 core; HTTP-aware processing
// builds on it.
type Waypoint struct {
	cfg     WaypointConfig
	log     *slog.Logger
	Store   *state.Store
	Metrics *metrics.Metrics
	Conns   connmgr.Manager

	id      spiffeid.ID
	certs   *identity.Manager
	issuers []runner
	closers []io.Closer
	source  *fileSource
	sockets redirect.SocketFactory
	pool    *hbone.Pool
	server  *hbone.Server
	ln      *net.TCPListener
	ready   atomic.Bool
}

// NewWaypoint validates cfg and loads the configuration; it binds nothing.
func NewWaypoint(cfg WaypointConfig, log *slog.Logger) (*Waypoint, error) {
	if cfg.Name == "" || cfg.Namespace == "" {
		return nil, errors.New("waypoint config: --name and --namespace are required")
	}
	if !cfg.PodIP.IsValid() {
		return nil, errors.New("waypoint config: --pod-ip (INSTANCE_IP) is required")
	}
	if cfg.ServiceAccount == "" {
		cfg.ServiceAccount = cfg.Name
	}
	if !cfg.HBONEAddr.IsValid() {
		cfg.HBONEAddr = DefaultHBONEAddr
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	// The shared pieces (config source, certificate issuer) take an agent Config.
	ac := Config{NodeName: "-", ConfigFiles: cfg.ConfigFiles, ConfigPoll: cfg.ConfigPoll, TrustDomain: cfg.TrustDomain,
		DomainSuffix: cfg.DomainSuffix, ClusterID: cfg.ClusterID, Network: cfg.Network, Identity: cfg.Identity,
		CADir: cfg.CADir, CAAddress: cfg.CAAddress, CARootFile: cfg.CARootFile, TokenFile: cfg.TokenFile,
		SPIFFESocket: cfg.SPIFFESocket, CertTTL: cfg.CertTTL, Capture: CaptureNone}.withDefaults()
	if err := ac.Validate(); err != nil {
		return nil, fmt.Errorf("waypoint config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	id, err := spiffeid.FromString(state.SPIFFEID(ac.TrustDomain, cfg.Namespace, cfg.ServiceAccount))
	if err != nil {
		return nil, fmt.Errorf("waypoint identity: %w", err)
	}
	w := &Waypoint{
		cfg: cfg, id: id, Store: state.NewStore(), Metrics: metrics.New(Version),
		log:     log.With("component", "waypoint", "waypoint", cfg.Namespace+"/"+cfg.Name),
		sockets: redirect.SocketFactory{NetNS: cfg.NetNS},
	}
	w.source = &fileSource{files: ac.ConfigFiles, poll: ac.ConfigPoll, cfg: ac, store: w.Store, metrics: w.Metrics, log: w.log.With("component", "config")}
	if err := w.source.load(); err != nil {
		return nil, err
	}
	helper := &Agent{cfg: ac, log: w.log}
	issuer, err := helper.newIssuer()
	if err != nil {
		return nil, err
	}
	w.issuers, w.closers = helper.issuers, helper.closers
	if w.certs, err = identity.NewManager(identity.ManagerOptions{Issuer: issuer, Logger: w.log.With("component", "identity")}); err != nil {
		return nil, fmt.Errorf("identity manager: %w", err)
	}
	creds := func(ctx context.Context) (*hbone.Credentials, error) {
		c, err := w.certs.Fetch(ctx, w.id)
		if err != nil {
			return nil, err
		}
		return &hbone.Credentials{ID: c.ID(), Certificate: *c.TLSCertificate(), Roots: c.RootPool()}, nil
	}
	w.pool, err = hbone.NewPool(hbone.PoolOptions{
		Credentials: func(ctx context.Context, _ spiffeid.ID) (*hbone.Credentials, error) { return creds(ctx) },
		DialTCP: func(ctx context.Context, _ netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			return w.sockets.DialContext(ctx, "tcp", dst.String())
		},
		Logger: w.log.With("component", "hbone-client"),
	})
	if err != nil {
		return nil, fmt.Errorf("hbone pool: %w", err)
	}
	w.server = &hbone.Server{
		Credentials: func(ctx context.Context, _ netip.AddrPort) (*hbone.Credentials, error) { return creds(ctx) },
		Handler:     hbone.HandlerFunc(w.serveHBONE),
		Logger:      w.log.With("component", "hbone-server"),
	}
	return w, nil
}

// Ready reports whether the waypoint accepts traffic.
func (w *Waypoint) Ready() (bool, []string) {
	if w.ready.Load() {
		return true, nil
	}
	return false, []string{"waypoint"}
}

// Run listens on the HBONE port and serves until ctx ends, then drains like the agent.
func (w *Waypoint) Run(ctx context.Context) error {
	ln, err := w.sockets.Listen(ctx, w.cfg.HBONEAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", w.cfg.HBONEAddr, err)
	}
	w.ln = ln
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	goRun := func(name string, f func(context.Context) error) {
		wg.Go(func() {
			if err := f(runCtx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, hbone.ErrServerClosed) {
				errc <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		})
	}
	goRun("identity", w.certs.Run)
	for _, r := range w.issuers {
		goRun("workload-api", r.Run)
	}
	goRun("config", w.source.run)
	goRun("hbone", func(ctx context.Context) error { return w.server.Serve(ctx, ln) })
	w.certs.Prefetch(w.id)
	w.ready.Store(true)
	w.log.Info("waypoint ready", "hbone", ln.Addr(), "identity", w.id)
	<-runCtx.Done()
	w.ready.Store(false)
	ln.Close()
	drainCtx, stop := context.WithTimeout(context.Background(), w.cfg.DrainTimeout)
	_ = w.Conns.Drain(drainCtx)
	_ = w.server.Shutdown(drainCtx)
	stop()
	w.server.Close()
	cancel()
	wg.Wait()
	w.pool.Close()
	w.certs.Close()
	for _, c := range w.closers {
		c.Close()
	}
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
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

// refersToMe reports whether a waypoint reference designates this waypoint: the hostname of a service
// this instance is an endpoint of, one of those services' VIPs, or this instance's own address.
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

// serveHBONE forwards one stream addressed to a service or workload bound to this waypoint.
func (w *Waypoint) serveHBONE(ctx context.Context, r *hbone.Request) error {
	if !r.AuthorityAddr.IsValid() {
		return statusErr(http.StatusBadRequest, "authority %q is not an IP address and port", r.Authority)
	}
	target := netip.AddrPortFrom(r.AuthorityAddr.Addr().Unmap(), r.AuthorityAddr.Port())
	me := w.self()
	addr := state.NetworkAddress{Network: w.cfg.Network, Addr: target.Addr()}
	dstWl := w.Store.WorkloadByAddr(addr)
	var svc *state.Service
	switch {
	case dstWl != nil:
		if !w.refersToMe(dstWl.Waypoint, me) {
			return statusErr(http.StatusForbidden, "workload %s/%s is not bound to waypoint %s/%s", dstWl.Namespace, dstWl.Name, w.cfg.Namespace, w.cfg.Name)
		}
	default:
		svc = w.Store.ServiceByVIP(addr, me.Namespace)
		if svc == nil {
			return statusErr(http.StatusServiceUnavailable, "%s is not a known service or workload", target)
		}
		if !w.refersToMe(svc.Waypoint, me) {
			return statusErr(http.StatusForbidden, "service %s/%s is not bound to waypoint %s/%s", svc.Namespace, svc.Name, w.cfg.Namespace, w.cfg.Name)
		}
	}
	// Planned as traffic from this instance: a waypoint's own traffic goes direct to the endpoint.
	req := route.Request{Source: me, SourceIP: w.cfg.PodIP, Destination: target, Network: w.cfg.Network}
	plan := route.Build(w.Store, &req)
	peerWl := w.Store.WorkloadByAddr(state.NetworkAddress{Network: w.cfg.Network, Addr: r.Remote.Addr().Unmap()})
	c := &connmgr.Conn{Direction: connmgr.Inbound, Src: r.Remote, Dst: target, Hop: plan.NextHop, Protocol: plan.Protocol.String(),
		Workload: plan.Workload, Peer: peerWl, Service: svc, PeerIdentity: r.PeerID.String(), Start: time.Now(), Counters: &relay.Counters{}}
	if plan.Authority.IsValid() {
		c.Authority = plan.Authority.String()
	}
	lbl := &metrics.ConnLabels{Reporter: ReporterWaypoint, Source: peerWl, SourcePrincipal: r.PeerID.String(), Destination: plan.Workload,
		Service: svc, MutualTLS: true, ResponseFlags: metrics.FlagNone}
	if plan.Path != route.PathDirect {
		lbl.ResponseFlags = metrics.FlagConnect
		err := statusErr(http.StatusServiceUnavailable, "no route: %s", route.Describe(w.Store, &req, &plan))
		w.record(c, lbl, nil, err)
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	up, err := w.dial(dctx, me, r, &plan)
	cancel()
	if err != nil {
		lbl.ResponseFlags = metrics.FlagConnect
		w.record(c, lbl, nil, err)
		return statusErr(http.StatusServiceUnavailable, "connect to %s: %w", plan.NextHop, err)
	}
	down, err := r.Accept(nil)
	if err != nil {
		up.Close()
		return nil
	}
	rctx, rcancel := context.WithCancelCause(ctx)
	untrack := w.Conns.Track(c, rcancel)
	err = relay.Bidi(rctx, down, up, c.Counters)
	untrack()
	rcancel(nil)
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	w.record(c, lbl, c.Counters, err)
	return nil
}

func (w *Waypoint) dial(ctx context.Context, me *state.Workload, r *hbone.Request, p *route.Plan) (net.Conn, error) {
	if p.Protocol != route.ProtocolHBONE {
		return w.sockets.DialContext(ctx, "tcp", p.NextHop.String())
	}
	var expected []spiffeid.ID
	p.ExpectedIdentities(func(s string) {
		if id, err := spiffeid.FromString(s); err == nil {
			expected = append(expected, id)
		}
	})
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
	return w.pool.Dial(ctx, hbone.Target{NextHop: p.NextHop, Authority: p.Authority.String(), Source: w.id, Expected: expected, Header: h})
}

func (w *Waypoint) record(c *connmgr.Conn, lbl *metrics.ConnLabels, cnt *relay.Counters, err error) {
	vals := lbl.Values()
	if cnt == nil {
		w.Metrics.Failed.WithLabelValues(vals...).Inc()
		w.log.Warn("connection failed", "src.addr", c.Src, "dst.addr", c.Dst, "error", err)
		return
	}
	w.Metrics.Opened.WithLabelValues(vals...).Inc()
	w.Metrics.Closed.WithLabelValues(vals...).Inc()
	w.Metrics.Received.WithLabelValues(vals...).Add(float64(cnt.AToB.Load()))
	w.Metrics.Sent.WithLabelValues(vals...).Add(float64(cnt.BToA.Load()))
	attrs := []any{"src.addr", c.Src, "src.identity", c.PeerIdentity, "dst.addr", c.Dst, "dst.hbone_addr", c.Authority,
		"upstream", c.Hop, "direction", "waypoint", "bytes_sent", cnt.AToB.Load(), "bytes_recv", cnt.BToA.Load(),
		"duration", time.Since(c.Start)}
	if c.Service != nil {
		attrs = append(attrs, "dst.service", c.Service.Hostname)
	}
	if err != nil {
		w.log.Error("connection complete", append(attrs, "error", err.Error())...)
		return
	}
	w.log.Info("connection complete", attrs...)
}
