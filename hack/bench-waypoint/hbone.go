package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
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

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/waypoint"
)

const hboneYAML = `apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-l4, namespace: app}
spec: {clusterIP: 10.96.0.11, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: app, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{type: IPAddress, value: 10.96.1.1}, {type: Hostname, value: wp.app.svc.cluster.local}]
---
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: app, labels: {gateway.istio.io/managed: istio.io-mesh-controller}}
spec: {clusterIP: 10.96.1.1, selector: {gateway.networking.k8s.io/gateway-name: wp}, ports: [{name: mesh, port: 15008}]}
`

func podYAML(name, ns, app string, extra string, p *lab.Pod) string {
	sa := name
	if app == "wp" {
		sa = "wp" // the waypoint's identity is its Gateway's service account
	}
	return fmt.Sprintf(`---
apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: %s, labels: {app: %s%s}}
spec: {nodeName: node%d, serviceAccountName: %s, containers: [{name: c, image: c}]}
status: {podIP: %s}
`, name, ns, app, extra, p.Node.Index, sa, p.IP)
}

// l7Profile is -l7-cpuprofile: where to write the CPU profile of the L7 path's max-rate runs.
var l7Profile string

// benchHBONE measures the full waypoint path against the mesh L4 path and the direct path.
func benchHBONE(ctx context.Context, rounds int, d time.Duration) error {
	if os.Geteuid() != 0 {
		fmt.Println(errNotRoot)
		return nil
	}
	// A fixed name owned by one run at a time (test/lab): what a killed run left is removed first.
	l, err := lab.New(ctx, lab.Options{Name: lab.NamePrefix + "benchwp", Nodes: 2, PodsPerNode: 3})
	if err != nil {
		return fmt.Errorf("build the lab: %w", err)
	}
	defer l.Close()
	n0, n1 := l.Nodes[0].Pods, l.Nodes[1].Pods
	client, outsider, wpPod := n0[0], n0[1], n0[2]
	server, plain := n1[0], n1[1]
	dir, err := os.MkdirTemp("", "bench-waypoint-lab-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	cfgFile := filepath.Join(dir, "mesh.yaml")
	yaml := hboneYAML + podYAML("client", "app", "client", "", client) + podYAML("server", "app", "web", "", server) +
		podYAML("outsider", "legacy", "outsider", "", outsider) + podYAML("plain", "legacy", "plain", "", plain) +
		podYAML("wp-0", "app", "wp", ", gateway.networking.k8s.io/gateway-name: wp, istio.io/dataplane-mode: none", wpPod)
	if err := os.WriteFile(cfgFile, []byte(yaml), 0o600); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var wg sync.WaitGroup
	runCtx, cancel := context.WithCancel(ctx)
	defer func() { cancel(); wg.Wait() }()
	// Each part runs under a pprof label that its goroutines inherit, so that -l7-cpuprofile splits the
	// path's CPU by component (go tool pprof -tags, -tagfocus component=waypoint).
	for _, n := range l.Nodes {
		var a *agent.Agent
		err := labeled(fmt.Sprintf("agent node%d", n.Index), func() error {
			var err error
			a, err = agent.New(agent.Config{NodeName: fmt.Sprintf("node%d", n.Index), ConfigFiles: []string{cfgFile},
				CADir: filepath.Join(dir, "ca"), Capture: agent.CaptureEBPF, NetNS: n.NS.Path(), Uplinks: []string{n.Uplink}, PinDir: n.PinDir}, log)
			if err != nil {
				return err
			}
			wg.Go(func() { a.Run(runCtx) })
			return nil
		})
		if err != nil {
			return err
		}
		if err := waitReady(ctx, a.Ready); err != nil {
			return err
		}
	}
	var w *waypoint.Waypoint
	err = labeled("waypoint", func() error {
		var err error
		w, err = waypoint.New(waypoint.Config{Name: "wp", Namespace: "app", PodIP: wpPod.IP, ConfigFiles: []string{cfgFile},
			CADir: filepath.Join(dir, "ca"), NetNS: wpPod.NS.Path()}, log)
		if err != nil {
			return err
		}
		wg.Go(func() { w.Run(runCtx) })
		return nil
	})
	if err != nil {
		return err
	}
	if err := waitReady(ctx, w.Ready); err != nil {
		return err
	}
	for _, p := range []*lab.Pod{server, plain} {
		ln, err := p.NS.Listen(ctx, "tcp", ":8080")
		if err != nil {
			return err
		}
		srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Length", "1024")
			w.Write(payload)
		})}
		labeled("backend", func() error { go srv.Serve(ln); return nil })
		defer srv.Close()
	}
	paths := []struct {
		name    string
		from    *lab.Pod
		addr    string
		profile bool // the L7 path: -l7-cpuprofile records its max-rate runs
	}{
		{"direct (no mesh)", outsider, plain.IP.String() + ":8080", false},
		{"mesh L4 (agent, agent)", client, "10.96.0.11:80", false},
		{"L7 waypoint (agent, waypoint, agent)", client, "10.96.0.10:80", true},
	}
	var prof bytes.Buffer
	if l7Profile != "" {
		defer func() {
			if err := os.WriteFile(l7Profile, prof.Bytes(), 0o644); err != nil {
				fmt.Fprintln(os.Stderr, "bench-waypoint: write the L7 profile:", err)
			}
		}()
	}
	type res struct{ rps, p50, p99, sysr, sysw, cpu []float64 }
	results := make([]res, len(paths))
	fmt.Printf("HBONE path: %d rounds of %v, 2 lab nodes, agents and waypoint in-process (both CPUs shared)\n", rounds, d)
	for range rounds {
		for i, p := range paths {
			if p.profile && l7Profile != "" && prof.Len() == 0 {
				// One profile can run at a time: the first round's L7 max-rate run is recorded.
				if err := pprof.StartCPUProfile(&prof); err != nil {
					return fmt.Errorf("l7 profile: %w", err)
				}
			}
			r0, w0 := procSyscalls()
			c0 := procCPU()
			var rps float64
			var n int64
			err := labeled("client", func() error {
				var err error
				rps, n, err = labMaxRate(ctx, p.from, p.addr, d, 16)
				return err
			})
			if p.profile && l7Profile != "" {
				pprof.StopCPUProfile()
			}
			r1, w1 := procSyscalls()
			c1 := procCPU()
			if n > 0 {
				results[i].cpu = append(results[i].cpu, float64((c1-c0).Microseconds())/float64(n))
				results[i].sysr = append(results[i].sysr, float64(r1-r0)/float64(n))
				results[i].sysw = append(results[i].sysw, float64(w1-w0)/float64(n))
			}
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			p50, p99, err := labFixedRate(ctx, p.from, p.addr, d, 500)
			if err != nil {
				return fmt.Errorf("%s: %w", p.name, err)
			}
			results[i].rps = append(results[i].rps, rps)
			results[i].p50 = append(results[i].p50, float64(p50.Microseconds()))
			results[i].p99 = append(results[i].p99, float64(p99.Microseconds()))
		}
	}
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\treq/s (16 conns)\tvs direct\tp50 µs @500/s\tp99 µs @500/s\tadded p50 µs\tadded p99 µs\tCPU µs/req\treads/req\twrites/req\t")
	for i, p := range paths {
		r := results[i]
		fmt.Fprintf(tw, "%s\t%.0f\t%.2fx\t%.0f\t%.0f\t%.0f\t%.0f\t%.1f\t%.1f\t%.1f\t\n", p.name, median(r.rps), median(r.rps)/median(results[0].rps),
			median(r.p50), median(r.p99), median(r.p50)-median(results[0].p50), median(r.p99)-median(results[0].p99),
			median(r.cpu), median(r.sysr), median(r.sysw))
	}
	tw.Flush()
	return nil
}

