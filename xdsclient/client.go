package xdsclient

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/anypb"
)

// Transport defaults (ztunnel's).
const (
	DefaultMaxMessageSize = 200 << 20
	// DefaultMaxOnDemandNames bounds the names one on-demand subscription holds (Options.MaxOnDemandNames).
	DefaultMaxOnDemandNames = 1 << 16
	connectTimeout          = 5 * time.Second
	keepaliveTime           = 30 * time.Second
	keepaliveTimeout        = 10 * time.Second
)

// Wildcard is the explicit wildcard resource name of the delta protocol.
const Wildcard = "*"

// Resource is one resource of a response, as the server sent it.
type Resource struct {
	// Name is the resource's primary name (for Istio: a workload UID, "<ns>/<hostname>" or "<ns>/<name>").
	Name string
	// Version is the server's opaque version of the resource (istiod: a hash of its bytes).
	Version string
	// Aliases are further names the resource answers to (istiod: "<network>/<ip>", on-demand only).
	Aliases []string
	// Body is the resource itself; its TypeUrl should equal the subscription's.
	Body *anypb.Any
}

// Update is one response of one type, handed to that type's Handler.
type Update struct {
	TypeURL   string
	Resources []Resource
	// Removed names resources the server no longer has (or, on-demand, never had).
	Removed []string
	// First is set on the first response of this type on a new stream. After a reconnect it holds only what
	// changed relative to the versions the client sent; resources the client held and that appear in neither
	// Resources nor Removed are unchanged.
	First bool
	// Nonce and SystemVersion identify the response in logs.
	Nonce, SystemVersion string
}

// Rejection reports one resource of an Update that the handler refused.
type Rejection struct {
	Name string
	Err  error
	// Keep says the handler still tracks the resource although it reported it (for example it parked it until
	// a dependency arrives). Its version then stays in initial_resource_versions across reconnects, so that
	// its removal still reaches the handler; without Keep the name is forgotten, as ztunnel does, and the
	// server resends it on the next stream.
	Keep bool
}

// Handler consumes the responses of one type URL. HandleUpdate is called from the client's stream
// goroutine, one update at a time, and must not block for long: the ACK waits for it. It returns the
// resources it rejected; everything else in the update counts as accepted. It may set a Resource's Body
// to nil once it has used it: the client reads only names, versions and aliases afterwards and keeps no
// other reference to the response, so a large response can be collected while it is being applied.
type Handler interface {
	HandleUpdate(ctx context.Context, u *Update) []Rejection
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, u *Update) []Rejection

// HandleUpdate calls f.
func (f HandlerFunc) HandleUpdate(ctx context.Context, u *Update) []Rejection { return f(ctx, u) }

// Subscription registers a Handler for one type URL.
type Subscription struct {
	TypeURL string
	Handler Handler
	// OnDemand subscribes to nothing at first ("*" subscribed and unsubscribed in the initial request, as
	// ztunnel's XDS_ON_DEMAND does); Fetch and Subscribe then name resources. Otherwise the subscription is a
	// wildcard. Readiness conventions (first response) only make sense for wildcard subscriptions.
	OnDemand bool
}

// Options configures New.
type Options struct {
	// Address of the xDS server, host:port (for example istiod.istio-system.svc:15012). Required.
	Address string
	// Plaintext disables TLS (istiod's 15010, local development and tests).
	Plaintext bool
	// RootCertFile holds the PEM roots that the server's certificate must chain to; it is read again when it
	// changes. SystemRoots means the operating system's roots. Required unless Plaintext.
	RootCertFile string
	// ServerName is the name the server certificate must carry (default: the host of Address).
	// AltServerName is accepted as well (ztunnel's ALT_XDS_HOSTNAME).
	ServerName, AltServerName string
	// TokenFile holds a bearer token (a projected service-account JWT, audience istio-ca) read on every new
	// stream. Empty sends no authorization header.
	TokenFile string
	// ClusterID is sent as the clusterid header (default DefaultClusterID).
	ClusterID string
	// Headers are extra request headers (ztunnel's XDS_HEADER_*).
	Headers map[string]string
	// Node identifies this proxy.
	Node NodeInfo
	// Subscriptions, one per type URL, subscribed in this order. Required.
	Subscriptions []Subscription
	// InitialBackoff and MaxBackoff shape reconnects (defaults DefaultInitialBackoff, DefaultMaxBackoff).
	InitialBackoff, MaxBackoff time.Duration
	// MaxMessageSize bounds a received response (default DefaultMaxMessageSize).
	MaxMessageSize int
	// MaxOnDemandNames bounds the names an on-demand subscription holds at once (default
	// DefaultMaxOnDemandNames): the names come from connections pods open, so a pod scanning addresses
	// must not grow the subscription, and every reconnect's initial request, without bound. Past it,
	// Subscribe and Fetch fail with ErrTooManyNames until Forget makes room.
	MaxOnDemandNames int
	// Logger; nil discards.
	Logger *slog.Logger
	// DialOptions are appended to the client's gRPC dial options.
	DialOptions []grpc.DialOption
}

