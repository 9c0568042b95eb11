package hbone

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/test/testutil"
)

func TestParseRequest(t *testing.T) {
	f := func(kv ...string) []hpack.HeaderField {
		var out []hpack.HeaderField
		for i := 0; i < len(kv); i += 2 {
			out = append(out, hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	tests := []struct {
		name       string
		fields     []hpack.HeaderField
		truncated  bool
		wantStatus int
		wantAddr   netip.AddrPort
		wantHost   string
	}{
		{name: "ipv4", fields: f(":method", "CONNECT", ":authority", "10.0.0.1:80"), wantAddr: netip.MustParseAddrPort("10.0.0.1:80"), wantHost: "10.0.0.1"},
		{name: "ipv6", fields: f(":method", "CONNECT", ":authority", "[fd00::1]:443"), wantAddr: netip.MustParseAddrPort("[fd00::1]:443"), wantHost: "fd00::1"},
		{name: "hostname", fields: f(":method", "CONNECT", ":authority", "reviews.ns.svc.cluster.local:9080"), wantHost: "reviews.ns.svc.cluster.local"},
		{name: "get", fields: f(":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a:1"), wantStatus: 405},
		{name: "no method", fields: f(":authority", "10.0.0.1:80"), wantStatus: 405},
		{name: "extended connect", fields: f(":method", "CONNECT", ":protocol", "websocket", ":scheme", "https", ":path", "/", ":authority", "10.0.0.1:80"), wantStatus: 400},
		{name: "no authority", fields: f(":method", "CONNECT"), wantStatus: 400},
		{name: "no port", fields: f(":method", "CONNECT", ":authority", "10.0.0.1"), wantStatus: 400},
		{name: "port zero", fields: f(":method", "CONNECT", ":authority", "10.0.0.1:0"), wantStatus: 400},
		{name: "bad host", fields: f(":method", "CONNECT", ":authority", "a b:80"), wantStatus: 400},
		{name: "truncated", fields: f(":method", "CONNECT", ":authority", "10.0.0.1:80"), truncated: true, wantStatus: 431},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, status, err := parseRequest(tt.fields, tt.truncated)
			if status != tt.wantStatus {
				t.Fatalf("status = %d (%v), want %d", status, err, tt.wantStatus)
			}
			if tt.wantStatus != 0 {
				if err == nil {
					t.Fatal("refusal without a reason")
				}
				return
			}
			if req.AuthorityAddr != tt.wantAddr || req.AuthorityHost != tt.wantHost {
				t.Fatalf("authority = %v %q, want %v %q", req.AuthorityAddr, req.AuthorityHost, tt.wantAddr, tt.wantHost)
			}
		})
	}
}

func TestServerStatusCodes(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		switch r.AuthorityPort {
		case 200:
			c, err := r.Accept(nil)
			if err != nil {
				return err
			}
			return c.Close()
		case 401:
			return &StatusError{Code: http.StatusUnauthorized, Err: errors.New("rbac deny")}
		case 403:
			return fmt.Errorf("wrapped: %w", &StatusError{Code: http.StatusForbidden, Err: errTest})
		case 503:
			return errors.New("upstream refused") // not a StatusError: 503
		case 504:
			return nil // returned without accepting: 503
		case 505:
			panic("handler bug")
		}
		return &StatusError{Code: http.StatusBadRequest}
	})
	ts := startServer(t, pki, h, nil)
	p := newTestPool(t, pki, nil)
	tests := []struct {
		port int
		want int
	}{{200, 200}, {401, 401}, {403, 403}, {503, 503}, {504, 503}, {505, 503}, {400, 400}}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.port), func(t *testing.T) {
			tg := ts.target(pki)
			tg.Authority = fmt.Sprintf("127.0.0.1:%d", tt.port)
			c, err := p.Dial(context.Background(), tg)
			if tt.want == 200 {
				if err != nil {
					t.Fatal(err)
				}
				_ = c.Close()
				return
			}
			var se *StatusError
			if !errors.As(err, &se) || se.Code != tt.want {
				t.Fatalf("Dial error = %v, want status %d", err, tt.want)
			}
		})
	}
	testutil.WaitFor(t, 5*time.Second, "streams to end", func() bool { return p.Stats().Streams == 0 })
	if st := p.Stats(); st.Conns != 1 {
		t.Fatalf("refusals should not cost the connection: %+v", st)
	}
}

