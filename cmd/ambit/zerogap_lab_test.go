package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/meshlab"
	"github.com/ambit-mesh/ambit/test/proc"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// TestMain lets the tests run this binary as `ambit` (AMBIT_TEST_MAIN=1): the real command, flags and
// signal handling, in a process of its own.
func TestMain(m *testing.M) {
	if os.Getenv("AMBIT_TEST_MAIN") == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

// agentProc is one `ambit agent` process of a lab node.
type agentProc struct {
	p   *proc.Proc
	log string
}

func (a *agentProc) logged(s string) bool {
	b, _ := os.ReadFile(a.log)
	return strings.Contains(string(b), s)
}

// TestZeroGapRestartProcesses upgrades the agents of a two-node lab as a DaemonSet rolling update with
// maxSurge 1 does: a new `ambit agent` process starts next to the running one, takes its listeners over
// --handoff-socket, and the old one, drained, idles until it is sent SIGTERM. Five restarts, alternating
// nodes, under a stream of new cross-node connections: none fails and none stalls (the client never
// retransmits a SYN).
func TestZeroGapRestartProcesses(t *testing.T) {
	tu.RequireRoot(t)
	for _, mode := range []string{"ebpf", "tproxy"} {
		t.Run(mode, func(t *testing.T) { testZeroGapRestartProcesses(t, mode) })
	}
}

func testZeroGapRestartProcesses(t *testing.T, mode string) {
	l := lab.Start(t, lab.Options{Nodes: 2, PodsPerNode: 3})
	dir := t.TempDir()
	config := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(config, []byte(meshlab.MeshYAML("")(l)), 0o600); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	gen := 0
	start := func(n *lab.Node) *agentProc {
		t.Helper()
		gen++
		g := gen
		a := &agentProc{log: filepath.Join(dir, fmt.Sprintf("agent%d.log", g))}
		logf, err := os.Create(a.log)
		if err != nil {
			t.Fatal(err)
		}
		defer logf.Close()
		cmd := exec.Command(self, "agent", "--node-name", fmt.Sprintf("node%d", n.Index), "--config-file", config,
			"--config-poll", "100ms", "--ca-dir", filepath.Join(dir, "ca"), "--capture", mode, "--netns", n.NS.Path(),
			"--uplinks", n.Uplink, "--pin-dir", n.PinDir, "--drain-timeout", "30s",
			"--handoff-socket", filepath.Join(dir, fmt.Sprintf("handoff%d.sock", n.Index)))
		cmd.Env = append(os.Environ(), "AMBIT_TEST_MAIN=1")
		cmd.Stdout, cmd.Stderr = logf, logf
		if a.p, err = proc.Start(cmd); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = a.p.Stop(35 * time.Second)
			if t.Failed() {
				b, _ := os.ReadFile(a.log)
				t.Logf("agent %d (node%d) log:\n%s", g, n.Index, lastLines(string(b), 30))
			}
		})
		tu.WaitFor(t, 30*time.Second, "agent ready", func() bool {
			select {
			case <-a.p.Done():
				b, _ := os.ReadFile(a.log)
				t.Fatalf("agent exited: %s", lastLines(string(b), 20))
			default:
			}
			return a.logged(`msg="agent ready"`)
		})
		return a
	}
	agents := []*agentProc{start(l.Nodes[0]), start(l.Nodes[1])}
	client, server := l.Nodes[0].Pods[0], l.Nodes[1].Pods[0]
	meshlab.Serve(t, server, 8080)
	addr := server.IP.String() + ":8080"
	if got, err := meshlab.Call(t, client, addr); err != nil || !strings.HasPrefix(got, server.Name+" ") {
		t.Fatalf("before the restarts: answer %q, %v", got, err)
	}

	syns := meshlab.SynRetransmits(t, client)
	var ok, failed atomic.Int64
	var mu sync.Mutex
	var errs []string
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	began := time.Now()
	for range 32 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if err := echoOnce(client, addr); err != nil {
					failed.Add(1)
					mu.Lock()
					if len(errs) < 5 {
						errs = append(errs, err.Error())
					}
					mu.Unlock()
					continue
				}
				ok.Add(1)
			}
		})
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	for r := range 5 {
		i := r % 2
		old := agents[i]
		agents[i] = start(l.Nodes[i])
		tu.WaitFor(t, 40*time.Second, "old agent drained", func() bool { return old.logged("waiting to be stopped") })
		if err := old.p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		<-old.p.Done()
		if exited, err := old.p.Exited(); !exited || err != nil {
			t.Errorf("old agent of node%d: exited %v, %v", i, exited, err)
		}
		t.Logf("restart %d (node%d): %d connections so far, %d failed", r+1, i, ok.Load(), failed.Load())
	}
	cancel()
	wg.Wait()
	elapsed := time.Since(began)
	t.Logf("%s: %d connections in %v through 5 process restarts (%.0f/s), %d failed", mode, ok.Load(), elapsed.Round(time.Millisecond),
		float64(ok.Load())/elapsed.Seconds(), failed.Load())
	if failed.Load() > 0 {
		t.Errorf("%d new connections failed; first errors: %s", failed.Load(), strings.Join(errs, "; "))
	}
	if ok.Load() == 0 {
		t.Error("no connection succeeded")
	}
	// No client waited for a listener: not one SYN had to be sent again.
	if n := meshlab.SynRetransmits(t, client) - syns; n > 0 {
		t.Errorf("%d SYNs retransmitted: new connections stalled while an agent restarted", n)
	}
}

func echoOnce(from *lab.Pod, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := from.NS.Dial(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	return nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
