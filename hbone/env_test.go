package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/test/testutil"
)

// testPKI holds a CA and the identities tests use.
type testPKI struct {
	ca       *testutil.CA
	td       spiffeid.TrustDomain
	serverID spiffeid.ID
	clientID spiffeid.ID
	server   *Credentials
	client   *Credentials
}

func newPKI(tb testing.TB) *testPKI {
	tb.Helper()
	ca, err := testutil.NewCA("cluster.local")
	if err != nil {
		tb.Fatal(err)
	}
	p := &testPKI{
		ca:       ca,
		td:       spiffeid.RequireTrustDomainFromString("cluster.local"),
		serverID: spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/server"),
		clientID: spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/client"),
	}
	p.server = p.creds(tb, p.serverID)
	p.client = p.creds(tb, p.clientID)
	return p
}

func (p *testPKI) creds(tb testing.TB, id spiffeid.ID) *Credentials {
	tb.Helper()
	cert, roots, err := p.ca.Issue(id, time.Hour)
	if err != nil {
		tb.Fatal(err)
	}
	return &Credentials{ID: id, Certificate: cert, Roots: roots}
}

// testLogger writes to t.Log when -v, else discards.
func testLogger(tb testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(tbWriter{tb}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tbWriter struct{ tb testing.TB }

func (w tbWriter) Write(p []byte) (int, error) { w.tb.Log(string(p)); return len(p), nil }

// testServer is a Server listening on loopback.
type testServer struct {
	*Server
	addr netip.AddrPort
	done chan error
}

func startServer(tb testing.TB, pki *testPKI, h Handler, mod func(*Server)) *testServer {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &Server{
		Credentials: func(context.Context, netip.AddrPort) (*Credentials, error) { return pki.server, nil },
		Handler:     h,
		Logger:      testLogger(tb),
	}
	if mod != nil {
		mod(srv)
	}
	ts := &testServer{Server: srv, addr: ln.Addr().(*net.TCPAddr).AddrPort(), done: make(chan error, 1)}
	go func() { ts.done <- srv.Serve(context.Background(), ln) }()
	tb.Cleanup(func() {
		_ = srv.Close()
		if err := <-ts.done; err != nil && !errors.Is(err, ErrServerClosed) {
			tb.Errorf("Serve: %v", err)
		}
	})
	return ts
}

func newTestPool(tb testing.TB, pki *testPKI, mod func(*PoolOptions)) *Pool {
	tb.Helper()
	opts := PoolOptions{
		Credentials: func(context.Context, spiffeid.ID) (*Credentials, error) { return pki.client, nil },
		Logger:      testLogger(tb),
	}
	if mod != nil {
		mod(&opts)
	}
	p, err := NewPool(opts)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = p.Close() })
	return p
}

func (ts *testServer) target(pki *testPKI) Target {
	return Target{
		NextHop:   ts.addr,
		Authority: "127.0.0.1:8080",
		Source:    pki.clientID,
		Expected:  []spiffeid.ID{pki.serverID},
	}
}

// echoHandler accepts and echoes bytes until EOF, then half-closes.
func echoHandler() Handler {
	return HandlerFunc(func(ctx context.Context, r *Request) error {
		c, err := r.Accept(nil)
		if err != nil {
			return err
		}
		if _, err := io.Copy(c, c); err != nil {
			return err
		}
		return c.(*Stream).CloseWrite()
	})
}

func dialT(tb testing.TB, p *Pool, t Target) *Stream {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.Dial(ctx, t)
	if err != nil {
		tb.Fatalf("Dial: %v", err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c.(*Stream)
}

// dialCounter wraps the default TCP dial and counts calls.
type dialCounter struct{ n atomic.Int32 }

func (d *dialCounter) dial(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	d.n.Add(1)
	var nd net.Dialer
	return nd.DialContext(ctx, "tcp", dst.String())
}

// rawTLS dials the server with a custom TLS config, for negative tests.
func rawTLS(tb testing.TB, addr netip.AddrPort, cfg *tls.Config) (*tls.Conn, error) {
	tb.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(&d, "tcp", addr.String(), cfg)
	if err == nil {
		tb.Cleanup(func() { _ = c.Close() })
	}
	return c, err
}

// clientTLS is a TLS config presenting creds that skips server checks (the server is under test).
func clientTLS(creds *Credentials, protos ...string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{creds.Certificate},
		InsecureSkipVerify: true,
		NextProtos:         protos,
	}
}

// expectClosed reads from c until it fails, expecting EOF or a reset within 5 s.
func expectClosed(tb testing.TB, c net.Conn) {
	tb.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1024)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			tb.Fatalf("connection still open after 5 s")
		}
		return
	}
}

// readToEnd reads c until an error (5 s at most) and returns it.
func readToEnd(c net.Conn) error {
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1024)
	for {
		if _, err := c.Read(buf); err != nil {
			return err
		}
	}
}

// waitGroup helper for goroutines started in tests.
type group struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

func (g *group) Go(f func() error) {
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := f(); err != nil {
			g.mu.Lock()
			g.errs = append(g.errs, err)
			g.mu.Unlock()
		}
	}()
}

func (g *group) Wait() error {
	g.wg.Wait()
	return errors.Join(g.errs...)
}
