//go:build e2e

package kube

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/test/e2e"
	"github.com/ambit-mesh/ambit/test/kubelet"
	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/owner"
	"github.com/ambit-mesh/ambit/test/proc"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// Images the kubelet knows: Ambit's two images (the agent's and the waypoint's, one binary) and the test server.
const (
	agentImage    = "ghcr.io/ambit-mesh/ambit"
	waypointImage = "ghcr.io/ambit-mesh/ambit-waypoint"
	echoImage     = "ambit-e2e/echo"
	// meshEchoImage is the Gateway API conformance suite's echo (Istio's Go echo app): gamma_test.go.
	meshEchoImage = "registry.k8s.io/gateway-api/echo-advanced"
)

// clusterDNSIP is the cluster DNS Service's ClusterIP (kube-system/kube-dns, as kubeadm numbers it): the test
// kubelet answers Service names there (kubelet.Options.ClusterDNS).
const clusterDNSIP = "10.96.0.10"

// The agent DaemonSet as the chart names it by default (ztunnelNames: ztunnel's names, which istioctl looks for)
// and the label selector of its pods.
const (
	agentDaemonSet = "ztunnel"
	agentSelector  = "app=ztunnel"
)

// cluster is the environment every test of the tier shares.
type cluster struct {
	stack   *e2e.Stack
	lab     *lab.Lab
	kubelet *kubelet.Kubelet
	client  kubernetes.Interface
	bin     string // ambit, ambitctl and echo
	dir     string
	// istiodVIP is the istiod Service's ClusterIP.
	istiodVIP string
	// meshEcho is where the conformance suite's echo image comes from (hack/peers/build-istio-echo.sh), or why
	// it is missing.
	meshEcho meshEchoPeer
}

var (
	cl       *cluster
	setupErr error
)

func TestMain(m *testing.M) {
	code := run(m)
	proc.KillAll() // whatever a skipped cleanup left running
	os.Exit(code)
}

func run(m *testing.M) int {
	if os.Geteuid() != 0 {
		// Every test requires root and says so (testutil.RequireRoot fails under AMBIT_REQUIRE_ROOT=1).
		return m.Run()
	}
	// Everything a killed run left goes first: its labs (and their pod namespaces and pins), its state directory.
	if err := lab.Sweep(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e/kube: sweep labs (retried by the next run):", err)
	}
	if removed, err := owner.SweepTemp("ambit-e2e-kube-"); err != nil || len(removed) > 0 {
		fmt.Fprintf(os.Stderr, "e2e/kube: swept the state of dead runs %v (errors: %v)\n", removed, err)
	}
	tmp, err := owner.MkdirTemp("ambit-e2e-kube-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e/kube:", err)
		return 1
	}
	dir := tmp.Path
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t0 := time.Now()
	c, timings, err := setUp(ctx, dir)
	cl, setupErr = c, err
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e/kube: set up: %v\n", err)
	} else {
		fmt.Fprintf(os.Stderr, "e2e/kube: cluster up in %v:%s\n", time.Since(t0).Round(time.Millisecond), timings)
	}
	code := m.Run()
	if setupErr != nil {
		code = 1
	}
	if c != nil {
		c.tearDown()
	}
	if code == 0 {
		tmp.RemoveAll()
	} else {
		tmp.Keep()
		fmt.Fprintf(os.Stderr, "e2e/kube: state and logs kept in %s\n", dir)
	}
	return code
}

// need fails the test unless the shared cluster is up (root-only).
func need(t *testing.T) *cluster {
	t.Helper()
	testutil.RequireRoot(t)
	if setupErr != nil || cl == nil {
		t.Fatalf("cluster not set up: %v", setupErr)
	}
	return cl
}

