package engine

import (
	"bytes"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/mesh/state"
)

// BenchmarkEngineHTTP1 measures one keep-alive HTTP/1.1 request through the engine to a loopback
// backend (no HBONE), 1 KB responses, with the engine's own downstream server and net/http's side by side.
func BenchmarkEngineHTTP1(b *testing.B) {
	for _, srv := range h1Servers {
		b.Run(srv.name, func(b *testing.B) {
			body := make([]byte, 1024)
			h := newHarness(b, 1, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(body) }), srv.mutate)
			tr := &http.Transport{MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			url := "http://" + h.addr + "/"
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

// BenchmarkEngineHTTP1Close is BenchmarkEngineHTTP1 with a new connection per request.
func BenchmarkEngineHTTP1Close(b *testing.B) {
	for _, srv := range h1Servers {
		b.Run(srv.name, func(b *testing.B) {
			body := make([]byte, 1024)
			h := newHarness(b, 1, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(body) }), srv.mutate)
			tr := &http.Transport{DisableKeepAlives: true}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			url := "http://" + h.addr + "/"
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

func BenchmarkEngineDials(b *testing.B) {
	body := make([]byte, 1024)
	h := newHarness(b, 1, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(body) }))
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	url := "http://" + h.addr + "/"
	for b.Loop() {
		resp, err := c.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// h2Servers are the downstream HTTP/2 servers the h2c benchmarks compare side by side: the engine's
// own (h2server.go) and net/http's.
var h2Servers = []struct {
	name   string
	mutate func(*Options)
}{{"own", func(*Options) {}}, {"nethttp", func(o *Options) { o.netHTTP2 = true }}}

// BenchmarkEngineH2C measures requests from one h2c client connection through the engine (HTTP/1.1
// upstream), 1 KB responses.
func BenchmarkEngineH2C(b *testing.B) {
	for _, srv := range h2Servers {
		b.Run(srv.name, func(b *testing.B) {
			body := make([]byte, 1024)
			h := newHarness(b, 1, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(body) }), srv.mutate)
			var protos http.Protocols
			protos.SetUnencryptedHTTP2(true)
			tr := &http.Transport{Protocols: &protos}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			url := "http://" + h.addr + "/"
			b.ReportAllocs()
			b.SetParallelism(8)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

// BenchmarkEngineStreamIdle compares keep-alive HTTP/1.1 POSTs (4 KB bodies both ways) without and with
// Options.StreamIdleTimeout: the per-request idle watch (one timer, an atomic add per body read and
// response write) side by side with the engine without it.
func BenchmarkEngineStreamIdle(b *testing.B) {
	body := make([]byte, 4096)
	for _, bc := range []struct {
		name string
		idle time.Duration
	}{{"off", 0}, {"on", 5 * time.Minute}} {
		b.Run(bc.name, func(b *testing.B) {
			h := newHarness(b, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				w.Write(body)
			}), func(o *Options) { o.StreamIdleTimeout = bc.idle })
			tr := &http.Transport{MaxIdleConnsPerHost: 64}
			defer tr.CloseIdleConnections()
			c := &http.Client{Transport: tr}
			url := "http://" + h.addr + "/"
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Post(url, "application/octet-stream", bytes.NewReader(body))
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

// BenchmarkEngineGRPC measures gRPC-shaped requests (POST, application/grpc, te: trailers, a 5-byte
// message each way, grpc-status trailer) from one h2c client connection through the engine to an h2c
// upstream (the service port's appProtocol grpc): HTTP/2 on both sides.
func BenchmarkEngineGRPC(b *testing.B) {
	for _, srv := range h2Servers {
		b.Run(srv.name, func(b *testing.B) { benchGRPC(b, srv.mutate) })
	}
}

func benchGRPC(b *testing.B, mutate func(*Options)) {
	msg := []byte{0, 0, 0, 0, 0}
	h := newHarness(b, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Trailer", "Grpc-Status")
		w.Write(msg)
		w.Header().Set("Grpc-Status", "0")
	}), mutate)
	h.svc.Ports[0].AppProtocol = state.AppProtocolGRPC
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	url := "http://" + h.addr + "/grpc.Ping/Ping"
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(msg))
			req.Header.Set("Content-Type", "application/grpc")
			req.Header.Set("Te", "trailers")
			resp, err := c.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.Trailer.Get("Grpc-Status") != "0" {
				b.Errorf("grpc-status %q", resp.Trailer.Get("Grpc-Status"))
				return
			}
		}
	})
}
