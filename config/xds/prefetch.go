package xds

import (
	"context"
	"log/slog"
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// CertWarmer is the part of identity.Manager that CertPrefetcher drives.
type CertWarmer interface {
	Prefetch(id spiffeid.ID)
	Forget(id spiffeid.ID)
}

var _ CertWarmer = (*identity.Manager)(nil)

// LocalIdentities returns, sorted and without duplicates, the identities this node agent needs certificates
// for: those of the workloads on node that receive HBONE (captured by the agent) or terminate it themselves,
// ztunnel's prefetch rule. Identities that are not valid SPIFFE IDs are returned in invalid.
func LocalIdentities(ws []*state.Workload, node string) (ids []spiffeid.ID, invalid []string) {
	for _, w := range ws {
		if w.Node != node || node == "" || (w.Protocol != state.TunnelHBONE && !w.NativeTunnel) {
			continue
		}
		id, err := spiffeid.FromString(w.Identity())
		if err != nil {
			invalid = append(invalid, w.Identity())
			continue
		}
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b spiffeid.ID) int { return strings.Compare(a.String(), b.String()) })
	return slices.Compact(ids), invalid
}

// CertPrefetcherOptions configures NewCertPrefetcher.
type CertPrefetcherOptions struct {
	// Store is watched for workloads on Node. Required.
	Store *state.Store
	// Certs is the certificate manager (an *identity.Manager over identity.IstiodCA with Impersonate set,
	// for istiod). Required.
	Certs CertWarmer
	// Node is this node's Kubernetes name (NODE_NAME). Required.
	Node string
	// Logger; nil discards.
	Logger *slog.Logger
}

// CertPrefetcher keeps a certificate manager warm for the identities of the node's workloads: it prefetches
// an identity when its first workload appears on the node and forgets it when the last one leaves. With
// istiod's CA each request impersonates the workload's identity, which istiod grants only to the trusted
// node agent account for service accounts that have a pod on the caller's node.
type CertPrefetcher struct {
	opts CertPrefetcherOptions
	log  *slog.Logger
}

// NewCertPrefetcher returns a prefetcher; start it with Run.
func NewCertPrefetcher(opts CertPrefetcherOptions) *CertPrefetcher {
	p := &CertPrefetcher{opts: opts, log: opts.Logger}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	return p
}

// Run follows the store until ctx ends, then returns ctx.Err(). Identities it prefetched stay managed
// after it returns (the manager's Close releases them).
func (p *CertPrefetcher) Run(ctx context.Context) error {
	held := map[spiffeid.ID]bool{}
	for {
		changed := p.opts.Store.Changed()
		ids, invalid := LocalIdentities(p.opts.Store.WorkloadsOnNode(p.opts.Node), p.opts.Node)
		for _, s := range invalid {
			p.log.Warn("workload identity is not a SPIFFE ID; no certificate", "identity", s)
		}
		now := make(map[spiffeid.ID]bool, len(ids))
		for _, id := range ids {
			now[id] = true
			if !held[id] {
				p.log.Debug("prefetching certificate", "identity", id.String())
				p.opts.Certs.Prefetch(id)
			}
		}
		for id := range held {
			if !now[id] {
				p.log.Debug("forgetting certificate", "identity", id.String())
				p.opts.Certs.Forget(id)
			}
		}
		held = now
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}
