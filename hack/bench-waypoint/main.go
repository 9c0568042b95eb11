// Command bench-waypoint compares Ambit's L7 engine with nginx and HAProxy (Debian packages) configured
// as equivalent reverse proxies, side by side in one run, and measures the full HBONE waypoint path
// against the direct path.
//
// Phase "proxies" (no root needed): each proxy runs as its own process pinned to CPU 1 with one worker
// (GOMAXPROCS=1, worker_processes 1, nbthread 1); the load generator and a Go backend answering 1 KB run
// pinned to CPU 0. Downstream HTTP/1.1 (keep-alive and not) and HTTP/2 (h2c prior knowledge); upstream
// HTTP/1.1 keep-alive for all three; and gRPC (grpc.go: fortio's gRPC ping, HTTP/2 both ways). For each:
// the maximum rate (closed loop, requests/s on the one proxy core) and the proxy's CPU time per request
// during it, latency at a fixed rate (open loop, p50/p99 added over the direct path), resident memory at
// 1,000 requests/s, anonymous memory per idle connection and per in-flight h2c stream, and memory growth
// while slow clients download a large body.
//
// Phase "hbone" (root): a two-node lab with one agent per node and an L7 waypoint, all in-process:
// client -> agent -> waypoint -> agent -> server, against the same server reached without the mesh.
// Besides requests/s and latency, each path's CPU time and read/write system calls per request (the
// whole process: client, agents, waypoint and server); -l7-cpuprofile records the L7 path's max-rate
// run with each part under a pprof label (go tool pprof -tags; -tagfocus component=waypoint).
//
//	make bench-waypoint            # both phases, medians of ROUNDS (default 5) rounds
//	go run ./hack/bench-waypoint -phase proxies -rounds 5 -duration 3s
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ambit-mesh/ambit/test/proc"
	"github.com/ambit-mesh/ambit/test/testutil"
)

func main() {
	phase := flag.String("phase", "all", "proxies, hbone or all")
	rounds := flag.Int("rounds", 5, "rounds per measurement (medians are reported)")
	dur := flag.Duration("duration", 3*time.Second, "length of one measurement")
	rate := flag.Int("rate", 1000, "fixed rate for latency and memory (requests/s)")
	only := flag.String("proxies", "ambit,nginx,haproxy", "proxies to compare (comma-separated)")
	modeList := flag.String("modes", "h1,h1-close,h2c,grpc,grpc-mux", "client modes to measure (comma-separated: h1, h1-close, h2c, grpc, grpc-mux)")
	flag.StringVar(&ambitBase, "ambit-base", "", "also run this bench-waypoint binary's Ambit engine as proxy \"ambit-base\" (old vs new side by side)")
	serve := flag.String("serve-ambit", "", "internal: run the Ambit engine as a reverse proxy on this address")
	backend := flag.String("backend", "", "internal: backend address for -serve-ambit")
	grpcListen := flag.String("grpc-listen", "", "internal: also serve gRPC (appProtocol grpc) on this address with -serve-ambit")
	grpcBackend := flag.String("grpc-backend", "", "internal: gRPC backend address for -grpc-listen")
	cpuProfile := flag.String("cpuprofile", "", "internal: write a CPU profile of -serve-ambit here")
	flag.StringVar(&l7Profile, "l7-cpuprofile", "", "phase hbone: write a CPU profile of the process while only the L7 waypoint path runs (its max-rate runs)")
	flag.Parse()
	if err := selectModes(*modeList); err != nil {
		fmt.Fprintln(os.Stderr, "bench-waypoint:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *serve != "" {
		if *cpuProfile != "" {
			f, err := os.Create(*cpuProfile)
			if err == nil {
				pprof.StartCPUProfile(f)
				defer pprof.StopCPUProfile()
			}
		}
		if err := serveAmbit(ctx, *serve, *backend, *grpcListen, *grpcBackend); err != nil {
			fmt.Fprintln(os.Stderr, "serve-ambit:", err)
			os.Exit(1)
		}
		return
	}
	if *cpuProfile != "" && *serve == "" && l7Profile == "" {
		f, err := os.Create(*cpuProfile)
		if err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	var err error
	switch *phase {
	case "proxies":
		err = pinned(func() error { return benchProxies(ctx, *rounds, *dur, *rate, *only) })
	case "hbone":
		err = benchHBONE(ctx, *rounds, *dur)
	case "all":
		if err = pinned(func() error { return benchProxies(ctx, *rounds, *dur, *rate, *only) }); err == nil {
			err = benchHBONE(ctx, *rounds, *dur)
		}
	default:
		err = fmt.Errorf("unknown phase %q", *phase)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-waypoint:", err)
		os.Exit(1)
	}
}

const pinEnv = "AMBIT_BENCH_PINNED"

// pinned runs f in a copy of this process pinned to CPU 0 (the proxies get CPU 1).
func pinned(f func() error) error {
	if os.Getenv(pinEnv) != "" {
		return f()
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := append([]string{"-c", "0", self}, os.Args[1:]...)
	for i, a := range args {
		if a == "all" {
			args[i] = "proxies"
		}
	}
	if !slices.Contains(os.Args[1:], "-phase") && !slices.Contains(os.Args[1:], "--phase") {
		args = append(args, "-phase", "proxies")
	}
	cmd := exec.Command("taskset", args...)
	cmd.Env = append(os.Environ(), pinEnv+"=1")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := proc.Run(cmd); err != nil { // the pinned copy (and so its proxies) dies with us (test/proc)
		return fmt.Errorf("run pinned: %w", err)
	}
	return nil
}

// ---- backend ----

var payload = []byte(strings.Repeat("x", 1024))

func startBackend() (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-time.After(2 * time.Second):
			case <-r.Context().Done():
			}
		}
		if r.URL.Path == "/big" {
			w.Header().Set("Content-Length", strconv.Itoa(256<<20))
			buf := make([]byte, 64<<10)
			for i := 0; i < (256<<20)/len(buf); i++ {
				if _, err := w.Write(buf); err != nil {
					return
				}
			}
			return
		}
		w.Header().Set("Content-Length", "1024")
		w.Write(payload)
	})}
	go srv.Serve(ln)
	return ln.Addr().String(), func() { srv.Close() }, nil
}

