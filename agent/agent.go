// Package agent is Ambit's node agent: it captures the traffic of the ambient pods on its node and
// carries each connection as agent/route plans it, terminates HBONE for those pods, enforces L4
// authorization, and reports telemetry. It is the composition root: it wires state, identity, capture
// (redirect), HBONE and relaying together; the decisions live in agent/route and agent/authz.
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

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/admin"
	"github.com/ambit-mesh/ambit/agent/kube"
	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/connmgr"
	"github.com/ambit-mesh/ambit/proxy/metrics"
	"github.com/ambit-mesh/ambit/redirect"
	"github.com/ambit-mesh/ambit/xdsclient"
)

// Version is reported in metrics and the admin API; set at build time with -ldflags.
var Version = "dev"

// Agent is one node agent. Create it with New, then call Run once.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	Store   *state.Store
	Metrics *metrics.Metrics
	Conns   connmgr.Manager

	certs   *identity.Manager
	issuers []runner    // issuers that need a running goroutine (Workload API)
	closers []io.Closer // issuers that hold connections (istiod CA)
	sockets redirect.SocketFactory
	pool    *hbone.Pool
	hbone   *hbone.Server
	source  *fileSource   // local files, or
	xds     *xds.Source   // istiod
	kube    *kube.Watcher // pod enrollment from the Kubernetes API (Config.KubeEnroll), or nil

	lnOut, lnIn, lnHBONE        *net.TCPListener
	lnAdmin, lnMetrics, lnReady *net.TCPListener
	redir                       redirect.Redirector

	mu       sync.Mutex
	enrolled map[string]redirect.Pod // guarded by mu; capture UID -> pod
	certIDs  map[spiffeid.ID]bool    // guarded by mu; identities of local captured workloads

	ready atomic.Bool
}

type runner interface {
	Run(ctx context.Context) error
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
		Metrics:  metrics.New(Version),
		sockets:  redirect.SocketFactory{NetNS: cfg.NetNS},
		enrolled: map[string]redirect.Pod{},
	}
	if cfg.XDSAddress != "" {
		src, err := xds.NewSource(xds.SourceOptions{
			Address: cfg.XDSAddress, Plaintext: cfg.XDSPlaintext, RootCertFile: cfg.XDSRootFile, TokenFile: cfg.TokenFile,
			ClusterID: cfg.ClusterID, Store: a.Store, Logger: a.log.With("component", "xds"),
			Node: xdsclient.NodeInfo{IP: cfg.InstanceIP, PodName: cfg.PodName, PodNamespace: cfg.PodNamespace,
				NodeName: cfg.NodeName, ClusterID: cfg.ClusterID, ServiceAccount: cfg.ServiceAccount},
		})
		if err != nil {
			return nil, fmt.Errorf("xds source: %w", err)
		}
		a.xds = src
	} else {
		a.source = &fileSource{files: cfg.ConfigFiles, poll: cfg.ConfigPoll, cfg: cfg, store: a.Store, metrics: a.Metrics, log: a.log.With("component", "config")}
		if err := a.source.load(); err != nil {
			return nil, err
		}
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
	issuer, err := a.newIssuer(true)
	if err != nil {
		return nil, err
	}
	a.certs, err = identity.NewManager(identity.ManagerOptions{Issuer: issuer, Logger: a.log.With("component", "identity")})
	if err != nil {
		return nil, fmt.Errorf("identity manager: %w", err)
	}
	a.pool, err = hbone.NewPool(hbone.PoolOptions{
		Credentials: a.credentialsFor,
		DialTCP:     a.dialHBONE,
		Logger:      a.log.With("component", "hbone-client"),
	})
	if err != nil {
		return nil, fmt.Errorf("hbone pool: %w", err)
	}
	a.hbone = &hbone.Server{
		Credentials: a.serverCredentials,
		Handler:     hbone.HandlerFunc(a.serveHBONE),
		Logger:      a.log.With("component", "hbone-server"),
	}
	return a, nil
}

// newKubeClient builds an API client from a kubeconfig file, or from in-cluster credentials when it is empty.
func newKubeClient(kubeconfig string) (kubernetes.Interface, error) {
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
	rc.UserAgent = "ambit-agent/" + Version
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kube enrollment: create client: %w", err)
	}
	return c, nil
}

