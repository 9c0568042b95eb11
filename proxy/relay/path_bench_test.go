package relay

// Benchmarks of the agent's data path in one process, on loopback: a client's TCP connection goes
// through an "outbound" relay (TCP <-> HBONE stream from an hbone.Pool), an hbone.Server whose handler
// relays the stream to the backend ("inbound" relay), and reaches a backend TCP server; the "direct"
// variant connects the client to the backend. Both ends of every hop live in this process, so CPU
// figures include the client and the backend, alike for both variants.
//
// The backend protocol, on each connection: 9-byte requests, 'U' or 'D' plus a little-endian length L;
// for 'U' the client then sends L bytes and the backend answers 1 byte once it read them; for 'D' the
// backend sends L bytes. 'E' echoes one byte (L ignored).

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/test/testutil"
)

const pathBuf = 128 << 10 // the client's and backend's read and write size (iperf3's default)

var backendBufs = sync.Pool{New: func() any { b := make([]byte, pathBuf); return &b }}

// serveBackend runs the backend protocol on c until EOF. It holds a buffer only while serving a request.
func serveBackend(c net.Conn) {
	defer c.Close()
	var req [9]byte
	for {
		if _, err := io.ReadFull(c, req[:]); err != nil {
			return
		}
		if req[0] == 'E' {
			if _, err := c.Write(req[:1]); err != nil {
				return
			}
			continue
		}
		if !serveBulk(c, req[0], int64(binary.LittleEndian.Uint64(req[1:]))) {
			return
		}
	}
}

func serveBulk(c net.Conn, kind byte, n int64) bool {
	bp := backendBufs.Get().(*[]byte)
	defer backendBufs.Put(bp)
	buf := *bp
	switch kind {
	case 'U':
		if err := readN(c, buf, n); err != nil {
			return false
		}
		_, err := c.Write([]byte{1})
		return err == nil
	case 'D':
		for n > 0 {
			m := min(n, int64(len(buf)))
			if _, err := c.Write(buf[:m]); err != nil {
				return false
			}
			n -= m
		}
		return true
	}
	return false
}

func readN(r io.Reader, buf []byte, n int64) error {
	for n > 0 {
		m, err := r.Read(buf[:min(int64(len(buf)), n)])
		n -= int64(m)
		if err != nil && (n > 0 || err != io.EOF) {
			return err
		}
	}
	return nil
}

// serveAll accepts on ln and runs serve on each connection until ln closes; wg tracks the goroutines.
func serveAll(ln net.Listener, wg *sync.WaitGroup, serve func(net.Conn)) {
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { serve(c) })
		}
	})
}

func listen(tb testing.TB) net.Listener {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return ln
}

// testPath is the backend plus the mesh in front of it.
type testPath struct {
	backend, outbound netip.AddrPort
	pool              *hbone.Pool
}

