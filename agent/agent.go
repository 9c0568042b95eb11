// Package agent is Ambit's node agent, `ambit agent` (the role of ztunnel): it captures the traffic of
// the ambient pods on its node and carries each connection as mesh/route plans it, terminates HBONE for
// those pods, enforces L4 authorization (mesh/authz), and reports telemetry.
//
// The package is the agent's composition root: Agent wires the state source (config/local files or
// istiod over config/xds), pod enrollment (agent/kube), capture (redirect), identities, HBONE and the
// admin API together and runs them in the lifecycle shape both processes share. The proxies are three
// separate types sharing one narrow inputs struct (after ztunnel's ProxyInputs): outbound (captured pod
// traffic), inbound (HBONE and plaintext arriving for a local pod) and sameNode (an outbound connection
// whose destination pod is on this node, delivered without a network round trip).
//
// It must not import waypoint/ (the waypoint process): what the two share lives in mesh/, config/,
// proxy/, identity/, admin/, lifecycle/ and hbone/.
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
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/admin"
	"github.com/ambit-mesh/ambit/agent/dnsproxy"
	"github.com/ambit-mesh/ambit/agent/kube"
	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/kubeapi"
	"github.com/ambit-mesh/ambit/lifecycle"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
	"github.com/ambit-mesh/ambit/proxy/metrics"
	"github.com/ambit-mesh/ambit/redirect"
	"github.com/ambit-mesh/ambit/xdsclient"
)

// Agent is one node agent. Create it with New, then call Run once.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	Store   *state.Store
	Metrics *metrics.Metrics
	Conns   connmgr.Manager

	in       *inputs // what the proxies share
	outbound *outbound
	inbound  *inbound

	certs  *identity.Manager
	issuer identity.Issuer
	hbone  *hbone.Server
	source *fileSource   // local files, or
	xds    *xds.Source   // istiod
	kube   *kube.Watcher // pod enrollment from the Kubernetes API (Config.KubeEnroll), or nil

	lnOut, lnIn, lnHBONE        *net.TCPListener
	lnInDNAT                    *net.TCPListener // nil without kernel capture
	lnAdmin, lnMetrics, lnReady *net.TCPListener
	redir                       redirect.Redirector

	dns      *dnsproxy.Server  // the DNS proxy (Config.DNSCapture), or nil
	dnsUDP   *redirect.DNSConn // its UDP socket
	lnDNSTCP *net.TCPListener  // its TCP listener

	takeover  *redirect.Takeover      // listeners taken from a running agent, not yet committed (Start only)
	handoff   *redirect.HandoffServer // serves the listeners to the next agent (Config.HandoffSocket)
	handedOff atomic.Bool             // a successor took the listeners: this agent drains

	// connCtx is the context connections are served in: it outlives the group's context (which ends
	// when the agent starts to stop) until Drain has given them the drain timeout. loops counts the
	// running accept loops (each returns once its connections are served).
	connCtx    context.Context
	connCancel context.CancelFunc
	loops      sync.WaitGroup

	mu       sync.Mutex
	enrolled map[string]redirect.Pod // guarded by mu; capture UID -> pod
	certIDs  map[spiffeid.ID]bool    // guarded by mu; identities of local captured workloads

	ready      atomic.Bool
	configured atomic.Bool // the first complete configuration is applied (inputs.configured)
}