// ---- proxies ----

type proxy struct {
	name string
	// h1 and h2 are the addresses for HTTP/1.1 and h2c clients; grpc for gRPC clients ("" when the
	// proxy has no gRPC listener: ambit-base).
	h1, h2, grpc string
	p            *proc.Proc
	dir          string
}

func ensureTools() error {
	var missing []string
	for _, b := range []string{"nginx", "haproxy", "taskset"} {
		if _, err := exec.LookPath(b); err != nil {
			if _, err := os.Stat("/usr/sbin/" + b); err != nil {
				missing = append(missing, b)
			}
		}
	}
	if len(missing) == 0 {
		return nil
	}
	fmt.Println("installing nginx-light and haproxy (Debian packages)...")
	cmd := exec.Command("apt-get", "install", "-y", "-q", "nginx-light", "haproxy")
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := proc.Run(cmd); err != nil {
		return fmt.Errorf("install %v (run apt-get update first?): %w", missing, err)
	}
	return nil
}

func bin(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	return "/usr/sbin/" + name
}

// startProxy starts proxy name in front of backend. Ambit's engine (this program) gets its listener from us
// (inherited as fd 3): no port can be taken from it. nginx and HAProxy (and -ambit-base, which may predate fd
// passing) bind ports we choose outside the ephemeral range; if one was taken meanwhile they exit saying the
// address is in use, and are started again on others.
func startProxy(ctx context.Context, name, backend, grpcBackend, dir string) (*proxy, error) {
	for attempt := 1; ; attempt++ {
		p, retry, err := tryProxy(ctx, name, backend, grpcBackend, dir)
		if err == nil || !retry || attempt == 5 {
			return p, err
		}
		fmt.Fprintf(os.Stderr, "%s: a port was taken (%v); retrying on others\n", name, err)
	}
}

