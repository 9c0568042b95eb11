// Command bench-hbone compares Ambit's HBONE with raw TCP, plain TLS 1.3 and an HBONE built on net/http's
// default HTTP/2, using the Go benchmarks in package hbone. It builds the hbone test binary once, runs
// every variant in shuffled order in each of several rounds (same machine, loopback, one process per
// variant run), and prints medians of the per-round values and ratios as a Markdown table.
//
// Usage: go run ./hack/bench-hbone [-rounds 5] [-benchtime 1s]
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

func main() {
	rounds := flag.Int("rounds", 5, "rounds; medians are taken over them (at least 5 for quoted numbers)")
	benchtime := flag.String("benchtime", "1s", "-test.benchtime for throughput and latency benchmarks")
	idle := flag.Bool("idle", true, "also measure memory per idle stream (10,000 streams)")
	flag.Parse()
	if err := run(*rounds, *benchtime, *idle); err != nil {
		fmt.Fprintln(os.Stderr, "bench-hbone:", err)
		os.Exit(1)
	}
}

// results maps a benchmark name (without the -N suffix) and unit to one value per round.
type results map[string][]float64

func key(name, unit string) string { return name + " " + unit }

// benchLine matches a result line; the name's -N suffix is GOMAXPROCS (absent when 1).
var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-(\d+))?\s+\d+\s+(.*)$`)

func run(rounds int, benchtime string, idle bool) error {
	dir, err := os.MkdirTemp("", "bench-hbone")
	if err != nil {
		return fmt.Errorf("make temp dir: %w", err)
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "hbone.test")
	build := exec.Command("go", "test", "-c", "-o", bin, "./hbone")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("build hbone test binary: %w", err)
	}
	variants := []string{"tcp", "tls", "hbone", "h2default"}
	res := results{}
	for r := range rounds {
		fmt.Fprintf(os.Stderr, "round %d/%d\n", r+1, rounds)
		var jobs []string
		for _, v := range variants {
			jobs = append(jobs, "^BenchmarkBulk$/^"+v+"$", "^BenchmarkRTT$/^"+v+"$", "1:^BenchmarkRTT$/^"+v+"$")
		}
		jobs = append(jobs, "^BenchmarkStreamSetup$")
		rand.Shuffle(len(jobs), func(i, j int) { jobs[i], jobs[j] = jobs[j], jobs[i] })
		for _, job := range jobs {
			if err := runBench(bin, job, benchtime, res); err != nil {
				return err
			}
		}
		if idle {
			if err := runBench(bin, "^BenchmarkIdleStreams$", "1x", res); err != nil {
				return err
			}
		}
	}
	report(res, rounds)
	return nil
}

// runBench runs one benchmark pattern; a "1:" prefix runs it with GOMAXPROCS=1 (client and server on
// one CPU, as the "same vCPU" RTT in performance-anchors.md section 7) and records it as name@1.
func runBench(bin, pattern, benchtime string, res results) error {
	args := []string{"-test.run", "^$", "-test.benchtime", benchtime, "-test.benchmem"}
	if p, ok := strings.CutPrefix(pattern, "1:"); ok {
		pattern = p
		args = append(args, "-test.cpu", "1")
	}
	cmd := exec.Command(bin, append(args, "-test.bench", pattern)...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		os.Stderr.Write(out.Bytes())
		return fmt.Errorf("run %s: %w", pattern, err)
	}
	sc := bufio.NewScanner(&out)
	for sc.Scan() {
		m := benchLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		name := m[1]
		if m[2] == "" {
			name += "@1"
		}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			res[key(name, f[i+1])] = append(res[key(name, f[i+1])], v)
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

func report(res results, rounds int) {
	bulk := func(v, dir, unit string) []float64 { return res[key("BenchmarkBulk/"+v+"/"+dir, unit)] }
	rtt := func(v string) []float64 { return res[key("BenchmarkRTT/"+v, "ns/op")] }
	rtt1 := func(v string) []float64 { return res[key("BenchmarkRTT/"+v+"@1", "ns/op")] }
	fmt.Printf("\nHBONE comparison: medians over %d rounds of per-round values and ratios; loopback, client and\n", rounds)
	fmt.Printf("server in one process, 256 KiB writes and reads, TLS 1.3 with the same ECDSA P-256 certificates.\n")
	fmt.Printf("cpu/MB is the CPU of both ends per MB (getrusage), which other load on the machine barely affects.\n\n")
	fmt.Println("| variant | up MB/s | down MB/s | up / TLS | down / TLS | up cpu-µs/MB | down cpu-µs/MB | RTT µs | RTT / TLS | RTT µs, 1 CPU | RTT / TLS, 1 CPU |")
	fmt.Println("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, v := range []string{"tcp", "tls", "hbone", "h2default"} {
		fmt.Printf("| %s | %.0f | %.0f | %.2f | %.2f | %.0f | %.0f | %.1f | %.2f | %.1f | %.2f |\n", v,
			median(bulk(v, "up", "MB/s")), median(bulk(v, "down", "MB/s")),
			ratio(bulk(v, "up", "MB/s"), bulk("tls", "up", "MB/s")), ratio(bulk(v, "down", "MB/s"), bulk("tls", "down", "MB/s")),
			median(bulk(v, "up", "cpu-ns/MB"))/1000, median(bulk(v, "down", "cpu-ns/MB"))/1000,
			median(rtt(v))/1000, ratio(rtt(v), rtt("tls")), median(rtt1(v))/1000, ratio(rtt1(v), rtt1("tls")))
	}
	fmt.Println()
	fmt.Println("| check | measured | target |")
	fmt.Println("|---|---|---|")
	check := func(name string, got float64, target string, ok bool) {
		mark := "met"
		if !ok {
			mark = "MISSED"
		}
		fmt.Printf("| %s | %.2f | %s (%s) |\n", name, got, target, mark)
	}
	for _, dir := range []string{"up", "down"} {
		r := ratio(bulk("hbone", dir, "MB/s"), bulk("tls", dir, "MB/s"))
		check("HBONE / plain TLS throughput, "+dir, r, ">= 0.9", r >= 0.9)
		c := ratio(bulk("tls", dir, "cpu-ns/MB"), bulk("hbone", dir, "cpu-ns/MB"))
		check("plain TLS / HBONE CPU per MB (efficiency), "+dir, c, ">= 0.9", c >= 0.9)
		h := ratio(bulk("hbone", dir, "MB/s"), bulk("h2default", dir, "MB/s"))
		check("HBONE / net/http-h2 HBONE throughput, "+dir, h, ">= 1.3", h >= 1.3)
	}
	r := ratio(rtt("hbone"), rtt("tls"))
	check("HBONE RTT / plain TLS RTT", r, "<= 1.1", r <= 1.1)
	r1 := ratio(rtt1("hbone"), rtt1("tls"))
	check("HBONE RTT / plain TLS RTT, 1 CPU", r1, "<= 1.1", r1 <= 1.1)
	if v := res[key("BenchmarkStreamSetup", "cpu-ns/op")]; len(v) > 0 {
		c := median(v) / 1000
		check("stream open+close CPU on a warm pool, both ends, µs", c, "< 20", c < 20)
	}
	if v := res[key("BenchmarkIdleStreams", "B/stream")]; len(v) > 0 {
		b := median(v)
		check("memory per idle stream, both ends, KB", b/1000, "<= 8", b <= 8000)
	}
}
