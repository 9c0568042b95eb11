package hbone

// server.go: the HBONE server (port 15008): TLS accept, per-stream dispatch to a Handler.
//
// Invariants:
//   - A connection's certificate comes from Credentials(local address), before the handshake; SNI is
//     never read. Connections that do not negotiate TLS 1.3 with ALPN h2 and a verified client
//     certificate in the server's trust domain are closed before any HTTP/2 is spoken.
//   - Every request runs on its own goroutine, which answers exactly once: 405/400/431 for malformed
//     requests before the Handler runs; otherwise the Handler's Accept sends 200, or the server answers
//     the Handler's error status (503 when it is not a *StatusError) and logs the reason.
//   - Serve owns every goroutine it starts (connections and handlers) and waits for them before it
//     returns. A stream a Handler handed off (Request.HandOff) is the Handler's to close; closing the
//     connection still fails it.
//   - Every accepted connection counts towards MaxConns from Accept until its goroutine ends; beyond the
//     cap, Accept's connection is closed at once, before any TLS work. A connection must finish TLS and
//     the HTTP/2 preface (the client's first SETTINGS) within HandshakeTimeout, and an established one
//     without streams goes away after IdleTimeout (idle.go). Stats counts all of it.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/textproto"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// A Handler serves HBONE CONNECT requests. ServeHBONE runs on its own goroutine per stream. It decides
// (authorization) and prepares its upstream, then calls r.Accept to send 200 and obtain the stream, relays
// bytes, and returns when done; the server then closes the stream, unless the Handler handed it off
// (Request.HandOff: it relays without a goroutine of its own and closes it later). If it returns without calling Accept,
// the server answers the status of the *StatusError in the returned error's chain (400, 401, 403, 503...;
// 503 for any other error or nil) and logs the error. ctx is cancelled when the peer resets the stream,
// the connection closes or the server is closed.
type Handler interface {
	ServeHBONE(ctx context.Context, r *Request) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, r *Request) error

// ServeHBONE calls f.
func (f HandlerFunc) ServeHBONE(ctx context.Context, r *Request) error { return f(ctx, r) }

var _ Handler = HandlerFunc(nil)

// Request is one CONNECT request. Its fields are read-only for the Handler.
type Request struct {
	PeerID        spiffeid.ID    // verified SPIFFE ID of the client certificate
	LocalID       spiffeid.ID    // the identity this server presented
	Authority     string         // :authority as sent
	AuthorityAddr netip.AddrPort // parsed :authority when it is ip:port; invalid for host:port
	AuthorityHost string         // host part of :authority (IP literal or DNS name)
	AuthorityPort uint16
	Header        http.Header    // regular request headers (Baggage, Forwarded, Traceparent, ...)
	Local         netip.AddrPort // the address the HBONE connection was accepted on
	Remote        netip.AddrPort // the HBONE peer's TCP address

	stream    *Stream
	accepted  bool
	handedOff bool
}

// HandOff, after Accept, makes the stream outlive the Handler: when ServeHBONE returns, the server
// neither closes the stream nor cancels the Handler's ctx, and frees the handler slot, so a stream that
// waits for readiness (Stream.NotifyReadable) needs no goroutine. The caller then owns the stream and
// must Close it; ctx is still cancelled when the peer resets the stream, the connection closes or the
// server is closed, and Close cancels it too. It applies when ServeHBONE returns nil (an error still
// closes the stream) and reports false, changing nothing, before Accept.
func (r *Request) HandOff() bool {
	if !r.accepted {
		return false
	}
	r.handedOff = true
	return true
}

