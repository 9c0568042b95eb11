package hbone

// Benchmarks comparing HBONE with raw TCP, plain TLS 1.3 and an HBONE built on net/http's HTTP/2, all on
// loopback in one process with the same certificates and buffer sizes. hack/bench-hbone runs them in
// interleaved rounds and prints medians and ratios.
//
// Every variant serves the same tiny protocol on one stream: the client sends a mode byte, then
//   'u' upload:   the client writes, half-closes; the server counts to EOF and answers the count (8 bytes).
//   'd' download: the client sends a byte count; the server writes that many bytes and half-closes.
//   'p' ping:     the server echoes every byte at once, until EOF.
//   'r' repeated: the client sends requests of 9 bytes, 'U' or 'D' plus a little-endian length L: for 'U'
//                 it then sends L bytes and the server answers 1 byte after reading them; for 'D' the
//                 server sends L bytes. Used by BenchmarkInterleaved to reuse one stream.

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const benchBuf = 256 << 10

// benchConn is one established client stream of any variant.
type benchConn interface {
	io.ReadWriter
	CloseWrite() error
	Close() error
}

// serveBench runs the benchmark protocol on one server-side stream.
func serveBench(c benchConn, flush func()) error {
	var mode [1]byte
	if _, err := io.ReadFull(c, mode[:]); err != nil {
		return err
	}
	buf := make([]byte, benchBuf)
	switch mode[0] {
	case 'u':
		var n int64
		for {
			m, err := c.Read(buf)
			n += int64(m)
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
		}
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(n))
		if _, err := c.Write(b[:]); err != nil {
			return err
		}
		flush()
		return c.CloseWrite()
	case 'd':
		var b [8]byte
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return err
		}
		for n := int64(binary.LittleEndian.Uint64(b[:])); n > 0; {
			m := min(n, int64(len(buf)))
			if _, err := c.Write(buf[:m]); err != nil {
				return err
			}
			flush()
			n -= m
		}
		return c.CloseWrite()
	case 'r':
		var req [9]byte
		for {
			if _, err := io.ReadFull(c, req[:]); err != nil {
				if err == io.EOF {
					return c.CloseWrite()
				}
				return err
			}
			n := int64(binary.LittleEndian.Uint64(req[1:]))
			switch req[0] {
			case 'U':
				if err := readN(c, buf, n); err != nil {
					return err
				}
				if _, err := c.Write([]byte{1}); err != nil {
					return err
				}
			case 'D':
				for n > 0 {
					m := min(n, int64(len(buf)))
					if _, err := c.Write(buf[:m]); err != nil {
						return err
					}
					n -= m
				}
			default:
				return fmt.Errorf("bad request %q", req[0])
			}
			flush()
		}
	case 'p':
		for {
			m, err := c.Read(buf)
			if m > 0 {
				if _, err := c.Write(buf[:m]); err != nil {
					return err
				}
				flush()
			}
			if err == io.EOF {
				return c.CloseWrite()
			}
			if err != nil {
				return err
			}
		}
	}
	return fmt.Errorf("bad mode %q", mode[0])
}

// benchVariant starts a server and returns a dial func for client streams.
type benchVariant struct {
	name  string
	start func(tb testing.TB, pki *testPKI) func() (benchConn, error)
}

var benchVariants = []benchVariant{
	{"tcp", startTCPBench},
	{"tls", startTLSBench},
	{"hbone", startHBONEBench},
	{"h2default", startH2DefaultBench},
}

func listenLoopback(tb testing.TB) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	return ln
}

// acceptLoop serves every accepted connection with wrap+serveBench until ln closes.
func acceptLoop(tb testing.TB, ln net.Listener, wrap func(net.Conn) (benchConn, error)) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				c, err := wrap(nc)
				if err != nil {
					return
				}
				_ = serveBench(c, func() {})
			}()
		}
	}()
	tb.Cleanup(func() { _ = ln.Close(); wg.Wait() })
}

func startTCPBench(tb testing.TB, _ *testPKI) func() (benchConn, error) {
	ln := listenLoopback(tb)
	acceptLoop(tb, ln, func(nc net.Conn) (benchConn, error) { return nc.(*net.TCPConn), nil })
	return func() (benchConn, error) {
		nc, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			return nil, err
		}
		return nc.(*net.TCPConn), nil
	}
}

// plainTLSConfigs are TLS 1.3 configs with the same certificates HBONE uses, without ALPN.
func plainTLSConfigs(pki *testPKI) (srv, cli *tls.Config) {
	srv = &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pki.server.Certificate},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pki.server.Roots, SessionTicketsDisabled: true,
	}
	cli = &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{pki.client.Certificate},
		RootCAs: pki.client.Roots, InsecureSkipVerify: true,
	}
	return srv, cli
}

