package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/test/proc"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// Peer versions this tier expects (the defaults of the hack/peers/build-*.sh scripts).
const (
	EtcdVersion          = "v3.6.16"
	KubeAPIServerVersion = "v1.36.3"
	IstioVersion         = "v0.0.0-20260827124520-eed52ebb66ad"
)

// Environment variables.
const (
	PeerCacheEnv     = "AMBIT_PEER_CACHE"
	EtcdDirEnv       = "AMBIT_ETCD_BIN_DIR"
	KubeAPIDirEnv    = "AMBIT_KUBE_APISERVER_BIN_DIR"
	IstiodDirEnv     = "AMBIT_ISTIOD_DIR"
	ControllersEnv   = "AMBIT_KUBE_CONTROLLERS_BIN_DIR"
	IstioctlEnv      = "AMBIT_ISTIOCTL_BIN_DIR"
	KubectlEnv       = "AMBIT_KUBECTL"
	DefaultPeerCache = "/var/cache/ambit-peers"
	adminToken       = "ambit-e2e-admin-token"
)

// Binaries locates the peers.
type Binaries struct {
	Etcd, KubeAPIServer, PilotDiscovery, Kubectl string
	// KubeControllerManager and KubeScheduler (hack/peers/build-kube-controllers.sh) and Istioctl
	// (build-istioctl.sh) are needed only by the tests that use them; FindBinaries leaves a missing one empty.
	KubeControllerManager, KubeScheduler, Istioctl string
	// IstioCharts holds the files of Istio's istio-discovery chart that istiod's injection configuration is made
	// of (files/waypoint.yaml, values.yaml), copied into the peer cache by build-istiod.sh; empty when missing.
	IstioCharts string
	// IstioCRDs is Istio's crd-all.gen.yaml; GatewayCRDs the directory of Gateway API CRDs the tiers install:
	// the experimental channel, as Istio's own integration tests install it, so that experimental fields
	// users rely on (HTTPRoute retry) are accepted by the API server.
	IstioCRDs, GatewayCRDs string
}

// FindBinaries resolves every peer from the environment or the peer cache and checks that each exists.
func FindBinaries() (Binaries, error) {
	cache := os.Getenv(PeerCacheEnv)
	if cache == "" {
		cache = DefaultPeerCache
	}
	or := func(env, def string) string {
		if v := os.Getenv(env); v != "" {
			return v
		}
		return def
	}
	etcd := or(EtcdDirEnv, filepath.Join(cache, "etcd-"+EtcdVersion, "bin"))
	kapi := or(KubeAPIDirEnv, filepath.Join(cache, "kube-apiserver-"+KubeAPIServerVersion, "bin"))
	istiod := or(IstiodDirEnv, filepath.Join(cache, "istiod-"+IstioVersion))
	b := Binaries{
		Etcd:           filepath.Join(etcd, "etcd"),
		KubeAPIServer:  filepath.Join(kapi, "kube-apiserver"),
		PilotDiscovery: filepath.Join(istiod, "bin", "pilot-discovery"),
		IstioCRDs:      filepath.Join(istiod, "crds", "istio", "crd-all.gen.yaml"),
		GatewayCRDs:    filepath.Join(istiod, "crds", "gateway-api-experimental"),
		Kubectl:        os.Getenv(KubectlEnv),
	}
	if b.Kubectl == "" {
		kc, err := findKubectl()
		if err != nil {
			return b, err
		}
		b.Kubectl = kc
	}
	for _, f := range []string{b.Etcd, b.KubeAPIServer, b.PilotDiscovery, b.IstioCRDs, b.GatewayCRDs, b.Kubectl} {
		if _, err := os.Stat(f); err != nil {
			return b, fmt.Errorf("find peers: %w (build them with hack/peers/build-istio-stack.sh)", err)
		}
	}
	optional := func(p string) string {
		if _, err := os.Stat(p); err != nil {
			return ""
		}
		return p
	}
	kc := or(ControllersEnv, filepath.Join(cache, "kube-controllers-"+KubeAPIServerVersion, "bin"))
	b.KubeControllerManager = optional(filepath.Join(kc, "kube-controller-manager"))
	b.KubeScheduler = optional(filepath.Join(kc, "kube-scheduler"))
	b.Istioctl = optional(filepath.Join(or(IstioctlEnv, filepath.Join(cache, "istioctl-"+IstioVersion, "bin")), "istioctl"))
	b.IstioCharts = optional(filepath.Join(istiod, "charts", "istio-discovery"))
	return b, nil
}

