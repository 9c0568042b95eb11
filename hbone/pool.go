package hbone

// pool.go: the HBONE client, a pool of HTTP/2 connections (ztunnel's proxy/pool.rs).
//
// Invariants:
//   - Connections are keyed by (source identity, expected destination identities, next hop, source IP);
//     a connection only ever carries streams of its key, since both its certificate and its peer check
//     depend on it.
//   - A connection carries at most min(MaxStreamsPerConn, the peer's SETTINGS_MAX_CONCURRENT_STREAMS)
//     streams. A slot is reserved under mu before a stream is opened and released when the stream leaves
//     the connection (conn.onStreamDone), so reserved never undercounts what the peer sees.
//   - At most one dial per key is in flight; callers that find no free connection wait for it and then
//     look again (x/net/http2's dialCall pattern). The dial runs under the pool's context, not a
//     caller's, so one caller giving up does not fail the others.
//   - A connection leaves the pool (and is never handed out again) when it closes, receives GOAWAY, has
//     had no reserved slot for IdleTimeout, or for IdleGrace while its key has more than
//     MaxIdleConnsPerKey such connections (idleVerdict); in the last two cases it is closed with GOAWAY.
//     A connection without streams holds no write buffer and no spare receive chunk (wbuf.go).
//   - Every goroutine (dials and connection readers) is owned by the pool; Close waits for them.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2/hpack"
)

// Target describes one stream to open.
type Target struct {
	// NextHop is where the HBONE connection goes: the destination pod's or waypoint's IP and port 15008.
	NextHop netip.AddrPort
	// Authority is the CONNECT :authority, the final target "ip:port" (or "host:port").
	Authority string
	// Source is the client identity; its certificate comes from PoolOptions.Credentials.
	Source spiffeid.ID
	// SourceIP, if valid, is the local address to dial from.
	SourceIP netip.Addr
	// Expected lists the server identities accepted: the server certificate must have a URI SAN equal to
	// one of them. When empty, any identity in Source's trust domain is accepted.
	Expected []spiffeid.ID
	// Header holds extra request headers (Baggage, Forwarded, Traceparent...).
	Header http.Header
}

// Dialer opens HBONE streams: over pooled connections (Dial) or over a connection of their own inside
// an established stream (DialOver, double HBONE). *Pool implements it.
type Dialer interface {
	Dial(ctx context.Context, t Target) (net.Conn, error)
	DialOver(ctx context.Context, nc net.Conn, t Target) (net.Conn, error)
}

var _ Dialer = (*Pool)(nil)

// PoolOptions configure a Pool. Zero durations take the defaults; negative ones disable the feature.
type PoolOptions struct {
	// Credentials returns the client certificate and trust bundle for a source identity. Required.
	Credentials func(ctx context.Context, src spiffeid.ID) (*Credentials, error)
	// DialTCP opens the TCP connection to dst, from src when src is valid. Nil uses a net.Dialer. Set it
	// to mark sockets (SO_MARK) or bind source addresses.
	DialTCP func(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error)
	// Logger; nil discards.
	Logger *slog.Logger
	// Settings announced to servers; zero fields take the defaults.
	Settings Settings
	// MaxStreamsPerConn caps concurrent streams per connection (default 100).
	MaxStreamsPerConn int
	// KeepaliveInterval and KeepaliveTimeout configure PING keepalive (10 s, 20 s).
	KeepaliveInterval, KeepaliveTimeout time.Duration
	// IdleTimeout closes connections without streams for this long (5 min).
	IdleTimeout time.Duration
	// IdleGrace (15 s) and MaxIdleConnsPerKey (2): a connection without streams for longer than
	// IdleGrace is closed with GOAWAY when its key has more than MaxIdleConnsPerKey such connections
	// (DefaultIdleGrace). A negative IdleGrace keeps every idle connection until IdleTimeout.
	IdleGrace          time.Duration
	MaxIdleConnsPerKey int
	// ConnectTimeout bounds TCP connect, TLS handshake and the server's first SETTINGS (10 s).
	ConnectTimeout time.Duration
}