// startPath starts the backend, the HBONE server with its inbound relay and the outbound relay; cleanup
// stops them all.
func startPath(tb testing.TB) *testPath {
	tb.Helper()
	ca, err := testutil.NewCA("cluster.local")
	if err != nil {
		tb.Fatal(err)
	}
	srvID := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/server")
	cliID := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client")
	creds := func(id spiffeid.ID) *hbone.Credentials {
		cert, roots, err := ca.Issue(id, time.Hour)
		if err != nil {
			tb.Fatal(err)
		}
		return &hbone.Credentials{ID: id, Certificate: cert, Roots: roots}
	}
	srvCreds, cliCreds := creds(srvID), creds(cliID)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	bln, hln, oln := listen(tb), listen(tb), listen(tb)
	tp := &testPath{
		backend:  bln.Addr().(*net.TCPAddr).AddrPort(),
		outbound: oln.Addr().(*net.TCPAddr).AddrPort(),
	}
	serveAll(bln, &wg, serveBackend)

	srv := &hbone.Server{
		Credentials: func(context.Context, netip.AddrPort) (*hbone.Credentials, error) { return srvCreds, nil },
		Handler: hbone.HandlerFunc(func(ctx context.Context, r *hbone.Request) error {
			var d net.Dialer
			up, err := d.DialContext(ctx, "tcp", tp.backend.String())
			if err != nil {
				return err
			}
			down, err := r.Accept(nil)
			if err != nil {
				up.Close()
				return err
			}
			// As the agent: the handler hands the stream off and returns; the relay parks while idle.
			r.HandOff()
			wg.Add(1)
			Start(ctx, down, up, nil, func(error) { wg.Done() })
			return nil
		}),
	}
	wg.Go(func() { _ = srv.Serve(ctx, hln) })

	tp.pool, err = hbone.NewPool(hbone.PoolOptions{
		Credentials: func(context.Context, spiffeid.ID) (*hbone.Credentials, error) { return cliCreds, nil },
	})
	if err != nil {
		tb.Fatal(err)
	}
	target := hbone.Target{
		NextHop: hln.Addr().(*net.TCPAddr).AddrPort(), Authority: tp.backend.String(),
		Source: cliID, Expected: []spiffeid.ID{srvID},
	}
	serveAll(oln, &wg, func(down net.Conn) {
		up, err := tp.pool.Dial(ctx, target)
		if err != nil {
			down.Close()
			return
		}
		wg.Add(1)
		Start(ctx, down, up, nil, func(error) { wg.Done() })
	})
	tb.Cleanup(func() {
		cancel()
		bln.Close()
		oln.Close()
		_ = srv.Close()
		_ = tp.pool.Close()
		wg.Wait()
	})
	return tp
}

func dialPath(tb testing.TB, to netip.AddrPort) net.Conn {
	tb.Helper()
	c, err := net.Dial("tcp", to.String())
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// request sends one backend request.
func request(c net.Conn, kind byte, n int64) error {
	var req [9]byte
	req[0] = kind
	binary.LittleEndian.PutUint64(req[1:], uint64(n))
	_, err := c.Write(req[:])
	return err
}

func echo(c net.Conn) error {
	if err := request(c, 'E', 0); err != nil {
		return err
	}
	var b [1]byte
	_, err := io.ReadFull(c, b[:])
	return err
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPath moves 16 MiB up and 16 MiB down per iteration over one connection, directly and through
// the mesh path in alternation (so other load on the machine hits both alike), and reports MB/s and CPU
// per MB (whole process: client, relays, HBONE both ends, backend) for each, plus the mesh/direct ratios.
func BenchmarkPath(b *testing.B) {
	const chunk = 16 << 20
	tp := startPath(b)
	type variant struct {
		name         string
		c            net.Conn
		upNs, dnNs   time.Duration
		upCPU, dnCPU time.Duration
	}
	vs := []*variant{{name: "direct", c: dialPath(b, tp.backend)}, {name: "mesh", c: dialPath(b, tp.outbound)}}
	for _, v := range vs {
		defer v.c.Close()
	}
	buf := make([]byte, pathBuf)
	up := func(c net.Conn) error {
		if err := request(c, 'U', chunk); err != nil {
			return err
		}
		for n := 0; n < chunk; n += len(buf) {
			if _, err := c.Write(buf); err != nil {
				return err
			}
		}
		_, err := io.ReadFull(c, buf[:1])
		return err
	}
	down := func(c net.Conn) error {
		if err := request(c, 'D', chunk); err != nil {
			return err
		}
		return readN(c, buf, chunk)
	}
	measure := func(f func(net.Conn) error, c net.Conn) (time.Duration, time.Duration) {
		c0, t0 := cpuTime(), time.Now()
		if err := f(c); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0), cpuTime() - c0
	}
	for _, v := range vs { // warm up: windows, pools, record sizes
		measure(up, v.c)
		measure(down, v.c)
	}
	b.ResetTimer()
	for i := range b.N {
		for j := range vs {
			v := vs[(i+j)%len(vs)]
			t, c := measure(up, v.c)
			v.upNs, v.upCPU = v.upNs+t, v.upCPU+c
			t, c = measure(down, v.c)
			v.dnNs, v.dnCPU = v.dnNs+t, v.dnCPU+c
		}
	}
	b.StopTimer()
	mb := float64(b.N) * chunk / 1e6
	for _, v := range vs {
		b.ReportMetric(mb/v.upNs.Seconds(), v.name+"-up-MB/s")
		b.ReportMetric(mb/v.dnNs.Seconds(), v.name+"-down-MB/s")
		b.ReportMetric(float64(v.upCPU.Microseconds())/mb, v.name+"-up-cpu-µs/MB")
		b.ReportMetric(float64(v.dnCPU.Microseconds())/mb, v.name+"-down-cpu-µs/MB")
	}
	b.ReportMetric(vs[0].upNs.Seconds()/vs[1].upNs.Seconds(), "mesh/direct-up")
	b.ReportMetric(vs[0].dnNs.Seconds()/vs[1].dnNs.Seconds(), "mesh/direct-down")
}

// BenchmarkPathConnect opens a connection through the mesh path on a warm HBONE pool, exchanges one
// byte and closes it; cpu-µs/op is the CPU of the whole process (client, both relays, backend) per
// connection.
func BenchmarkPathConnect(b *testing.B) {
	tp := startPath(b)
	warm := dialPath(b, tp.outbound)
	defer warm.Close()
	if err := echo(warm); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	c0 := cpuTime()
	b.ResetTimer()
	for range b.N {
		c := dialPath(b, tp.outbound)
		if err := echo(c); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime()-c0).Microseconds())/float64(b.N), "cpu-µs/op")
}