// findKubectl prefers a real versioned kubectl next to the kubectl on PATH (the gcloud SDK's dispatcher
// picks one by server version and prints warnings), newest first, then kubectl itself.
func findKubectl() (string, error) {
	kc, err := exec.LookPath("kubectl")
	if err != nil {
		return "", fmt.Errorf("find kubectl: %w", err)
	}
	real, err := filepath.EvalSymlinks(kc)
	if err == nil {
		for minor := 40; minor >= 27; minor-- {
			p := filepath.Join(filepath.Dir(real), fmt.Sprintf("kubectl.1.%d", minor))
			if _, err := os.Stat(p); err == nil {
				return p, nil
			}
		}
	}
	return kc, nil
}

// Stack is a running etcd + kube-apiserver + istiod.
type Stack struct {
	Bin Binaries
	// Dir holds all runtime state (data, certificates, logs).
	Dir string
	// Kubeconfig authenticates as an admin (system:masters).
	Kubeconfig string
	// XDSAddr is istiod's TLS xDS and CA address (its 15012); PlainXDSAddr the plaintext xDS (its 15010).
	XDSAddr, PlainXDSAddr string
	// RootCertFile is istiod's root (ConfigMap istio-ca-root-cert); TokenFile a pod-bound token of
	// istio-system/ztunnel (pod ztunnel-abc on node1), audience istio-ca.
	RootCertFile, TokenFile string
	// IstiodServerName is the name on istiod's serving certificate.
	IstiodServerName string
	// Timings records how long each start-up phase took.
	Timings []Timing
	// APIServerAddr is kube-apiserver's host:port on loopback.
	APIServerAddr string
	// Opts are the options the stack was started with.
	Opts Options

	procs    []*peer
	etcdURL  string
	httpAddr string
	// pickPorts chooses ports for a peer (testutil.FreePorts; tests replace it).
	pickPorts func(n int) ([]int, error)
}

// Options selects what runs besides etcd, kube-apiserver and istiod.
type Options struct {
	// Controllers runs kube-controller-manager and kube-scheduler (Deployments, ReplicaSets, DaemonSets,
	// EndpointSlices, service accounts, scheduling): a cluster with real controllers, for a kubelet.
	Controllers bool
	// IstiodControllers lets istiod deploy waypoints from its real waypoint template and write Gateway
	// status (its deployment, status and GatewayClass controllers); without it nothing runs the waypoints and
	// the tests write Services and Gateway status themselves.
	IstiodControllers bool
	// KubeletEgress, if set, is a Unix socket path: kube-apiserver reaches nodes and pods (the kubelet API for
	// pods/portforward and pods/log, and pod or service proxies) by HTTP CONNECT through it, its "cluster" egress
	// selection, as through a Konnectivity proxy. The test kubelet serves it (kubelet.Options.EgressSocket).
	KubeletEgress string
}

// Timing is one start-up phase.
type Timing struct {
	Phase string
	Took  time.Duration
}

// peer is a running peer process.
type peer struct {
	name string
	p    *proc.Proc
	log  *os.File
	// logFrom is the log's size when this run started (a restarted peer appends to the same log).
	logFrom int64
	// How it was started, to restart it.
	env      []string
	dir, bin string
	args     []string
}

// launch says how to start a peer on a given set of ports.
type launch struct {
	env       []string
	dir, bin  string
	args      []string
	readiness time.Duration
	ready     func() error
}