// tryProxy makes one attempt; retry reports whether the proxy failed because an address was in use.
func tryProxy(ctx context.Context, name, backend, grpcBackend, dir string) (_ *proxy, retry bool, _ error) {
	p := &proxy{name: name, dir: filepath.Join(dir, name)}
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		return nil, false, err
	}
	ports, err := testutil.FreePorts(3)
	if err != nil {
		return nil, false, err
	}
	h1, h2, g := ports[0], ports[1], ports[2]
	p.h1, p.h2 = fmt.Sprintf("127.0.0.1:%d", h1), fmt.Sprintf("127.0.0.1:%d", h2)
	if grpcBackend != "" {
		p.grpc = fmt.Sprintf("127.0.0.1:%d", g)
	}
	// gRPC (nginx grpc_pass, HAProxy proto h2 both ways) against the gRPC backend, when there is one.
	ngGRPC, haGRPC := "", ""
	if grpcBackend != "" {
		ngGRPC = fmt.Sprintf(`  upstream grpcbackend { server %s; keepalive 256; }
  server {
    listen 127.0.0.1:%d http2;
    location / { grpc_pass grpc://grpcbackend; }
  }
`, grpcBackend, g)
		haGRPC = fmt.Sprintf(`frontend feg
  bind 127.0.0.1:%d proto h2
  default_backend beg
backend beg
  server g1 %s proto h2
`, g, grpcBackend)
	}
	var args []string
	var inherit []*os.File
	switch name {
	case "nginx":
		conf := fmt.Sprintf(`daemon off;
master_process off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/body; proxy_temp_path %[1]s/proxy; fastcgi_temp_path %[1]s/fcgi;
  uwsgi_temp_path %[1]s/uwsgi; scgi_temp_path %[1]s/scgi;
  keepalive_requests 1000000;
  upstream backend { server %[2]s; keepalive 256; }
  server {
    listen 127.0.0.1:%[3]d;
    listen 127.0.0.1:%[4]d http2;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
%[5]s}
`, p.dir, backend, h1, h2, ngGRPC)
		f := filepath.Join(p.dir, "nginx.conf")
		if err := os.WriteFile(f, []byte(conf), 0o644); err != nil {
			return nil, false, err
		}
		args = []string{bin("nginx"), "-c", f, "-p", p.dir, "-e", filepath.Join(p.dir, "error.log")}
	case "haproxy":
		conf := fmt.Sprintf(`global
  nbthread 1
  maxconn 4000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  http-reuse always
frontend fe1
  bind 127.0.0.1:%[2]d
  default_backend be
frontend fe2
  bind 127.0.0.1:%[3]d proto h2
  default_backend be
backend be
  server s1 %[1]s
%[4]s`, backend, h1, h2, haGRPC)
		f := filepath.Join(p.dir, "haproxy.cfg")
		if err := os.WriteFile(f, []byte(conf), 0o644); err != nil {
			return nil, false, err
		}
		args = []string{bin("haproxy"), "-f", f, "-db"}
	case "ambit", "ambit-base":
		self, err := os.Executable()
		if err != nil {
			return nil, false, err
		}
		if name == "ambit-base" {
			self = ambitBase
		}
		// One listener serves HTTP/1.1 and h2c (the engine tells them apart by the preface); a second one
		// gRPC. Ambit gets its listeners from us (fds 3 and 4); so does an ambit-base that knows
		// -grpc-listen (fd passing came first); an older one binds the HTTP port itself and serves no gRPC.
		listen := p.h1
		if name == "ambit" || baseServesGRPC() {
			n := 1
			if grpcBackend != "" {
				n = 2
			}
			files, addrs, err := inheritListeners(n)
			if err != nil {
				return nil, false, err
			}
			defer func() {
				for _, f := range files {
					f.Close() // the child's duplicates keep the sockets listening
				}
			}()
			inherit = files
			p.h1, listen = addrs[0], "fd:3"
			if grpcBackend != "" {
				p.grpc = addrs[1]
			}
		} else {
			p.grpc = ""
		}
		p.h2 = p.h1
		args = []string{self, "-serve-ambit", listen, "-backend", backend}
		if p.grpc != "" {
			args = append(args, "-grpc-listen", "fd:4", "-grpc-backend", grpcBackend)
		}
		if prof := os.Getenv("AMBIT_BENCH_CPUPROFILE"); prof != "" {
			args = append(args, "-cpuprofile", prof)
		}
	}
	cmd := exec.CommandContext(ctx, "taskset", append([]string{"-c", "1"}, args...)...)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, io.MultiWriter(os.Stderr, &stderr)
	cmd.ExtraFiles = inherit
	if p.p, err = proc.Start(cmd); err != nil { // dies with this program, with its process group (test/proc)
		return nil, false, fmt.Errorf("start %s: %w", name, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", p.h1)
		if err == nil {
			c.Close()
			return p, false, nil
		}
		if exited, werr := p.p.Exited(); exited {
			logs, _ := os.ReadFile(filepath.Join(p.dir, "error.log"))
			out := stderr.String() + string(logs)
			return nil, testutil.AddrInUse(out), fmt.Errorf("%s exited (%v): %s", name, werr, strings.TrimSpace(out))
		}
		if time.Now().After(deadline) {
			p.stop()
			return nil, false, fmt.Errorf("%s did not start listening", name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// inheritListeners opens n loopback listeners and returns their files (for ExtraFiles) and addresses.
func inheritListeners(n int) ([]*os.File, []string, error) {
	var files []*os.File
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, nil, err
		}
		f, err := ln.(*net.TCPListener).File()
		addrs = append(addrs, ln.Addr().String())
		ln.Close() // the duplicate in f keeps the socket listening
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, nil, err
		}
		files = append(files, f)
	}
	return files, addrs, nil
}

func (p *proxy) stop() {
	if p.p != nil {
		_ = p.p.Stop(5 * time.Second)
	}
}

// cpu returns the summed user and system CPU time of the proxy's process group.
func (p *proxy) cpu() time.Duration {
	if p.p == nil {
		return 0 // direct: no proxy
	}
	var ticks int64
	pgid := p.p.Pid()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err != nil || g != pgid {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command (which may hold spaces) start after the last ')': utime and stime
		// are fields 14 and 15 of the line, 12 and 13 after it.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		ticks += u + s
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ is 100 on Linux
}

// rss returns the summed resident memory (bytes) of the proxy's process group.
func (p *proxy) rss() int64 { return p.mem("VmRSS:") }

// anon returns the summed anonymous resident memory (heap, stacks; not the mapped binary).
func (p *proxy) anon() int64 { return p.mem("RssAnon:") }

func (p *proxy) mem(field string) int64 {
	var total int64
	pgid := p.p.Pid()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err != nil || g != pgid {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) >= 2 && f[0] == field {
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				total += kb << 10
			}
		}
	}
	return total
}

