package upstream

import (
	"context"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ambit-mesh/ambit/mesh/state"
)

// dnsServer is a real DNS server on loopback (UDP and TCP) answering A queries from a table.
type dnsServer struct {
	mu      sync.Mutex
	answers map[string]string // guarded by mu; FQDN -> IPv4
	ttl     uint32
	queries atomic.Int64
	conf    string // a resolv.conf naming it
	port    string
}

func startDNS(t *testing.T, answers map[string]string, ttl uint32) *dnsServer {
	t.Helper()
	s := &dnsServer{answers: answers, ttl: ttl}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		s.queries.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		s.mu.Lock()
		ip, ok := s.answers[strings.ToLower(q.Name)]
		s.mu.Unlock()
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: s.ttl},
				A: net.ParseIP(ip)})
		}
		w.WriteMsg(m)
	})
	srv := &dns.Server{PacketConn: pc, Handler: h}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go srv.ActivateAndServe()
	<-started
	t.Cleanup(func() { srv.Shutdown() })
	host, port, _ := net.SplitHostPort(pc.LocalAddr().String())
	s.conf = filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(s.conf, []byte("nameserver "+host+"\noptions ndots:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s.port = port
	return s
}

func (s *dnsServer) set(name, ip string) {
	s.mu.Lock()
	s.answers[name] = ip
	s.mu.Unlock()
}

func TestResolverTTL(t *testing.T) {
	srv := startDNS(t, map[string]string{"api.example.test.": "10.1.0.1"}, 30)
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	var d net.Dialer
	r := &Resolver{Conf: srv.conf, Port: srv.port, Dial: d.DialContext, Now: clock}
	lookup := func() string {
		t.Helper()
		a, err := r.Lookup(context.Background(), "api.example.test")
		if err != nil {
			t.Fatal(err)
		}
		return a[0].String()
	}
	if got := lookup(); got != "10.1.0.1" {
		t.Fatalf("first answer %s", got)
	}
	q := srv.queries.Load()
	srv.set("api.example.test.", "10.1.0.2")
	advance(29 * time.Second)
	if got := lookup(); got != "10.1.0.1" || srv.queries.Load() != q {
		t.Fatalf("within the TTL: %s after %d queries (cached answer expected, no query)", got, srv.queries.Load()-q)
	}
	advance(2 * time.Second)
	if got := lookup(); got != "10.1.0.2" {
		t.Fatalf("after the TTL: %s", got)
	}

	// An unknown name fails, and the failure is remembered for ErrorTTL.
	_, err := r.Lookup(context.Background(), "nope.example.test")
	if err == nil || !strings.Contains(err.Error(), "no such host") {
		t.Fatalf("unknown name: %v", err)
	}
	q = srv.queries.Load()
	if _, err := r.Lookup(context.Background(), "nope.example.test"); err == nil || srv.queries.Load() != q {
		t.Fatalf("failure not cached: %v, %d queries", err, srv.queries.Load()-q)
	}
	srv.set("nope.example.test.", "10.1.0.3")
	advance(2 * time.Second)
	if a, err := r.Lookup(context.Background(), "nope.example.test"); err != nil || a[0] != netip.MustParseAddr("10.1.0.3") {
		t.Fatalf("after ErrorTTL: %v %v", a, err)
	}
}

func TestResolverSharesQueries(t *testing.T) {
	srv := startDNS(t, map[string]string{"api.example.test.": "10.1.0.1"}, 60)
	var d net.Dialer
	r := &Resolver{Conf: srv.conf, Port: srv.port, Dial: d.DialContext}
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			if a, err := r.Lookup(context.Background(), "API.example.test"); err != nil || a[0].String() != "10.1.0.1" {
				t.Errorf("lookup: %v %v", a, err)
			}
		})
	}
	wg.Wait()
	if q := srv.queries.Load(); q != 1 {
		t.Errorf("%d queries for one name, want 1", q)
	}
}

func TestResolverBadConf(t *testing.T) {
	r := &Resolver{Conf: filepath.Join(t.TempDir(), "missing"), Dial: (&net.Dialer{}).DialContext}
	if _, err := r.Lookup(context.Background(), "api.example.test"); err == nil || !strings.Contains(err.Error(), "read resolver configuration") {
		t.Fatalf("err %v", err)
	}
}

