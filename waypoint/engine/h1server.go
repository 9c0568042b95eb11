package engine

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// The engine's downstream HTTP/1.1 server: one loop per connection on the goroutine ServeConn runs on.
// Requests are parsed by http.ReadRequest (net/http's own parser, body framing and chunked decoding),
// with net/http's server checks on top (Host, header names and values, versions, the header size
// limit), so what it accepts and rejects, and the status codes it answers, are net/http's server's.
// What it leaves out of net/http's server: the background read per request (a client that goes away
// is seen at the next write, or when ServeConn's context ends), a context per request, a response
// header map and a bufio.Writer per request, and buffering the first 2 KiB of a body to add a
// Content-Length or sniff a Content-Type (a response without Content-Length is chunked, or
// close-delimited for HTTP/1.0). Between requests the connection holds no buffers: the 4 KiB reader
// and writer go back to their pools, and an idle connection waits on a read into its own 1 KiB.

const (
	h1ReadBufferSize  = 4 << 10
	h1WriteBufferSize = 4 << 10
	// h1IdleReadSize is what an idle connection keeps to read the start of its next request.
	h1IdleReadSize = 1 << 10
	// maxPostHandlerReadBytes is how much unread request body is discarded after the response starts
	// to keep the connection; more closes it (net/http's limit).
	maxPostHandlerReadBytes = 256 << 10
	// rstAvoidanceDelay bounds how long a connection closed with unread input waits for the client
	// to read the response (net/http's closeWriteAndWait).
	rstAvoidanceDelay = 500 * time.Millisecond
)

var (
	h1Readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, h1ReadBufferSize) }}
	h1Writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, h1WriteBufferSize) }}
)

// h1SrvConn is one downstream HTTP/1.1 connection.
type h1SrvConn struct {
	e      *Engine
	sc     *streamConn
	info   *ConnInfo
	ctx    context.Context // the connection's: cancelled (errClientGone) when the watch sees the client leave
	cancel context.CancelCauseFunc
	remote string
	src    h1Source
	br     *bufio.Reader // nil while idle
	bw     *bufio.Writer // nil between responses
	hdr    http.Header   // the response header map, cleared and reused from request to request
	resp   h1Resp
	post   bool // the last request was a POST (leading CRLFs are skipped, as net/http does)

	wmu         sync.Mutex // guards writing 1xx responses and the start of the response head
	canWrite100 bool       // guarded by wmu; an automatic 100 Continue may still be written

	dateSec int64
	date    []byte

	watch h1Watch
}

// errClientGone cancels a connection's requests when its client closed or reset the connection.
var errClientGone = errors.New("client closed the connection")

// h1WatchDelay is how long a request without a body runs before the connection is watched for the
// client leaving.
const h1WatchDelay = 50 * time.Millisecond

// h1Watch notices a client that goes away while its request is served (net/http's server keeps a
// background read for that on every request; here only a request that runs longer than h1WatchDelay pays
// for one): one read of the connection, off the handler's goroutine, which cancels the connection's
// context when the client closes or resets, so that the upstream request is abandoned (499, flag DC). A
// byte that arrives instead (the next request, pipelined) is kept for the next request. Only requests
// without a body, with nothing more buffered, and that cannot take the connection over (no Upgrade, no
// CONNECT) are watched: for the others the handler owns the connection's reads.
type h1Watch struct {
	mu      sync.Mutex
	armed   bool          // a watched request is being served
	reading bool          // the background read is in flight
	done    chan struct{} // closed when the background read returns
	got     int           // bytes the background read got (0 or 1)
	b       [1]byte
	t       *time.Timer // runs fire; made at the first watched request
}

// watchable reports whether req may be watched (see h1Watch).
func (c *h1SrvConn) watchable(req *http.Request, body *h1ReqBody) bool {
	return body == nil && c.br.Buffered() == 0 && len(c.src.pending) == 0 && req.Method != http.MethodConnect &&
		req.Header.Get("Upgrade") == ""
}

