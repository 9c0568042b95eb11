package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/test/proc"
)

// The soak (`make soak`, -soak DURATION) puts steady load on both agents for a long time and checks that
// nothing grows and that policy holds while it changes:
//   - -soak-conns long-lived connections (default 10,000) from the mesh client to the cross-node mesh
//     server, opened at the start and checked end to end (a byte echoed on each) at the end;
//   - -soak-rate new connections per second (default 1,000) to an allowed port, each one byte echoed,
//     and a trickle (10/s) to a port a DENY policy covers, which must never echo;
//   - every -soak-churn (default 10 s) the configuration file changes (a DENY policy on an unused port
//     appears or disappears), so both agents recompile policy and recheck every live connection.
//
// Goroutines (admin pprof), open file descriptors (/proc/<pid>/fd) and RSS of both agents are sampled
// after a warm-up (start), at the middle and at the end; each must stay within 10% of its start value.
// The run fails if any is not flat, any allowed connection failed, any denied one was let through, or a
// long-lived connection died.

// denyPort is a second hold server in the server pods; the soak's policy denies it.
const denyPort = 9001

// soakOptions are the -soak-* settings.
type soakOptions struct {
	d, churn, warmup time.Duration
	conns, rate      int
}

// soakPolicies is appended to the lab's configuration: a fixed DENY for denyPort and, on odd churn
// steps, a DENY on a port nobody uses (so that every change is a real recompile and recheck but never
// affects traffic the soak counts on).
func soakPolicies(step int) string {
	s := `---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: soak-deny, namespace: mesh}
spec:
  selector: {matchLabels: {app: mesh-server-cross}}
  action: DENY
  rules: [{to: [{operation: {ports: ["` + strconv.Itoa(denyPort) + `"]}}]}]
`
	if step%2 == 1 {
		s += fmt.Sprintf(`---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: soak-churn-%d, namespace: mesh}
spec:
  selector: {matchLabels: {app: mesh-server-cross}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/nobody/sa/s%d]}}], to: [{operation: {ports: ["9099"]}}]}]
`, step, step)
	}
	return s
}

// procSample is one agent's resources at one moment.
type procSample struct {
	goroutines, fds int
	rssKB           int64
}

