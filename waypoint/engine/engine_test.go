package engine

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/mesh/state"
	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint/model"
)

// harness is an engine in front of loopback backends, without HBONE: the frontend accepts TCP and hands
// each connection to ServeConn as if it were an HBONE stream to web.app.svc.cluster.local:80.
type harness struct {
	eng  *Engine
	addr string
	svc  *state.Service
}

func newHarness(t testing.TB, backends int, handler http.Handler, mutate ...func(*Options)) *harness {
	t.Helper()
	var port uint16
	var srvs []*http.Server
	var eps []*state.Workload
	svc := &state.Service{Name: "web", Namespace: "app", Hostname: "web.app.svc.cluster.local",
		Addresses: []state.NetworkAddress{{Addr: netip.MustParseAddr("10.96.0.10")}}}
	for i := range backends {
		ip := netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + i)})
		ln, err := net.Listen("tcp", netip.AddrPortFrom(ip, port).String())
		if err != nil {
			t.Fatal(err)
		}
		port = uint16(ln.Addr().(*net.TCPAddr).Port)
		var protos http.Protocols
		protos.SetHTTP1(true)
		protos.SetUnencryptedHTTP2(true)
		s := &http.Server{Handler: handler, Protocols: &protos, ReadHeaderTimeout: 5 * time.Second}
		go s.Serve(ln)
		srvs = append(srvs, s)
		w := &state.Workload{UID: fmt.Sprintf("Kubernetes//Pod/app/web-%d", i), Name: fmt.Sprintf("web-%d", i), Namespace: "app",
			Addresses: []netip.Addr{ip}, Services: []state.ServiceRef{{Service: svc.Key()}}, Status: state.Healthy}
		if err := w.Validate(); err != nil {
			t.Fatal(err)
		}
		eps = append(eps, w)
	}
	svc.Ports = []state.Port{{ServicePort: 80, TargetPort: port, AppProtocol: state.AppProtocolHTTP11, Name: "http"}}
	store := state.NewStore()
	store.Replace(&state.Snapshot{Workloads: eps, Services: []*state.Service{svc}})
	var d net.Dialer
	opts := Options{Registerer: prometheus.NewRegistry(), State: store, Namespace: "app", Name: "wp",
		Dial: func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", a.String())
		}}
	for _, m := range mutate {
		m(&opts)
	}
	eng, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				eng.ServeConn(ctx, c, &ConnInfo{PeerID: "spiffe://cluster.local/ns/app/sa/client", Remote: netip.MustParseAddrPort(c.RemoteAddr().String()),
					Target: netip.MustParseAddrPort("10.96.0.10:80"), Service: svc, Protocol: state.AppProtocolHTTP11})
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		cancel()
		wg.Wait()
		eng.Close()
		for _, s := range srvs {
			s.Close()
		}
	})
	return &harness{eng: eng, addr: ln.Addr().String(), svc: svc}
}

func TestEngine(t *testing.T) {
	tu.CheckGoroutines(t)
	var mu sync.Mutex
	seen := map[string]http.Header{}
	h := newHarness(t, 2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen[r.URL.Path] = r.Header.Clone()
		mu.Unlock()
		w.Header().Set("Grpc-Status", "")
		fmt.Fprintf(w, "%s %s", r.Proto, r.URL.Path)
	}))
	h.eng.Update(&model.Config{Routes: []*model.Route{{Kind: model.KindHTTPRoute, Namespace: "app", Name: "r",
		Parents: []model.Parent{{Kind: model.KindService, Hostname: h.svc.Hostname}},
		Rules: []*model.Rule{
			{Name: "abort", Matches: []model.Match{{PathKind: model.PathExact, Path: "/abort"}}, Fault: &model.Fault{AbortPercent: 100, AbortStatus: 418},
				Backends: []model.Backend{{Host: h.svc.Hostname, Port: 80, Weight: 1}}},
			{Name: "mod", Matches: []model.Match{{PathKind: model.PathPrefix, Path: "/"}},
				Filters:  model.Filters{Request: model.HeaderMod{Set: []model.Header{{Name: "X-Set", Value: "1"}}}, Response: model.HeaderMod{Add: []model.Header{{Name: "X-Resp", Value: "r"}}}},
				Backends: []model.Backend{{Host: h.svc.Hostname, Port: 80, Weight: 1}}},
		}}}})
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr2 := &http.Transport{Protocols: &protos}
	defer tr2.CloseIdleConnections()
	tests := []struct {
		name   string
		tr     *http.Transport
		path   string
		status int
		body   string
	}{
		{"HTTP/1.1 with header modifiers", tr, "/a", 200, "HTTP/1.1 /a"},
		{"h2c downstream, HTTP/1.1 upstream", tr2, "/b", 200, "HTTP/1.1 /b"},
		{"fault abort", tr, "/abort", 418, "fault filter abort"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := (&http.Client{Transport: tc.tr, Timeout: 5 * time.Second}).Get("http://" + h.addr + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || string(b) != tc.body {
				t.Fatalf("%d %q, want %d %q", resp.StatusCode, b, tc.status, tc.body)
			}
			if tc.status == 200 && resp.Header.Get("X-Resp") != "r" {
				t.Error("response header modifier not applied")
			}
		})
	}
	mu.Lock()
	defer mu.Unlock()
	if seen["/a"].Get("X-Set") != "1" || seen["/a"].Get("X-Forwarded-For") != "127.0.0.1" || seen["/a"].Get("Traceparent") == "" {
		t.Errorf("upstream request headers %v", seen["/a"])
	}
}

