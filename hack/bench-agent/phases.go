package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/test/proc"
)

// Metric names (keys of sample.vals; report.go lays them out).
const (
	mGbps            = "gbps"
	mCPUPerGB        = "cpu_s_per_gb"
	mP50             = "p50_ms"
	mP99             = "p99_ms"
	mQPS             = "qps"
	mCPUPer10kReq    = "cpu_s_per_10k_req"
	mCPS             = "conn_per_s"
	mCPUPer10kCon    = "cpu_s_per_10k_conn"
	mRSSIdle         = "rss_idle_mb"
	mRSSWarm         = "rss_warm_mb"
	mRSSAfter30Warm  = "rss_after30_warm_ratio"
	mRSSConns        = "rss_conns_mb"
	mRSSAfter        = "rss_after_mb"
	mRSSAfter30      = "rss_after30_mb"
	mRSSAfter30Ratio = "rss_after30_ratio"
	mKBPerConn       = "kb_per_conn"
	mKBSrc           = "kb_per_conn_node0"
	mKBDst           = "kb_per_conn_node1"
	mKBStack         = "kb_stack_per_conn"
	mKBHeap          = "kb_live_heap_per_conn"
	mGoroutinesConn  = "goroutines_per_conn"
	mFailedReq       = "failed_req"
	mFailedConn      = "failed_conn"
)