// labeled runs f with the pprof label component=name, which the goroutines it starts inherit.
func labeled(name string, f func() error) error {
	var err error
	pprof.Do(context.Background(), pprof.Labels("component", name), func(context.Context) { err = f() })
	return err
}

func waitReady(ctx context.Context, ready func() (bool, []string)) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		if ok, _ := ready(); ok {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("not ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func labClient(from *lab.Pod, conns int) (*http.Client, func()) {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, a string) (net.Conn, error) { return from.NS.Dial(ctx, "tcp", a) },
		MaxIdleConnsPerHost: conns, MaxConnsPerHost: conns, DisableCompression: true}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, tr.CloseIdleConnections
}

// procSyscalls returns this process's read and write system calls so far (/proc/self/io syscr, syscw):
// the whole path's (client, agents, waypoint, server), since all of it runs in this process.
func procSyscalls() (r, w int64) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, 0
	}
	for line := range strings.Lines(string(b)) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ": ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "syscr":
			r = n
		case "syscw":
			w = n
		}
	}
	return r, w
}

// procCPU returns this process's CPU time so far (user and system): the whole path's.
func procCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// labMaxRate returns the request rate of workers closed-loop clients and the requests done.
func labMaxRate(ctx context.Context, from *lab.Pod, addr string, d time.Duration, workers int) (float64, int64, error) {
	c, cl := labClient(from, workers)
	defer cl()
	url := "http://" + addr + "/"
	for range 20 {
		if err := get(c, url); err != nil {
			return 0, 0, err
		}
	}
	var n, errs atomic.Int64
	stopAt := time.Now().Add(d)
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Go(func() {
			for time.Now().Before(stopAt) && ctx.Err() == nil {
				if get(c, url) != nil {
					errs.Add(1)
					continue
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if errs.Load() > n.Load()/100 {
		return 0, 0, fmt.Errorf("%d errors", errs.Load())
	}
	return float64(n.Load()) / time.Since(start).Seconds(), n.Load(), nil
}

func labFixedRate(ctx context.Context, from *lab.Pod, addr string, d time.Duration, rate int) (time.Duration, time.Duration, error) {
	c, cl := labClient(from, 64)
	defer cl()
	url := "http://" + addr + "/"
	total := int(d.Seconds() * float64(rate))
	lat := make([]time.Duration, total)
	interval := time.Second / time.Duration(rate)
	var failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i := range total {
		at := start.Add(time.Duration(i) * interval)
		if w := time.Until(at); w > 0 {
			time.Sleep(w)
		}
		if ctx.Err() != nil {
			break
		}
		wg.Go(func() {
			if get(c, url) != nil {
				failed.Add(1)
			}
			lat[i] = time.Since(at)
		})
	}
	wg.Wait()
	if failed.Load() > int64(total/100) {
		return 0, 0, fmt.Errorf("%d of %d failed", failed.Load(), total)
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[len(lat)*99/100], nil
}