// Stats counts what happened on one type URL since New.
type Stats struct {
	Responses, ACKs, NACKs, Rejected uint64
	// Held is the number of resources whose versions the client keeps for reconnects.
	Held int
	// OnDemandNames is the number of names an on-demand subscription holds (Fetch, Subscribe, less Forget).
	OnDemandNames int
	// LastNACK is the error_detail message of the last NACK.
	LastNACK string
}

// Client is a delta ADS client. Create it with New, drive it with Run, stop it with Close (or by cancelling
// Run's context and then calling Close). Its methods are safe for concurrent use.
type Client struct {
	opts    Options
	log     *slog.Logger
	node    *corev3.Node
	conn    *grpc.ClientConn
	types   map[string]*typeState // keys fixed by New
	order   []string
	running atomic.Bool

	mu     sync.Mutex
	cur    *activeStream // guarded by mu; the open stream, if any
	closed bool          // guarded by mu
}

// typeState is the client's memory of one subscription; every field but sub is guarded by Client.mu.
type typeState struct {
	sub      Subscription
	versions map[string]string // accepted (or kept) resources
	names    map[string]*onDemandName
	aliases  map[string]string // alias -> resource name
	stats    Stats
}

// onDemandName is one name requested through Fetch or Subscribe.
type onDemandName struct {
	resolved bool // a response mentioned it
	found    bool // ... as a resource (not a removal)
	waiters  []chan struct{}
}

// activeStream is an open stream; mu serialises Send.
type activeStream struct {
	mu sync.Mutex
	s  grpc.BidiStreamingClient[discovery.DeltaDiscoveryRequest, discovery.DeltaDiscoveryResponse]
}

func (a *activeStream) send(r *discovery.DeltaDiscoveryRequest) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.s.Send(r)
}

// New validates opts and prepares the gRPC channel; nothing is dialled until Run.
func New(opts Options) (*Client, error) {
	if opts.Address == "" {
		return nil, errors.New("create xds client: empty address")
	}
	if len(opts.Subscriptions) == 0 {
		return nil, errors.New("create xds client: no subscriptions")
	}
	opts.ClusterID = cmp.Or(opts.ClusterID, DefaultClusterID)
	opts.InitialBackoff = cmp.Or(opts.InitialBackoff, DefaultInitialBackoff)
	opts.MaxBackoff = max(cmp.Or(opts.MaxBackoff, DefaultMaxBackoff), opts.InitialBackoff)
	opts.MaxMessageSize = cmp.Or(opts.MaxMessageSize, DefaultMaxMessageSize)
	opts.MaxOnDemandNames = cmp.Or(opts.MaxOnDemandNames, DefaultMaxOnDemandNames)
	c := &Client{opts: opts, log: opts.Logger, types: map[string]*typeState{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	node, err := opts.Node.Proto()
	if err != nil {
		return nil, fmt.Errorf("create xds client: %w", err)
	}
	c.node = node
	for _, s := range opts.Subscriptions {
		if s.TypeURL == "" || s.Handler == nil {
			return nil, errors.New("create xds client: subscription without type url or handler")
		}
		if _, dup := c.types[s.TypeURL]; dup {
			return nil, fmt.Errorf("create xds client: duplicate subscription %s", s.TypeURL)
		}
		c.types[s.TypeURL] = &typeState{sub: s, versions: map[string]string{}, names: map[string]*onDemandName{},
			aliases: map[string]string{}}
		c.order = append(c.order, s.TypeURL)
	}

	var creds credentials.TransportCredentials
	if opts.Plaintext {
		creds = insecure.NewCredentials()
	} else {
		if opts.RootCertFile == "" {
			return nil, errors.New("create xds client: RootCertFile is required without Plaintext")
		}
		name := opts.ServerName
		if name == "" {
			host, _, err := net.SplitHostPort(opts.Address)
			if err != nil {
				return nil, fmt.Errorf("create xds client: %w", err)
			}
			name = host
		}
		rf := &rootFile{path: opts.RootCertFile}
		if _, err := rf.load(); err != nil {
			return nil, fmt.Errorf("create xds client: %w", err)
		}
		creds = credentials.NewTLS(tlsConfig(rf, name, opts.AltServerName))
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithPerRPCCredentials(&tokenCreds{tokenFile: opts.TokenFile, clusterID: opts.ClusterID,
			headers: opts.Headers, secure: !opts.Plaintext}),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout,
			PermitWithoutStream: true}),
		grpc.WithConnectParams(grpc.ConnectParams{MinConnectTimeout: connectTimeout, Backoff: backoff.Config{
			BaseDelay: opts.InitialBackoff, Multiplier: 2, Jitter: 0.2, MaxDelay: opts.MaxBackoff}}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(opts.MaxMessageSize)),
	}
	conn, err := grpc.NewClient(opts.Address, append(dial, opts.DialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("create xds client: %w", err)
	}
	c.conn = conn
	return c, nil
}

// Close stops the client: Run returns ErrClosed (unless its context ended first) and pending Fetch calls
// fail with ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	for _, ts := range c.types {
		for _, n := range ts.names {
			for _, w := range n.waiters {
				close(w)
			}
			n.waiters = nil
		}
	}
	c.mu.Unlock()
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("close xds client: %w", err)
	}
	return nil
}

