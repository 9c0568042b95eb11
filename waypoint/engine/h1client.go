package engine

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"

	"github.com/ambit-mesh/ambit/waypoint/upstream"
)

// h1Client sends HTTP/1.1 requests to endpoints over keep-alive connections pooled per endpoint
// (upstream.IdlePool: at most h1MaxIdlePerEndpoint idle per endpoint, closed after h1IdleTimeout). It
// replaces http.Transport on the plain HTTP/1.1 path: the request is written from the handler's
// goroutine (request line and headers in one pooled buffer, straight from the request's header map)
// and the response is read from it, so a request without a streamed body costs no goroutine and no
// channel; a streamed request body is written by one goroutine while the response is read.
//
// A connection returns to the pool only after its response body was read to the end, the request
// was written whole, and neither side asked to close it. A request that fails on a reused connection
// before any response byte arrived (the endpoint closed the idle connection) is sent once more on a
// new connection when it can be replayed: no body or a buffered one, and an idempotent method (as
// http.Transport does).
type h1Client struct {
	dial func(ctx context.Context, addr string) (net.Conn, error)
	idle upstream.IdlePool[*h1Conn]
	// wg tracks the writers of streamed request bodies; each ends with its request's body or connection.
	wg sync.WaitGroup
}

const (
	h1MaxIdlePerEndpoint = 256
	h1IdleTimeout        = 90 * time.Second
)

// h1Conn is one upstream connection; it counts what it reads so a failure before any response byte
// can be told apart.
type h1Conn struct {
	net.Conn
	addr     netip.AddrPort
	br       *bufio.Reader
	read     int64 // bytes read since the current request was written
	requests int   // requests sent
	// headLimit bounds the bytes read from the connection while a response head is read (negative: no
	// bound), so that an endpoint sending an endless header line or 1xx responses cannot grow the
	// waypoint's memory; the buffered reader's read-ahead counts too, so the bound is approximate.
	headLimit int64
}

// Response head bounds: MaxHeaderBytes of heads (Envoy's max_response_headers_kb is 60 KiB), and at most
// max1xxResponses informational responses before the final one (as net/http's Transport).
const max1xxResponses = 5

var errResponseHeadTooLarge = errors.New("response head too large")

func (c *h1Conn) Read(p []byte) (int, error) {
	if c.headLimit >= 0 {
		if c.headLimit == 0 {
			return 0, errResponseHeadTooLarge
		}
		if int64(len(p)) > c.headLimit {
			p = p[:c.headLimit]
		}
	}
	n, err := c.Conn.Read(p)
	c.read += int64(n)
	if c.headLimit >= 0 {
		c.headLimit -= int64(n)
	}
	return n, err
}

var (
	headerBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}
	bodyWriters   = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 16<<10) }}
	errReused     = errors.New("connection closed before the response")
)

// h1Request is what roundTrip sends besides the request itself.
type h1Request struct {
	// body is the whole request body when it is buffered (replayable); nil streams req.Body.
	body []byte
	// maxRequests is the DestinationRule's maxRequestsPerConnection (0: unlimited).
	maxRequests int
	// on1xx receives informational responses (not 101); nil drops them.
	on1xx func(code int, h http.Header)
}

// roundTrip sends req to addr and returns its response; the response body, once read to the end or
// closed, hands the connection back (or closes it).
func (hc *h1Client) roundTrip(ctx context.Context, req *http.Request, addr netip.AddrPort, o h1Request) (*http.Response, error) {
	for try := 0; ; try++ {
		c, reused, err := hc.get(ctx, addr)
		if err != nil {
			return nil, err
		}
		resp, err := hc.send(ctx, c, req, addr, o)
		if err == nil {
			return resp, nil
		}
		if try == 0 && reused && c.read == 0 && ctx.Err() == nil && replayable(req, o.body) {
			continue
		}
		if reused && errors.Is(err, errReused) {
			err = fmt.Errorf("read response: %w", io.ErrUnexpectedEOF)
		}
		return nil, err
	}
}

// replayable reports whether a request may be sent again after its connection failed before any
// response byte: its body is absent or buffered and its method idempotent (http.Transport's rule).
func replayable(req *http.Request, body []byte) bool {
	if body == nil && req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0 {
		return false
	}
	switch req.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return req.Header.Get("Idempotency-Key") != "" || req.Header.Get("X-Idempotency-Key") != ""
}

// get returns an idle connection to addr or dials one.
func (hc *h1Client) get(ctx context.Context, addr netip.AddrPort) (*h1Conn, bool, error) {
	c, ok, stale := hc.idle.Get(addr, time.Now())
	for _, s := range stale {
		s.Close()
	}
	if ok {
		return c, true, nil
	}
	nc, err := hc.dial(ctx, addr.String())
	if err != nil {
		return nil, false, err
	}
	c = &h1Conn{Conn: nc, addr: addr, headLimit: -1}
	c.br = bufio.NewReaderSize(c, 4<<10)
	return c, false, nil
}

