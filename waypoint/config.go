package waypoint

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"k8s.io/client-go/dynamic"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// L7 configuration sources (Config.L7Source).
const (
	L7SourceFile       = "file"
	L7SourceKubernetes = "kubernetes"
)

// Default listen addresses, those of istiod's waypoint template (as an Envoy waypoint).
var (
	DefaultHBONEAddr     = netip.AddrPortFrom(netip.IPv6Unspecified(), state.HBONEPort)
	DefaultMetricsAddr   = netip.MustParseAddrPort("[::]:15020")
	DefaultReadinessAddr = netip.MustParseAddrPort("[::]:15021")
)

// Config configures `ambit waypoint`. Each field has a flag and an environment variable (cmd/ambit);
// the zero value of a field means its default.
type Config struct {
	// Name and Namespace are the waypoint Gateway's; ServiceAccount defaults to Name (as istiod deploys
	// waypoints), so the identity is spiffe://<td>/ns/<Namespace>/sa/<ServiceAccount>.
	Name, Namespace, ServiceAccount string
	// PodIP is this instance's address (env INSTANCE_IP). It identifies the instance among the
	// waypoint's workloads, so that its own traffic to the workloads it serves goes direct.
	PodIP netip.Addr

	// ConfigFiles are local Kubernetes YAML files or directories, re-read when they change (every
	// ConfigPoll, default 1 s): the state (workloads, services) unless XDSAddress is set, and the L7
	// resources unless L7Source is kubernetes.
	ConfigFiles []string
	ConfigPoll  time.Duration
	// TrustDomain of identities (default cluster.local), DomainSuffix of service hostnames (default
	// cluster.local), ClusterID (default Kubernetes) and Network ("" by default).
	TrustDomain, DomainSuffix, ClusterID, Network string
	// Identity is the certificate source (identity.SourceLocalCA, the default, SourceIstiod or
	// SourceSPIFFE) with its settings; the waypoint asks only for its own identity.
	Identity, CADir, CAAddress, CARootFile, TokenFile string
	SPIFFESocket                                      string
	CertTTL                                           time.Duration
	// NetNS runs the listener and dials in this network namespace (tests run waypoints in lab pods).
	NetNS        string
	HBONEAddr    netip.AddrPort
	DrainTimeout time.Duration
	// MetricsAddr serves Prometheus metrics (/metrics and /stats/prometheus) when valid.
	MetricsAddr netip.AddrPort
	// ReadinessAddr serves GET /healthz/ready (200 once ready, 500 before and while draining) when valid:
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

	// HBONE bounds of the :15008 server and the upstream pools; zero takes hbone's default, negative
	// disables a timeout: HBONEHandshakeTimeout (10 s), HBONEIdleTimeout (a connection without streams,
	// 1 h), HBONEMaxConns (0: no cap), PoolIdleTimeout (upstream connections without streams, 5 min).
	HBONEHandshakeTimeout, HBONEIdleTimeout, PoolIdleTimeout time.Duration
	HBONEMaxConns                                            int
	// StreamIdleTimeout resets an HTTP stream that moves no data either way for this long: the HBONE
	// stream to an HTTP port and each request the L7 engine serves on it (default 5 min, Envoy's
	// stream_idle_timeout; negative: none). TCPIdleTimeout does the same for streams forwarded at L4
	// (default 1 h, Envoy's tcp_proxy idle_timeout; negative: none).
	StreamIdleTimeout, TCPIdleTimeout time.Duration
	// ResolvConf is the resolver configuration the L7 engine resolves DNS endpoints (ServiceEntry
	// resolution DNS) with, at request time, caching answers for their TTL (default /etc/resolv.conf: the
	// pod's resolver, as Envoy's).
	ResolvConf string
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	c.ServiceAccount = cmp.Or(c.ServiceAccount, c.Name)
	if !c.HBONEAddr.IsValid() {
		c.HBONEAddr = DefaultHBONEAddr
	}
	c.DrainTimeout = cmp.Or(c.DrainTimeout, 5*time.Second)
	c.ConfigPoll = cmp.Or(c.ConfigPoll, time.Second)
	c.TrustDomain = cmp.Or(c.TrustDomain, state.DefaultTrustDomain)
	c.Identity = cmp.Or(c.Identity, identity.SourceLocalCA)
	c.L7Source = cmp.Or(c.L7Source, L7SourceFile)
	c.PodName = cmp.Or(c.PodName, c.Name)
	c.StreamIdleTimeout = cmp.Or(c.StreamIdleTimeout, hbone.DefaultStreamIdleTimeoutHTTP)
	c.TCPIdleTimeout = cmp.Or(c.TCPIdleTimeout, hbone.DefaultStreamIdleTimeoutTCP)
	return c
}

// issuer returns the certificate source settings.
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
	case !c.PodIP.IsValid():
		return errors.New("--pod-ip (INSTANCE_IP) is required")
	case len(c.ConfigFiles) == 0 && c.XDSAddress == "":
		return errors.New("a configuration source is required (--config-file or --xds-address)")
	case c.XDSAddress != "" && !c.XDSPlaintext && c.XDSRootFile == "":
		return errors.New("--xds-root-file is required unless --xds-plaintext")
	}
	if c.HBONEMaxConns < 0 {
		return fmt.Errorf("--hbone-max-connections %d: want 0 (no cap) or more", c.HBONEMaxConns)
	}
	if err := c.issuer().Validate(); err != nil {
		return err
	}
	switch c.L7Source {
	case L7SourceFile:
		if len(c.ConfigFiles) == 0 {
			return errors.New("the file L7 source needs --config-file (or use --l7-source kubernetes)")
		}
	case L7SourceKubernetes:
	default:
		return fmt.Errorf("unknown L7 source %q (file or kubernetes)", c.L7Source)
	}
	return nil
}
