package hboneinterop

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	istiohbone "istio.io/istio/pkg/hbone"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/test/testutil"
)

type pki struct {
	serverID, clientID spiffeid.ID
	server, client     *hbone.Credentials
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	ca, err := testutil.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{
		serverID: spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/echo"),
		clientID: spiffeid.RequireFromString("spiffe://cluster.local/ns/istio-system/sa/ztunnel"),
	}
	issue := func(id spiffeid.ID) *hbone.Credentials {
		cert, roots, err := ca.Issue(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return &hbone.Credentials{ID: id, Certificate: cert, Roots: roots}
	}
	p.server, p.client = issue(p.serverID), issue(p.clientID)
	return p
}

// verifySPIFFE returns a VerifyPeerCertificate func that checks the chain against roots and requires
// the URI SAN want, as an Istio peer configured for SPIFFE would (peers.md section 10).
func verifySPIFFE(roots *x509.CertPool, usage x509.ExtKeyUsage, want spiffeid.ID) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("no peer certificate")
		}
		var certs []*x509.Certificate
		for _, der := range raw {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return err
			}
			certs = append(certs, c)
		}
		inter := x509.NewCertPool()
		for _, c := range certs[1:] {
			inter.AddCert(c)
		}
		if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			return err
		}
		for _, u := range certs[0].URIs {
			if u.String() == want.String() {
				return nil
			}
		}
		return fmt.Errorf("peer SANs %v do not include %v", certs[0].URIs, want)
	}
}

// echoServer is a plain TCP echo on loopback that half-closes after EOF.
func echoServer(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				_, _ = io.Copy(c, c)
				_ = c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); wg.Wait() })
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// TestIstioClientToAmbitServer dials Ambit's HBONE server with istio.io/istio/pkg/hbone's dialer over
// mTLS and exchanges bytes both ways, including a half-close from the Istio side.
func TestIstioClientToAmbitServer(t *testing.T) {
	testutil.CheckGoroutines(t)
	p := newPKI(t)
	type seen struct {
		peer      spiffeid.ID
		authority string
	}
	seenc := make(chan seen, 4)
	h := hbone.HandlerFunc(func(ctx context.Context, r *hbone.Request) error {
		seenc <- seen{r.PeerID, r.Authority}
		if r.AuthorityPort == 403 {
			return &hbone.StatusError{Code: http.StatusForbidden, Err: errors.New("denied by test policy")}
		}
		c, err := r.Accept(nil)
		if err != nil {
			return err
		}
		// Upper-case echo, so the test sees the bytes went through this handler.
		buf := make([]byte, 32<<10)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if _, werr := c.Write(bytes.ToUpper(buf[:n])); werr != nil {
					return werr
				}
			}
			if err == io.EOF {
				return c.(*hbone.Stream).CloseWrite()
			}
			if err != nil {
				return err
			}
		}
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &hbone.Server{
		Credentials: func(context.Context, netip.AddrPort) (*hbone.Credentials, error) { return p.server, nil },
		Handler:     h,
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(context.Background(), ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })

	timeout := 10 * time.Second
	cfg := &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{p.client.Certificate},
		InsecureSkipVerify:    true, // identity is checked below, by URI SAN
		VerifyPeerCertificate: verifySPIFFE(p.client.Roots, x509.ExtKeyUsageServerAuth, p.serverID),
		NextProtos:            []string{"h2"},
	}
	d := istiohbone.NewDialer(istiohbone.Config{ProxyAddress: ln.Addr().String(), TLS: cfg, Timeout: &timeout})

	c, err := d.DialContext(context.Background(), "tcp", "10.1.2.3:8080")
	if err != nil {
		t.Fatalf("istio dial: %v", err)
	}
	defer c.Close()
	s := <-seenc
	if s.peer != p.clientID || s.authority != "10.1.2.3:8080" {
		t.Fatalf("server saw peer %v authority %q", s.peer, s.authority)
	}
	msg := strings.Repeat("hbone interop ", 20000) // larger than one window update batch and one frame
	go func() {
		_, _ = io.WriteString(c, msg)
		// Istio's dialer returns a net.Pipe end: closing it ends the request body (END_STREAM).
	}()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(got) != strings.ToUpper(msg) {
		t.Fatal("echo mismatch")
	}

	// A refusal from Ambit's handler reaches Istio's client as a failed CONNECT.
	if _, err := d.DialContext(context.Background(), "tcp", "10.1.2.3:403"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("istio dial to a refused target: %v", err)
	}
	// A client whose certificate Ambit's server does not trust is refused.
	stranger, err := testutil.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	bad, _, err := stranger.Issue(p.clientID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	badCfg := cfg.Clone()
	badCfg.Certificates = []tls.Certificate{bad}
	bd := istiohbone.NewDialer(istiohbone.Config{ProxyAddress: ln.Addr().String(), TLS: badCfg, Timeout: &timeout})
	if bc, err := bd.DialContext(context.Background(), "tcp", "10.1.2.3:8080"); err == nil {
		bc.Close()
		t.Fatal("untrusted Istio client accepted")
	}
}