// Accept sends 200 with respHeader (may be nil; connection-specific headers are dropped) and returns the
// stream as a net.Conn (a *Stream). Call it once, after the upstream is ready.
func (r *Request) Accept(respHeader http.Header) (net.Conn, error) {
	if r.accepted {
		return nil, ErrAlreadyAccepted
	}
	s := r.stream
	var fieldBuf [4]hpack.HeaderField // ":status" and a few headers stay on the stack
	fields := append(fieldBuf[:0], hpack.HeaderField{Name: ":status", Value: "200"})
	fields = appendRegular(fields, respHeader)
	if err := s.writeResponse(fields, false); err != nil {
		return nil, fmt.Errorf("accept stream: %w", err)
	}
	r.accepted = true
	return s, nil
}

// writeResponse writes the response HEADERS. With endStream it also ends (and resets, if the peer has not
// ended) the stream and removes it.
func (s *Stream) writeResponse(fields []hpack.HeaderField, endStream bool) error {
	c := s.c
	if err := s.lockWrite(); err != nil {
		return err
	}
	c.mu.Lock()
	err := s.werr
	c.mu.Unlock()
	if err == nil {
		err = c.writeHeadersLocked(s.id, fields, endStream)
	}
	c.unlockWrite()
	if err != nil {
		return err
	}
	s.rmu.Lock()
	s.respDone = true
	s.rmu.Unlock()
	if !endStream {
		return nil
	}
	c.mu.Lock()
	s.localEnded = true
	_, open := c.streams[s.id]
	if open {
		if !s.remoteEnded {
			c.queueLocked(ctrlFrame{kind: ctrlRST, streamID: s.id, code: http2.ErrCodeNo})
		}
		c.removeLocked(s)
	}
	c.mu.Unlock()
	c.settle()
	if open {
		c.streamLeft(false)
	}
	return nil
}

// Server accepts HBONE connections. Set its exported fields before Serve and do not change them after.
type Server struct {
	// Credentials returns the certificate to present on a connection accepted at local (the destination
	// pod's address) and the trust bundle for client certificates. Required.
	Credentials func(ctx context.Context, local netip.AddrPort) (*Credentials, error)
	// Handler serves requests. Required.
	Handler Handler
	// Logger receives connection and request errors; nil discards.
	Logger *slog.Logger
	// Settings are the HTTP/2 settings announced; zero fields take the defaults.
	Settings Settings
	// KeepaliveInterval and KeepaliveTimeout configure PING keepalive (defaults 10 s and 20 s; a negative
	// interval disables it). PINGs do not count as activity for IdleTimeout.
	KeepaliveInterval, KeepaliveTimeout time.Duration
	// HandshakeTimeout bounds the credentials lookup, the TLS handshake and the client's HTTP/2 preface
	// up to its first SETTINGS frame (default DefaultHandshakeTimeout, 10 s).
	HandshakeTimeout time.Duration
	// IdleTimeout closes, with GOAWAY, a connection that has had no stream and no running handler for
	// this long (default DefaultServerIdleTimeout, 1 h, as Envoy; negative disables it).
	IdleTimeout time.Duration
	// StreamIdleTimeout is the idle timeout of every stream (Stream.SetIdleTimeout), which a Handler may
	// change per stream. Zero (the default, as ztunnel) means none; see DefaultStreamIdleTimeoutHTTP
	// and DefaultStreamIdleTimeoutTCP for Envoy's.
	StreamIdleTimeout time.Duration
	// MaxConns caps the connections open at once, handshaking ones included; Serve closes connections
	// accepted beyond it at once and counts them (ServerStats.ConnsRejected). Zero means no cap, as
	// Envoy (whose overload manager has no default limit) and ztunnel.
	MaxConns int

	initOnce  sync.Once
	stats     counters
	connCount atomic.Int64
	mu        sync.Mutex
	conns     map[*conn]struct{}
	lns       map[net.Listener]struct{}
	draining  bool          // Shutdown called: new streams refused, idle connections close
	closed    chan struct{} // closed by Shutdown or Close
	hardCtx   context.Context
	hardStop  context.CancelFunc // called by Close
	active    sync.WaitGroup
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		s.conns = make(map[*conn]struct{})
		s.lns = make(map[net.Listener]struct{})
		s.closed = make(chan struct{})
		s.hardCtx, s.hardStop = context.WithCancel(context.Background())
	})
}

