package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/kubeapi"
	"github.com/ambit-mesh/ambit/redirect"
)

// Capture modes. CaptureNone runs without kernel capture (the listeners still work when traffic is
// sent to them directly), for development and tests that drive the listeners themselves.
const (
	CaptureAuto   = "auto"
	CaptureEBPF   = "ebpf"
	CaptureTPROXY = "tproxy"
	CaptureNone   = "none"
)

// Pod enrollment modes (Config.KubeEnroll).
const (
	KubeEnrollAuto = "auto"
	KubeEnrollOn   = "true"
	KubeEnrollOff  = "false"
)

// Config is everything `ambit agent` is configured with. Each field has a flag and an environment
// variable (see cmd/ambit, and the table in README.md); the zero value of a field means its default.
type Config struct {
	// NodeName is the Kubernetes node this agent serves (env NODE_NAME). Workloads whose node matches are
	// local: their traffic is captured and their certificates are requested.
	NodeName string `json:"nodeName"`
	// ConfigFiles are local Kubernetes YAML files or directories (env AMBIT_CONFIG_FILE). They are
	// re-read when they change; an invalid version is rejected and the last good state keeps serving.
	ConfigFiles []string `json:"configFiles"`
	// XDSAddress is istiod's xDS endpoint, host:port (env XDS_ADDRESS). With it, workloads, services and
	// policies come from istiod over delta xDS instead of ConfigFiles.
	XDSAddress string `json:"xdsAddress"`
	// XDSRootFile holds the roots istiod's serving certificate chains to (env XDS_ROOT_CA); XDSPlaintext
	// disables TLS (istiod's port 15010, for development).
	XDSRootFile  string `json:"xdsRootFile"`
	XDSPlaintext bool   `json:"xdsPlaintext"`
	// XDSOnDemand subscribes to addresses on demand (env XDS_ON_DEMAND, as ztunnel): istiod pushes this
	// node's workloads, and the agent asks for any other address when a connection needs it, waiting at
	// most XDSOnDemandTimeout (default DefaultXDSOnDemandTimeout) before treating it as unknown.
	XDSOnDemand        bool          `json:"xdsOnDemand"`
	XDSOnDemandTimeout time.Duration `json:"xdsOnDemandTimeout"`
	// PodName, PodNamespace, InstanceIP and ServiceAccount describe the agent's own pod to istiod
	// (POD_NAME, POD_NAMESPACE, INSTANCE_IP, SERVICE_ACCOUNT), as ztunnel's node metadata.
	PodName        string `json:"podName"`
	PodNamespace   string `json:"podNamespace"`
	InstanceIP     string `json:"instanceIp"`
	ServiceAccount string `json:"serviceAccount"`
	// KubeEnroll decides where the set of captured pods comes from (env AMBIT_KUBE_ENROLL): "true" takes it
	// from the Kubernetes API (this node's pods that istio-cni's default selector picks, Running with an IP;
	// see agent/kube) and sets the ambient.istio.io/redirection annotation once capture is in place, as
	// istio-cni does; "false" takes it from the state (the HBONE workloads of this node); "auto" (default)
	// means true when XDSAddress is set and Kubeconfig is set or in-cluster credentials exist.
	KubeEnroll string `json:"kubeEnroll"`
	// Kubeconfig is the kubeconfig file used by KubeEnroll (env KUBECONFIG; default in-cluster credentials).
	Kubeconfig string `json:"kubeconfig"`
	// KubeClient, when set, is the API client KubeEnroll uses instead of Kubeconfig (tests).
	KubeClient kubeapi.Client `json:"-"`
	// ConfigPoll is how often the files are checked for changes (default 1 s).
	ConfigPoll time.Duration `json:"configPoll"`
	// TrustDomain of workload identities (default cluster.local), DomainSuffix of service hostnames
	// (default cluster.local), ClusterID (default Kubernetes) and Network ("" by default).
	TrustDomain  string `json:"trustDomain"`
	DomainSuffix string `json:"domainSuffix"`
	ClusterID    string `json:"clusterId"`
	Network      string `json:"network"`

	// Identity is the certificate source: identity.SourceLocalCA (default), SourceIstiod or SourceSPIFFE.
	Identity string `json:"identity"`
	// CADir keeps the local CA's root (created on first start, key mode 0600).
	CADir string `json:"caDir"`
	// CertTTL is the lifetime of certificates from the local CA, or requested from istiod (default 24 h).
	CertTTL time.Duration `json:"certTtl"`
	// CAAddress is istiod's CA (host:port, env CA_ADDRESS); CARootFile the PEM root istiod's serving
	// certificate chains to; TokenFile the projected service-account token sent as bearer token.
	CAAddress  string `json:"caAddress"`
	CARootFile string `json:"caRootFile"`
	TokenFile  string `json:"tokenFile"`
	// SPIFFESocket is the SPIFFE Workload API address (for example unix:///run/spire/agent.sock).
	SPIFFESocket string `json:"spiffeSocket"`

	// Capture is the capture mode: auto (default), ebpf, tproxy or none.
	Capture string `json:"capture"`
	// NetNS runs listeners, capture and dials in this network namespace path (default: the process's).
	NetNS string `json:"netns"`
	// Uplinks are the node's interfaces towards other nodes (default: those of the default routes).
	Uplinks []string `json:"uplinks"`
	// PinDir is the bpffs directory for pinned capture state (default /sys/fs/bpf/ambit).
	PinDir string `json:"pinDir"`
	// AllowEphemeralPins lets eBPF capture start on a PinDir that will not outlive the process (a bpffs
	// private to its mount namespace, as under `ip netns exec`), warning loudly; by default the agent
	// refuses to start (redirect.ErrEphemeralPins).
	AllowEphemeralPins bool `json:"allowEphemeralPins"`

	// DNSCapture turns the DNS proxy on (ztunnel's DNS_CAPTURE; `ambit agent` defaults it to true): the
	// queries of enrolled pods to port 53 (UDP and TCP) are captured to DNSAddr and answered from the
	// mesh state (Services, ServiceEntry hosts) or forwarded to DNSUpstreams (see agent/dnsproxy).
	DNSCapture bool `json:"dnsCapture"`
	// DNSAddr is the DNS proxy's UDP socket and TCP listener (default [::]:15053, node namespace).
	DNSAddr netip.AddrPort `json:"dnsAddr"`
	// DNSUpstreams are the resolvers other names are forwarded to (ip or ip:port; default: the
	// nameservers of DNSResolvConf).
	DNSUpstreams []string `json:"dnsUpstreams"`
	// DNSResolvConf is read for the upstreams when DNSUpstreams is empty (default /etc/resolv.conf).
	DNSResolvConf string `json:"dnsResolvConf"`

	// Listen addresses.
	OutboundAddr netip.AddrPort `json:"outboundAddr"`
	InboundAddr  netip.AddrPort `json:"inboundAddr"`
	// InboundDNATAddr receives connections to enrolled pods that the node destination-NATed itself (kube-proxy's
	// ClusterIP, NodePort, LoadBalancer); bound only with kernel capture (see redirect.Listeners.InboundDNAT).
	InboundDNATAddr netip.AddrPort `json:"inboundDnatAddr"`
	HBONEAddr       netip.AddrPort `json:"hboneAddr"`
	AdminAddr       netip.AddrPort `json:"adminAddr"`
	MetricsAddr     netip.AddrPort `json:"metricsAddr"`
	ReadinessAddr   netip.AddrPort `json:"readinessAddr"`
	// AdminAllowRemote permits an AdminAddr that is not a loopback address (env AMBIT_ADMIN_ALLOW_REMOTE).
	// The admin API changes state (/logging, /quitquitquit) and serves pprof, so by default Validate
	// refuses anything but loopback, as ztunnel binds its admin port to localhost only.
	AdminAllowRemote bool `json:"adminAllowRemote"`

	// DrainTimeout bounds graceful shutdown: open connections get this long to finish (default 5 s).
	DrainTimeout time.Duration `json:"drainTimeout"`
	// HandoffSocket, when set, is the unix socket path of the zero-gap restart (env AMBIT_HANDOFF_SOCKET;
	// the chart uses /var/run/ambit/handoff.sock): at start the agent takes the listening sockets of the
	// agent serving that path, if one does (the same kernel sockets, so no connection is refused or
	// queued while it starts), serves them once ready, then tells the old agent to stop accepting and
	// drain; it then serves the path itself for its own successor. Empty disables the hand-off: a
	// restarted agent binds anew after the old one closed its listeners.
	HandoffSocket string `json:"handoffSocket"`
	// ConnectTimeout bounds establishing an upstream: a TCP connect or an HBONE stream (default 10 s).
	ConnectTimeout time.Duration `json:"connectTimeout"`
	// HBONE bounds of the inbound :15008 server and the outbound pool; zero takes hbone's default,
	// negative disables a timeout. HBONEHandshakeTimeout bounds a connection's TLS handshake and HTTP/2
	// preface (10 s); HBONEIdleTimeout closes a connection without streams (1 h, Envoy's idle_timeout);
	// HBONEMaxConns caps open connections (0: none, as ztunnel; refused ones are counted in
	// ambit_hbone_server_connections_refused_total); HBONEStreamIdleTimeout resets a stream without data
	// either way (0: none, as ztunnel: the agent carries TCP that may idle for long); PoolIdleTimeout
	// closes outbound connections without streams (5 min, ztunnel's POOL_UNUSED_RELEASE_TIMEOUT).
	HBONEHandshakeTimeout  time.Duration `json:"hboneHandshakeTimeout"`
	HBONEIdleTimeout       time.Duration `json:"hboneIdleTimeout"`
	HBONEMaxConns          int           `json:"hboneMaxConns"`
	HBONEStreamIdleTimeout time.Duration `json:"hboneStreamIdleTimeout"`
	PoolIdleTimeout        time.Duration `json:"poolIdleTimeout"`
	// LogLevel, when set, is the level of the agent's logger, changed at runtime by the admin API.
	LogLevel *slog.LevelVar `json:"-"`
	// PreserveSourceIP makes connections to local pods come from the original client IP and HBONE
	// connections come from the source pod's IP, as ztunnel does (default true; needs capture).
	PreserveSourceIP *bool `json:"preserveSourceIp"`
}

