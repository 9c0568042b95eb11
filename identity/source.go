package identity

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Certificate sources, the values of both processes' --identity flag.
const (
	SourceLocalCA = "local-ca"
	SourceIstiod  = "istiod"
	SourceSPIFFE  = "spiffe"
)

// IssuerOptions choose and configure a process's certificate source (NewIssuer).
type IssuerOptions struct {
	// Source is SourceLocalCA (default), SourceIstiod or SourceSPIFFE.
	Source string
	// CADir keeps the local CA's root; TrustDomain is the one it signs for.
	CADir, TrustDomain string
	// TTL is the lifetime of certificates from the local CA, or the one requested from istiod.
	TTL time.Duration
	// CAAddress is istiod's CA (host:port); CARootFile the roots its serving certificate chains to;
	// TokenFile the service-account token sent as bearer token; ClusterID the clusterid header.
	CAAddress, CARootFile, TokenFile, ClusterID string
	// Impersonate asks istiod for the identities of other workloads, as a node agent does for the pods of
	// its node; a waypoint asks for its own identity only.
	Impersonate bool
	// SPIFFESocket is the Workload API address (for example unix:///run/spire/agent.sock).
	SPIFFESocket string
	// OnUpdate, with SourceSPIFFE, is called with every identity whose SVID rotated; wire it to
	// Manager.Refresh.
	OnUpdate func(spiffeid.ID)
	Logger   *slog.Logger
}

// Validate reports the first required setting the chosen source misses. The messages name the flags
// of cmd/ambit, which both processes share.
func (o IssuerOptions) Validate() error {
	switch o.Source {
	case "", SourceLocalCA:
		if o.CADir == "" {
			return errors.New("--ca-dir is required with the local-ca identity source")
		}
	case SourceIstiod:
		if o.CAAddress == "" {
			return errors.New("--ca-address is required with the istiod identity source")
		}
	case SourceSPIFFE:
	default:
		return fmt.Errorf("unknown identity source %q (local-ca, istiod or spiffe)", o.Source)
	}
	return nil
}

// NewIssuer builds the issuer o selects. Some issuers need more than Issue: the SPIFFE Workload API
// client must be running (it implements Run(context.Context) error) and the istiod client holds a
// connection until closed (it implements io.Closer); the caller runs and closes them.
func NewIssuer(o IssuerOptions) (Issuer, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch o.Source {
	case SourceIstiod:
		ca, err := NewIstiodCA(IstiodCAOptions{
			Address: o.CAAddress, RootCertFile: o.CARootFile, TokenFile: o.TokenFile,
			ClusterID: o.ClusterID, Impersonate: o.Impersonate, TTL: o.TTL,
			Logger: log.With("component", "istiod-ca"),
		})
		if err != nil {
			return nil, fmt.Errorf("istiod CA client: %w", err)
		}
		return ca, nil
	case SourceSPIFFE:
		return NewWorkloadAPI(WorkloadAPIOptions{Address: o.SPIFFESocket, OnUpdate: o.OnUpdate,
			Logger: log.With("component", "workload-api")}), nil
	default:
		ca, err := NewLocalCA(LocalCAOptions{Dir: o.CADir, TrustDomain: o.TrustDomain, TTL: o.TTL,
			Logger: log.With("component", "local-ca")})
		if err != nil {
			return nil, fmt.Errorf("local CA: %w", err)
		}
		return ca, nil
	}
}