// iperfResult is the part of `iperf3 -J` output the benchmark reads.
type iperfResult struct {
	End struct {
		SumReceived struct {
			Bytes         float64 `json:"bytes"`
			BitsPerSecond float64 `json:"bits_per_second"`
		} `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

func (b *bench) throughput(ctx context.Context, t topology) (sample, error) {
	secs := max(1, int(b.o.iperfTime.Seconds()))
	out, err := runIn(ctx, t.client, b.o.iperfTime+30*time.Second, b.tools.iperf3,
		"-c", t.server.IP.String(), "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(secs), "-J")
	var r iperfResult
	if jerr := json.Unmarshal(out, &r); jerr == nil && r.Error != "" {
		return sample{}, fmt.Errorf("iperf3: %s", r.Error)
	}
	if err != nil {
		return sample{}, err
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return sample{}, fmt.Errorf("parse iperf3 output: %w", err)
	}
	if r.End.SumReceived.Bytes == 0 {
		return sample{}, fmt.Errorf("iperf3 moved no bytes")
	}
	return sample{
		vals: map[string]float64{mGbps: r.End.SumReceived.BitsPerSecond / 1e9},
		work: map[string]float64{mCPUPerGB: r.End.SumReceived.Bytes / 1e9},
	}, nil
}

// fortioResult is the part of fortio's JSON result the benchmark reads.
type fortioResult struct {
	ActualQPS         float64
	ActualDuration    int64 // ns
	RetCodes          map[string]int64
	SocketCount       int64
	DurationHistogram struct {
		Count       int64
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
	ErrorsDurationHistogram struct{ Count int64 }
}

// counts returns the successful (HTTP 200) and failed requests; failures include connection errors
// (fortio's code -1).
func (r fortioResult) counts() (ok, failed int64) {
	for code, n := range r.RetCodes {
		if code == "200" {
			ok += n
		} else {
			failed += n
		}
	}
	return ok, failed
}

func (r fortioResult) percentile(p float64) float64 {
	for _, x := range r.DurationHistogram.Percentiles {
		if x.Percentile == p {
			return x.Value
		}
	}
	return 0
}

// fortioLoad runs `fortio load` in the client pod against the server pod's fortio server.
func (b *bench) fortioLoad(ctx context.Context, t topology, d time.Duration, path string, args ...string) (fortioResult, error) {
	out := filepath.Join(b.dir, "fortio-result.json")
	os.Remove(out)
	url := fmt.Sprintf("http://%s:%d%s", t.server.IP, httpPort, path)
	args = append(args, "-t", d.String(), "-json", out, url)
	if _, err := runIn(ctx, t.client, d+60*time.Second, b.tools.fortio, append([]string{"load", "-quiet"}, args...)...); err != nil {
		return fortioResult{}, err
	}
	var r fortioResult
	data, err := os.ReadFile(out)
	if err != nil {
		return r, fmt.Errorf("read fortio result: %w", err)
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("parse fortio result: %w", err)
	}
	ok, bad := r.counts()
	if ok == 0 || bad*20 > ok+bad {
		return r, fmt.Errorf("fortio: %d ok, %d failed (codes %v)", ok, bad, r.RetCodes)
	}
	return r, nil
}

// latency: the Istio performance suite's standard point, 1,000 req/s of 1 KB responses (istio.io
// "Performance and Scalability"), 4 connections as in its 1.24+ setup. Resolution 10 µs: fortio's
// histogram then has 10-100 µs buckets up to 1 ms and interpolates inside them.
func (b *bench) latency(ctx context.Context, t topology) (sample, error) {
	r, err := b.fortioLoad(ctx, t, b.o.latencyTime, "/echo?size=1024",
		"-qps", "1000", "-c", "4", "-r", "0.00001", "-p", "50,99")
	if err != nil {
		return sample{}, err
	}
	return sample{
		vals: map[string]float64{mP50: r.percentile(50) * 1e3, mP99: r.percentile(99) * 1e3, mQPS: r.ActualQPS,
			mFailedReq: float64(failed(r))},
		work: map[string]float64{mCPUPer10kReq: float64(r.DurationHistogram.Count) / 1e4},
	}, nil
}

// connRate: every request on its own new TCP connection (HTTP/1.1 Connection: close), tiny request and
// response, 16 at a time, unthrottled.
func (b *bench) connRate(ctx context.Context, t topology) (sample, error) {
	r, err := b.fortioLoad(ctx, t, b.o.cpsTime, "/echo", "-qps", "0", "-c", "16", "-keepalive=false")
	if err != nil {
		return sample{}, err
	}
	secs := float64(r.ActualDuration) / 1e9
	return sample{
		vals: map[string]float64{mCPS: float64(r.SocketCount) / secs, mFailedConn: float64(failed(r))},
		work: map[string]float64{mCPUPer10kCon: float64(r.SocketCount) / 1e4},
	}, nil
}

// warmConns is how many connections the memory phase opens and closes before its baseline.
const warmConns = 200

// afterCloseWait is how long after closing the idle connections the memory phase reads RSS the last time.
const afterCloseWait = 30 * time.Second

// memory restarts both agents, reads their RSS once idle, opens and closes warmConns connections (a warm-up:
// the agents drop their start-up pages once ready, and the code and data that carrying connections needs
// come back with the first ones, which is not memory per connection), reads RSS again ("warm"), opens idle
// connections from the mesh client to the holder in the server pod (each exchanges one byte first, so both
// agents have carried data on it), reads RSS again, closes them and reads it 3 s and 30 s later. RSS is read
// as it is (what an operator sees); then a forced GC (pprof's heap?gc=1 on the admin API) gives the live heap
// and the goroutine stacks. Per connection is measured from the warm baseline. Both agents are restarted
// again at the end, so the next phases do not inherit a grown heap.
func (b *bench) memory(ctx context.Context, t topology) (sample, error) {
	if err := b.restartAgents(ctx); err != nil {
		return sample{}, err
	}
	settle := func() { sleep(ctx, 3*time.Second) }
	settle()
	idle, err := b.agentRSS()
	if err != nil {
		return sample{}, err
	}
	wop, err := b.openIdle(ctx, t, warmConns)
	if err != nil {
		return sample{}, err
	}
	if err := wop.close(); err != nil {
		return sample{}, err
	}
	settle()
	warm, err := b.agentRSS()
	if err != nil {
		return sample{}, err
	}
	idleMem, err := b.liveMemory(ctx)
	if err != nil {
		return sample{}, err
	}
	n := b.o.idleConns
	op, err := b.openIdle(ctx, t, n)
	if err != nil {
		return sample{}, err
	}
	settle()
	held, err := b.agentRSS()
	if err != nil {
		op.close()
		return sample{}, err
	}
	heldMem, err := b.liveMemory(ctx)
	if err == nil && b.profiling {
		err = b.heapProfiles(ctx, "memory")
	}
	if cerr := op.close(); err == nil {
		err = cerr
	}
	if err != nil {
		return sample{}, err
	}
	closed := time.Now()
	settle()
	after, err := b.agentRSS()
	if err != nil {
		return sample{}, err
	}
	// The target: back within 30 s of the close to idle + 20% (the agents return a burst's memory to the OS
	// when their goroutine count falls, package proxy/memory).
	sleep(ctx, time.Until(closed.Add(afterCloseWait)))
	after30, err := b.agentRSS()
	if err != nil {
		return sample{}, err
	}
	if err := b.restartAgents(ctx); err != nil {
		return sample{}, err
	}
	perConn := func(before, with int64) float64 { return float64(with-before) / float64(n) }
	return sample{vals: map[string]float64{
		mRSSIdle:         float64(sum(idle)) / 1024,
		mRSSConns:        float64(sum(held)) / 1024,
		mRSSAfter:        float64(sum(after)) / 1024,
		mRSSAfter30:      float64(sum(after30)) / 1024,
		mRSSAfter30Ratio: float64(sum(after30)) / float64(sum(idle)),
		mRSSWarm:         float64(sum(warm)) / 1024,
		mRSSAfter30Warm:  float64(sum(after30)) / float64(sum(warm)),
		mKBPerConn:       perConn(sum(warm), sum(held)),
		mKBSrc:           perConn(warm[0], held[0]),
		mKBDst:           perConn(warm[1], held[1]),
		mKBStack:         perConn(idleMem.stack, heldMem.stack) / 1024,
		mKBHeap:          perConn(idleMem.heapLive, heldMem.heapLive) / 1024,
		mGoroutinesConn:  perConn(idleMem.goroutines, heldMem.goroutines),
	}}, nil
}

// opener is the running `open` helper holding idle connections.
type opener struct {
	p      *proc.Proc
	stdin  io.WriteCloser
	lines  chan string
	stderr *strings.Builder
}

// openIdle starts the `open` helper in the client pod and waits until it holds n connections to the server's
// hold port.
func (b *bench) openIdle(ctx context.Context, t topology, n int) (*opener, error) {
	return b.startOpener(ctx, t, fmt.Sprintf("%s:%d", t.server.IP, holdPort), n)
}

// startOpener starts the `open` helper in the client pod and waits until it holds n connections to addr.
func (b *bench) startOpener(ctx context.Context, t topology, addr string, n int) (*opener, error) {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", t.client.NS.Name, b.tools.self, "open",
		"-to", addr, "-n", strconv.Itoa(n))
	op := &opener{lines: make(chan string, 4), stderr: &strings.Builder{}}
	cmd.Stderr = op.stderr
	var err error
	if op.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if op.p, err = proc.Start(cmd); err != nil { // cancelling kills its process group (test/proc)
		return nil, fmt.Errorf("start opener: %w", err)
	}
	go readLines(stdout, op.lines) // ends at the opener's exit, which close waits for
	line, ok := <-op.lines
	if !ok || !strings.HasPrefix(line, "open ") {
		op.p.Signal(syscall.SIGKILL)
		err := op.close()
		return nil, fmt.Errorf("opener did not open %d connections (%q): %v", n, line, err)
	}
	return op, nil
}

// close makes the opener close its connections and waits for it to exit.
func (op *opener) close() error {
	op.stdin.Close()
	for range op.lines {
	}
	if err := op.p.Wait(); err != nil {
		return fmt.Errorf("opener: %w: %s", err, strings.TrimSpace(op.stderr.String()))
	}
	return nil
}

func failed(r fortioResult) int64 {
	_, bad := r.counts()
	return bad
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