// Default listen ports, as ztunnel.
var (
	DefaultOutboundAddr = netip.MustParseAddrPort("[::]:15001")
	DefaultInboundAddr  = netip.MustParseAddrPort("[::]:15006")
	// DefaultInboundDNATAddr is Ambit's own (ztunnel captures inside each pod, after the node's NAT).
	DefaultInboundDNATAddr = netip.MustParseAddrPort("[::]:15007")
	DefaultHBONEAddr       = netip.MustParseAddrPort("[::]:15008")
	DefaultAdminAddr       = netip.MustParseAddrPort("127.0.0.1:15000")
	DefaultMetricsAddr     = netip.MustParseAddrPort("[::]:15020")
	DefaultReadinessAddr   = netip.MustParseAddrPort("[::]:15021")
	DefaultDNSAddr         = netip.MustParseAddrPort("[::]:15053")
)

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	set := func(p *netip.AddrPort, d netip.AddrPort) {
		if !p.IsValid() {
			*p = d
		}
	}
	set(&c.OutboundAddr, DefaultOutboundAddr)
	set(&c.InboundAddr, DefaultInboundAddr)
	set(&c.InboundDNATAddr, DefaultInboundDNATAddr)
	set(&c.HBONEAddr, DefaultHBONEAddr)
	set(&c.AdminAddr, DefaultAdminAddr)
	set(&c.MetricsAddr, DefaultMetricsAddr)
	set(&c.ReadinessAddr, DefaultReadinessAddr)
	set(&c.DNSAddr, DefaultDNSAddr)
	if c.DNSResolvConf == "" {
		c.DNSResolvConf = "/etc/resolv.conf"
	}
	if c.ConfigPoll == 0 {
		c.ConfigPoll = time.Second
	}
	if c.XDSOnDemandTimeout <= 0 {
		c.XDSOnDemandTimeout = DefaultXDSOnDemandTimeout
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "cluster.local"
	}
	if c.Identity == "" {
		c.Identity = identity.SourceLocalCA
	}
	if c.Capture == "" {
		c.Capture = CaptureAuto
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = 5 * time.Second
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.PreserveSourceIP == nil {
		v := c.Capture != CaptureNone
		c.PreserveSourceIP = &v
	}
	if c.PinDir == "" {
		c.PinDir = redirect.DefaultPinDir
	}
	if c.KubeEnroll == "" {
		c.KubeEnroll = KubeEnrollAuto
	}
	return c
}

