package xds_test

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"runtime/metrics"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/test/xdstest"
	"github.com/ambit-mesh/ambit/xdsclient"
	wapi "github.com/ambit-mesh/ambit/xdsclient/workloadapi"
)

// benchSize is the shape of one benchmark configuration.
type benchSize struct {
	name                            string
	namespaces, services, workloads int
}

var (
	// size100k is issue 6's size: 100,000 workloads and 10,000 services in one delta response.
	size100k = benchSize{"100k", 1000, 10000, 100000}
	// size1M is issue 15's: 1,000,000 workloads and 66,000 services (the same services per namespace and
	// workloads per service as size100k would give with fewer, larger services: istiod's large-cluster shape).
	size1M = benchSize{"1M", 6600, 66000, 1000000}
)

// benchPod is workload i, shaped like istiod's pods: one IP, HBONE, identity, node, telemetry names, one
// service membership; every tenth namespace uses a waypoint.
func benchPod(sz benchSize, i, generation int) (string, *wapi.Address) {
	svc := i % sz.services
	ns := fmt.Sprintf("ns%d", svc%sz.namespaces)
	name := fmt.Sprintf("pod%d", i)
	ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	a := xdstest.Pod(ns, name, ip.String(), xdstest.InService(ns, fmt.Sprintf("svc%d", svc)), func(w *wapi.Workload) {
		w.Node = fmt.Sprintf("node%d", i%100)
		w.ServiceAccount = fmt.Sprintf("sa%d", svc)
		w.CanonicalName = fmt.Sprintf("svc%d", svc)
		w.CanonicalRevision = fmt.Sprintf("v%d", generation)
		if (svc%sz.namespaces)%10 == 0 {
			w.Waypoint = xdstest.WaypointHost(ns, "waypoint")
		}
	})
	return a.GetWorkload().GetUid(), a
}

func benchService(sz benchSize, i int) (string, *wapi.Address) {
	ns := fmt.Sprintf("ns%d", i%sz.namespaces)
	name := fmt.Sprintf("svc%d", i)
	if i < sz.namespaces && i%10 == 0 {
		name = "waypoint" // the waypoint service of every tenth namespace
	}
	vip := netip.AddrFrom4([4]byte{100, byte(i >> 16), byte(i >> 8), byte(i)})
	return xdstest.ServiceName(ns, name), xdstest.Service(ns, name, vip.String())
}

// benchResponse is the marshaled DeltaDiscoveryResponse istiod would send on connect.
func benchResponse(b testing.TB, sz benchSize) []byte {
	b.Helper()
	resp := &discovery.DeltaDiscoveryResponse{TypeUrl: xds.AddressTypeURL, Nonce: "n1"}
	add := func(name string, m proto.Message) {
		resp.Resources = append(resp.Resources, &discovery.Resource{Name: name, Version: "v1", Resource: xdstest.Any(m)})
	}
	for i := range sz.services {
		add(benchService(sz, i))
	}
	for i := range sz.workloads {
		add(benchPod(sz, i, 0))
	}
	raw, err := proto.Marshal(resp)
	if err != nil {
		b.Fatal(err)
	}
	return raw
}

// toUpdate does what xdsclient does with a received response.
func toUpdate(resp *discovery.DeltaDiscoveryResponse) *xdsclient.Update {
	u := &xdsclient.Update{TypeURL: resp.GetTypeUrl(), Removed: resp.GetRemovedResources(),
		Resources: make([]xdsclient.Resource, len(resp.GetResources()))}
	for i, r := range resp.GetResources() {
		u.Resources[i] = xdsclient.Resource{Name: r.GetName(), Version: r.GetVersion(), Body: r.GetResource()}
	}
	return u
}

// heapPeak samples the live heap every millisecond until stopped and returns the peak.
func heapPeak() (stop func() uint64) {
	sample := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(sample)
			if v := sample[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak.Load()
	}
}

// BenchmarkIngest decodes one delta response from its wire bytes (as gRPC does), converts and validates
// every resource and applies it to an empty store, at 100,000 workloads and 10,000 services and at
// 1,000,000 workloads and 66,000 services. It reports the peak live heap during the operation above the
// heap before it (the wire bytes themselves excluded) and the heap the store retains afterwards.
func BenchmarkIngest(b *testing.B) {
	for _, sz := range []benchSize{size100k, size1M} {
		b.Run(sz.name, func(b *testing.B) {
			raw := benchResponse(b, sz)
			for _, mode := range []struct {
				name      string
				threshold int
			}{{"parallel", 2048}, {"serial", 1 << 30}} {
				b.Run(mode.name, func(b *testing.B) {
					defer xds.SetParallelThreshold(xds.SetParallelThreshold(mode.threshold))
					benchIngest(b, sz, raw)
				})
			}
		})
	}
}

