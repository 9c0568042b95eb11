// Command bench-agent measures Ambit's node agent end to end in the network-namespace lab (root). A client
// pod talks to a server pod two ways, side by side in one run: directly (pods outside the mesh, nothing
// captured) and through Ambit (source agent, HBONE, destination agent), on the same node and across nodes.
// The load comes from real tools: iperf3 for one bulk TCP stream, fortio for HTTP latency at a fixed rate
// and for new connections per second, and this program's own helpers for 10,000 idle connections.
//
// The agents are `ambit agent` processes started as in the demo and as the DaemonSet runs them: in the host's
// mount namespace with --netns <node> (so their pinned capture state outlives them), a local configuration
// file listing the pods, the local CA, --capture auto. Agent CPU comes from
// /proc/<pid>/stat (utime+stime of both agents around each measurement), memory from VmRSS. Every phase
// runs each topology once per round, topologies shuffled; the table shows medians over the rounds, and
// ratios and added latencies are medians of the per-round values (direct and mesh measured minutes apart
// at most, so a busy machine affects both).
//
//	make bench-agent                      # builds bin/ambit, then runs this with -bin bin
//	go run ./hack/bench-agent -bin bin [-rounds 5] [-phases throughput,latency,cps,memory,gobench]
//
// Needs root, iperf3 (apt-get install -y iperf3) and fortio v1.68.2, which is built on first use into
// ${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/fortio-v1.68.2/ (the Go module proxy is needed once).
// Ctrl-C stops every process it started and removes the lab; after a SIGKILL the next run removes the
// leftover lab first (or `make lab-down LAB=bench`). -profile DIR adds an unrecorded pass with pprof
// profiles of both agents (from their admin API); -agent-env tries runtime settings such as GOMAXPROCS=1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/test/lab"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "hold", "open", "churn": // helpers run inside pod namespaces (see idle.go)
			run := func() error { return helper(os.Args[1], os.Args[2:]) }
			if os.Args[1] == "churn" {
				run = func() error { return churnHelper(os.Args[2:]) }
			}
			if err := run(); err != nil {
				fmt.Fprintln(os.Stderr, "bench-agent "+os.Args[1]+":", err)
				os.Exit(1)
			}
			return
		}
	}
	var o options
	flag.StringVar(&o.bin, "bin", "bin", "directory holding the ambit binary")
	flag.IntVar(&o.rounds, "rounds", 5, "rounds; medians are taken over them (at least 5 for quoted numbers)")
	flag.StringVar(&o.phases, "phases", "throughput,latency,cps,memory,gobench", "phases to run, comma separated (gobench: the\n"+
		"in-process rows, Go benchmarks of this tree run -rounds times after the lab rounds; see gobench.go)")
	flag.DurationVar(&o.iperfTime, "iperf-time", 5*time.Second, "length of one iperf3 run")
	flag.DurationVar(&o.latencyTime, "latency-time", 10*time.Second, "length of one fortio run at the fixed rate (10 s = 10,000 requests)")
	flag.DurationVar(&o.cpsTime, "cps-time", 5*time.Second, "length of one connections-per-second run")
	flag.IntVar(&o.idleConns, "idle-conns", 10000, "idle connections opened through the mesh in the memory phase")
	flag.StringVar(&o.capture, "capture", "auto", "agent capture mode: auto, ebpf or tproxy")
	flag.StringVar(&o.profile, "profile", "", "after the rounds, one more unrecorded pass across nodes through the mesh with CPU profiles\n"+
		"of both agents per phase, and heap and goroutine profiles while the idle connections are open, written to this directory")
	flag.StringVar(&o.agentEnv, "agent-env", "", "extra environment for the agents only, comma separated (e.g. GOMAXPROCS=1,GOGC=50)")
	flag.IntVar(&o.nice, "nice", 0, "scheduling priority for this program and everything it starts (e.g. -5 on a shared machine)")
	flag.StringVar(&o.lab, "lab", "bench", "lab name (after "+lab.NamePrefix+"); another name lets two runs share the machine")
	flag.BoolVar(&o.keep, "keep", false, "keep the lab and the agents running after the table until Ctrl-C")
	flag.DurationVar(&o.soak.d, "soak", 0, "instead of the phases, soak the agents for this long (soak.go; `make soak` runs 10m)")
	flag.DurationVar(&o.soak.warmup, "soak-warmup", 30*time.Second, "soak: load before the start sample")
	flag.DurationVar(&o.soak.churn, "soak-churn", 10*time.Second, "soak: interval between policy changes")
	flag.IntVar(&o.soak.conns, "soak-conns", 10000, "soak: long-lived connections held for the whole run")
	flag.IntVar(&o.soak.rate, "soak-rate", 1000, "soak: new connections per second to the allowed port")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	runner := run
	if o.soak.d > 0 {
		runner = runSoak
	}
	if err := runner(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench-agent:", err)
		os.Exit(1)
	}
}

