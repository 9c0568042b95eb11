package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// WorkloadAPIOptions configures NewWorkloadAPI.
type WorkloadAPIOptions struct {
	// Address of the Workload API, e.g. "unix:///run/spire/agent.sock". Empty uses SPIFFE_ENDPOINT_SOCKET.
	Address string
	// OnUpdate, if set, is called from Run's goroutine with every identity whose SVID appeared or changed,
	// after the new SVID is available to Issue. Wire it to Manager.Refresh to hand rotations over promptly.
	OnUpdate func(spiffeid.ID)
	// Logger; nil discards.
	Logger *slog.Logger
}

// WorkloadAPI is an Issuer backed by the SPIFFE Workload API (for example a SPIRE agent). The agent attests
// this process and streams every X509-SVID registered for it, rotating them itself; Issue hands out the
// latest SVID for the requested identity. Run must be running for Issue to succeed.
type WorkloadAPI struct {
	opts WorkloadAPIOptions
	log  *slog.Logger

	mu      sync.Mutex
	certs   map[spiffeid.ID]*Certificate // latest SVIDs with their trust domain's bundle
	synced  bool                         // a first X509 context arrived
	ready   chan struct{}                // closed when synced
	lastErr error                        // latest watch error
}

// NewWorkloadAPI returns an Issuer that reads SVIDs from the Workload API once Run is running.
func NewWorkloadAPI(opts WorkloadAPIOptions) *WorkloadAPI {
	w := &WorkloadAPI{opts: opts, log: opts.Logger, certs: map[spiffeid.ID]*Certificate{}, ready: make(chan struct{})}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	return w
}

// Run connects to the Workload API and follows X509-SVID updates until ctx ends, reconnecting with the
// client's backoff on errors. It returns nil when ctx ends.
func (w *WorkloadAPI) Run(ctx context.Context) error {
	var opts []workloadapi.ClientOption
	if w.opts.Address != "" {
		opts = append(opts, workloadapi.WithAddr(w.opts.Address))
	}
	client, err := workloadapi.New(ctx, opts...)
	if err != nil {
		return fmt.Errorf("run workload api: %w", err)
	}
	defer func() { _ = client.Close() }()
	err = client.WatchX509Context(ctx, (*x509Watcher)(w))
	if ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("run workload api: %w", err)
}

// Issue returns the latest SVID for id. It waits for the first update from the Workload API (bounded by ctx)
// and reports ErrNoSVID if the agent offers no SVID for id.
func (w *WorkloadAPI) Issue(ctx context.Context, id spiffeid.ID) (*Certificate, error) {
	select {
	case <-w.ready:
	case <-ctx.Done():
		w.mu.Lock()
		last := w.lastErr
		w.mu.Unlock()
		if last != nil {
			return nil, fmt.Errorf("issue %s from workload api: %w (last watch error: %w)", id, ctx.Err(), last)
		}
		return nil, fmt.Errorf("issue %s from workload api: %w", id, ctx.Err())
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if c := w.certs[id]; c != nil {
		return c, nil
	}
	return nil, fmt.Errorf("issue %s from workload api: %w", id, ErrNoSVID)
}

// x509Watcher adapts WorkloadAPI to workloadapi.X509ContextWatcher without exporting the callbacks.
type x509Watcher WorkloadAPI

func (x *x509Watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	w := (*WorkloadAPI)(x)
	next := make(map[spiffeid.ID]*Certificate, len(c.SVIDs))
	var changed []spiffeid.ID
	w.mu.Lock()
	for _, s := range c.SVIDs {
		if _, dup := next[s.ID]; dup {
			continue // several entries for one ID: keep the first, as DefaultSVID does
		}
		b, err := c.Bundles.GetX509BundleForTrustDomain(s.ID.TrustDomain())
		if err != nil {
			w.log.Warn("workload api sent an SVID without its bundle", "identity", s.ID.String(), "err", err)
			continue
		}
		cert, err := NewCertificate(s.ID, s.Certificates, s.PrivateKey, b.X509Authorities())
		if err != nil {
			w.log.Warn("workload api sent an unusable SVID", "identity", s.ID.String(), "err", err)
			continue
		}
		if old := w.certs[s.ID]; old == nil || old.Leaf().SerialNumber.Cmp(cert.Leaf().SerialNumber) != 0 {
			changed = append(changed, s.ID)
		} else {
			cert = old
		}
		next[s.ID] = cert
	}
	w.certs = next
	w.lastErr = nil
	if !w.synced {
		w.synced = true
		close(w.ready)
	}
	w.mu.Unlock()
	w.log.Debug("workload api update", "svids", len(next), "changed", len(changed))
	if w.opts.OnUpdate != nil {
		for _, id := range changed {
			w.opts.OnUpdate(id)
		}
	}
}

func (x *x509Watcher) OnX509ContextWatchError(err error) {
	w := (*WorkloadAPI)(x)
	if errors.Is(err, context.Canceled) {
		return
	}
	w.mu.Lock()
	w.lastErr = err
	w.mu.Unlock()
	w.log.Warn("workload api watch error", "err", err)
}
