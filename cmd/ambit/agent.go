package main

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/identity"
)

// addrPortValue is a pflag.Value for a netip.AddrPort.
type addrPortValue struct{ p *netip.AddrPort }

func (v addrPortValue) String() string {
	if v.p == nil || !v.p.IsValid() {
		return ""
	}
	return v.p.String()
}
func (v addrPortValue) Set(s string) error {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return fmt.Errorf("want IP:PORT: %w", err)
	}
	*v.p = ap
	return nil
}
func (addrPortValue) Type() string { return "ip:port" }

func newAgentCmd(stderr io.Writer) *cobra.Command {
	var cfg agent.Config
	var lf logFlags
	var mf memFlags
	var preserve bool
	envs := map[string]string{}
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent",
		Long: `Run Ambit's node agent: capture the traffic of this node's ambient pods, carry it over HBONE to
waypoints and peer agents (or as plain TCP outside the mesh), terminate HBONE for local pods, enforce L4
authorization, proxy the pods' DNS (:15053), and serve admin (localhost:15000), metrics (:15020) and
readiness (:15021).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags(), envs); err != nil {
				return err
			}
			if cmd.Flags().Changed("preserve-source-ip") || envSet("AMBIT_PRESERVE_SOURCE_IP") {
				cfg.PreserveSourceIP = &preserve
			}
			disableZero(&cfg.HBONEIdleTimeout, &cfg.PoolIdleTimeout, &cfg.HBONEStreamIdleTimeout)
			log, level, err := lf.logger(stderr)
			if err != nil {
				return err
			}
			cfg.LogLevel = level
			a, err := agent.New(cfg, log)
			if err != nil {
				return err
			}
			return mf.run(cmd.Context(), log, a.Ready, func(ctx context.Context) error {
				if err := a.Run(ctx); err != nil {
					return err
				}
				if a.HandedOff() {
					// A DaemonSet pod whose agent exited would be restarted in place and take the listeners
					// back from its successor: idle (no listener, no capture handle) until the pod is deleted.
					log.Info("listeners handed off and drained; waiting to be stopped")
					<-ctx.Done()
				}
				return nil
			})
		},
	}
	fs := cmd.Flags()
	str := func(p *string, name, env, def, usage string) {
		fs.StringVar(p, name, def, usage)
		envs[name] = env
	}
	str(&cfg.NodeName, "node-name", "NODE_NAME", "", "Kubernetes node this agent serves")
	fs.StringSliceVar(&cfg.ConfigFiles, "config-file", nil, "local Kubernetes YAML/JSON files or directories (re-read on change)")
	envs["config-file"] = "AMBIT_CONFIG_FILE"
	fs.DurationVar(&cfg.ConfigPoll, "config-poll", time.Second, "how often the config files are checked for changes")
	str(&cfg.XDSAddress, "xds-address", "XDS_ADDRESS", "", "istiod xDS address host:port (instead of --config-file)")
	str(&cfg.XDSRootFile, "xds-root-file", "XDS_ROOT_CA", "/var/run/secrets/istio/root-cert.pem", "root certificate of istiod's serving certificate")
	fs.BoolVar(&cfg.XDSPlaintext, "xds-plaintext", false, "connect to istiod without TLS (port 15010; development only)")
	envs["xds-plaintext"] = "AMBIT_XDS_PLAINTEXT"
	fs.BoolVar(&cfg.XDSOnDemand, "xds-on-demand", false, "ask istiod for addresses when a connection needs them instead of receiving every workload")
	envs["xds-on-demand"] = "XDS_ON_DEMAND"
	str(&cfg.KubeEnroll, "kube-enroll", "AMBIT_KUBE_ENROLL", agent.KubeEnrollAuto,
		"take the pods to capture from the Kubernetes API and annotate them for istiod: true, false, or auto (with --xds-address, when a kubeconfig or in-cluster credentials exist)")
	fs.Lookup("kube-enroll").NoOptDefVal = agent.KubeEnrollOn
	str(&cfg.Kubeconfig, "kubeconfig", "KUBECONFIG", "", "kubeconfig file for --kube-enroll (default: in-cluster credentials)")
	str(&cfg.PodName, "pod-name", "POD_NAME", "", "the agent's pod name (sent to istiod)")
	str(&cfg.PodNamespace, "pod-namespace", "POD_NAMESPACE", "", "the agent's pod namespace (sent to istiod)")
	str(&cfg.InstanceIP, "instance-ip", "INSTANCE_IP", "", "the agent's pod IP (sent to istiod)")
	str(&cfg.ServiceAccount, "service-account", "SERVICE_ACCOUNT", "", "the agent's service account (sent to istiod)")
	str(&cfg.TrustDomain, "trust-domain", "TRUST_DOMAIN", "cluster.local", "trust domain of workload identities")
	str(&cfg.DomainSuffix, "domain-suffix", "CLUSTER_DOMAIN", "cluster.local", "DNS suffix of service hostnames")
	str(&cfg.ClusterID, "cluster-id", "CLUSTER_ID", "Kubernetes", "cluster ID of workloads")
	str(&cfg.Network, "network", "NETWORK", "", "network of this node")
	str(&cfg.Identity, "identity", "AMBIT_IDENTITY", identity.SourceLocalCA, "certificate source: local-ca, istiod or spiffe")
	str(&cfg.CADir, "ca-dir", "AMBIT_CA_DIR", "/var/lib/ambit/ca", "local CA directory (root created on first start)")
	fs.DurationVar(&cfg.CertTTL, "cert-ttl", 24*time.Hour, "lifetime of workload certificates")
	envs["cert-ttl"] = "SECRET_TTL"
	str(&cfg.CAAddress, "ca-address", "CA_ADDRESS", "", "istiod CA address host:port (identity istiod)")
	str(&cfg.CARootFile, "ca-root-file", "CA_ROOT_CA", "/var/run/secrets/istio/root-cert.pem", "root certificate of istiod's serving certificate")
	str(&cfg.TokenFile, "token-file", "AUTH_TOKEN", "/var/run/secrets/tokens/istio-token", "projected service-account token for istiod")
	str(&cfg.SPIFFESocket, "spiffe-socket", "SPIFFE_ENDPOINT_SOCKET", "", "SPIFFE Workload API address (identity spiffe)")
	str(&cfg.Capture, "capture", "AMBIT_CAPTURE", agent.CaptureAuto, "capture mode: auto, ebpf, tproxy or none")
	str(&cfg.NetNS, "netns", "AMBIT_NETNS", "", "network namespace path to run in (default: the process's)")
	fs.StringSliceVar(&cfg.Uplinks, "uplinks", nil, "node interfaces towards other nodes (default: default-route interfaces)")
	envs["uplinks"] = "AMBIT_UPLINKS"
	str(&cfg.PinDir, "pin-dir", "AMBIT_PIN_DIR", "/sys/fs/bpf/ambit", "bpffs directory for pinned capture state")
	fs.BoolVar(&cfg.AllowEphemeralPins, "allow-ephemeral-pins", false,
		"start eBPF capture even if --pin-dir will not outlive the agent (a bpffs private to its mount namespace, as under `ip netns exec`): capture then ends with the agent")
	envs["allow-ephemeral-pins"] = "AMBIT_ALLOW_EPHEMERAL_PINS"
	addr := func(p *netip.AddrPort, def netip.AddrPort, name, env, usage string) {
		*p = def
		fs.Var(addrPortValue{p}, name, usage)
		envs[name] = env
	}
	addr(&cfg.OutboundAddr, agent.DefaultOutboundAddr, "outbound-addr", "AMBIT_OUTBOUND_ADDR", "outbound capture listener")
	addr(&cfg.InboundAddr, agent.DefaultInboundAddr, "inbound-addr", "AMBIT_INBOUND_ADDR", "inbound plaintext listener")
	addr(&cfg.InboundDNATAddr, agent.DefaultInboundDNATAddr, "inbound-dnat-addr", "AMBIT_INBOUND_DNAT_ADDR",
		"listener for connections to enrolled pods the node destination-NATed (ClusterIP, NodePort, LoadBalancer)")
	addr(&cfg.HBONEAddr, agent.DefaultHBONEAddr, "hbone-addr", "AMBIT_HBONE_ADDR", "inbound HBONE listener")
	addr(&cfg.AdminAddr, agent.DefaultAdminAddr, "admin-addr", "AMBIT_ADMIN_ADDR", "admin API (loopback only unless --admin-allow-remote)")
	fs.BoolVar(&cfg.AdminAllowRemote, "admin-allow-remote", false, "allow a non-loopback --admin-addr (its endpoints change state and expose pprof)")
	envs["admin-allow-remote"] = "AMBIT_ADMIN_ALLOW_REMOTE"
	addr(&cfg.MetricsAddr, agent.DefaultMetricsAddr, "metrics-addr", "AMBIT_METRICS_ADDR", "Prometheus metrics")
	addr(&cfg.ReadinessAddr, agent.DefaultReadinessAddr, "readiness-addr", "AMBIT_READINESS_ADDR", "readiness probe")
	fs.BoolVar(&cfg.DNSCapture, "dns-capture", true,
		"capture enrolled pods' DNS (UDP and TCP port 53) and answer mesh names (Services, ServiceEntry hosts); forward the rest")
	envs["dns-capture"] = "DNS_CAPTURE"
	addr(&cfg.DNSAddr, agent.DefaultDNSAddr, "dns-addr", "AMBIT_DNS_ADDR", "DNS proxy socket and listener (UDP and TCP)")
	fs.StringSliceVar(&cfg.DNSUpstreams, "dns-upstreams", nil, "resolvers for names outside the mesh, ip or ip:port (default: --dns-resolv-conf's nameservers)")
	envs["dns-upstreams"] = "AMBIT_DNS_UPSTREAMS"
	str(&cfg.DNSResolvConf, "dns-resolv-conf", "AMBIT_DNS_RESOLV_CONF", "/etc/resolv.conf", "resolv.conf read for the upstream resolvers")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 5*time.Second, "graceful shutdown: how long open connections may take to finish")
	envs["drain-timeout"] = "AMBIT_DRAIN_TIMEOUT"
	str(&cfg.HandoffSocket, "handoff-socket", "AMBIT_HANDOFF_SOCKET", "",
		"unix socket for zero-gap restarts: take the listening sockets of the agent serving it, then serve it for the next one (empty: off)")
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", 10*time.Second, "how long establishing an upstream connection may take")
	envs["connect-timeout"] = "AMBIT_CONNECT_TIMEOUT"
	fs.BoolVar(&preserve, "preserve-source-ip", true, "connect to pods from the original client IP, and send HBONE from the source pod's IP")
	envs["preserve-source-ip"] = "AMBIT_PRESERVE_SOURCE_IP"
	hboneFlags{handshake: &cfg.HBONEHandshakeTimeout, idle: &cfg.HBONEIdleTimeout, poolIdle: &cfg.PoolIdleTimeout,
		maxConns: &cfg.HBONEMaxConns}.register(fs, envs)
	fs.DurationVar(&cfg.HBONEStreamIdleTimeout, "hbone-stream-idle-timeout", 0,
		"reset an inbound HBONE stream without data either way for this long (0: never, as ztunnel)")
	envs["hbone-stream-idle-timeout"] = "AMBIT_HBONE_STREAM_IDLE_TIMEOUT"
	lf.register(fs, envs)
	mf.register(fs, envs)
	cmd.Long += "\n" + envTable(fs, envs)
	return cmd
}

func envSet(name string) bool {
	_, ok := lookupEnv(name)
	return ok
}

var _ pflag.Value = addrPortValue{}