// Start brings the stack up in dir: etcd, kube-apiserver and istiod, with the tests writing what controllers
// would. On error, everything started so far is stopped.
func Start(ctx context.Context, bin Binaries, dir string) (*Stack, error) {
	return StartWith(ctx, bin, dir, Options{})
}

// StartWith brings the stack up in dir with opts. On error, everything started so far is stopped.
func StartWith(ctx context.Context, bin Binaries, dir string, opts Options) (s *Stack, err error) {
	s = &Stack{Bin: bin, Dir: dir, IstiodServerName: "istiod.istio-system.svc", Opts: opts}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return s, err
	}
	defer func() {
		if err != nil {
			s.Stop()
			err = fmt.Errorf("%w\n%s", err, s.Logs(40))
		}
	}()
	phase := func(name string, f func() error) error {
		t0 := time.Now()
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		s.Timings = append(s.Timings, Timing{name, time.Since(t0)})
		return nil
	}
	if opts.Controllers && (bin.KubeControllerManager == "" || bin.KubeScheduler == "") {
		return s, errors.New("kube-controller-manager or kube-scheduler not found (build them with hack/peers/build-kube-controllers.sh)")
	}
	if opts.IstiodControllers && bin.IstioCharts == "" {
		return s, errors.New("istiod's charts not found in the peer cache (run hack/peers/build-istiod.sh)")
	}
	if s.pickPorts == nil {
		s.pickPorts = testutil.FreePorts
	}

	if err := phase("etcd", func() error {
		_, err := s.spawnListening(ctx, "etcd", 2, func(ports []int) launch {
			url := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
			peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
			s.etcdURL = url
			return launch{bin: bin.Etcd, args: []string{"--name", "e2e", "--data-dir", filepath.Join(dir, "etcd"),
				"--listen-client-urls", url, "--advertise-client-urls", url, "--listen-peer-urls", peerURL,
				"--initial-advertise-peer-urls", peerURL, "--initial-cluster", "e2e=" + peerURL, "--log-level", "warn",
				"--unsafe-no-fsync"},
				readiness: 30 * time.Second, ready: func() error { return httpOK(ctx, nil, url+"/health", "") }}
		})
		return err
	}); err != nil {
		return s, err
	}

	kdir := filepath.Join(dir, "kapi")
	var caPEM []byte
	if err := phase("certificates", func() error {
		var err error
		caPEM, err = writeAPIServerPKI(kdir)
		s.Kubeconfig = filepath.Join(kdir, "kubeconfig")
		if err == nil && opts.KubeletEgress != "" {
			err = os.WriteFile(filepath.Join(kdir, "egress.yaml"), []byte(egressConfig(opts.KubeletEgress)), 0o600)
		}
		return err
	}); err != nil {
		return s, err
	}

	if err := phase("kube-apiserver", func() error {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		ports, err := s.spawnListening(ctx, "kube-apiserver", 1, func(ports []int) launch {
			apiPort := ports[0]
			args := []string{
				"--etcd-servers=" + s.etcdURL,
				"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
				"--tls-cert-file=" + filepath.Join(kdir, "apiserver.crt"), "--tls-private-key-file=" + filepath.Join(kdir, "apiserver.key"),
				"--client-ca-file=" + filepath.Join(kdir, "ca.crt"), "--token-auth-file=" + filepath.Join(kdir, "tokens.csv"),
				"--authorization-mode=RBAC", "--service-account-key-file=" + filepath.Join(kdir, "sa.pub"),
				"--service-account-signing-key-file=" + filepath.Join(kdir, "sa.key"),
				"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
				"--api-audiences=https://kubernetes.default.svc.cluster.local,istio-ca",
				"--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=true", "--profiling=false",
				"--enable-priority-and-fairness=false"}
			if opts.KubeletEgress != "" {
				args = append(args, "--egress-selector-config-file="+filepath.Join(kdir, "egress.yaml"))
			}
			return launch{bin: bin.KubeAPIServer, args: args,
				readiness: 90 * time.Second, ready: func() error {
					return httpOK(ctx, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
						fmt.Sprintf("https://127.0.0.1:%d/readyz", apiPort), adminToken)
				}}
		})
		if err != nil {
			return err
		}
		s.APIServerAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
		return writeKubeconfig(kdir, ports[0])
	}); err != nil {
		return s, err
	}

	if err := phase("crds", func() error {
		if _, err := s.Kubectl(ctx, "apply", "--server-side", "-f", bin.GatewayCRDs); err != nil {
			return err
		}
		if _, err := s.Kubectl(ctx, "apply", "--server-side", "-f", bin.IstioCRDs); err != nil {
			return err
		}
		_, err := s.Kubectl(ctx, "wait", "--for", "condition=established", "--timeout=60s", "crd", "--all")
		return err
	}); err != nil {
		return s, err
	}

	base := baseObjects
	if opts.IstiodControllers {
		base = clusterBaseObjects
	}
	if err := phase("base objects", func() error { return s.Apply(ctx, base) }); err != nil {
		return s, err
	}

	if opts.Controllers {
		if err := phase("controllers", func() error { return s.startControllers(ctx, kdir) }); err != nil {
			return s, err
		}
	}

	if err := phase("istiod", func() error {
		work := filepath.Join(dir, "istiod")
		if err := os.MkdirAll(filepath.Join(work, "etc/istio/config"), 0o755); err != nil {
			return err
		}
		// istiod's own self-signed root would be seconds old, while the leaves it signs are backdated by two
		// minutes (its clock-skew grace); a cluster's CA is normally far older. Plug in a CA (root →
		// intermediate, valid since an hour ago) the way operators do, through istiod's cacerts directory
		// (ROOT_CA_DIR, ./etc/cacerts, which the cacerts secret is mounted on in a cluster).
		if err := writePluggedCA(filepath.Join(work, "etc/cacerts")); err != nil {
			return err
		}
		mesh := "trustDomain: cluster.local\nrootNamespace: istio-system\n"
		if err := os.WriteFile(filepath.Join(work, "etc/istio/config/mesh"), []byte(mesh), 0o644); err != nil {
			return err
		}
		env := []string{"KUBECONFIG=" + s.Kubeconfig, "POD_NAMESPACE=istio-system", "POD_NAME=istiod-e2e",
			"REVISION=default", "CLUSTER_ID=Kubernetes", "PILOT_ENABLE_AMBIENT=true",
			"CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel", "VALIDATION_WEBHOOK_CONFIG_NAME=", "INJECTION_WEBHOOK_CONFIG_NAME=",
			"ENABLE_LEADER_ELECTION=false"}
		if opts.IstiodControllers {
			// istiod renders waypoint Deployments from its injection templates (./var/lib/istio/inject, as the
			// istio-sidecar-injector ConfigMap is mounted in a cluster).
			if err := writeInjectionConfig(filepath.Join(work, "var/lib/istio/inject"), bin.IstioCharts); err != nil {
				return err
			}
		} else {
			// Nothing runs the waypoints: the tests create their Services and patch Gateway status themselves, so
			// istiod must neither deploy Gateways nor rewrite their status; GatewayClasses come from the tests too.
			env = append(env, "PILOT_ENABLE_GATEWAY_API_DEPLOYMENT_CONTROLLER=false", "PILOT_ENABLE_GATEWAY_API_STATUS=false",
				"PILOT_ENABLE_GATEWAY_API_GATEWAYCLASS_CONTROLLER=false")
		}
		_, err := s.spawnListening(ctx, "istiod", 6, func(ports []int) launch {
			s.PlainXDSAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
			s.XDSAddr = fmt.Sprintf("127.0.0.1:%d", ports[1])
			httpsAddr, monAddr := fmt.Sprintf("127.0.0.1:%d", ports[2]), fmt.Sprintf("127.0.0.1:%d", ports[3])
			s.httpAddr = fmt.Sprintf("127.0.0.1:%d", ports[4])
			return launch{env: env, dir: work, bin: bin.PilotDiscovery, args: []string{"discovery", "--kubeconfig", s.Kubeconfig,
				"--meshConfig", "./etc/istio/config/mesh", "--networksConfig", "./etc/istio/config/meshNetworks",
				"--grpcAddr", s.PlainXDSAddr, "--secureGRPCAddr", s.XDSAddr, "--httpsAddr", httpsAddr,
				"--httpAddr", s.httpAddr, "--monitoringAddr", monAddr, fmt.Sprintf("--ctrlz_port=%d", ports[5]),
				"--clusterID", "Kubernetes", "--domain", "cluster.local", "--log_output_level", "default:warn"},
				readiness: 60 * time.Second, ready: func() error { return httpOK(ctx, nil, "http://"+s.httpAddr+"/ready", "") }}
		})
		return err
	}); err != nil {
		return s, err
	}

	if err := phase("root and token", func() error {
		var root []byte
		if err := poll(ctx, 60*time.Second, func() error {
			out, err := s.Kubectl(ctx, "get", "cm", "istio-ca-root-cert", "-n", "istio-system", "-o", "jsonpath={.data.root-cert\\.pem}")
			if err == nil && len(bytes.TrimSpace(out)) == 0 {
				err = errors.New("empty root")
			}
			root = out
			return err
		}); err != nil {
			return err
		}
		s.RootCertFile = filepath.Join(dir, "root-cert.pem")
		if err := os.WriteFile(s.RootCertFile, root, 0o644); err != nil {
			return err
		}
		if opts.IstiodControllers {
			return nil // no ztunnel-abc pod: agents run as DaemonSet pods with their own tokens
		}
		tok, err := s.Kubectl(ctx, "create", "token", "ztunnel", "-n", "istio-system", "--audience", "istio-ca",
			"--bound-object-kind", "Pod", "--bound-object-name", "ztunnel-abc", "--duration", "24h")
		if err != nil {
			return err
		}
		s.TokenFile = filepath.Join(dir, "istio-token")
		return os.WriteFile(s.TokenFile, bytes.TrimSpace(tok), 0o600)
	}); err != nil {
		return s, err
	}
	return s, nil
}

