package hbone

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/test/testutil"
)

// relayTap is what a gateway relayed from the client toward the inner server.
type relayTap struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	discard bool // benchmarks keep nothing
}

func (r *relayTap) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.discard {
		return len(p), nil
	}
	return r.buf.Write(p)
}

func (r *relayTap) Bytes() []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Clone(r.buf.Bytes())
}

// doubleEnv is a gateway (an HBONE server that relays each stream's bytes to the inner server over
// plain TCP, never decrypting them) and an inner server presenting the destination identity.
type doubleEnv struct {
	pki     *testPKI
	gwID    spiffeid.ID
	destID  spiffeid.ID
	gateway *testServer
	innerAt netip.AddrPort
	tap     *relayTap
	inner   chan *Request // requests the inner server saw (buffered; benchmarks drain it)
}

func newDoubleEnv(t *testing.T) *doubleEnv { return newDoubleEnvTB(t) }

// newDoubleEnvTB builds the environment; in hbone mode (no DialOver) the gateway is the echo server.
func newDoubleEnvTB(t testing.TB) *doubleEnv {
	pki := newPKI(t)
	e := &doubleEnv{pki: pki, tap: &relayTap{}, inner: make(chan *Request, 4),
		gwID:   spiffeid.RequireFromString("spiffe://cluster.local/ns/istio-system/sa/eastwest"),
		destID: spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/dest")}
	gwCreds, destCreds := pki.creds(t, e.gwID), pki.creds(t, e.destID)
	inner := startServer(t, pki, HandlerFunc(func(ctx context.Context, r *Request) error {
		e.inner <- r
		c, err := r.Accept(nil)
		if err != nil {
			return err
		}
		if _, err := io.Copy(c, c); err != nil {
			return err
		}
		return c.(*Stream).CloseWrite()
	}), func(s *Server) {
		s.Credentials = func(context.Context, netip.AddrPort) (*Credentials, error) { return destCreds, nil }
	})
	e.innerAt = inner.addr
	e.gateway = startServer(t, pki, HandlerFunc(func(ctx context.Context, r *Request) error {
		up, err := net.Dial("tcp", inner.addr.String())
		if err != nil {
			return err
		}
		defer up.Close()
		c, err := r.Accept(nil)
		if err != nil {
			return err
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = io.Copy(io.MultiWriter(up, e.tap), c)
			_ = up.(*net.TCPConn).CloseWrite()
		}()
		_, _ = io.Copy(c, up)
		_ = c.(*Stream).CloseWrite()
		<-done
		return nil
	}), func(s *Server) {
		s.Credentials = func(context.Context, netip.AddrPort) (*Credentials, error) { return gwCreds, nil }
	})
	return e
}

func (e *doubleEnv) outer(t *testing.T, p *Pool) *Stream {
	t.Helper()
	ot := e.gateway.target(e.pki)
	ot.Authority = "svc.demo.svc.cluster.local:80"
	ot.Expected = []spiffeid.ID{e.gwID}
	return dialT(t, p, ot)
}

// TestDialOver: double HBONE. The inner connection runs TLS and HTTP/2 inside the outer stream, checks
// the destination's identity (not the gateway's), carries the hostname authority and extra headers,
// and the gateway relays only TLS records: the payload never appears in what it forwards.
func TestDialOver(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newDoubleEnv(t)
	p := newTestPool(t, e.pki, nil)
	outer := e.outer(t, p)
	h := http.Header{}
	h.Set("X-Forwarded-Network", "network1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := p.DialOver(ctx, outer, Target{NextHop: e.gateway.addr, Authority: "svc.demo.svc.cluster.local:80",
		Source: e.pki.clientID, Expected: []spiffeid.ID{e.destID}, Header: h})
	if err != nil {
		t.Fatalf("DialOver: %v", err)
	}
	s := c.(*Stream)
	if s.PeerID() != e.destID {
		t.Errorf("inner peer %v, want %v", s.PeerID(), e.destID)
	}
	r := <-e.inner
	if r.Authority != "svc.demo.svc.cluster.local:80" || r.Header.Get("X-Forwarded-Network") != "network1" || r.PeerID != e.pki.clientID {
		t.Errorf("inner request: authority %q, x-forwarded-network %q, peer %v", r.Authority, r.Header.Get("X-Forwarded-Network"), r.PeerID)
	}
	const marker = "MARKER-plaintext-0123456789"
	msg := strings.Repeat(marker, 100)
	if _, err := io.WriteString(s, msg); err != nil {
		t.Fatal(err)
	}
	if err := s.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(s)
	if err != nil || string(got) != msg {
		t.Fatalf("echo: %d bytes, %v", len(got), err)
	}
	_ = s.Close()
	relayed := e.tap.Bytes()
	if len(relayed) == 0 || relayed[0] != 0x16 || relayed[1] != 0x03 {
		t.Errorf("the gateway relayed %x..., not a TLS handshake record", relayed[:min(8, len(relayed))])
	}
	if bytes.Contains(relayed, []byte(marker)) {
		t.Error("the gateway saw the payload in plaintext")
	}
	// The inner connection is not pooled: it closes with its stream, and the outer stream with it.
	testutil.WaitFor(t, 10*time.Second, "inner connection closed", func() bool { return p.Stats().Conns == 1 })
	if st := p.Stats(); st.Pooled != 1 {
		t.Errorf("pool %+v: want only the outer connection pooled", st)
	}
}