// options are the command-line settings.
type options struct {
	bin, phases, capture, profile   string
	lab                             string
	agentEnv                        string
	rounds, idleConns, nice         int
	iperfTime, latencyTime, cpsTime time.Duration
	keep                            bool
	soak                            soakOptions
}

// phase is one kind of measurement. run measures one topology once and returns named values; work maps
// a CPU metric name to the units of work done (GB, 10k requests), and the harness turns it into agent
// CPU seconds per unit from the agents' CPU time around run.
type phase struct {
	name string
	what string
	// topologies selects where the phase runs (nil: all four).
	topologies func(b *bench) []topology
	run        func(b *bench, ctx context.Context, t topology) (sample, error)
	// length is how long one run puts load on the agents (nil: not a load phase; -profile takes heap
	// profiles during it instead of a CPU profile).
	length func(o options) time.Duration
}

// sample is what one run of a phase measured.
type sample struct {
	vals map[string]float64
	work map[string]float64
}

// phases is the benchmark, in the order each round runs it.
var phases = []phase{
	{name: "throughput", what: "one TCP stream for -iperf-time (iperf3 client in the client pod, iperf3 -s in the server pod)",
		run: (*bench).throughput, length: func(o options) time.Duration { return o.iperfTime }},
	{name: "latency", what: "HTTP/1.1 at a fixed 1,000 req/s over 4 keep-alive connections, 1 KB responses (fortio load -> fortio server)",
		run: (*bench).latency, length: func(o options) time.Duration { return o.latencyTime }},
	{name: "cps", what: "a new TCP connection per tiny HTTP request, 16 concurrent, as fast as possible (fortio load -keepalive=false)",
		run: (*bench).connRate, length: func(o options) time.Duration { return o.cpsTime }},
	{name: "memory", what: "agents restarted; RSS of both agents idle, then with -idle-conns idle connections open through the mesh, then 3 s and 30 s after they close",
		topologies: func(b *bench) []topology { return []topology{b.topo("cross", true)} },
		run:        (*bench).memory},
}