// Pool dials HBONE streams over pooled connections. It is safe for concurrent use.
type Pool struct {
	opts   PoolOptions
	cfg    connConfig
	logger *slog.Logger
	ctx    context.Context // cancelled by Close; parent of dials
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu      sync.Mutex
	conns   map[poolKey][]*pconn // connections that may take new streams
	dialing map[poolKey]*dialCall
	all     map[*pconn]struct{} // every live connection, for Close and Stats
	closed  bool
	stats   counters
}

type poolKey struct {
	src      spiffeid.ID
	expected string // sorted expected IDs joined by a space
	nextHop  netip.AddrPort
	srcIP    netip.Addr
}

func makeKey(t Target) poolKey {
	ids := make([]string, len(t.Expected))
	for i, id := range t.Expected {
		ids[i] = id.String()
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	return poolKey{src: t.Source, expected: strings.Join(ids, " "), nextHop: t.NextHop, srcIP: t.SourceIP}
}

// pconn is a pooled connection. Fields other than c are guarded by Pool.mu.
type pconn struct {
	c         *conn
	key       poolKey
	reserved  int
	pooled    bool // in Pool.conns
	idleTimer *time.Timer
	idleSince time.Time // when reserved last dropped to zero
}

// dialCall is an in-flight dial for a key; err is valid after done is closed.
type dialCall struct {
	done chan struct{}
	err  error
}

// NewPool returns a Pool. It starts no goroutine until the first Dial.
func NewPool(opts PoolOptions) (*Pool, error) {
	if opts.Credentials == nil {
		return nil, errors.New("hbone: PoolOptions.Credentials is required")
	}
	settings, err := opts.Settings.withDefaults(false)
	if err != nil {
		return nil, err
	}
	if opts.MaxStreamsPerConn <= 0 {
		opts.MaxStreamsPerConn = DefaultMaxStreamsPerConn
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	if opts.ConnectTimeout <= 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.IdleGrace == 0 {
		opts.IdleGrace = DefaultIdleGrace
	}
	if opts.MaxIdleConnsPerKey <= 0 {
		opts.MaxIdleConnsPerKey = DefaultMaxIdleConnsPerKey
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pool{
		opts:    opts,
		logger:  logger,
		ctx:     ctx,
		cancel:  cancel,
		conns:   make(map[poolKey][]*pconn),
		dialing: make(map[poolKey]*dialCall),
		all:     make(map[*pconn]struct{}),
	}
	p.cfg = connConfig{
		settings:  settings,
		keepalive: keepalive{Interval: opts.KeepaliveInterval, Timeout: opts.KeepaliveTimeout}.withDefaults(),
		logger:    logger,
		stats:     &p.stats,
	}
	return p, nil
}

// Dial opens a CONNECT stream to t.Authority through t.NextHop, reusing a pooled connection of t's key
// when one has a free slot. It returns the stream (a *Stream) once the server answered 200; another
// status is a *StatusError. Streams refused because a connection was going away are retried on another.
func (p *Pool) Dial(ctx context.Context, t Target) (net.Conn, error) {
	if !t.NextHop.IsValid() || t.Source.IsZero() {
		return nil, errors.New("hbone: dial needs Target.NextHop and Target.Source")
	}
	if _, err := ParseAuthority(t.Authority); err != nil {
		return nil, fmt.Errorf("dial hbone: %w", err)
	}
	key := makeKey(t)
	// On the heap: a buffer in this frame would grow the stack of the goroutine that goes on to relay the
	// stream for its whole life (measured: 8 KB instead of 4 KB per idle connection).
	fields := appendRequestFields(make([]hpack.HeaderField, 0, 2+len(t.Header)), t)
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		var pc *pconn
		pc, err = p.getConn(ctx, key, t)
		if err != nil {
			return nil, err
		}
		var s *Stream
		s, err = pc.c.openStream(ctx, fields)
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, errRefused) {
			break
		}
	}
	return nil, fmt.Errorf("dial hbone %s via %s: %w", t.Authority, t.NextHop, err)
}

// appendRequestFields appends the CONNECT request's header fields for t to fields.
func appendRequestFields(fields []hpack.HeaderField, t Target) []hpack.HeaderField {
	fields = append(fields,
		hpack.HeaderField{Name: ":method", Value: http.MethodConnect},
		hpack.HeaderField{Name: ":authority", Value: t.Authority})
	return appendRegular(fields, t.Header)
}

// getConn returns a connection of key with a slot reserved for the caller, dialing one if needed.
func (p *Pool) getConn(ctx context.Context, key poolKey, t Target) (*pconn, error) {
	p.mu.Lock()
	for {
		if p.closed {
			p.mu.Unlock()
			return nil, ErrPoolClosed
		}
		for _, pc := range p.conns[key] {
			if pc.reserved < p.capacity(pc) {
				pc.reserved++
				if pc.idleTimer != nil {
					pc.idleTimer.Stop()
				}
				p.mu.Unlock()
				return pc, nil
			}
		}
		call := p.dialing[key]
		if call == nil {
			call = &dialCall{done: make(chan struct{})}
			p.dialing[key] = call
			p.wg.Add(1)
			go p.dial(key, t, call)
		}
		p.mu.Unlock()
		select {
		case <-call.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if call.err != nil {
			return nil, call.err
		}
		p.mu.Lock()
	}
}

// capacity is the number of streams pc may carry. p.mu is held; the peer's limit is read under conn.mu.
func (p *Pool) capacity(pc *pconn) int {
	pc.c.mu.Lock()
	peerMax := pc.c.peerMaxStreams
	pc.c.mu.Unlock()
	return int(min(uint32(p.opts.MaxStreamsPerConn), peerMax))
}

// dial establishes a connection for key and adds it to the pool (owned goroutine).
func (p *Pool) dial(key poolKey, t Target, call *dialCall) {
	defer p.wg.Done()
	pc, err := p.connect(key, t)
	p.mu.Lock()
	delete(p.dialing, key)
	if err == nil && p.closed {
		err = ErrPoolClosed
	}
	if err == nil {
		pc.pooled = true
		p.conns[key] = append(p.conns[key], pc)
		p.all[pc] = struct{}{}
		p.armIdleLocked(pc)
	}
	call.err = err
	close(call.done)
	p.mu.Unlock()
	if err != nil && pc != nil && pc.c != nil {
		pc.c.close(err)
	}
}

// DialOver opens a CONNECT stream to t.Authority over a new HBONE connection (TLS 1.3 and HTTP/2) run
// inside nc, an established stream: the inner connection of double HBONE, nc being the outer CONNECT
// stream to a network gateway. It is the pool's client on another transport, not a second client: the
// same handshake, peer check (t.Expected) and connection code. The connection is not pooled (one per
// call, as ztunnel's inner connections are, so that connections spread over the remote endpoints): it
// carries this one stream and then closes, closing nc. t.NextHop only names the hop in errors.
// ConnectTimeout bounds the handshake and the wait for the CONNECT's response together. On error nc is
// closed.
func (p *Pool) DialOver(ctx context.Context, nc net.Conn, t Target) (net.Conn, error) {
	if t.Source.IsZero() {
		_ = nc.Close()
		return nil, errors.New("hbone: dial needs Target.Source")
	}
	if _, err := ParseAuthority(t.Authority); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("dial hbone: %w", err)
	}
	pc := &pconn{key: makeKey(t), reserved: 1}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = nc.Close()
		return nil, ErrPoolClosed
	}
	p.all[pc] = struct{}{} // Close closes it once it exists (pc.c), and waits for this call
	p.wg.Add(1)
	p.mu.Unlock()
	defer p.wg.Done()
	hctx, cancel := context.WithTimeout(ctx, p.opts.ConnectTimeout)
	defer cancel()
	stop := context.AfterFunc(p.ctx, cancel) // the pool closing ends the handshake too
	defer stop()
	creds, err := p.opts.Credentials(hctx, t.Source)
	if err == nil {
		err = creds.validate()
	}
	if err != nil {
		_ = nc.Close()
		p.forget(pc, true)
		return nil, fmt.Errorf("get credentials for %s: %w", t.Source, err)
	}
	if err := p.establish(hctx, pc, nc, creds, t); err != nil {
		if pc.c != nil {
			pc.c.close(err)
		} else {
			p.forget(pc, true)
		}
		return nil, fmt.Errorf("dial hbone %s inside the stream to %s: %w", t.Authority, t.NextHop, err)
	}
	fields := appendRequestFields(make([]hpack.HeaderField, 0, 2+len(t.Header)), t)
	s, err := pc.c.openStream(hctx, fields)
	if err != nil {
		pc.c.close(err)
		return nil, fmt.Errorf("dial hbone %s inside the stream to %s: %w", t.Authority, t.NextHop, err)
	}
	if p.ctx.Err() != nil { // Close ran meanwhile and may not have seen the connection
		pc.c.close(ErrPoolClosed)
		return nil, ErrPoolClosed
	}
	// No other stream: the connection closes when this one is done.
	pc.c.goAway()
	return s, nil
}