func TestServerRefusesMalformedRequests(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	called := make(chan struct{}, 10)
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		called <- struct{}{}
		return nil
	})
	ts := startServer(t, pki, h, nil)
	rc := dialRawClient(t, ts.addr, pki.client)
	tests := []struct {
		name string
		kv   []string
		want int
	}{
		{"GET", []string{":method", "GET", ":scheme", "https", ":path", "/", ":authority", "10.0.0.1:80"}, 405},
		{"POST", []string{":method", "POST", ":scheme", "https", ":path", "/x", ":authority", "h:80"}, 405},
		{"bad authority", []string{":method", "CONNECT", ":authority", "not an authority"}, 400},
		{"ipv6 without brackets", []string{":method", "CONNECT", ":authority", "fd00::1:80"}, 400},
		{"missing authority", []string{":method", "CONNECT"}, 400},
	}
	id := uint32(1)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc.headers(id, false, tt.kv...)
			if got := rc.status(id); got != tt.want {
				t.Fatalf("status = %d, want %d", got, tt.want)
			}
			id += 2
		})
	}
	if len(called) != 0 {
		t.Fatalf("handler called %d times for malformed requests", len(called))
	}
}

func TestServerRequestFields(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	got := make(chan *Request, 1)
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		got <- r
		c, err := r.Accept(http.Header{"Baggage": {"k8s.namespace.name=dst"}, "Connection": {"close"}})
		if err != nil {
			return err
		}
		return c.Close()
	})
	ts := startServer(t, pki, h, nil)
	p := newTestPool(t, pki, nil)
	tg := ts.target(pki)
	tg.Authority = "[fd00::7]:9080"
	tp := NewTraceparent()
	tg.Header = http.Header{
		HeaderBaggage:     {Baggage{Namespace: "src", WorkloadName: "client"}.String()},
		HeaderForwarded:   {Forwarded{For: "10.0.0.9:4444", Host: "svc.ns.svc.cluster.local"}.String()},
		HeaderTraceparent: {tp.String()},
	}
	s := dialT(t, p, tg)
	r := <-got
	if r.PeerID != pki.clientID || r.LocalID != pki.serverID {
		t.Errorf("ids = %v %v", r.PeerID, r.LocalID)
	}
	if r.Authority != "[fd00::7]:9080" || r.AuthorityAddr != netip.MustParseAddrPort("[fd00::7]:9080") {
		t.Errorf("authority = %q %v", r.Authority, r.AuthorityAddr)
	}
	if r.Local != ts.addr || !r.Remote.Addr().IsLoopback() {
		t.Errorf("local/remote = %v %v", r.Local, r.Remote)
	}
	if b := ParseBaggage(r.Header.Values(HeaderBaggage)...); b.Namespace != "src" || b.WorkloadName != "client" {
		t.Errorf("baggage = %+v", b)
	}
	if f, err := ParseForwarded(r.Header.Values(HeaderForwarded)...); err != nil || f.Host != "svc.ns.svc.cluster.local" {
		t.Errorf("forwarded = %+v %v", f, err)
	}
	if got, err := ParseTraceparent(r.Header.Get(HeaderTraceparent)); err != nil || got != tp {
		t.Errorf("traceparent = %v %v", got, err)
	}
	if s.PeerID() != pki.serverID {
		t.Errorf("client PeerID = %v", s.PeerID())
	}
	if s.ResponseHeader().Get("Baggage") != "k8s.namespace.name=dst" || s.ResponseHeader().Get("Connection") != "" {
		t.Errorf("response header = %v", s.ResponseHeader())
	}
}

func TestServerCertificateByLocalAddress(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	other := spiffeid.RequireFromString("spiffe://cluster.local/ns/demo/sa/other")
	otherCreds := pki.creds(t, other)
	var asked netip.AddrPort
	ts := startServer(t, pki, echoHandler(), func(s *Server) {
		s.Credentials = func(_ context.Context, local netip.AddrPort) (*Credentials, error) {
			asked = local
			return otherCreds, nil
		}
	})
	p := newTestPool(t, pki, nil)
	tg := ts.target(pki)
	tg.Expected = []spiffeid.ID{other}
	s := dialT(t, p, tg)
	if s.PeerID() != other || asked != ts.addr {
		t.Fatalf("server presented %v, credentials asked for %v (listener %v)", s.PeerID(), asked, ts.addr)
	}
}