// ---- load ----

type mode struct {
	name      string
	h2        bool
	keepAlive bool
	// gRPC modes (fortio's gRPC ping): grpcConns connections of grpcStreams concurrent calls each.
	grpcConns, grpcStreams int
}

var modes = []mode{{name: "HTTP/1.1 keep-alive", keepAlive: true}, {name: "HTTP/1.1 no keep-alive"}, {name: "HTTP/2 (h2c)", h2: true, keepAlive: true},
	{name: "gRPC unary, 16 conns", h2: true, keepAlive: true, grpcConns: 16, grpcStreams: 1},
	{name: "gRPC unary, 2 conns x 16 streams", h2: true, keepAlive: true, grpcConns: 2, grpcStreams: 16}}

// modeFlags name the modes for -modes, in the order of modes.
var modeFlags = []string{"h1", "h1-close", "h2c", "grpc", "grpc-mux"}

// selectModes keeps the modes named in list.
func selectModes(list string) error {
	var keep []mode
	for _, name := range strings.Split(list, ",") {
		i := slices.Index(modeFlags, strings.TrimSpace(name))
		if i < 0 {
			return fmt.Errorf("unknown mode %q (want %s)", name, strings.Join(modeFlags, ", "))
		}
		keep = append(keep, modes[i])
	}
	modes = keep
	return nil
}

// ambitBase is the -ambit-base binary: a build of this command whose -serve-ambit runs as "ambit-base".
var ambitBase string

// baseServesGRPC reports whether the -ambit-base binary has -grpc-listen (and so takes its listeners as
// fds 3 and 4), by its usage text.
var baseServesGRPC = sync.OnceValue(func() bool {
	if ambitBase == "" {
		return false
	}
	out, _ := exec.Command(ambitBase, "-h").CombinedOutput()
	return bytes.Contains(out, []byte("-grpc-listen"))
})

func client(m mode, conns int) (*http.Client, func()) {
	d := &net.Dialer{}
	tr := &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableKeepAlives: !m.keepAlive,
		DisableCompression: true}
	if m.h2 {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
		tr.MaxConnsPerHost = 0
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, tr.CloseIdleConnections
}

func get(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return err
}

