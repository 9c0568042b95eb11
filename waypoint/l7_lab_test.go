package waypoint_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	dynfake "k8s.io/client-go/dynamic/fake"
	"sigs.k8s.io/yaml"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/test/lab"
	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint"
	"github.com/ambit-mesh/ambit/waypoint/kube"
)

// l7Backend is an HTTP (HTTP/1.1 and h2c) and gRPC server in a lab pod. Every answer names the pod;
// the test reads what each pod received.
type l7Backend struct {
	pod      *lab.Pod
	requests atomic.Int64
	mu       sync.Mutex
	last     map[string]http.Header // guarded by mu; by path: headers of the last request
	hosts    map[string]string      // guarded by mu; by path: Host of the last request
}

// shared state of the backends, so a retry that lands on another pod still sees "the first try failed"
var (
	failOnce sync.Map // key -> *atomic.Int64
)

func (b *l7Backend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.requests.Add(1)
	b.mu.Lock()
	b.last[r.URL.Path] = r.Header.Clone()
	b.hosts[r.URL.Path] = r.Host
	b.mu.Unlock()
	w.Header().Set("X-Pod", b.name())
	switch {
	case strings.HasPrefix(r.URL.Path, "/status/"):
		code, _ := strconv.Atoi(strings.TrimPrefix(r.URL.Path, "/status/"))
		w.WriteHeader(code)
	case strings.HasPrefix(r.URL.Path, "/fail-once/"):
		v, _ := failOnce.LoadOrStore(r.URL.Path, new(atomic.Int64))
		if v.(*atomic.Int64).Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
	case r.URL.Path == "/delay":
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-r.Context().Done():
			return
		}
	case r.URL.Path == "/fail-on-b":
		if b.name() == "server-b" {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
	case r.URL.Path == "/ws":
		if r.Header.Get("Upgrade") != "websocket" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		c, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		brw.Flush()
		io.Copy(c, brw)
		return
	}
	fmt.Fprintf(w, "%s %s %s\n", b.name(), r.Proto, r.URL.Path)
}

func (b *l7Backend) name() string { return l7Names[b.pod] }

var l7Names = map[*lab.Pod]string{}

func (b *l7Backend) lastHeader(path string) (http.Header, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last[path], b.hosts[path]
}

func startL7Backend(t *testing.T, p *lab.Pod, name string, grpcHealth healthpb.HealthCheckResponse_ServingStatus) *l7Backend {
	t.Helper()
	l7Names[p] = name
	b := &l7Backend{pod: p, last: map[string]http.Header{}, hosts: map[string]string{}}
	ln, err := p.NS.Listen(context.Background(), "tcp", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: b, Protocols: &protos, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	gln, err := p.NS.Listen(context.Background(), "tcp", ":9090")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("who", grpcHealth)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(gln)
	t.Cleanup(func() {
		srv.Close()
		gs.Stop()
	})
	return b
}

// otlpReceiver is an in-process OTLP/HTTP trace receiver.
type otlpReceiver struct {
	mu     sync.Mutex
	traces map[string]int // guarded by mu; trace id (hex) -> spans
	srv    *http.Server
	addr   string
}

func startOTLP(t *testing.T) *otlpReceiver {
	t.Helper()
	o := &otlpReceiver{traces: map[string]int{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o.addr = ln.Addr().String()
	o.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req coltrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		o.mu.Lock()
		for _, rs := range req.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				for _, sp := range ss.Spans {
					o.traces[fmt.Sprintf("%x", sp.TraceId)]++
				}
			}
		}
		o.mu.Unlock()
		out, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.Write(out)
	})}
	go o.srv.Serve(ln)
	t.Cleanup(func() { o.srv.Close() })
	return o
}

func (o *otlpReceiver) spans(traceID string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.traces[traceID]
}

