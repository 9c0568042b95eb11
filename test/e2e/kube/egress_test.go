//go:build e2e

package kube

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
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/kubelet"
)

// The namespaces of TestEgress: the egress waypoint's (the istio.io example's istio-egress), the ambient
// client's, and the backend's, outside the mesh (no dataplane-mode label: the "external" API server).
const (
	egressNS       = "istio-egress"
	egressClientNS = "egress-client"
	egressExtNS    = "egress-ext"
	egressHost     = "api.example.test"
	egressVIP      = "240.240.0.10"
)

func egressApp() string {
	return fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: %[1]s}
---
apiVersion: v1
kind: Namespace
metadata: {name: %[2]s, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: %[3]s}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: %[2]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-0}
      containers:
      - {name: echo, image: ambit-e2e/echo:1, args: [--port=9080]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: %[3]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec:
      nodeSelector: {kubernetes.io/hostname: node-1}
      containers:
      - {name: echo, image: ambit-e2e/echo:1, args: [--port=9080]}
`, egressNS, egressClientNS, egressExtNS)
}

// egressServiceEntry is the istio.io egress example's ServiceEntry, with an address the client dials directly
// (without one, the agent's DNS proxy would answer the host with an auto-allocated address: see
// waypoint/dns_lab_test.go), in the waypoint's namespace, which --enroll-namespace binds to the waypoint.
const egressServiceEntry = `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: istio-egress}
spec:
  hosts: [api.example.test]
  addresses: [240.240.0.10]
  resolution: DNS
  location: MESH_EXTERNAL
  ports:
  - {number: 80, name: http, protocol: HTTP}
  - {number: 443, name: http-tls, protocol: HTTP}
`

// egressDestinationRule originates TLS on port 443, verifying the server with the mesh root that istiod's
// waypoint template mounts (ConfigMap istio-ca-root-cert at /var/run/secrets/istio).
const egressDestinationRule = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: istio-egress}
spec:
  host: api.example.test
  trafficPolicy:
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: SIMPLE, caCertificates: /var/run/secrets/istio/root-cert.pem}
`

