package admin

import (
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/admin/dump"
)

func get(t *testing.T, h http.Handler, method, target string) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	return rec
}

func TestConfigDump(t *testing.T) {
	f := newFixture(t)
	rec := get(t, NewAdminHandler(f.options()), http.MethodGet, "/config_dump")
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	body := rec.Body.String()
	if strings.Contains(body, "PRIVATE KEY") {
		t.Fatal("the dump holds a private key")
	}
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(rec.Body.Bytes(), &keys); err != nil {
		t.Fatal(err)
	}
	want := []string{"certificates", "config", "nodeName", "policies", "services", "version", "workloadState", "workloads"}
	if got := slices.Sorted(maps.Keys(keys)); !slices.Equal(got, want) {
		t.Errorf("top-level keys %v, want %v", got, want)
	}
	d, err := dump.Parse(rec.Body.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	nw, ns, np := f.store.Counts()
	if len(d.Workloads) != nw || len(d.Services) != ns || len(d.Policies) != np {
		t.Errorf("%d/%d/%d workloads/services/policies, store has %d/%d/%d", len(d.Workloads), len(d.Services), len(d.Policies), nw, ns, np)
	}
	byName := map[string]*dump.Workload{}
	for _, w := range d.Workloads {
		byName[w.Namespace+"/"+w.Name] = w
	}
	if w := byName["shop/reviews-v2-def"]; w == nil || w.Waypoint == nil ||
		w.Waypoint.Destination != "shop/reviews-v2-pod-waypoint.shop.svc.cluster.local" || w.Protocol != "HBONE" ||
		!slices.Equal(w.WorkloadIPs, []string{"10.244.1.22"}) || w.ServiceAccount != "reviews" || w.Node != "node-b" {
		t.Errorf("reviews-v2-def: %+v", w)
	}
	if w := byName["legacy/legacy-client"]; w == nil || w.Protocol != "TCP" || w.Waypoint != nil {
		t.Errorf("legacy-client: %+v", w)
	}
	var reviews *dump.Service
	for _, s := range d.Services {
		if s.Name == "reviews" {
			reviews = s
		}
	}
	if reviews == nil || reviews.Waypoint == nil || !slices.Equal(reviews.Vips, []string{"/10.96.20.1"}) || len(reviews.Endpoints) != 2 ||
		reviews.Ports[9080] != 0 || reviews.Endpoints["Kubernetes//Pod/shop/reviews-v1-abc"].Port[9080] != 9080 {
		t.Errorf("reviews service: %s", mustJSON(t, reviews))
	}
	if d.NodeName != "node-a" || d.Version == nil || d.Version.Version != "1.2.3" || d.Version.GoVersion == "" {
		t.Errorf("nodeName %q, version %+v", d.NodeName, d.Version)
	}

	certs := map[string]*dump.Certificate{}
	for _, c := range d.Certificates {
		certs[c.Identity] = c
	}
	if c := certs[idReviews.String()]; c == nil || c.State != "Available" || len(c.CertChain) != 1 || len(c.RootCerts) != 1 ||
		!strings.HasPrefix(c.CertChain[0].PEM, "-----BEGIN CERTIFICATE-----") || c.CertChain[0].SerialNumber == "" ||
		!strings.HasSuffix(c.CertChain[0].ExpirationTime, "Z") || c.NextAttempt == "" {
		t.Errorf("available identity: %s", mustJSON(t, c))
	}
	if c := certs[idBroken.String()]; c == nil || c.State != "Unavailable: ca unreachable" || len(c.CertChain) != 0 || c.Failures != 1 {
		t.Errorf("unavailable identity: %s", mustJSON(t, c))
	}
	if c := certs[idClient.String()]; c == nil || c.State != "Initializing" {
		t.Errorf("initializing identity: %s", mustJSON(t, c))
	}
	if !slices.IsSortedFunc(d.Certificates, func(a, b *dump.Certificate) int { return strings.Compare(a.Identity, b.Identity) }) {
		t.Error("certificates are not sorted by identity")
	}

	// node-a's captured workloads are client and reviews-v1; legacy-client is not captured and the pod
	// waypoint terminates HBONE itself.
	wantState := map[string]dump.WorkloadState{
		"Kubernetes//Pod/shop/client": {
			Connections: dump.WorkloadConnections{Inbound: []dump.InboundConnection{}, Outbound: []dump.OutboundConnection{
				{Src: "10.244.0.5:40000", OriginalDst: "10.96.20.1:9080", ActualDst: "10.244.1.10:15008", Protocol: "HBONE"}}},
			Info: dump.WorkloadInfo{Name: "client", Namespace: "shop", TrustDomain: "cluster.local", ServiceAccount: "client"},
		},
		"Kubernetes//Pod/shop/reviews-v1-abc": {
			Connections: dump.WorkloadConnections{Outbound: []dump.OutboundConnection{}, Inbound: []dump.InboundConnection{
				{Src: "10.244.1.10:50000", OriginalDst: "reviews.shop.svc.cluster.local", ActualDst: "10.244.0.21:9080", Protocol: "HBONE"}}},
			Info: dump.WorkloadInfo{Name: "reviews-v1-abc", Namespace: "shop", TrustDomain: "cluster.local", ServiceAccount: "reviews"},
		},
	}
	if got, want := mustJSON(t, d.WorkloadState), mustJSON(t, wantState); got != want {
		t.Errorf("workloadState:\n%s\nwant:\n%s", got, want)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestConfigDumpWithoutSources(t *testing.T) {
	rec := get(t, NewAdminHandler(Options{}), http.MethodGet, "/config_dump")
	want := "{\n  \"workloads\": [],\n  \"services\": [],\n  \"policies\": [],\n  \"certificates\": [],\n  \"workloadState\": {}\n}\n"
	if rec.Code != http.StatusOK || rec.Body.String() != want {
		t.Errorf("status %d, body %q, want %q", rec.Code, rec.Body.String(), want)
	}
}

func TestConnectionsEndpoint(t *testing.T) {
	f := newFixture(t)
	rec := get(t, NewAdminHandler(f.options()), http.MethodGet, "/connections")
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d", rec.Code)
	}
	var conns []dump.Connection
	if err := json.Unmarshal(rec.Body.Bytes(), &conns); err != nil {
		t.Fatal(err)
	}
	if len(conns) != 2 {
		t.Fatalf("%d connections, want 2", len(conns))
	}
	out, in := conns[0], conns[1]
	out.DurationSeconds, in.DurationSeconds = 0, 0
	wantOut := dump.Connection{ID: out.ID, Direction: "outbound", Src: "10.244.0.5:40000", Dst: "10.96.20.1:9080", Hop: "10.244.1.10:15008",
		Authority: "10.96.20.1:9080", Protocol: "HBONE", Workload: "shop/client", WorkloadUID: "Kubernetes//Pod/shop/client",
		Service: "shop/reviews.shop.svc.cluster.local", Waypoint: "shop/waypoint", BytesUpstream: 100, BytesDownstream: 2000,
		Start: "2030-01-02T03:04:05Z"}
	wantIn := dump.Connection{ID: in.ID, Direction: "inbound", Src: "10.244.1.10:50000", Dst: "10.244.0.21:9080", Hop: "10.244.0.21:9080",
		Protocol: "HBONE", Workload: "shop/reviews-v1-abc", WorkloadUID: "Kubernetes//Pod/shop/reviews-v1-abc",
		PeerIdentity: "spiffe://cluster.local/ns/shop/sa/waypoint", Service: "shop/reviews.shop.svc.cluster.local", Start: "2030-01-02T03:04:06Z"}
	if out != wantOut || in != wantIn || out.ID == in.ID {
		t.Errorf("connections:\n%+v\n%+v\nwant:\n%+v\n%+v", out, in, wantOut, wantIn)
	}
}

func TestLoggingEndpoint(t *testing.T) {
	level, access := new(slog.LevelVar), new(slog.LevelVar)
	level.Set(slog.LevelWarn)
	h := NewAdminHandler(Options{Level: level, Loggers: map[string]*slog.LevelVar{"access": access}})
	steps := []struct {
		name, method, target string
		code                 int
		body                 string // exact, or prefix when it ends with "..."
		level, access        slog.Level
	}{
		{"get lists", http.MethodGet, "/logging", 200, "current log level is warn,access=info\n", slog.LevelWarn, slog.LevelInfo},
		{"post without level lists", http.MethodPost, "/logging", 200, "current log level is warn,access=info\n", slog.LevelWarn, slog.LevelInfo},
		{"empty level lists", http.MethodPost, "/logging?level=", 200, "current log level is warn,access=info\n", slog.LevelWarn, slog.LevelInfo},
		{"default level", http.MethodPost, "/logging?level=debug", 200, "current log level is debug,access=info\n", slog.LevelDebug, slog.LevelInfo},
		{"named with colon", http.MethodPost, "/logging?level=access:trace", 200, "current log level is debug,access=trace\n", slog.LevelDebug, LevelTrace},
		{"several, equals and istioctl's default name", http.MethodPost, "/logging?level=level:error,access%3Doff", 200, "current log level is error,access=off\n", slog.LevelError, LevelOff},
		{"invalid level", http.MethodPost, "/logging?level=loud", 400, "Invalid level provided: loud ...", slog.LevelError, LevelOff},
		{"unknown logger", http.MethodPost, "/logging?level=proxy:debug", 400, "Invalid level provided: proxy:debug (unknown logger \"proxy\" (known: level, access))...", slog.LevelError, LevelOff},
		{"reset", http.MethodPost, "/logging?reset", 200, "current log level is warn,access=info\n", slog.LevelWarn, slog.LevelInfo},
		{"reset then level, as istioctl sends", http.MethodPost, "/logging?level=info&reset", 200, "current log level is info,access=info\n", slog.LevelInfo, slog.LevelInfo},
		{"other method", http.MethodPut, "/logging", 405, "Method Not Allowed\n", slog.LevelInfo, slog.LevelInfo},
	}
	for _, s := range steps {
		rec := get(t, h, s.method, s.target)
		body := rec.Body.String()
		bodyOK := body == s.body
		if prefix, ok := strings.CutSuffix(s.body, "..."); ok {
			bodyOK = strings.HasPrefix(body, prefix) && strings.Contains(body, "usage: POST /logging")
		}
		if rec.Code != s.code || !bodyOK {
			t.Errorf("%s: %d %q, want %d %q", s.name, rec.Code, body, s.code, s.body)
		}
		if level.Level() != s.level || access.Level() != s.access {
			t.Errorf("%s: levels %v/%v, want %v/%v", s.name, level.Level(), access.Level(), s.level, s.access)
		}
	}
	if rec := get(t, NewAdminHandler(Options{}), http.MethodPost, "/logging?level=debug"); rec.Code != http.StatusNotFound {
		t.Errorf("without Level: %d, want 404", rec.Code)
	}
}

func TestQuitQuitQuit(t *testing.T) {
	quit := make(chan struct{}, 1)
	h := NewAdminHandler(Options{Quit: func() { quit <- struct{}{} }})
	if rec := get(t, h, http.MethodGet, "/quitquitquit"); rec.Code != http.StatusMethodNotAllowed || len(quit) != 0 {
		t.Errorf("GET: %d, quit called %d times", rec.Code, len(quit))
	}
	if rec := get(t, h, http.MethodPost, "/quitquitquit"); rec.Code != http.StatusOK || rec.Body.String() != "shutdown now\n" || len(quit) != 1 {
		t.Errorf("POST: %d %q, quit called %d times", rec.Code, rec.Body.String(), len(quit))
	}
	if rec := get(t, NewAdminHandler(Options{}), http.MethodPost, "/quitquitquit"); rec.Code != http.StatusNotFound {
		t.Errorf("without Quit: %d, want 404", rec.Code)
	}
}

func TestAdminExtras(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "ambit_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	h := NewAdminHandler(Options{Registry: reg, Ready: func() (bool, []string) { return true, nil }, Level: new(slog.LevelVar)})
	cases := []struct {
		target string
		code   int
		has    string
	}{
		{"/", 200, "config_dump"},
		{"/debug/pprof/", 200, "goroutine"},
		{"/debug/pprof/heap?debug=1", 200, "heap profile"},
		{"/debug/pprof/cmdline", 200, ""},
		{"/stats/prometheus", 200, "ambit_test_total 3"},
		{"/metrics", 200, "ambit_test_total 3"},
		{"/healthz/ready", 200, "ready\n"},
		{"/nope", 404, ""},
	}
	for _, tc := range cases {
		rec := get(t, h, http.MethodGet, tc.target)
		if rec.Code != tc.code || !strings.Contains(rec.Body.String(), tc.has) {
			t.Errorf("%s: %d, body %.200q; want %d containing %q", tc.target, rec.Code, rec.Body.String(), tc.code, tc.has)
		}
	}
	if rec := get(t, NewAdminHandler(Options{}), http.MethodGet, "/"); strings.Contains(rec.Body.String(), "logging") {
		t.Errorf("index lists logging without a Level: %q", rec.Body.String())
	}
}

func TestMetricsHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "istio_test_gauge", Help: "test"})
	reg.MustRegister(g)
	g.Set(7)
	srv := httptest.NewServer(NewMetricsHandler(reg))
	defer srv.Close()
	for _, path := range []string{"/metrics", "/stats/prometheus"} {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), "istio_test_gauge 7") ||
			!strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
			t.Errorf("%s: %d %q %q", path, resp.StatusCode, resp.Header.Get("Content-Type"), b)
		}
	}
	if rec := get(t, NewMetricsHandler(reg), http.MethodGet, "/config_dump"); rec.Code != http.StatusNotFound {
		t.Errorf("metrics handler serves /config_dump: %d", rec.Code)
	}
}

func TestReadinessHandler(t *testing.T) {
	cases := []struct {
		name    string
		ready   bool
		pending []string
		code    int
		body    string
	}{
		{"ready", true, nil, 200, "ready\n"},
		{"one pending", false, []string{"state manager"}, 500, "not ready, pending: state manager\n"},
		{"several pending", false, []string{"capture", "listeners"}, 500, "not ready, pending: capture, listeners\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := NewReadinessHandler(func() (bool, []string) { return tc.ready, tc.pending })
			rec := get(t, h, http.MethodGet, "/healthz/ready")
			if rec.Code != tc.code || rec.Body.String() != tc.body {
				t.Errorf("%d %q, want %d %q", rec.Code, rec.Body.String(), tc.code, tc.body)
			}
		})
	}
}
