package upstream

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/waypoint/model"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	file string // PEM of cert
}

func newCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, file: filepath.Join(dir, name+".pem")}
	os.WriteFile(ca.file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	return ca
}

// issue returns a leaf certificate for dns names, and writes it and its key to dir/name{.pem,-key.pem}.
func (ca *testCA) issue(t *testing.T, dir, name string, client bool, dnsNames ...string) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	usage := x509.ExtKeyUsageServerAuth
	if client {
		usage = x509.ExtKeyUsageClientAuth
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name}, DNSNames: dnsNames,
		ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	os.WriteFile(filepath.Join(dir, name+".pem"), certPEM, 0o644)
	os.WriteFile(filepath.Join(dir, name+"-key.pem"), keyPEM, 0o600)
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestTLSConfig(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	other := newCA(t, dir, "other")
	srvCert := ca.issue(t, dir, "server", false, "api.example.test")
	ca.issue(t, dir, "client", true)
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	// handshake runs a TLS server (requiring a client certificate when mutual) over a pipe and returns the
	// client certificate the server saw and the client's error.
	handshake := func(cfg *tls.Config, mutual bool) (string, error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		scfg := &tls.Config{Certificates: []tls.Certificate{srvCert}}
		if mutual {
			scfg.ClientAuth, scfg.ClientCAs = tls.RequireAndVerifyClientCert, pool
		}
		seen := make(chan string, 1)
		go func() {
			defer s.Close()
			ts := tls.Server(s, scfg)
			ts.SetDeadline(time.Now().Add(10 * time.Second))
			if ts.Handshake() == nil && len(ts.ConnectionState().PeerCertificates) > 0 {
				seen <- ts.ConnectionState().PeerCertificates[0].Subject.CommonName
			}
			close(seen)
		}()
		tc := tls.Client(c, cfg)
		tc.SetDeadline(time.Now().Add(10 * time.Second))
		err = tc.Handshake()
		if err == nil {
			// TLS 1.3: the server's verdict on the client certificate comes with the first read.
			tc.Read(make([]byte, 1))
		}
		c.Close()
		return <-seen, err
	}
	tests := []struct {
		name   string
		tls    model.TLS
		host   string
		mutual bool
		err    string
		client string
	}{
		{name: "SIMPLE, right CA, SNI from the host", tls: model.TLS{Mode: model.TLSSimple, CACertificates: ca.file}, host: "api.example.test"},
		{name: "SIMPLE, wrong CA", tls: model.TLS{Mode: model.TLSSimple, CACertificates: other.file}, host: "api.example.test", err: "unknown authority"},
		{name: "SIMPLE, wrong name", tls: model.TLS{Mode: model.TLSSimple, CACertificates: ca.file}, host: "other.example.test", err: "not other.example.test"},
		{name: "SIMPLE, sni overrides the host", tls: model.TLS{Mode: model.TLSSimple, CACertificates: ca.file, SNI: "api.example.test"}, host: "x"},
		{name: "subjectAltNames replace the SNI in verification", tls: model.TLS{Mode: model.TLSSimple, CACertificates: ca.file,
			SubjectAltNames: []string{"api.example.test"}}, host: "x"},
		{name: "subjectAltNames mismatch", tls: model.TLS{Mode: model.TLSSimple, CACertificates: ca.file,
			SubjectAltNames: []string{"nope.example.test"}}, host: "api.example.test", err: "names none of"},
		{name: "subjectAltNames, wrong CA", tls: model.TLS{Mode: model.TLSSimple, CACertificates: other.file,
			SubjectAltNames: []string{"api.example.test"}}, host: "api.example.test", err: "unknown authority"},
		{name: "insecureSkipVerify", tls: model.TLS{Mode: model.TLSSimple, CACertificates: other.file, InsecureSkipVerify: true}, host: "x"},
		{name: "MUTUAL presents the client certificate", tls: model.TLS{Mode: model.TLSMutual, CACertificates: ca.file,
			ClientCertificate: filepath.Join(dir, "client.pem"), PrivateKey: filepath.Join(dir, "client-key.pem")},
			host: "api.example.test", mutual: true, client: "client"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := TLSConfig(&tt.tls, tt.host, nil)
			if err != nil {
				t.Fatal(err)
			}
			client, err := handshake(cfg, tt.mutual)
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("handshake: %v, want %q", err, tt.err)
			}
			if client != tt.client {
				t.Errorf("server saw client %q, want %q", client, tt.client)
			}
		})
	}
	if _, err := TLSConfig(&model.TLS{Mode: model.TLSSimple, CACertificates: filepath.Join(dir, "missing.pem")}, "x", nil); err == nil ||
		!strings.Contains(err.Error(), "read caCertificates") {
		t.Errorf("missing CA file: %v", err)
	}
	if _, err := TLSConfig(&model.TLS{Mode: model.TLSMutual, ClientCertificate: ca.file, PrivateKey: ca.file}, "x", nil); err == nil {
		t.Error("a certificate without its key was accepted")
	}
}