func (p *Pool) connect(key poolKey, t Target) (*pconn, error) {
	ctx, cancel := context.WithTimeout(p.ctx, p.opts.ConnectTimeout)
	defer cancel()
	creds, err := p.opts.Credentials(ctx, t.Source)
	if err == nil {
		err = creds.validate()
	}
	if err != nil {
		return nil, fmt.Errorf("get credentials for %s: %w", t.Source, err)
	}
	nc, err := p.dialTCP(ctx, t.SourceIP, t.NextHop)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", t.NextHop, err)
	}
	pc := &pconn{key: key}
	return pc, p.establish(ctx, pc, nc, creds, t)
}

// establish runs the client side of an HBONE connection over nc for pc: the TLS handshake with t's
// expected identities, then HTTP/2 up to the server's first SETTINGS. When it fails before the
// connection exists (pc.c nil) nc is closed; after, the caller closes pc.c.
func (p *Pool) establish(ctx context.Context, pc *pconn, nc net.Conn, creds *Credentials, t Target) error {
	var peer spiffeid.ID
	sock := &coalescer{Conn: nc}
	tc := tls.Client(sock, clientTLSConfig(creds, t.Expected, &peer))
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = nc.Close()
		return fmt.Errorf("tls handshake with %s: %w", t.NextHop, err)
	}
	if tc.ConnectionState().NegotiatedProtocol != alpnH2 {
		_ = tc.Close()
		return fmt.Errorf("connect %s: %w", t.NextHop, ErrNotH2)
	}
	cfg := p.cfg
	cfg.onStreamDone = func() { p.release(pc) }
	cfg.onClose = func(error) { p.forget(pc, true) }
	cfg.onGoAway = func() { p.forget(pc, false) }
	c := newConn(tc, sock, cfg, peer)
	if err := c.start(); err != nil {
		_ = tc.Close()
		return fmt.Errorf("connect %s: %w", t.NextHop, err)
	}
	p.mu.Lock() // Close and Stats read pc.c of connections in p.all
	pc.c = c
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		pc.c.readLoop()
	}()
	select {
	case <-pc.c.settingsRecv:
		pc.c.mu.Lock()
		none := pc.c.peerMaxStreams == 0
		pc.c.mu.Unlock()
		if none {
			return fmt.Errorf("connect %s: %w: peer allows no streams", t.NextHop, ErrNotH2)
		}
		return nil
	case <-pc.c.done:
		return fmt.Errorf("connect %s: %w", t.NextHop, pc.c.err())
	case <-ctx.Done():
		return fmt.Errorf("connect %s: wait for SETTINGS: %w", t.NextHop, ctx.Err())
	}
}