func (s *Server) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Serve accepts connections on ln until ctx is done, Shutdown or Close is called, or Accept fails. It
// closes ln. It returns ErrServerClosed after Shutdown or Close, nil when ctx was cancelled (after closing
// its connections), otherwise the Accept error; in every case only after all its connections and
// handlers have returned.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if s.Credentials == nil || s.Handler == nil {
		_ = ln.Close()
		return errors.New("hbone: Server needs Credentials and Handler")
	}
	settings, err := s.Settings.withDefaults(true)
	if err != nil {
		_ = ln.Close()
		return err
	}
	s.init()
	s.mu.Lock()
	if isClosed(s.closed) {
		s.mu.Unlock()
		_ = ln.Close()
		return ErrServerClosed
	}
	s.lns[ln] = struct{}{}
	s.active.Add(1)
	s.mu.Unlock()
	defer s.active.Done()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stopLn := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stopLn()
	stopHard := context.AfterFunc(s.hardCtx, cancel)
	defer stopHard()

	// On Shutdown, connections drain on their own; otherwise they are closed. Either way Serve waits.
	var wg sync.WaitGroup
	graceful := false
	defer func() {
		if !graceful {
			cancel()
		}
		wg.Wait()
	}()
	idle := s.IdleTimeout
	if idle == 0 {
		idle = DefaultServerIdleTimeout
	}
	cfg := connConfig{
		server:            true,
		settings:          settings,
		keepalive:         keepalive{Interval: s.KeepaliveInterval, Timeout: s.KeepaliveTimeout}.withDefaults(),
		logger:            s.logger(),
		idleTimeout:       max(idle, 0),
		streamIdleTimeout: s.StreamIdleTimeout,
		stats:             &s.stats,
	}
	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			delete(s.lns, ln)
			s.mu.Unlock()
			switch {
			case isClosed(s.closed):
				graceful = true
				return ErrServerClosed
			case ctx.Err() != nil:
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.logger().Warn("hbone accept", "err", err, "retry_in", backoff)
				select {
				case <-time.After(backoff):
					s.mu.Lock()
					s.lns[ln] = struct{}{}
					s.mu.Unlock()
					continue
				case <-ctx.Done():
					return nil
				}
			}
			return fmt.Errorf("accept hbone: %w", err)
		}
		backoff = 0
		s.stats.connsAccepted.Add(1)
		if n := s.connCount.Add(1); s.MaxConns > 0 && n > int64(s.MaxConns) {
			s.connCount.Add(-1)
			s.stats.connsRejected.Add(1)
			_ = nc.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer s.connCount.Add(-1)
			s.serveConn(ctx, nc, cfg, &wg)
		}()
	}
}