func startTLSBench(tb testing.TB, pki *testPKI) func() (benchConn, error) {
	ln := listenLoopback(tb)
	scfg, ccfg := plainTLSConfigs(pki)
	acceptLoop(tb, ln, func(nc net.Conn) (benchConn, error) {
		tc := tls.Server(nc, scfg)
		return tc, tc.Handshake()
	})
	return func() (benchConn, error) {
		return tls.Dial("tcp", ln.Addr().String(), ccfg)
	}
}

func startHBONEBench(tb testing.TB, pki *testPKI) func() (benchConn, error) {
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		c, err := r.Accept(nil)
		if err != nil {
			return err
		}
		return serveBench(c.(*Stream), func() {})
	})
	ts := startServer(tb, pki, h, nil)
	p := newTestPool(tb, pki, nil)
	t := ts.target(pki)
	return func() (benchConn, error) {
		c, err := p.Dial(context.Background(), t)
		if err != nil {
			return nil, err
		}
		return c.(*Stream), nil
	}
}

// h2Stream is a CONNECT stream over net/http's HTTP/2 client.
type h2Stream struct {
	pw   *io.PipeWriter
	body io.ReadCloser
}

func (s *h2Stream) Read(p []byte) (int, error)  { return s.body.Read(p) }
func (s *h2Stream) Write(p []byte) (int, error) { return s.pw.Write(p) }
func (s *h2Stream) CloseWrite() error           { return s.pw.Close() }
func (s *h2Stream) Close() error {
	_ = s.pw.Close()
	return s.body.Close()
}

// h2ServerStream is the server side of a CONNECT over net/http's HTTP/2 server.
type h2ServerStream struct {
	r  *http.Request
	w  http.ResponseWriter
	rc *http.ResponseController
}

func (s *h2ServerStream) Read(p []byte) (int, error) { return s.r.Body.Read(p) }
func (s *h2ServerStream) Write(p []byte) (int, error) {
	n, err := s.w.Write(p)
	if err == nil {
		err = s.rc.Flush()
	}
	return n, err
}
func (s *h2ServerStream) CloseWrite() error { return nil } // the handler returning ends the stream
func (s *h2ServerStream) Close() error      { return nil }

// startH2DefaultBench is HBONE built the obvious way: net/http's HTTP/2 server and client with default
// settings, CONNECT with a pipe as the request body.
func startH2DefaultBench(tb testing.TB, pki *testPKI) func() (benchConn, error) {
	ln := listenLoopback(tb)
	scfg, ccfg := plainTLSConfigs(pki)
	scfg.NextProtos = []string{"h2"}
	ccfg.NextProtos = []string{"h2"}
	var protos http.Protocols
	protos.SetHTTP2(true)
	srv := &http.Server{
		Protocols: &protos,
		TLSConfig: scfg,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method != http.MethodConnect {
				w.WriteHeader(http.StatusMethodNotAllowed)
				return
			}
			rc := http.NewResponseController(w)
			_ = rc.EnableFullDuplex()
			w.WriteHeader(http.StatusOK)
			_ = rc.Flush()
			_ = serveBench(&h2ServerStream{r: r, w: w, rc: rc}, func() {})
		}),
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.ServeTLS(ln, "", "") }()
	tb.Cleanup(func() { _ = srv.Close(); <-done })
	tr := &http.Transport{TLSClientConfig: ccfg, Protocols: &protos}
	tb.Cleanup(tr.CloseIdleConnections)
	url := "https://" + ln.Addr().String()
	return func() (benchConn, error) {
		pr, pw := io.Pipe()
		req, err := http.NewRequest(http.MethodConnect, url, pr)
		if err != nil {
			return nil, err
		}
		req.Host = "127.0.0.1:8080"
		resp, err := tr.RoundTrip(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, fmt.Errorf("status %d", resp.StatusCode)
		}
		return &h2Stream{pw: pw, body: resp.Body}, nil
	}
}

// BenchmarkBulk measures one-stream bulk throughput, upload and download, for every variant.
func BenchmarkBulk(b *testing.B) {
	pki := newPKI(b)
	for _, v := range benchVariants {
		b.Run(v.name, func(b *testing.B) {
			dial := v.start(b, pki)
			for _, dir := range []string{"up", "down"} {
				b.Run(dir, func(b *testing.B) {
					c, err := dial()
					if err != nil {
						b.Fatal(err)
					}
					defer c.Close()
					buf := make([]byte, benchBuf)
					b.SetBytes(benchBuf)
					cpu0 := cpuTime()
					b.ResetTimer()
					if dir == "up" {
						err = benchUpload(c, buf, b.N)
					} else {
						err = benchDownload(c, buf, b.N)
					}
					b.StopTimer()
					if err != nil {
						b.Fatal(err)
					}
					// CPU of both ends (this process) per MB moved: insensitive to other load on the machine.
					b.ReportMetric(float64(cpuTime()-cpu0)/(float64(b.N)*benchBuf/1e6), "cpu-ns/MB")
				})
			}
		})
	}
}