// New validates cfg and prepares an agent: it loads the configuration and the CA, but binds nothing.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &Agent{
		cfg:      cfg,
		log:      log.With("component", "agent", "node", cfg.NodeName),
		Store:    state.NewStore(),
		Metrics:  metrics.New(admin.Version),
		enrolled: map[string]redirect.Pod{},
	}
	a.in = &inputs{configured: &a.configured, node: cfg.NodeName, network: cfg.Network, connectTimeout: cfg.ConnectTimeout,
		preserveSourceIP: *cfg.PreserveSourceIP, store: a.Store, sockets: redirect.SocketFactory{NetNS: cfg.NetNS},
		conns: &a.Conns, metrics: a.Metrics, rec: metrics.Recorder{Metrics: a.Metrics, Log: a.log}, log: a.log}
	a.inbound = &inbound{a.in}
	a.outbound = &outbound{inputs: a.in, sameNode: &sameNode{a.in}}
	if cfg.XDSAddress != "" {
		src, err := xds.NewSource(xds.SourceOptions{
			Address: cfg.XDSAddress, Plaintext: cfg.XDSPlaintext, RootCertFile: cfg.XDSRootFile, TokenFile: cfg.TokenFile,
			ClusterID: cfg.ClusterID, Store: a.Store, Logger: a.log.With("component", "xds"), OnDemand: cfg.XDSOnDemand,
			Node: xdsclient.NodeInfo{IP: cfg.InstanceIP, PodName: cfg.PodName, PodNamespace: cfg.PodNamespace,
				NodeName: cfg.NodeName, ClusterID: cfg.ClusterID, ServiceAccount: cfg.ServiceAccount},
		})
		if err != nil {
			return nil, fmt.Errorf("xds source: %w", err)
		}
		a.xds = src
		if cfg.XDSOnDemand {
			a.in.demand = newOnDemand(src.Lookup, cfg.XDSOnDemandTimeout, a.Metrics.Registry, a.log.With("component", "xds-on-demand"))
			a.Metrics.Registry.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "ambit_xds_on_demand_subscribed",
				Help: "Names the on-demand Address subscription holds (looked up and found, or waiting for istiod)"},
				func() float64 { return float64(src.Stats()[xds.AddressTypeURL].OnDemandNames) }))
			if cfg.DNSCapture {
				a.log.Warn("on-demand xDS: the DNS proxy answers only for hostnames istiod has pushed (ztunnel does not combine the two)")
			}
		}
	} else {
		a.source = newFileSource(cfg, a.Store, a.Metrics, a.log.With("component", "config"))
		if err := a.source.load(); err != nil {
			return nil, err
		}
		a.configured.Store(true)
	}
	inCluster := os.Getenv("KUBERNETES_SERVICE_HOST") != "" && os.Getenv("KUBERNETES_SERVICE_PORT") != ""
	if cfg.kubeEnrollment(inCluster) {
		client := cfg.KubeClient
		if client == nil {
			var err error
			if client, err = newKubeClient(cfg.Kubeconfig); err != nil {
				return nil, err
			}
		}
		w, err := kube.New(kube.Options{Client: client, NodeName: cfg.NodeName, ClusterID: cfg.ClusterID,
			TrustDomain: cfg.TrustDomain, Logger: a.log.With("component", "kube-enroll")})
		if err != nil {
			return nil, fmt.Errorf("kube enrollment: %w", err)
		}
		a.kube = w
	}
	issuerOpts := cfg.issuer()
	issuerOpts.Logger = a.log
	// Hand SPIRE's rotations to the manager as they arrive rather than at the next renewal.
	issuerOpts.OnUpdate = func(id spiffeid.ID) { a.certs.Refresh(id) }
	var err error
	if a.issuer, err = identity.NewIssuer(issuerOpts); err != nil {
		return nil, err
	}
	a.certs, err = identity.NewManager(identity.ManagerOptions{Issuer: a.issuer, Logger: a.log.With("component", "identity")})
	if err != nil {
		return nil, fmt.Errorf("identity manager: %w", err)
	}
	a.in.pool, err = hbone.NewPool(hbone.PoolOptions{
		Credentials: a.credentialsFor,
		DialTCP:     a.dialHBONE,
		IdleTimeout: cfg.PoolIdleTimeout,
		Logger:      a.log.With("component", "hbone-client"),
	})
	if err != nil {
		return nil, fmt.Errorf("hbone pool: %w", err)
	}
	a.hbone = &hbone.Server{
		Credentials: a.serverCredentials,
		Handler:     hbone.HandlerFunc(a.inbound.serveHBONE),
		Logger:      a.log.With("component", "hbone-server"),

		HandshakeTimeout:  cfg.HBONEHandshakeTimeout,
		IdleTimeout:       cfg.HBONEIdleTimeout,
		MaxConns:          cfg.HBONEMaxConns,
		StreamIdleTimeout: cfg.HBONEStreamIdleTimeout,
	}
	a.Metrics.RegisterHBONE(map[string]*hbone.Server{"inbound": a.hbone}, map[string]*hbone.Pool{"outbound": a.in.pool})
	if cfg.DNSCapture {
		if err := a.newDNS(); err != nil {
			return nil, err
		}
	}
	return a, nil
}