// BenchmarkPathIdle opens 2,000 connections through the mesh path, exchanges one byte on each, and
// reports the heap and goroutine stacks they hold while idle (after GC), per connection, for everything
// in the process (client and backend sockets included; the direct row of the same measurement shows
// what that costs without the mesh).
func BenchmarkPathIdle(b *testing.B) {
	const n = 2000 // four descriptors each through the mesh
	tp := startPath(b)
	measure := func(to netip.AddrPort, profile string) (heap, stack, gs float64) {
		before, g0 := memInUse(), runtime.NumGoroutine()
		conns := make([]net.Conn, 0, n)
		var mu sync.Mutex
		var wg sync.WaitGroup
		var failed error
		for range 16 {
			wg.Go(func() {
				for range n / 16 {
					c, err := net.Dial("tcp", to.String())
					if err == nil {
						err = echo(c)
					}
					mu.Lock()
					if err != nil {
						failed = errors.Join(failed, err)
					} else {
						conns = append(conns, c)
					}
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		if failed != nil {
			b.Fatal(failed)
		}
		time.Sleep(100 * time.Millisecond)
		after, g1 := memInUse(), runtime.NumGoroutine()
		if profile != "" {
			writeHeapProfile(b, profile)
		}
		for _, c := range conns {
			c.Close()
		}
		k := float64(len(conns))
		return float64(after.HeapInuse-before.HeapInuse) / k, float64(after.StackInuse-before.StackInuse) / k,
			float64(g1-g0) / k
	}
	var dh, ds, dg, mh, ms, mg float64
	for range b.N {
		dh, ds, dg = measure(tp.backend, "")
		time.Sleep(200 * time.Millisecond)
		mh, ms, mg = measure(tp.outbound, *idleHeapProfile)
		time.Sleep(200 * time.Millisecond)
	}
	b.ReportMetric(dh+ds, "direct-B/conn")
	b.ReportMetric(mh+ms, "mesh-B/conn")
	b.ReportMetric(mh+ms-dh-ds, "added-B/conn")
	b.ReportMetric(mh-dh, "added-heap-B/conn")
	b.ReportMetric(ms-ds, "added-stack-B/conn")
	b.ReportMetric(mg-dg, "added-goroutines/conn")
}

// idleHeapProfile names a file for a heap profile taken while BenchmarkPathIdle's mesh connections are
// open and idle (run with -test.memprofilerate=1 to see every allocation).
var idleHeapProfile = flag.String("idleheapprofile", "", "write a heap profile of the idle mesh connections of BenchmarkPathIdle to `file`")

func writeHeapProfile(tb testing.TB, name string) {
	tb.Helper()
	f, err := os.Create(name)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		tb.Fatal(err)
	}
}

// memInUse returns memory statistics after settling GC (stacks shrink at GC).
func memInUse() *runtime.MemStats {
	var ms runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	time.Sleep(50 * time.Millisecond)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return &ms
}
