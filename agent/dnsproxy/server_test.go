package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ambit-mesh/ambit/mesh/state"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// plainConn serves ServeUDP from an ordinary UDP socket: every query's destination is the socket's own
// address, and replies leave from it (the capture-less case; redirect's socket is tested in the lab).
type plainConn struct{ *net.UDPConn }

func (c plainConn) ReadQuery(b []byte) (int, netip.AddrPort, netip.AddrPort, error) {
	n, src, err := c.ReadFromUDPAddrPort(b)
	return n, src, c.LocalAddr().(*net.UDPAddr).AddrPort(), err
}

func (c plainConn) Reply(b []byte, _, to netip.AddrPort) error {
	_, err := c.WriteToUDPAddrPort(b, to)
	return err
}

func meshStore(t testing.TB) *state.Store {
	t.Helper()
	svc := &state.Service{Name: "reviews", Namespace: "demo", Hostname: "reviews.demo.svc.cluster.local",
		Addresses: []state.NetworkAddress{state.AddrOf(netip.MustParseAddr("10.96.0.20"))},
		Ports:     []state.Port{{ServicePort: 9080, TargetPort: 9080}}}
	client := &state.Workload{UID: "client", Name: "client", Namespace: "demo", Addresses: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
	for _, v := range []interface{ Validate() error }{svc, client} {
		if err := v.Validate(); err != nil {
			t.Fatal(err)
		}
	}
	s := state.NewStore()
	s.Apply(&state.Update{Services: []*state.Service{svc}, Workloads: []*state.Workload{client}})
	return s
}

// upstream is a real DNS server on loopback (UDP and TCP on one port) that knows example.org (and
// big.example.org, with more A records than fit in 512 bytes); everything else is NXDOMAIN.
type upstream struct {
	addr    netip.AddrPort
	mu      sync.Mutex
	queries map[string]int // guarded by mu; "net name" -> count
}

func startUpstream(t *testing.T) *upstream {
	t.Helper()
	u := &upstream{queries: map[string]int{}}
	// One port for both transports: the UDP socket picks it, TCP may find it taken (then try another).
	var pc net.PacketConn
	var ln net.Listener
	for attempt := 0; ln == nil; attempt++ {
		var err error
		if pc, err = net.ListenPacket("udp4", "127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		u.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
		if ln, err = net.Listen("tcp4", u.addr.String()); err != nil {
			pc.Close()
			if attempt == 20 {
				t.Fatal(err)
			}
		}
	}
	handler := func(proto string) dns.Handler {
		return dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			q := r.Question[0]
			u.mu.Lock()
			u.queries[proto+" "+q.Name]++
			u.mu.Unlock()
			switch q.Name {
			case "example.org.":
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
					A: net.ParseIP("192.0.2.7")})
			case "big.example.org.":
				for i := range 60 {
					m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60},
						A: net.IPv4(192, 0, 2, byte(i+1))})
				}
			default:
				m.Rcode = dns.RcodeNameError
			}
			if proto == "udp" {
				m.Truncate(dns.MinMsgSize)
			}
			w.WriteMsg(m)
		})
	}
	servers := []*dns.Server{{PacketConn: pc, Handler: handler("udp")}, {Listener: ln, Handler: handler("tcp")}}
	var wg sync.WaitGroup
	for _, srv := range servers {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() { srv.ActivateAndServe() })
		<-started
	}
	t.Cleanup(func() {
		for _, srv := range servers {
			srv.Shutdown()
		}
		wg.Wait()
	})
	return u
}

func (u *upstream) count(key string) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.queries[key]
}

type proxy struct {
	srv      *Server
	reg      *prometheus.Registry
	udp, tcp string
}

func startProxy(t *testing.T, cfg Config) *proxy {
	t.Helper()
	p := &proxy{reg: prometheus.NewRegistry()}
	if cfg.Lookup == nil {
		cfg.Lookup = meshStore(t)
	}
	cfg.Registerer = p.reg
	cfg.Source = func(a netip.Addr) (Source, bool) {
		if a == netip.MustParseAddr("127.0.0.1") {
			return Source{Workload: "client", Namespace: "demo"}, true
		}
		return Source{}, false
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.srv = srv
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.udp, p.tcp = uc.LocalAddr().String(), ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() { errs <- srv.ServeUDP(ctx, plainConn{uc}) })
	wg.Go(func() { errs <- srv.ServeTCP(ctx, ln) })
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		for range 2 {
			if err := <-errs; err != nil {
				t.Errorf("serve: %v", err)
			}
		}
	})
	return p
}

