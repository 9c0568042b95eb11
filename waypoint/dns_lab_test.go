package waypoint_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/meshlab"
	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint"
)

// upstreamDNS is a real DNS server (github.com/miekg/dns) on :53 of a lab pod, UDP and TCP, answering A
// queries from a fixed table (NXDOMAIN otherwise); it records each query's transport, name and source.
type upstreamDNS struct {
	mu      sync.Mutex
	answers map[string]string
	seen    []string // guarded by mu; "<proto> <name> <source ip>"
}

func startUpstreamDNS(t *testing.T, p *lab.Pod, answers map[string]string) *upstreamDNS {
	t.Helper()
	d := &upstreamDNS{answers: answers}
	var pc net.PacketConn
	if err := p.NS.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", ":53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ln, err := p.NS.Listen(context.Background(), "tcp", ":53")
	if err != nil {
		t.Fatal(err)
	}
	handler := func(proto string) dns.Handler {
		return dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			q := r.Question[0]
			host, _, _ := net.SplitHostPort(w.RemoteAddr().String())
			d.mu.Lock()
			d.seen = append(d.seen, proto+" "+strings.ToLower(q.Name)+" "+host)
			ip, ok := d.answers[strings.ToLower(q.Name)]
			d.mu.Unlock()
			switch {
			case !ok:
				m.Rcode = dns.RcodeNameError
			case q.Qtype == dns.TypeA:
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
					A: net.ParseIP(ip)})
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
	return d
}

func (d *upstreamDNS) queries(substr string) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, s := range d.seen {
		if strings.Contains(s, substr) {
			out = append(out, s)
		}
	}
	return out
}

// podResolvConf is what the kubelet writes for a pod in namespace demo (dnsPolicy ClusterFirst). The
// nameserver address is routed nowhere in the lab: only capture can answer it.
const podResolvConf = `nameserver 10.96.0.53
search demo.svc.cluster.local svc.cluster.local cluster.local
options ndots:5
`

// resolver resolves as a pod's stub resolver does: the candidates of resolv.conf's search list and ndots
// (miekg/dns's ClientConfig.NameList, glibc's order), each asked of the nameserver from inside the pod,
// on to the next on NXDOMAIN. The sockets are connected, so a reply from any other address than the
// nameserver's is never read.
type resolver struct {
	pod *lab.Pod
	cfg *dns.ClientConfig
}

func newResolver(t *testing.T, p *lab.Pod) *resolver {
	t.Helper()
	cfg, err := dns.ClientConfigFromReader(strings.NewReader(podResolvConf))
	if err != nil {
		t.Fatal(err)
	}
	return &resolver{pod: p, cfg: cfg}
}

func (r *resolver) exchange(t *testing.T, proto string, m *dns.Msg) (*dns.Msg, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := r.pod.NS.Dial(ctx, proto, net.JoinHostPort(r.cfg.Servers[0], r.cfg.Port))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	co := &dns.Conn{Conn: c}
	if err := co.WriteMsg(m); err != nil {
		return nil, err
	}
	return co.ReadMsg()
}

// lookup returns the A records (and CNAME targets) the pod's resolver ends up with for name.
func (r *resolver) lookup(t *testing.T, proto, name string) (addrs []string, cname string, rcode int) {
	t.Helper()
	for _, cand := range r.cfg.NameList(name) {
		m := new(dns.Msg)
		m.SetQuestion(cand, dns.TypeA)
		reply, err := r.exchange(t, proto, m)
		if err != nil {
			t.Fatalf("%s query %s from %s: %v", proto, cand, r.pod.Name, err)
		}
		if reply.Id != m.Id {
			t.Fatalf("reply id %d to query %d", reply.Id, m.Id)
		}
		if reply.Rcode == dns.RcodeNameError {
			rcode = reply.Rcode
			continue
		}
		for _, rr := range reply.Answer {
			switch v := rr.(type) {
			case *dns.A:
				addrs = append(addrs, v.A.String())
			case *dns.CNAME:
				cname = v.Target
			}
		}
		return addrs, cname, reply.Rcode
	}
	return nil, "", rcode
}

