package agent

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/sha256"
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

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"

	"github.com/ambit-mesh/ambit/admin"
	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/mesh/authz"
	"github.com/ambit-mesh/ambit/mesh/route"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
	"github.com/ambit-mesh/ambit/proxy/metrics"
	"github.com/ambit-mesh/ambit/proxy/relay"
	"github.com/ambit-mesh/ambit/redirect"
	"github.com/ambit-mesh/ambit/waypoint/compile"
	"github.com/ambit-mesh/ambit/waypoint/engine"
	"github.com/ambit-mesh/ambit/waypoint/kube"
	"github.com/ambit-mesh/ambit/waypoint/model"
	"github.com/ambit-mesh/ambit/waypoint/policy"
	"github.com/ambit-mesh/ambit/waypoint/telemetry"
	"github.com/ambit-mesh/ambit/xdsclient"
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
	// MetricsAddr serves Prometheus metrics (/metrics and /stats/prometheus) when valid.
	MetricsAddr netip.AddrPort
	// ReadinessAddr serves GET /healthz/ready (200 once ready, 503 before and while draining) when valid:
	// istiod's waypoint template probes it on :15021, as Envoy waypoints serve it.
	ReadinessAddr netip.AddrPort
	// OTLPEndpoint is the OpenTelemetry collector for spans (OTLP/HTTP, "host:port" or a URL); empty
	// exports nothing but still propagates trace context. TraceSampling is the fraction of new traces
	// sampled (default 1 when an endpoint is set).
	OTLPEndpoint  string
	TraceSampling float64
	// L7StreamWindow is the HTTP/2 stream window of the HBONE streams the L7 engine opens to endpoints
	// (default 256 KiB): it bounds how much of a response the waypoint buffers for a slow client.
	L7StreamWindow uint32
	// L7Source is where routes and L7 policies come from: "file" (default: ConfigFiles) or
	// "kubernetes" (the Kubernetes API through informers; in-cluster credentials unless KubeClient is set).
	L7Source string
	// KubeClient overrides the in-cluster client of the kubernetes L7 source (tests).
	KubeClient dynamic.Interface
	// XDSAddress, XDSRootFile and XDSPlaintext take workloads and services from istiod over delta xDS
	// instead of ConfigFiles (which may then hold only L7 resources, or be empty with L7Source kubernetes).
	// PodName and NodeName describe this instance to istiod.
	XDSAddress, XDSRootFile string
	XDSPlaintext            bool
	PodName, NodeName       string
}

// L7 configuration sources.
const (
	L7SourceFile       = "file"
	L7SourceKubernetes = "kubernetes"
)

