package waypoint_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/test/lab"
	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint"
)

// egressCA is a test CA writing PEM files the waypoint reads (DestinationRule caCertificates and client
// certificate paths).
type egressCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string
}

func newEgressCA(t *testing.T, dir, name string) *egressCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &egressCA{cert: cert, key: key, file: filepath.Join(dir, name+".pem")}
	if err := os.WriteFile(ca.file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return ca
}

// issue returns a leaf certificate named cn (and dnsNames), written to dir/cn.pem and dir/cn-key.pem.
func (ca *egressCA) issue(t *testing.T, dir, cn string, client bool, dnsNames ...string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	usage := x509.ExtKeyUsageServerAuth
	if client {
		usage = x509.ExtKeyUsageClientAuth
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn}, DNSNames: dnsNames,
		ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	if err := os.WriteFile(filepath.Join(dir, cn+".pem"), certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, cn+"-key.pem"), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// labDNS is a real DNS server (github.com/miekg/dns) on :53 of a lab pod, answering A queries from a table
// that the test changes, with a short TTL; it records where queries came from.
type labDNS struct {
	mu      sync.Mutex
	answers map[string]string // guarded by mu; FQDN -> IPv4
	sources map[string]int    // guarded by mu; querier IP -> queries
}

func startLabDNS(t *testing.T, p *lab.Pod, ttl uint32, answers map[string]string) *labDNS {
	t.Helper()
	d := &labDNS{answers: answers, sources: map[string]int{}}
	var pc net.PacketConn
	if err := p.NS.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", ":53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		host, _, _ := net.SplitHostPort(w.RemoteAddr().String())
		d.mu.Lock()
		d.sources[host]++
		ip, ok := d.answers[strings.ToLower(q.Name)]
		d.mu.Unlock()
		switch {
		case !ok:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: ttl},
				A: net.ParseIP(ip)})
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
	return d
}

func (d *labDNS) set(name, ip string) {
	d.mu.Lock()
	d.answers[name] = ip
	d.mu.Unlock()
}

func (d *labDNS) queriesFrom() map[string]int {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string]int{}
	for k, v := range d.sources {
		out[k] = v
	}
	return out
}

// startEgressBackend serves, in lab pod p (outside the mesh: no Pod object names it), plain HTTP on :80,
// HTTPS on :443 and HTTPS requiring a client certificate of ca on :8443. Each answer names the backend,
// whether TLS carried it, the client certificate's CN and the Host.
func startEgressBackend(t *testing.T, p *lab.Pod, name string, cert tls.Certificate, ca *egressCA) {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		client := ""
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			client = r.TLS.PeerCertificates[0].Subject.CommonName
		}
		fmt.Fprintf(w, "%s tls=%t client=%s host=%s sni=%s", name, r.TLS != nil, client, r.Host, sni(r))
	})
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	for _, l := range []struct {
		port string
		tls  *tls.Config
	}{
		{":80", nil},
		{":443", &tls.Config{Certificates: []tls.Certificate{cert}}},
		{":8443", &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}},
	} {
		ln, err := p.NS.Listen(context.Background(), "tcp", l.port)
		if err != nil {
			t.Fatal(err)
		}
		if l.tls != nil {
			ln = tls.NewListener(ln, l.tls)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ErrorLog: nil}
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.Serve(ln)
		}()
		t.Cleanup(func() {
			srv.Close()
			<-done
		})
	}
}

func sni(r *http.Request) string {
	if r.TLS == nil {
		return ""
	}
	return r.TLS.ServerName
}

const egressBaseYAML = `apiVersion: v1
kind: Namespace
metadata: {name: app, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: istio-egress}
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
  - {number: 443, name: http-tls, protocol: HTTP}
  - {number: 8443, name: http-mtls, protocol: HTTP}
  - {number: 9443, name: tls, protocol: TLS, targetPort: 443}
`