// baseObjects are what istiod and node impersonation need: istio-system, two nodes, the ztunnel service
// account and its pod on node1, and the GatewayClasses istiod would create.
const baseObjects = `
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Node
metadata: {name: node1, labels: {kubernetes.io/hostname: node1}}
---
apiVersion: v1
kind: Node
metadata: {name: node2, labels: {kubernetes.io/hostname: node2}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: ztunnel, namespace: istio-system}
---
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-abc, namespace: istio-system, labels: {app: ztunnel}}
spec:
  nodeName: node1
  serviceAccountName: ztunnel
  containers: [{name: istio-proxy, image: ambit}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio-waypoint}
spec: {controllerName: istio.io/mesh-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: istio}
spec: {controllerName: istio.io/gateway-controller}
`

// Kubectl runs kubectl against the stack and returns its standard output.
func (s *Stack) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return s.kubectlIn(ctx, nil, args...)
}

// Apply applies a YAML document stream with kubectl (server-side).
func (s *Stack) Apply(ctx context.Context, yaml string) error {
	_, err := s.kubectlIn(ctx, strings.NewReader(yaml), "apply", "--server-side", "-f", "-")
	return err
}

func (s *Stack) kubectlIn(ctx context.Context, stdin *strings.Reader, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.Bin.Kubectl, append([]string{"--kubeconfig", s.Kubeconfig}, args...)...)
	if stdin != nil {
		cmd.Stdin = stdin
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := proc.Run(cmd); err != nil {
		return out.Bytes(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// spawnListening starts a peer that listens on n ports chosen by s.pickPorts, and waits until it is ready. A peer
// cannot take a listener from us, so a port may be taken between choosing and binding: when the peer exits before it
// is ready and its log says the address was in use, it is started again on new ports (up to 5 times). It returns the
// ports of the run that became ready.
func (s *Stack) spawnListening(ctx context.Context, name string, n int, build func(ports []int) launch) ([]int, error) {
	var last error
	for range 5 {
		ports, err := s.pickPorts(n)
		if err != nil {
			return nil, err
		}
		l := build(ports)
		p := &peer{name: name, env: l.env, dir: l.dir, bin: l.bin, args: l.args}
		if err := s.startPeer(p); err != nil {
			return nil, err
		}
		err = s.waitUp(ctx, p, l.readiness, l.ready)
		if err == nil {
			s.procs = append(s.procs, p)
			return ports, nil
		}
		stopPeer(p)
		if !errors.Is(err, errExited) || !testutil.AddrInUse(p.output()) {
			return nil, err
		}
		last = err
	}
	return nil, fmt.Errorf("%s: ports kept being taken: %w", name, last)
}

// errExited marks a peer that exited before it was ready.
var errExited = errors.New("exited before it was ready")

// waitUp polls ready until it passes, the peer exits, or timeout.
func (s *Stack) waitUp(ctx context.Context, p *peer, timeout time.Duration, ready func() error) error {
	return poll(ctx, timeout, func() error {
		if exited, werr := p.p.Exited(); exited {
			return permanent{fmt.Errorf("%s %w (%v); its log:\n%s", p.name, errExited, werr, tail(p.output(), 20))}
		}
		return ready()
	})
}

// output returns what the peer logged since its current run started.
func (p *peer) output() string {
	b, err := os.ReadFile(p.log.Name())
	if err != nil || int64(len(b)) < p.logFrom {
		return ""
	}
	return string(b[p.logFrom:])
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// startPeer starts p (package test/proc: it dies with this process) with its output appended to <Dir>/<name>.log.
func (s *Stack) startPeer(p *peer) error {
	logf, err := os.OpenFile(filepath.Join(s.Dir, p.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	st, err := logf.Stat()
	if err != nil {
		logf.Close()
		return err
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr, cmd.Dir = logf, logf, p.dir
	cmd.Env = append(os.Environ(), p.env...)
	pr, err := proc.Start(cmd)
	if err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.p, p.log, p.logFrom = pr, logf, st.Size()
	return nil
}

// stopPeer terminates p's process group (SIGTERM, then SIGKILL after 10 s).
func stopPeer(p *peer) {
	_ = p.p.Stop(10 * time.Second)
	p.log.Close()
}

// Stop terminates the peers in reverse order of start.
func (s *Stack) Stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		stopPeer(s.procs[i])
	}
	s.procs = nil
}

// Restart stops the peer named name (etcd, kube-apiserver, istiod, kube-controller-manager, kube-scheduler),
// waits down for the outage, starts it again with the same flags and ports, and waits until it is ready. It
// appends how long the stop and the start-to-ready took to Timings ("restart <name>: stop", "...: ready").
func (s *Stack) Restart(ctx context.Context, name string, down time.Duration) error {
	for _, p := range s.procs {
		if p.name != name {
			continue
		}
		t0 := time.Now()
		stopPeer(p)
		s.Timings = append(s.Timings, Timing{"restart " + name + ": stop", time.Since(t0)})
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(down):
		}
		t0 = time.Now()
		// Same ports as before (clients know them). They are outside the ephemeral range, so only another test
		// process could have taken one meanwhile: then retry, it lets go of it sooner or later.
		var err error
		for range 5 {
			if err = s.startPeer(p); err != nil {
				return fmt.Errorf("restart %s: %w", name, err)
			}
			err = s.waitUp(ctx, p, 90*time.Second, func() error { return s.readyCheck(ctx, name) })
			if err == nil || !errors.Is(err, errExited) || !testutil.AddrInUse(p.output()) {
				break
			}
			p.log.Close()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
		}
		if err != nil {
			return fmt.Errorf("restart %s: %w", name, err)
		}
		s.Timings = append(s.Timings, Timing{"restart " + name + ": ready", time.Since(t0)})
		return nil
	}
	return fmt.Errorf("restart %s: no such peer", name)
}

// readyCheck checks a restarted peer's readiness once.
func (s *Stack) readyCheck(ctx context.Context, name string) error {
	switch name {
	case "kube-apiserver":
		_, err := s.Kubectl(ctx, "get", "--raw", "/readyz")
		return err
	case "istiod":
		return httpOK(ctx, nil, "http://"+s.httpAddr+"/ready", "")
	case "etcd":
		return httpOK(ctx, nil, s.etcdURL+"/health", "")
	}
	return nil
}

// Logs returns the last n lines of every peer's log, for failure reports.
func (s *Stack) Logs(n int) string {
	var b strings.Builder
	for _, name := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "istiod"} {
		data, err := os.ReadFile(filepath.Join(s.Dir, name+".log"))
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		fmt.Fprintf(&b, "--- %s.log (last %d lines)\n%s\n", name, n, strings.Join(lines[max(0, len(lines)-n):], "\n"))
	}
	return b.String()
}

// IstiodLog returns istiod's whole log.
func (s *Stack) IstiodLog() string {
	data, _ := os.ReadFile(filepath.Join(s.Dir, "istiod.log"))
	return string(data)
}

// permanent wraps an error that stops poll at once.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// poll calls f every 100 ms until it returns nil, a permanent error, or timeout passes.
func poll(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		var pe permanent
		if errors.As(err, &pe) {
			return pe.error
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func httpOK(ctx context.Context, tlsCfg *tls.Config, url, token string) error {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// writeAPIServerPKI writes kube-apiserver's CA, serving certificate, service-account key pair and static token
// file into dir, and returns the CA PEM.
func writeAPIServerPKI(dir string) ([]byte, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ambit-e2e-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.96.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	files := map[string][]byte{
		"ca.crt":        caPEM,
		"apiserver.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"apiserver.key": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		"sa.key":        pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(saKey)}),
		"sa.pub":        pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}),
		"tokens.csv":    []byte(adminToken + `,admin,admin-uid,"system:masters"` + "\n"),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	return caPEM, nil
}

// writeKubeconfig writes the admin kubeconfig for kube-apiserver on 127.0.0.1:port into dir.
func writeKubeconfig(dir string, port int) error {
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://127.0.0.1:%d", certificate-authority: "%s"}}]
users: [{name: admin, user: {token: %s}}]
contexts: [{name: e2e, context: {cluster: e2e, user: admin}}]
current-context: e2e
`, port, filepath.Join(dir, "ca.crt"), adminToken)
	return os.WriteFile(filepath.Join(dir, "kubeconfig"), []byte(kc), 0o600)
}

// writePluggedCA writes an istiod "cacerts" set into dir: an ECDSA root and an intermediate signing CA for
// trust domain cluster.local, both valid from an hour ago for two days.
func writePluggedCA(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	now := time.Now()
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(10), Subject: pkix.Name{Organization: []string{"cluster.local"},
		CommonName: "ambit-e2e root"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return err
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(11), Subject: pkix.Name{Organization: []string{"cluster.local"},
		CommonName: "ambit-e2e intermediate"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(47 * time.Hour), IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, &key.PublicKey, rootKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rootDER})
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	files := map[string][]byte{
		"root-cert.pem":  rootPEM,
		"ca-cert.pem":    caPEM,
		"ca-key.pem":     pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		"cert-chain.pem": append(append([]byte{}, caPEM...), rootPEM...),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// egressConfig is kube-apiserver's EgressSelectorConfiguration: traffic to the cluster (nodes, pods, services)
// goes by HTTP CONNECT over the Unix socket sock; the control plane and etcd are dialled directly.
func egressConfig(sock string) string {
	return `apiVersion: apiserver.k8s.io/v1beta1
kind: EgressSelectorConfiguration
egressSelections:
- name: cluster
  connection:
    proxyProtocol: HTTPConnect
    transport:
      uds:
        udsName: ` + sock + `
`
}