// TestAmbitClientToIstioServer dials Istio's HBONE server (hbone.NewServer over mTLS) with Ambit's pool;
// Istio's server connects to the :authority, a TCP echo server.
func TestAmbitClientToIstioServer(t *testing.T) {
	testutil.CheckGoroutines(t)
	p := newPKI(t)
	echo := echoServer(t)

	srv := istiohbone.NewServer()
	// peers.md section 10 gotcha: NewServer enables only HTTP/1 and h2c; h2 over TLS must be switched on.
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetHTTP2(true)
	srv.Protocols = &protos
	srv.TLSConfig = &tls.Config{
		MinVersion:            tls.VersionTLS13,
		Certificates:          []tls.Certificate{p.server.Certificate},
		ClientAuth:            tls.RequireAnyClientCert,
		VerifyPeerCertificate: verifySPIFFE(p.server.Roots, x509.ExtKeyUsageClientAuth, p.clientID),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})

	pool, err := hbone.NewPool(hbone.PoolOptions{
		Credentials: func(context.Context, spiffeid.ID) (*hbone.Credentials, error) { return p.client, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	target := hbone.Target{
		NextHop:   ln.Addr().(*net.TCPAddr).AddrPort(),
		Authority: echo.String(),
		Source:    p.clientID,
		Expected:  []spiffeid.ID{p.serverID},
		Header:    http.Header{hbone.HeaderBaggage: {hbone.Baggage{Namespace: "demo"}.String()}},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var g sync.WaitGroup
	errs := make(chan error, 5)
	for i := range 5 { // several streams on one pooled connection, bytes both ways, half-close
		g.Add(1)
		go func() {
			defer g.Done()
			c, err := pool.Dial(ctx, target)
			if err != nil {
				errs <- fmt.Errorf("ambit dial: %w", err)
				return
			}
			defer c.Close()
			if id := c.(*hbone.Stream).PeerID(); id != p.serverID {
				errs <- fmt.Errorf("peer %v", id)
				return
			}
			msg := bytes.Repeat([]byte{byte('a' + i)}, 300_000+i)
			go func() {
				_, _ = c.Write(msg)
				_ = c.(*hbone.Stream).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				errs <- fmt.Errorf("read echo: %w", err)
				return
			}
			if !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("stream %d: echo mismatch (%d of %d bytes)", i, len(got), len(msg))
			}
		}()
	}
	g.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if st := pool.Stats(); st.Conns != 1 {
		t.Errorf("pool stats %+v, want the streams on one connection", st)
	}

	// Istio's server presents demo/sa/echo; expecting another identity must fail the handshake.
	wrong := target
	wrong.Expected = []spiffeid.ID{spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/other")}
	if c, err := pool.Dial(ctx, wrong); !errors.Is(err, hbone.ErrPeerIdentity) {
		if c != nil {
			c.Close()
		}
		t.Fatalf("dial expecting another identity: %v", err)
	}
}