func (p *proxy) query(t *testing.T, proto, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	addr := p.udp
	if proto == "tcp" {
		addr = p.tcp
	}
	c := &dns.Client{Net: proto, Timeout: 10 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s query %s: %v", proto, name, err)
	}
	if r.Id != m.Id {
		t.Fatalf("reply id %d, want %d", r.Id, m.Id)
	}
	return r
}

func aRecords(r *dns.Msg) []string {
	var out []string
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, v.Hdr.Name+" "+v.A.String())
		case *dns.CNAME:
			out = append(out, v.Hdr.Name+" CNAME "+v.Target)
		}
	}
	return out
}

func TestServer(t *testing.T) {
	tu.CheckGoroutines(t)
	up := startUpstream(t)
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{up.addr}})

	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			r := p.query(t, proto, "reviews.demo.svc.cluster.local.", dns.TypeA)
			if got := strings.Join(aRecords(r), ","); r.Rcode != dns.RcodeSuccess || got != "reviews.demo.svc.cluster.local. 10.96.0.20" {
				t.Errorf("mesh answer: rcode %s, answers %q", dns.RcodeToString[r.Rcode], got)
			}
			if !r.Authoritative {
				t.Error("mesh answer is not authoritative")
			}
			r = p.query(t, proto, "reviews.demo.svc.cluster.local.demo.svc.cluster.local.", dns.TypeA)
			want := "reviews.demo.svc.cluster.local.demo.svc.cluster.local. CNAME reviews.demo.svc.cluster.local.,reviews.demo.svc.cluster.local. 10.96.0.20"
			if got := strings.Join(aRecords(r), ","); got != want {
				t.Errorf("search-domain form: answers %q, want %q", got, want)
			}
			r = p.query(t, proto, "reviews.demo.svc.cluster.local.", dns.TypeAAAA)
			if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
				t.Errorf("AAAA of a v4 service: rcode %s, %d answers; want NODATA", dns.RcodeToString[r.Rcode], len(r.Answer))
			}
			before := up.count(proto + " example.org.")
			r = p.query(t, proto, "example.org.", dns.TypeA)
			if got := strings.Join(aRecords(r), ","); got != "example.org. 192.0.2.7" {
				t.Errorf("forwarded: answers %q", got)
			}
			if up.count(proto+" example.org.") != before+1 {
				t.Errorf("upstream saw %d %s queries for example.org, want %d", up.count(proto+" example.org."), proto, before+1)
			}
			r = p.query(t, proto, "nothere.example.org.", dns.TypeA)
			if r.Rcode != dns.RcodeNameError {
				t.Errorf("unknown name: rcode %s, want NXDOMAIN from upstream", dns.RcodeToString[r.Rcode])
			}
		})
	}

	t.Run("truncated over UDP, whole over TCP", func(t *testing.T) {
		m := new(dns.Msg)
		m.SetQuestion("big.example.org.", dns.TypeA)
		c := &dns.Client{Net: "udp", Timeout: 10 * time.Second}
		r, _, err := c.Exchange(m, p.udp)
		if err != nil {
			t.Fatal(err)
		}
		if r == nil || !r.Truncated || len(r.Answer) >= 60 {
			t.Fatalf("UDP reply to a large answer: %v", r)
		}
		r = p.query(t, "tcp", "big.example.org.", dns.TypeA)
		if r.Truncated || len(r.Answer) != 60 {
			t.Errorf("TCP reply: truncated %v, %d answers, want 60", r.Truncated, len(r.Answer))
		}
	})

	t.Run("malformed gets FORMERR and the proxy keeps serving", func(t *testing.T) {
		c, err := net.Dial("udp4", p.udp)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// A header (ID 0xbeef, RD, one question) and a question that ends in the middle of its name.
		bad := []byte{0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 7, 'e', 'x', 'a'}
		if _, err := c.Write(bad); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:n]); err != nil {
			t.Fatal(err)
		}
		if r.Id != 0xbeef || !r.Response || r.Rcode != dns.RcodeFormatError || !r.RecursionDesired {
			t.Errorf("reply to a malformed query: %v", r)
		}
		// Shorter than a header: dropped; the next query is still answered.
		if _, err := c.Write([]byte{1, 2, 3}); err != nil {
			t.Fatal(err)
		}
		if got := aRecords(p.query(t, "udp", "reviews.demo.svc.cluster.local.", dns.TypeA)); len(got) != 1 {
			t.Errorf("after malformed input: %v", got)
		}
		if v := testutil.ToFloat64(p.srv.m.dropped.WithLabelValues("malformed")); v != 1 {
			t.Errorf("ambit_dns_dropped_total{reason=malformed} = %v, want 1", v)
		}
		// Longer than MaxQuery: dropped unparsed.
		m := new(dns.Msg)
		m.SetQuestion("reviews.demo.svc.cluster.local.", dns.TypeA)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if r := p.srv.Handle(context.Background(), append(b, make([]byte, MaxQuery)...), netip.MustParseAddrPort("127.0.0.1:1"), UDP); r != nil {
			t.Errorf("reply to an oversize query: %d bytes", len(r))
		}
		if v := testutil.ToFloat64(p.srv.m.dropped.WithLabelValues("oversize")); v != 1 {
			t.Errorf("ambit_dns_dropped_total{reason=oversize} = %v, want 1", v)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		if v := testutil.ToFloat64(p.srv.m.requests.WithLabelValues("A", "udp", "client", "demo")); v < 4 {
			t.Errorf("istio_dns_requests_total{A,udp,client,demo} = %v", v)
		}
		if v := testutil.ToFloat64(p.srv.m.upstreamRequests.WithLabelValues("A", "tcp", "client", "demo")); v != 3 {
			t.Errorf("istio_dns_upstream_requests_total{A,tcp} = %v, want 3", v)
		}
		if v := testutil.ToFloat64(p.srv.m.responses.WithLabelValues("FORMERR", byProxy)); v != 1 {
			t.Errorf("ambit_dns_responses_total{FORMERR,proxy} = %v, want 1", v)
		}
		n, err := testutil.GatherAndCount(p.reg, "istio_dns_upstream_request_duration_seconds")
		if err != nil || n == 0 {
			t.Errorf("duration histogram: %d series, %v", n, err)
		}
	})
}