func TestHostEndpoints(t *testing.T) {
	svc := &state.Service{Namespace: "istio-egress", Hostname: "api.example.test",
		Ports: []state.Port{{ServicePort: 80}, {ServicePort: 443, TargetPort: 8443}}}
	ref := []state.ServiceRef{{Service: svc.Key(), Ports: []state.PortMapping{{ServicePort: 80, TargetPort: 80}, {ServicePort: 443, TargetPort: 8443}}}}
	pod := &state.Workload{UID: "pod", Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.9")}, Services: ref}
	dnsW := &state.Workload{UID: "dns", Hostname: "api.example.test", Services: ref}
	sick := &state.Workload{UID: "sick", Hostname: "down.example.test", Services: ref, Status: state.Unhealthy}
	bad := &state.Workload{UID: "bad", Hostname: "bad.example.test", Services: ref}
	lookup := func(_ context.Context, h string) ([]netip.Addr, error) {
		switch h {
		case "api.example.test":
			return []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2")}, nil
		case "down.example.test":
			t.Error("unhealthy workload looked up")
		}
		return nil, context.DeadlineExceeded
	}
	tests := []struct {
		name    string
		wls     []*state.Workload
		port    uint16
		want    []string
		wantErr bool
	}{
		{"one endpoint per address", []*state.Workload{pod, dnsW, sick}, 80, []string{"10.1.0.1:80", "10.1.0.2:80"}, false},
		{"target port", []*state.Workload{dnsW}, 443, []string{"10.1.0.1:8443", "10.1.0.2:8443"}, false},
		{"unmapped port", []*state.Workload{dnsW}, 81, nil, false},
		{"a failed lookup is returned with the rest", []*state.Workload{bad, dnsW}, 80, []string{"10.1.0.1:80", "10.1.0.2:80"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := HostEndpoints(context.Background(), tt.wls, svc, tt.port, lookup)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err %v", err)
			}
			var addrs []string
			for _, e := range got {
				addrs = append(addrs, e.Addr.String())
			}
			if strings.Join(addrs, ",") != strings.Join(tt.want, ",") {
				t.Errorf("endpoints %v, want %v", addrs, tt.want)
			}
		})
	}
}

func TestUseVC(t *testing.T) {
	for _, tc := range []struct {
		conf string
		want bool
	}{
		{"nameserver 10.96.0.10\n", false},
		{"nameserver 10.96.0.10\noptions ndots:5 use-vc\n", true},
		{"options use-vc\nnameserver 10.96.0.10\n", true},
		{"nameserver 10.96.0.10\n# options use-vc\n", false},
		{"search use-vc\n", false},
		{"options ndots:5 use-vcx\n", false},
	} {
		if got := useVC([]byte(tc.conf)); got != tc.want {
			t.Errorf("useVC(%q) = %t, want %t", tc.conf, got, tc.want)
		}
	}
}

// TestResolverUseVC resolves with a name server that answers over TCP only (the test kubelet's cluster DNS):
// "options use-vc" makes the resolver query over TCP at once.
func TestResolverUseVC(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		if q := r.Question[0]; q.Qtype == dns.TypeA && q.Name == "api.example.test." {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
				A: net.ParseIP("10.1.0.7")})
		}
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ActivateAndServe()
	}()
	<-started
	t.Cleanup(func() {
		srv.Shutdown()
		<-done
	})
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	conf := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(conf, []byte("nameserver "+host+"\noptions ndots:1 use-vc\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var networks []string
	var mu sync.Mutex
	var d net.Dialer
	r := &Resolver{Conf: conf, Port: port, Timeout: 2 * time.Second, Dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		networks = append(networks, network)
		mu.Unlock()
		return d.DialContext(ctx, network, addr)
	}}
	a, err := r.Lookup(context.Background(), "api.example.test")
	if err != nil || len(a) != 1 || a[0].String() != "10.1.0.7" {
		t.Fatalf("lookup over TCP: %v %v", a, err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, n := range networks {
		if n != "tcp" {
			t.Errorf("dialled %q with use-vc", n)
		}
	}
}
