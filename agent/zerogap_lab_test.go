package agent_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/meshlab"
)

// TestZeroGapRestart restarts the agents of both nodes five times, alternately, while a client opens
// new connections through the mesh (cross-node HBONE: node0's outbound capture and HBONE client, node1's
// inbound HBONE) as fast as the target rate of 1,000 per second or the machine allows: every connection
// must succeed without stalling (no SYN retransmitted), and a connection opened before the restarts
// must keep working through them and end normally within the drain timeout.
func TestZeroGapRestart(t *testing.T) {
	for _, mode := range []string{agent.CaptureEBPF, agent.CaptureTPROXY} {
		t.Run(mode, func(t *testing.T) { testZeroGapRestart(t, mode) })
	}
}

func testZeroGapRestart(t *testing.T, mode string) {
	const drain = 30 * time.Second
	c := startCluster(t, 2, 3, mode, meshYAML(""), func(_ int, cfg *agent.Config) { cfg.DrainTimeout = drain })
	client, server := c.Lab.Nodes[0].Pods[0], c.Lab.Nodes[1].Pods[0]
	serve(t, server, 8080)
	addr := server.IP.String() + ":8080"
	if got, err := call(t, client, addr); err != nil || !strings.HasPrefix(got, server.Name+" ") {
		t.Fatalf("before the restarts: answer %q, %v", got, err)
	}

	long := openLongLived(t, client, addr)
	syns := meshlab.SynRetransmits(t, client)

	load := startLoad(t, client, addr, time.Millisecond, 64)
	for r := range 5 {
		node := r % 2
		c.RestartAgent(node)
		t.Logf("restart %d (node%d) done: %d connections so far, %d failed", r+1, node, load.ok.Load(), load.failed.Load())
		if r == 0 {
			long.roundTrip(t, "after one restart")
		}
		if r == 1 {
			// Both agents the long-lived connection goes through have handed off and drain: it still
			// carries data, then ends normally (the drain did not have to cut it).
			long.roundTrip(t, "after two restarts")
			long.close(t)
		}
	}
	elapsed, ok, failed, errs := load.stop()
	t.Logf("%s: %d connections in %v through 5 restarts (%.0f/s), %d failed", mode, ok, elapsed.Round(time.Millisecond),
		float64(ok)/elapsed.Seconds(), failed)
	if failed > 0 {
		t.Errorf("%d of %d new connections failed during restarts; first errors: %s", failed, ok+failed, strings.Join(errs, "; "))
	}
	if ok == 0 {
		t.Error("no connection succeeded")
	}
	// No client waited for a listener: not one SYN had to be sent again.
	if n := meshlab.SynRetransmits(t, client) - syns; n > 0 {
		t.Errorf("%d SYNs retransmitted: new connections stalled while an agent restarted", n)
	}
	c.WaitDrained()
	for i, l := range c.Logs {
		if strings.Contains(l.String(), "drain deadline passed") {
			t.Errorf("node%d: an old agent had to cut connections at the drain deadline", i)
		}
	}
	if got, err := call(t, client, addr); err != nil || !strings.HasPrefix(got, server.Name+" ") {
		t.Fatalf("after the restarts: answer %q, %v", got, err)
	}
}

// longLived is an echo connection through the mesh.
type longLived struct {
	c io.ReadWriteCloser
	r *bufio.Reader
}

func openLongLived(t *testing.T, from *lab.Pod, addr string) *longLived {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := from.NS.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	l := &longLived{c: c, r: bufio.NewReader(c)}
	if _, err := io.WriteString(c, "hello\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.r.ReadString('\n'); err != nil {
		t.Fatalf("long-lived connection: %v", err)
	}
	l.roundTrip(t, "before the restarts")
	return l
}

func (l *longLived) roundTrip(t *testing.T, when string) {
	t.Helper()
	msg := "still here " + when + "\n"
	if _, err := io.WriteString(l.c, msg); err != nil {
		t.Fatalf("long-lived connection %s: write: %v", when, err)
	}
	got, err := l.r.ReadString('\n')
	if err != nil || got != msg {
		t.Fatalf("long-lived connection %s: echo %q, %v", when, got, err)
	}
}

// close half-closes the connection and reads the server's EOF: the connection ended normally.
func (l *longLived) close(t *testing.T) {
	t.Helper()
	cw, ok := l.c.(interface{ CloseWrite() error })
	if !ok {
		t.Fatalf("long-lived connection %T cannot half-close", l.c)
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(l.r); err != nil || len(rest) != 0 {
		t.Fatalf("long-lived connection end: %q, %v", rest, err)
	}
	l.c.Close()
}

// load opens connections from a pod at up to one per tick on a fixed number of workers; each sends a
// line and must get the server's answer.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	start  time.Time

	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string // guarded by mu; the first few
}

func startLoad(t *testing.T, from *lab.Pod, addr string, tick time.Duration, workers int) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel, start: time.Now()}
	t.Cleanup(func() { l.stop() })
	tokens := make(chan struct{})
	l.wg.Go(func() {
		tk := time.NewTicker(tick)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				close(tokens)
				return
			case <-tk.C:
				select {
				case tokens <- struct{}{}:
				default: // every worker busy: the machine's rate, not the target's
				}
			}
		}
	})
	for range workers {
		l.wg.Go(func() {
			for range tokens {
				if err := oneCall(from, addr); err != nil {
					l.failed.Add(1)
					l.mu.Lock()
					if len(l.errs) < 5 {
						l.errs = append(l.errs, err.Error())
					}
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
			}
		})
	}
	return l
}

func (l *load) stop() (time.Duration, int64, int64, []string) {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Since(l.start), l.ok.Load(), l.failed.Load(), l.errs
}

func oneCall(from *lab.Pod, addr string) error {
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
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if !strings.Contains(line, " ") {
		return fmt.Errorf("answer %q", line)
	}
	return nil
}