func (p *Pool) dialTCP(ctx context.Context, src netip.Addr, dst netip.AddrPort) (net.Conn, error) {
	if p.opts.DialTCP != nil {
		return p.opts.DialTCP(ctx, src, dst)
	}
	var d net.Dialer
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
	}
	return d.DialContext(ctx, "tcp", dst.String())
}

// release frees the slot of a stream that left pc.
func (p *Pool) release(pc *pconn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pc.reserved--
	if pc.reserved == 0 {
		p.armIdleLocked(pc)
	}
}

func (p *Pool) armIdleLocked(pc *pconn) {
	if p.opts.IdleTimeout <= 0 || !pc.pooled || pc.reserved > 0 {
		return
	}
	pc.idleSince = time.Now()
	_, next := idleVerdict(0, p.opts.IdleGrace, p.opts.IdleTimeout, 1, p.opts.MaxIdleConnsPerKey)
	if pc.idleTimer == nil {
		pc.idleTimer = time.AfterFunc(next, func() { p.idleExpired(pc) })
		return
	}
	pc.idleTimer.Reset(next)
}

// idleVerdict decides what the idle timer of a connection without streams for idleFor does: close it
// (with GOAWAY), or look again after next. idleInKey counts the pooled connections without streams of
// its key, itself included. Past IdleTimeout it closes; past the grace (when the grace is positive and
// shorter than the timeout) it closes if the key has more than maxIdle idle connections, the oldest
// idle going first since their timers fire first, and a connection kept looks again every grace.
func idleVerdict(idleFor, grace, timeout time.Duration, idleInKey, maxIdle int) (closeIt bool, next time.Duration) {
	if idleFor >= timeout {
		return true, 0
	}
	if grace <= 0 || grace >= timeout {
		return false, timeout - idleFor
	}
	if idleFor < grace {
		return false, grace - idleFor
	}
	if idleInKey > maxIdle {
		return true, 0
	}
	// Kept for now: look again after another grace, so that a count taken while other connections
	// of the key were briefly busy does not keep one more connection than maxIdle until the timeout.
	return false, min(grace, timeout-idleFor)
}