func benchIngest(b *testing.B, sz benchSize, raw []byte) {
	b.SetBytes(int64(len(raw)))
	var peak, retained uint64
	var cpu time.Duration
	for b.Loop() {
		b.StopTimer()
		runtime.GC()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		stop := heapPeak()
		cpu0 := processCPU()
		b.StartTimer()

		resp := &discovery.DeltaDiscoveryResponse{}
		if err := proto.Unmarshal(raw, resp); err != nil {
			b.Fatal(err)
		}
		st := state.NewStore()
		st.WorkloadsOnNode("node0") // as an agent on node0: its own node is indexed
		h := xds.NewAddressHandler(xds.AddressHandlerOptions{Store: st})
		if rej := h.HandleUpdate(context.Background(), toUpdate(resp)); len(rej) != 0 {
			b.Fatalf("rejected: %v", rej[:min(len(rej), 3)])
		}

		b.StopTimer()
		cpu += processCPU() - cpu0
		p := stop()
		resp = nil
		runtime.GC()
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		if w, s, _ := st.Counts(); w != sz.workloads || s != sz.services {
			b.Fatalf("counts = %d, %d", w, s)
		}
		peak = max(peak, p-min(p, before.HeapAlloc))
		retained = after.HeapAlloc - before.HeapAlloc
		runtime.KeepAlive(st)
		runtime.KeepAlive(resp)
		b.StartTimer()
	}
	// CPU time (user + system, every thread: decoding, conversion and the GC's workers) says more than wall
	// time on a shared machine.
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
	b.ReportMetric(float64(peak)/(1<<20), "peak-MB")
	b.ReportMetric(float64(retained)/(1<<20), "store-MB")
}

// BenchmarkIncrementalUpdate applies one changed workload (decode, convert, validate, apply) to a store
// holding 100,000 workloads and 10,000 services while two readers keep looking workloads and services up.
// It reports the update latency (ns/op) and how many lookups the readers completed per update
// (reads/op), which shows they keep going; how long one update holds the store's write lock is measured
// alone by BenchmarkStoreApplyOne.
func BenchmarkIncrementalUpdate(b *testing.B) {
	raw := benchResponse(b, size100k)
	resp := &discovery.DeltaDiscoveryResponse{}
	if err := proto.Unmarshal(raw, resp); err != nil {
		b.Fatal(err)
	}
	st := state.NewStore()
	h := xds.NewAddressHandler(xds.AddressHandlerOptions{Store: st})
	if rej := h.HandleUpdate(context.Background(), toUpdate(resp)); len(rej) != 0 {
		b.Fatal(rej[0])
	}
	resp, raw = nil, nil
	// Two versions of pod 4242 to alternate between.
	var updates [2]*xdsclient.Update
	for g := range updates {
		name, a := benchPod(size100k, 4242, g+1)
		updates[g] = &xdsclient.Update{TypeURL: xds.AddressTypeURL, Resources: []xdsclient.Resource{{Name: name, Version: fmt.Sprint(g), Body: xdstest.Any(a)}}}
	}
	runtime.GC()

	var (
		stop  atomic.Bool
		wg    sync.WaitGroup
		reads atomic.Int64
	)
	for r := range 2 {
		wg.Go(func() {
			n := int64(0)
			for i := r; !stop.Load(); i++ {
				ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
				vip := netip.AddrFrom4([4]byte{100, 0, byte(i >> 8 % 39), byte(i)})
				_ = st.WorkloadByAddr(state.AddrOf(ip))
				_ = st.ServiceByVIP(state.AddrOf(vip), "ns1")
				n++
				runtime.Gosched() // share the CPUs with the writer on small machines
			}
			reads.Add(n)
		})
	}
	i := 0
	for b.Loop() {
		// A fresh Update each time, as xdsclient makes: the handler drops the bodies it converted.
		u := *updates[i%2]
		u.Resources = slices.Clone(u.Resources)
		if rej := h.HandleUpdate(context.Background(), &u); len(rej) != 0 {
			b.Fatal(rej[0])
		}
		i++
	}
	b.StopTimer()
	stop.Store(true)
	wg.Wait()
	b.ReportMetric(float64(reads.Load())/float64(b.N), "reads/op")
	name, _ := benchPod(size100k, 4242, 0)
	if w := st.Workload(name); w == nil || !slices.Contains([]string{"v1", "v2"}, w.CanonicalRevision) {
		b.Fatalf("update not applied: %v", w)
	}
}

// BenchmarkStoreApplyOne isolates state.Store.Apply of one changed workload in the same full store, to
// separate the store's cost from conversion in BenchmarkIncrementalUpdate.
func BenchmarkStoreApplyOne(b *testing.B) {
	raw := benchResponse(b, size100k)
	resp := &discovery.DeltaDiscoveryResponse{}
	if err := proto.Unmarshal(raw, resp); err != nil {
		b.Fatal(err)
	}
	st := state.NewStore()
	if rej := xds.NewAddressHandler(xds.AddressHandlerOptions{Store: st}).HandleUpdate(context.Background(), toUpdate(resp)); len(rej) != 0 {
		b.Fatal(rej[0])
	}
	resp, raw = nil, nil
	var ws [2]*state.Workload
	for g := range ws {
		_, a := benchPod(size100k, 4242, g+1)
		w, err := xds.ConvertWorkload(a.GetWorkload())
		if err != nil {
			b.Fatal(err)
		}
		ws[g] = w
	}
	runtime.GC()
	i := 0
	for b.Loop() {
		st.Apply(&state.Update{Workloads: []*state.Workload{ws[i%2]}})
		i++
	}
}

// processCPU is the CPU time the process has used (user + system).
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
