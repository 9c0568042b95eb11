package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/mesh/dnsname"
)

// Protocol is the transport a query came on, and the one it is forwarded over.
type Protocol string

const (
	UDP Protocol = "udp"
	TCP Protocol = "tcp"
)

// Defaults of the zero Config fields.
const (
	DefaultTimeout     = 5 * time.Second
	DefaultMaxInflight = 256
	DefaultMaxTCPConns = 256
	// DefaultMaxPerSource bounds what one client address holds of either (a pod flooding the proxy with
	// queries its upstream never answers cannot take every slot from the pods next to it).
	DefaultMaxPerSource   = 32
	DefaultTCPIdleTimeout = 10 * time.Second
	// TTL of the answers from the mesh, in seconds (Istio's DNS proxy uses 30).
	TTL = 30
	// maxUDPReply caps a UDP reply whatever the client's EDNS0 buffer says.
	maxUDPReply = 4096
	// MaxQuery is the largest query the proxy reads: one question with EDNS0 options fits many times
	// over; anything longer is dropped unparsed.
	MaxQuery = 4096
)

// Source describes the client of a query: the workload that owns its address.
type Source struct {
	Workload, Namespace string
}

// Config configures a Server.
type Config struct {
	// Lookup reads the mesh state (a *state.Store). Required.
	Lookup dnsname.Lookup
	// Source finds the workload behind a client address (ok false when none is known: the query is then
	// answered for exact names only). Nil knows no client.
	Source func(netip.Addr) (Source, bool)
	// KnownClientsOnly drops the queries of clients Source does not know (loopback excepted), so that a
	// proxy listening on a node address is no open resolver for the network.
	KnownClientsOnly bool
	// Domain is the cluster domain (default cluster.local).
	Domain string
	// Upstreams are the resolvers unknown names are forwarded to, tried in order (ip:port).
	Upstreams []netip.AddrPort
	// Dial opens a connection to an upstream ("udp" or "tcp"). The agent's dials are marked so capture
	// never takes them. Nil uses a plain net.Dialer.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// Timeout bounds one upstream exchange (default DefaultTimeout).
	Timeout time.Duration
	// MaxInflight bounds the queries being handled at once (default DefaultMaxInflight); UDP queries
	// beyond it are dropped (the client retries), TCP connections wait.
	MaxInflight int
	// MaxTCPConns bounds open TCP connections (default DefaultMaxTCPConns); more are closed at accept.
	MaxTCPConns int
	// MaxPerSource bounds the queries in flight (UDP) and the open TCP connections of one client address
	// (default DefaultMaxPerSource); beyond it UDP queries are dropped and connections closed at accept.
	MaxPerSource int
	// TCPIdleTimeout closes a TCP connection that sends no complete query for this long (default
	// DefaultTCPIdleTimeout).
	TCPIdleTimeout time.Duration
	// Registerer receives the metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Logger receives an access-log line per query (debug) and errors; nil discards.
	Logger *slog.Logger
}

// Server is the DNS proxy. Its methods are safe for concurrent use.
type Server struct {
	cfg      Config
	log      *slog.Logger
	m        *metricSet
	inflight chan struct{} // a token per query being handled
	tcpConns chan struct{} // a token per open TCP connection
	udpSrc   perSource     // UDP queries in flight by client address
	tcpSrc   perSource     // open TCP connections by client address
}

// perSource counts what each client address holds, up to a bound.
type perSource struct {
	mu  sync.Mutex
	max int
	n   map[netip.Addr]int
}

// acquire takes one for a, unless a holds max already.
func (p *perSource) acquire(a netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[a] >= p.max {
		return false
	}
	p.n[a]++
	return true
}

// release gives back one that a held.
func (p *perSource) release(a netip.Addr) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n[a]--; p.n[a] <= 0 {
		delete(p.n, a)
	}
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Lookup == nil {
		return nil, errors.New("dns proxy: a state lookup is required")
	}
	if cfg.Domain == "" {
		cfg.Domain = "cluster.local"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = DefaultMaxInflight
	}
	if cfg.MaxTCPConns <= 0 {
		cfg.MaxTCPConns = DefaultMaxTCPConns
	}
	if cfg.MaxPerSource <= 0 {
		cfg.MaxPerSource = DefaultMaxPerSource
	}
	if cfg.TCPIdleTimeout <= 0 {
		cfg.TCPIdleTimeout = DefaultTCPIdleTimeout
	}
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	for _, u := range cfg.Upstreams {
		if !u.IsValid() || u.Port() == 0 {
			return nil, fmt.Errorf("dns proxy: invalid upstream %s", u)
		}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, log: log, m: m,
		inflight: make(chan struct{}, cfg.MaxInflight), tcpConns: make(chan struct{}, cfg.MaxTCPConns),
		udpSrc: perSource{max: cfg.MaxPerSource, n: map[netip.Addr]int{}},
		tcpSrc: perSource{max: cfg.MaxPerSource, n: map[netip.Addr]int{}}}, nil
}