func TestServerRefusesNonHBONEClients(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	pki := newPKI(t)
	called := make(chan struct{}, 1)
	ts := startServer(t, pki, HandlerFunc(func(context.Context, *Request) error {
		called <- struct{}{}
		return nil
	}), nil)

	t.Run("plaintext HTTP/1.1", func(t *testing.T) {
		c, err := net.Dial("tcp", ts.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = io.WriteString(c, "CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n")
		expectClosed(t, c)
	})
	t.Run("plaintext h2c preface", func(t *testing.T) {
		c, err := net.Dial("tcp", ts.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, _ = io.WriteString(c, http2.ClientPreface)
		expectClosed(t, c)
	})
	t.Run("TLS with ALPN http/1.1", func(t *testing.T) {
		c, err := rawTLS(t, ts.addr, clientTLS(pki.client, "http/1.1"))
		if err == nil {
			expectClosed(t, c)
		}
	})
	t.Run("TLS without ALPN", func(t *testing.T) {
		c, err := rawTLS(t, ts.addr, clientTLS(pki.client))
		if err == nil {
			_, _ = io.WriteString(c, "CONNECT 10.0.0.1:80 HTTP/1.1\r\n\r\n")
			expectClosed(t, c)
		}
	})
	t.Run("TLS 1.2", func(t *testing.T) {
		cfg := clientTLS(pki.client, "h2")
		cfg.MinVersion, cfg.MaxVersion = 0x0303, 0x0303
		if c, err := rawTLS(t, ts.addr, cfg); err == nil {
			expectClosed(t, c)
		}
	})
	t.Run("no client certificate", func(t *testing.T) {
		cfg := clientTLS(pki.client, "h2")
		cfg.Certificates = nil
		if c, err := rawTLS(t, ts.addr, cfg); err == nil {
			expectClosed(t, c)
		}
	})
	if len(called) != 0 {
		t.Fatal("handler reached")
	}
}

func TestServerRefusesForeignIdentities(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	otherCA := newPKI(t)
	tests := []struct {
		name  string
		creds func() *Credentials
	}{
		{"other trust domain, same CA", func() *Credentials {
			c := pki.creds(t, spiffeid.RequireFromString("spiffe://evil.example/ns/demo/sa/client"))
			return c
		}},
		{"other CA", func() *Credentials { return otherCA.client }},
		{"no SPIFFE SAN", func() *Credentials {
			cert, roots, err := pki.ca.IssueURIs([]string{"https://example.com/x"}, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			return &Credentials{ID: pki.clientID, Certificate: cert, Roots: roots}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			creds := tt.creds()
			creds.Roots = pki.client.Roots // the client trusts the server; the server must refuse the client
			p := newTestPool(t, pki, func(o *PoolOptions) {
				o.Credentials = func(context.Context, spiffeid.ID) (*Credentials, error) { return creds, nil }
			})
			_, err := p.Dial(context.Background(), ts.target(pki))
			if err == nil {
				t.Fatal("server accepted a foreign client")
			}
		})
	}
}

func TestServerShutdownDrains(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	p := newTestPool(t, pki, nil)
	s := dialT(t, p, ts.target(pki))
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- ts.Shutdown(ctx)
	}()
	testutil.WaitFor(t, 5*time.Second, "GOAWAY to reach the pool", func() bool { return p.Stats().Pooled == 0 })
	// The open stream still works.
	if _, err := s.Write([]byte("still here")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 10)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("echo after GOAWAY: %q %v", buf, err)
	}
	// New streams are refused (the pool cannot open a new connection either: the listener is closed).
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := p.Dial(ctx, ts.target(pki)); err == nil {
		c.Close()
		t.Fatal("dial succeeded during shutdown")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned with a stream open: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	_ = s.CloseWrite()
	if _, err := io.ReadAll(s); err != nil {
		t.Fatal(err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestServerCloseCancelsHandlers(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	cancelled := make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		<-ctx.Done() // e.g. a slow upstream dial
		close(cancelled)
		return ctx.Err()
	})
	ts := startServer(t, pki, h, nil)
	p := newTestPool(t, pki, nil)
	errc := make(chan error, 1)
	go func() {
		_, err := p.Dial(context.Background(), ts.target(pki))
		errc <- err
	}()
	time.Sleep(50 * time.Millisecond)
	_ = ts.Close()
	<-cancelled
	if err := <-errc; err == nil {
		t.Fatal("dial succeeded")
	}
}

func TestHandlerContextCancelledOnClientReset(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	started := make(chan struct{})
	cancelled := make(chan struct{})
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		close(started)
		<-ctx.Done()
		close(cancelled)
		return ctx.Err()
	})
	ts := startServer(t, pki, h, nil)
	p := newTestPool(t, pki, nil)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := p.Dial(ctx, ts.target(pki))
		errc <- err
	}()
	<-started
	cancel() // the client gives up: RST_STREAM(CANCEL)
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial = %v", err)
	}
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("handler context not cancelled by the client's reset")
	}
}

func TestServerMaxConcurrentStreams(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), func(s *Server) { s.Settings.MaxConcurrentStreams = 2 })
	dials := &dialCounter{}
	p := newTestPool(t, pki, func(o *PoolOptions) { o.DialTCP = dials.dial })
	for range 5 {
		dialT(t, p, ts.target(pki))
	}
	if st := p.Stats(); st.Conns != 3 || st.Streams != 5 {
		t.Fatalf("stats = %+v, want 3 connections for 5 streams at 2 per connection", st)
	}
}

