package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestParseBenchOutput(t *testing.T) {
	out := `goos: linux
BenchmarkStreamSetup-2   	   44521	     49676 ns/op	     27738 cpu-ns/op	    2361 B/op	      33 allocs/op
BenchmarkStreamSetup-2   	   42368	     29198 ns/op	     30224 cpu-ns/op	    2355 B/op	      33 allocs/op
BenchmarkStreamSetup-2   	   42368	     31000 ns/op	     20000 cpu-ns/op	    2355 B/op	      33 allocs/op
BenchmarkRTT/tls-2 	   80000	     10000 ns/op	 9000 cpu-ns/op
BenchmarkRTT/hbone-2 	   80000	     12000 ns/op	 11000 cpu-ns/op
BenchmarkIngest/1M/parallel-2         	       1	 9819466534 ns/op	  29.87 MB/s	       9762.7 cpu-ms/op	       2416.5 peak-MB	        1028 store-MB
PASS
`
	r := benchResults{}
	parseBenchOutput(strings.NewReader(out), r)
	if v, n, ok := r.median("BenchmarkStreamSetup", "cpu-ns/op"); !ok || n != 3 || v != 27738 {
		t.Errorf("StreamSetup cpu-ns/op median = %v, %d, %v", v, n, ok)
	}
	if v, _, ok := r.median("BenchmarkIngest/1M/parallel", "peak-MB"); !ok || v != 2416.5 {
		t.Errorf("Ingest peak-MB = %v, %v", v, ok)
	}
	if _, _, ok := r.median("BenchmarkMissing", "ns/op"); ok {
		t.Error("a benchmark that did not run has a median")
	}
	var b bytes.Buffer
	reportGoBenches(&b, r)
	for _, want := range []string{"| HBONE stream open+close CPU, warm pool, both ends (µs) | 27.7 | 3 | < 20 µs |",
		"| HBONE RTT / TLS RTT, 1 byte (ratio of medians) | 1.20 | 1 | <= 1.1 |",
		"| xDS ingest, 1M workloads + 66k services: wall time (s) | 9.82 | 1 | <= 3 s |",
		"|   peak live heap above the wire bytes (MB) | 2416 | 1 | <= 1 GB |"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