// answeredBy values of ambit_dns_responses_total.
const (
	byMesh     = "mesh"     // answered from the state
	byUpstream = "upstream" // the upstream's reply
	byProxy    = "proxy"    // an error reply of the proxy itself (FORMERR, NOTIMP, SERVFAIL)
)

// Handle answers one query from client src that came over proto; a nil reply means drop it (fewer
// bytes than a DNS header or more than MaxQuery, a message that is itself a response, or a client
// KnownClientsOnly refuses). It never panics on any input.
func (s *Server) Handle(ctx context.Context, query []byte, src netip.AddrPort, proto Protocol) []byte {
	start := time.Now()
	if len(query) < 12 {
		s.m.dropped.WithLabelValues("malformed").Inc()
		return nil
	}
	if len(query) > MaxQuery {
		s.m.dropped.WithLabelValues("oversize").Inc()
		return nil
	}
	if query[2]&0x80 != 0 { // QR: a response sent to the proxy (never answer one: no reflection loops)
		s.m.dropped.WithLabelValues("response").Inc()
		return nil
	}
	source, known := Source{}, false
	if s.cfg.Source != nil {
		source, known = s.cfg.Source(src.Addr().Unmap())
	}
	if s.cfg.KnownClientsOnly && !known && !src.Addr().Unmap().IsLoopback() {
		s.m.dropped.WithLabelValues("unknown_client").Inc()
		return nil
	}
	req := new(dns.Msg)
	if err := req.Unpack(query); err != nil {
		return s.finish(formErr(query), src, source, proto, "", "", byProxy, start, err)
	}
	if req.Opcode != dns.OpcodeQuery {
		r := new(dns.Msg)
		r.SetRcode(req, dns.RcodeNotImplemented)
		r.Question = nil
		return s.finish(r, src, source, proto, "", "", byProxy, start, nil)
	}
	if len(req.Question) != 1 {
		r := new(dns.Msg)
		r.SetRcode(req, dns.RcodeFormatError)
		r.Question = nil
		return s.finish(r, src, source, proto, "", "", byProxy, start, errors.New("want exactly one question"))
	}
	q := req.Question[0]
	qtype := dns.TypeToString[q.Qtype]
	if qtype == "" {
		qtype = "other"
	}
	labels := []string{qtype, string(proto), orUnknown(source.Workload), orUnknown(source.Namespace)}
	s.m.requests.WithLabelValues(labels...).Inc()

	res := dnsname.Result{Kind: dnsname.Forward}
	if q.Qclass == dns.ClassINET {
		ns := ""
		if known {
			ns = source.Namespace
		}
		res = dnsname.Resolve(s.cfg.Lookup, s.cfg.Domain, dnsname.Query{Name: q.Name, Type: queryType(q.Qtype), Namespace: ns})
	}
	if res.Kind == dnsname.Answer {
		return s.finish(s.answer(req, res), src, source, proto, q.Name, qtype, byMesh, start, nil)
	}
	reply, err := s.forward(ctx, req, proto, labels)
	if err != nil {
		r := new(dns.Msg)
		r.SetRcode(req, dns.RcodeServerFailure)
		r.RecursionAvailable = true
		return s.finish(r, src, source, proto, q.Name, qtype, byProxy, start, err)
	}
	reply.Id = req.Id
	return s.finish(reply, src, source, proto, q.Name, qtype, byUpstream, start, nil)
}