// maxRate runs a closed loop with `workers` concurrent requests for d and returns requests/s.
func maxRate(ctx context.Context, m mode, addr string, d time.Duration, workers int) (float64, error) {
	var clients []*http.Client
	var closers []func()
	nclients := 1
	if m.h2 {
		nclients = 4 // a few h2 connections, each multiplexing workers/4 streams
	}
	for range nclients {
		c, cl := client(m, workers)
		clients = append(clients, c)
		closers = append(closers, cl)
	}
	defer func() {
		for _, cl := range closers {
			cl()
		}
	}()
	url := "http://" + addr + "/"
	for range 20 { // warm-up
		if err := get(clients[0], url); err != nil {
			return 0, err
		}
	}
	var n, errs atomic.Int64
	stopAt := time.Now().Add(d)
	var wg sync.WaitGroup
	for i := range workers {
		c := clients[i%len(clients)]
		wg.Go(func() {
			for time.Now().Before(stopAt) && ctx.Err() == nil {
				if err := get(c, url); err != nil {
					errs.Add(1)
					continue
				}
				n.Add(1)
			}
		})
	}
	start := time.Now()
	wg.Wait()
	if e := errs.Load(); e > n.Load()/100 {
		return 0, fmt.Errorf("%d errors in %d requests", e, n.Load())
	}
	return float64(n.Load()) / time.Since(start).Seconds(), nil
}

// fixedRate sends rate requests/s for d (open loop: latency counts from the scheduled send time) and
// returns the p50 and p99 latencies.
func fixedRate(ctx context.Context, m mode, addr string, d time.Duration, rate int) (p50, p99 time.Duration, err error) {
	c, cl := client(m, 128)
	defer cl()
	url := "http://" + addr + "/"
	for range 20 {
		if err := get(c, url); err != nil {
			return 0, 0, err
		}
	}
	total := int(d.Seconds() * float64(rate))
	lat := make([]time.Duration, total)
	var failed atomic.Int64
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 512)
	for i := range total {
		at := start.Add(time.Duration(i) * interval)
		if w := time.Until(at); w > 0 {
			time.Sleep(w)
		}
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := get(c, url); err != nil {
				failed.Add(1)
			}
			lat[i] = time.Since(at)
		})
	}
	wg.Wait()
	if f := failed.Load(); f > int64(total/100) {
		return 0, 0, fmt.Errorf("%d of %d requests failed", f, total)
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}