// Waypoint is the waypoint mode: it terminates HBONE addressed to the services and workloads bound to
// it and forwards each stream over HBONE to the chosen endpoint, with its own identity, so the
// destination's agent sees the waypoint as the client. This is the L4 core; HTTP-aware processing
// builds on it: streams to HTTP service ports (appProtocol or port name http, http2, h2c, grpc) are served
// by the L7 engine (agent/l7), the rest is forwarded as TCP with L4 authorization.
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

	engine    *engine.Engine
	tracing   *telemetry.Tracing
	l7pool    *hbone.Pool
	l7digest  [sha256.Size]byte // of the last L7 configuration seen; owned by runL7Config
	l7pending [sha256.Size]byte // new content seen once, used when seen again
	kube      *kube.Source      // the kubernetes L7 source, when configured
	xds       *xds.Source       // istiod, when the state comes from it (else source)
	acfg      Config            // the settings shared with the agent (trust domain, domain suffix, ...)
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
	if cfg.XDSAddress != "" {
		// Validate the rest as an agent with an xDS source; the files, if any, only carry L7 resources.
		vc := ac
		vc.ConfigFiles, vc.XDSAddress, vc.XDSRootFile, vc.XDSPlaintext = nil, cfg.XDSAddress, cfg.XDSRootFile, cfg.XDSPlaintext
		vc.PodName, vc.PodNamespace = cmp.Or(cfg.PodName, cfg.Name), cfg.Namespace
		if err := vc.Validate(); err != nil {
			return nil, fmt.Errorf("waypoint config: %w", err)
		}
	} else if err := ac.Validate(); err != nil {
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
	w.acfg = ac
	if len(ac.ConfigFiles) > 0 {
		w.source = &fileSource{files: ac.ConfigFiles, poll: ac.ConfigPoll, cfg: ac, store: w.Store, metrics: w.Metrics, log: w.log.With("component", "config")}
	}
	if cfg.XDSAddress != "" {
		src, err := xds.NewSource(xds.SourceOptions{
			Address: cfg.XDSAddress, Plaintext: cfg.XDSPlaintext, RootCertFile: cfg.XDSRootFile, TokenFile: cfg.TokenFile,
			ClusterID: ac.ClusterID, Store: w.Store, Logger: w.log.With("component", "xds"),
			Node: xdsclient.NodeInfo{IP: cfg.PodIP.String(), PodName: cmp.Or(cfg.PodName, cfg.Name), PodNamespace: cfg.Namespace,
				NodeName: cfg.NodeName, ClusterID: ac.ClusterID, ServiceAccount: cfg.ServiceAccount},
		})
		if err != nil {
			return nil, fmt.Errorf("xds source: %w", err)
		}
		w.xds = src
	} else if err := w.source.load(); err != nil {
		return nil, err
	}
	helper := &Agent{cfg: ac, log: w.log}
	issuer, err := helper.newIssuer(false)
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
	if err := w.newEngine(creds); err != nil {
		return nil, err
	}
	return w, nil
}

// newEngine builds the L7 engine, its HBONE pool (smaller stream windows, see L7StreamWindow) and
// tracing, and loads the L7 configuration; an invalid one fails the start like the state does.
func (w *Waypoint) newEngine(creds func(context.Context) (*hbone.Credentials, error)) error {
	window := w.cfg.L7StreamWindow
	if window == 0 {
		window = 256 << 10
	}
	var err error
	w.l7pool, err = hbone.NewPool(hbone.PoolOptions{
		Credentials: func(ctx context.Context, _ spiffeid.ID) (*hbone.Credentials, error) { return creds(ctx) },
		DialTCP: func(ctx context.Context, _ netip.Addr, dst netip.AddrPort) (net.Conn, error) {
			return w.sockets.DialContext(ctx, "tcp", dst.String())
		},
		Settings: hbone.Settings{StreamWindow: window, ConnWindow: max(4*window, 1<<20)},
		Logger:   w.log.With("component", "hbone-client-l7"),
	})
	if err != nil {
		return fmt.Errorf("hbone pool: %w", err)
	}
	sampling := w.cfg.TraceSampling
	if sampling == 0 && w.cfg.OTLPEndpoint != "" {
		sampling = 1
	}
	w.tracing, err = telemetry.NewTracing(context.Background(), telemetry.TracingOptions{Endpoint: w.cfg.OTLPEndpoint,
		Sampling: sampling, ServiceName: w.cfg.Name + "." + w.cfg.Namespace})
	if err != nil {
		return err
	}
	w.engine, err = engine.New(engine.Options{
		Logger: w.log.With("component", "l7"), Registerer: w.Metrics.Registry, State: w.Store, Dial: w.dialEndpoint,
		Namespace: w.cfg.Namespace, Name: w.cfg.Name, Network: w.cfg.Network, Tracing: w.tracing,
	})
	if err != nil {
		return fmt.Errorf("l7 engine: %w", err)
	}
	switch w.cfg.L7Source {
	case "", L7SourceFile:
	case L7SourceKubernetes:
		client := w.cfg.KubeClient
		if client == nil {
			rc, err := rest.InClusterConfig()
			if err != nil {
				return fmt.Errorf("kubernetes L7 source: %w", err)
			}
			if client, err = dynamic.NewForConfig(rc); err != nil {
				return fmt.Errorf("kubernetes L7 source: %w", err)
			}
		}
		w.kube = &kube.Source{Client: client, Logger: w.log.With("component", "l7-kube"), OnUpdate: w.engine.Update,
			Options: compile.Options{DomainSuffix: w.acfg.DomainSuffix, ClusterID: w.acfg.ClusterID}}
		return nil
	default:
		return fmt.Errorf("waypoint config: unknown L7 source %q (file or kubernetes)", w.cfg.L7Source)
	}
	if w.source == nil {
		return errors.New("waypoint config: the file L7 source needs --config-file (or use --l7-source kubernetes)")
	}
	data, digest, err := w.source.read()
	if err != nil {
		return err
	}
	cfg, err := w.compileL7(data)
	if err != nil {
		return err
	}
	w.l7digest = digest
	w.engine.Update(cfg)
	return nil
}

