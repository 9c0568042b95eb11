// Command bench-hbone compares Ambit's HBONE with raw TCP, plain TLS 1.3 and an HBONE built on net/http's
// default HTTP/2, using the Go benchmarks in package hbone. It builds the hbone test binary once; each
// round runs BenchmarkInterleaved (every variant in alternation inside one process, so that other load on
// the machine hits them alike) with GOMAXPROCS 2 and 1, BenchmarkStreamSetup and BenchmarkIdleStreams.
// It prints medians over the rounds of the per-round values and ratios as Markdown tables.
//
// Usage: go run ./hack/bench-hbone [-rounds 5] [-iters 6]
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/ambit-mesh/ambit/test/proc"
)

func main() {
	rounds := flag.Int("rounds", 5, "rounds; medians are taken over them (at least 5 for quoted numbers)")
	iters := flag.Int("iters", 6, "BenchmarkInterleaved iterations per round (each moves 8 MiB each way per variant)")
	idle := flag.Bool("idle", true, "also measure memory per idle stream (10,000 streams)")
	flag.Parse()
	if err := run(*rounds, *iters, *idle); err != nil {
		fmt.Fprintln(os.Stderr, "bench-hbone:", err)
		os.Exit(1)
	}
}

// results maps a benchmark name (without the -N suffix) and unit to one value per round.
type results map[string][]float64

func key(name, unit string) string { return name + " " + unit }

// benchLine matches a result line; the name's -N suffix is GOMAXPROCS (absent when 1).
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-(\d+))?\s+\d+\s+(.*)$`)

func run(rounds, iters int, idle bool) error {
	dir, err := os.MkdirTemp("", "bench-hbone")
	if err != nil {
		return fmt.Errorf("make temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "hbone.test")
	build := exec.Command("go", "test", "-c", "-o", bin, "./hbone")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := proc.Run(build); err != nil {
		return fmt.Errorf("build hbone test binary: %w", err)
	}
	res := results{}
	for r := range rounds {
		fmt.Fprintf(os.Stderr, "round %d/%d\n", r+1, rounds)
		jobs := []job{
			{"^BenchmarkInterleaved$", fmt.Sprintf("%dx", iters), "2"},
			{"^BenchmarkInterleaved$", fmt.Sprintf("%dx", iters), "1"},
			{"^BenchmarkStreamSetup$", "20000x", "2"},
		}
		if idle {
			jobs = append(jobs, job{"^BenchmarkIdleStreams$", "1x", "2"})
		}
		for _, j := range jobs {
			if err := runBench(bin, j, res); err != nil {
				return err
			}
		}
	}
	report(res, rounds)
	return nil
}

type job struct{ pattern, benchtime, cpu string }

// runBench runs one benchmark and records each reported metric as "name@cpu unit".
func runBench(bin string, j job, res results) error {
	cmd := exec.Command(bin, "-test.run", "^$", "-test.bench", j.pattern, "-test.benchtime", j.benchtime,
		"-test.cpu", j.cpu, "-test.benchmem")
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	if err := proc.Run(cmd); err != nil { // dies with us (test/proc)
		os.Stderr.Write(out.Bytes())
		return fmt.Errorf("run %s: %w", j.pattern, err)
	}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			k := key(m[1]+"@"+j.cpu, f[i+1])
			res[k] = append(res[k], v)
		}
	}
	return sc.Err()
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ratio returns the median over rounds of a[i]/b[i].
func ratio(a, b []float64) float64 {
	n := min(len(a), len(b))
	r := make([]float64, 0, n)
	for i := range n {
		if b[i] != 0 {
			r = append(r, a[i]/b[i])
		}
	}
	return median(r)
}

var variants = []string{"tcp", "tls", "hbone", "h2default"}

func report(res results, rounds int) {
	il := func(cpu, v, metric string) []float64 { return res[key("BenchmarkInterleaved@"+cpu, v+"-"+metric)] }
	fmt.Printf("\nHBONE comparison, medians over %d rounds of BenchmarkInterleaved (variants alternating in one\n", rounds)
	fmt.Printf("process; loopback; 8 MiB per transfer in 256 KiB writes and reads; 1-byte ping-pong; TLS 1.3 with\n")
	fmt.Printf("the same ECDSA P-256 certificates). cpu-µs/MB counts both ends (getrusage of the process).\n")
	for _, cpu := range []string{"2", "1"} {
		fmt.Printf("\nGOMAXPROCS=%s\n\n", cpu)
		fmt.Println("| variant | up MB/s | down MB/s | up / TLS | down / TLS | up cpu-µs/MB | down cpu-µs/MB | RTT µs | RTT / TLS |")
		fmt.Println("|---|---|---|---|---|---|---|---|---|")
		for _, v := range variants {
			fmt.Printf("| %s | %.0f | %.0f | %.2f | %.2f | %.0f | %.0f | %.1f | %.2f |\n", v,
				median(il(cpu, v, "up-MB/s")), median(il(cpu, v, "down-MB/s")),
				ratio(il(cpu, v, "up-MB/s"), il(cpu, "tls", "up-MB/s")), ratio(il(cpu, v, "down-MB/s"), il(cpu, "tls", "down-MB/s")),
				median(il(cpu, v, "up-cpu-ns/MB"))/1000, median(il(cpu, v, "down-cpu-ns/MB"))/1000,
				median(il(cpu, v, "rtt-ns"))/1000, ratio(il(cpu, v, "rtt-ns"), il(cpu, "tls", "rtt-ns")))
		}
	}
	fmt.Println()
	fmt.Println("| check (GOMAXPROCS=2 unless noted) | measured | target |")
	fmt.Println("|---|---|---|")
	check := func(name string, got float64, target string, ok bool) {
		mark := "met"
		if !ok {
			mark = "MISSED"
		}
		fmt.Printf("| %s | %.2f | %s (%s) |\n", name, got, target, mark)
	}
	for _, dir := range []string{"up", "down"} {
		r := ratio(il("2", "hbone", dir+"-MB/s"), il("2", "tls", dir+"-MB/s"))
		check("HBONE / plain TLS throughput, "+dir, r, ">= 0.9", r >= 0.9)
		c := ratio(il("2", "tls", dir+"-cpu-ns/MB"), il("2", "hbone", dir+"-cpu-ns/MB"))
		check("plain TLS CPU per MB / HBONE CPU per MB, "+dir, c, "(efficiency; 1 = same)", true)
		h := ratio(il("2", "hbone", dir+"-MB/s"), il("2", "h2default", dir+"-MB/s"))
		check("HBONE / net/http-h2 HBONE throughput, "+dir, h, ">= 1.3", h >= 1.3)
	}
	r := ratio(il("2", "hbone", "rtt-ns"), il("2", "tls", "rtt-ns"))
	check("HBONE RTT / plain TLS RTT", r, "<= 1.1", r <= 1.1)
	r1 := ratio(il("1", "hbone", "rtt-ns"), il("1", "tls", "rtt-ns"))
	check("HBONE RTT / plain TLS RTT, GOMAXPROCS=1 (same vCPU, as the anchor)", r1, "<= 1.1", r1 <= 1.1)
	if v := res[key("BenchmarkStreamSetup@2", "cpu-ns/op")]; len(v) > 0 {
		c := median(v) / 1000
		check("stream open+close CPU on a warm pool, both ends, µs", c, "< 20", c < 20)
	}
	if v := res[key("BenchmarkIdleStreams@2", "B/stream")]; len(v) > 0 {
		b := median(v)
		check("memory per idle stream, both ends, KB", b/1000, "<= 8", b <= 8000)
	}
}