func TestUpstreamFailureIsServfail(t *testing.T) {
	tu.CheckGoroutines(t)
	// A port nothing listens on: UDP gets ICMP port unreachable, TCP a reset.
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := pc.LocalAddr().(*net.UDPAddr).AddrPort()
	pc.Close()
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{dead}, Timeout: 2 * time.Second})
	for _, proto := range []string{"udp", "tcp"} {
		r := p.query(t, proto, "example.org.", dns.TypeA)
		if r.Rcode != dns.RcodeServerFailure {
			t.Errorf("%s: rcode %s, want SERVFAIL", proto, dns.RcodeToString[r.Rcode])
		}
		if v := testutil.ToFloat64(p.srv.m.upstreamFailures.WithLabelValues("A", proto, "client", "demo")); v != 1 {
			t.Errorf("%s: istio_dns_upstream_failures_total = %v, want 1", proto, v)
		}
	}
}

func TestTCPConnectionCap(t *testing.T) {
	tu.CheckGoroutines(t)
	p := startProxy(t, Config{MaxTCPConns: 1})
	first, err := net.Dial("tcp4", p.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	// Answered: the first connection holds the only slot.
	m := new(dns.Msg)
	m.SetQuestion("reviews.demo.svc.cluster.local.", dns.TypeA)
	co := &dns.Conn{Conn: first}
	if err := co.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	if _, err := co.ReadMsg(); err != nil {
		t.Fatal(err)
	}
	second, err := net.Dial("tcp4", p.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	_ = second.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := second.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		t.Errorf("second connection over the cap: read %d, %v; want EOF", n, err)
	}
	if v := testutil.ToFloat64(p.srv.m.dropped.WithLabelValues("overload")); v != 1 {
		t.Errorf("ambit_dns_dropped_total{reason=overload} = %v, want 1", v)
	}
}

func TestTCPLengthPrefixedStream(t *testing.T) {
	tu.CheckGoroutines(t)
	p := startProxy(t, Config{})
	c, err := net.Dial("tcp4", p.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Two queries in one write, then a malformed one: three replies in order.
	var out []byte
	for i, name := range []string{"reviews.demo.svc.cluster.local.", "reviews.demo.svc.cluster.local.demo.svc.cluster.local."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.Id = uint16(100 + i)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		out = binary.BigEndian.AppendUint16(out, uint16(len(b)))
		out = append(out, b...)
	}
	out = append(out, 0, 13, 0, 102, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0)
	if _, err := c.Write(out); err != nil {
		t.Fatal(err)
	}
	co := &dns.Conn{Conn: c}
	for i, want := range []int{dns.RcodeSuccess, dns.RcodeSuccess, dns.RcodeFormatError} {
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		r, err := co.ReadMsg()
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		if r.Id != uint16(100+i) || r.Rcode != want {
			t.Errorf("reply %d: id %d rcode %s, want id %d %s", i, r.Id, dns.RcodeToString[r.Rcode], 100+i, dns.RcodeToString[want])
		}
	}
}

func TestParseResolvConf(t *testing.T) {
	got := ParseResolvConf("# generated\nsearch demo.svc.cluster.local\nnameserver 10.96.0.10\nnameserver fd00::a\noptions ndots:5\nnameserver fe80::1%eth0\nnameserver bogus\n")
	want := "[10.96.0.10:53 [fd00::a]:53 [fe80::1]:53]"
	if fmt.Sprint(got) != want {
		t.Errorf("ParseResolvConf = %v, want %s", got, want)
	}
}

func TestKnownClientsOnly(t *testing.T) {
	srv, err := New(Config{Lookup: meshStore(t), KnownClientsOnly: true,
		Source: func(a netip.Addr) (Source, bool) {
			return Source{Namespace: "demo"}, a == netip.MustParseAddr("10.0.0.5")
		}})
	if err != nil {
		t.Fatal(err)
	}
	m := new(dns.Msg)
	m.SetQuestion("reviews.demo.svc.cluster.local.", dns.TypeA)
	q, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		src    string
		answer bool
	}{{"10.0.0.5:4000", true}, {"127.0.0.1:4000", true}, {"[::1]:4000", true}, {"192.0.2.9:4000", false}} {
		got := srv.Handle(context.Background(), q, netip.MustParseAddrPort(tc.src), UDP) != nil
		if got != tc.answer {
			t.Errorf("query from %s answered: %v, want %v", tc.src, got, tc.answer)
		}
	}
	if v := testutil.ToFloat64(srv.m.dropped.WithLabelValues("unknown_client")); v != 1 {
		t.Errorf("ambit_dns_dropped_total{reason=unknown_client} = %v, want 1", v)
	}
}

// TestPerSourceBound: a client flooding the proxy with queries its upstream never answers holds at most
// MaxPerSource of the in-flight slots; another client's query is still answered. Before the bound, the flood
// took every slot and the other client's queries were dropped.
func TestPerSourceBound(t *testing.T) {
	tu.CheckGoroutines(t)
	// An upstream that reads queries and never answers.
	hole, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hole.Close()
	go func() {
		buf := make([]byte, 512)
		for {
			if _, _, err := hole.ReadFrom(buf); err != nil {
				return
			}
		}
	}()
	p := startProxy(t, Config{Upstreams: []netip.AddrPort{hole.LocalAddr().(*net.UDPAddr).AddrPort()},
		Timeout: 3 * time.Second, MaxInflight: 4, MaxPerSource: 2})
	flood, err := net.Dial("udp4", p.udp)
	if err != nil {
		t.Fatal(err)
	}
	defer flood.Close()
	for i := range 6 {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("q%d.example.org.", i), dns.TypeA)
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := flood.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	tu.WaitFor(t, 5*time.Second, "the flood's excess dropped", func() bool {
		return testutil.ToFloat64(p.srv.m.dropped.WithLabelValues("source_overload")) == 4
	})
	// Another client (127.0.0.2) is answered from the mesh while the flood holds its two slots.
	m := new(dns.Msg)
	m.SetQuestion("reviews.demo.svc.cluster.local.", dns.TypeA)
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second,
		Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}}}
	r, _, err := c.Exchange(m, p.udp)
	if err != nil || len(r.Answer) == 0 {
		t.Fatalf("the other client's query: %v, %v", r, err)
	}
}

// TestPerSourceTCPConnections: one client address holds at most MaxPerSource TCP connections; another
// client's connection is still served.
func TestPerSourceTCPConnections(t *testing.T) {
	tu.CheckGoroutines(t)
	p := startProxy(t, Config{MaxTCPConns: 4, MaxPerSource: 1})
	ask := func(c net.Conn) error {
		m := new(dns.Msg)
		m.SetQuestion("reviews.demo.svc.cluster.local.", dns.TypeA)
		co := &dns.Conn{Conn: c}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := co.WriteMsg(m); err != nil {
			return err
		}
		_, err := co.ReadMsg()
		return err
	}
	first, err := net.Dial("tcp4", p.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if err := ask(first); err != nil {
		t.Fatal(err)
	}
	second, err := net.Dial("tcp4", p.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	if err := ask(second); err == nil {
		t.Error("a second connection from the same address was served")
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}
	other, err := d.Dial("tcp4", p.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := ask(other); err != nil {
		t.Errorf("another client's connection: %v", err)
	}
	if v := testutil.ToFloat64(p.srv.m.dropped.WithLabelValues("source_overload")); v != 1 {
		t.Errorf("ambit_dns_dropped_total{reason=source_overload} = %v, want 1", v)
	}
}