// FuzzServeConn feeds raw client bytes (request lines, headers, bodies, h2 frames) to the engine's
// HTTP server: it must never panic, and whatever it answers must parse as an HTTP/1.1 response or
// be nothing (a closed connection).
func FuzzServeConn(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: web\r\n\r\n"))
	f.Add([]byte("POST /x HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabc"))
	f.Add([]byte("GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: web\r\nTraceparent: 00-zz-zz-01\r\nX-B3-TraceId: 1\r\n\r\n"))
	h := newHarness(f, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Write([]byte("ok"))
	}))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write(in)
		c.(*net.TCPConn).CloseWrite()
		out, _ := io.ReadAll(c)
		if len(out) == 0 || strings.HasPrefix(string(in), "PRI") || out[0] == 0 {
			return
		}
		if _, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(out))), nil); err != nil {
			t.Errorf("answer to %q does not parse: %v (%q)", in, err, out)
		}
	})
}

func TestEngineMaxRequestsPerConnection(t *testing.T) {
	tests := []struct {
		name     string
		limit    int
		requests int
		conns    int
	}{
		{"unlimited reuses one connection", 0, 6, 1},
		{"one request per connection", 1, 4, 4},
		{"two requests per connection", 2, 6, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			remotes := map[string]bool{}
			h := newHarness(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				remotes[r.RemoteAddr] = true
				mu.Unlock()
			}))
			h.eng.Update(&model.Config{Destinations: map[string]*model.Destination{h.svc.Hostname: {
				Host: h.svc.Hostname, Policy: model.TrafficPolicy{Pool: model.ConnPool{MaxRequestsPerConn: tc.limit}}}}})
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			for range tc.requests {
				resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Get("http://" + h.addr + "/")
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				time.Sleep(5 * time.Millisecond) // let a retired connection close before the next request
			}
			mu.Lock()
			defer mu.Unlock()
			if len(remotes) != tc.conns {
				t.Errorf("%d upstream connections, want %d", len(remotes), tc.conns)
			}
		})
	}
}

// TestEngineConnectTimeout checks that the DestinationRule connect timeout bounds establishing an
// upstream connection (503 UF), using a dialer that never connects.
func TestEngineConnectTimeout(t *testing.T) {
	h := newHarness(t, 1, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	svc := h.svc
	store := state.NewStore()
	w := &state.Workload{UID: "Kubernetes//Pod/app/stuck", Name: "stuck", Namespace: "app", Addresses: []netip.Addr{netip.MustParseAddr("127.0.0.9")},
		Services: []state.ServiceRef{{Service: svc.Key()}}, Status: state.Healthy}
	w.Validate()
	store.Replace(&state.Snapshot{Workloads: []*state.Workload{w}, Services: []*state.Service{svc}})
	eng, err := New(Options{Registerer: prometheus.NewRegistry(), State: store, Namespace: "app", Name: "wp",
		Dial: func(ctx context.Context, _ netip.AddrPort) (net.Conn, error) { <-ctx.Done(); return nil, ctx.Err() }})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	eng.Update(&model.Config{Destinations: map[string]*model.Destination{svc.Hostname: {Host: svc.Hostname,
		Policy: model.TrafficPolicy{Pool: model.ConnPool{ConnectTimeout: 100 * time.Millisecond}}}}})
	client, server := net.Pipe()
	defer client.Close()
	go eng.ServeConn(context.Background(), server, &ConnInfo{Remote: netip.MustParseAddrPort("127.0.0.1:1"),
		Target: netip.MustParseAddrPort("10.96.0.10:80"), Service: svc, Protocol: state.AppProtocolHTTP11})
	start := time.Now()
	client.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(client, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(client), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// Three tries (the default retry policy retries connect failures twice), each bounded by 100 ms.
	if resp.StatusCode != http.StatusServiceUnavailable || time.Since(start) > 3*time.Second {
		t.Errorf("status %d after %v, want 503 within the connect timeouts", resp.StatusCode, time.Since(start))
	}
}