// slowClients starts n downloads of /big read at bytesPerSec each and returns the proxy's peak RSS
// growth over its idle RSS during d.
func slowClients(ctx context.Context, p *proxy, n int, bytesPerSec int, d time.Duration) int64 {
	base := p.anon()
	cctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(cctx, http.MethodGet, "http://"+p.h1+"/big", nil)
			resp, err := http.DefaultTransport.RoundTrip(req)
			if err != nil {
				return
			}
			defer resp.Body.Close()
			buf := make([]byte, bytesPerSec/10)
			t := time.NewTicker(100 * time.Millisecond)
			defer t.Stop()
			for {
				if _, err := io.ReadFull(resp.Body, buf); err != nil {
					return
				}
				select {
				case <-t.C:
				case <-cctx.Done():
					return
				}
			}
		})
	}
	var peak int64
	for cctx.Err() == nil {
		peak = max(peak, p.anon())
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	return peak - base
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

type row struct {
	proxy, mode                     string
	rps, p50, p99                   []float64
	rssAtRate, anonAtRate, slowPeak []float64
	perConn, perStream              []float64 // anonymous KiB per idle keep-alive connection, per in-flight h2c stream
	cpuPerReq                       []float64 // the proxy's CPU time (user + system) per request at the max rate, µs
}

func benchProxies(ctx context.Context, rounds int, d time.Duration, rate int, only string) error {
	if err := ensureTools(); err != nil {
		return err
	}
	backend, stopBackend, err := startBackend()
	if err != nil {
		return err
	}
	defer stopBackend()
	dir, err := os.MkdirTemp("", "bench-waypoint-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	var fortio, grpcBackend string
	if slices.ContainsFunc(modes, func(m mode) bool { return m.grpcConns > 0 }) {
		if fortio, err = fortioBin(ctx, dir); err != nil {
			return err
		}
		var stopGRPC func()
		if grpcBackend, stopGRPC, err = startGRPCBackend(ctx, fortio); err != nil {
			return err
		}
		defer stopGRPC()
	}
	names := append([]string{"direct"}, strings.Split(only, ",")...)
	if ambitBase != "" && !slices.Contains(names, "ambit-base") {
		names = append(names, "ambit-base")
	}
	if !slices.Contains(names, "nginx") {
		return errors.New("-proxies must include nginx (the reference)")
	}
	rows := map[string]*row{}
	key := func(p, m string) string { return p + "|" + m }
	for _, n := range names {
		for _, m := range modes {
			rows[key(n, m.name)] = &row{proxy: n, mode: m.name}
		}
	}
	fmt.Printf("bench-waypoint: %d rounds of %v; proxies on CPU 1 (one worker), load and backend on CPU 0; 1 KB responses\n", rounds, d)
	for r := range rounds {
		for _, n := range names {
			var p *proxy
			if n == "direct" {
				p = &proxy{name: n, h1: backend, h2: backend, grpc: grpcBackend}
			} else if p, err = startProxy(ctx, n, backend, grpcBackend, dir); err != nil {
				return err
			}
			for _, m := range modes {
				rw := rows[key(n, m.name)]
				if m.grpcConns > 0 {
					if p.grpc == "" {
						continue // this proxy serves no gRPC (ambit-base)
					}
					cpu0 := p.cpu()
					max, err := grpcLoad(ctx, fortio, p.grpc, m.grpcConns, m.grpcStreams, 0, d)
					if err == nil && n != "direct" {
						rw.cpuPerReq = append(rw.cpuPerReq, (p.cpu()-cpu0).Seconds()*1e6/float64(max.DurationHistogram.Count))
					}
					if err == nil {
						var fixed *fortioResult
						if fixed, err = grpcLoad(ctx, fortio, p.grpc, m.grpcConns, m.grpcStreams, rate, d); err == nil {
							rw.rps = append(rw.rps, max.ActualQPS)
							rw.p50 = append(rw.p50, float64(fixed.percentile(50).Microseconds()))
							rw.p99 = append(rw.p99, float64(fixed.percentile(99).Microseconds()))
						}
					}
					if err != nil {
						p.stop()
						return fmt.Errorf("%s %s: %w", n, m.name, err)
					}
					continue
				}
				addr := p.h1
				if m.h2 {
					addr = p.h2
				}
				cpu0, t0 := p.cpu(), time.Now()
				rps, err := maxRate(ctx, m, addr, d, 32)
				if err != nil {
					p.stop()
					return fmt.Errorf("%s %s max rate: %w", n, m.name, err)
				}
				if n != "direct" {
					rw.cpuPerReq = append(rw.cpuPerReq, (p.cpu()-cpu0).Seconds()*1e6/(rps*time.Since(t0).Seconds()))
				}
				p50, p99, err := fixedRate(ctx, m, addr, d, rate)
				if err != nil {
					p.stop()
					return fmt.Errorf("%s %s fixed rate: %w", n, m.name, err)
				}
				rw.rps = append(rw.rps, rps)
				rw.p50 = append(rw.p50, float64(p50.Microseconds()))
				rw.p99 = append(rw.p99, float64(p99.Microseconds()))
				if n != "direct" && m.keepAlive && !m.h2 {
					rw.rssAtRate = append(rw.rssAtRate, float64(p.rss())/(1<<20))
					rw.anonAtRate = append(rw.anonAtRate, float64(p.anon())/(1<<20))
					rw.slowPeak = append(rw.slowPeak, float64(slowClients(ctx, p, 4, 1<<20, d))/(1<<20))
					pc, ps, err := connMemory(ctx, p, 500)
					if err != nil {
						p.stop()
						return fmt.Errorf("%s memory per connection: %w", n, err)
					}
					rw.perConn, rw.perStream = append(rw.perConn, pc), append(rw.perStream, ps)
				}
			}
			if n != "direct" {
				p.stop()
			}
			fmt.Printf("  round %d/%d: %s done\n", r+1, rounds, n)
		}
	}
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "proxy\tmode\treq/s (1 core)\tvs nginx\tp50 µs\tp99 µs\tadded p50 µs\tadded p99 µs\tp99 vs nginx\tRSS MiB @"+strconv.Itoa(rate)+"/s\tslow-client growth MiB\tKiB/conn\tKiB/stream\t")
	for _, m := range modes {
		direct := rows[key("direct", m.name)]
		ng := rows[key("nginx", m.name)]
		for _, n := range names {
			rw := rows[key(n, m.name)]
			if len(rw.rps) == 0 {
				continue // not measured (ambit-base serves no gRPC)
			}
			added50 := median(rw.p50) - median(direct.p50)
			added99 := median(rw.p99) - median(direct.p99)
			vs, p99vs, mem, slow, pc, ps, cpu, cpuvs := "-", "-", "-", "-", "-", "-", "-", "-"
			if len(rw.cpuPerReq) > 0 {
				cpu = fmt.Sprintf("%.1f", median(rw.cpuPerReq))
				if len(ng.cpuPerReq) > 0 {
					cpuvs = fmt.Sprintf("%.2fx", median(rw.cpuPerReq)/median(ng.cpuPerReq))
				}
			}
			if n != "direct" {
				vs = fmt.Sprintf("%.2fx", median(rw.rps)/median(ng.rps))
				p99vs = fmt.Sprintf("%.2fx", median(rw.p99)/median(ng.p99))
			}
			if len(rw.rssAtRate) > 0 {
				mem = fmt.Sprintf("%.1f (%.1f)", median(rw.rssAtRate), median(rw.anonAtRate))
				slow = fmt.Sprintf("%.1f", median(rw.slowPeak))
				pc, ps = fmt.Sprintf("%.1f", median(rw.perConn)), fmt.Sprintf("%.1f", median(rw.perStream))
			}
			fmt.Fprintf(tw, "%s\t%s\t%.0f\t%s\t%.0f\t%.0f\t%.0f\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", n, m.name, median(rw.rps), vs,
				median(rw.p50), median(rw.p99), added50, added99, p99vs, mem, slow, pc, ps, cpu, cpuvs)
		}
	}
	tw.Flush()
	fmt.Println("(direct = load generator to the backend with no proxy; added = proxy minus direct at the same fixed rate;")
	fmt.Println(" RSS includes the resident part of the mapped binary (the RSS minus anon); anon = heap and stacks only;")
	fmt.Println(" slow-client growth = peak anonymous RSS increase while 4 clients download 256 MiB at 1 MiB/s each;")
	fmt.Println(" nginx spills buffered responses to temp files, so its memory stays flat while its disk use grows;")
	fmt.Println(" CPU µs/req = the proxy's user+system CPU time per request during the max-rate run (robust to a shared machine;")
	fmt.Println(" CPU vs nginx < 1 is cheaper than nginx per request);")
	fmt.Println(" KiB/conn = anonymous memory per idle HTTP/1.1 keep-alive client connection (500 open, one request each);")
	fmt.Println(" KiB/stream = per in-flight h2c request (500 on 8 connections, the backend answering after 2 s), upstream connection included;")
	fmt.Println(" gRPC = fortio's gRPC ping (unary calls, empty payload) against fortio's server: Ambit with appProtocol grpc,")
	fmt.Println(" nginx grpc_pass, HAProxy proto h2, all HTTP/2 upstream; its fixed-rate latency is fortio's, closed-loop per call)")
	return nil
}

var errNotRoot = errors.New("the HBONE phase needs root (network namespaces, eBPF); skipping it")

// connMemory measures the proxy's anonymous memory per idle keep-alive connection (n HTTP/1.1
// connections that made one request each and stay open) and per in-flight HTTP/2 stream (n
// concurrent h2c requests to /slow on 8 connections), in KiB.
func connMemory(ctx context.Context, p *proxy, n int) (perConn, perStream float64, err error) {
	runtimeSettle := func() { time.Sleep(500 * time.Millisecond) }
	runtimeSettle()
	base := p.anon()
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", p.h1)
		if err != nil {
			return 0, 0, err
		}
		conns = append(conns, c)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
			return 0, 0, err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return 0, 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	runtimeSettle()
	perConn = float64(p.anon()-base) / 1024 / float64(n)
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	runtimeSettle()

	base = p.anon()
	var clients []*http.Client
	var closers []func()
	for range 8 {
		c, cl := client(mode{h2: true, keepAlive: true}, n)
		clients, closers = append(clients, c), append(closers, cl)
	}
	defer func() {
		for _, cl := range closers {
			cl()
		}
	}()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(cctx, http.MethodGet, "http://"+p.h2+"/slow", nil)
			resp, err := clients[i%len(clients)].Do(req)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	time.Sleep(1500 * time.Millisecond) // all in flight: the backend answers after 2 s
	perStream = float64(p.anon()-base) / 1024 / float64(n)
	wg.Wait()
	return perConn, perStream, nil
}