// soak runs the soak and prints its report; the error says what broke.
func (b *bench) soak(ctx context.Context, so soakOptions) error {
	base, err := os.ReadFile(b.config)
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	writeConfig := func(step int) error {
		tmp := b.config + ".tmp"
		if err := os.WriteFile(tmp, append(append([]byte{}, base...), soakPolicies(step)...), 0o644); err != nil {
			return fmt.Errorf("write config: %w", err)
		}
		return os.Rename(tmp, b.config) // the agents' watcher never sees a half-written file
	}
	if err := writeConfig(0); err != nil {
		return err
	}
	t := b.topo("cross", true)
	allowAddr := fmt.Sprintf("%s:%d", t.server.IP, holdPort)
	denyAddr := fmt.Sprintf("%s:%d", t.server.IP, denyPort)
	// The DENY must be in force before the trickle starts: wait until a connection to denyPort is refused.
	if err := waitDenied(ctx, b, t, denyAddr); err != nil {
		return err
	}

	fmt.Fprintf(os.Stderr, "soak: opening %d long-lived connections to %s\n", so.conns, allowAddr)
	op, err := b.startOpener(ctx, t, allowAddr, so.conns)
	if err != nil {
		return err
	}
	defer op.close()

	runCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	allowed := b.startChurn(runCtx, t, allowAddr, so.rate, so.d+so.warmup, "allow")
	denied := b.startChurn(runCtx, t, denyAddr, 10, so.d+so.warmup, "deny")

	var changes atomic.Int64
	var churnWG sync.WaitGroup
	var churnErr error
	churnWG.Go(func() {
		tick := time.NewTicker(so.churn)
		defer tick.Stop()
		for step := 1; ; step++ {
			select {
			case <-runCtx.Done():
				return
			case <-tick.C:
			}
			if err := writeConfig(step); err != nil {
				churnErr = err
				return
			}
			changes.Add(1)
		}
	})

	fmt.Fprintf(os.Stderr, "soak: warming up for %s\n", so.warmup)
	sleep(ctx, so.warmup)
	var samples [3][]procSample
	names := []string{"start", "middle", "end"}
	for i := range samples {
		if i > 0 {
			sleep(ctx, so.d/2)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if samples[i], err = b.sampleAgents(ctx); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "soak: %s %s\n", names[i], formatProcSamples(samples[i]))
	}
	alive, dead, err := op.check()
	if err != nil {
		return err
	}
	stopLoad()
	churnWG.Wait()
	ar, aerr := allowed.wait()
	dr, derr := denied.wait()
	if err := errors.Join(churnErr, aerr, derr); err != nil {
		return err
	}

	var problems []string
	fmt.Printf("\nSoak: %s after a %s warm-up; %d long-lived connections; %d new connections/s to an allowed port, 10/s to a denied one; policy changed %d times (every %s)\n\n",
		so.d, so.warmup, so.conns, so.rate, changes.Load(), so.churn)
	fmt.Printf("%-12s %-7s %10s %10s %10s %8s\n", "agent", "metric", "start", "middle", "end", "change")
	for n := range b.agents {
		for _, m := range []struct {
			name string
			get  func(procSample) float64
		}{
			{"goroutines", func(s procSample) float64 { return float64(s.goroutines) }},
			{"fds", func(s procSample) float64 { return float64(s.fds) }},
			{"rss_mb", func(s procSample) float64 { return float64(s.rssKB) / 1024 }},
		} {
			start, mid, end := m.get(samples[0][n]), m.get(samples[1][n]), m.get(samples[2][n])
			worst := math.Max(math.Abs(mid-start), math.Abs(end-start)) / start
			verdict := ""
			if worst > 0.10 {
				verdict = "  NOT FLAT"
				problems = append(problems, fmt.Sprintf("node%d %s changed by %.0f%%", n, m.name, 100*worst))
			}
			fmt.Printf("%-12s %-10s %10.1f %10.1f %10.1f %+7.1f%%%s\n", fmt.Sprintf("node%d", n), m.name, start, mid, end, 100*(end-start)/start, verdict)
		}
	}
	fmt.Printf("\nnew connections, allowed port: %d attempted, %d echoed, %d failed (must be 0); %d not started (pacing fell behind); at most %d in flight\n",
		ar.Attempted, ar.OK, ar.Failed, ar.Skipped, ar.MaxInFlight)
	fmt.Printf("  time per allowed connection (connect, echo, close): p50 %.2f ms, p99 %.2f ms, p99.9 %.2f ms, max %.0f ms\n",
		ar.P50ms, ar.P99ms, ar.P999ms, ar.MaxMs)
	fmt.Printf("new connections, denied port:  %d attempted, %d refused, %d let through (must be 0)\n", dr.Attempted, dr.Failed, dr.OK)
	fmt.Printf("long-lived connections at the end: %d alive, %d dead (must be 0)\n", alive, dead)
	if ar.Failed > 0 {
		problems = append(problems, fmt.Sprintf("%d allowed connections failed (first errors: %s)", ar.Failed, strings.Join(ar.Errors, "; ")))
	}
	if dr.OK > 0 {
		problems = append(problems, fmt.Sprintf("%d connections to the denied port were let through", dr.OK))
	}
	if dead > 0 {
		problems = append(problems, fmt.Sprintf("%d long-lived connections died", dead))
	}
	if ar.Skipped > int64(so.rate) { // more than one second's worth: the rate asked for was not offered
		problems = append(problems, fmt.Sprintf("only %d of %d connections were offered (client pacing fell behind)", ar.Attempted, ar.Attempted+ar.Skipped))
	}
	if len(problems) > 0 {
		return fmt.Errorf("soak failed: %s", strings.Join(problems, "; "))
	}
	fmt.Println("\nsoak passed")
	return nil
}

