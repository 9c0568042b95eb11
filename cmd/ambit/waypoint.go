package main

import (
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/waypoint"
)

// addrValue is a pflag.Value for a netip.Addr.
type addrValue struct{ p *netip.Addr }

func (v addrValue) String() string {
	if v.p == nil || !v.p.IsValid() {
		return ""
	}
	return v.p.String()
}
func (v addrValue) Set(s string) error {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return fmt.Errorf("want an IP address: %w", err)
	}
	*v.p = a
	return nil
}
func (addrValue) Type() string { return "ip" }

func newWaypointCmd(stderr io.Writer) *cobra.Command {
	var cfg waypoint.Config
	var lf logFlags
	var mf memFlags
	envs := map[string]string{}
	cmd := &cobra.Command{
		Use:   "waypoint",
		Short: "Run a waypoint",
		Long: `Run Ambit as a waypoint (the role of an Envoy waypoint): accept HBONE on :15008 with the waypoint's
identity for the services and workloads bound to it, and forward each connection over HBONE to the chosen
endpoint, so the destination sees the waypoint's identity. Streams to HTTP service ports (appProtocol or port
name http, http2, h2c, grpc) are served by the L7 engine: HTTPRoute, GRPCRoute, VirtualService,
DestinationRule, AuthorizationPolicy and RequestAuthentication with targetRefs, LocalRateLimitPolicy,
Istio's HTTP metrics, access logs and OTLP tracing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags(), envs); err != nil {
				return err
			}
			disableZero(&cfg.HBONEIdleTimeout, &cfg.PoolIdleTimeout, &cfg.StreamIdleTimeout, &cfg.TCPIdleTimeout)
			log, _, err := lf.logger(stderr)
			if err != nil {
				return err
			}
			w, err := waypoint.New(cfg, log)
			if err != nil {
				return err
			}
			return mf.run(cmd.Context(), log, w.Ready, w.Run)
		},
	}
	fs := cmd.Flags()
	str := func(p *string, name, env, def, usage string) {
		fs.StringVar(p, name, def, usage)
		envs[name] = env
	}
	str(&cfg.Name, "name", "GATEWAY_NAME", "", "waypoint Gateway name")
	str(&cfg.Namespace, "namespace", "POD_NAMESPACE", "", "waypoint namespace")
	str(&cfg.ServiceAccount, "service-account", "SERVICE_ACCOUNT", "", "service account (default: the Gateway name)")
	fs.Var(addrValue{&cfg.PodIP}, "pod-ip", "this instance's IP address")
	envs["pod-ip"] = "INSTANCE_IP"
	fs.StringSliceVar(&cfg.ConfigFiles, "config-file", nil, "local Kubernetes YAML/JSON files or directories (re-read on change)")
	envs["config-file"] = "AMBIT_CONFIG_FILE"
	fs.DurationVar(&cfg.ConfigPoll, "config-poll", time.Second, "how often the config files are checked for changes")
	str(&cfg.XDSAddress, "xds-address", "XDS_ADDRESS", "", "istiod xDS address host:port for workloads and services (instead of --config-file)")
	str(&cfg.XDSRootFile, "xds-root-file", "XDS_ROOT_CA", "/var/run/secrets/istio/root-cert.pem", "root certificate of istiod's serving certificate")
	fs.BoolVar(&cfg.XDSPlaintext, "xds-plaintext", false, "connect to istiod without TLS (port 15010; development only)")
	envs["xds-plaintext"] = "AMBIT_XDS_PLAINTEXT"
	str(&cfg.PodName, "pod-name", "POD_NAME", "", "this instance's pod name (sent to istiod)")
	str(&cfg.NodeName, "node-name", "NODE_NAME", "", "this instance's node (sent to istiod)")
	str(&cfg.TrustDomain, "trust-domain", "TRUST_DOMAIN", "cluster.local", "trust domain of workload identities")
	str(&cfg.DomainSuffix, "domain-suffix", "CLUSTER_DOMAIN", "cluster.local", "DNS suffix of service hostnames")
	str(&cfg.ClusterID, "cluster-id", "CLUSTER_ID", "Kubernetes", "cluster ID")
	str(&cfg.Network, "network", "NETWORK", "", "network of this instance")
	str(&cfg.Identity, "identity", "AMBIT_IDENTITY", identity.SourceLocalCA, "certificate source: local-ca, istiod or spiffe")
	str(&cfg.CADir, "ca-dir", "AMBIT_CA_DIR", "/var/lib/ambit/ca", "local CA directory")
	fs.DurationVar(&cfg.CertTTL, "cert-ttl", 24*time.Hour, "lifetime of the waypoint certificate")
	str(&cfg.CAAddress, "ca-address", "CA_ADDRESS", "", "istiod CA address host:port (identity istiod)")
	str(&cfg.CARootFile, "ca-root-file", "CA_ROOT_CA", "/var/run/secrets/istio/root-cert.pem", "root certificate of istiod's serving certificate")
	str(&cfg.TokenFile, "token-file", "AUTH_TOKEN", "/var/run/secrets/tokens/istio-token", "projected service-account token for istiod")
	str(&cfg.SPIFFESocket, "spiffe-socket", "SPIFFE_ENDPOINT_SOCKET", "", "SPIFFE Workload API address (identity spiffe)")
	cfg.HBONEAddr = waypoint.DefaultHBONEAddr
	fs.Var(addrPortValue{&cfg.HBONEAddr}, "hbone-addr", "HBONE listener")
	envs["hbone-addr"] = "AMBIT_HBONE_ADDR"
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 5*time.Second, "graceful shutdown: how long open connections may take to finish")
	cfg.MetricsAddr = waypoint.DefaultMetricsAddr
	fs.Var(addrPortValue{&cfg.MetricsAddr}, "metrics-addr", "Prometheus metrics listener (/metrics, /stats/prometheus)")
	envs["metrics-addr"] = "AMBIT_METRICS_ADDR"
	cfg.ReadinessAddr = waypoint.DefaultReadinessAddr
	fs.Var(addrPortValue{&cfg.ReadinessAddr}, "readiness-addr", "readiness listener (/healthz/ready), probed by istiod's waypoint template")
	envs["readiness-addr"] = "AMBIT_READINESS_ADDR"
	str(&cfg.OTLPEndpoint, "otlp-endpoint", "AMBIT_OTLP_ENDPOINT", "", "OpenTelemetry collector for spans (OTLP/HTTP host:port or URL); empty: propagate trace context only")
	fs.Float64Var(&cfg.TraceSampling, "trace-sampling", 0, "fraction of new traces sampled (default 1 with --otlp-endpoint)")
	str(&cfg.L7Source, "l7-source", "AMBIT_L7_SOURCE", waypoint.L7SourceFile, "where routes and L7 policies come from: file (--config-file) or kubernetes (the API server, in-cluster credentials)")
	hboneFlags{handshake: &cfg.HBONEHandshakeTimeout, idle: &cfg.HBONEIdleTimeout, poolIdle: &cfg.PoolIdleTimeout,
		maxConns: &cfg.HBONEMaxConns}.register(fs, envs)
	fs.DurationVar(&cfg.StreamIdleTimeout, "stream-idle-timeout", hbone.DefaultStreamIdleTimeoutHTTP,
		"reset an HTTP stream (HBONE stream and each L7 request) that moves no data either way for this long (0: never; Envoy's stream_idle_timeout)")
	envs["stream-idle-timeout"] = "AMBIT_STREAM_IDLE_TIMEOUT"
	fs.DurationVar(&cfg.TCPIdleTimeout, "tcp-idle-timeout", hbone.DefaultStreamIdleTimeoutTCP,
		"reset a stream forwarded at L4 that moves no data either way for this long (0: never; Envoy's tcp_proxy idle_timeout)")
	envs["tcp-idle-timeout"] = "AMBIT_TCP_IDLE_TIMEOUT"
	lf.register(fs, envs)
	mf.register(fs, envs)
	cmd.Long += "\n" + envTable(fs, envs)
	return cmd
}