// put hands c back to the pool (or closes it when the pool is full).
func (hc *h1Client) put(c *h1Conn) {
	if ev, ok := hc.idle.Put(c.addr, c, time.Now()); ok {
		ev.Close()
	}
}

// expire closes the connections idle for too long.
func (hc *h1Client) expire() {
	for _, c := range hc.idle.Expire(time.Now()) {
		c.Close()
	}
}

// closeIdle closes every idle connection.
func (hc *h1Client) closeIdle() {
	for _, c := range hc.idle.Drain() {
		c.Close()
	}
}

// aLongTimeAgo is a deadline in the past: setting it unblocks the connection's reads and writes.
var aLongTimeAgo = time.Unix(1, 0)

func (hc *h1Client) send(ctx context.Context, c *h1Conn, req *http.Request, addr netip.AddrPort, o h1Request) (*http.Response, error) {
	c.requests++
	c.read = 0
	closeAfter := req.Close || o.maxRequests == 1 || o.maxRequests > 1 && c.requests >= o.maxRequests

	// Framing of the body.
	streamed := o.body == nil && req.Body != nil && req.Body != http.NoBody && req.ContentLength != 0
	chunked := streamed && req.ContentLength < 0
	bp := headerBuffers.Get().(*[]byte)
	b, err := appendRequestHead(*bp, req, addr, o.body, streamed, chunked, closeAfter)
	if err != nil {
		*bp = b[:0]
		headerBuffers.Put(bp)
		c.Close()
		return nil, err
	}

	// A canceled or expired request unblocks the connection's I/O; the connection is then closed.
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })

	var wdone chan error
	if !streamed {
		if len(o.body) <= 64<<10 {
			b = append(b, o.body...)
			_, err = c.Write(b)
		} else if _, err = c.Write(b); err == nil {
			_, err = c.Write(o.body)
		}
		*bp = b[:0]
		headerBuffers.Put(bp)
		if err != nil {
			stop()
			c.Close()
			return nil, fmt.Errorf("write request: %w", err)
		}
	} else {
		wdone = make(chan error, 1)
		hc.wg.Go(func() { wdone <- writeBody(c, bp, b, req, chunked) })
	}

	resp, err := readResponse(c, req, o.on1xx)
	if err != nil {
		stop()
		c.Close()
		if wdone != nil {
			select {
			case werr := <-wdone:
				if werr != nil && c.read == 0 {
					return nil, fmt.Errorf("write request: %w", werr)
				}
			default: // the writer ends with its next write or body read (the connection is closed)
			}
		}
		return nil, err
	}
	keep := !closeAfter && !resp.Close && resp.StatusCode != http.StatusSwitchingProtocols
	resp.Body = &h1Body{rc: resp.Body, c: c, hc: hc, stop: stop, wdone: wdone, keep: keep}
	return resp, nil
}

// readResponse reads the response to req from c, relaying informational responses to on1xx.
func readResponse(c *h1Conn, req *http.Request, on1xx func(int, http.Header)) (*http.Response, error) {
	c.headLimit = MaxHeaderBytes + int64(c.br.Size()) // what the head may take plus one read-ahead
	defer func() { c.headLimit = -1 }()
	for informational := 0; ; informational++ {
		if informational > max1xxResponses {
			return nil, fmt.Errorf("read response: more than %d informational responses", max1xxResponses)
		}
		resp, err := http.ReadResponse(c.br, req)
		if err != nil {
			if c.read == 0 && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)) {
				return nil, errReused
			}
			return nil, fmt.Errorf("read response: %w", err)
		}
		if code := resp.StatusCode; code >= 100 && code < 200 && code != http.StatusSwitchingProtocols {
			if on1xx != nil {
				on1xx(code, resp.Header)
			}
			continue
		}
		return resp, nil
	}
}

// writeBody writes the head in b (a buffer from headerBuffers, given back here) and then the
// streamed body of req, chunked or of req.ContentLength bytes, flushing after each read of the body.
func writeBody(c *h1Conn, bp *[]byte, b []byte, req *http.Request, chunked bool) (err error) {
	bw := bodyWriters.Get().(*bufio.Writer)
	bw.Reset(c)
	defer func() {
		bw.Reset(nil)
		bodyWriters.Put(bw)
		if err != nil {
			c.Close() // the response read fails too; the connection is not reused
		}
	}()
	bw.Write(b)
	*bp = b[:0]
	headerBuffers.Put(bp)
	buf := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(buf)
	var n int64
	for {
		nr, rerr := req.Body.Read(*buf)
		if nr > 0 {
			n += int64(nr)
			if !chunked && n > req.ContentLength {
				return fmt.Errorf("write request body: more than Content-Length %d", req.ContentLength)
			}
			if chunked {
				var hb [20]byte
				bw.Write(strconv.AppendInt(hb[:0], int64(nr), 16))
				bw.WriteString("\r\n")
			}
			bw.Write((*buf)[:nr])
			if chunked {
				bw.WriteString("\r\n")
			}
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("write request body: %w", err)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("read request body: %w", rerr)
		}
	}
	if !chunked {
		if n != req.ContentLength {
			return fmt.Errorf("write request body: %d bytes, Content-Length %d", n, req.ContentLength)
		}
		return nil
	}
	bw.WriteString("0\r\n")
	for k, vs := range req.Trailer {
		if !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		for _, v := range vs {
			if httpguts.ValidHeaderFieldValue(v) {
				bw.WriteString(k)
				bw.WriteString(": ")
				bw.WriteString(v)
				bw.WriteString("\r\n")
			}
		}
	}
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write request body: %w", err)
	}
	return nil
}

