package engine

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/waypoint/jwt"
	"github.com/ambit-mesh/ambit/waypoint/model"
	"github.com/ambit-mesh/ambit/waypoint/ratelimit"
	"github.com/ambit-mesh/ambit/waypoint/routing"
	"github.com/ambit-mesh/ambit/waypoint/telemetry"
	"github.com/ambit-mesh/ambit/waypoint/upstream"
)

// Limits of the engine (see the package documentation).
const (
	MaxReplayBody       = 64 << 10
	MaxHeaderBytes      = 64 << 10
	h2StreamUploadLimit = 256 << 10
	h2ConnUploadLimit   = 1 << 20
	maxMirrorsInFlight  = 64
	// srvReadHeaderTimeout bounds reading a downstream request's header block (slowloris).
	srvReadHeaderTimeout = 30 * time.Second
	// srvIdleTimeout closes a downstream HTTP/1.1 connection idle that long between requests.
	srvIdleTimeout = time.Hour
	// DefaultConnectTimeout bounds connecting to an endpoint without a DestinationRule connectTimeout.
	DefaultConnectTimeout = 10 * time.Second
)

type connectTimeoutKey struct{}

// View is the state the engine reads: services, their endpoints and workloads.
type View interface {
	ServiceByHostname(host, clientNamespace string) *state.Service
	Endpoints(state.NamespacedHostname) []*state.Workload
	WorkloadByAddr(state.NetworkAddress) *state.Workload
}

var _ View = (*state.Store)(nil)

// Options configure an Engine.
type Options struct {
	Logger *slog.Logger
	// Registerer receives the HTTP metrics; required.
	Registerer prometheus.Registerer
	State      View
	// Dial opens a connection to an endpoint address (pod IP and target port): HBONE to the pod's
	// :15008 with the waypoint's identity when the pod is in the mesh.
	Dial func(ctx context.Context, addr netip.AddrPort) (net.Conn, error)
	// Resolver resolves the hostnames of DNS endpoints (ServiceEntry resolution DNS) at request time; nil
	// leaves them out (no endpoint: 503 UH).
	Resolver *upstream.Resolver
	// Namespace and Name are the waypoint Gateway's; Network the waypoint's network.
	Namespace, Name, Network string
	// RootNamespace holds mesh-wide (GatewayClass-targeted) policies; default istio-system.
	RootNamespace string
	// Tracing exports spans; nil propagates trace context without recording spans.
	Tracing *telemetry.Tracing
	// Now is the clock; nil uses time.Now.
	Now func() time.Time
	// StreamIdleTimeout ends a request that moves no body bytes either way for this long (give or take a
	// quarter): 408 "stream timeout" (flag SI) before the response started, a reset after (Envoy's
	// stream_idle_timeout, 5 min by default there). Waiting for the upstream's response counts as idle,
	// as in Envoy. Zero disables it.
	StreamIdleTimeout time.Duration

	// netHTTP2 serves downstream HTTP/2 with net/http's server instead of the engine's own (h2server.go).
	netHTTP2 bool
	// netHTTP1 serves downstream HTTP/1.1 with net/http's server instead of the engine's own (h1server.go).
	netHTTP1 bool
	// readHeaderTimeout bounds reading a request's header block (default srvReadHeaderTimeout);
	// idleTimeout a downstream HTTP/1.1 connection between requests (default srvIdleTimeout).
	readHeaderTimeout, idleTimeout time.Duration
}

// ConnInfo describes the HBONE stream a connection arrived on.
type ConnInfo struct {
	// PeerID is the verified SPIFFE ID of the HBONE client (the source workload's identity).
	PeerID string
	// Source is the source workload, when known.
	Source *state.Workload
	Remote netip.AddrPort
	// Target is the CONNECT authority: a service VIP:port or a pod IP:port.
	Target netip.AddrPort
	// Service is the destination service (service-addressed traffic); Workload the destination
	// workload (workload-addressed traffic).
	Service  *state.Service
	Workload *state.Workload
	Protocol state.AppProtocol
}

// Engine is the L7 engine. Create it with New; call Update with each configuration and Close at the end.
type Engine struct {
	opts    Options
	log     *slog.Logger
	metrics *telemetry.Metrics
	tracing *telemetry.Tracing
	authn   *jwt.Authenticator
	clus    upstream.Manager
	now     func() time.Time

	snap atomic.Pointer[snapshot]

	bmu     sync.Mutex
	buckets map[string]*ratelimit.Bucket // guarded by bmu; by policy key

	h1c      h1Client        // plain HTTP/1.1 upstreams
	h2c      *h2Client       // plain HTTP/2 (h2c, gRPC) upstreams
	h1       *http.Transport // HTTP/1.1 upgrades (WebSocket)
	h2       *http.Transport // upgrade requests to HTTP/2 ports
	tls      tlsTransports   // TLS origination
	proxyLog *log.Logger     // the ReverseProxy's error log, shared by every request's proxy
	srv      *http.Server
	ln       *chanListener
	mirrors  chan struct{}
	wg       sync.WaitGroup
	h2Idle   atomic.Int64 // downstream HTTP/2 connection idle timeout (ns); zero: h2DefaultIdleConn
}

