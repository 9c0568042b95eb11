// Package waypoint is `ambit waypoint`, the L7 waypoint process (the role of an Envoy waypoint): it
// terminates HBONE addressed to the services and workloads bound to its Gateway and forwards each stream
// over HBONE to the chosen endpoint with its own identity, so the destination's node agent sees the
// waypoint as the client. Streams to HTTP service ports (appProtocol, or port name http, http2, h2c,
// grpc) are served by the L7 engine (waypoint/engine); the rest is forwarded at L4 (l4.go) after L4
// authorization by the AuthorizationPolicies that target the service or the waypoint.
//
// This package is the waypoint's composition root: Config, New and Run (in the lifecycle shape both
// processes share), the state and L7 configuration sources, the binding check and the TCP forward. The
// HTTP pipeline is waypoint/engine; the L7 configuration is compiled by waypoint/compile from files or
// the API server (waypoint/kube).
//
// It must not import agent/ (the node agent): what the two processes share lives in mesh/, config/,
// proxy/, identity/, admin/, lifecycle/ and hbone/.
package waypoint

import (
	"cmp"
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

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/ambit-mesh/ambit/admin"
	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/kubeapi"
	"github.com/ambit-mesh/ambit/lifecycle"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
	"github.com/ambit-mesh/ambit/proxy/metrics"
	"github.com/ambit-mesh/ambit/waypoint/compile"
	"github.com/ambit-mesh/ambit/waypoint/engine"
	"github.com/ambit-mesh/ambit/waypoint/kube"
	"github.com/ambit-mesh/ambit/waypoint/model"
	"github.com/ambit-mesh/ambit/waypoint/telemetry"
	"github.com/ambit-mesh/ambit/waypoint/upstream"
	"github.com/ambit-mesh/ambit/xdsclient"
)

// Waypoint is one waypoint instance. Create it with New, then call Run once.
type Waypoint struct {
	cfg     Config
	log     *slog.Logger
	warnMu  sync.Mutex
	warned  map[string]bool // guarded by warnMu; the L7 warnings of the configuration in use
	Store   *state.Store
	Metrics *metrics.Metrics
	Conns   connmgr.Manager

	id      spiffeid.ID
	certs   *identity.Manager
	issuer  identity.Issuer
	sockets sockets     // plain sockets: the waypoint needs no capability
	pool    *hbone.Pool // the L4 forward's upstreams
	server  *hbone.Server
	ln      *net.TCPListener
	rec     metrics.Recorder
	ready   atomic.Bool
	// configured is set once the state and the L7 policies are loaded (istiod's first responses, the
	// API server's informers synced, or the files); until then every stream is refused with 503
	// (serveHBONE), since a policy that denies it may not have arrived.
	configured atomic.Bool

	engine *engine.Engine
	// resolver resolves DNS endpoints (ServiceEntry resolution DNS) for the L7 engine and the L4 forward.
	resolver *upstream.Resolver
	tracing  *telemetry.Tracing
	l7pool   *hbone.Pool    // the L7 engine's upstreams (smaller stream windows, see Config.L7StreamWindow)
	files    *local.Watcher // Config.ConfigFiles, when set
	kube     *kube.Source   // the kubernetes L7 source, when configured
	xds      *xds.Source    // istiod, when the state comes from it (else the files)
}

