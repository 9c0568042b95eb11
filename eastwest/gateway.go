package eastwest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/admin"
	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/lifecycle"
	"github.com/ambit-mesh/ambit/mesh/authz"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/nsrun"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
	"github.com/ambit-mesh/ambit/proxy/metrics"
	"github.com/ambit-mesh/ambit/proxy/relay"
	"github.com/ambit-mesh/ambit/xdsclient"
)

// Gateway is one east-west gateway instance. Create it with New, then call Run once.
type Gateway struct {
	cfg     Config
	log     *slog.Logger
	Store   *state.Store
	Metrics *metrics.Metrics
	Conns   connmgr.Manager

	id     spiffeid.ID
	certs  *identity.Manager
	issuer identity.Issuer
	server *hbone.Server
	ln     *net.TCPListener
	rec    metrics.Recorder
	ready  atomic.Bool
	// configured is set once the state is loaded; until then every stream is refused with 503.
	configured atomic.Bool
	files      *local.Watcher
	xds        *xds.Source
}

// New validates cfg and loads the configuration; it binds nothing.
func New(cfg Config, log *slog.Logger) (*Gateway, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("east-west gateway config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	id, err := spiffeid.FromString(state.SPIFFEID(cfg.TrustDomain, cfg.Namespace, cfg.ServiceAccount))
	if err != nil {
		return nil, fmt.Errorf("east-west gateway identity: %w", err)
	}
	g := &Gateway{cfg: cfg, id: id, Store: state.NewStore(), Metrics: metrics.New(admin.Version),
		log: log.With("component", "eastwest", "gateway", cfg.Namespace+"/"+cfg.Name, "network", cfg.Network)}
	g.rec = metrics.Recorder{Metrics: g.Metrics, Log: g.log}
	if cfg.XDSAddress != "" {
		node := xdsclient.NodeInfo{PodName: cfg.PodName, PodNamespace: cfg.Namespace, NodeName: cfg.NodeName,
			ClusterID: cfg.ClusterID, ServiceAccount: cfg.ServiceAccount}
		if cfg.PodIP.IsValid() {
			node.IP = cfg.PodIP.String()
		}
		if g.xds, err = xds.NewSource(xds.SourceOptions{Address: cfg.XDSAddress, Plaintext: cfg.XDSPlaintext,
			RootCertFile: cfg.XDSRootFile, TokenFile: cfg.TokenFile, ClusterID: cfg.ClusterID, Store: g.Store,
			Logger: g.log.With("component", "xds"), Node: node}); err != nil {
			return nil, fmt.Errorf("xds source: %w", err)
		}
	} else {
		g.files = &local.Watcher{Paths: cfg.ConfigFiles, Poll: cfg.ConfigPoll, Changed: g.filesChanged}
		files, err := g.files.Read()
		if err != nil {
			return nil, err
		}
		if err := g.applyState(files); err != nil {
			return nil, err
		}
	}
	issuerOpts := cfg.issuer()
	issuerOpts.Logger = g.log
	issuerOpts.OnUpdate = func(id spiffeid.ID) { g.certs.Refresh(id) }
	if g.issuer, err = identity.NewIssuer(issuerOpts); err != nil {
		return nil, err
	}
	if g.certs, err = identity.NewManager(identity.ManagerOptions{Issuer: g.issuer, Logger: g.log.With("component", "identity")}); err != nil {
		return nil, fmt.Errorf("identity manager: %w", err)
	}
	g.server = &hbone.Server{
		Credentials: func(ctx context.Context, _ netip.AddrPort) (*hbone.Credentials, error) { return g.credentials(ctx) },
		Handler:     hbone.HandlerFunc(g.serveHBONE),
		Logger:      g.log.With("component", "hbone-server"),
		// StreamIdleTimeout stays zero: the relayed bytes are a TLS connection the gateway cannot read,
		// closed only by its ends, as ztunnel's streams are.
	}
	g.Metrics.RegisterHBONE(map[string]*hbone.Server{"eastwest": g.server}, nil)
	return g, nil
}

func (g *Gateway) credentials(ctx context.Context) (*hbone.Credentials, error) {
	c, err := g.certs.Fetch(ctx, g.id)
	if err != nil {
		return nil, err
	}
	return &hbone.Credentials{ID: c.ID(), Certificate: *c.TLSCertificate(), Roots: c.RootPool()}, nil
}

// Ready reports whether the gateway relays traffic: its state is loaded and it is not draining.
func (g *Gateway) Ready() (bool, []string) {
	if g.ready.Load() {
		return true, nil
	}
	if g.xds != nil {
		select {
		case <-g.xds.Ready():
		default:
			return false, []string{"state manager", "eastwest"}
		}
	}
	return false, []string{"eastwest"}
}

// Run serves until ctx ends, then drains for Config.DrainTimeout and stops (lifecycle.Run's shape).
func (g *Gateway) Run(ctx context.Context) error {
	return lifecycle.Run(ctx, g, g.cfg.DrainTimeout, g.log)
}

// Start implements lifecycle.App.
func (g *Gateway) Start(grp *lifecycle.Group) error {
	ctx := grp.Context()
	ln, err := g.listen(ctx, g.cfg.HBONEAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", g.cfg.HBONEAddr, err)
	}
	g.ln = ln
	grp.Go("identity", g.certs.Run)
	if r, ok := g.issuer.(interface{ Run(context.Context) error }); ok {
		grp.Go("workload-api", r.Run)
	}
	if g.xds != nil {
		grp.Go("xds", g.xds.Run)
	}
	if g.files != nil {
		grp.Go("config", g.files.Run)
	}
	grp.Go("hbone", func(ctx context.Context) error { return g.server.Serve(ctx, ln) })
	for _, s := range []struct {
		name string
		addr netip.AddrPort
		h    http.Handler
	}{
		{"metrics", g.cfg.MetricsAddr, admin.NewMetricsHandler(g.Metrics.Registry)},
		{"readiness", g.cfg.ReadinessAddr, admin.NewReadinessHandler(g.Ready)},
	} {
		if !s.addr.IsValid() {
			continue
		}
		hln, err := g.listen(ctx, s.addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", s.addr, err)
		}
		grp.Go(s.name, func(ctx context.Context) error { return admin.Serve(ctx, hln, s.h) })
	}
	g.certs.Prefetch(g.id)
	if g.xds != nil {
		select {
		case <-g.xds.Ready():
		case <-ctx.Done():
			return nil
		}
	}
	g.configured.Store(true)
	g.ready.Store(true)
	g.log.Info("east-west gateway ready", "hbone", ln.Addr(), "identity", g.id)
	return nil
}

// Drain implements lifecycle.App: it stops accepting and gives open streams until ctx ends.
func (g *Gateway) Drain(ctx context.Context) {
	g.ready.Store(false)
	g.ln.Close()
	_ = g.Conns.Drain(ctx)
	_ = g.server.Shutdown(ctx)
	g.server.Close()
}

// Close implements lifecycle.App.
func (g *Gateway) Close() {
	if g.ln != nil {
		g.ln.Close()
	}
	g.server.Close()
	g.certs.Close()
	if c, ok := g.issuer.(io.Closer); ok {
		c.Close()
	}
}

func (g *Gateway) filesChanged(files []local.File, err error) {
	if err == nil {
		err = g.applyState(files)
	}
	if err != nil {
		g.Metrics.ConfigReloads.WithLabelValues("rejected").Inc()
		g.log.Error("configuration rejected; keeping the last good state", "err", err)
	}
}

func (g *Gateway) applyState(files []local.File) error {
	res, err := local.CompileFiles(files, local.Options{TrustDomain: g.cfg.TrustDomain, DomainSuffix: g.cfg.DomainSuffix,
		ClusterID: g.cfg.ClusterID, Network: g.cfg.Network})
	if err != nil {
		return err
	}
	for _, w := range res.Warnings {
		g.log.Warn("configuration warning", "warning", w)
	}
	g.Store.Replace(&res.Snapshot)
	wl, svc, pol := g.Store.Counts()
	g.Metrics.StateApplied(wl, svc, pol)
	g.log.Info("configuration applied", "workloads", wl, "services", svc)
	return nil
}

// serveHBONE relays one outer CONNECT stream: :authority "<service hostname>:<port>" resolved to a
// local endpoint (400 for an IP authority, 503 when nothing serves it), plain TCP to the endpoint's
// :15008 (503 when it fails), then 200 and the bytes both ways, untouched.
func (g *Gateway) serveHBONE(ctx context.Context, r *hbone.Request) error {
	if !g.configured.Load() {
		return hbone.NewFlagError(http.StatusServiceUnavailable, metrics.FlagConnect, "east-west gateway not ready: state not loaded yet")
	}
	remote := netip.AddrPortFrom(r.Remote.Addr().Unmap(), r.Remote.Port())
	res := &metrics.ConnectionResult{
		Conn: &connmgr.Conn{Direction: connmgr.Inbound, Src: remote, Authority: r.Authority, Protocol: "HBONE",
			PeerIdentity: r.PeerID.String(), Start: time.Now(), Counters: &relay.Counters{}},
		Labels: metrics.ConnLabels{Reporter: metrics.ReporterGateway, SourcePrincipal: r.PeerID.String(), DestPrincipal: g.id.String(),
			MutualTLS: true, ResponseFlags: metrics.FlagNone},
	}
	if r.AuthorityAddr.IsValid() {
		err := hbone.NewFlagError(http.StatusBadRequest, metrics.FlagConnect, "authority %q: an east-west gateway serves <service hostname>:<port> only", r.Authority)
		g.rec.Fail(res, err)
		return err
	}
	tgt, why := Resolve(g.Store, g.cfg.Network, g.cfg.Namespace, r.AuthorityHost, r.AuthorityPort, nil)
	res.Conn.Service, res.Labels.Service = tgt.Service, tgt.Service
	if why != Found {
		err := hbone.NewFlagError(http.StatusServiceUnavailable, metrics.FlagConnect, "authority %q: %s", r.Authority, why)
		g.rec.Fail(res, err)
		return err
	}
	res.Conn.Peer, res.Labels.Destination = tgt.Endpoint, tgt.Endpoint
	res.Conn.Dst, res.Conn.Hop = tgt.NextHop, tgt.NextHop
	if p := authz.PeerFromSPIFFE(r.PeerID.String()); p.Principal == "" {
		err := hbone.NewFlagError(http.StatusUnauthorized, metrics.FlagDeny, "peer %s has no SPIFFE identity", r.PeerID)
		g.rec.Fail(res, err)
		return err
	}
	dctx, cancel := context.WithTimeout(ctx, g.cfg.ConnectTimeout)
	up, err := g.dial(dctx, tgt.NextHop)
	cancel()
	if err != nil {
		err = hbone.NewFlagError(http.StatusServiceUnavailable, metrics.FlagConnect, "connect to %s: %w", tgt.NextHop, err)
		g.rec.Fail(res, err)
		return err
	}
	down, err := r.Accept(nil)
	if err != nil {
		up.Close()
		g.rec.Fail(res, fmt.Errorf("accept stream: %w", err))
		return nil
	}
	rctx, rcancel := context.WithCancelCause(ctx)
	untrack := g.Conns.Track(res.Conn, rcancel)
	g.Metrics.ActiveConnections.WithLabelValues(metrics.ReporterGateway).Inc()
	err = relay.Bidi(rctx, down, up, res.Conn.Counters)
	g.Metrics.ActiveConnections.WithLabelValues(metrics.ReporterGateway).Dec()
	if cause := context.Cause(rctx); cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	} else if errors.Is(err, context.Canceled) {
		err = nil
	}
	untrack()
	rcancel(nil)
	g.rec.Complete(res, err)
	return nil
}

// listen and dial make the gateway's sockets: plain ones (no capability needed), in Config.NetNS when set.
func (g *Gateway) listen(ctx context.Context, addr netip.AddrPort) (*net.TCPListener, error) {
	network := "tcp6"
	switch {
	case addr.Addr().Is4():
		network = "tcp4"
	case addr.Addr() == netip.IPv6Unspecified():
		network = "tcp"
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	var ln net.Listener
	err := nsrun.Do(g.cfg.NetNS, func() error {
		var err error
		ln, err = lc.Listen(ctx, network, addr.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

func (g *Gateway) dial(ctx context.Context, dst netip.AddrPort) (net.Conn, error) {
	var d net.Dialer
	d.SetMultipathTCP(false)
	var c net.Conn
	err := nsrun.Do(g.cfg.NetNS, func() error {
		var err error
		c, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	})
	return c, err
}

// HBONEAddr returns the address the gateway listens on, once started.
func (g *Gateway) HBONEAddr() netip.AddrPort {
	if g.ln == nil {
		return netip.AddrPort{}
	}
	return g.ln.Addr().(*net.TCPAddr).AddrPort()
}