// TestEgress is the istio.io egress example on the cluster, configured from the API server only: a
// ServiceEntry with resolution DNS in istio-egress, bound to the waypoint there (istiod's template), reached
// from a client in an ambient namespace. The waypoint resolves api.example.test with its pod's resolver (the
// cluster DNS, which answers the name with the backend pod's address: no traffic leaves the machine) and
// originates TLS on port 443 per DestinationRule while the client speaks plain HTTP.
func TestEgress(t *testing.T) {
	c := need(t)
	c.apply(t, egressApp())
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_ = c.kubelet.SetDNSHost(egressHost, netip.Addr{})
		_, _ = c.stack.Kubectl(ctx, "delete", "namespace", egressNS, egressClientNS, egressExtNS, "--wait=false")
	})
	c.kubectl(t, "rollout", "status", "deployment/client", "-n", egressClientNS, "--timeout=120s")
	c.kubectl(t, "rollout", "status", "deployment/api", "-n", egressExtNS, "--timeout=120s")
	out := c.mustAmbitctl(t, "waypoint", "apply", "-n", egressNS, "--enroll-namespace", "--wait")
	if !strings.Contains(out, `namespace istio-egress labeled with "istio.io/use-waypoint: waypoint"`) {
		t.Fatalf("apply --enroll-namespace printed %q", out)
	}
	c.kubectl(t, "rollout", "status", "deployment/waypoint", "-n", egressNS, "--timeout=120s")
	wp, wpPod := c.podBy(t, egressNS, "gateway.networking.k8s.io/gateway-name=waypoint")
	_, client := c.podBy(t, egressClientNS, "app=client")
	_, backend := c.podBy(t, egressExtNS, "app=api")

	// The "external" server: HTTP on :80 and HTTPS on :443 (a certificate for api.example.test from the mesh
	// CA) in the backend pod's network namespace.
	startEgressServer(t, backend, egressCert(t, filepath.Join(c.stack.Dir, "istiod", "etc", "cacerts")))
	if err := c.kubelet.SetDNSHost(egressHost, backend.IP); err != nil {
		t.Fatal(err)
	}
	c.apply(t, egressServiceEntry)
	c.apply(t, egressDestinationRule)

	get := func(port string) (int, string, error) {
		ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
		defer cancel()
		hc := &http.Client{Transport: &http.Transport{DialContext: client.NS.Dial, DisableKeepAlives: true}}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+net.JoinHostPort(egressVIP, port)+"/", nil)
		if err != nil {
			return 0, "", err
		}
		req.Host = egressHost
		resp, err := hc.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	// until sends requests until one answers 200 with body want (for up to 60 s while istiod, the agents and
	// the waypoint catch up with the ServiceEntry and the DestinationRule).
	until := func(t *testing.T, port, want string) {
		t.Helper()
		var code int
		var body string
		var err error
		waitFor(t, 60*time.Second, "200 "+want+" on port "+port, func() bool {
			code, body, err = get(port)
			return err == nil && code == 200 && body == want
		})
	}
	from := wpPod.IP.String()
	t.Run("plain HTTP through the waypoint to the host its resolver found", func(t *testing.T) {
		until(t, "80", "tls=false sni= host="+egressHost+" from="+from)
		if ls := c.accessLines(egressNS, wp.Name, "istio-proxy", map[string]string{"msg": "request complete",
			"upstream": hostPort(backend.IP.String(), 80)}); len(ls) == 0 {
			t.Fatalf("the waypoint logged no request to %s", hostPort(backend.IP.String(), 80))
		}
	})
	t.Run("TLS originated on port 443 with the mounted mesh root while the client speaks HTTP", func(t *testing.T) {
		until(t, "443", "tls=true sni="+egressHost+" host="+egressHost+" from="+from)
		if ls := c.accessLines(egressNS, wp.Name, "istio-proxy", map[string]string{"msg": "request complete",
			"upstream": hostPort(backend.IP.String(), 443)}); len(ls) == 0 {
			t.Fatalf("the waypoint logged no request to %s", hostPort(backend.IP.String(), 443))
		}
	})
	t.Run("a field Ambit does not implement is a Warning Event on its object", func(t *testing.T) {
		c.apply(t, strings.Replace(egressDestinationRule, "caCertificates:", "credentialName: api-credential, caCertificates:", 1))
		const want = "Warning UnsupportedField DestinationRule/api"
		got := ""
		waitFor(t, 30*time.Second, "an UnsupportedField Event on DestinationRule api", func() bool {
			out, _ := c.stack.Kubectl(t.Context(), "get", "events", "-n", egressNS, "--field-selector", "reason=UnsupportedField",
				"-o", `jsonpath={range .items[*]}{.type} {.reason} {.involvedObject.kind}/{.involvedObject.name} {.message}{"\n"}{end}`)
			got = strings.TrimSpace(string(out))
			return strings.HasPrefix(got, want)
		})
		if !strings.Contains(got, "spec.trafficPolicy.portLevelSettings[0].tls.credentialName: not implemented") || strings.Count(got, "\n") != 0 {
			t.Errorf("events %q, want one naming the field", got)
		}
		// The rest of the rule is in force.
		until(t, "443", "tls=true sni="+egressHost+" host="+egressHost+" from="+from)
	})
	t.Run("a ServiceEntry resolution Ambit does not implement is a Warning Event on its object", func(t *testing.T) {
		c.apply(t, `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: wildcard, namespace: `+egressNS+`}
spec:
  hosts: ["*.wildcard.example.test"]
  resolution: DYNAMIC_DNS
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
`)
		const want = "Warning UnsupportedField ServiceEntry/wildcard spec.resolution: DYNAMIC_DNS is not implemented"
		got := ""
		waitFor(t, 30*time.Second, "an UnsupportedField Event on ServiceEntry wildcard", func() bool {
			out, _ := c.stack.Kubectl(t.Context(), "get", "events", "-n", egressNS, "--field-selector",
				"reason=UnsupportedField,involvedObject.kind=ServiceEntry",
				"-o", `jsonpath={range .items[*]}{.type} {.reason} {.involvedObject.kind}/{.involvedObject.name} {.message}{"\n"}{end}`)
			got = strings.TrimSpace(string(out))
			return strings.HasPrefix(got, want)
		})
		if strings.Count(got, "\n") != 0 {
			t.Errorf("events %q, want one", got)
		}
		c.kubectl(t, "delete", "serviceentry", "wildcard", "-n", egressNS)
		// The waypoint keeps serving the other entries.
		until(t, "80", "tls=false sni= host="+egressHost+" from="+from)
	})
}

// egressCert issues a server certificate for egressHost from the mesh's signing CA in cacerts (istiod's
// plugged-in CA: ca-cert.pem, ca-key.pem), with the intermediate in its chain.
func egressCert(t *testing.T, cacerts string) tls.Certificate {
	t.Helper()
	caPEM, err := os.ReadFile(filepath.Join(cacerts, "ca-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(cacerts, "ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	ca, err := tls.X509KeyPair(caPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(ca.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: egressHost},
		DNSNames: []string{egressHost}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, ca.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	chain := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), caPEM...)
	cert, err := tls.X509KeyPair(chain, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// startEgressServer serves plain HTTP on port 80 and HTTPS on port 443 of pod p's address (the kubelet's
// proxy of the kubernetes Service holds 443 of its ClusterIP in every pod namespace, so not of all addresses);
// each answer says whether TLS carried it, the SNI, the Host and the address the request came from.
func startEgressServer(t *testing.T, p kubelet.Pod, cert tls.Certificate) {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sni := ""
		if r.TLS != nil {
			sni = r.TLS.ServerName
		}
		from, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "tls=%t sni=%s host=%s from=%s", r.TLS != nil, sni, r.Host, from)
	})
	for _, l := range []struct {
		port string
		tls  *tls.Config
	}{{"80", nil}, {"443", &tls.Config{Certificates: []tls.Certificate{cert}}}} {
		ln, err := p.NS.Listen(context.Background(), "tcp", net.JoinHostPort(p.IP.String(), l.port))
		if err != nil {
			t.Fatal(err)
		}
		if l.tls != nil {
			ln = tls.NewListener(ln, l.tls)
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = srv.Serve(ln)
		}()
		t.Cleanup(func() {
			_ = srv.Close()
			<-done
		})
	}
}