// Run keeps one stream open to the server until ctx ends or Close is called, reconnecting with jittered
// exponential backoff and initial_resource_versions. It returns ctx.Err() or ErrClosed; a second
// concurrent Run returns ErrRunning.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer c.running.Store(false)
	failures := 0
	for {
		healthy, err := c.runStream(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if c.isClosed() {
			return ErrClosed
		}
		if healthy {
			failures = 0
		}
		failures++
		d := nextBackoff(c.opts.InitialBackoff, c.opts.MaxBackoff, failures, healthy && benign(err), randInt64N)
		c.log.Warn("xds stream ended; reconnecting", "error", err, "attempt", failures, "backoff", d)
		if err := sleep(ctx, d); err != nil {
			return err
		}
	}
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// runStream opens one stream, subscribes every type and processes responses until the stream fails.
// healthy reports that at least one response arrived.
func (c *Client) runStream(ctx context.Context) (healthy bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// WaitForReady: while istiod is unreachable the call waits for gRPC's own reconnect (with its backoff)
	// instead of failing at once and adding this loop's backoff on top of it.
	s, err := discovery.NewAggregatedDiscoveryServiceClient(c.conn).DeltaAggregatedResources(sctx, grpc.WaitForReady(true))
	if err != nil {
		return false, fmt.Errorf("open delta ads stream: %w", err)
	}
	as := &activeStream{s: s}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false, ErrClosed
	}
	reqs := c.initialRequestsLocked()
	// Hold the send lock until the initial requests are out, so that a concurrent Subscribe that sees the new
	// stream cannot overtake them.
	as.mu.Lock()
	c.cur = as
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.cur == as {
			c.cur = nil
		}
		c.mu.Unlock()
	}()
	for _, r := range reqs {
		if err := s.Send(r); err != nil {
			as.mu.Unlock()
			return false, fmt.Errorf("send initial request %s: %w", r.GetTypeUrl(), err)
		}
		c.log.Debug("xds subscribed", "type", r.GetTypeUrl(), "initial_versions", len(r.GetInitialResourceVersions()),
			"subscribe", len(r.GetResourceNamesSubscribe()))
	}
	as.mu.Unlock()

	seen := map[string]bool{}
	for {
		resp, err := s.Recv()
		if err != nil {
			return healthy, fmt.Errorf("receive: %w", err)
		}
		healthy = true
		typeURL := resp.GetTypeUrl()
		first := !seen[typeURL]
		seen[typeURL] = true
		// resp is not used after this call, so the handler's dropping of bodies frees them.
		ack := c.handle(sctx, resp, first)
		if err := as.send(ack); err != nil {
			return healthy, fmt.Errorf("send ack: %w", err)
		}
	}
}

// initialRequestsLocked builds the first request of every type for a new stream. Requires c.mu.
func (c *Client) initialRequestsLocked() []*discovery.DeltaDiscoveryRequest {
	out := make([]*discovery.DeltaDiscoveryRequest, 0, len(c.order))
	for _, t := range c.order {
		ts := c.types[t]
		r := &discovery.DeltaDiscoveryRequest{Node: c.node, TypeUrl: t}
		var ivs map[string]string
		if len(ts.versions) > 0 {
			ivs = maps.Clone(ts.versions)
		}
		if ts.sub.OnDemand {
			names := slices.Sorted(maps.Keys(ts.names))
			r.ResourceNamesSubscribe = append([]string{Wildcard}, names...)
			r.ResourceNamesUnsubscribe = []string{Wildcard}
		}
		r.InitialResourceVersions = ivs
		out = append(out, r)
	}
	return out
}

