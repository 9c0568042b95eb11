package engine

import (
	"io"
	"net/http"
	"testing"
)

// BenchmarkEngineHTTP1 measures one keep-alive HTTP/1.1 request through the engine to a loopback
// backend (no HBONE), 1 KB responses.
func BenchmarkEngineHTTP1(b *testing.B) {
	body := make([]byte, 1024)
	h := newHarness(b, 1, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(body) }))
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

// BenchmarkEngineH2C measures requests from one h2c client connection through the engine (HTTP/1.1
// upstream), 1 KB responses.
func BenchmarkEngineH2C(b *testing.B) {
	body := make([]byte, 1024)
	h := newHarness(b, 1, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(body) }))
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
}