func (s *Server) serveConn(ctx context.Context, nc net.Conn, cfg connConfig, wg *sync.WaitGroup) {
	log := cfg.logger
	local := addrPortOf(nc.LocalAddr())
	hto := s.HandshakeTimeout
	if hto <= 0 {
		hto = DefaultHandshakeTimeout
	}
	deadline := time.Now().Add(hto)
	hctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	creds, err := s.Credentials(hctx, local)
	if err == nil {
		err = creds.validate()
	}
	if err != nil {
		log.Warn("hbone: no credentials for local address", "local", local, "err", err)
		_ = nc.Close()
		return
	}
	var peer spiffeid.ID
	sock := &coalescer{Conn: nc}
	tc := tls.Server(sock, serverTLSConfig(creds, &peer))
	if err := tc.HandshakeContext(hctx); err != nil {
		log.Debug("hbone: tls handshake", "remote", nc.RemoteAddr(), "err", err)
		if hctx.Err() == context.DeadlineExceeded {
			s.stats.handshakeTimeouts.Add(1)
		} else {
			s.stats.handshakeErrors.Add(1)
		}
		_ = nc.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol != alpnH2 {
		log.Debug("hbone: refused connection without ALPN h2", "remote", nc.RemoteAddr())
		s.stats.handshakeErrors.Add(1)
		_ = tc.Close()
		return
	}
	cancel()

	cctx, ccancel := context.WithCancel(ctx)
	defer ccancel()
	var c *conn
	cfg.onRequest = func(st *Stream, fields []hpack.HeaderField, truncated bool) {
		sctx, scancel := context.WithCancel(cctx)
		st.setCancel(scancel)
		wg.Add(1)
		go func() {
			// No defers: this frame is under every handler's stack, which must stay within 4 KiB
			// (BenchmarkIdleStreams); serveStream recovers a handler's panic.
			if !s.serveStream(sctx, c, st, fields, truncated, creds.ID) {
				scancel()
			}
			c.handlerDone()
			wg.Done()
		}()
	}
	c = newConn(tc, sock, cfg, peer)
	s.mu.Lock()
	s.conns[c] = struct{}{}
	draining := s.draining
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	if err := c.start(); err != nil {
		c.close(err)
		return
	}
	if draining {
		c.goAway()
	}
	stop := context.AfterFunc(cctx, func() { c.close(nil) })
	defer stop()
	// The client's preface and first SETTINGS are part of the handshake.
	preface := time.AfterFunc(time.Until(deadline), func() {
		select {
		case <-c.settingsRecv:
		default:
			s.stats.handshakeTimeouts.Add(1)
			c.close(fmt.Errorf("%w: no HTTP/2 preface within %v", ErrHandshakeTimeout, hto))
		}
	})
	defer preface.Stop()
	c.readLoop()
	if errors.Is(c.closeErrForLog(), ErrNotH2) {
		s.stats.handshakeErrors.Add(1)
	}
	if err := c.closeErrForLog(); err != nil {
		log.Debug("hbone: connection closed", "remote", c.remote, "peer", peer, "err", err)
	}
}

// closeErrForLog returns why the connection closed, nil for a clean close.
func (c *conn) closeErrForLog() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closeErr == nil || errors.Is(c.closeErr, io.EOF) || errors.Is(c.closeErr, net.ErrClosed) {
		return nil
	}
	return c.closeErr
}

// serveStream parses a request and runs the Handler; it reports whether the Handler handed the stream
// off (Request.HandOff), which then stays open with its context.
func (s *Server) serveStream(ctx context.Context, c *conn, st *Stream, fields []hpack.HeaderField, truncated bool, localID spiffeid.ID) (handedOff bool) {
	log := c.cfg.logger
	req, status, err := parseRequest(fields, truncated)
	if err != nil {
		log.Info("hbone: refused request", "status", status, "peer", c.peerID, "remote", c.remote, "err", err)
		_ = st.respondStatus(status)
		_ = st.Close()
		return false
	}
	req.PeerID, req.LocalID = c.peerID, localID
	req.Local, req.Remote = c.local, c.remote
	req.stream = st
	err = s.callHandler(ctx, req)
	if req.accepted && req.handedOff && err == nil {
		return true
	}
	if req.accepted {
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, context.Canceled) {
			log.Debug("hbone: stream ended", "authority", req.Authority, "peer", req.PeerID, "err", err)
		}
		_ = st.Close()
		return false
	}
	if err == nil {
		err = ErrNotAccepted
	}
	status = statusFor(err)
	log.Info("hbone: refused request", "status", status, "authority", req.Authority, "peer", req.PeerID,
		"remote", req.Remote, "err", err)
	_ = st.respondStatus(status)
	_ = st.Close()
	return false
}