// newKubeClient builds an API client from a kubeconfig file, or from in-cluster credentials when it is empty.
func newKubeClient(kubeconfig string) (kubeapi.Client, error) {
	var rc *rest.Config
	var err error
	if kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kube enrollment: load credentials: %w", err)
	}
	rc.UserAgent = "ambit-agent/" + admin.Version
	c, err := kubeapi.NewCoreV1(rc)
	if err != nil {
		return nil, fmt.Errorf("kube enrollment: %w", err)
	}
	return c, nil
}

// Ready reports whether the agent serves traffic: listeners bound, capture installed, first
// configuration applied.
func (a *Agent) Ready() (bool, []string) {
	if a.ready.Load() {
		return true, nil
	}
	var pending []string
	if a.xds != nil {
		select {
		case <-a.xds.Ready():
		default:
			pending = append(pending, "state manager")
		}
	}
	if a.kube != nil && !a.kubeSynced() {
		pending = append(pending, "pod watch")
	}
	return false, append(pending, "proxy")
}

// Run binds every listener (or takes them from the running agent, Config.HandoffSocket), installs
// capture and serves until ctx ends or a successor takes the listeners; then it stops accepting, drains
// open connections for up to Config.DrainTimeout and closes what remains (lifecycle.Run, the shape both
// processes share). Capture stays installed (a restarted agent re-adopts it).
func (a *Agent) Run(ctx context.Context) error {
	return lifecycle.Run(ctx, a, a.cfg.DrainTimeout, a.log)
}

// Start implements lifecycle.App: it binds the listeners, installs capture, starts every component and
// returns once the agent is ready.
func (a *Agent) Start(g *lifecycle.Group) error {
	ctx := g.Context()
	a.connCtx, a.connCancel = context.WithCancel(context.WithoutCancel(ctx))
	if err := a.bind(ctx); err != nil {
		return err
	}
	if a.cfg.Capture != CaptureNone {
		r, err := redirect.New(ctx, redirect.Options{
			Mode: redirect.Mode(a.cfg.Capture),
			Listeners: redirect.Listeners{Outbound: a.lnOut, Inbound: a.lnIn, HBONE: a.lnHBONE, InboundDNAT: a.lnInDNAT,
				DNSUDP: a.dnsUDP, DNSTCP: a.lnDNSTCP},
			HBONEPort: a.cfg.HBONEAddr.Port(),
			NetNS:     a.cfg.NetNS,
			Uplinks:   a.cfg.Uplinks,
			PinDir:    a.cfg.PinDir,
			Logger:    a.log.With("component", "capture"),

			AllowEphemeralPins: a.cfg.AllowEphemeralPins,
		})
		if err != nil {
			return fmt.Errorf("install capture: %w", err)
		}
		a.redir = r
		a.log.Info("capture installed", "mode", r.Mode())
		if a.kube != nil {
			a.adoptCapture(ctx)
		}
	}

	a.serveAdmin(g)
	g.Go("identity", a.certs.Run)
	if r, ok := a.issuer.(interface{ Run(context.Context) error }); ok {
		g.Go("workload-api", r.Run)
	}
	firstChange := a.Store.Changed() // before the source can apply anything (reconcileLoop)
	if a.xds != nil {
		g.Go("xds", a.xds.Run)
	} else {
		g.Go("config", a.source.run)
	}
	if a.kube != nil {
		g.Go("kube-enroll", a.kube.Run)
	}
	g.Go("reconcile", func(ctx context.Context) error { return a.reconcileLoop(ctx, firstChange) })
	if a.takeover == nil {
		a.serveTraffic(g)
	}
	if a.xds != nil {
		// Serve and report ready only once istiod's first Address and Authorization responses have
		// been applied: before that, a DENY may be missing (the proxies refuse connections).
		select {
		case <-a.xds.Ready():
			a.configured.Store(true)
		case <-ctx.Done():
		}
	}
	if a.kube != nil {
		// Capture is reconciled only against a complete listing of the node's pods, so that a restart
		// re-adopts what is captured instead of dropping it.
		select {
		case <-a.kube.Synced():
		case <-ctx.Done():
		}
	}
	a.reconcile(ctx)
	if a.takeover != nil && ctx.Err() == nil {
		// The old agent accepted on these sockets until now; from here on both do, until the commit.
		a.serveTraffic(g)
	}
	if a.cfg.HandoffSocket != "" && ctx.Err() == nil {
		if err := a.serveHandoff(g); err != nil {
			a.closeListeners() // the accept loops return
			a.hbone.Close()
			return fmt.Errorf("serve listener hand-off: %w", err)
		}
	}
	if ctx.Err() == nil {
		a.ready.Store(true)
		a.log.Info("agent ready", "outbound", a.lnOut.Addr(), "inbound", a.lnIn.Addr(), "hbone", a.lnHBONE.Addr())
	}
	return nil
}

