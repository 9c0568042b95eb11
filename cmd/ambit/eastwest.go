package main

import (
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/ambit-mesh/ambit/eastwest"
	"github.com/ambit-mesh/ambit/identity"
)

func newEastWestCmd(stderr io.Writer) *cobra.Command {
	var cfg eastwest.Config
	var lf logFlags
	var mf memFlags
	envs := map[string]string{}
	cmd := &cobra.Command{
		Use:   "eastwest",
		Short: "Run an east-west gateway for multi-network meshes",
		Long: `Run Ambit as the east-west gateway of one network (a Gateway of class istio-east-west): accept HBONE on
:15008 with the gateway's identity from node agents on other networks (double HBONE), resolve each CONNECT's
authority "<service hostname>:<port>" to an endpoint of that service on this network, and relay the stream
to the endpoint's :15008 over plain TCP. The inner TLS runs between the two node agents: the gateway never
decrypts it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags(), envs); err != nil {
				return err
			}
			log, _, err := lf.logger(stderr)
			if err != nil {
				return err
			}
			g, err := eastwest.New(cfg, log)
			if err != nil {
				return err
			}
			return mf.run(cmd.Context(), log, g.Ready, g.Run)
		},
	}
	fs := cmd.Flags()
	str := func(p *string, name, env, def, usage string) {
		fs.StringVar(p, name, def, usage)
		envs[name] = env
	}
	str(&cfg.Name, "name", "GATEWAY_NAME", "", "east-west Gateway name")
	str(&cfg.Namespace, "namespace", "POD_NAMESPACE", "", "east-west Gateway namespace")
	str(&cfg.ServiceAccount, "service-account", "SERVICE_ACCOUNT", "", "service account (default: the Gateway name)")
	str(&cfg.Network, "network", "NETWORK", "", "the network this gateway serves (required)")
	fs.Var(addrValue{&cfg.PodIP}, "pod-ip", "this instance's IP address (sent to istiod)")
	envs["pod-ip"] = "INSTANCE_IP"
	str(&cfg.PodName, "pod-name", "POD_NAME", "", "this instance's pod name (sent to istiod)")
	str(&cfg.NodeName, "node-name", "NODE_NAME", "", "this instance's node (sent to istiod)")
	fs.StringSliceVar(&cfg.ConfigFiles, "config-file", nil, "local Kubernetes YAML/JSON files or directories (re-read on change)")
	envs["config-file"] = "AMBIT_CONFIG_FILE"
	fs.DurationVar(&cfg.ConfigPoll, "config-poll", time.Second, "how often the config files are checked for changes")
	str(&cfg.XDSAddress, "xds-address", "XDS_ADDRESS", "", "istiod xDS address host:port for workloads and services (instead of --config-file)")
	str(&cfg.XDSRootFile, "xds-root-file", "XDS_ROOT_CA", "/var/run/secrets/istio/root-cert.pem", "root certificate of istiod's serving certificate")
	fs.BoolVar(&cfg.XDSPlaintext, "xds-plaintext", false, "connect to istiod without TLS (port 15010; development only)")
	envs["xds-plaintext"] = "AMBIT_XDS_PLAINTEXT"
	str(&cfg.TrustDomain, "trust-domain", "TRUST_DOMAIN", "cluster.local", "trust domain of workload identities")
	str(&cfg.DomainSuffix, "domain-suffix", "CLUSTER_DOMAIN", "cluster.local", "DNS suffix of service hostnames")
	str(&cfg.ClusterID, "cluster-id", "CLUSTER_ID", "Kubernetes", "cluster ID")
	str(&cfg.Identity, "identity", "AMBIT_IDENTITY", identity.SourceLocalCA, "certificate source: local-ca, istiod or spiffe")
	str(&cfg.CADir, "ca-dir", "AMBIT_CA_DIR", "/var/lib/ambit/ca", "local CA directory")
	fs.DurationVar(&cfg.CertTTL, "cert-ttl", 24*time.Hour, "lifetime of the gateway certificate")
	str(&cfg.CAAddress, "ca-address", "CA_ADDRESS", "", "istiod CA address host:port (identity istiod)")
	str(&cfg.CARootFile, "ca-root-file", "CA_ROOT_CA", "/var/run/secrets/istio/root-cert.pem", "root certificate of istiod's serving certificate")
	str(&cfg.TokenFile, "token-file", "AUTH_TOKEN", "/var/run/secrets/tokens/istio-token", "projected service-account token for istiod")
	str(&cfg.SPIFFESocket, "spiffe-socket", "SPIFFE_ENDPOINT_SOCKET", "", "SPIFFE Workload API address (identity spiffe)")
	cfg.HBONEAddr = eastwest.DefaultHBONEAddr
	fs.Var(addrPortValue{&cfg.HBONEAddr}, "hbone-addr", "HBONE listener")
	envs["hbone-addr"] = "AMBIT_HBONE_ADDR"
	cfg.MetricsAddr = eastwest.DefaultMetricsAddr
	fs.Var(addrPortValue{&cfg.MetricsAddr}, "metrics-addr", "Prometheus metrics listener (/metrics, /stats/prometheus)")
	envs["metrics-addr"] = "AMBIT_METRICS_ADDR"
	cfg.ReadinessAddr = eastwest.DefaultReadinessAddr
	fs.Var(addrPortValue{&cfg.ReadinessAddr}, "readiness-addr", "readiness listener (/healthz/ready)")
	envs["readiness-addr"] = "AMBIT_READINESS_ADDR"
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", 10*time.Second, "TCP connect timeout to an endpoint's :15008")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 5*time.Second, "graceful shutdown: how long open connections may take to finish")
	lf.register(fs, envs)
	mf.register(fs, envs)
	cmd.Long += "\n" + envTable(fs, envs)
	return cmd
}