// finish packs the reply (truncated for UDP to the client's size), accounts it and writes the access log.
func (s *Server) finish(r *dns.Msg, src netip.AddrPort, source Source, proto Protocol, name, qtype, by string,
	start time.Time, cause error) []byte {
	if proto == UDP {
		r.Truncate(udpSize(r))
	}
	b, err := r.Pack()
	if err != nil {
		// A reply the library cannot pack (an upstream's record it parsed but cannot write back).
		fail := new(dns.Msg)
		fail.Id, fail.Response, fail.Opcode, fail.Rcode = r.Id, true, r.Opcode, dns.RcodeServerFailure
		fail.Question = r.Question
		if b, err = fail.Pack(); err != nil {
			s.m.dropped.WithLabelValues("malformed").Inc()
			return nil
		}
		r, cause = fail, fmt.Errorf("pack reply: %w", err)
	}
	rcode := dns.RcodeToString[r.Rcode]
	s.m.responses.WithLabelValues(rcode, by).Inc()
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		attrs := []any{"src", src, "workload", source.Workload, "namespace", source.Namespace, "protocol", proto,
			"name", name, "type", qtype, "rcode", rcode, "answered_by", by, "answers", len(r.Answer),
			"truncated", r.Truncated, "duration", time.Since(start)}
		if cause != nil {
			attrs = append(attrs, "err", cause)
		}
		s.log.Debug("dns", attrs...)
	}
	return b
}

// formErr is the FORMERR reply to a query whose header is whole but whose body does not parse: the
// header's ID, opcode and RD are kept, nothing else.
func formErr(query []byte) *dns.Msg {
	r := new(dns.Msg)
	r.Id = binary.BigEndian.Uint16(query)
	r.Response = true
	r.Opcode = int(query[2]>>3) & 0xf
	r.RecursionDesired = query[2]&0x01 != 0
	r.Rcode = dns.RcodeFormatError
	return r
}

// udpSize is how large a UDP reply to req may be: 512 bytes, or the EDNS0 buffer size the client
// advertised (at most maxUDPReply).
func udpSize(r *dns.Msg) int {
	size := dns.MinMsgSize
	if opt := r.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
		size = min(int(opt.UDPSize()), maxUDPReply)
	}
	return size
}

func queryType(t uint16) dnsname.Type {
	switch t {
	case dns.TypeA:
		return dnsname.TypeA
	case dns.TypeAAAA:
		return dnsname.TypeAAAA
	}
	return dnsname.TypeOther
}

// answer builds the reply from the mesh: a CNAME from the queried name to the host when the name was a
// search-domain form, then the addresses under the host's name.
func (s *Server) answer(req *dns.Msg, res dnsname.Result) *dns.Msg {
	r := new(dns.Msg)
	r.SetReply(req)
	r.Authoritative = true
	r.RecursionAvailable = true
	q := req.Question[0]
	owner := q.Name
	if res.CNAME {
		owner = dns.Fqdn(res.Host)
		r.Answer = append(r.Answer, &dns.CNAME{
			Hdr:    dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: TTL},
			Target: owner,
		})
	}
	for _, a := range res.Addrs {
		hdr := dns.RR_Header{Name: owner, Class: dns.ClassINET, Ttl: TTL}
		if a.Is4() {
			hdr.Rrtype = dns.TypeA
			r.Answer = append(r.Answer, &dns.A{Hdr: hdr, A: a.AsSlice()})
		} else {
			hdr.Rrtype = dns.TypeAAAA
			r.Answer = append(r.Answer, &dns.AAAA{Hdr: hdr, AAAA: a.AsSlice()})
		}
	}
	if opt := req.IsEdns0(); opt != nil {
		r.SetEdns0(min(max(opt.UDPSize(), dns.MinMsgSize), maxUDPReply), false)
	}
	return r
}

// errNoUpstream is the failure of a forward without upstreams.
var errNoUpstream = errors.New("no upstream resolver configured")