// serveTraffic starts the accept loops of the capture listeners and the DNS proxy.
func (a *Agent) serveTraffic(g *lifecycle.Group) {
	a.serveDNS(g)
	a.loops.Add(2)
	g.Go("outbound", func(ctx context.Context) error {
		defer a.loops.Done()
		return a.acceptLoop(ctx, a.lnOut, a.outbound.serve)
	})
	g.Go("inbound", func(ctx context.Context) error {
		defer a.loops.Done()
		return a.acceptLoop(ctx, a.lnIn, a.inbound.servePlaintext)
	})
	if a.lnInDNAT != nil {
		// Connections the node DNATed to an enrolled pod are plaintext inbound like any other.
		a.loops.Add(1)
		g.Go("inbound-dnat", func(ctx context.Context) error {
			defer a.loops.Done()
			return a.acceptLoop(ctx, a.lnInDNAT, a.inbound.servePlaintextDNAT)
		})
	}
	g.Go("hbone", func(context.Context) error {
		// Served in connCtx: Drain shuts the server down gracefully (GOAWAY, open streams finish).
		err := a.hbone.Serve(a.connCtx, a.lnHBONE)
		if errors.Is(err, hbone.ErrServerClosed) {
			return nil
		}
		return err
	})
}

// Drain implements lifecycle.App: it stops accepting traffic, sends GOAWAY on inbound HBONE connections
// (peers open new streams elsewhere: to the agent that took the listeners over), then gives open
// connections until ctx ends to finish and closes the rest.
func (a *Agent) Drain(ctx context.Context) {
	a.ready.Store(false)
	if a.handoff != nil {
		a.handoff.Close()
	}
	// Stop accepting: the HBONE listener is closed by Shutdown below (closed under it, the server would
	// take it for a failure and cut its connections).
	for _, ln := range []*net.TCPListener{a.lnOut, a.lnIn, a.lnInDNAT} {
		if ln != nil {
			ln.Close()
		}
	}
	// Served: the accept loops returned (every plaintext or outbound connection they accepted is done,
	// including those still connecting, which the connection manager does not track yet) and the HBONE
	// server shut down gracefully (its streams are done); both are forced at the deadline by connCancel.
	served := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() { _ = a.hbone.Shutdown(ctx) })
	wg.Go(a.loops.Wait)
	go func() { // owned: ends when both returned, which the deadline (Shutdown) and connCancel force
		wg.Wait()
		a.in.live.wait() // relays outlive the goroutines that started them
		close(served)
	}()
	select {
	case <-served:
	case <-ctx.Done():
		a.log.Warn("drain deadline passed; closing remaining connections", "open", a.Conns.Len())
		_ = a.Conns.Drain(ctx) // cancels what is tracked with ErrShutdown (the access log says so)
	}
	a.connCancel()
	<-served
	a.hbone.Close()
	a.log.Info("drained")
}

// Close implements lifecycle.App. Capture stays installed.
func (a *Agent) Close() {
	if a.takeover != nil { // a start that failed after taking the listeners: the old agent keeps serving
		a.takeover.Abort()
		a.takeover = nil
	}
	if a.handoff != nil {
		a.handoff.Close()
	}
	a.closeListeners()
	if a.connCancel != nil {
		a.connCancel()
	}
	for _, ln := range []*net.TCPListener{a.lnAdmin, a.lnMetrics, a.lnReady} {
		if ln != nil {
			ln.Close()
		}
	}
	a.hbone.Close()
	a.in.live.wait() // connCancel ends every relay
	a.in.pool.Close()
	a.certs.Close()
	if c, ok := a.issuer.(io.Closer); ok {
		c.Close()
	}
	if a.redir != nil {
		a.redir.Close()
	}
}