func setUp(ctx context.Context, dir string) (c *cluster, timings string, err error) {
	c = &cluster{dir: dir, bin: filepath.Join(dir, "bin")}
	phase := func(name string, f func() error) error {
		t0 := time.Now()
		if err := f(); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		timings += fmt.Sprintf(" %s %v;", name, time.Since(t0).Round(time.Millisecond))
		return nil
	}
	defer func() {
		if err != nil {
			c.tearDown()
			c = nil
		}
	}()
	if err := phase("build", func() error {
		for name, pkg := range map[string]string{"ambit": "./cmd/ambit", "ambitctl": "./cmd/ambitctl", "echo": "./test/e2e/kube/echo"} {
			cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(c.bin, name), pkg)
			cmd.Dir = "../../.."
			if out, err := proc.CombinedOutput(cmd); err != nil {
				return fmt.Errorf("build %s: %w\n%s", name, err, out)
			}
		}
		return nil
	}); err != nil {
		return c, timings, err
	}
	bin, err := e2e.FindBinaries()
	if err != nil {
		return c, timings, err
	}
	if err := phase("control plane", func() error {
		var err error
		c.stack, err = e2e.StartWith(ctx, bin, filepath.Join(dir, "stack"), e2e.Options{Controllers: true, IstiodControllers: true,
			KubeletEgress: filepath.Join(dir, "egress.sock")})
		if err == nil {
			for _, t := range c.stack.Timings {
				timings += fmt.Sprintf(" [%s %v]", t.Phase, t.Took.Round(time.Millisecond))
			}
		}
		return err
	}); err != nil {
		return c, timings, err
	}
	if err := phase("lab and kubelet", func() error {
		l, err := lab.New(ctx, lab.Options{Nodes: 2, PodsPerNode: 0})
		if err != nil {
			return err
		}
		c.lab = l
		rc, err := clientcmd.BuildConfigFromFlags("", c.stack.Kubeconfig)
		if err != nil {
			return err
		}
		rc.QPS, rc.Burst = 50, 100
		if c.client, err = kubernetes.NewForConfig(rc); err != nil {
			return err
		}
		if c.istiodVIP, err = c.stack.ServiceIP(ctx, "istio-system", "istiod"); err != nil {
			return err
		}
		vip := netip.MustParseAddr(c.istiodVIP)
		logf, err := os.Create(filepath.Join(dir, "kubelet.log"))
		if err != nil {
			return err
		}
		// Both images run as USER 1337:1337, as the Dockerfile builds them (the DaemonSet overrides it with root).
		ambit := kubelet.Image{Binary: filepath.Join(c.bin, "ambit"), Path: "/usr/local/bin/ambit", User: "1337:1337"}
		images := map[string]kubelet.Image{
			agentImage: ambit, waypointImage: ambit,
			echoImage: {Binary: filepath.Join(c.bin, "echo"), Path: "/usr/local/bin/echo"},
		}
		if c.meshEcho, err = findMeshEcho(filepath.Join(dir, "mesh-echo")); err != nil {
			return err
		}
		if c.meshEcho.missing == "" {
			images[meshEchoImage] = c.meshEcho.image
		}
		if err := reserveClusterDNS(ctx, c.client); err != nil {
			return err
		}
		c.kubelet, err = kubelet.Start(ctx, kubelet.Options{
			Client: c.client, Lab: l, Dir: filepath.Join(dir, "kubelet"),
			Images:     images,
			ClusterDNS: netip.MustParseAddr(clusterDNSIP),
			APIServer:  c.stack.APIServerAddr,
			Services: []kubelet.ServiceProxy{
				{VIP: netip.AddrPortFrom(vip, 15012), Target: c.stack.XDSAddr},
				{VIP: netip.AddrPortFrom(vip, 15010), Target: c.stack.PlainXDSAddr},
			},
			Hosts:        map[string]string{"istiod.istio-system.svc": c.istiodVIP, "istiod.istio-system.svc.cluster.local": c.istiodVIP},
			EgressSocket: filepath.Join(dir, "egress.sock"),
			Logger:       slog.New(slog.NewTextHandler(logf, &slog.HandlerOptions{Level: slog.LevelDebug})),
		})
		return err
	}); err != nil {
		return c, timings, err
	}
	if err := phase("install ambit", func() error { return c.install(ctx) }); err != nil {
		return c, timings, err
	}
	return c, timings, nil
}

// manifest is Ambit's install manifest.
const manifest = "../../../manifests/ambit.yaml"

// install applies the install manifest (after a server-side dry-run) and waits for an agent on every node.
func (c *cluster) install(ctx context.Context) error {
	if _, err := c.stack.Kubectl(ctx, "apply", "--server-side", "--dry-run=server", "-f", manifest); err != nil {
		return err
	}
	if _, err := c.stack.Kubectl(ctx, "apply", "--server-side", "-f", manifest); err != nil {
		return err
	}
	_, err := c.stack.Kubectl(ctx, "rollout", "status", "daemonset/"+agentDaemonSet, "-n", "istio-system", "--timeout=180s")
	return err
}

func (c *cluster) tearDown() {
	if c.kubelet != nil {
		c.kubelet.Stop()
	}
	if c.stack != nil {
		c.stack.Stop()
	}
	if c.lab != nil {
		if err := c.lab.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "e2e/kube: remove lab:", err)
		}
	}
}

// kubectl runs kubectl and fails t on error.
func (c *cluster) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.stack.Kubectl(t.Context(), args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// apply applies YAML server-side and fails t on error.
func (c *cluster) apply(t *testing.T, yaml string) {
	t.Helper()
	if err := c.stack.Apply(t.Context(), yaml); err != nil {
		t.Fatal(err)
	}
}

// ambitctl runs ambitctl against the cluster and returns its standard output, standard error and exit code.
func (c *cluster) ambitctl(ctx context.Context, args ...string) (stdout, stderr string, code int) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.bin, "ambitctl"), args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+c.stack.Kubeconfig)
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := proc.Run(cmd)
	code = -1
	if cmd.ProcessState != nil {
		code = cmd.ProcessState.ExitCode()
	}
	if err != nil && code == 0 {
		code = -1
	}
	return o.String(), e.String(), code
}

// mustAmbitctl runs ambitctl and fails t unless it exits 0; it returns standard output.
func (c *cluster) mustAmbitctl(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := c.ambitctl(t.Context(), args...)
	if code != 0 {
		t.Fatalf("ambitctl %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}