// watchStart arms the watch for the request about to be served.
func (c *h1SrvConn) watchStart() {
	w := &c.watch
	w.mu.Lock()
	w.armed = true
	w.mu.Unlock()
	if w.t == nil {
		w.t = time.AfterFunc(h1WatchDelay, c.watchFire)
	} else {
		w.t.Reset(h1WatchDelay)
	}
}

// watchFire is the background read (on the timer's goroutine).
func (c *h1SrvConn) watchFire() {
	w := &c.watch
	w.mu.Lock()
	if !w.armed || w.reading || w.got > 0 {
		w.mu.Unlock()
		return
	}
	w.reading, w.done = true, make(chan struct{})
	w.mu.Unlock()
	n, err := c.sc.Read(w.b[:])
	w.mu.Lock()
	w.reading, w.got = false, n
	close(w.done)
	w.mu.Unlock()
	if n == 0 && err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		c.cancel(errClientGone)
	}
}

// watchEnd disarms the watch once the handler returned (or takes the connection over): it interrupts
// a background read in flight and puts what it read in front of the next request. Idempotent.
func (c *h1SrvConn) watchEnd() {
	w := &c.watch
	if w.t == nil {
		return
	}
	w.t.Stop()
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.armed {
		return
	}
	w.armed = false
	if w.reading {
		done := w.done
		w.mu.Unlock()
		_ = c.sc.SetReadDeadline(time.Unix(1, 0))
		<-done
		_ = c.sc.SetReadDeadline(time.Time{})
		w.mu.Lock()
	}
	if w.got > 0 {
		c.src.idle[0] = w.b[0]
		c.src.pending = c.src.idle[:1]
		w.got = 0
	}
}

// h1Source is what the connection's reader reads: the stream, with the bytes an idle wait read put
// in front, and net/http's read limit while a request head is read.
type h1Source struct {
	sc      *streamConn
	pending []byte // unread bytes of idle
	limit   int64  // bytes the head may still take; negative: unlimited
	// idle receives the first bytes of each request while the connection waits without a buffer:
	// a small request arrives in one read.
	idle [h1IdleReadSize]byte
}

func (s *h1Source) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if s.limit >= 0 {
		if s.limit == 0 {
			return 0, io.EOF
		}
		if int64(len(p)) > s.limit {
			p = p[:s.limit]
		}
	}
	var n int
	var err error
	if len(s.pending) > 0 {
		n = copy(p, s.pending)
		s.pending = s.pending[n:]
	} else {
		n, err = s.sc.Read(p)
	}
	if s.limit >= 0 {
		s.limit -= int64(n)
	}
	return n, err
}

// serveH1 serves HTTP/1.1 requests on sc until the client closes it, an error, or ctx ends.
func (e *Engine) serveH1(ctx context.Context, sc *streamConn, info *ConnInfo) {
	stop := context.AfterFunc(ctx, func() { sc.Conn.Close() })
	defer stop()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	c := &h1SrvConn{e: e, sc: sc, info: info, ctx: ctx, cancel: cancel, src: h1Source{sc: sc, limit: -1}, hdr: http.Header{}}
	c.resp.c = c
	if info != nil && info.Remote.IsValid() {
		c.remote = info.Remote.String()
	} else if a := sc.RemoteAddr(); a != nil {
		c.remote = a.String()
	}
	defer c.release()
	first := true
	for {
		if !c.waitRequest(first) {
			return
		}
		first = false
		if !c.serveRequest() {
			return
		}
	}
}

// release gives the buffers back (the connection ends).
func (c *h1SrvConn) release() {
	if c.bw != nil {
		c.bw.Flush()
		c.putWriter()
	}
	if c.br != nil {
		c.br.Reset(nil)
		h1Readers.Put(c.br)
		c.br = nil
	}
}

func (c *h1SrvConn) putWriter() {
	c.bw.Reset(nil)
	h1Writers.Put(c.bw)
	c.bw = nil
}

