package eastwest

import (
	"cmp"
	"errors"
	"net/netip"
	"time"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// Default listen addresses: HBONE on 15008 (the port of the istio-east-west Gateway's HBONE listener),
// metrics and readiness on the waypoint's ports.
var (
	DefaultHBONEAddr     = netip.AddrPortFrom(netip.IPv6Unspecified(), state.HBONEPort)
	DefaultMetricsAddr   = netip.MustParseAddrPort("[::]:15020")
	DefaultReadinessAddr = netip.MustParseAddrPort("[::]:15021")
)

// Config configures `ambit eastwest`. Each field has a flag and an environment variable (cmd/ambit);
// the zero value of a field means its default.
type Config struct {
	// Name and Namespace are the east-west Gateway's; ServiceAccount defaults to Name, so the identity
	// is spiffe://<td>/ns/<Namespace>/sa/<ServiceAccount>.
	Name, Namespace, ServiceAccount string
	// Network is the network this gateway serves: it only relays to endpoints on it. Required.
	Network string
	// PodIP and PodName describe this instance to istiod.
	PodIP   netip.Addr
	PodName string

	// ConfigFiles are local Kubernetes YAML files or directories (the state, unless XDSAddress is set),
	// re-read every ConfigPoll (default 1 s).
	ConfigFiles []string
	ConfigPoll  time.Duration
	// TrustDomain (default cluster.local), DomainSuffix (default cluster.local), ClusterID (default
	// Kubernetes) of the compiled files.
	TrustDomain, DomainSuffix, ClusterID string
	// Identity is the certificate source (identity.SourceLocalCA, the default, SourceIstiod or
	// SourceSPIFFE) with its settings.
	Identity, CADir, CAAddress, CARootFile, TokenFile string
	SPIFFESocket                                      string
	CertTTL                                           time.Duration
	// XDSAddress, XDSRootFile and XDSPlaintext take the state from istiod over delta xDS instead.
	XDSAddress, XDSRootFile string
	XDSPlaintext            bool
	NodeName                string

	// NetNS runs the listeners and dials in this network namespace (tests).
	NetNS string
	// HBONEAddr (default [::]:15008), MetricsAddr and ReadinessAddr (served when valid).
	HBONEAddr, MetricsAddr, ReadinessAddr netip.AddrPort
	// ConnectTimeout bounds the TCP connect to an endpoint's :15008 (default 10 s); DrainTimeout the
	// drain of open streams at shutdown (default 5 s).
	ConnectTimeout, DrainTimeout time.Duration
}

func (c Config) withDefaults() Config {
	c.ServiceAccount = cmp.Or(c.ServiceAccount, c.Name)
	if !c.HBONEAddr.IsValid() {
		c.HBONEAddr = DefaultHBONEAddr
	}
	c.ConfigPoll = cmp.Or(c.ConfigPoll, time.Second)
	c.TrustDomain = cmp.Or(c.TrustDomain, state.DefaultTrustDomain)
	c.Identity = cmp.Or(c.Identity, identity.SourceLocalCA)
	c.PodName = cmp.Or(c.PodName, c.Name)
	c.ConnectTimeout = cmp.Or(c.ConnectTimeout, 10*time.Second)
	c.DrainTimeout = cmp.Or(c.DrainTimeout, 5*time.Second)
	return c
}

func (c Config) issuer() identity.IssuerOptions {
	return identity.IssuerOptions{Source: c.Identity, CADir: c.CADir, TrustDomain: c.TrustDomain, TTL: c.CertTTL,
		CAAddress: c.CAAddress, CARootFile: c.CARootFile, TokenFile: c.TokenFile, ClusterID: c.ClusterID,
		SPIFFESocket: c.SPIFFESocket}
}

// Validate reports the first problem with c (after defaults).
func (c Config) Validate() error {
	switch {
	case c.Name == "" || c.Namespace == "":
		return errors.New("--name and --namespace are required")
	case c.Network == "":
		return errors.New("--network is required: the gateway relays to the endpoints of one network")
	case len(c.ConfigFiles) == 0 && c.XDSAddress == "":
		return errors.New("a configuration source is required (--config-file or --xds-address)")
	case c.XDSAddress != "" && !c.XDSPlaintext && c.XDSRootFile == "":
		return errors.New("--xds-root-file is required unless --xds-plaintext")
	}
	return c.issuer().Validate()
}
