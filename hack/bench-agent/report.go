package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// results holds every value measured, per round, keyed "<topology>|<metric>".
type results struct {
	rounds []map[string]float64
	fails  map[string]int // "<phase> <topology>" -> failed runs
}

func newResults(rounds int) *results {
	r := &results{rounds: make([]map[string]float64, rounds), fails: map[string]int{}}
	for i := range r.rounds {
		r.rounds[i] = map[string]float64{}
	}
	return r
}

func (r *results) add(round int, t topology, vals map[string]float64) {
	for k, v := range vals {
		r.rounds[round][t.name()+"|"+k] = v
	}
}

func (r *results) fail(phase string, t topology) { r.fails[phase+" "+t.name()]++ }

// median of f over the rounds where f is defined; ok is false when it never is.
func (r *results) median(f func(round map[string]float64) (float64, bool)) (float64, int, bool) {
	var xs []float64
	for _, round := range r.rounds {
		if v, ok := f(round); ok {
			xs = append(xs, v)
		}
	}
	if len(xs) == 0 {
		return 0, 0, false
	}
	slices.Sort(xs)
	m := xs[len(xs)/2]
	if len(xs)%2 == 0 {
		m = (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2
	}
	return m, len(xs), true
}

func (r *results) value(topo, metric string) (float64, int, bool) {
	return r.median(func(round map[string]float64) (float64, bool) {
		v, ok := round[topo+"|"+metric]
		return v, ok
	})
}

// compare is the median over rounds of op(mesh, direct) for one node placement.
func (r *results) compare(where, metric string, op func(mesh, direct float64) float64) (float64, int, bool) {
	return r.median(func(round map[string]float64) (float64, bool) {
		m, ok1 := round[where+"/mesh|"+metric]
		d, ok2 := round[where+"/direct|"+metric]
		if !ok1 || !ok2 {
			return 0, false
		}
		return op(m, d), true
	})
}

// row is one line of the main table.
type row struct {
	label, metric, format string
	compare               string // "ratio", "added" or "" (no comparison)
	target                string
}

var mainRows = []row{
	{"Throughput, one TCP stream (Gbit/s; iperf3)", mGbps, "%.2f", "ratio", "mesh/direct >= 0.5x across nodes, >= 0.9x same node"},
	{"HTTP p50 latency at 1,000 req/s, 1 KB (ms; fortio)", mP50, "%.3f", "added", ""},
	{"HTTP p99 latency at 1,000 req/s, 1 KB (ms; fortio)", mP99, "%.3f", "added", "added <= 0.4 ms across nodes (2x ztunnel's 0.2 ms)"},
	{"Achieved req/s in the latency run", mQPS, "%.0f", "", "1000"},
	{"Failed requests per latency run (fortio code -1: connect/read errors)", mFailedReq, "%.0f", "", "0"},
	{"New connections/s, tiny request each (fortio -keepalive=false)", mCPS, "%.0f", "ratio", "mesh/direct >= 0.7x across nodes"},
	{"Failed connections per cps run", mFailedConn, "%.0f", "", "0"},
	{"Agent CPU s per GB transferred (throughput run)", mCPUPerGB, "%.2f", "", "<= 1.2 across nodes"},
	{"Agent CPU s per 10,000 requests (latency run)", mCPUPer10kReq, "%.2f", "", ""},
	{"Agent CPU s per 10,000 new connections (cps run)", mCPUPer10kCon, "%.2f", "", ""},
}

var memoryRows = []row{
	{"RSS idle, freshly started (MB)", mRSSIdle, "%.1f", "", "<= 50 (25 MB each)"},
	{"RSS idle after a warm-up of 200 connections, opened and closed (MB)", mRSSWarm, "%.1f", "", ""},
	{"RSS with the idle connections open (MB)", mRSSConns, "%.1f", "", ""},
	{"RSS per idle connection, both agents, from the warm baseline (KB)", mKBPerConn, "%.2f", "", "<= 4 KB (ztunnel ~3.8 KB)"},
	{"  of which source agent, node0 (KB)", mKBSrc, "%.2f", "", ""},
	{"  of which destination agent, node1 (KB)", mKBDst, "%.2f", "", ""},
	{"Goroutine stacks per connection, both agents (KB)", mKBStack, "%.2f", "", ""},
	{"Live heap per connection after a forced GC, both agents (KB)", mKBHeap, "%.2f", "", ""},
	{"Goroutines per idle connection, both agents", mGoroutinesConn, "%.2f", "", "0 (readiness-driven relay)"},
	{"RSS 3 s after closing them (MB)", mRSSAfter, "%.1f", "", ""},
	{"RSS 30 s after closing them (MB)", mRSSAfter30, "%.1f", "", ""},
	{"RSS 30 s after closing them / RSS idle, warm", mRSSAfter30Warm, "%.2fx", "", "<= 1.2x (ztunnel: back to idle with jemalloc decay)"},
	{"RSS 30 s after closing them / RSS idle, freshly started", mRSSAfter30Ratio, "%.2fx", "", ""},
}

func report(w io.Writer, b *bench, o options, res *results, selected []phase) {
	host, _ := os.Hostname()
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	fmt.Fprintf(w, "\n## Ambit node agent vs direct, network-namespace lab (%s)\n\n", time.Now().Format("2006-01-02 15:04"))
	fmt.Fprintf(w, "Medians of %d interleaved rounds; ratios and added latency are medians of per-round values. "+
		"Host %s: %d CPUs, Linux %s, %s; capture %s. Agent CPU and RSS count both agents.\n",
		o.rounds, host, runtime.NumCPU(), strings.TrimSpace(string(kernel)), runtime.Version(), b.captureMode+agentEnvNote(o))
	fmt.Fprintf(w, "\"direct\": client and server pods outside the mesh (nothing captured); \"mesh\": the same nodes, "+
		"pods in an ambient namespace: across nodes source agent -> HBONE (mTLS) -> destination agent; on the same node the agent "+
		"hands the connection from its outbound to its inbound side itself (no HBONE, no TLS). In the direct columns, the agent CPU "+
		"rows show the agents' background use. Agent CPU counts the kernel work done in the agents' system calls (on veth pairs "+
		"that includes delivering the packets to the receiving namespace).\n\n")
	has := func(name string) bool {
		return slices.ContainsFunc(selected, func(p phase) bool { return p.name == name })
	}

	if has("throughput") || has("latency") || has("cps") {
		fmt.Fprintln(w, "| Measure | same node: direct | same node: mesh | mesh vs direct | across nodes: direct | across nodes: mesh | mesh vs direct | target |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---|")
		for _, rw := range mainRows {
			cells := []string{rw.label}
			any := false
			for _, where := range []string{"same", "cross"} {
				for _, mesh := range []string{"direct", "mesh"} {
					v, n, ok := res.value(where+"/"+mesh, rw.metric)
					any = any || ok
					cells = append(cells, cell(rw.format, v, n, ok, o.rounds))
				}
				cells = append(cells, compareCell(res, where, rw, o.rounds))
			}
			if !any {
				continue
			}
			cells = append(cells, rw.target)
			fmt.Fprintln(w, "| "+strings.Join(cells, " | ")+" |")
		}
		fmt.Fprintln(w)
	}
	if has("memory") {
		fmt.Fprintf(w, "| Agent memory, both agents, %d idle connections through the mesh across nodes | median | target |\n", o.idleConns)
		fmt.Fprintln(w, "|---|---:|---|")
		for _, rw := range memoryRows {
			v, n, ok := res.value("cross/mesh", rw.metric)
			fmt.Fprintf(w, "| %s | %s | %s |\n", rw.label, cell(rw.format, v, n, ok, o.rounds), rw.target)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintln(w, "Phases (each round runs every phase on every topology, topologies shuffled):")
	for _, p := range selected {
		fmt.Fprintf(w, "- %s: %s\n", p.name, p.what)
	}
	fmt.Fprintln(w)
	if len(res.fails) > 0 {
		keys := make([]string, 0, len(res.fails))
		for k := range res.fails {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		fmt.Fprintln(w, "Failed runs (left out of the medians; see the messages above):")
		for _, k := range keys {
			fmt.Fprintf(w, "- %s: %d of %d\n", k, res.fails[k], o.rounds)
		}
		fmt.Fprintln(w)
	}
}

func cell(format string, v float64, n int, ok bool, rounds int) string {
	if !ok {
		return "-"
	}
	s := fmt.Sprintf(format, v)
	if n < rounds {
		s += fmt.Sprintf(" (n=%d)", n)
	}
	return s
}

func compareCell(res *results, where string, rw row, rounds int) string {
	switch rw.compare {
	case "ratio":
		v, n, ok := res.compare(where, rw.metric, func(m, d float64) float64 { return m / d })
		if !ok {
			return "-"
		}
		return cell("%.2fx", v, n, ok, rounds)
	case "added":
		v, n, ok := res.compare(where, rw.metric, func(m, d float64) float64 { return m - d })
		if !ok {
			return "-"
		}
		return cell("%+.3f ms", v, n, ok, rounds)
	}
	return ""
}

func agentEnvNote(o options) string {
	var notes []string
	if o.agentEnv != "" {
		notes = append(notes, "agent environment "+o.agentEnv)
	}
	if o.nice != 0 {
		notes = append(notes, fmt.Sprintf("run at nice %d", o.nice))
	}
	if len(notes) == 0 {
		return ""
	}
	return "; " + strings.Join(notes, "; ")
}