// newIssuer builds the certificate source. A node agent impersonates the workloads of its node when it
// asks istiod's CA; a waypoint asks for its own identity.
func (a *Agent) newIssuer(impersonate bool) (identity.Issuer, error) {
	switch a.cfg.Identity {
	case IdentityIstiod:
		ca, err := identity.NewIstiodCA(identity.IstiodCAOptions{
			Address: a.cfg.CAAddress, RootCertFile: a.cfg.CARootFile, TokenFile: a.cfg.TokenFile,
			ClusterID: a.cfg.ClusterID, Impersonate: impersonate, TTL: a.cfg.CertTTL,
			Logger: a.log.With("component", "istiod-ca"),
		})
		if err != nil {
			return nil, fmt.Errorf("istiod CA client: %w", err)
		}
		a.closers = append(a.closers, ca)
		return ca, nil
	case IdentitySPIFFE:
		// Hand SPIRE's rotations to the manager as they arrive rather than at the next renewal.
		w := identity.NewWorkloadAPI(identity.WorkloadAPIOptions{Address: a.cfg.SPIFFESocket, Logger: a.log.With("component", "workload-api"),
			OnUpdate: func(id spiffeid.ID) {
				if a.certs != nil {
					a.certs.Refresh(id)
				}
			}})
		a.issuers = append(a.issuers, w)
		return w, nil
	default:
		ca, err := identity.NewLocalCA(identity.LocalCAOptions{Dir: a.cfg.CADir, TrustDomain: a.cfg.TrustDomain, TTL: a.cfg.CertTTL,
			Logger: a.log.With("component", "local-ca")})
		if err != nil {
			return nil, fmt.Errorf("local CA: %w", err)
		}
		return ca, nil
	}
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

// Run binds every listener, installs capture and serves until ctx ends; then it stops accepting,
// drains open connections for up to Config.DrainTimeout and closes what remains. Capture stays
// installed (a restarted agent re-adopts it).
func (a *Agent) Run(ctx context.Context) error {
	if err := a.bind(ctx); err != nil {
		a.closeAll()
		return err
	}
	if a.cfg.Capture != CaptureNone {
		r, err := redirect.New(ctx, redirect.Options{
			Mode:      redirect.Mode(a.cfg.Capture),
			Listeners: redirect.Listeners{Outbound: a.lnOut, Inbound: a.lnIn, HBONE: a.lnHBONE},
			HBONEPort: a.cfg.HBONEAddr.Port(),
			NetNS:     a.cfg.NetNS,
			Uplinks:   a.cfg.Uplinks,
			PinDir:    a.cfg.PinDir,
			Logger:    a.log.With("component", "capture"),
		})
		if err != nil {
			a.closeAll()
			return fmt.Errorf("install capture: %w", err)
		}
		a.redir = r
		a.log.Info("capture installed", "mode", r.Mode())
		if a.kube != nil {
			a.adoptCapture(ctx)
		}
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 8)
	goRun := func(name string, f func(context.Context) error) {
		wg.Go(func() {
			// Errors after shutdown began (listeners closed under a server) are part of stopping.
			if err := f(runCtx); err != nil && !errors.Is(err, context.Canceled) && runCtx.Err() == nil {
				a.log.Error("component stopped", "name", name, "err", err)
				errc <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		})
	}
	a.serveAdmin(goRun, cancel)
	goRun("identity", a.certs.Run)
	for _, r := range a.issuers {
		goRun("workload-api", r.Run)
	}
	if a.xds != nil {
		goRun("xds", a.xds.Run)
	} else {
		goRun("config", a.source.run)
	}
	if a.kube != nil {
		goRun("kube-enroll", a.kube.Run)
	}
	goRun("reconcile", a.reconcileLoop)
	goRun("outbound", func(ctx context.Context) error { return a.acceptLoop(ctx, a.lnOut, a.serveOutbound) })
	goRun("inbound", func(ctx context.Context) error { return a.acceptLoop(ctx, a.lnIn, a.servePlaintext) })
	goRun("hbone", func(ctx context.Context) error {
		err := a.hbone.Serve(ctx, a.lnHBONE)
		if errors.Is(err, hbone.ErrServerClosed) {
			return nil
		}
		return err
	})
	if a.xds != nil {
		// Ready only once istiod's first complete state has been applied.
		select {
		case <-a.xds.Ready():
		case <-runCtx.Done():
		}
	}
	if a.kube != nil {
		// Capture is reconciled only against a complete listing of the node's pods, so that a restart
		// re-adopts what is captured instead of dropping it.
		select {
		case <-a.kube.Synced():
		case <-runCtx.Done():
		}
	}
	a.reconcile(runCtx)
	if runCtx.Err() == nil {
		a.ready.Store(true)
		a.log.Info("agent ready", "outbound", a.lnOut.Addr(), "inbound", a.lnIn.Addr(), "hbone", a.lnHBONE.Addr())
	}

	<-runCtx.Done()
	a.ready.Store(false)
	// Stop accepting, then give open connections DrainTimeout to finish.
	a.closeListeners()
	drainCtx, stop := context.WithTimeout(context.Background(), a.cfg.DrainTimeout)
	if err := a.Conns.Drain(drainCtx); err != nil {
		a.log.Warn("drain deadline passed; closing remaining connections", "open", a.Conns.Len())
	}
	_ = a.hbone.Shutdown(drainCtx)
	stop()
	a.hbone.Close()
	cancel()
	wg.Wait()
	a.pool.Close()
	a.certs.Close()
	for _, c := range a.closers {
		c.Close()
	}
	if a.redir != nil {
		a.redir.Close()
	}
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (a *Agent) bind(ctx context.Context) error {
	var err error
	listen := func(addr netip.AddrPort) *net.TCPListener {
		if err != nil {
			return nil
		}
		var ln *net.TCPListener
		ln, err = a.sockets.Listen(ctx, addr)
		if err != nil {
			err = fmt.Errorf("listen %s: %w", addr, err)
		}
		return ln
	}
	a.lnOut = listen(a.cfg.OutboundAddr)
	a.lnIn = listen(a.cfg.InboundAddr)
	a.lnHBONE = listen(a.cfg.HBONEAddr)
	a.lnAdmin = listen(a.cfg.AdminAddr)
	a.lnMetrics = listen(a.cfg.MetricsAddr)
	a.lnReady = listen(a.cfg.ReadinessAddr)
	return err
}

// closeListeners stops accepting traffic; closeAll also closes the admin surfaces (which otherwise
// close themselves when their server stops).
func (a *Agent) closeListeners() {
	for _, ln := range []*net.TCPListener{a.lnOut, a.lnIn, a.lnHBONE} {
		if ln != nil {
			ln.Close()
		}
	}
}

func (a *Agent) closeAll() {
	a.closeListeners()
	for _, ln := range []*net.TCPListener{a.lnAdmin, a.lnMetrics, a.lnReady} {
		if ln != nil {
			ln.Close()
		}
	}
}

// serveAdmin starts the admin API (localhost), metrics and readiness servers.
func (a *Agent) serveAdmin(goRun func(string, func(context.Context) error), quit context.CancelFunc) {
	opts := admin.Options{
		Store:        a.Store,
		Certificates: a.certs.Snapshot,
		Connections:  a.Conns.Snapshot,
		Level:        a.cfg.LogLevel,
		Registry:     a.Metrics.Registry,
		Ready:        a.Ready,
		Version:      admin.BuildInfoFromBinary(Version),
		Config:       a.cfg,
		Quit:         quit,
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
		goRun(s.name, func(ctx context.Context) error { return admin.Serve(ctx, s.ln, s.h) })
	}
}

// acceptLoop serves every accepted connection on its own goroutine until the listener closes.
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
		wg.Go(func() { serve(ctx, c) })
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
	w := a.localWorkload(local.Addr())
	if w == nil {
		return nil, fmt.Errorf("no local workload with address %s", local.Addr())
	}
	id, err := spiffeid.FromString(w.Identity())
	if err != nil {
		return nil, fmt.Errorf("workload %s identity: %w", w.UID, err)
	}
	return a.credentialsFor(ctx, id)
}

// localWorkload returns the workload on this node that owns ip, or nil.
func (a *Agent) localWorkload(ip netip.Addr) *state.Workload {
	w := a.Store.WorkloadByAddr(state.NetworkAddress{Network: a.cfg.Network, Addr: ip.Unmap()})
	if w == nil || w.Node != a.cfg.NodeName {
		return nil
	}
	return w
}

// dialHBONE opens the TCP connection under an HBONE connection, from the source pod's IP when source
// preservation is on (as ztunnel does from inside the pod), marked so capture ignores it.
func (a *Agent) dialHBONE(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	if src.IsValid() {
		return a.sockets.DialFrom(ctx, src, dst)
	}
	return a.sockets.DialContext(ctx, "tcp", dst.String())
}
