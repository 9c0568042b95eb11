package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/ambit-mesh/ambit/test/proc"
)

// The in-process rows of the data-plane table: what the lab cannot isolate. Each is a Go benchmark of the
// repository, run -rounds times (-count), medians reported:
//   - hbone BenchmarkStreamSetup: CPU of opening and closing one HBONE stream on a warm pool, both ends;
//   - hbone BenchmarkRTT/hbone and /tls: a 1-byte round trip over an HBONE stream vs plain TLS 1.3;
//   - config/xds BenchmarkIngest/1M/parallel: one delta response of 1,000,000 workloads and 66,000
//     services decoded, converted and applied to an empty store, for real (about 1.6 GB of heap at its peak).

// goBench is one `go test -bench` invocation.
type goBench struct {
	pkg, pattern, benchtime string
}

var goBenches = []goBench{
	{"./hbone/", "^(BenchmarkStreamSetup|BenchmarkRTT)$", "1s"},
	{"./config/xds/", "^BenchmarkIngest$/^1M$/^parallel$", "1x"},
}

// benchResults maps "BenchmarkName/sub" (GOMAXPROCS suffix dropped) -> unit -> one value per run.
type benchResults map[string]map[string][]float64

// runGoBenches runs every goBench -count rounds times from the repository root (the working directory of
// `make bench-agent`).
func runGoBenches(ctx context.Context, rounds int, log io.Writer) (benchResults, error) {
	res := benchResults{}
	for _, gb := range goBenches {
		fmt.Fprintf(log, "go test -bench %s %s (%d runs)\n", gb.pattern, gb.pkg, rounds)
		cmd := exec.CommandContext(ctx, "go", "test", "-run", "^$", "-bench", gb.pattern, "-benchtime", gb.benchtime,
			"-count", strconv.Itoa(rounds), gb.pkg)
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		p, err := proc.Start(cmd)
		if err == nil {
			err = p.Wait()
		}
		if err != nil {
			return nil, fmt.Errorf("go test -bench %s %s: %w: %s%s", gb.pattern, gb.pkg, err, out.String(), stderr.String())
		}
		parseBenchOutput(&out, res)
	}
	return res, nil
}

// parseBenchOutput adds the result lines of `go test -bench` output ("BenchmarkX/y-2  N  v unit  v unit ...").
func parseBenchOutput(r io.Reader, res benchResults) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		name := f[0]
		if i := strings.LastIndexByte(name, '-'); i > 0 {
			if _, err := strconv.Atoi(name[i+1:]); err == nil {
				name = name[:i]
			}
		}
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			if res[name] == nil {
				res[name] = map[string][]float64{}
			}
			res[name][f[i+1]] = append(res[name][f[i+1]], v)
		}
	}
}

// median of one benchmark's unit; ok is false when it did not run.
func (r benchResults) median(name, unit string) (float64, int, bool) {
	xs := slices.Clone(r[name][unit])
	if len(xs) == 0 {
		return 0, 0, false
	}
	slices.Sort(xs)
	if len(xs)%2 == 1 {
		return xs[len(xs)/2], len(xs), true
	}
	return (xs[len(xs)/2-1] + xs[len(xs)/2]) / 2, len(xs), true
}

// reportGoBenches prints the in-process table.
func reportGoBenches(w io.Writer, r benchResults) {
	fmt.Fprintln(w, "\n| In-process measure (Go benchmarks of this tree, medians) | value | runs | target |")
	fmt.Fprintln(w, "|---|---:|---:|---|")
	row := func(label string, v float64, n int, ok bool, format, target string) {
		cell := "n/a"
		if ok {
			cell = fmt.Sprintf(format, v)
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s |\n", label, cell, n, target)
	}
	v, n, ok := r.median("BenchmarkStreamSetup", "cpu-ns/op")
	row("HBONE stream open+close CPU, warm pool, both ends (µs)", v/1e3, n, ok, "%.1f", "< 20 µs")
	hb, n1, ok1 := r.median("BenchmarkRTT/hbone", "ns/op")
	tl, n2, ok2 := r.median("BenchmarkRTT/tls", "ns/op")
	row("HBONE RTT / TLS RTT, 1 byte (ratio of medians)", hb/tl, min(n1, n2), ok1 && ok2 && tl > 0, "%.2f", "<= 1.1")
	const ingest = "BenchmarkIngest/1M/parallel"
	wall, n, ok := r.median(ingest, "ns/op")
	row("xDS ingest, 1M workloads + 66k services: wall time (s)", wall/1e9, n, ok, "%.2f", "<= 3 s")
	cpu, n, ok := r.median(ingest, "cpu-ms/op")
	row("  CPU time, all threads incl. GC (s)", cpu/1e3, n, ok, "%.2f", "")
	peak, n, ok := r.median(ingest, "peak-MB")
	row("  peak live heap above the wire bytes (MB)", peak, n, ok, "%.0f", "<= 1 GB")
	store, n, ok := r.median(ingest, "store-MB")
	row("  heap the store retains (MB)", store, n, ok, "%.0f", "")
}