// handle passes resp to its handler, records versions and resolves on-demand waiters, and returns the
// ACK or NACK to send.
func (c *Client) handle(ctx context.Context, resp *discovery.DeltaDiscoveryResponse, first bool) *discovery.DeltaDiscoveryRequest {
	ack := &discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
	ts := c.types[resp.GetTypeUrl()]
	if ts == nil {
		msg := fmt.Sprintf("unsubscribed type %s", resp.GetTypeUrl())
		ack.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: msg}
		c.log.Warn("xds response for an unsubscribed type", "type", resp.GetTypeUrl())
		return ack
	}
	u := &Update{TypeURL: resp.GetTypeUrl(), Removed: resp.GetRemovedResources(), First: first,
		Nonce: resp.GetNonce(), SystemVersion: resp.GetSystemVersionInfo(),
		Resources: make([]Resource, len(resp.GetResources()))}
	for i, r := range resp.GetResources() {
		u.Resources[i] = Resource{Name: r.GetName(), Version: r.GetVersion(), Aliases: r.GetAliases(), Body: r.GetResource()}
	}
	start := time.Now()
	rejected := ts.sub.Handler.HandleUpdate(ctx, u)
	took := time.Since(start)

	var rejByName map[string]Rejection
	if len(rejected) > 0 {
		rejByName = make(map[string]Rejection, len(rejected))
		for _, r := range rejected {
			rejByName[r.Name] = r
		}
	}
	c.mu.Lock()
	ts.stats.Responses++
	for _, name := range u.Removed {
		delete(ts.versions, name)
		c.resolveLocked(ts, name, false)
	}
	for i := range u.Resources {
		r := &u.Resources[i]
		if rej, bad := rejByName[r.Name]; bad && !rej.Keep {
			delete(ts.versions, r.Name)
		} else {
			ts.versions[r.Name] = r.Version
		}
		c.resolveLocked(ts, r.Name, true)
		for _, a := range r.Aliases {
			ts.aliases[a] = r.Name
			c.resolveLocked(ts, a, true)
		}
	}
	if len(rejected) > 0 {
		ts.stats.NACKs++
		ts.stats.Rejected += uint64(len(rejected))
		ack.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: NACKMessage(rejected)}
		ts.stats.LastNACK = ack.ErrorDetail.Message
	} else {
		ts.stats.ACKs++
	}
	ts.stats.Held = len(ts.versions)
	c.mu.Unlock()

	if ack.ErrorDetail != nil {
		c.log.Warn("xds rejected resources", "type", u.TypeURL, "nonce", u.Nonce, "rejected", len(rejected),
			"of", len(u.Resources), "detail", ack.ErrorDetail.Message)
	}
	c.log.Debug("xds response applied", "type", u.TypeURL, "nonce", u.Nonce, "resources", len(u.Resources),
		"removed", len(u.Removed), "first", first, "took", took)
	return ack
}

// resolveLocked wakes the waiters of an on-demand name. Requires c.mu.
func (c *Client) resolveLocked(ts *typeState, name string, found bool) {
	n := ts.names[name]
	if n == nil {
		return
	}
	n.resolved, n.found = true, found
	for _, w := range n.waiters {
		close(w)
	}
	n.waiters = nil
}

// NACKMessage formats rejections as ztunnel does: "<name>: <reason>" joined with "; ".
func NACKMessage(rejected []Rejection) string {
	parts := make([]string, 0, len(rejected))
	for _, r := range rejected {
		reason := "rejected"
		if r.Err != nil {
			reason = r.Err.Error()
		}
		parts = append(parts, r.Name+": "+reason)
	}
	return strings.Join(parts, "; ")
}

// Subscribe adds names to an on-demand subscription without waiting for them.
func (c *Client) Subscribe(typeURL string, names ...string) error {
	_, err := c.subscribe(typeURL, names, false)
	return err
}