// New validates cfg and loads the configuration; it binds nothing. An invalid configuration (state or
// L7) fails the start, as it fails the agent's.
func New(cfg Config, log *slog.Logger) (*Waypoint, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("waypoint config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	id, err := spiffeid.FromString(state.SPIFFEID(cfg.TrustDomain, cfg.Namespace, cfg.ServiceAccount))
	if err != nil {
		return nil, fmt.Errorf("waypoint identity: %w", err)
	}
	w := &Waypoint{
		cfg: cfg, id: id, Store: state.NewStore(), Metrics: metrics.New(admin.Version),
		log:     log.With("component", "waypoint", "waypoint", cfg.Namespace+"/"+cfg.Name),
		sockets: sockets{netns: cfg.NetNS},
	}
	w.rec = metrics.Recorder{Metrics: w.Metrics, Log: w.log}
	var files []local.File
	if len(cfg.ConfigFiles) > 0 {
		w.files = &local.Watcher{Paths: cfg.ConfigFiles, Poll: cfg.ConfigPoll, Changed: w.filesChanged}
		if files, err = w.files.Read(); err != nil {
			return nil, err
		}
	}
	if cfg.XDSAddress != "" {
		src, err := xds.NewSource(xds.SourceOptions{
			Address: cfg.XDSAddress, Plaintext: cfg.XDSPlaintext, RootCertFile: cfg.XDSRootFile, TokenFile: cfg.TokenFile,
			ClusterID: cfg.ClusterID, Store: w.Store, Logger: w.log.With("component", "xds"),
			Node: xdsclient.NodeInfo{IP: cfg.PodIP.String(), PodName: cfg.PodName, PodNamespace: cfg.Namespace,
				NodeName: cfg.NodeName, ClusterID: cfg.ClusterID, ServiceAccount: cfg.ServiceAccount},
		})
		if err != nil {
			return nil, fmt.Errorf("xds source: %w", err)
		}
		w.xds = src
	} else if err := w.applyState(files); err != nil {
		return nil, err
	}
	issuerOpts := cfg.issuer()
	issuerOpts.Logger = w.log
	issuerOpts.OnUpdate = func(id spiffeid.ID) { w.certs.Refresh(id) }
	if w.issuer, err = identity.NewIssuer(issuerOpts); err != nil {
		return nil, err
	}
	if w.certs, err = identity.NewManager(identity.ManagerOptions{Issuer: w.issuer, Logger: w.log.With("component", "identity")}); err != nil {
		return nil, fmt.Errorf("identity manager: %w", err)
	}
	dialTCP := func(ctx context.Context, _ netip.Addr, dst netip.AddrPort) (net.Conn, error) {
		return w.sockets.DialContext(ctx, "tcp", dst.String())
	}
	w.pool, err = hbone.NewPool(hbone.PoolOptions{Credentials: w.clientCredentials, DialTCP: dialTCP,
		IdleTimeout: cfg.PoolIdleTimeout, Logger: w.log.With("component", "hbone-client")})
	if err != nil {
		return nil, fmt.Errorf("hbone pool: %w", err)
	}
	window := cmp.Or(cfg.L7StreamWindow, 256<<10)
	w.l7pool, err = hbone.NewPool(hbone.PoolOptions{Credentials: w.clientCredentials, DialTCP: dialTCP,
		Settings:    hbone.Settings{StreamWindow: window, ConnWindow: max(4*window, 1<<20)},
		IdleTimeout: cfg.PoolIdleTimeout, Logger: w.log.With("component", "hbone-client-l7")})
	if err != nil {
		return nil, fmt.Errorf("hbone pool: %w", err)
	}
	w.server = &hbone.Server{
		Credentials: func(ctx context.Context, _ netip.AddrPort) (*hbone.Credentials, error) { return w.credentials(ctx) },
		Handler:     hbone.HandlerFunc(w.serveHBONE),
		Logger:      w.log.With("component", "hbone-server"),

		HandshakeTimeout: cfg.HBONEHandshakeTimeout,
		IdleTimeout:      cfg.HBONEIdleTimeout,
		MaxConns:         cfg.HBONEMaxConns,
		// Every stream starts with the HTTP stream idle timeout; streams forwarded at L4 take
		// TCPIdleTimeout once accepted (l4.go).
		StreamIdleTimeout: cfg.StreamIdleTimeout,
	}
	w.Metrics.RegisterHBONE(map[string]*hbone.Server{"waypoint": w.server},
		map[string]*hbone.Pool{"l4": w.pool, "l7": w.l7pool})
	if err := w.newEngine(files); err != nil {
		return nil, err
	}
	return w, nil
}

// credentials are the waypoint's own certificate, on both sides of every HBONE connection.
func (w *Waypoint) credentials(ctx context.Context) (*hbone.Credentials, error) {
	c, err := w.certs.Fetch(ctx, w.id)
	if err != nil {
		return nil, err
	}
	return &hbone.Credentials{ID: c.ID(), Certificate: *c.TLSCertificate(), Roots: c.RootPool()}, nil
}

func (w *Waypoint) clientCredentials(ctx context.Context, _ spiffeid.ID) (*hbone.Credentials, error) {
	return w.credentials(ctx)
}

// newEngine builds the L7 engine and its tracing, and loads the L7 configuration (files) or prepares
// the kubernetes source.
func (w *Waypoint) newEngine(files []local.File) error {
	sampling := w.cfg.TraceSampling
	if sampling == 0 && w.cfg.OTLPEndpoint != "" {
		sampling = 1
	}
	w.resolver = &upstream.Resolver{Conf: w.cfg.ResolvConf, Dial: w.sockets.DialContext}
	var err error
	w.tracing, err = telemetry.NewTracing(context.Background(), telemetry.TracingOptions{Endpoint: w.cfg.OTLPEndpoint,
		Sampling: sampling, ServiceName: w.cfg.Name + "." + w.cfg.Namespace})
	if err != nil {
		return err
	}
	w.engine, err = engine.New(engine.Options{
		Logger: w.log.With("component", "l7"), Registerer: w.Metrics.Registry, State: w.Store, Dial: w.dialEndpoint,
		Namespace: w.cfg.Namespace, Name: w.cfg.Name, Network: w.cfg.Network, Tracing: w.tracing,
		StreamIdleTimeout: max(w.cfg.StreamIdleTimeout, 0),
		Resolver:          w.resolver,
	})
	if err != nil {
		return fmt.Errorf("l7 engine: %w", err)
	}
	if w.cfg.L7Source == L7SourceKubernetes {
		client := w.cfg.KubeClient
		var events kubeapi.EventSink // in a cluster: Events on objects with fields Ambit does not implement
		if client == nil {
			rc, err := rest.InClusterConfig()
			if err != nil {
				return fmt.Errorf("kubernetes L7 source: %w", err)
			}
			if client, err = dynamic.NewForConfig(rc); err != nil {
				return fmt.Errorf("kubernetes L7 source: %w", err)
			}
			kc, err := kubeapi.NewCoreV1(rc)
			if err != nil {
				return fmt.Errorf("kubernetes L7 source: %w", err)
			}
			events = kc.Events()
		}
		w.kube = &kube.Source{Client: client, Logger: w.log.With("component", "l7-kube"), OnUpdate: w.applyL7,
			Options: w.compileOptions(), Events: events}
		return nil
	}
	cfg, err := w.compileL7(files)
	if err != nil {
		return err
	}
	w.applyL7(cfg)
	return nil
}

// applyL7 serves cfg and logs each of its warnings (fields Ambit does not implement, named with their
// object) once: a warning already logged for the configuration before is not repeated.
func (w *Waypoint) applyL7(cfg *model.Config) {
	w.engine.Update(cfg)
	w.warnMu.Lock()
	defer w.warnMu.Unlock()
	seen := make(map[string]bool, len(cfg.Warnings))
	for _, m := range cfg.Warnings {
		if !w.warned[m] && !seen[m] {
			w.log.Warn("L7 configuration warning", "warning", m)
		}
		seen[m] = true
	}
	w.warned = seen
}

func (w *Waypoint) compileOptions() compile.Options {
	return compile.Options{DomainSuffix: w.cfg.DomainSuffix, ClusterID: w.cfg.ClusterID}
}

// Ready reports whether the waypoint accepts traffic: its state and L7 policies are loaded and it is
// not draining.
func (w *Waypoint) Ready() (bool, []string) {
	if w.ready.Load() {
		return true, nil
	}
	var pending []string
	if w.xds != nil && !closed(w.xds.Ready()) {
		pending = append(pending, "state manager")
	}
	if w.kube != nil && !closed(w.kube.Synced()) {
		pending = append(pending, "L7 policy (Kubernetes API)")
	}
	return false, append(pending, "waypoint")
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// Run listens on the HBONE port and serves until ctx ends, then drains for Config.DrainTimeout and
// stops, in the shape lifecycle.Run gives both processes.
func (w *Waypoint) Run(ctx context.Context) error {
	return lifecycle.Run(ctx, w, w.cfg.DrainTimeout, w.log)
}

// Start implements lifecycle.App: it binds the listeners, starts every component and returns once the
// waypoint is ready.
func (w *Waypoint) Start(g *lifecycle.Group) error {
	ctx := g.Context()
	ln, err := w.sockets.Listen(ctx, w.cfg.HBONEAddr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", w.cfg.HBONEAddr, err)
	}
	w.ln = ln
	g.Go("identity", w.certs.Run)
	if r, ok := w.issuer.(interface{ Run(context.Context) error }); ok {
		g.Go("workload-api", r.Run)
	}
	if w.xds != nil {
		g.Go("xds", w.xds.Run)
	}
	if w.files != nil {
		g.Go("config", w.files.Run)
	}
	if w.kube != nil {
		g.Go("l7-kubernetes", w.kube.Run)
	}
	g.Go("hbone", func(ctx context.Context) error { return w.server.Serve(ctx, ln) })
	for _, s := range []struct {
		name string
		addr netip.AddrPort
		h    http.Handler
	}{
		{"metrics", w.cfg.MetricsAddr, admin.NewMetricsHandler(w.Metrics.Registry)},
		{"readiness", w.cfg.ReadinessAddr, admin.NewReadinessHandler(w.Ready)},
	} {
		if !s.addr.IsValid() {
			continue
		}
		hln, err := w.sockets.Listen(ctx, s.addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", s.addr, err)
		}
		g.Go(s.name, func(ctx context.Context) error { return admin.Serve(ctx, hln, s.h) })
	}
	w.certs.Prefetch(w.id)
	// Serve and report ready only once istiod's first complete state and the L7 policies are in: with
	// the API server down the waypoint never serves without its policies.
	if w.xds != nil {
		select {
		case <-w.xds.Ready():
		case <-ctx.Done():
		}
	}
	if w.kube != nil {
		select {
		case <-w.kube.Synced():
		case <-ctx.Done():
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	w.configured.Store(true)
	w.ready.Store(true)
	w.log.Info("waypoint ready", "hbone", ln.Addr(), "identity", w.id)
	return nil
}

// Drain implements lifecycle.App: it stops accepting and gives open connections until ctx ends.
func (w *Waypoint) Drain(ctx context.Context) {
	w.ready.Store(false)
	w.ln.Close()
	_ = w.Conns.Drain(ctx)
	_ = w.server.Shutdown(ctx)
	w.server.Close()
}

// Close implements lifecycle.App.
func (w *Waypoint) Close() {
	if w.ln != nil {
		w.ln.Close()
	}
	w.server.Close()
	_ = w.engine.Close()
	w.pool.Close()
	w.l7pool.Close()
	w.certs.Close()
	if c, ok := w.issuer.(io.Closer); ok {
		c.Close()
	}
}

// filesChanged handles a new version of the configuration files: the state (unless istiod provides it)
// and the L7 configuration (unless the API server does), each rejected on its own so that the last good
// one keeps serving.
func (w *Waypoint) filesChanged(files []local.File, err error) {
	if w.xds == nil {
		serr := err
		if serr == nil {
			serr = w.applyState(files)
		}
		if serr != nil {
			w.Metrics.ConfigReloads.WithLabelValues("rejected").Inc()
			w.log.Error("configuration rejected; keeping the last good state", "err", serr)
		}
	}
	if w.kube == nil {
		var cfg *model.Config
		if err == nil {
			cfg, err = w.compileL7(files)
		}
		if err != nil {
			w.Metrics.ConfigReloads.WithLabelValues("rejected").Inc()
			w.log.Error("L7 configuration rejected; keeping the previous configuration", "err", err)
			return
		}
		w.applyL7(cfg)
		w.log.Info("L7 configuration applied", "routes", len(cfg.Routes), "destinationRules", len(cfg.Destinations),
			"authorizationPolicies", len(cfg.Authz), "requestAuthentications", len(cfg.JWT), "rateLimits", len(cfg.RateLimits))
	}
}

// applyState compiles the files' L4 objects and replaces the state with them.
func (w *Waypoint) applyState(files []local.File) error {
	res, err := local.CompileFiles(files, local.Options{TrustDomain: w.cfg.TrustDomain, DomainSuffix: w.cfg.DomainSuffix,
		ClusterID: w.cfg.ClusterID, Network: w.cfg.Network})
	if err != nil {
		return err
	}
	for _, warn := range res.Warnings {
		w.log.Warn("configuration warning", "warning", warn)
	}
	w.Store.Replace(&res.Snapshot)
	wl, svc, pol := w.Store.Counts()
	w.Metrics.StateApplied(wl, svc, pol)
	w.log.Info("configuration applied", "workloads", wl, "services", svc, "policies", pol)
	return nil
}

// compileL7 compiles the files' L7 objects as one version: the first invalid object rejects it, named
// with its file and document.
func (w *Waypoint) compileL7(files []local.File) (*model.Config, error) {
	objs, err := local.DecodeFiles(files)
	if err != nil {
		return nil, err
	}
	cfg, err := compile.Compile(&compile.Inputs{HTTPRoutes: objs.HTTPRoutes, GRPCRoutes: objs.GRPCRoutes,
		VirtualServices: objs.VirtualServices, DestinationRules: objs.DestinationRules,
		AuthorizationPolicies: objs.AuthorizationPolicies, RequestAuthentications: objs.RequestAuthentications,
		RateLimitPolicies: objs.RateLimitPolicies, ServiceEntries: objs.ServiceEntries, Pods: objs.Pods}, w.compileOptions())
	if ce := (*compile.Error)(nil); errors.As(err, &ce) {
		src := objs.SourceOf(ce.Object)
		return nil, &local.InputError{File: src.File, Doc: src.Doc, Kind: ce.Kind, Namespace: ce.Namespace, Name: ce.Name, Err: ce.Err}
	}
	return cfg, err
}

// dialEndpoint opens the L7 engine's connection to an endpoint (pod IP and target port): HBONE to the
// pod's :15008 with the waypoint's identity when the pod is in the mesh, else plain TCP.
func (w *Waypoint) dialEndpoint(ctx context.Context, addr netip.AddrPort) (net.Conn, error) {
	wl := w.Store.WorkloadByAddr(state.NetworkAddress{Network: w.cfg.Network, Addr: addr.Addr()})
	if wl == nil || wl.Protocol != state.TunnelHBONE {
		return w.sockets.DialContext(ctx, "tcp", addr.String())
	}
	id, err := spiffeid.FromString(wl.Identity())
	if err != nil {
		return nil, fmt.Errorf("endpoint identity: %w", err)
	}
	h := http.Header{}
	h.Set(hbone.HeaderForwarded, hbone.Forwarded{For: netip.AddrPortFrom(w.cfg.PodIP, 0).String()}.String())
	return w.l7pool.Dial(ctx, hbone.Target{NextHop: netip.AddrPortFrom(addr.Addr(), state.HBONEPort), Authority: addr.String(),
		Source: w.id, Expected: []spiffeid.ID{id}, Header: h})
}