// startL7Waypoint runs `ambit waypoint` in pod p with tracing to the OTLP receiver.
func startL7Waypoint(t *testing.T, c *cluster, p *lab.Pod, ns, name, otlp string, mutate ...func(*waypoint.Config)) (*waypoint.Waypoint, *syncBuffer) {
	t.Helper()
	buf := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(io.MultiWriter(buf, testWriter{T: t, Node: 100 + p.Index}), &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := waypoint.Config{
		Name: name, Namespace: ns, PodIP: p.IP, ConfigFiles: []string{c.Config}, ConfigPoll: 100 * time.Millisecond,
		CADir: filepath.Join(filepath.Dir(c.Config), "ca"), NetNS: p.NS.Path(), OTLPEndpoint: otlp,
	}
	for _, m := range mutate {
		m(&cfg)
	}
	w, err := waypoint.New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := w.Run(ctx); err != nil {
			t.Errorf("waypoint %s: %v", name, err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
	})
	tu.WaitFor(t, 10*time.Second, "waypoint ready", func() bool { ok, _ := w.Ready(); return ok })
	return w, buf
}

const l7BaseYAML = `apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: app, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-a, namespace: app}
spec: {clusterIP: 10.96.0.11, selector: {app: web, version: a}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-b, namespace: app}
spec: {clusterIP: 10.96.0.12, selector: {app: web, version: b}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: app, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.20, selector: {app: web}, ports: [{name: grpc, port: 9000, targetPort: 9090, appProtocol: grpc}]}
---
apiVersion: v1
kind: Service
metadata: {name: raw, namespace: app, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.30, selector: {app: web}, ports: [{name: tcp, port: 7000, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-b, namespace: app}
spec: {clusterIP: 10.96.0.21, selector: {app: web, version: b}, ports: [{name: grpc, port: 9000, targetPort: 9090}]}
`

// TestL7Waypoint drives every L7 feature through the real path: client pod -> client agent (HBONE) ->
// waypoint pod (L7 engine) -> HBONE -> server agent -> server pods.
func TestL7Waypoint(t *testing.T) {
	failOnce.Clear() // fresh backends for every run (-count)
	var wpPod *lab.Pod
	yamlWith := func(extra string) func(*lab.Lab) string {
		return func(l *lab.Lab) string {
			n0, n1 := l.Nodes[0].Pods, l.Nodes[1].Pods
			wpPod = n0[2]
			return l7BaseYAML + pod("client", "app", "client", "", n0[0]) + pod("server-a", "app", "web", ", version: a", n0[1]) +
				pod("server-b", "app", "web", ", version: b", n1[0]) + waypointYAML("app", "wp", "service", "", "10.96.1.1", wpPod) + extra
		}
	}
	c := startCluster(t, 2, 3, agent.CaptureEBPF, yamlWith(""))
	n0, n1 := c.Lab.Nodes[0].Pods, c.Lab.Nodes[1].Pods
	client := n0[0]
	srvA := startL7Backend(t, n0[1], "server-a", healthpb.HealthCheckResponse_SERVING)
	srvB := startL7Backend(t, n1[0], "server-b", healthpb.HealthCheckResponse_NOT_SERVING)
	otlp := startOTLP(t)
	wp, wpLog := startL7Waypoint(t, c, wpPod, "app", "wp", otlp.addr)

	apply := func(t *testing.T, extra string) {
		t.Helper()
		yaml := yamlWith(extra)(c.Lab)
		if cur, err := os.ReadFile(c.Config); err == nil && string(cur) == yaml {
			return // already in place (a subtest run on its own)
		}
		before := strings.Count(wpLog.String(), "L7 configuration applied")
		c.Rewrite(t, yaml)
		tu.WaitFor(t, 10*time.Second, "L7 configuration applied", func() bool {
			return strings.Count(wpLog.String(), "L7 configuration applied") > before
		})
	}
	dial := func(ctx context.Context, _, addr string) (net.Conn, error) { return client.NS.Dial(ctx, "tcp", addr) }
	h1 := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}}
	h1ka := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DialContext: dial, MaxIdleConnsPerHost: 4}}
	defer h1ka.CloseIdleConnections()
	type answer struct {
		code int
		pod  string
		body string
		h    http.Header
	}
	do := func(t *testing.T, cl *http.Client, method, url string, hdr map[string]string) answer {
		t.Helper()
		req, err := http.NewRequest(method, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := cl.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return answer{code: resp.StatusCode, pod: resp.Header.Get("X-Pod"), body: string(b), h: resp.Header}
	}
	get := func(t *testing.T, path string) answer {
		return do(t, h1, http.MethodGet, "http://10.96.0.10"+path, nil)
	}

	t.Run("HTTP/1.1 through the waypoint with keep-alive, access log and metrics", func(t *testing.T) {
		seen := map[string]bool{}
		for range 20 {
			a := do(t, h1ka, http.MethodGet, "http://10.96.0.10/hello", nil)
			if a.code != 200 {
				t.Fatalf("status %d body %q", a.code, a.body)
			}
			seen[a.pod] = true
		}
		if !seen["server-a"] || !seen["server-b"] {
			t.Errorf("endpoints reached: %v", seen)
		}
		h, _ := srvA.lastHeader("/hello")
		if h == nil {
			h, _ = srvB.lastHeader("/hello")
		}
		if got := h.Get("X-Forwarded-For"); got != client.IP.String() {
			t.Errorf("X-Forwarded-For %q, want the client %s", got, client.IP)
		}
		tu.WaitFor(t, 5*time.Second, "access log line", func() bool {
			return strings.Contains(wpLog.String(), `msg="request complete"`) && strings.Contains(wpLog.String(), "path=/hello") &&
				strings.Contains(wpLog.String(), "status=200")
		})
		// The metrics are recorded when the handler returns, just after the client has its answer.
		tu.WaitFor(t, 5*time.Second, "istio_requests_total >= 20", func() bool {
			return l7Metric(wp, "istio_requests_total", map[string]string{"reporter": "waypoint", "response_code": "200",
				"destination_service": "web.app.svc.cluster.local", "source_principal": "cluster.local/ns/app/sa/client"}) >= 20
		})
		for _, m := range []string{"istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"} {
			if n := l7Metric(wp, m, map[string]string{"reporter": "waypoint"}); n < 20 {
				t.Errorf("%s count = %v, want >= 20", m, n)
			}
		}
	})

	t.Run("h2c prior knowledge", func(t *testing.T) {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		tr := &http.Transport{DialContext: dial, Protocols: &protos}
		defer tr.CloseIdleConnections()
		h2c := &http.Client{Timeout: 10 * time.Second, Transport: tr}
		for range 3 {
			resp, err := h2c.Get("http://10.96.0.10/h2")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || resp.ProtoMajor != 2 {
				t.Fatalf("status %d proto %s", resp.StatusCode, resp.Proto)
			}
		}
	})

	t.Run("gRPC unary, server streaming and trailers", func(t *testing.T) {
		conn, err := grpc.NewClient("10.96.0.20:9000", grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) { return client.NS.Dial(ctx, "tcp", a) }))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		hc := healthpb.NewHealthClient(conn)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Check: %v %v", r, err)
		}
		// A non-OK status travels in the trailers.
		if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "missing"}); status.Code(err) != codes.NotFound {
			t.Fatalf("Check(missing): %v, want NotFound", err)
		}
		st, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if r, err := st.Recv(); err != nil || r.Status != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("Watch: %v %v", r, err)
		}
		// GRPCRoute: the Health service goes to echo-b (server-b, which reports "who" NOT_SERVING).
		apply(t, `---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: health-to-b, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 9000}]
  rules:
  - matches: [{method: {service: grpc.health.v1.Health, method: Check}}]
    backendRefs: [{name: echo-b, port: 9000}]
`)
		for range 5 {
			r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "who"})
			if err != nil || r.Status != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Fatalf("Check(who) via GRPCRoute: %v %v, want server-b's NOT_SERVING", r, err)
			}
		}
		tu.WaitFor(t, 5*time.Second, "gRPC request with grpc_response_status 5 counted", func() bool {
			return l7Metric(wp, "istio_requests_total", map[string]string{"request_protocol": "grpc", "grpc_response_status": "5"}) >= 1
		})
	})

	t.Run("WebSocket upgrade passes through", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := client.NS.Dial(ctx, "tcp", "10.96.0.10:80")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		io.WriteString(conn, "ping over the upgraded stream\n")
		line, err := br.ReadString('\n')
		if err != nil || line != "ping over the upgraded stream\n" {
			t.Fatalf("echo %q %v", line, err)
		}
	})

	t.Run("HTTPRoute weighted split within statistical bounds", func(t *testing.T) {
		apply(t, `---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - backendRefs: [{name: web-a, port: 80, weight: 80}, {name: web-b, port: 80, weight: 20}]
`)
		const n = 200
		a := 0
		for range n {
			r := do(t, h1ka, http.MethodGet, "http://10.96.0.10/split", nil)
			if r.code != 200 {
				t.Fatalf("status %d", r.code)
			}
			if r.pod == "server-a" {
				a++
			}
		}
		// Binomial(200, 0.8): mean 160, sd 5.7; 4 sd either side.
		if a < 137 || a > 183 {
			t.Errorf("server-a got %d of %d, want about 80%%", a, n)
		}
	})

	t.Run("matches, header modifiers, rewrite, redirect and mirror", func(t *testing.T) {
		apply(t, `---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rich, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: web-b, port: 80}]
  - matches: [{path: {type: Exact, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}}]
  - matches: [{path: {type: PathPrefix, value: /api}, method: GET, queryParams: [{name: v, value: "2"}]}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-added, value: by-route}], remove: [x-secret]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: x-resp, value: added}]}}
    backendRefs: [{name: web-a, port: 80}]
  - matches: [{path: {type: RegularExpression, value: "/mirror/[0-9]+"}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: web-b, port: 80}}}]
    backendRefs: [{name: web-a, port: 80}]
  - backendRefs: [{name: web-a, port: 80}]
`)
		for range 5 {
			if r := do(t, h1, http.MethodGet, "http://10.96.0.10/x", map[string]string{"X-Canary": "yes"}); r.pod != "server-b" {
				t.Fatalf("header match went to %q: %d %q", r.pod, r.code, r.body)
			}
		}
		if r := get(t, "/x"); r.pod != "server-a" {
			t.Fatalf("default rule went to %q", r.pod)
		}
		noRedirect := &http.Client{Timeout: 10 * time.Second, Transport: h1.Transport,
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		if r := do(t, noRedirect, http.MethodGet, "http://10.96.0.10/old?q=1", nil); r.code != 301 || r.h.Get("Location") != "http://10.96.0.10/new?q=1" {
			t.Fatalf("redirect: %d %q", r.code, r.h.Get("Location"))
		}
		r := do(t, h1, http.MethodGet, "http://10.96.0.10/api/items?v=2", map[string]string{"X-Secret": "s"})
		if r.code != 200 || !strings.Contains(r.body, " /v2/items") || r.h.Get("X-Resp") != "added" {
			t.Fatalf("rewrite: %d %q x-resp=%q", r.code, r.body, r.h.Get("X-Resp"))
		}
		h, _ := srvA.lastHeader("/v2/items")
		if h.Get("X-Added") != "by-route" || h.Get("X-Secret") != "" {
			t.Errorf("request headers at the backend: x-added=%q x-secret=%q", h.Get("X-Added"), h.Get("X-Secret"))
		}
		if r := get(t, "/mirror/7"); r.pod != "server-a" {
			t.Fatalf("mirror rule answered by %q", r.pod)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, host := srvB.lastHeader("/mirror/7")
			if host == "10.96.0.10-shadow" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no mirrored copy at server-b: last host %q", host)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("HTTPRoute retry seen by the backend, and request timeout", func(t *testing.T) {
		apply(t, `---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: resilience, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /fail-once}}]
    retry: {codes: [503], attempts: 2, backoff: 10ms}
    backendRefs: [{name: web, port: 80}]
  - matches: [{path: {type: Exact, value: /delay}}]
    timeouts: {request: 300ms}
    backendRefs: [{name: web, port: 80}]
`)
		before := srvA.requests.Load() + srvB.requests.Load()
		if r := get(t, "/fail-once/route"); r.code != 200 {
			t.Fatalf("retried request: %d", r.code)
		}
		if got := srvA.requests.Load() + srvB.requests.Load() - before; got != 2 {
			t.Errorf("backends saw %d requests, want 2 (one retry)", got)
		}
		start := time.Now()
		r := get(t, "/delay?ms=2000")
		took := time.Since(start)
		if r.code != http.StatusGatewayTimeout || took > 1500*time.Millisecond {
			t.Fatalf("timeout: %d after %v", r.code, took)
		}
		tu.WaitFor(t, 5*time.Second, "UT in the access log", func() bool { return strings.Contains(wpLog.String(), "response_flags=UT") })
	})

	t.Run("VirtualService fault delay and abort, retries", func(t *testing.T) {
		apply(t, `---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: app}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /fault-delay}}]
    fault: {delay: {percentage: {value: 100}, fixedDelay: 400ms}}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /fault-abort}}]
    fault: {abort: {percentage: {value: 50}, httpStatus: 418}}
    route: [{destination: {host: web}}]
  - match: [{uri: {prefix: /fail-once}}]
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: web-a}}]
  - route: [{destination: {host: web}}]
`)
		start := time.Now()
		if r := get(t, "/fault-delay"); r.code != 200 {
			t.Fatalf("delayed request: %d", r.code)
		}
		if took := time.Since(start); took < 400*time.Millisecond {
			t.Errorf("delay fault took %v, want >= 400ms", took)
		}
		aborted := 0
		for range 100 {
			r := do(t, h1ka, http.MethodGet, "http://10.96.0.10/fault-abort", nil)
			switch r.code {
			case 418:
				aborted++
			case 200:
			default:
				t.Fatalf("status %d", r.code)
			}
		}
		if aborted < 30 || aborted > 70 {
			t.Errorf("aborted %d of 100 at 50%%", aborted)
		}
		before := srvA.requests.Load()
		if r := get(t, "/fail-once/vs"); r.code != 200 {
			t.Fatalf("VS retry: %d", r.code)
		}
		if got := srvA.requests.Load() - before; got != 2 {
			t.Errorf("server-a saw %d requests, want 2", got)
		}
		for _, f := range []string{"response_flags=DI", "response_flags=FI"} {
			if !strings.Contains(wpLog.String(), f) {
				t.Errorf("access log has no %s", f)
			}
		}
	})

	t.Run("local rate limit answers 429 with headers", func(t *testing.T) {
		apply(t, `---
apiVersion: policy.ambit.dev/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: web-limit, namespace: app}
spec:
  targetRefs: [{group: "", kind: Service, name: web}]
  tokenBucket: {maxTokens: 5, tokensPerFill: 5, fillInterval: 30s}
`)
		ok, limited := 0, 0
		var last answer
		for range 12 {
			r := get(t, "/limited")
			switch r.code {
			case 200:
				ok++
			case 429:
				limited++
				last = r
			default:
				t.Fatalf("status %d", r.code)
			}
		}
		if ok != 5 || limited != 7 {
			t.Errorf("%d allowed and %d limited, want 5 and 7", ok, limited)
		}
		if last.h.Get("X-Ratelimit-Limit") != "5" || last.h.Get("X-Ratelimit-Remaining") != "0" || last.h.Get("Retry-After") == "" {
			t.Errorf("429 headers: %v", last.h)
		}
	})

	// JWT keys: one trusted (served as a JWKS file), one not.
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	badKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	jwksFile := filepath.Join(c.Dir, "jwks.json")
	os.WriteFile(jwksFile, jwks, 0o600)
	token := func(k *rsa.PrivateKey, group string, exp time.Time) string {
		sig, _ := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: k}, (&jose.SignerOptions{}).WithHeader("kid", "k1"))
		s, _ := josejwt.Signed(sig).Claims(josejwt.Claims{Issuer: "https://issuer.test", Subject: "alice", Audience: josejwt.Audience{"web"},
			Expiry: josejwt.NewNumericDate(exp)}).Claims(map[string]any{"group": group}).Serialize()
		return s
	}

	t.Run("AuthorizationPolicy DENY and ALLOW with path templates, RequestAuthentication JWT", func(t *testing.T) {
		apply(t, fmt.Sprintf(`---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE]}}]
  - to: [{operation: {paths: ["/admin/{**}"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: ALLOW
  rules:
  - to: [{operation: {paths: ["/items/{*}", "/public*"]}}]
  - from: [{source: {requestPrincipals: ["https://issuer.test/alice"]}}]
    to: [{operation: {paths: ["/secure"]}}]
    when: [{key: "request.auth.claims[group]", values: [admins]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  jwtRules: [{issuer: "https://issuer.test", audiences: [web], jwksUri: "file://%s"}]
`, jwksFile))
		check := func(method, path string, hdr map[string]string, want int, wantBody string) {
			t.Helper()
			r := do(t, h1, method, "http://10.96.0.10"+path, hdr)
			if r.code != want || wantBody != "" && r.body != wantBody {
				t.Errorf("%s %s: %d %q, want %d %q", method, path, r.code, r.body, want, wantBody)
			}
		}
		check(http.MethodGet, "/items/1", nil, 200, "")
		check(http.MethodGet, "/public/x", nil, 200, "")
		check(http.MethodGet, "/items/1/2", nil, 403, "RBAC: access denied")
		check(http.MethodDelete, "/items/1", nil, 403, "RBAC: access denied")
		check(http.MethodGet, "/admin/a/b", nil, 403, "RBAC: access denied")
		good := map[string]string{"Authorization": "Bearer " + token(key, "admins", time.Now().Add(time.Hour))}
		check(http.MethodGet, "/secure", good, 200, "")
		check(http.MethodGet, "/secure", nil, 403, "RBAC: access denied")
		check(http.MethodGet, "/secure", map[string]string{"Authorization": "Bearer " + token(key, "users", time.Now().Add(time.Hour))}, 403, "")
		check(http.MethodGet, "/secure", map[string]string{"Authorization": "Bearer " + token(badKey, "admins", time.Now().Add(time.Hour))}, 401, "Jwt verification fails")
		check(http.MethodGet, "/secure", map[string]string{"Authorization": "Bearer " + token(key, "admins", time.Now().Add(-time.Hour))}, 401, "Jwt is expired")
		if h, _ := srvA.lastHeader("/secure"); h != nil && h.Get("Authorization") != "" {
			t.Error("the verified token was forwarded to the backend")
		}
		if h, _ := srvB.lastHeader("/secure"); h != nil && h.Get("Authorization") != "" {
			t.Error("the verified token was forwarded to the backend")
		}
	})

	t.Run("connection pool limits answer 503 UO under load", func(t *testing.T) {
		apply(t, `---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: app}
spec:
  host: web
  trafficPolicy:
    connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1}}
`)
		var wg sync.WaitGroup
		var ok, overflow atomic.Int64
		for range 8 {
			wg.Go(func() {
				req, _ := http.NewRequest(http.MethodGet, "http://10.96.0.10/delay?ms=500", nil)
				resp, err := h1.Do(req)
				if err != nil {
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case 200:
					ok.Add(1)
				case 503:
					overflow.Add(1)
				}
			})
		}
		wg.Wait()
		if ok.Load() < 1 || overflow.Load() < 4 || ok.Load()+overflow.Load() != 8 {
			t.Errorf("%d ok and %d overflowed of 8 concurrent requests with 1 connection and 1 pending", ok.Load(), overflow.Load())
		}
		if !strings.Contains(wpLog.String(), "response_flags=UO") {
			t.Error("no UO in the access log")
		}
	})

	t.Run("outlier detection ejects the failing endpoint", func(t *testing.T) {
		apply(t, `---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: app}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 50}
`)
		for range 10 {
			get(t, "/fail-on-b")
		}
		for i := range 10 {
			if r := get(t, "/fail-on-b"); r.code != 200 || r.pod != "server-a" {
				t.Fatalf("request %d after ejection: %d from %q", i, r.code, r.pod)
			}
		}
	})

	t.Run("TCP port: L4 forwarding with L4 authorization semantics", func(t *testing.T) {
		apply(t, "")
		if r := do(t, h1, http.MethodGet, "http://10.96.0.30:7000/tcp", nil); r.code != 200 {
			t.Fatalf("TCP port: %d", r.code)
		}
		tu.WaitFor(t, 5*time.Second, "L4 connection log", func() bool {
			return strings.Contains(wpLog.String(), "dst.addr=10.96.0.30:7000")
		})
		// An ALLOW rule with HTTP fields never matches TCP, so nothing is allowed.
		apply(t, `---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: raw-get-only, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: raw}]
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET]}}]}]
`)
		req, _ := http.NewRequest(http.MethodGet, "http://10.96.0.30:7000/tcp", nil)
		if resp, err := h1.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("TCP stream allowed by an HTTP-only ALLOW rule: %d", resp.StatusCode)
		}
		tu.WaitFor(t, 5*time.Second, "denial logged", func() bool {
			return strings.Contains(wpLog.String(), "allow policies exist, but none allowed")
		})
	})

	// Issue 14 item 5: a policy applies to every path through the waypoint: HTTP requests, TCP ports,
	// and the non-HTTP fallback on an HTTP port (a client that does not start with a request line).
	t.Run("GatewayClass, Gateway and Service policies apply on HTTP, TCP and the non-HTTP fallback", func(t *testing.T) {
		// probe sends payload on a fresh connection to addr and returns what comes back until the
		// server closes (a denied stream is closed with nothing sent).
		probe := func(t *testing.T, addr, payload string) string {
			t.Helper()
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			conn, err := client.NS.Dial(ctx, "tcp", addr)
			if err != nil {
				t.Fatalf("dial %s: %v", addr, err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(15 * time.Second))
			if _, err := io.WriteString(conn, payload); err != nil {
				return ""
			}
			b, _ := io.ReadAll(conn)
			return string(b)
		}
		paths := []struct{ name, addr, payload, allowed string }{
			{"HTTP", "10.96.0.10:80", "GET /paths HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n", "HTTP/1.1 200 "},
			{"TCP port", "10.96.0.30:7000", "GET /paths HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n", "HTTP/1.1 200 "},
			// Lower-case bytes are no request line: forwarded as TCP; the backend answers 400.
			{"non-HTTP fallback", "10.96.0.10:80", "hello, not http\r\n\r\n", "HTTP/1.1 400 "},
		}
		checkAll := func(t *testing.T, denied bool) {
			t.Helper()
			for _, p := range paths {
				got := probe(t, p.addr, p.payload)
				switch {
				case !denied && !strings.HasPrefix(got, p.allowed):
					t.Errorf("%s (%s) with no policy: got %.60q, want %q...", p.name, p.addr, got, p.allowed)
				case denied && p.name == "HTTP" && !strings.HasPrefix(got, "HTTP/1.1 403 "):
					t.Errorf("%s (%s) under a DENY policy: got %.60q, want 403", p.name, p.addr, got)
				case denied && p.name != "HTTP" && got != "":
					t.Errorf("%s (%s) under a DENY policy reached the backend: %.60q", p.name, p.addr, got)
				}
			}
		}
		apply(t, "")
		checkAll(t, false)
		deny := func(ns, refs string) string {
			return fmt.Sprintf(`---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: %s}
spec:
  targetRefs: %s
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/app/sa/client"]}}]}]
`, ns, refs)
		}
		for _, tc := range []struct{ name, yaml string }{
			{"GatewayClass", deny("istio-system", `[{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]`)},
			{"Gateway", deny("app", `[{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]`)},
			{"Service", deny("app", `[{kind: Service, group: "", name: web}, {kind: Service, group: "", name: raw}]`)},
		} {
			t.Run(tc.name, func(t *testing.T) {
				apply(t, tc.yaml)
				checkAll(t, true)
			})
		}
		apply(t, "")
		checkAll(t, false)
	})

	t.Run("W3C and B3 trace context propagate and spans reach the OTLP receiver", func(t *testing.T) {
		apply(t, "")
		const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
		r := do(t, h1, http.MethodGet, "http://10.96.0.10/traced", map[string]string{"Traceparent": "00-" + traceID + "-00f067aa0ba902b7-01"})
		if r.code != 200 {
			t.Fatal(r.code)
		}
		h, _ := srvA.lastHeader("/traced")
		if h == nil {
			h, _ = srvB.lastHeader("/traced")
		}
		tp := h.Get("Traceparent")
		if !strings.HasPrefix(tp, "00-"+traceID+"-") || strings.Contains(tp, "00f067aa0ba902b7") {
			t.Errorf("backend saw traceparent %q", tp)
		}
		const b3ID = "80f198ee56343ba864fe8b2a57d3eff7"
		do(t, h1, http.MethodGet, "http://10.96.0.10/traced-b3", map[string]string{"X-B3-Traceid": b3ID, "X-B3-Spanid": "e457b5a2e4d86bd1", "X-B3-Sampled": "1"})
		h, _ = srvA.lastHeader("/traced-b3")
		if h == nil {
			h, _ = srvB.lastHeader("/traced-b3")
		}
		if !strings.HasPrefix(h.Get("Traceparent"), "00-"+b3ID+"-") || h.Get("X-B3-Traceid") != b3ID || h.Get("X-B3-Spanid") == "e457b5a2e4d86bd1" {
			t.Errorf("B3 trace not continued: traceparent %q x-b3-traceid %q x-b3-spanid %q", h.Get("Traceparent"), h.Get("X-B3-Traceid"), h.Get("X-B3-Spanid"))
		}
		tu.WaitFor(t, 10*time.Second, "span at the OTLP receiver", func() bool { return otlp.spans(traceID) > 0 && otlp.spans(b3ID) > 0 })
		if !strings.Contains(wpLog.String(), "trace_id="+traceID) {
			t.Error("access log has no trace id")
		}
	})

	t.Run("config changes keep in-flight requests; invalid config is rejected naming the field", func(t *testing.T) {
		done := make(chan answer, 1)
		go func() {
			req, _ := http.NewRequest(http.MethodGet, "http://10.96.0.10/delay?ms=1500", nil)
			resp, err := h1.Do(req)
			if err != nil {
				done <- answer{code: -1, body: err.Error()}
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			done <- answer{code: resp.StatusCode, body: string(b)}
		}()
		time.Sleep(300 * time.Millisecond)
		apply(t, `---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-b, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web-b, port: 80}]}]
`)
		if r := <-done; r.code != 200 {
			t.Fatalf("in-flight request across a reload: %d %q", r.code, r.body)
		}
		c.Rewrite(t, yamlWith(`---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-b, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{matches: [{path: {type: RegularExpression, value: "(["}}], backendRefs: [{name: web-a, port: 80}]}]
`)(c.Lab))
		tu.WaitFor(t, 5*time.Second, "rejection naming the field", func() bool {
			return strings.Contains(wpLog.String(), "L7 configuration rejected") && strings.Contains(wpLog.String(), "spec.rules[0].matches[0].path.value")
		})
		for range 5 {
			if r := get(t, "/still"); r.pod != "server-b" {
				t.Fatalf("previous configuration lost: answered by %q", r.pod)
			}
		}
	})
}

// l7Metric sums a counter (or a histogram's sample count) over the series whose labels include want.
func l7Metric(w *waypoint.Waypoint, name string, want map[string]string) float64 {
	mfs, err := w.Metrics.Registry.Gather()
	if err != nil {
		return -1
	}
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				found := false
				for _, l := range m.GetLabel() {
					if l.GetName() == k && l.GetValue() == v {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if h := m.GetHistogram(); h != nil {
				total += float64(h.GetSampleCount())
			} else {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

// TestL7WaypointKubernetesSource runs the waypoint with routes from the Kubernetes API (a fake dynamic
// client with informers) instead of the files, through the real HBONE path.
func TestL7WaypointKubernetesSource(t *testing.T) {
	var wpPod *lab.Pod
	c := startCluster(t, 2, 3, agent.CaptureEBPF, func(l *lab.Lab) string {
		n0, n1 := l.Nodes[0].Pods, l.Nodes[1].Pods
		wpPod = n0[2]
		return l7BaseYAML + pod("client", "app", "client", "", n0[0]) + pod("server-a", "app", "web", ", version: a", n0[1]) +
			pod("server-b", "app", "web", ", version: b", n1[0]) + waypointYAML("app", "wp", "service", "", "10.96.1.1", wpPod)
	})
	client := c.Lab.Nodes[0].Pods[0]
	startL7Backend(t, c.Lab.Nodes[0].Pods[1], "server-a", healthpb.HealthCheckResponse_SERVING)
	startL7Backend(t, c.Lab.Nodes[1].Pods[0], "server-b", healthpb.HealthCheckResponse_SERVING)
	route := func(backend string) *unstructured.Unstructured {
		js, _ := yaml.YAMLToJSON([]byte(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: only, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: ` + backend + `, port: 80}]}]
`))
		u := &unstructured.Unstructured{}
		u.UnmarshalJSON(js)
		return u
	}
	kc := dynfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), kube.ListKinds, route("web-b"))
	_, wpLog := startL7Waypoint(t, c, wpPod, "app", "wp", "", func(cfg *waypoint.Config) {
		cfg.L7Source, cfg.KubeClient = waypoint.L7SourceKubernetes, kc
	})
	tu.WaitFor(t, 10*time.Second, "configuration from the API", func() bool {
		return strings.Contains(wpLog.String(), "source=kubernetes")
	})
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, a string) (net.Conn, error) { return client.NS.Dial(ctx, "tcp", a) }}}
	answers := func() map[string]int {
		out := map[string]int{}
		for range 6 {
			resp, err := hc.Get("http://10.96.0.10/k")
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			out[resp.Header.Get("X-Pod")]++
		}
		return out
	}
	if got := answers(); got["server-b"] != 6 {
		t.Fatalf("answers %v, want all from server-b", got)
	}
	if _, err := kc.Resource(kube.Resources[1]).Namespace("app").Update(context.Background(), route("web-a"), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	tu.WaitFor(t, 10*time.Second, "route update applied", func() bool { return answers()["server-a"] == 6 })
}