// kubeEnrollment reports whether the captured pods come from the Kubernetes API; inCluster tells whether
// in-cluster credentials exist.
func (c Config) kubeEnrollment(inCluster bool) bool {
	switch c.KubeEnroll {
	case KubeEnrollOn:
		return true
	case KubeEnrollOff:
		return false
	}
	return c.XDSAddress != "" && (c.KubeClient != nil || c.Kubeconfig != "" || inCluster)
}

// Validate reports the first problem with c (after defaults).
func (c Config) Validate() error {
	if c.NodeName == "" {
		return errors.New("node name is required (--node-name or NODE_NAME)")
	}
	switch {
	case len(c.ConfigFiles) == 0 && c.XDSAddress == "":
		return errors.New("a configuration source is required (--config-file or --xds-address)")
	case len(c.ConfigFiles) > 0 && c.XDSAddress != "":
		return errors.New("--config-file and --xds-address are exclusive")
	case c.XDSOnDemand && c.XDSAddress == "":
		return errors.New("--xds-on-demand needs --xds-address")
	case c.XDSAddress != "" && !c.XDSPlaintext && c.XDSRootFile == "":
		return errors.New("--xds-root-file is required unless --xds-plaintext")
	case c.XDSAddress != "" && (c.PodName == "" || c.PodNamespace == ""):
		return errors.New("--pod-name and --pod-namespace (POD_NAME, POD_NAMESPACE) are required with --xds-address")
	}
	switch c.KubeEnroll {
	case KubeEnrollAuto, KubeEnrollOff:
	case KubeEnrollOn:
		if c.XDSAddress == "" {
			return errors.New("--kube-enroll needs --xds-address (istiod marks the pods it annotates HBONE)")
		}
	default:
		return fmt.Errorf("unknown kube enrollment mode %q (auto, true or false)", c.KubeEnroll)
	}
	if c.HBONEMaxConns < 0 {
		return fmt.Errorf("--hbone-max-connections %d: want 0 (no cap) or more", c.HBONEMaxConns)
	}
	if !c.AdminAllowRemote && !c.AdminAddr.Addr().Unmap().IsLoopback() {
		return fmt.Errorf("--admin-addr %s is not a loopback address: the admin API changes state and serves pprof; "+
			"pass --admin-allow-remote (AMBIT_ADMIN_ALLOW_REMOTE) to expose it anyway", c.AdminAddr)
	}
	if err := validHandoffSocket(c.HandoffSocket); err != nil {
		return err
	}
	if err := c.issuer().Validate(); err != nil {
		return err
	}
	switch c.Capture {
	case CaptureAuto, CaptureEBPF, CaptureTPROXY, CaptureNone:
	default:
		return fmt.Errorf("unknown capture mode %q (auto, ebpf, tproxy or none)", c.Capture)
	}
	if _, err := parseUpstreams(c.DNSUpstreams); err != nil {
		return err
	}
	return nil
}