// waitRequest waits for the first byte of the next request: within the idle timeout between
// requests, without a buffer when nothing is buffered. It arms the header read timeout.
func (c *h1SrvConn) waitRequest(first bool) bool {
	if c.br != nil && c.br.Buffered() > 0 {
		_ = c.sc.SetReadDeadline(time.Now().Add(c.e.opts.readHeaderTimeout))
		return true
	}
	if c.br != nil {
		c.br.Reset(nil)
		h1Readers.Put(c.br)
		c.br = nil
	}
	if len(c.src.pending) == 0 { // else: what the watch read (h1Watch)
		if first {
			_ = c.sc.SetReadDeadline(time.Now().Add(c.e.opts.readHeaderTimeout))
		} else {
			_ = c.sc.SetReadDeadline(time.Now().Add(c.e.opts.idleTimeout))
		}
		n, err := c.sc.readIdle(c.src.idle[:])
		if err != nil {
			return false
		}
		c.src.pending = c.src.idle[:n]
	}
	c.br = h1Readers.Get().(*bufio.Reader)
	c.br.Reset(&c.src)
	if !first {
		_ = c.sc.SetReadDeadline(time.Now().Add(c.e.opts.readHeaderTimeout))
	}
	return true
}

// errorHeaders end the status line of an error the server answers on its own (net/http's).
const errorHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"

// serveRequest reads, serves and answers one request; false ends the connection.
func (c *h1SrvConn) serveRequest() bool {
	req, err := c.readRequest()
	if err != nil {
		c.answerError(err)
		return false
	}
	w := &c.resp
	w.reset(req)
	if req.Method == "PRI" {
		return false // an HTTP/2 preface without the rest: net/http hands it to its HTTP/2 server
	}
	var body *h1ReqBody
	if req.Body != nil && req.Body != http.NoBody {
		body = &h1ReqBody{rc: req.Body}
		req.Body = body
		w.body = body
	}
	if expect := req.Header.Get("Expect"); expect != "" {
		if httpguts.HeaderValuesContainsToken(req.Header["Expect"], "100-continue") {
			if req.ProtoAtLeast(1, 1) && body != nil {
				body.expect, body.expectReq = c, true
				c.wmu.Lock()
				c.canWrite100 = true
				c.wmu.Unlock()
			}
		} else {
			w.header.Set("Connection", "close")
			w.WriteHeader(http.StatusExpectationFailed)
			w.finish()
			return false
		}
	}
	watch := c.watchable(req, body)
	if watch {
		c.watchStart()
	}
	ran := c.runHandler(w, req)
	if watch {
		c.watchEnd()
	}
	if !ran || c.ctx.Err() != nil {
		return false
	}
	if w.hijacked {
		return false
	}
	ok := w.finish()
	if body != nil {
		body.close()
	}
	// Nothing of the request stays with the idle connection.
	clear(w.header)
	w.req, w.body = nil, nil
	if !ok {
		if w.unreadInput {
			c.closeWriteAndWait()
		}
		return false
	}
	return true
}

// runHandler runs the engine on req; false when it panicked (the connection ends; what the response
// had written goes out first, as net/http's server does).
func (c *h1SrvConn) runHandler(w *h1Resp, req *http.Request) (ok bool) {
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler {
				buf := make([]byte, 64<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.e.log.Error("panic serving HTTP/1.1", "remote", c.remote, "panic", p, "stack", string(buf))
			}
			if c.bw != nil && !w.hijacked {
				c.bw.Flush()
			}
			ok = false
		}
	}()
	c.e.serveHTTP(w, req, c.ctx, c.info)
	return true
}