func run(ctx context.Context, o options) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces and eBPF capture); run it with sudo")
	}
	if o.rounds < 1 {
		return errors.New("-rounds must be at least 1")
	}
	if o.nice != 0 {
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, 0, o.nice); err != nil {
			return fmt.Errorf("set priority: %w", err)
		}
	}
	if o.profile != "" {
		if err := os.MkdirAll(o.profile, 0o755); err != nil {
			return fmt.Errorf("make profile directory: %w", err)
		}
	}
	selected, gobench, err := selectPhases(o.phases)
	if err != nil {
		return err
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

	res := newResults(o.rounds)
	for r := range o.rounds {
		for _, p := range selected {
			topos := b.topologies()
			if p.topologies != nil {
				topos = p.topologies(b)
			}
			rand.Shuffle(len(topos), func(i, j int) { topos[i], topos[j] = topos[j], topos[i] })
			for _, t := range topos {
				if err := ctx.Err(); err != nil {
					return err
				}
				s, err := b.measure(ctx, p, t)
				if err != nil {
					if ctx.Err() != nil {
						return ctx.Err()
					}
					fmt.Fprintf(os.Stderr, "round %d/%d %-10s %-13s FAILED: %v\n", r+1, o.rounds, p.name, t.name(), err)
					res.fail(p.name, t)
					continue
				}
				res.add(r, t, s.vals)
				fmt.Fprintf(os.Stderr, "round %d/%d %-10s %-13s %s\n", r+1, o.rounds, p.name, t.name(), formatSample(s.vals))
			}
		}
	}
	report(os.Stdout, b, o, res, selected)
	if gobench {
		r, err := runGoBenches(ctx, o.rounds, os.Stderr)
		if err != nil {
			return err
		}
		reportGoBenches(os.Stdout, r)
	}
	if o.profile != "" {
		if err := b.profilePass(ctx, selected); err != nil {
			return fmt.Errorf("profile pass: %w", err)
		}
	}
	if o.keep {
		fmt.Fprintf(os.Stderr, "-keep: lab %s and agents stay up until Ctrl-C\n", b.lab.Name)
		<-ctx.Done()
	}
	return nil
}

// profilePass runs every selected phase once more across nodes through the mesh, unrecorded, with
// profiles of both agents (CPU during load phases, heap and goroutines while the idle connections are
// open). Profiling slows the agents, which is why these runs are not part of the table.
func (b *bench) profilePass(ctx context.Context, selected []phase) error {
	t := b.topo("cross", true)
	b.profiling = true
	defer func() { b.profiling = false }()
	for _, p := range selected {
		fmt.Fprintf(os.Stderr, "profiling %s (%s)\n", p.name, t.name())
		var err error
		if p.length == nil {
			_, err = p.run(b, ctx, t)
		} else {
			err = b.cpuProfiles(ctx, p.name, p.length(b.o), func() error { _, err := p.run(b, ctx, t); return err })
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			fmt.Fprintf(os.Stderr, "profiling %s FAILED (no profile for it): %v\n", p.name, err)
		}
	}
	fmt.Fprintf(os.Stderr, "profiles in %s; read them with: go tool pprof -top %s %s/<file>.pprof\n", b.o.profile, b.tools.ambit, b.o.profile)
	return nil
}

// selectPhases returns the lab phases named in list, and whether it names gobench.
func selectPhases(list string) ([]phase, bool, error) {
	var out []phase
	gobench := false
	for _, name := range strings.Split(list, ",") {
		name = strings.TrimSpace(name)
		if name == "gobench" {
			gobench = true
			continue
		}
		i := slices.IndexFunc(phases, func(p phase) bool { return p.name == name })
		if i < 0 {
			return nil, false, fmt.Errorf("unknown phase %q (have throughput, latency, cps, memory, gobench)", name)
		}
		out = append(out, phases[i])
	}
	return out, gobench, nil
}

// measure runs one phase on one topology, with the agents' CPU time read around it.
func (b *bench) measure(ctx context.Context, p phase, t topology) (sample, error) {
	before, err := b.agentCPU()
	if err != nil {
		return sample{}, err
	}
	s, err := p.run(b, ctx, t)
	if err != nil {
		return sample{}, err
	}
	after, err := b.agentCPU()
	if err != nil {
		return sample{}, err
	}
	for name, units := range s.work {
		if units > 0 {
			s.vals[name] = (after - before).Seconds() / units
		}
	}
	return s, nil
}

func formatSample(vals map[string]float64) string {
	keys := make([]string, 0, len(vals))
	for k := range vals {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, " %s=%.4g", k, vals[k])
	}
	return strings.TrimSpace(b.String())
}
