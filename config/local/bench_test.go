package local

import (
	"runtime"
	"testing"

	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/test/synth"
)

func loadSynth(b *testing.B) *Objects {
	b.Helper()
	objs := &Objects{}
	if err := objs.Decode("synth.yaml", synth.YAML(synth.Default)); err != nil {
		b.Fatal(err)
	}
	return objs
}

// BenchmarkCompile compiles 10,000 pods, 2,000 services and 500 namespaces (already decoded).
func BenchmarkCompile(b *testing.B) {
	objs := loadSynth(b)
	b.ReportAllocs()
	for b.Loop() {
		res, err := Compile(objs, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if len(res.Snapshot.Workloads) < synth.Default.Pods {
			b.Fatalf("workloads = %d", len(res.Snapshot.Workloads))
		}
	}
}

// BenchmarkDecodeAndCompile includes YAML parsing of the same configuration.
func BenchmarkDecodeAndCompile(b *testing.B) {
	data := synth.YAML(synth.Default)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		objs := &Objects{}
		if err := objs.Decode("synth.yaml", data); err != nil {
			b.Fatal(err)
		}
		if _, err := Compile(objs, Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkStateMemory reports the heap held by a Store per workload of the compiled configuration.
func BenchmarkStateMemory(b *testing.B) {
	objs := loadSynth(b)
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		res, err := Compile(objs, Options{})
		if err != nil {
			b.Fatal(err)
		}
		s := state.NewStore()
		s.Replace(&res.Snapshot)
		res = nil
		runtime.GC()
		runtime.ReadMemStats(&after)
		// What remains is the store (objects + indexes); the compiler's inputs were dropped.
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(synth.Default.Pods), "storeB/workload")
		runtime.KeepAlive(s)
	}
}