// readRequest reads the next request head with net/http's server's checks.
func (c *h1SrvConn) readRequest() (*http.Request, error) {
	c.src.limit = int64(MaxHeaderBytes) + 4096
	defer func() { c.src.limit = -1 }()
	if c.post {
		peek, _ := c.br.Peek(4)
		n := 0
		for n < len(peek) && (peek[n] == '\r' || peek[n] == '\n') {
			n++
		}
		c.br.Discard(n)
	}
	hosts, hostValue, known := c.scanHosts()
	req, err := http.ReadRequest(c.br)
	if err != nil {
		if c.src.limit == 0 {
			return nil, errTooLarge
		}
		return nil, err
	}
	if req.ProtoMajor != 1 && !(req.ProtoMajor == 2 && req.ProtoMinor == 0 && req.Method == "PRI" && req.RequestURI == "*") {
		return nil, statusError{http.StatusHTTPVersionNotSupported, "unsupported protocol version"}
	}
	c.post = req.Method == "POST"
	if !known { // a head larger than the read buffer: judge the Host header from what the parser kept
		hosts, hostValue = 0, ""
		if req.URL.Host == "" && req.Host != "" {
			hosts, hostValue = 1, req.Host
		} else if req.URL.Host != "" {
			hosts, hostValue = 1, req.URL.Host
		}
	}
	if req.ProtoAtLeast(1, 1) && hosts == 0 && req.Method != "PRI" && req.Method != "CONNECT" {
		return nil, statusError{http.StatusBadRequest, "missing required Host header"}
	}
	if req.URL.Host == "" {
		hostValue = req.Host // the Host header as the parser read it (an obs-fold joined)
	}
	if hosts == 1 && !httpguts.ValidHostHeader(hostValue) {
		return nil, statusError{http.StatusBadRequest, "malformed Host header"}
	}
	for k, vv := range req.Header {
		if !httpguts.ValidHeaderFieldName(k) {
			return nil, statusError{http.StatusBadRequest, "invalid header name"}
		}
		for _, v := range vv {
			if !httpguts.ValidHeaderFieldValue(v) {
				return nil, statusError{http.StatusBadRequest, "invalid header value"}
			}
		}
	}
	req.RemoteAddr = c.remote
	_ = c.sc.SetReadDeadline(time.Time{})
	return req, nil
}

// scanHosts counts the Host header lines of the head in the read buffer, reading until the whole
// head is buffered or the buffer is full (http.ReadRequest drops the Host header, and net/http's
// server needs to know whether there was one). known is false when the head does not fit.
func (c *h1SrvConn) scanHosts() (hosts int, value string, known bool) {
	br := c.br
	var buf []byte
	for {
		buf, _ = br.Peek(br.Buffered())
		if end := headEnd(buf); end >= 0 {
			buf = buf[:end]
			break
		}
		if br.Buffered() >= br.Size() {
			return 0, "", false
		}
		if _, err := br.Peek(br.Buffered() + 1); err != nil {
			return 0, "", false // ReadRequest reports it
		}
	}
	if i := bytes.IndexByte(buf, '\n'); i >= 0 {
		buf = buf[i+1:] // the request line
	} else {
		return 0, "", true
	}
	for len(buf) > 0 {
		line := buf
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			line, buf = buf[:i], buf[i+1:]
		} else {
			buf = nil
		}
		if len(line) >= 5 && line[4] == ':' && (line[0]|0x20) == 'h' && (line[1]|0x20) == 'o' && (line[2]|0x20) == 's' && (line[3]|0x20) == 't' {
			if hosts++; hosts == 1 {
				value = textproto.TrimString(strings.TrimSuffix(string(line[5:]), "\r"))
				// An obs-fold continues the value (textproto joins it with a space).
				for len(buf) > 0 && (buf[0] == ' ' || buf[0] == '\t') {
					next := buf
					if i := bytes.IndexByte(buf, '\n'); i >= 0 {
						next, buf = buf[:i], buf[i+1:]
					} else {
						buf = nil
					}
					if v := textproto.TrimString(strings.TrimSuffix(string(next), "\r")); v != "" {
						value += " " + v
					}
				}
			}
		}
	}
	return hosts, value, true
}

// headEnd returns the length of the head in b up to its empty line, or -1 when b has no empty line.
func headEnd(b []byte) int {
	for i := 0; i < len(b); {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			return -1
		}
		i += j + 1
		if i < len(b) && b[i] == '\n' {
			return i
		}
		if i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n' {
			return i
		}
	}
	return -1
}

var errTooLarge = errors.New("http: request too large")