// snapshot is one configuration with its lazily built route tables.
type snapshot struct {
	cfg    *model.Config
	mu     sync.Mutex
	tables map[routing.Target]*routing.Table // guarded by mu
}

func (s *snapshot) table(t routing.Target) *routing.Table {
	s.mu.Lock()
	defer s.mu.Unlock()
	tb := s.tables[t]
	if tb == nil {
		tb = routing.Build(s.cfg, t)
		s.tables[t] = tb
	}
	return tb
}

// New returns an engine with an empty configuration (every request goes to its original destination).
func New(opts Options) (*Engine, error) {
	if opts.Registerer == nil || opts.State == nil || opts.Dial == nil {
		return nil, errors.New("l7 engine: Registerer, State and Dial are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.RootNamespace == "" {
		opts.RootNamespace = "istio-system"
	}
	if opts.readHeaderTimeout <= 0 {
		opts.readHeaderTimeout = srvReadHeaderTimeout
	}
	if opts.idleTimeout <= 0 {
		opts.idleTimeout = srvIdleTimeout
	}
	m, err := telemetry.NewMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	e := &Engine{opts: opts, log: opts.Logger, metrics: m, tracing: opts.Tracing, now: opts.Now,
		buckets: map[string]*ratelimit.Bucket{}, mirrors: make(chan struct{}, maxMirrorsInFlight)}
	if e.now == nil {
		e.now = time.Now
	}
	e.authn = jwt.New(jwt.Options{Log: e.log.With("component", "jwks")})
	if e.tracing == nil {
		if e.tracing, err = telemetry.NewTracing(context.Background(), telemetry.TracingOptions{ServiceName: opts.Name}); err != nil {
			return nil, err
		}
	}
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			return nil, fmt.Errorf("dial endpoint %q: %w", addr, err)
		}
		// The DestinationRule's connect timeout (Istio's default 10 s) bounds establishing the connection.
		d, _ := ctx.Value(connectTimeoutKey{}).(time.Duration)
		if d <= 0 {
			d = DefaultConnectTimeout
		}
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		c, err := opts.Dial(ctx, ap)
		if err != nil {
			return nil, &connectError{err: err}
		}
		return c, nil
	}
	e.h1c = h1Client{dial: dial, idle: upstream.IdlePool[*h1Conn]{MaxPerKey: h1MaxIdlePerEndpoint, IdleTimeout: h1IdleTimeout}}
	e.h1 = &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			c, err := dial(ctx, addr)
			if err != nil {
				return nil, err
			}
			return &countedConn{Conn: c}, nil
		},
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	e.h2c = newH2Client(dial, e.log)
	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	e.h2 = &http.Transport{
		DialContext:        func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) },
		Protocols:          &h2c,
		DisableCompression: true,
		IdleConnTimeout:    90 * time.Second,
		// An encoder table too small to index anything: per-request values (x-request-id, traceparent) would
		// otherwise churn the HPACK table on every request (insert, evict); names still come from the static table.
		HTTP2: &http.HTTP2Config{SendPingTimeout: 30 * time.Second, PingTimeout: 15 * time.Second, MaxEncoderHeaderTableSize: 1},
	}
	e.tls.dial = dial
	e.proxyLog = slog.NewLogLogger(e.log.Handler(), slog.LevelDebug)
	var both http.Protocols
	both.SetHTTP1(true)
	both.SetUnencryptedHTTP2(true)
	e.srv = &http.Server{
		Handler:   e,
		Protocols: &both,
		HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 1000, MaxReceiveBufferPerStream: h2StreamUploadLimit,
			MaxReceiveBufferPerConnection: h2ConnUploadLimit, MaxReadFrameSize: 1 << 20},
		MaxHeaderBytes:    MaxHeaderBytes,
		ReadHeaderTimeout: opts.readHeaderTimeout,
		IdleTimeout:       opts.idleTimeout,
		ErrorLog:          slog.NewLogLogger(e.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if sc, ok := c.(*streamConn); ok {
				return context.WithValue(ctx, connKey{}, sc.info)
			}
			return ctx
		},
	}
	e.ln = newChanListener()
	e.wg.Go(func() { _ = e.srv.Serve(e.ln) })
	e.wg.Go(e.expireIdle)
	e.Update(&model.Config{})
	return e, nil
}