// appendRequestHead appends the request line and headers of req to b, as http.Transport writes
// them: Host from req.Host (else the endpoint address), the header map as it is (no copy, unsorted),
// then the body framing. It rejects what http.Transport rejects: invalid header names and values and
// an invalid Host.
func appendRequestHead(b []byte, req *http.Request, addr netip.AddrPort, body []byte, streamed, chunked, closeAfter bool) ([]byte, error) {
	host := req.Host
	if host == "" && req.URL != nil {
		host = req.URL.Host
	}
	if host == "" {
		host = addr.String()
	}
	if !httpguts.ValidHostHeader(host) {
		return b, errors.New("invalid Host header")
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	if !validMethod(method) {
		return b, fmt.Errorf("invalid method %q", method)
	}
	b = append(b, method...)
	b = append(b, ' ')
	b = appendRequestURI(b, req.URL)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, host...)
	b = append(b, "\r\n"...)
	for k, vs := range req.Header {
		switch k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer", "Connection":
			// Framing and connection management are this client's (a mirror's copy keeps the client's
			// hop-by-hop headers; they are not forwarded).
			continue
		case "User-Agent":
			if len(vs) == 0 || vs[0] == "" {
				continue
			}
		}
		if !httpguts.ValidHeaderFieldName(k) {
			return b, fmt.Errorf("invalid header field name %q", k)
		}
		for _, v := range vs {
			if !httpguts.ValidHeaderFieldValue(v) {
				return b, fmt.Errorf("invalid header field value for %q", k)
			}
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, strings.TrimSpace(v)...)
			b = append(b, "\r\n"...)
		}
	}
	if closeAfter {
		b = append(b, "Connection: close\r\n"...)
	}
	switch {
	case body != nil:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(body)), 10)
		b = append(b, "\r\n"...)
	case chunked:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
		if len(req.Trailer) > 0 {
			b = append(b, "Trailer: "...)
			first := true
			for k := range req.Trailer {
				if !first {
					b = append(b, ", "...)
				}
				first = false
				b = append(b, k...)
			}
			b = append(b, "\r\n"...)
		}
	case streamed:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, req.ContentLength, 10)
		b = append(b, "\r\n"...)
	case method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch:
		b = append(b, "Content-Length: 0\r\n"...)
	}
	return append(b, "\r\n"...), nil
}

// appendRequestURI appends u's request target (path and query) to b.
func appendRequestURI(b []byte, u *url.URL) []byte {
	if u == nil {
		return append(b, '/')
	}
	if u.Opaque != "" || u.Scheme != "" && u.Scheme != "http" && u.Scheme != "https" {
		return append(b, u.RequestURI()...)
	}
	p := u.EscapedPath()
	if p == "" {
		p = "/"
	}
	b = append(b, p...)
	if u.ForceQuery || u.RawQuery != "" {
		b = append(b, '?')
		b = append(b, u.RawQuery...)
	}
	return b
}

func validMethod(m string) bool {
	for i := 0; i < len(m); i++ {
		if !httpguts.IsTokenRune(rune(m[i])) {
			return false
		}
	}
	return m != ""
}

// h1Body is a response body on a pooled connection: at its end the connection goes back to the pool
// when it can be reused, and is closed otherwise (also when the body is closed early).
type h1Body struct {
	rc    io.ReadCloser
	c     *h1Conn
	hc    *h1Client
	stop  func() bool // stops the request's cancellation hook
	wdone chan error  // the streamed body's writer; nil when the request was written at once
	keep  bool
	done  bool
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	switch {
	case err == io.EOF:
		b.finish(true)
	case err != nil:
		b.finish(false)
	}
	return n, err
}

func (b *h1Body) Close() error {
	b.finish(false)
	return nil
}

func (b *h1Body) finish(eof bool) {
	if b.done {
		return
	}
	b.done = true
	reuse := eof && b.keep && b.stop() && b.c.br.Buffered() == 0
	if reuse && b.wdone != nil {
		select {
		case err := <-b.wdone:
			reuse = err == nil
		default:
			reuse = false // the request body is still being written: this exchange ends the connection
		}
	}
	if !reuse {
		b.stop()
		b.c.Close()
		return
	}
	b.hc.put(b.c)
}