func benchUpload(c benchConn, buf []byte, n int) error {
	if _, err := c.Write([]byte{'u'}); err != nil {
		return err
	}
	for range n {
		if _, err := c.Write(buf); err != nil {
			return err
		}
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	var got [8]byte
	if _, err := io.ReadFull(c, got[:]); err != nil {
		return err
	}
	if want := uint64(n) * uint64(len(buf)); binary.LittleEndian.Uint64(got[:]) != want {
		return fmt.Errorf("server counted %d bytes, want %d", binary.LittleEndian.Uint64(got[:]), want)
	}
	return nil
}

func benchDownload(c benchConn, buf []byte, n int) error {
	var req [9]byte
	req[0] = 'd'
	want := int64(n) * int64(len(buf))
	binary.LittleEndian.PutUint64(req[1:], uint64(want))
	if _, err := c.Write(req[:]); err != nil {
		return err
	}
	var got int64
	for {
		m, err := c.Read(buf)
		got += int64(m)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if got != want {
		return fmt.Errorf("got %d bytes, want %d", got, want)
	}
	return nil
}

// BenchmarkRTT measures a 1-byte request/response round trip over an established stream.
func BenchmarkRTT(b *testing.B) {
	pki := newPKI(b)
	for _, v := range benchVariants {
		b.Run(v.name, func(b *testing.B) {
			dial := v.start(b, pki)
			c, err := dial()
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write([]byte{'p'}); err != nil {
				b.Fatal(err)
			}
			one := []byte{1}
			in := make([]byte, 1)
			for range 100 { // warm up
				if err := pingOnce(c, one, in); err != nil {
					b.Fatal(err)
				}
			}
			cpu0 := cpuTime()
			b.ResetTimer()
			for range b.N {
				if err := pingOnce(c, one, in); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

func pingOnce(c benchConn, out, in []byte) error {
	if _, err := c.Write(out); err != nil {
		return err
	}
	_, err := io.ReadFull(c, in)
	return err
}

// BenchmarkStreamSetup measures opening and closing one stream on a warm pool: Dial (CONNECT, server
// handler, 200) then Close. cpu-ns/op is the CPU of both ends (this process hosts both) per stream.
func BenchmarkStreamSetup(b *testing.B) {
	pki := newPKI(b)
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		c, err := r.Accept(nil)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, c)
		return err
	})
	ts := startServer(b, pki, h, nil)
	p := newTestPool(b, pki, nil)
	t := ts.target(pki)
	ctx := context.Background()
	warm, err := p.Dial(ctx, t)
	if err != nil {
		b.Fatal(err)
	}
	defer warm.Close()
	b.ReportAllocs()
	cpu0 := cpuTime()
	b.ResetTimer()
	for range b.N {
		c, err := p.Dial(ctx, t)
		if err != nil {
			b.Fatal(err)
		}
		_ = c.Close() // END_STREAM and RST_STREAM(CANCEL) in one write; the server's handler then ends
	}
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIdleStreams opens 10,000 streams on pooled connections (100 per connection), leaves them
// idle, and reports heap plus goroutine stacks per stream, both ends (this process hosts both).
func BenchmarkIdleStreams(b *testing.B) {
	const n = 10000
	pki := newPKI(b)
	// As the agents' streams: a response header (baggage), a byte each way, then idle.
	respHeader := http.Header{"Baggage": {"k8s.namespace.name=dst,k8s.deployment.name=server"}}
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		c, err := r.Accept(respHeader)
		if err != nil {
			return err
		}
		var one [1]byte
		if _, err := io.ReadFull(c, one[:]); err != nil {
			return err
		}
		if _, err := c.Write(one[:]); err != nil {
			return err
		}
		_, err = c.Read(one[:]) // an idle relay: blocked reading
		return err
	})
	var perStream float64
	for range b.N {
		ts := startServer(b, pki, h, nil)
		p := newTestPool(b, pki, nil)
		t := ts.target(pki)
		before := memInUse()
		streams := make([]net.Conn, 0, n)
		for range n {
			c, err := p.Dial(context.Background(), t)
			if err != nil {
				b.Fatal(err)
			}
			var one [1]byte
			if _, err := c.Write(one[:]); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, one[:]); err != nil {
				b.Fatal(err)
			}
			streams = append(streams, c)
		}
		after := memInUse()
		perStream = float64(after-before) / n
		if path := os.Getenv("HBONE_IDLE_HEAPPROFILE"); path != "" {
			if f, err := os.Create(path); err == nil {
				_ = pprof.WriteHeapProfile(f)
				_ = f.Close()
			}
		}
		if testing.Verbose() {
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			b.Logf("heap in use %d MB, stacks %d MB, goroutines %d", ms.HeapInuse>>20, ms.StackInuse>>20, runtime.NumGoroutine())
		}
		runtime.KeepAlive(streams)
		for _, c := range streams {
			_ = c.Close()
		}
		_ = p.Close()
		_ = ts.Close()
	}
	b.ReportMetric(perStream, "B/stream")
}

// memInUse returns heap in use plus goroutine stacks after settling GC (stacks shrink at GC).
func memInUse() uint64 {
	var ms runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	time.Sleep(50 * time.Millisecond)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}

var _ = errors.New
var _ = netip.AddrPort{}
var _ = spiffeid.ID{}

// readN reads and drops n bytes with reads of up to len(buf) (io.Discard's ReadFrom would use 8 KiB).
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

// BenchmarkInterleaved runs the variants in alternation inside each iteration, so that changes in other
// load on the machine hit all of them alike: each iteration moves 8 MiB up and 8 MiB down and does 200
// one-byte round trips on every variant's single established stream, rotating the order. It reports
// per variant MB/s up and down, round-trip µs and CPU per MB (both ends, this process). hack/bench-hbone
// takes medians over several runs of it.
func BenchmarkInterleaved(b *testing.B) {
	const (
		chunk = 8 << 20
		pings = 200
	)
	pki := newPKI(b)
	type variant struct {
		name        string
		bulk, ping  benchConn
		upNs, dnNs  time.Duration
		upCPU, dCPU time.Duration
		rttNs       time.Duration
	}
	var vs []*variant
	for _, bv := range benchVariants {
		dial := bv.start(b, pki)
		bulk, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		ping, err := dial()
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = bulk.Close(); _ = ping.Close() })
		if _, err := bulk.Write([]byte{'r'}); err != nil {
			b.Fatal(err)
		}
		if _, err := ping.Write([]byte{'p'}); err != nil {
			b.Fatal(err)
		}
		vs = append(vs, &variant{name: bv.name, bulk: bulk, ping: ping})
	}
	buf := make([]byte, benchBuf)
	one, in := []byte{1}, make([]byte, 1)
	up := func(v *variant) error {
		var req [9]byte
		req[0] = 'U'
		binary.LittleEndian.PutUint64(req[1:], chunk)
		if _, err := v.bulk.Write(req[:]); err != nil {
			return err
		}
		for n := 0; n < chunk; n += len(buf) {
			if _, err := v.bulk.Write(buf); err != nil {
				return err
			}
		}
		_, err := io.ReadFull(v.bulk, in)
		return err
	}
	down := func(v *variant) error {
		var req [9]byte
		req[0] = 'D'
		binary.LittleEndian.PutUint64(req[1:], chunk)
		if _, err := v.bulk.Write(req[:]); err != nil {
			return err
		}
		return readN(v.bulk, buf, chunk)
	}
	measure := func(f func() error) (time.Duration, time.Duration) {
		c0, t0 := cpuTime(), time.Now()
		if err := f(); err != nil {
			b.Fatal(err)
		}
		return time.Since(t0), cpuTime() - c0
	}
	for _, v := range vs { // warm up: TLS record sizing, windows, pools
		measure(func() error { return up(v) })
		measure(func() error { return down(v) })
	}
	b.ResetTimer()
	for i := range b.N {
		for j := range vs {
			v := vs[(i+j)%len(vs)]
			t, c := measure(func() error { return up(v) })
			v.upNs, v.upCPU = v.upNs+t, v.upCPU+c
			t, c = measure(func() error { return down(v) })
			v.dnNs, v.dCPU = v.dnNs+t, v.dCPU+c
			t, _ = measure(func() error {
				for range pings {
					if err := pingOnce(v.ping, one, in); err != nil {
						return err
					}
				}
				return nil
			})
			v.rttNs += t
		}
	}
	b.StopTimer()
	mb := float64(b.N) * chunk / 1e6
	for _, v := range vs {
		b.ReportMetric(mb/v.upNs.Seconds(), v.name+"-up-MB/s")
		b.ReportMetric(mb/v.dnNs.Seconds(), v.name+"-down-MB/s")
		b.ReportMetric(float64(v.upCPU.Nanoseconds())/mb, v.name+"-up-cpu-ns/MB")
		b.ReportMetric(float64(v.dCPU.Nanoseconds())/mb, v.name+"-down-cpu-ns/MB")
		b.ReportMetric(float64(v.rttNs.Nanoseconds())/float64(b.N*pings), v.name+"-rtt-ns")
	}
}
