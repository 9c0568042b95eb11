package waypoint_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/proc"
	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint"
)

// childEnv makes the test binary run one waypoint (the JSON waypoint.Config in the variable) until SIGTERM.
const childEnv = "AMBIT_WAYPOINT_TEST_CHILD"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(childEnv); cfg != "" {
		os.Exit(runChild(cfg))
	}
	os.Exit(m.Run())
}

func runChild(spec string) int {
	var cfg waypoint.Config
	if err := json.Unmarshal([]byte(spec), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, "waypoint config:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	w, err := waypoint.New(cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := w.Run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// lockedBuffer is a bytes.Buffer safe for a child's output and the test's reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestWaypointUnprivileged runs a waypoint the way istiod's template runs it (uid and gid 1337, every capability
// dropped, no_new_privs) in its pod's network namespace, and sends service traffic through it.
func TestWaypointUnprivileged(t *testing.T) {
	var wpPod *lab.Pod
	c := startCluster(t, 1, 3, agent.CaptureEBPF, func(l *lab.Lab) string {
		p := l.Nodes[0].Pods
		wpPod = p[2]
		return `apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: svc, namespace: app, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.10, selector: {app: server}, ports: [{name: tcp, port: 80, targetPort: 8080}]}
` + pod("client", "app", "client", "", p[0]) + pod("server", "app", "server", "", p[1]) +
			waypointYAML("app", "wp", "service", "", "10.96.1.1", wpPod)
	})
	client, server := c.Lab.Nodes[0].Pods[0], c.Lab.Nodes[0].Pods[1]
	serve(t, server, 8080)

	// The waypoint user reads the configuration and the local CA, as a pod reads its mounted volumes.
	for _, p := range []string{filepath.Dir(c.Dir), c.Dir} {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := filepath.Walk(c.Dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, 1337, 1337)
	}); err != nil {
		t.Fatal(err)
	}
	cfg, err := json.Marshal(waypoint.Config{
		Name: "wp", Namespace: "app", PodIP: wpPod.IP, ConfigFiles: []string{c.Config}, ConfigPoll: 100 * time.Millisecond,
		CADir: filepath.Join(c.Dir, "ca"), MetricsAddr: waypoint.DefaultMetricsAddr, ReadinessAddr: waypoint.DefaultReadinessAddr,
	})
	if err != nil {
		t.Fatal(err)
	}
	// The test binary is the waypoint's program; go test keeps it where only root can reach it.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	prog := filepath.Join(c.Dir, "waypoint.test")
	if err := os.WriteFile(prog, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd, err := proc.Security{NetNS: wpPod.NS.Path(), UID: 1337, GID: 1337, Groups: []uint32{1337}, NoNewPrivs: true}.Command(prog)
	if err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	cmd.Env = []string{childEnv + "=" + string(cfg), "PATH=/usr/bin:/bin"}
	cmd.Stdout, cmd.Stderr = &out, &out
	p, err := proc.Start(cmd)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.Stop(10 * time.Second)
		if t.Failed() {
			t.Logf("waypoint output:\n%s", out.String())
		}
	})

	hc := &http.Client{Transport: &http.Transport{DialContext: wpPod.NS.Dial, DisableKeepAlives: true}, Timeout: time.Second}
	tu.WaitFor(t, 20*time.Second, "unprivileged waypoint ready", func() bool {
		if exited, err := p.Exited(); exited {
			t.Fatalf("waypoint exited: %v\n%s", err, out.String())
		}
		resp, err := hc.Get("http://127.0.0.1:15021/healthz/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for line := range strings.Lines(string(st)) {
		k, v, _ := strings.Cut(line, ":")
		fields[k] = strings.Join(strings.Fields(v), " ")
	}
	for k, want := range map[string]string{"Uid": "1337 1337 1337 1337", "Gid": "1337 1337 1337 1337", "CapPrm": "0000000000000000",
		"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "CapAmb": "0000000000000000", "NoNewPrivs": "1"} {
		if fields[k] != want {
			t.Errorf("waypoint process %s: %q, want %q", k, fields[k], want)
		}
	}
	for range 5 {
		got, err := call(t, client, "10.96.0.10:80")
		if err != nil {
			t.Fatalf("call through the waypoint: %v\n%s", err, out.String())
		}
		if f := strings.Fields(got); len(f) < 2 || f[0] != server.Name || !strings.HasPrefix(f[1], wpPod.IP.String()+":") {
			t.Errorf("answer %q, want %s seeing the waypoint %s", got, server.Name, wpPod.IP)
		}
	}
	if !strings.Contains(out.String(), "dst.hbone_addr="+server.IP.String()+":8080") {
		t.Errorf("the waypoint logged no forwarded connection:\n%s", out.String())
	}
}