// TestEgressWaypoint is the istio.io egress example in the lab: a ServiceEntry with resolution DNS in
// namespace istio-egress, bound to the waypoint there, reached from an ambient namespace. The waypoint
// resolves the host with its own resolver (a real DNS server in a lab pod) at request time, honours the
// TTL, and originates TLS per DestinationRule (SIMPLE, MUTUAL, portLevelSettings) while the client speaks
// plain HTTP. No traffic leaves the lab.
func TestEgressWaypoint(t *testing.T) {
	dir := t.TempDir()
	ca := newEgressCA(t, dir, "egress-ca")
	otherCA := newEgressCA(t, dir, "other-ca")
	srvCert := ca.issue(t, dir, "api", false, "api.example.test")
	ca.issue(t, dir, "waypoint-client", true)
	var wpPod *lab.Pod
	yamlWith := func(extra string) func(*lab.Lab) string {
		return func(l *lab.Lab) string {
			n0 := l.Nodes[0].Pods
			wpPod = n0[1]
			return egressBaseYAML + pod("client", "app", "client", "", n0[0]) +
				waypointYAML("istio-egress", "waypoint", "service", "All", "10.96.1.9", wpPod) + extra
		}
	}
	drYAML := func(caFile, extra string) string {
		return fmt.Sprintf(`---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: istio-egress}
spec:
  host: api.example.test
  trafficPolicy:
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: SIMPLE, caCertificates: %[1]s%[3]s}
    - port: {number: 8443}
      tls: {mode: MUTUAL, caCertificates: %[1]s, clientCertificate: %[2]s/waypoint-client.pem, privateKey: %[2]s/waypoint-client-key.pem}
`, caFile, dir, extra)
	}
	c := startCluster(t, 2, 3, agent.CaptureEBPF, yamlWith(drYAML(ca.file, "")))
	n0, n1 := c.Lab.Nodes[0].Pods, c.Lab.Nodes[1].Pods
	client, dnsPod := n0[0], n0[2]
	startEgressBackend(t, n1[0], "backend-1", srvCert, ca)
	startEgressBackend(t, n1[1], "backend-2", srvCert, ca)
	dnsSrv := startLabDNS(t, dnsPod, 1, map[string]string{"api.example.test.": n1[0].IP.String()})
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver "+dnsPod.IP.String()+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, wpLog := startL7Waypoint(t, c, wpPod, "istio-egress", "waypoint", "", func(cfg *waypoint.Config) { cfg.ResolvConf = resolv })

	apply := func(t *testing.T, extra string) {
		t.Helper()
		before := strings.Count(wpLog.String(), "L7 configuration applied")
		c.Rewrite(t, yamlWith(extra)(c.Lab))
		tu.WaitFor(t, 10*time.Second, "L7 configuration applied", func() bool {
			return strings.Count(wpLog.String(), "L7 configuration applied") > before
		})
	}
	hc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return client.NS.Dial(ctx, "tcp", addr) }}}
	get := func(t *testing.T, port string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, "http://240.240.0.10:"+port+"/", nil)
		req.Host = "api.example.test"
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("GET :%s: %v", port, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	want := func(t *testing.T, port, body string) {
		t.Helper()
		code, got := get(t, port)
		if code != 200 || got != body {
			t.Fatalf("GET :%s: %d %q, want 200 %q", port, code, got, body)
		}
	}

	t.Run("plain HTTP through the waypoint, resolved by the waypoint's resolver", func(t *testing.T) {
		want(t, "80", "backend-1 tls=false client= host=api.example.test sni=")
		q := dnsSrv.queriesFrom()
		if q[wpPod.IP.String()] == 0 {
			t.Fatalf("DNS queries by source %v: none from the waypoint %s", q, wpPod.IP)
		}
		for src := range q {
			if src != wpPod.IP.String() {
				t.Errorf("DNS query from %s: only the waypoint resolves the host", src)
			}
		}
	})
	t.Run("SIMPLE on port 443 with the right CA while the client speaks plain HTTP", func(t *testing.T) {
		want(t, "443", "backend-1 tls=true client= host=api.example.test sni=api.example.test")
	})
	t.Run("MUTUAL on port 8443: the backend sees the waypoint's client certificate", func(t *testing.T) {
		want(t, "8443", "backend-1 tls=true client=waypoint-client host=api.example.test sni=api.example.test")
	})
	t.Run("SIMPLE with the wrong CA answers 503 UF with a TLS error", func(t *testing.T) {
		apply(t, drYAML(otherCA.file, ""))
		code, body := get(t, "443")
		if code != 503 || !strings.Contains(body, "transport failure reason: TLS_error") {
			t.Fatalf("wrong CA: %d %q", code, body)
		}
		uf := regexp.MustCompile(`status=503 response_flags=(\S+,)?UF[ ,]`) // with URX: the default retries ran out
		tu.WaitFor(t, 5*time.Second, "UF in the access log", func() bool { return uf.MatchString(wpLog.String()) })
		want(t, "80", "backend-1 tls=false client= host=api.example.test sni=") // port 80 has no tls
	})
	t.Run("a field Ambit does not implement is surfaced, not ignored", func(t *testing.T) {
		apply(t, drYAML(ca.file, ", credentialName: api-credential"))
		if !strings.Contains(wpLog.String(), "spec.trafficPolicy.portLevelSettings[0].tls.credentialName: not implemented") {
			t.Fatalf("no warning for credentialName in the waypoint's log")
		}
		want(t, "443", "backend-1 tls=true client= host=api.example.test sni=api.example.test")
		apply(t, drYAML(ca.file, ", credentialName: api-credential")+"# another version of the file\n")
		if n := strings.Count(wpLog.String(), "tls.credentialName: not implemented"); n != 1 {
			t.Errorf("the warning was logged %d times over two versions, want once", n)
		}
	})
	t.Run("TLS from the client passes through the waypoint at L4 to the resolved host", func(t *testing.T) {
		pool := x509.NewCertPool()
		pool.AddCert(ca.cert)
		tc := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
			TLSClientConfig: &tls.Config{RootCAs: pool},
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				_, port, _ := net.SplitHostPort(addr)
				return client.NS.Dial(ctx, "tcp", "240.240.0.10:"+port)
			}}}
		resp, err := tc.Get("https://api.example.test:9443/")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if got := string(b); resp.StatusCode != 200 || got != "backend-1 tls=true client= host=api.example.test:9443 sni=api.example.test" {
			t.Fatalf("passthrough: %d %q", resp.StatusCode, got)
		}
	})
	t.Run("a changed answer is used once its TTL expired", func(t *testing.T) {
		dnsSrv.set("api.example.test.", n1[1].IP.String())
		tu.WaitFor(t, 10*time.Second, "backend-2 answers after the TTL", func() bool {
			_, body := get(t, "80")
			return strings.HasPrefix(body, "backend-2 ")
		})
		want(t, "443", "backend-2 tls=true client= host=api.example.test sni=api.example.test")
	})
}