const dnsLabYAML = `apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-egress}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: demo}
spec: {clusterIP: 10.96.0.20, selector: {app: reviews}, ports: [{name: tcp, port: 9080, targetPort: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: istio-egress, labels: {istio.io/use-waypoint: waypoint}}
spec:
  hosts: [api.example.test]
  addresses: [240.240.0.10]
  resolution: DNS
  ports:
  - {number: 80, name: http, protocol: HTTP}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: auto, namespace: istio-egress, labels: {istio.io/use-waypoint: waypoint}}
spec:
  hosts: [auto.example.test]
  resolution: DNS
  ports:
  - {number: 80, name: http, protocol: HTTP}
`

// TestDNSProxy: the node agent captures an enrolled pod's DNS (UDP and TCP to its nameserver) and answers
// Service names (full and the short forms of the pod's search path) and ServiceEntry hosts from the mesh,
// the pod then reaching the ServiceEntry through its egress waypoint by the answered address; other names
// are forwarded to the node's resolver (a DNS server in a lab pod) over the query's transport; a malformed
// query gets FORMERR and the proxy keeps serving. Both capture modes.
func TestDNSProxy(t *testing.T) {
	tu.RequireRoot(t)
	for _, mode := range []string{agent.CaptureEBPF, agent.CaptureTPROXY} {
		t.Run(mode, func(t *testing.T) { testDNSProxy(t, mode) })
	}
}

