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

var benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

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
			jobs = append(jobs, "^BenchmarkBulk$/^"+v+"$", "^BenchmarkRTT$/^"+v+"$")
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

func runBench(bin, pattern, benchtime string, res results) error {
	cmd := exec.Command(bin, "-test.run", "^$", "-test.bench", pattern, "-test.benchtime", benchtime, "-test.benchmem")
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
		f := strings.Fields(m[2])
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				continue
			}
			res[key(m[1], f[i+1])] = append(res[key(m[1], f[i+1])], v)
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
	mbs := func(v, dir string) []float64 { return res[key("BenchmarkBulk/"+v+"/"+dir, "MB/s")] }
	rtt := func(v string) []float64 { return res[key("BenchmarkRTT/"+v, "ns/op")] }
	fmt.Printf("\nHBONE comparison: medians of %d rounds, one process per run, loopback, GOMAXPROCS=%s\n\n", rounds, gomaxprocs())
	fmt.Println("| variant | upload MB/s | download MB/s | up / TLS | down / TLS | 1-byte RTT µs | RTT / TLS |")
	fmt.Println("|---|---|---|---|---|---|---|")
	for _, v := range []string{"tcp", "tls", "hbone", "h2default"} {
		fmt.Printf("| %s | %.0f | %.0f | %.2f | %.2f | %.1f | %.2f |\n", v,
			median(mbs(v, "up")), median(mbs(v, "down")),
			ratio(mbs(v, "up"), mbs("tls", "up")), ratio(mbs(v, "down"), mbs("tls", "down")),
			median(rtt(v))/1000, ratio(rtt(v), rtt("tls")))
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
	up, down := ratio(mbs("hbone", "up"), mbs("tls", "up")), ratio(mbs("hbone", "down"), mbs("tls", "down"))
	check("HBONE / plain TLS, upload", up, ">= 0.9", up >= 0.9)
	check("HBONE / plain TLS, download", down, ">= 0.9", down >= 0.9)
	hup, hdown := ratio(mbs("hbone", "up"), mbs("h2default", "up")), ratio(mbs("hbone", "down"), mbs("h2default", "down"))
	check("HBONE / net/http h2 HBONE, upload", hup, ">= 1.3", hup >= 1.3)
	check("HBONE / net/http h2 HBONE, download", hdown, ">= 1.3", hdown >= 1.3)
	r := ratio(rtt("hbone"), rtt("tls"))
	check("HBONE RTT / plain TLS RTT", r, "<= 1.1", r <= 1.1)
	if v := res[key("BenchmarkStreamSetup", "cpu-ns/op")]; len(v) > 0 {
		c := median(v) / 1000
		check("stream set-up CPU on a warm pool, both ends, µs", c, "< 20", c < 20)
	}
	if v := res[key("BenchmarkIdleStreams", "B/stream")]; len(v) > 0 {
		b := median(v)
		check("memory per idle stream, both ends, KB", b/1000, "<= 8", b <= 8000)
	}
}

func gomaxprocs() string {
	if v := os.Getenv("GOMAXPROCS"); v != "" {
		return v
	}
	return "default"
}