// parseUpstreams parses Config.DNSUpstreams: IP addresses, with port 53 unless given.
func parseUpstreams(ss []string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, s := range ss {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, ap)
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("--dns-upstreams %q: want ip or ip:port", s)
		}
		out = append(out, netip.AddrPortFrom(a, 53))
	}
	return out, nil
}

// issuer returns the certificate source settings: a node agent impersonates the workloads of its node
// when it asks istiod's CA.
func (c Config) issuer() identity.IssuerOptions {
	return identity.IssuerOptions{Source: c.Identity, CADir: c.CADir, TrustDomain: c.TrustDomain, TTL: c.CertTTL,
		CAAddress: c.CAAddress, CARootFile: c.CARootFile, TokenFile: c.TokenFile, ClusterID: c.ClusterID,
		Impersonate: true, SPIFFESocket: c.SPIFFESocket}
}

// maxHandoffSocketLen leaves room in a unix socket address (108 bytes) for the temporary name the
// socket is bound under before it is renamed into place.
const maxHandoffSocketLen = 96

// validHandoffSocket checks Config.HandoffSocket: empty (off), or an absolute path short enough for a
// unix socket address.
func validHandoffSocket(p string) error {
	switch {
	case p == "":
		return nil
	case !filepath.IsAbs(p):
		return fmt.Errorf("--handoff-socket %q must be an absolute path", p)
	case len(p) > maxHandoffSocketLen:
		return fmt.Errorf("--handoff-socket %q is longer than %d bytes (a unix socket address)", p, maxHandoffSocketLen)
	}
	return nil
}