func (w *Waypoint) compileL7(files []fileData) (*model.Config, error) {
	objs := &local.Objects{}
	for _, f := range files {
		if err := objs.Decode(f.name, bytes.Clone(f.data)); err != nil {
			return nil, err
		}
	}
	cfg, err := compile.Compile(&compile.Inputs{HTTPRoutes: objs.HTTPRoutes, GRPCRoutes: objs.GRPCRoutes,
		VirtualServices: objs.VirtualServices, DestinationRules: objs.DestinationRules,
		AuthorizationPolicies: objs.AuthorizationPolicies, RequestAuthentications: objs.RequestAuthentications,
		RateLimitPolicies: objs.RateLimitPolicies, ServiceEntries: objs.ServiceEntries, Pods: objs.Pods},
		compile.Options{DomainSuffix: w.acfg.DomainSuffix, ClusterID: w.acfg.ClusterID})
	if ce := (*compile.Error)(nil); errors.As(err, &ce) {
		src := objs.SourceOf(ce.Object)
		return nil, &local.InputError{File: src.File, Doc: src.Doc, Kind: ce.Kind, Namespace: ce.Namespace, Name: ce.Name, Err: ce.Err}
	}
	return cfg, err
}

// runL7Config re-reads the configuration files and swaps the engine's L7 configuration when they
// change; an invalid version is logged (naming the object and field) and the previous one keeps serving.
func (w *Waypoint) runL7Config(ctx context.Context) error {
	t := time.NewTicker(w.source.poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		data, digest, err := w.source.read()
		if digest == w.l7digest {
			continue
		}
		// As the state source does: only content unchanged for one poll interval is used, so a
		// half-written file is never applied.
		if digest != w.l7pending {
			w.l7pending = digest
			continue
		}
		w.l7digest = digest
		var cfg *model.Config
		if err == nil {
			cfg, err = w.compileL7(data)
		}
		if err != nil {
			w.Metrics.ConfigReloads.WithLabelValues("rejected").Inc()
			w.log.Error("L7 configuration rejected; keeping the previous configuration", "err", err)
			continue
		}
		w.engine.Update(cfg)
		for _, warn := range cfg.Warnings {
			w.log.Warn("L7 configuration warning", "warning", warn)
		}
		w.log.Info("L7 configuration applied", "routes", len(cfg.Routes), "destinationRules", len(cfg.Destinations),
			"authorizationPolicies", len(cfg.Authz), "requestAuthentications", len(cfg.JWT), "rateLimits", len(cfg.RateLimits))
	}
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

// authorizeTCP applies the L7 AuthorizationPolicies targeting the destination to a TCP stream with
// Istio's TCP semantics: HTTP-only conditions make an ALLOW rule never match and are ignored in a DENY rule.
func (w *Waypoint) authorizeTCP(r *hbone.Request, svc *state.Service, target netip.AddrPort) policy.Decision {
	cfg := w.engine.Config()
	var pols []*model.AuthzPolicy
	for _, p := range cfg.Authz {
		for _, t := range p.Targets {
			if t.Kind == model.KindGateway && t.Namespace == w.cfg.Namespace && t.Name == w.cfg.Name ||
				svc != nil && (t.Kind == model.KindService || t.Kind == model.KindServiceEntry) && t.Namespace == svc.Namespace && t.Name == svc.Name {
				pols = append(pols, p)
				break
			}
		}
	}
	if len(pols) == 0 {
		return policy.Decision{Allow: true}
	}
	peer := authz.PeerFromSPIFFE(r.PeerID.String())
	return policy.EvaluateTCP(pols, &policy.Request{Principal: peer.Principal, Namespace: peer.Namespace,
		SourceIP: r.Remote.Addr().Unmap(), Port: target.Port()})
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
			if err := f(runCtx); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, hbone.ErrServerClosed) && runCtx.Err() == nil {
				errc <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		})
	}
	goRun("identity", w.certs.Run)
	for _, r := range w.issuers {
		goRun("workload-api", r.Run)
	}
	if w.xds != nil {
		goRun("xds", w.xds.Run)
	} else {
		goRun("config", w.source.run)
	}
	if w.kube != nil {
		goRun("l7-kubernetes", w.kube.Run)
	} else {
		goRun("l7-config", w.runL7Config)
	}
	goRun("hbone", func(ctx context.Context) error { return w.server.Serve(ctx, ln) })
	serveHTTP := func(name string, addr netip.AddrPort, h http.Handler) error {
		hln, err := w.sockets.Listen(ctx, addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", addr, err)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		goRun(name, func(ctx context.Context) error {
			go func() { <-ctx.Done(); srv.Close() }()
			if err := srv.Serve(hln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
		return nil
	}
	if w.cfg.MetricsAddr.IsValid() {
		mux := http.NewServeMux()
		h := promhttp.HandlerFor(w.Metrics.Registry, promhttp.HandlerOpts{})
		mux.Handle("/metrics", h)
		mux.Handle("/stats/prometheus", h)
		if err := serveHTTP("metrics", w.cfg.MetricsAddr, mux); err != nil {
			cancel()
			wg.Wait()
			return err
		}
	}
	if w.cfg.ReadinessAddr.IsValid() {
		if err := serveHTTP("readiness", w.cfg.ReadinessAddr, admin.NewReadinessHandler(w.Ready)); err != nil {
			cancel()
			wg.Wait()
			return err
		}
	}
	w.certs.Prefetch(w.id)
	if w.xds != nil {
		// Ready only once istiod's first complete state has been applied.
		select {
		case <-w.xds.Ready():
		case <-runCtx.Done():
		}
	}
	w.ready.Store(runCtx.Err() == nil)
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
	_ = w.engine.Close()
	w.pool.Close()
	w.l7pool.Close()
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
	if d := w.authorizeTCP(r, svc, target); !d.Allow {
		w.log.Info("connection denied", "src.addr", r.Remote, "src.identity", r.PeerID, "dst.hbone_addr", target, "reason", d.Reason())
		w.Metrics.Failed.WithLabelValues((&metrics.ConnLabels{Reporter: ReporterWaypoint, Source: peerWl, SourcePrincipal: r.PeerID.String(),
			Service: svc, MutualTLS: true, ResponseFlags: metrics.FlagDeny}).Values()...).Inc()
		return fail(statusErr(http.StatusUnauthorized, "%s", d.Reason()))
	}
	// Planned as traffic from this instance: a waypoint's own traffic goes direct to the endpoint.
	req := route.Request{Source: me, SourceIP: w.cfg.PodIP, Destination: target, Network: w.cfg.Network}
	plan := route.Build(w.Store, &req)
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
		return fail(err)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	up, err := w.dial(dctx, me, r, &plan)
	cancel()
	if err != nil {
		lbl.ResponseFlags = metrics.FlagConnect
		w.record(c, lbl, nil, err)
		return fail(statusErr(http.StatusServiceUnavailable, "connect to %s: %w", plan.NextHop, err))
	}
	if down == nil {
		if down, err = r.Accept(nil); err != nil {
			up.Close()
			return nil
		}
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