func (p *Pool) idleExpired(pc *pconn) {
	p.mu.Lock()
	if pc.reserved > 0 || !pc.pooled {
		p.mu.Unlock()
		return
	}
	idle := 0
	for _, o := range p.conns[pc.key] {
		if o.reserved == 0 {
			idle++
		}
	}
	closeIt, next := idleVerdict(time.Since(pc.idleSince), p.opts.IdleGrace, p.opts.IdleTimeout, idle, p.opts.MaxIdleConnsPerKey)
	if !closeIt {
		pc.idleTimer.Reset(next)
		p.mu.Unlock()
		return
	}
	p.unpoolLocked(pc)
	p.mu.Unlock()
	pc.c.goAway()
}

// forget takes pc out of the pool: when it closed (gone) or received GOAWAY.
func (p *Pool) forget(pc *pconn, gone bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.unpoolLocked(pc)
	if gone {
		delete(p.all, pc)
	}
}

func (p *Pool) unpoolLocked(pc *pconn) {
	if pc.idleTimer != nil {
		pc.idleTimer.Stop()
	}
	if !pc.pooled {
		return
	}
	pc.pooled = false
	list := p.conns[pc.key]
	if i := slices.Index(list, pc); i >= 0 {
		list = slices.Delete(list, i, i+1)
	}
	if len(list) == 0 {
		delete(p.conns, pc.key)
	} else {
		p.conns[pc.key] = list
	}
}

// PoolStats is a snapshot of a Pool: gauges now, counts since the Pool was created.
type PoolStats struct {
	Conns   int // live connections, pooled or draining
	Pooled  int // connections that may take new streams
	Streams int // streams open on live connections

	StreamIdleTimeouts uint64     // streams reset after their idle timeout (Stream.SetIdleTimeout)
	ProtocolErrors     uint64     // connections closed with GOAWAY for a server's protocol error
	Floods             FloodStats // connections closed with GOAWAY for a server's flood
}

// Stats returns a snapshot of the pool.
func (p *Pool) Stats() PoolStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := PoolStats{
		StreamIdleTimeouts: p.stats.streamIdleTimeouts.Load(),
		ProtocolErrors:     p.stats.protocolErrors.Load(),
		Floods:             p.stats.floodStats(),
	}
	for pc := range p.all {
		if pc.c == nil {
			continue // DialOver's connection, still in its handshake
		}
		st.Conns++
		if pc.pooled {
			st.Pooled++
		}
		st.Streams += int(pc.c.streamCount.Load())
	}
	return st
}

// Close closes every connection (open streams fail) and waits for the pool's goroutines. Later Dials
// return ErrPoolClosed.
func (p *Pool) Close() error {
	p.mu.Lock()
	p.closed = true
	all := make([]*pconn, 0, len(p.all))
	for pc := range p.all {
		if pc.c == nil {
			continue // DialOver's handshake, which the cancel below ends
		}
		all = append(all, pc)
		if pc.idleTimer != nil {
			pc.idleTimer.Stop()
		}
	}
	p.mu.Unlock()
	p.cancel()
	for _, pc := range all {
		pc.c.close(nil)
	}
	p.wg.Wait()
	return nil
}