// statusError is an error answered with its status code and text (net/http's).
type statusError struct {
	code int
	text string
}

func (e statusError) Error() string { return http.StatusText(e.code) + ": " + e.text }

// answerError answers a request the server could not read, as net/http's server does.
func (c *h1SrvConn) answerError(err error) {
	var se statusError
	switch {
	case err == errTooLarge:
		const publicErr = "431 Request Header Fields Too Large"
		io.WriteString(c.sc, "HTTP/1.1 "+publicErr+errorHeaders+publicErr)
		c.closeWriteAndWait()
	case isUnsupportedTE(err):
		io.WriteString(c.sc, "HTTP/1.1 501 Not Implemented"+errorHeaders+"Unsupported transfer encoding")
	case isCommonNetReadError(err):
	case errors.As(err, &se):
		fmt.Fprintf(c.sc, "HTTP/1.1 %d %s: %s%s%d %s: %s", se.code, http.StatusText(se.code), se.text, errorHeaders,
			se.code, http.StatusText(se.code), se.text)
	default:
		const publicErr = "400 Bad Request"
		io.WriteString(c.sc, "HTTP/1.1 "+publicErr+errorHeaders+publicErr)
	}
}

// isUnsupportedTE reports net/http's unsupportedTEError (unexported), answered 501.
func isUnsupportedTE(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "unsupported transfer encoding: ") || strings.HasPrefix(s, "too many transfer encodings: ")
}

// isCommonNetReadError reports the read errors net/http's server does not answer.
func isCommonNetReadError(err error) bool {
	if err == io.EOF {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "read" || errors.Is(err, net.ErrClosed)
}

// closeWriteAndWait half-closes the connection and gives the client a moment to read what was
// written before the close resets the unread input (net/http's rstAvoidanceDelay).
func (c *h1SrvConn) closeWriteAndWait() {
	if c.bw != nil {
		c.bw.Flush()
	}
	c.sc.CloseWrite()
	_ = c.sc.SetReadDeadline(time.Now().Add(rstAvoidanceDelay))
	var buf [512]byte
	for n := 0; n < 1<<20; {
		m, err := c.sc.Conn.Read(buf[:])
		n += m
		if err != nil {
			return
		}
	}
}

// writeContinue writes the automatic 100 Continue, unless the response has started.
func (c *h1SrvConn) writeContinue() {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.canWrite100 {
		return
	}
	c.canWrite100 = false
	_, _ = io.WriteString(c.sc, "HTTP/1.1 100 Continue\r\n\r\n") // a failure shows in the response's writes
}

// h1ReqBody is a request's body: the 100 Continue on the first read, and net/http's server's
// accounting of whether it was read to its end.
type h1ReqBody struct {
	mu     sync.Mutex
	rc     io.ReadCloser
	expect *h1SrvConn // writes 100 Continue on the first read
	// expectReq: the request asked for 100-continue; unless read to its end, the connection closes
	// after the response (the next bytes may or may not be the body).
	expectReq bool
	sawEOF    bool
	err       error // the first read error other than io.EOF
	closed    bool
}

func (b *h1ReqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return 0, http.ErrBodyReadAfterClose
	}
	if b.sawEOF {
		return 0, io.EOF
	}
	if c := b.expect; c != nil {
		b.expect = nil
		c.writeContinue()
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.sawEOF = true
	} else if err != nil && b.err == nil {
		b.err = err
	}
	return n, err
}

// Close implements io.Closer: later reads fail; what is left is the server's to discard or not.
func (b *h1ReqBody) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return nil
}

// close ends the body after its request.
func (b *h1ReqBody) close() { b.Close() }

// prepareReuse decides, before the response head goes out, whether the rest of the body can be
// discarded to keep the connection (net/http's rules): a 100-continue body not read to its end, a body the handler
// closed early or that failed, or more than maxPostHandlerReadBytes left end the connection.
func (b *h1ReqBody) prepareReuse() (keep, tooBig bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.sawEOF:
		return true, false
	case b.expectReq || b.err != nil:
		return false, false
	case b.closed && !b.sawEOF:
		return false, false
	}
	_, err := io.CopyN(io.Discard, b.rc, maxPostHandlerReadBytes+1)
	switch err {
	case nil:
		return false, true
	case io.EOF:
		b.sawEOF = true
		return true, false
	}
	b.err = err
	return false, false
}