// bind takes the listeners from the running agent (Config.HandoffSocket) and binds those it did not get.
func (a *Agent) bind(ctx context.Context) error {
	if a.cfg.HandoffSocket != "" {
		if _, err := a.takeListeners(ctx); err != nil {
			// Binding may still work (the old agent is on its way out); if not, both errors say why.
			a.log.Warn("listener hand-off failed; binding", "err", err)
			if berr := a.bindMissing(ctx); berr != nil {
				return errors.Join(err, berr)
			}
			return nil
		}
	}
	return a.bindMissing(ctx)
}

// bindMissing binds every listener that is not set yet.
func (a *Agent) bindMissing(ctx context.Context) error {
	if err := a.bindDNS(ctx); err != nil {
		return err
	}
	for _, s := range a.listenerSpecs() {
		if *s.ln != nil {
			continue
		}
		listen := a.in.sockets.Listen
		if s.tracked {
			listen = a.in.sockets.ListenTracked
		}
		ln, err := listen(ctx, s.addr)
		if err != nil {
			return fmt.Errorf("listen %s: %w", s.addr, err)
		}
		*s.ln = ln
	}
	return nil
}

// closeListeners stops accepting traffic (the admin surfaces close themselves when their server stops).
func (a *Agent) closeListeners() {
	for _, ln := range []*net.TCPListener{a.lnOut, a.lnIn, a.lnInDNAT, a.lnHBONE, a.lnDNSTCP} { // this process's descriptors only
		if ln != nil {
			ln.Close()
		}
	}
	if a.dnsUDP != nil {
		a.dnsUDP.Close()
	}
}

// serveAdmin starts the admin API (localhost), metrics and readiness servers.
func (a *Agent) serveAdmin(g *lifecycle.Group) {
	opts := admin.Options{
		Store:        a.Store,
		Certificates: a.certs.Snapshot,
		Connections:  a.Conns.Snapshot,
		Level:        a.cfg.LogLevel,
		Registry:     a.Metrics.Registry,
		Ready:        a.Ready,
		Version:      admin.BuildInfoFromBinary(admin.Version),
		Config:       a.cfg,
		Quit:         g.Stop,
		NodeName:     a.cfg.NodeName,
		Logger:       a.log.With("component", "admin"),
	}
	servers := []struct {
		name string
		ln   *net.TCPListener
		h    http.Handler
	}{
		{"admin", a.lnAdmin, admin.NewAdminHandler(opts)},
		{"metrics", a.lnMetrics, admin.NewMetricsHandler(a.Metrics.Registry)},
		{"readiness", a.lnReady, admin.NewReadinessHandler(a.Ready)},
	}
	for _, s := range servers {
		g.Go(s.name, func(ctx context.Context) error { return admin.Serve(ctx, s.ln, s.h) })
	}
}

// acceptLoop serves every accepted connection on its own goroutine, in connCtx, until the listener
// closes; it returns once they are all served.
func (a *Agent) acceptLoop(ctx context.Context, ln *net.TCPListener, serve func(context.Context, *net.TCPConn)) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			a.log.Warn("accept", "addr", ln.Addr(), "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		wg.Go(func() { serve(a.connCtx, c) })
	}
}

// credentialsFor supplies the HBONE client certificate of a local workload identity.
func (a *Agent) credentialsFor(ctx context.Context, id spiffeid.ID) (*hbone.Credentials, error) {
	c, err := a.certs.Fetch(ctx, id)
	if err != nil {
		return nil, err
	}
	return &hbone.Credentials{ID: c.ID(), Certificate: *c.TLSCertificate(), Roots: c.RootPool()}, nil
}

// serverCredentials presents the certificate of the local workload whose address the HBONE connection
// was accepted on (the pod the peer dialled), never chosen by SNI.
func (a *Agent) serverCredentials(ctx context.Context, local netip.AddrPort) (*hbone.Credentials, error) {
	w := a.in.localWorkload(local.Addr())
	if w == nil {
		return nil, fmt.Errorf("no local workload with address %s", local.Addr())
	}
	id, err := spiffeid.FromString(w.Identity())
	if err != nil {
		return nil, fmt.Errorf("workload %s identity: %w", w.UID, err)
	}
	return a.credentialsFor(ctx, id)
}

// dialHBONE opens the TCP connection under an HBONE connection, from the source pod's IP when source
// preservation is on (as ztunnel does from inside the pod), marked so capture ignores it.
func (a *Agent) dialHBONE(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	if src.IsValid() {
		return a.in.sockets.DialFrom(ctx, src, dst)
	}
	return a.in.sockets.DialContext(ctx, "tcp", dst.String())
}