// callHandler runs the Handler, turning a panic into an error.
func (s *Server) callHandler(ctx context.Context, req *Request) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("hbone: handler panic: %v", p)
		}
	}()
	return s.Handler.ServeHBONE(ctx, req)
}

// respondStatus answers a refused request with status and ends the stream.
func (s *Stream) respondStatus(status int) error {
	return s.writeResponse([]hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}, true)
}

// parseRequest validates a request header block and returns the Request, or the status to refuse it
// with: 431 when the header list was too large, 405 for a method other than CONNECT, 400 for a CONNECT
// with :scheme, :path or :protocol (HBONE uses plain CONNECT) or a bad :authority.
func parseRequest(fields []hpack.HeaderField, truncated bool) (*Request, int, error) {
	if truncated {
		return nil, http.StatusRequestHeaderFieldsTooLarge, errors.New("header list too large")
	}
	var method, authority string
	var hasAuthority, extra bool
	var h http.Header
	for _, f := range fields {
		switch f.Name {
		case ":method":
			method = f.Value
		case ":authority":
			authority, hasAuthority = f.Value, true
		case ":scheme", ":path", ":protocol":
			extra = true
		default:
			if !f.IsPseudo() {
				if h == nil {
					h = make(http.Header)
				}
				k := textproto.CanonicalMIMEHeaderKey(f.Name)
				h[k] = append(h[k], f.Value)
			}
		}
	}
	if method != http.MethodConnect {
		return nil, http.StatusMethodNotAllowed, fmt.Errorf("method %q is not CONNECT", method)
	}
	if extra || !hasAuthority {
		return nil, http.StatusBadRequest, errors.New("malformed CONNECT: need :authority and no :scheme, :path or :protocol")
	}
	a, err := ParseAuthority(authority)
	if err != nil {
		return nil, http.StatusBadRequest, err
	}
	return &Request{
		Authority:     authority,
		AuthorityAddr: a.Addr,
		AuthorityHost: a.Host,
		AuthorityPort: a.Port,
		Header:        h,
	}, 0, nil
}

// connection-specific headers, forbidden in HTTP/2 (RFC 9113 8.2.2).
var connSpecific = map[string]bool{
	"connection": true, "keep-alive": true, "proxy-connection": true, "transfer-encoding": true, "upgrade": true,
	"te": true, "host": true,
}

// appendRegular appends h as lower-case HTTP/2 fields, skipping connection-specific ones.
func appendRegular(fields []hpack.HeaderField, h http.Header) []hpack.HeaderField {
	for k, vs := range h {
		lk := lower(k)
		if connSpecific[lk] {
			continue
		}
		for _, v := range vs {
			fields = append(fields, hpack.HeaderField{Name: lk, Value: v})
		}
	}
	return fields
}

func lower(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if b[j] >= 'A' && b[j] <= 'Z' {
					b[j] += 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

// Shutdown stops accepting, sends GOAWAY on every connection so that no new stream starts, and waits for
// existing streams to end and every Serve to return, or for ctx, whichever is first; then it closes
// whatever remains (as Close) and returns ctx's error if it had to.
func (s *Server) Shutdown(ctx context.Context) error {
	s.init()
	s.mu.Lock()
	s.draining = true
	if !isClosed(s.closed) {
		close(s.closed)
	}
	for ln := range s.lns {
		_ = ln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.goAway()
	}
	done := make(chan struct{})
	go func() { // owned: ends when every Serve has returned, which Close below forces
		s.active.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		_ = s.Close()
		<-done
		return ctx.Err()
	}
}

// Close closes the listeners and every connection at once (streams fail, handler contexts are
// cancelled) and waits for every Serve to return.
func (s *Server) Close() error {
	s.init()
	s.mu.Lock()
	if !isClosed(s.closed) {
		close(s.closed)
	}
	s.hardStop()
	for ln := range s.lns {
		_ = ln.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close(ErrServerClosed)
	}
	s.active.Wait()
	return nil
}