// h1Resp is the response to one request (http.ResponseWriter, Flusher, Hijacker; read and write
// deadlines for http.ResponseController).
type h1Resp struct {
	c      *h1SrvConn
	req    *http.Request
	body   *h1ReqBody
	header http.Header

	status        int
	wroteHeader   bool // a final status was given
	headWritten   bool
	bodyAllowed   bool
	chunked       bool
	contentLength int64 // -1: unknown
	written       int64
	closeAfter    bool
	unreadInput   bool // closing with request bytes left unread
	hijacked      bool
	werr          error
	trailers      []string // declared trailer names
}

func (w *h1Resp) reset(req *http.Request) {
	if len(w.c.hdr) > 64 {
		w.c.hdr = http.Header{}
	} else {
		clear(w.c.hdr)
	}
	*w = h1Resp{c: w.c, req: req, header: w.c.hdr, contentLength: -1, trailers: w.trailers[:0]}
}

func (w *h1Resp) Header() http.Header { return w.header }

func (w *h1Resp) writer() *bufio.Writer {
	c := w.c
	if c.bw == nil {
		c.bw = h1Writers.Get().(*bufio.Writer)
		c.bw.Reset(c.sc)
	}
	return c.bw
}

// WriteHeader implements http.ResponseWriter: 1xx responses go out at once; the final head is
// written into the connection's buffer now (later header changes are trailers only).
func (w *h1Resp) WriteHeader(code int) {
	if w.hijacked || w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code >= 100 && code <= 199 && code != http.StatusSwitchingProtocols {
		c := w.c
		c.wmu.Lock()
		defer c.wmu.Unlock()
		if code == http.StatusContinue {
			c.canWrite100 = false
		}
		bw := w.writer()
		w.writeStatusLine(bw, code)
		writeHeaderFields(bw, w.header, true, false)
		bw.WriteString("\r\n")
		if err := bw.Flush(); err != nil && w.werr == nil {
			w.werr = err
		}
		return
	}
	w.wroteHeader, w.status = true, code
	w.writeHead(false)
}

func (w *h1Resp) writeStatusLine(bw *bufio.Writer, code int) {
	if w.req.ProtoAtLeast(1, 1) {
		bw.WriteString("HTTP/1.1 ")
	} else {
		bw.WriteString("HTTP/1.0 ")
	}
	var nb [3]byte
	bw.Write(strconv.AppendInt(nb[:0], int64(code), 10))
	bw.WriteByte(' ')
	if text := http.StatusText(code); text != "" {
		bw.WriteString(text)
	} else {
		bw.WriteString("status code ")
		bw.Write(strconv.AppendInt(nb[:0], int64(code), 10))
	}
	bw.WriteString("\r\n")
}