func TestServerRefusesStreamsBeyondLimit(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	block := make(chan struct{})
	defer close(block)
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		c, err := r.Accept(nil)
		if err != nil {
			return err
		}
		select {
		case <-block:
		case <-ctx.Done():
		}
		return c.Close()
	})
	ts := startServer(t, pki, h, func(s *Server) { s.Settings.MaxConcurrentStreams = 1 })
	rc := dialRawClient(t, ts.addr, pki.client)
	rc.headers(1, false, ":method", "CONNECT", ":authority", "10.0.0.1:80")
	if got := rc.status(1); got != 200 {
		t.Fatalf("status %d", got)
	}
	rc.headers(3, false, ":method", "CONNECT", ":authority", "10.0.0.1:80")
	_ = rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := f.(*http2.RSTStreamFrame); ok && r.StreamID == 3 {
			if r.ErrCode != http2.ErrCodeRefusedStream {
				t.Fatalf("reset code %v", r.ErrCode)
			}
			return
		}
	}
}

func TestServerProtocolErrors(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	tests := []struct {
		name string
		send func(rc *rawPeer)
		want http2.ErrCode
	}{
		{"DATA on idle stream", func(rc *rawPeer) { _ = rc.fr.WriteData(5, false, []byte("x")) }, http2.ErrCodeProtocol},
		{"DATA on stream 0", func(rc *rawPeer) {
			_ = rc.fr.WriteRawFrame(http2.FrameData, 0, 0, []byte("x"))
		}, http2.ErrCodeProtocol},
		{"frame too large", func(rc *rawPeer) {
			_ = rc.fr.WriteRawFrame(http2.FrameData, 0, 1, make([]byte, DefaultMaxFrameSize+1))
		}, http2.ErrCodeFrameSize},
		{"connection window exceeded", func(rc *rawPeer) {
			// Each stream stays within its 4 MiB window; together they exceed the 16 MiB connection window.
			chunk := make([]byte, DefaultMaxFrameSize)
			for id := uint32(1); id <= 9; id += 2 {
				rc.headers(id, false, ":method", "CONNECT", ":authority", "10.0.0.1:80")
				for range DefaultStreamWindow / DefaultMaxFrameSize {
					_ = rc.fr.WriteData(id, false, chunk)
				}
			}
		}, http2.ErrCodeFlowControl},
		{"PUSH_PROMISE", func(rc *rawPeer) {
			_ = rc.fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, EndHeaders: true})
		}, http2.ErrCodeProtocol},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := dialRawClient(t, ts.addr, pki.client)
			go tt.send(rc)
			if got := rc.expectGoAway(); got != tt.want {
				t.Fatalf("GOAWAY %v, want %v", got, tt.want)
			}
			// The server half-closes after the GOAWAY and drains what the peer still sends: a clean
			// close_notify and FIN, never a RST (which would have discarded the GOAWAY in flight).
			if err := readToEnd(rc.c); !errors.Is(err, io.EOF) {
				t.Fatalf("after GOAWAY: %v, want EOF", err)
			}
		})
	}
}

// TestServerGoAwayLingerEnds checks that the drain after a connection error is bounded: a peer that
// ignores the GOAWAY and keeps sending is cut off once lingerTimeout has passed.
func TestServerGoAwayLingerEnds(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts := startServer(t, pki, echoHandler(), nil)
	rc := dialRawClient(t, ts.addr, pki.client)
	if err := rc.fr.WriteRawFrame(http2.FrameData, 0, 0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	werr := make(chan error, 1)
	go func() { // ends when the server closes the socket (or the test's cleanup closes rc.c)
		junk := make([]byte, 16<<10)
		for {
			if _, err := rc.c.Write(junk); err != nil {
				werr <- err
				return
			}
		}
	}()
	if got := rc.expectGoAway(); got != http2.ErrCodeProtocol {
		t.Fatalf("GOAWAY %v, want %v", got, http2.ErrCodeProtocol)
	}
	if err := readToEnd(rc.c); !errors.Is(err, io.EOF) {
		t.Fatalf("after GOAWAY: %v, want EOF", err)
	}
	select {
	case err := <-werr:
		t.Logf("peer still sending after GOAWAY: cut off with %v", err)
	case <-time.After(10 * lingerTimeout):
		t.Fatalf("server still reading %v after GOAWAY", 10*lingerTimeout)
	}
}

func TestServeContextCancel(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{
		Credentials: func(context.Context, netip.AddrPort) (*Credentials, error) { return pki.server, nil },
		Handler:     echoHandler(),
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	p := newTestPool(t, pki, nil)
	s := dialT(t, p, Target{NextHop: ln.Addr().(*net.TCPAddr).AddrPort(), Authority: "1.2.3.4:5",
		Source: pki.clientID, Expected: []spiffeid.ID{pki.serverID}})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Serve after cancel = %v", err)
	}
	if _, err := io.ReadAll(s); err == nil || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("stream after server cancel: %v", err)
	}
}