// waitDenied waits until a connection to addr from the client pod is closed without an echo.
func waitDenied(ctx context.Context, b *bench, t topology, addr string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := t.client.NS.Dial(ctx, "tcp", addr)
		if err == nil {
			echoed := exchange(c) == nil
			c.Close()
			if !echoed {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the DENY policy for %s was not in force after 30 s", addr)
		}
		sleep(ctx, 200*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// sampleAgents reads goroutines, fds and RSS of both agents.
func (b *bench) sampleAgents(ctx context.Context) ([]procSample, error) {
	out := make([]procSample, len(b.agents))
	for i, a := range b.agents {
		body, err := b.adminGet(ctx, i, "/debug/pprof/goroutine?debug=1", 30*time.Second)
		if err != nil {
			return nil, err
		}
		first, _, _ := strings.Cut(string(body), "\n")
		n, ok := strings.CutPrefix(first, "goroutine profile: total ")
		if !ok {
			return nil, fmt.Errorf("node%d goroutine profile: unexpected first line %q", i, first)
		}
		if out[i].goroutines, err = strconv.Atoi(strings.TrimSpace(n)); err != nil {
			return nil, fmt.Errorf("node%d goroutine count: %w", i, err)
		}
		fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", a.p.Pid()))
		if err != nil {
			return nil, fmt.Errorf("node%d fds: %w", i, err)
		}
		out[i].fds = len(fds)
		if out[i].rssKB, err = rssKB(a.p.Pid()); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func formatProcSamples(ss []procSample) string {
	var parts []string
	for i, s := range ss {
		parts = append(parts, fmt.Sprintf("node%d goroutines=%d fds=%d rss_mb=%.1f", i, s.goroutines, s.fds, float64(s.rssKB)/1024))
	}
	return strings.Join(parts, "; ")
}

// check asks the opener to exchange a byte on every held connection.
func (op *opener) check() (alive, dead int, err error) {
	if _, err := io.WriteString(op.stdin, "check\n"); err != nil {
		return 0, 0, fmt.Errorf("ask the opener to check: %w", err)
	}
	line, ok := <-op.lines
	if !ok {
		return 0, 0, fmt.Errorf("opener exited: %s", strings.TrimSpace(op.stderr.String()))
	}
	if _, err := fmt.Sscanf(line, "alive %d dead %d", &alive, &dead); err != nil {
		return 0, 0, fmt.Errorf("opener check %q: %w", line, err)
	}
	return alive, dead, nil
}

// churnResult is the `churn` helper's final line.
type churnResult struct {
	Attempted, OK, Failed, Skipped int64
	MaxInFlight                    int64    // the most connections open at once (each one byte echoed, then closed)
	Errors                         []string // the first few
	// Connect + one byte echoed + close, of the connections that succeeded, in milliseconds.
	P50ms, P99ms, P999ms, MaxMs float64
}

// churner is a running `churn` helper.
type churner struct {
	p      *proc.Proc
	out    strings.Builder
	stderr strings.Builder
	err    error
}

// startChurn runs the `churn` helper in the client pod for d (it stops earlier when ctx ends).
func (b *bench) startChurn(ctx context.Context, t topology, addr string, rate int, d time.Duration, expect string) *churner {
	ch := &churner{}
	cmd := exec.Command("ip", "netns", "exec", t.client.NS.Name, b.tools.self, "churn",
		"-to", addr, "-rate", strconv.Itoa(rate), "-d", d.String(), "-expect", expect)
	cmd.Stdout, cmd.Stderr = &ch.out, &ch.stderr
	if ch.p, ch.err = proc.Start(cmd); ch.err != nil {
		ch.err = fmt.Errorf("start churn: %w", ch.err)
		return ch
	}
	go func() { // ends with ctx or the helper: SIGINT makes it print its result and exit
		select {
		case <-ctx.Done():
			ch.p.Signal(syscall.SIGINT)
		case <-ch.p.Done():
		}
	}()
	return ch
}

// wait waits for the helper to exit and parses its result.
func (ch *churner) wait() (churnResult, error) {
	var r churnResult
	if ch.err != nil {
		return r, ch.err
	}
	if err := ch.p.Wait(); err != nil {
		return r, fmt.Errorf("churn: %w: %s", err, strings.TrimSpace(ch.stderr.String()))
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(ch.out.String())), &r); err != nil {
		return r, fmt.Errorf("churn result %q: %w", ch.out.String(), err)
	}
	return r, nil
}

// churnHelper is the `churn` helper: new connections to -to at -rate per second for -d, each one byte
// exchanged and then closed. With -expect allow an exchange that fails counts as failed; with -expect
// deny an exchange that succeeds is counted as OK (let through). It prints one JSON churnResult line.
func churnHelper(args []string) error {
	fs := flag.NewFlagSet("churn", flag.ContinueOnError)
	to := fs.String("to", "", "server address")
	rate := fs.Int("rate", 1000, "new connections per second")
	d := fs.Duration("d", time.Minute, "how long")
	// Open loop: connections start on schedule whatever the latency of earlier ones (no coordinated
	// omission); the bound only keeps a stalled mesh from exhausting the client. 1,024 in flight is more
	// than a second's worth at the default rate, so a mesh that keeps up never reaches it.
	workers := fs.Int("c", 1024, "connections in flight at most")
	expect := fs.String("expect", "allow", "allow or deny")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *to == "" || *rate < 1 {
		return errors.New("-to and a positive -rate are required")
	}
	ctx, stop := context.WithTimeout(context.Background(), *d)
	defer stop()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { // ends with the process
		<-sig
		stop()
	}()

	var r churnResult
	var mu sync.Mutex
	var inFlight atomic.Int64
	var durations []time.Duration // of the exchanges that succeeded
	tokens := make(chan struct{}, *workers)
	var wg sync.WaitGroup
	for range *workers {
		wg.Go(func() {
			for range tokens {
				n := inFlight.Add(1)
				t0 := time.Now()
				c, err := (&net.Dialer{Timeout: 5 * time.Second}).Dial("tcp", *to)
				if err == nil {
					err = exchange(c)
					c.Close()
				}
				took := time.Since(t0)
				inFlight.Add(-1)
				mu.Lock()
				r.Attempted++
				r.MaxInFlight = max(r.MaxInFlight, n)
				if err == nil {
					durations = append(durations, took)
				}
				switch {
				case err == nil:
					r.OK++
				default:
					r.Failed++
					if *expect == "allow" && len(r.Errors) < 5 {
						r.Errors = append(r.Errors, err.Error())
					}
				}
				mu.Unlock()
			}
		})
	}
	interval := time.Second / time.Duration(*rate)
	next := time.Now()
	for ctx.Err() == nil {
		next = next.Add(interval)
		if wait := time.Until(next); wait > 0 {
			time.Sleep(wait)
		}
		select {
		case tokens <- struct{}{}:
		default:
			mu.Lock()
			r.Skipped++
			mu.Unlock()
		}
	}
	close(tokens)
	wg.Wait()
	if len(durations) > 0 {
		slices.Sort(durations)
		at := func(q float64) float64 { return durations[int(q*float64(len(durations)-1))].Seconds() * 1e3 }
		r.P50ms, r.P99ms, r.P999ms, r.MaxMs = at(0.5), at(0.99), at(0.999), at(1)
	}
	return json.NewEncoder(os.Stdout).Encode(r)
}

// exchange writes one byte and reads its echo, within 5 s.
func exchange(c net.Conn) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b := []byte{1}
	if _, err := c.Write(b); err != nil {
		return err
	}
	_, err := io.ReadFull(c, b)
	return err
}

// runSoak builds the lab and runs the soak.
func runSoak(ctx context.Context, o options) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces and eBPF capture); run it with sudo")
	}
	tools, err := findTools(ctx)
	if err != nil {
		return err
	}
	b, err := newBench(ctx, o, tools)
	if err != nil {
		return err
	}
	defer b.close()
	fmt.Fprintf(os.Stderr, "lab %s up; agents ready (capture %s); logs in %s\n", b.lab.Name, b.captureMode, b.dir)
	return b.soak(ctx, o.soak)
}

// readLines forwards r's lines to ch until r ends, then closes ch.
func readLines(r io.Reader, ch chan<- string) {
	defer close(ch)
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		ch <- sc.Text()
	}
}