// writeHead writes the final head: framing (Content-Length, chunked, or close-delimited for
// HTTP/1.0), keep-alive and Date; finishing when the handler returned without a body.
func (w *h1Resp) writeHead(finishing bool) {
	c, h, code := w.c, w.header, w.status
	c.wmu.Lock()
	c.canWrite100 = false
	c.wmu.Unlock()
	w.headWritten = true

	w.bodyAllowed = code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
	isHead := w.req.Method == http.MethodHead
	delete(h, "Transfer-Encoding")
	if cl := h["Content-Length"]; len(cl) > 0 {
		if v, err := strconv.ParseInt(cl[0], 10, 64); err == nil && v >= 0 {
			w.contentLength = v
		} else {
			delete(h, "Content-Length")
		}
	}
	if code == http.StatusNoContent {
		delete(h, "Content-Length")
		w.contentLength = -1
	}
	for _, v := range h["Trailer"] {
		for name := range strings.SplitSeq(v, ",") {
			if name = textproto.TrimString(name); name != "" {
				w.trailers = append(w.trailers, http.CanonicalHeaderKey(name))
			}
		}
	}

	// Keep-alive: net/http's rules.
	w.closeAfter = w.req.Close || httpguts.HeaderValuesContainsToken(h["Connection"], "close")
	if b := w.body; b != nil && !w.closeAfter && code != http.StatusSwitchingProtocols {
		keep, tooBig := b.prepareReuse()
		if !keep {
			w.closeAfter, w.unreadInput = true, tooBig
		}
	}
	framing := ""
	switch {
	case !w.bodyAllowed || isHead || w.contentLength >= 0:
	case finishing:
		framing, w.contentLength = "Content-Length: 0\r\n", 0
	case w.req.ProtoAtLeast(1, 1):
		framing, w.chunked = "Transfer-Encoding: chunked\r\n", true
	default:
		w.closeAfter = true // HTTP/1.0: the body ends with the connection
	}
	if isHead && w.contentLength < 0 && !w.req.ProtoAtLeast(1, 1) {
		w.closeAfter = true
	}

	bw := w.writer()
	w.writeStatusLine(bw, code)
	conn := ""
	switch {
	case w.closeAfter && w.req.ProtoAtLeast(1, 1):
		conn = "Connection: close\r\n"
	case !w.closeAfter && !w.req.ProtoAtLeast(1, 1):
		conn = "Connection: keep-alive\r\n"
	}
	writeHeaderFields(bw, h, conn == "", true)
	if _, ok := h["Date"]; !ok {
		bw.WriteString("Date: ")
		bw.Write(c.httpDate())
		bw.WriteString("\r\n")
	}
	bw.WriteString(framing)
	bw.WriteString(conn)
	bw.WriteString("\r\n")
}

// httpDate is the Date header value, formatted once a second.
func (c *h1SrvConn) httpDate() []byte {
	now := time.Now()
	if s := now.Unix(); s != c.dateSec || c.date == nil {
		c.dateSec = s
		c.date = now.UTC().AppendFormat(c.date[:0], http.TimeFormat)
	}
	return c.date
}

// headerNewlineToSpace turns CR and LF in header values into spaces, as net/http's Header.Write does.
var headerNewlineToSpace = strings.NewReplacer("\n", " ", "\r", " ")

// writeHeaderFields writes h (with Connection when withConn, Content-Length when withLength) to bw,
// dropping invalid names, Transfer-Encoding and trailer-only keys, as net/http's Header.Write does.
func writeHeaderFields(bw *bufio.Writer, h http.Header, withConn, withLength bool) {
	for k, vv := range h {
		switch k {
		case "Transfer-Encoding":
			continue
		case "Content-Length":
			if !withLength {
				continue
			}
		case "Connection":
			if !withConn {
				continue
			}
		}
		if strings.HasPrefix(k, http.TrailerPrefix) || !httpguts.ValidHeaderFieldName(k) {
			continue
		}
		for _, v := range vv {
			if strings.ContainsAny(v, "\r\n") {
				v = headerNewlineToSpace.Replace(v)
			}
			bw.WriteString(k)
			bw.WriteString(": ")
			bw.WriteString(textproto.TrimString(v))
			bw.WriteString("\r\n")
		}
	}
}

func (w *h1Resp) Write(p []byte) (int, error) {
	if err := w.startBody(len(p)); err != nil {
		return 0, err
	}
	if w.req.Method == http.MethodHead || len(p) == 0 {
		return len(p), nil
	}
	bw := w.c.bw
	if w.chunked {
		var hb [16]byte
		bw.Write(strconv.AppendInt(hb[:0], int64(len(p)), 16))
		bw.WriteString("\r\n")
	}
	n, err := bw.Write(p)
	if w.chunked && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	if err != nil {
		w.werr = err
	}
	return n, err
}