// TestDialOverWrongIdentity: an inner server that is not the expected destination fails the dial (and
// the gateway's identity is not accepted for the destination's).
func TestDialOverWrongIdentity(t *testing.T) {
	testutil.CheckGoroutines(t)
	e := newDoubleEnv(t)
	p := newTestPool(t, e.pki, nil)
	for _, want := range []spiffeid.ID{e.gwID, spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/other")} {
		outer := e.outer(t, p)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := p.DialOver(ctx, outer, Target{NextHop: e.gateway.addr, Authority: "svc.demo.svc.cluster.local:80",
			Source: e.pki.clientID, Expected: []spiffeid.ID{want}})
		cancel()
		if err == nil || !strings.Contains(err.Error(), "tls handshake") {
			t.Errorf("expecting %v: err %v, want a TLS handshake failure", want, err)
		}
	}
	if n := len(e.inner); n != 0 {
		t.Errorf("the inner server saw %d requests", n)
	}
}

// BenchmarkConnect compares setting up one connection through HBONE (a stream on a pooled connection)
// with double HBONE (the outer stream plus an inner TLS handshake and HTTP/2 connection inside it,
// through a relaying gateway), each followed by a 1-byte round trip. Run side by side:
// go test -run '^$' -bench BenchmarkConnect -count 5 ./hbone/
func BenchmarkConnect(b *testing.B) {
	for _, double := range []bool{false, true} {
		name := "hbone"
		if double {
			name = "double-hbone"
		}
		b.Run(name, func(b *testing.B) {
			e := newDoubleEnvTB(b)
			p := newTestPool(b, e.pki, nil)
			ot := e.gateway.target(e.pki)
			ot.Authority = "svc.demo.svc.cluster.local:80"
			ot.Expected = []spiffeid.ID{e.gwID}
			if !double { // straight to the destination's server
				ot.NextHop, ot.Expected = e.innerAt, []spiffeid.ID{e.destID}
			}
			e.tap.mu.Lock()
			e.tap.discard = true
			e.tap.mu.Unlock()
			ctx := context.Background()
			buf := make([]byte, 1)
			for b.Loop() {
				c, err := p.Dial(ctx, ot)
				if err != nil {
					b.Fatal(err)
				}
				if double {
					if c, err = p.DialOver(ctx, c, Target{NextHop: e.gateway.addr, Authority: ot.Authority, Source: e.pki.clientID,
						Expected: []spiffeid.ID{e.destID}}); err != nil {
						b.Fatal(err)
					}
				}
				<-e.inner
				if _, err := c.Write(buf); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}
