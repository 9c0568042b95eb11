package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/xdsclient"
)

// SourceOptions configures NewSource. The transport fields mean what they mean in xdsclient.Options.
type SourceOptions struct {
	// Address of istiod's xDS endpoint, host:port (ztunnel's XDS_ADDRESS without the scheme). Required.
	Address string
	// Plaintext disables TLS (istiod's 15010; development and tests only).
	Plaintext bool
	// RootCertFile holds the roots istiod's serving certificate chains to (XDS_ROOT_CA). Required unless
	// Plaintext.
	RootCertFile string
	// ServerName and AltServerName are the names istiod's certificate may carry (default: the host of
	// Address; ztunnel's ALT_XDS_HOSTNAME).
	ServerName, AltServerName string
	// TokenFile is the projected service-account token (AUTH_TOKEN), read on every stream.
	TokenFile string
	// ClusterID is the clusterid header (default Kubernetes).
	ClusterID string
	// Headers are extra request headers (XDS_HEADER_*).
	Headers map[string]string
	// Node identifies this node agent to istiod.
	Node xdsclient.NodeInfo
	// OnDemand makes the Address subscription on-demand (XDS_ON_DEMAND): nothing is pushed until Lookup
	// asks, except what istiod adds on its own (the workloads of this node). Authorization stays wildcard.
	OnDemand bool
	// Store receives the state. Required.
	Store *state.Store
	// InitialBackoff and MaxBackoff shape reconnects (xdsclient defaults).
	InitialBackoff, MaxBackoff time.Duration
	// Logger; nil discards.
	Logger *slog.Logger
	// DialOptions are appended to the gRPC dial options.
	DialOptions []grpc.DialOption
}

// Source feeds a state.Store from istiod over delta xDS. Create it with NewSource, run it with Run. Ready is
// closed once the first response of every wildcard type has been applied (istiod's first response of a
// type is its complete state), which is when a node agent may report ready. While istiod is unreachable the
// store keeps the last good state and Run keeps reconnecting.
type Source struct {
	client    *xdsclient.Client
	addresses *AddressHandler
	policies  *AuthorizationHandler
	log       *slog.Logger

	ready     chan struct{}
	readyOnce sync.Once

	mu      sync.Mutex
	pending map[string]bool // guarded by mu; wildcard types whose first response is outstanding
}

// NewSource validates opts and prepares the client; nothing is dialled until Run.
func NewSource(opts SourceOptions) (*Source, error) {
	if opts.Store == nil {
		return nil, errors.New("create xds source: nil store")
	}
	s := &Source{log: opts.Logger, ready: make(chan struct{}), pending: map[string]bool{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.addresses = NewAddressHandler(AddressHandlerOptions{Store: opts.Store, AllowUnknownWaypoints: opts.OnDemand,
		Logger: s.log})
	s.policies = NewAuthorizationHandler(opts.Store, s.log)
	subs := []xdsclient.Subscription{
		{TypeURL: AddressTypeURL, Handler: s.track(AddressTypeURL, s.addresses, !opts.OnDemand), OnDemand: opts.OnDemand},
		{TypeURL: AuthorizationTypeURL, Handler: s.track(AuthorizationTypeURL, s.policies, true)},
	}
	c, err := xdsclient.New(xdsclient.Options{
		Address: opts.Address, Plaintext: opts.Plaintext, RootCertFile: opts.RootCertFile,
		ServerName: opts.ServerName, AltServerName: opts.AltServerName, TokenFile: opts.TokenFile,
		ClusterID: opts.ClusterID, Headers: opts.Headers, Node: opts.Node, Subscriptions: subs,
		InitialBackoff: opts.InitialBackoff, MaxBackoff: opts.MaxBackoff, Logger: s.log, DialOptions: opts.DialOptions,
	})
	if err != nil {
		return nil, fmt.Errorf("create xds source: %w", err)
	}
	s.client = c
	return s, nil
}

// track wraps h so that the first response of a wildcard type counts towards readiness.
func (s *Source) track(typeURL string, h xdsclient.Handler, wildcard bool) xdsclient.Handler {
	if !wildcard {
		return h
	}
	s.pending[typeURL] = true
	return xdsclient.HandlerFunc(func(ctx context.Context, u *xdsclient.Update) []xdsclient.Rejection {
		rej := h.HandleUpdate(ctx, u)
		s.mu.Lock()
		delete(s.pending, typeURL)
		done := len(s.pending) == 0
		s.mu.Unlock()
		if done {
			s.readyOnce.Do(func() {
				s.log.Info("xds state complete", "type", typeURL)
				close(s.ready)
			})
		}
		return rej
	})
}

// Run connects to istiod and keeps the store up to date until ctx ends; it then closes the client and
// returns ctx.Err(). It may be called once.
func (s *Source) Run(ctx context.Context) error {
	err := s.client.Run(ctx)
	if cerr := s.client.Close(); cerr != nil && err == nil {
		err = cerr
	}
	return err
}

// Close stops a running Source (Run returns) and releases the connection.
func (s *Source) Close() error { return s.client.Close() }

// Ready is closed after the first complete snapshot of every wildcard type has been applied.
func (s *Source) Ready() <-chan struct{} { return s.ready }

// Lookup asks istiod for one Address on demand: a workload UID, "<namespace>/<hostname>" of a service, or
// "<network>/<ip>". It waits until istiod answers and reports whether the resource exists; the store holds
// it by then. A key istiod does not know is unsubscribed again at once (the caller caches that answer),
// so the subscription holds only keys that exist, whatever addresses pods dial; ztunnel keeps them all.
// It fails with xdsclient.ErrNotOnDemand unless SourceOptions.OnDemand was set, and with
// xdsclient.ErrTooManyNames when the subscription is full.
func (s *Source) Lookup(ctx context.Context, key string) (bool, error) {
	ok, err := s.client.Fetch(ctx, AddressTypeURL, key)
	if err != nil {
		return false, fmt.Errorf("look up %s: %w", key, err)
	}
	if !ok {
		if _, err := s.client.Forget(AddressTypeURL, key); err != nil {
			return false, fmt.Errorf("forget %s: %w", key, err)
		}
	}
	return ok, nil
}

// Stats returns the client's counters per type URL.
func (s *Source) Stats() map[string]xdsclient.Stats {
	return map[string]xdsclient.Stats{
		AddressTypeURL:       s.client.Stats(AddressTypeURL),
		AuthorizationTypeURL: s.client.Stats(AuthorizationTypeURL),
	}
}

// Parked returns the Address resources waiting for their waypoint service (see AddressHandler).
func (s *Source) Parked() []string { return s.addresses.Parked() }