// Update swaps in cfg; requests already running finish with the configuration they started with.
func (e *Engine) Update(cfg *model.Config) {
	// The JWKS of cfg are fetched before cfg serves (bounded by the fetch timeout), then kept fresh in
	// the background; requests only read the last good keys.
	var rules []model.JWTRule
	for _, p := range cfg.JWT {
		rules = append(rules, p.Rules...)
	}
	e.authn.Sync(context.Background(), rules)
	e.snap.Store(&snapshot{cfg: cfg, tables: map[routing.Target]*routing.Table{}})
	e.tls.reset()
	now := e.now()
	e.bmu.Lock()
	keep := map[string]*ratelimit.Bucket{}
	for _, rl := range cfg.RateLimits {
		b := e.buckets[rl.Key()]
		if b == nil || !b.Same(rl.MaxTokens, rl.TokensPerFill, rl.FillInterval) {
			b = ratelimit.NewBucket(rl.MaxTokens, rl.TokensPerFill, rl.FillInterval, now)
		}
		keep[rl.Key()] = b
	}
	e.buckets = keep
	e.bmu.Unlock()
}

// Config returns the configuration in use.
func (e *Engine) Config() *model.Config { return e.snap.Load().cfg }

// Close stops the HTTP server, closes idle upstream connections and flushes spans. Connections
// being served end when their HBONE streams close.
func (e *Engine) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := e.srv.Shutdown(ctx)
	e.ln.Close()
	e.wg.Wait()
	e.h1c.closeIdle()
	e.h2c.closeAll(ctx)
	// Request body writers end with their requests; wait for them within Close's time bound.
	writers := make(chan struct{})
	go func() { e.h1c.wg.Wait(); close(writers) }()
	select {
	case <-writers:
	case <-ctx.Done():
	}
	e.h1.CloseIdleConnections()
	e.h2.CloseIdleConnections()
	e.tls.reset()
	e.authn.Close()
	if terr := e.tracing.Shutdown(ctx); terr != nil && err == nil {
		err = terr
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

type connKey struct{}

// expireIdle closes idle upstream connections past their idle timeout, and checks the liveness of
// busy HTTP/2 ones, every 10 s until Close.
func (e *Engine) expireIdle() {
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			e.h1c.expire()
			e.h2c.expire()
		case <-e.ln.closed:
			return
		}
	}
}

// ServeConn serves HTTP on c (one accepted HBONE stream) until the client closes it or ctx ends. One
// server speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c; gRPC), told apart by the client preface,
// so an HTTP/1.1 port also accepts h2c and an HTTP2/GRPC port HTTP/1.1 clients.
func (e *Engine) ServeConn(ctx context.Context, c net.Conn, info *ConnInfo) error {
	sc := newStreamConn(c, info)
	if !e.opts.netHTTP2 {
		h2, err := sc.detectPreface(h2PrefaceTimeout)
		if err != nil {
			sc.Close()
			return nil // the client went away before a request: nothing to serve
		}
		if h2 {
			err := e.serveH2(ctx, sc, info)
			sc.Close()
			return err
		}
		if !e.opts.netHTTP1 {
			e.serveH1(ctx, sc, info)
			sc.Close()
			return nil
		}
	}
	if err := e.ln.push(ctx, sc); err != nil {
		sc.Close()
		return err
	}
	select {
	case <-sc.done:
	case <-ctx.Done():
		sc.Close()
	}
	return nil
}

var (
	_ http.Handler      = (*Engine)(nil)
	_ http.RoundTripper = (*reqState)(nil)
	_ net.Listener      = (*chanListener)(nil)
	_ net.Conn          = (*streamConn)(nil)
)

// chanListener hands connections to the shared HTTP/1.1 server.
type chanListener struct {
	ch     chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newChanListener() *chanListener {
	return &chanListener{ch: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *chanListener) push(ctx context.Context, c net.Conn) error {
	select {
	case l.ch <- c:
		return nil
	case <-l.closed:
		return net.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }

var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// bufferPool gives ReverseProxy pooled 32 KiB copy buffers.
type bufferPool struct{}

func (bufferPool) Get() []byte  { return *(copyBuffers.Get().(*[]byte)) }
func (bufferPool) Put(b []byte) { copyBuffers.Put(&b) }

// countedConn counts the HTTP/1.1 requests sent on an upstream connection, for
// maxRequestsPerConnection: the request that reaches the limit closes the connection when it ends.
type countedConn struct {
	net.Conn
	requests atomic.Int64
}