func (w *h1Resp) WriteString(s string) (int, error) {
	if err := w.startBody(len(s)); err != nil {
		return 0, err
	}
	if w.req.Method == http.MethodHead || len(s) == 0 {
		return len(s), nil
	}
	bw := w.c.bw
	if w.chunked {
		var hb [16]byte
		bw.Write(strconv.AppendInt(hb[:0], int64(len(s)), 16))
		bw.WriteString("\r\n")
	}
	n, err := bw.WriteString(s)
	if w.chunked && err == nil {
		_, err = bw.WriteString("\r\n")
	}
	if err != nil {
		w.werr = err
	}
	return n, err
}

// startBody writes the head when not yet written and accounts n body bytes.
func (w *h1Resp) startBody(n int) error {
	if w.hijacked {
		return http.ErrHijacked
	}
	if w.werr != nil {
		return w.werr
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.bodyAllowed {
		return http.ErrBodyNotAllowed
	}
	if w.c.bw == nil {
		return http.ErrHijacked // the response ended: its handler returned
	}
	if w.contentLength >= 0 && w.written+int64(n) > w.contentLength {
		return http.ErrContentLength
	}
	w.written += int64(n)
	return nil
}

// Flush implements http.Flusher.
func (w *h1Resp) Flush() { _ = w.FlushError() }

// FlushError writes the head and the buffered body to the connection.
func (w *h1Resp) FlushError() error {
	if w.hijacked {
		return http.ErrHijacked
	}
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.c.bw == nil {
		return http.ErrHijacked
	}
	if err := w.c.bw.Flush(); err != nil {
		w.werr = err
		return err
	}
	return nil
}

// Hijack implements http.Hijacker (the WebSocket relay after the 101).
func (w *h1Resp) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	if w.hijacked {
		return nil, nil, http.ErrHijacked
	}
	w.hijacked = true
	c := w.c
	c.watchEnd() // the connection's reads are the caller's from here
	bw := w.writer()
	if err := bw.Flush(); err != nil {
		return nil, nil, err
	}
	_ = c.sc.SetDeadline(time.Time{})
	// The reader and writer are the caller's now: they do not go back to the pools.
	rw := bufio.NewReadWriter(c.br, bw)
	c.br, c.bw = nil, nil
	return c.sc, rw, nil
}

// SetReadDeadline sets the connection's read deadline (http.ResponseController; the stream idle timeout).
func (w *h1Resp) SetReadDeadline(t time.Time) error { return w.c.sc.SetReadDeadline(t) }

// SetWriteDeadline sets the connection's write deadline (http.ResponseController).
func (w *h1Resp) SetWriteDeadline(t time.Time) error { return w.c.sc.SetWriteDeadline(t) }

// finish ends the response after the handler returned: the head when none was written, the last
// chunk and trailers, and the flush; false when the connection must close.
func (w *h1Resp) finish() bool {
	if !w.wroteHeader {
		w.wroteHeader, w.status = true, http.StatusOK
		w.writeHead(true)
	}
	bw := w.c.bw
	if w.chunked {
		bw.WriteString("0\r\n")
		for _, k := range w.trailers {
			for _, v := range w.header[k] {
				writeTrailer(bw, k, v)
			}
		}
		for k, vv := range w.header {
			if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok && name != "" {
				for _, v := range vv {
					writeTrailer(bw, http.CanonicalHeaderKey(name), v)
				}
			}
		}
		bw.WriteString("\r\n")
	}
	if w.contentLength >= 0 && w.bodyAllowed && w.req.Method != http.MethodHead && w.written != w.contentLength {
		w.closeAfter = true // a short body: the client sees the connection end
	}
	if err := bw.Flush(); err != nil {
		w.werr = err
	}
	w.c.putWriter()
	return !w.closeAfter && w.werr == nil
}

func writeTrailer(bw *bufio.Writer, k, v string) {
	if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
		return
	}
	bw.WriteString(k)
	bw.WriteString(": ")
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

var (
	_ http.ResponseWriter = (*h1Resp)(nil)
	_ http.Flusher        = (*h1Resp)(nil)
	_ http.Hijacker       = (*h1Resp)(nil)
	_ io.StringWriter     = (*h1Resp)(nil)
)