// Fetch subscribes an on-demand type to name (a resource name or, for istiod's Address type, an alias such
// as "<network>/<ip>") and waits until a response mentions it. It reports whether the resource exists:
// false when the server answered with a removal. A name already resolved returns at once.
func (c *Client) Fetch(ctx context.Context, typeURL, name string) (bool, error) {
	w, err := c.subscribe(typeURL, []string{name}, true)
	if err != nil {
		return false, err
	}
	if w.ch != nil {
		select {
		case <-ctx.Done():
			c.dropWaiter(typeURL, name, w.ch)
			return false, ctx.Err()
		case <-w.ch:
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false, ErrClosed
	}
	ts := c.types[typeURL]
	if _, ok := ts.versions[name]; ok {
		return true, nil
	}
	if _, ok := ts.aliases[name]; ok {
		return true, nil
	}
	n := ts.names[name]
	return n != nil && n.found, nil
}

type waiter struct{ ch chan struct{} }

// subscribe records names and sends a subscription for the new ones on the open stream (a later stream
// resubscribes them in its initial request). With wait, it registers a waiter for names[0] unless that
// name is already resolved.
func (c *Client) subscribe(typeURL string, names []string, wait bool) (waiter, error) {
	var w waiter
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return w, ErrClosed
	}
	ts := c.types[typeURL]
	if ts == nil {
		c.mu.Unlock()
		return w, fmt.Errorf("subscribe %s: %w", typeURL, ErrUnknownType)
	}
	if !ts.sub.OnDemand {
		c.mu.Unlock()
		return w, fmt.Errorf("subscribe %s: %w", typeURL, ErrNotOnDemand)
	}
	var fresh []string
	for i, name := range names {
		n := ts.names[name]
		if n == nil {
			if len(ts.names) >= c.opts.MaxOnDemandNames {
				for _, f := range fresh { // all or nothing
					delete(ts.names, f)
				}
				c.mu.Unlock()
				return waiter{}, fmt.Errorf("subscribe %s %s: %w (%d)", typeURL, name, ErrTooManyNames, c.opts.MaxOnDemandNames)
			}
			n = &onDemandName{}
			ts.names[name] = n
			fresh = append(fresh, name)
			if _, held := ts.versions[name]; held {
				n.resolved, n.found = true, true
			} else if _, held := ts.aliases[name]; held {
				n.resolved, n.found = true, true
			}
		}
		if wait && i == 0 && !n.resolved {
			w.ch = make(chan struct{})
			n.waiters = append(n.waiters, w.ch)
		}
	}
	as := c.cur
	c.mu.Unlock()
	if len(fresh) > 0 && as != nil {
		if err := as.send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: fresh}); err != nil {
			// The stream is failing; Run reconnects and the initial request carries the names.
			c.log.Debug("xds subscribe on a failing stream", "type", typeURL, "error", err)
		}
	}
	return w, nil
}

// Forget drops on-demand names that name nothing the client holds: names the server answered as absent,
// or never answered, and that no Fetch is waiting for. It unsubscribes them on the open stream (a later
// stream's initial request leaves them out) and reports how many it dropped. Names that resolved to a
// resource, or are aliases of one, stay subscribed so that the resource keeps its updates; so do names
// a Fetch still waits for. A caller that learned a name is absent keeps that answer itself (the agent's
// negative cache): the subscription then holds only what exists, however many addresses pods try.
func (c *Client) Forget(typeURL string, names ...string) (int, error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return 0, ErrClosed
	}
	ts := c.types[typeURL]
	if ts == nil {
		c.mu.Unlock()
		return 0, fmt.Errorf("forget %s: %w", typeURL, ErrUnknownType)
	}
	if !ts.sub.OnDemand {
		c.mu.Unlock()
		return 0, fmt.Errorf("forget %s: %w", typeURL, ErrNotOnDemand)
	}
	var gone []string
	for _, name := range names {
		n := ts.names[name]
		if n == nil || len(n.waiters) > 0 || n.found {
			continue
		}
		if _, held := ts.versions[name]; held {
			continue
		}
		if _, held := ts.aliases[name]; held {
			continue
		}
		delete(ts.names, name)
		gone = append(gone, name)
	}
	as := c.cur
	c.mu.Unlock()
	if len(gone) > 0 && as != nil {
		if err := as.send(&discovery.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesUnsubscribe: gone}); err != nil {
			c.log.Debug("xds unsubscribe on a failing stream", "type", typeURL, "error", err)
		}
	}
	return len(gone), nil
}

func (c *Client) dropWaiter(typeURL, name string, ch chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.types[typeURL].names[name]; n != nil {
		n.waiters = slices.DeleteFunc(n.waiters, func(x chan struct{}) bool { return x == ch })
	}
}

// Stats returns the counters of typeURL.
func (c *Client) Stats(typeURL string) Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ts := c.types[typeURL]; ts != nil {
		st := ts.stats
		st.OnDemandNames = len(ts.names)
		return st
	}
	return Stats{}
}

// Versions returns a copy of the resource versions held for typeURL: what the next stream sends as
// initial_resource_versions.
func (c *Client) Versions(typeURL string) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ts := c.types[typeURL]; ts != nil {
		return maps.Clone(ts.versions)
	}
	return nil
}