func testDNSProxy(t *testing.T, mode string) {
	dir := t.TempDir()
	ca := newEgressCA(t, dir, "egress-ca")
	srvCert := ca.issue(t, dir, "api", false, "api.example.test")
	var wpPod, dnsPod *lab.Pod
	yaml := func(l *lab.Lab) string {
		n0, n1 := l.Nodes[0].Pods, l.Nodes[1].Pods
		wpPod, dnsPod = n0[1], n0[2]
		return dnsLabYAML + pod("client", "demo", "client", "", n0[0]) + pod("reviews", "demo", "reviews", "", n1[0]) +
			waypointYAML("istio-egress", "waypoint", "service", "All", "10.96.1.9", wpPod)
	}
	// The upstream's address is only known once the lab exists: the agents read it from here.
	var upstream string
	c := startCluster(t, 2, 3, mode, func(l *lab.Lab) string {
		y := yaml(l)
		upstream = dnsPod.IP.String()
		return y
	}, func(_ int, cfg *agent.Config) {
		cfg.DNSCapture = true
		cfg.DNSUpstreams = []string{upstream}
	})
	n0, n1 := c.Lab.Nodes[0].Pods, c.Lab.Nodes[1].Pods
	client, backend := n0[0], n1[1]
	serve(t, n1[0], 8080)
	up := startUpstreamDNS(t, dnsPod, map[string]string{
		"api.example.test.":     backend.IP.String(), // for the waypoint's own resolver
		"auto.example.test.":    backend.IP.String(),
		"external.example.org.": "192.0.2.9",
	})
	startEgressBackend(t, backend, "backend", srvCert, ca)
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+dnsPod.IP.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, wpLog := startL7Waypoint(t, c, wpPod, "istio-egress", "waypoint", "", func(cfg *waypoint.Config) { cfg.ResolvConf = resolv })
	r := newResolver(t, client)

	for _, proto := range []string{"udp", "tcp"} {
		t.Run(proto, func(t *testing.T) {
			for _, name := range []string{"reviews.demo.svc.cluster.local", "reviews", "reviews.demo", "reviews.demo.svc", "reviews.demo.svc.cluster.local."} {
				addrs, _, rcode := r.lookup(t, proto, name)
				if rcode != dns.RcodeSuccess || len(addrs) != 1 || addrs[0] != "10.96.0.20" {
					t.Errorf("%s: rcode %s, addresses %v; want the VIP 10.96.0.20", name, dns.RcodeToString[rcode], addrs)
				}
			}
			addrs, cname, rcode := r.lookup(t, proto, "api.example.test")
			if rcode != dns.RcodeSuccess || len(addrs) != 1 || addrs[0] != "240.240.0.10" || cname != "api.example.test." {
				t.Errorf("ServiceEntry host: rcode %s, addresses %v, cname %q; want 240.240.0.10 behind a CNAME from the search form",
					dns.RcodeToString[rcode], addrs, cname)
			}
			before := len(up.queries(proto + " external.example.org. "))
			addrs, _, rcode = r.lookup(t, proto, "external.example.org.")
			if rcode != dns.RcodeSuccess || len(addrs) != 1 || addrs[0] != "192.0.2.9" {
				t.Errorf("forwarded name: rcode %s, addresses %v; want 192.0.2.9 from the upstream", dns.RcodeToString[rcode], addrs)
			}
			got := up.queries(proto + " external.example.org. ")
			if len(got) != before+1 {
				t.Fatalf("upstream saw %v over %s, want one more query", got, proto)
			}
			if strings.HasSuffix(got[len(got)-1], " "+client.IP.String()) {
				t.Errorf("upstream query %q came from the pod itself: capture missed it", got[len(got)-1])
			}
			if _, _, rcode = r.lookup(t, proto, "nothere.example.org."); rcode != dns.RcodeNameError {
				t.Errorf("unknown name: rcode %s, want the upstream's NXDOMAIN", dns.RcodeToString[rcode])
			}
		})
	}

	t.Run("connects to the Service and the ServiceEntries by the answered addresses", func(t *testing.T) {
		addrs, _, _ := r.lookup(t, "udp", "reviews")
		got, err := call(t, client, net.JoinHostPort(addrs[0], "9080"))
		if err != nil || !strings.HasPrefix(got, n1[0].Name+" ") {
			t.Fatalf("call reviews at %v: %q, %v", addrs, got, err)
		}
		hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return client.NS.Dial(ctx, "tcp", addr) }}}
		// api has its address in the file; auto has none and gets one allocated (240.240.0.0/16) by the
		// compiler both the agents and the waypoint run. Neither address is routed anywhere in the lab:
		// only the waypoint can answer.
		allocated := netip.MustParsePrefix("240.240.0.0/16")
		for _, host := range []string{"api.example.test", "auto.example.test"} {
			addrs, _, _ := r.lookup(t, "udp", host)
			if len(addrs) != 1 || (host == "auto.example.test" && !allocated.Contains(netip.MustParseAddr(addrs[0]))) {
				t.Fatalf("%s resolved to %v", host, addrs)
			}
			req, _ := http.NewRequest(http.MethodGet, "http://"+net.JoinHostPort(addrs[0], "80")+"/", nil)
			req.Host = host
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatalf("GET %s at %v: %v", host, addrs, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if want := "backend tls=false client= host=" + host + " sni="; resp.StatusCode != 200 || string(b) != want {
				t.Fatalf("GET %s: %d %q, want 200 %q", host, resp.StatusCode, b, want)
			}
			if !strings.Contains(wpLog.String(), host) {
				t.Errorf("the waypoint's log does not show the request to %s:\n%s", host, wpLog.String())
			}
		}
	})

	t.Run("malformed query gets FORMERR and the proxy keeps serving", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn, err := client.NS.Dial(ctx, "udp", "10.96.0.53:53")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := conn.Write([]byte{0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 7, 'e', 'x'}); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 512)
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(buf[:n]); err != nil || m.Id != 0xbeef || m.Rcode != dns.RcodeFormatError {
			t.Fatalf("reply %v (%v), want FORMERR with id 0xbeef", m, err)
		}
		if addrs, _, _ := r.lookup(t, "udp", "reviews"); len(addrs) != 1 {
			t.Fatalf("after a malformed query: %v", addrs)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		a := c.Agents[0]
		for _, name := range []string{"istio_dns_requests_total", "istio_dns_upstream_requests_total", "ambit_dns_responses_total"} {
			if v := meshlab.Counter(a, name); v < 1 {
				t.Errorf("%s = %v", name, v)
			}
		}
		if v := meshlab.Counter(a, "istio_dns_upstream_failures_total"); v != 0 {
			t.Errorf("istio_dns_upstream_failures_total = %v, want 0", v)
		}
	})
}