// forward exchanges req with the upstreams in order over proto, each within the timeout, and returns
// the first reply. Each attempt counts in istio_dns_upstream_requests_total, each failure in
// istio_dns_upstream_failures_total.
func (s *Server) forward(ctx context.Context, req *dns.Msg, proto Protocol, labels []string) (*dns.Msg, error) {
	if len(s.cfg.Upstreams) == 0 {
		s.m.upstreamFailures.WithLabelValues(labels...).Inc()
		return nil, errNoUpstream
	}
	var errs []error
	for _, u := range s.cfg.Upstreams {
		s.m.upstreamRequests.WithLabelValues(labels...).Inc()
		start := time.Now()
		r, err := s.exchange(ctx, req, proto, u)
		s.m.upstreamDuration.WithLabelValues(labels...).Observe(time.Since(start).Seconds())
		if err == nil {
			return r, nil
		}
		s.m.upstreamFailures.WithLabelValues(labels...).Inc()
		errs = append(errs, fmt.Errorf("forward to %s: %w", u, err))
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

func (s *Server) exchange(ctx context.Context, req *dns.Msg, proto Protocol, u netip.AddrPort) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	c, err := s.cfg.Dial(ctx, string(proto), u.String())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	cl := &dns.Client{Net: string(proto), Timeout: s.cfg.Timeout}
	co := &dns.Conn{Conn: c}
	if proto == UDP {
		// Read the upstream's reply in full: it is truncated to the client's size on the way back.
		co.UDPSize = maxUDPReply
	}
	r, _, err := cl.ExchangeWithConnContext(ctx, req, co)
	return r, err
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// PacketConn is the UDP socket ServeUDP reads queries from and replies on: redirect's DNS socket
// (original destinations of captured datagrams, replies from them), or a plain socket.
type PacketConn interface {
	// ReadQuery reads one datagram into b: its length, its source and the address it was sent to.
	ReadQuery(b []byte) (n int, src, dst netip.AddrPort, err error)
	// Reply sends b to to, from the address from (a query's dst).
	Reply(b []byte, from, to netip.AddrPort) error
	// Close makes ReadQuery return.
	Close() error
}

// ServeUDP serves queries on pc until ctx ends or pc fails, then closes pc and returns once every
// query it read is handled.
func (s *Server) ServeUDP(ctx context.Context, pc PacketConn) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	defer pc.Close()
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, src, dst, err := pc.ReadQuery(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("read dns query: %w", err)
		}
		client := src.Addr().Unmap()
		if !s.udpSrc.acquire(client) {
			s.m.dropped.WithLabelValues("source_overload").Inc()
			continue
		}
		select {
		case s.inflight <- struct{}{}:
		default:
			s.udpSrc.release(client)
			s.m.dropped.WithLabelValues("overload").Inc()
			continue
		}
		q := append([]byte(nil), buf[:n]...)
		wg.Go(func() {
			defer func() { <-s.inflight; s.udpSrc.release(client) }()
			reply := s.Handle(ctx, q, src, UDP)
			if reply == nil {
				return
			}
			if err := pc.Reply(reply, dst, src); err != nil && ctx.Err() == nil {
				s.log.Warn("dns reply", "src", src, "dst", dst, "err", err)
			}
		})
	}
}

// ServeTCP serves DNS over TCP (RFC 7766: two-byte length prefix, several queries per connection,
// answered in order) on ln until ctx ends, then closes ln and the connections and returns once they are
// done.
func (s *Server) ServeTCP(ctx context.Context, ln net.Listener) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("accept dns connection: %w", err)
		}
		client := addrPortOf(c.RemoteAddr()).Addr().Unmap()
		if !s.tcpSrc.acquire(client) {
			s.m.dropped.WithLabelValues("source_overload").Inc()
			c.Close()
			continue
		}
		select {
		case s.tcpConns <- struct{}{}:
		default:
			s.tcpSrc.release(client)
			s.m.dropped.WithLabelValues("overload").Inc()
			c.Close()
			continue
		}
		wg.Go(func() {
			defer func() { <-s.tcpConns; s.tcpSrc.release(client) }()
			s.serveConn(ctx, c)
		})
	}
}

func (s *Server) serveConn(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	src := addrPortOf(c.RemoteAddr())
	var hdr [2]byte
	buf := make([]byte, dns.MaxMsgSize)
	for {
		_ = c.SetReadDeadline(time.Now().Add(s.cfg.TCPIdleTimeout))
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		n := int(binary.BigEndian.Uint16(hdr[:]))
		if _, err := io.ReadFull(c, buf[:n]); err != nil {
			return
		}
		select {
		case s.inflight <- struct{}{}:
		case <-ctx.Done():
			return
		}
		reply := s.Handle(ctx, buf[:n], src, TCP)
		<-s.inflight
		if reply == nil {
			continue
		}
		out := make([]byte, 2+len(reply))
		binary.BigEndian.PutUint16(out, uint16(len(reply)))
		copy(out[2:], reply)
		_ = c.SetWriteDeadline(time.Now().Add(s.cfg.TCPIdleTimeout))
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch v := a.(type) {
	case *net.TCPAddr:
		return v.AddrPort()
	case *net.UDPAddr:
		return v.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// ParseResolvConf returns the nameservers of a resolv.conf file's content, with port 53.
func ParseResolvConf(content string) []netip.AddrPort {
	var out []netip.AddrPort
	for line := range strings.Lines(content) {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		host, _, _ := strings.Cut(f[1], "%") // a zone of a link-local address is not kept
		a, err := netip.ParseAddr(host)
		if err != nil {
			continue
		}
		out = append(out, netip.AddrPortFrom(a, 53))
	}
	return out
}
