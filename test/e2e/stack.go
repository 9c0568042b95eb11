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
	"syscall"
	"time"
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
	// IstioCRDs is Istio's crd-all.gen.yaml; GatewayCRDs the directory of Gateway API standard CRDs.
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
		GatewayCRDs:    filepath.Join(istiod, "crds", "gateway-api"),
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

	procs    []*proc
	httpAddr string
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
}

// Timing is one start-up phase.
type Timing struct {
	Phase string
	Took  time.Duration
}

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	log  *os.File
	// How it was started, to restart it.
	env      []string
	dir, bin string
	args     []string
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
	ports, err := freePorts(12)
	if err != nil {
		return s, err
	}
	etcdClient, etcdPeer := ports[0], ports[1]
	apiPort := ports[2]
	s.PlainXDSAddr = fmt.Sprintf("127.0.0.1:%d", ports[3])
	s.XDSAddr = fmt.Sprintf("127.0.0.1:%d", ports[4])
	httpsAddr, monAddr := fmt.Sprintf("127.0.0.1:%d", ports[5]), fmt.Sprintf("127.0.0.1:%d", ports[6])
	s.httpAddr = fmt.Sprintf("127.0.0.1:%d", ports[7])
	ctrlz := ports[8]
	kcmPort, schedPort := ports[9], ports[10]
	s.APIServerAddr = fmt.Sprintf("127.0.0.1:%d", apiPort)

	if err := phase("etcd", func() error {
		url := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
		peer := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
		if err := s.spawn("etcd", nil, "", bin.Etcd, "--name", "e2e", "--data-dir", filepath.Join(dir, "etcd"),
			"--listen-client-urls", url, "--advertise-client-urls", url, "--listen-peer-urls", peer,
			"--initial-advertise-peer-urls", peer, "--initial-cluster", "e2e="+peer, "--log-level", "warn",
			"--unsafe-no-fsync"); err != nil {
			return err
		}
		return poll(ctx, 30*time.Second, func() error { return httpOK(ctx, nil, url+"/health", "") })
	}); err != nil {
		return s, err
	}

	kdir := filepath.Join(dir, "kapi")
	var caPEM []byte
	if err := phase("certificates", func() error {
		var err error
		caPEM, err = writeAPIServerPKI(kdir, apiPort)
		s.Kubeconfig = filepath.Join(kdir, "kubeconfig")
		return err
	}); err != nil {
		return s, err
	}

	if err := phase("kube-apiserver", func() error {
		if err := s.spawn("kube-apiserver", nil, "", bin.KubeAPIServer,
			fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", etcdClient),
			"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", apiPort),
			"--tls-cert-file="+filepath.Join(kdir, "apiserver.crt"), "--tls-private-key-file="+filepath.Join(kdir, "apiserver.key"),
			"--client-ca-file="+filepath.Join(kdir, "ca.crt"), "--token-auth-file="+filepath.Join(kdir, "tokens.csv"),
			"--authorization-mode=RBAC", "--service-account-key-file="+filepath.Join(kdir, "sa.pub"),
			"--service-account-signing-key-file="+filepath.Join(kdir, "sa.key"),
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--api-audiences=https://kubernetes.default.svc.cluster.local,istio-ca",
			"--service-cluster-ip-range=10.96.0.0/16", "--allow-privileged=true", "--profiling=false",
			"--enable-priority-and-fairness=false"); err != nil {
			return err
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(caPEM)
		return poll(ctx, 90*time.Second, func() error {
			return httpOK(ctx, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
				fmt.Sprintf("https://127.0.0.1:%d/readyz", apiPort), adminToken)
		})
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
		if err := phase("controllers", func() error { return s.startControllers(ctx, kdir, kcmPort, schedPort) }); err != nil {
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
		if err := s.spawn("istiod", env, work, bin.PilotDiscovery, "discovery", "--kubeconfig", s.Kubeconfig,
			"--meshConfig", "./etc/istio/config/mesh", "--networksConfig", "./etc/istio/config/meshNetworks",
			"--grpcAddr", s.PlainXDSAddr, "--secureGRPCAddr", s.XDSAddr, "--httpsAddr", httpsAddr,
			"--httpAddr", s.httpAddr, "--monitoringAddr", monAddr, fmt.Sprintf("--ctrlz_port=%d", ctrlz),
			"--clusterID", "Kubernetes", "--domain", "cluster.local", "--log_output_level", "default:warn"); err != nil {
			return err
		}
		return poll(ctx, 60*time.Second, func() error { return httpOK(ctx, nil, "http://"+s.httpAddr+"/ready", "") })
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
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// spawn starts a peer with its output in <Dir>/<name>.log.
func (s *Stack) spawn(name string, env []string, dir, bin string, args ...string) error {
	p := &proc{name: name, env: env, dir: dir, bin: bin, args: args}
	if err := s.startProc(p); err != nil {
		return err
	}
	s.procs = append(s.procs, p)
	return nil
}

func (s *Stack) startProc(p *proc) error {
	logf, err := os.OpenFile(filepath.Join(s.Dir, p.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr, cmd.Dir = logf, logf, p.dir
	cmd.Env = append(os.Environ(), p.env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.cmd, p.log, p.done = cmd, logf, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	return nil
}

// stopProc terminates p (SIGTERM, then SIGKILL after 10 s) by the process id it started.
func stopProc(p *proc) {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	p.log.Close()
}

// Stop terminates the peers in reverse order of start.
func (s *Stack) Stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		stopProc(s.procs[i])
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
		stopProc(p)
		s.Timings = append(s.Timings, Timing{"restart " + name + ": stop", time.Since(t0)})
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(down):
		}
		t0 = time.Now()
		if err := s.startProc(p); err != nil {
			return fmt.Errorf("restart %s: %w", name, err)
		}
		if err := s.waitReady(ctx, name); err != nil {
			return fmt.Errorf("restart %s: %w", name, err)
		}
		s.Timings = append(s.Timings, Timing{"restart " + name + ": ready", time.Since(t0)})
		return nil
	}
	return fmt.Errorf("restart %s: no such peer", name)
}

// waitReady polls a restarted peer's readiness.
func (s *Stack) waitReady(ctx context.Context, name string) error {
	switch name {
	case "kube-apiserver":
		return poll(ctx, 90*time.Second, func() error {
			_, err := s.Kubectl(ctx, "get", "--raw", "/readyz")
			return err
		})
	case "istiod":
		return poll(ctx, 60*time.Second, func() error { return httpOK(ctx, nil, "http://"+s.httpAddr+"/ready", "") })
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

func poll(ctx context.Context, timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
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

// freePorts reserves n loopback ports by binding and releasing them.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	out := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

// writeAPIServerPKI writes kube-apiserver's CA, serving certificate, service-account key pair, static token
// file and an admin kubeconfig into dir, and returns the CA PEM.
func writeAPIServerPKI(dir string, port int) ([]byte, error) {
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
		"kubeconfig": []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://127.0.0.1:%d", certificate-authority: "%s"}}]
users: [{name: admin, user: {token: %s}}]
contexts: [{name: e2e, context: {cluster: e2e, user: admin}}]
current-context: e2e
`, port, filepath.Join(dir, "ca.crt"), adminToken)),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	return caPEM, nil
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
