package engine

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/mesh/state"
	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint/model"
)

// h2cClient returns an HTTP client speaking h2c with prior knowledge.
func h2cClient(t testing.TB) *http.Client {
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	tr := &http.Transport{Protocols: &protos}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// TestH2Upstream: requests to a service port with appProtocol grpc go upstream over the engine's own
// HTTP/2 client (h2client.go) to a real net/http h2c backend, with every L7 behaviour the http.Transport
// path had: headers both ways, streamed bodies beyond the flow-control windows both ways, trailers
// (announced or not), 1xx, full-duplex streaming, cancellation, retries with the buffered body, and
// streams multiplexed on one upstream connection.
func TestH2Upstream(t *testing.T) {
	tu.CheckGoroutines(t)
	var remotes sync.Map
	var tries atomic.Int32
	cancelled, hanging := make(chan struct{}, 1), make(chan struct{}, 1)
	h := newHarness(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		remotes.Store(r.RemoteAddr, true)
		if r.ProtoMajor != 2 {
			http.Error(w, "not HTTP/2: "+r.Proto, http.StatusHTTPVersionNotSupported)
			return
		}
		switch r.URL.Path {
		case "/get":
			w.Header().Set("X-Back", r.Header.Get("X-Front")+"|"+r.Host)
			io.WriteString(w, "hello "+r.URL.RawQuery)
		case "/echo":
			w.Header().Set("X-Sum", "")
			hs := sha256.New()
			io.Copy(io.MultiWriter(w, hs), r.Body)
		case "/grpc":
			io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Trailer", "Grpc-Status")
			w.Write([]byte{0, 0, 0, 0, 0})
			w.Header().Set("Grpc-Status", "0")
			w.Header().Set(http.TrailerPrefix+"Grpc-Message", "unannounced")
		case "/early":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			io.WriteString(w, "after hints")
		case "/duplex":
			rc := http.NewResponseController(w)
			rc.EnableFullDuplex()
			w.WriteHeader(200)
			rc.Flush()
			br := bufio.NewReader(r.Body)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				io.WriteString(w, "echo "+line)
				rc.Flush()
			}
		case "/hang":
			hanging <- struct{}{}
			<-r.Context().Done()
			cancelled <- struct{}{}
		case "/flaky":
			b, _ := io.ReadAll(r.Body)
			if tries.Add(1) == 1 {
				http.Error(w, "try again", http.StatusServiceUnavailable)
				return
			}
			w.Write(b)
		}
	}))
	h.svc.Ports[0].AppProtocol = state.AppProtocolGRPC
	h.eng.Update(&model.Config{Routes: []*model.Route{{Kind: model.KindHTTPRoute, Namespace: "app", Name: "r",
		Parents: []model.Parent{{Kind: model.KindService, Hostname: h.svc.Hostname}},
		Rules: []*model.Rule{
			{Name: "flaky", Matches: []model.Match{{PathKind: model.PathExact, Path: "/flaky"}},
				Retry:    &model.Retry{Attempts: 2, On: []string{model.RetryOn5xx}, Backoff: time.Millisecond},
				Backends: []model.Backend{{Host: h.svc.Hostname, Port: 80, Weight: 1}}},
			{Name: "all", Matches: []model.Match{{PathKind: model.PathPrefix, Path: "/"}},
				Backends: []model.Backend{{Host: h.svc.Hostname, Port: 80, Weight: 1}}},
		}}}})
	c := h2cClient(t)
	url := "http://" + h.addr

	t.Run("get", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, url+"/get?q=1", nil)
		req.Header.Set("X-Front", "f")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "hello q=1" || resp.Header.Get("X-Back") != "f|"+h.addr {
			t.Fatalf("got %d %q X-Back %q", resp.StatusCode, b, resp.Header.Get("X-Back"))
		}
	})

	t.Run("streamed bodies beyond the windows", func(t *testing.T) {
		body := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16) // 3 MiB: past stream and connection windows
		pr, pw := io.Pipe()
		go func() {
			for p := body; len(p) > 0; p = p[min(len(p), 100_000):] {
				pw.Write(p[:min(len(p), 100_000)])
			}
			pw.Close()
		}()
		resp, err := c.Post(url+"/echo", "application/octet-stream", pr)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 || !bytes.Equal(got, body) {
			t.Fatalf("status %d, %d bytes back of %d (err %v)", resp.StatusCode, len(got), len(body), err)
		}
	})

	t.Run("grpc trailers", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, url+"/grpc", bytes.NewReader([]byte{0, 0, 0, 0, 0}))
		req.Header.Set("Content-Type", "application/grpc")
		req.Header.Set("Te", "trailers")
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.Trailer.Get("Grpc-Status") != "0" || resp.Trailer.Get("Grpc-Message") != "unannounced" {
			t.Fatalf("trailers %v", resp.Trailer)
		}
	})

	t.Run("1xx", func(t *testing.T) {
		var hints []string
		ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			hints = append(hints, h.Get("Link"))
			return nil
		}})
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/early", nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(b) != "after hints" || len(hints) != 1 || hints[0] != "</a.css>; rel=preload" {
			t.Fatalf("body %q, hints %q", b, hints)
		}
	})

	t.Run("full duplex", func(t *testing.T) {
		pr, pw := io.Pipe()
		req, _ := http.NewRequest(http.MethodPost, url+"/duplex", pr)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		br := bufio.NewReader(resp.Body)
		for _, m := range []string{"one\n", "two\n", "three\n"} {
			io.WriteString(pw, m) // the next message goes only after the echo of this one came back
			line, err := br.ReadString('\n')
			if err != nil || line != "echo "+m {
				t.Fatalf("echo %q, %v; want %q", line, err, "echo "+m)
			}
		}
		pw.Close()
		if rest, _ := io.ReadAll(br); len(rest) != 0 {
			t.Fatalf("extra %q", rest)
		}
	})

	t.Run("client cancel reaches the backend", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/hang", nil)
		done := make(chan error, 1)
		go func() {
			resp, err := c.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		select {
		case <-hanging:
		case <-time.After(10 * time.Second):
			t.Fatal("request did not reach the backend")
		}
		cancel()
		select {
		case <-cancelled:
		case <-time.After(10 * time.Second):
			t.Fatal("backend request not cancelled")
		}
		<-done
	})

	t.Run("retry sends the buffered body again", func(t *testing.T) {
		resp, err := c.Post(url+"/flaky", "text/plain", strings.NewReader("payload"))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(b) != "payload" || tries.Load() != 2 {
			t.Fatalf("got %d %q after %d tries", resp.StatusCode, b, tries.Load())
		}
	})

	t.Run("multiplexed on one upstream connection", func(t *testing.T) {
		remotes.Clear()
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for range 64 {
			wg.Go(func() {
				resp, err := c.Get(url + "/get")
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		var n int
		remotes.Range(func(any, any) bool { n++; return true })
		if n != 1 {
			t.Fatalf("%d upstream connections for 64 concurrent requests, want 1", n)
		}
	})
}

// rawUpstream is an HTTP/2 server written frame by frame (x/net/http2's Framer), for upstream
// behaviour net/http's server never shows: resets, GOAWAY, floods, window overruns.
type rawUpstream struct {
	addr     netip.AddrPort
	accepted atomic.Int32
	wg       sync.WaitGroup
}

// startRawUpstream serves each connection with serve after the preface and a SETTINGS exchange
// (settings are the server's). It stops with the test.
func startRawUpstream(t testing.TB, settings []http2.Setting, serve func(fr *http2.Framer, enc *hpackWriter)) *rawUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{addr: netip.MustParseAddrPort(ln.Addr().String())}
	var conns sync.Map
	u.wg.Go(func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			u.accepted.Add(1)
			conns.Store(nc, true)
			u.wg.Go(func() {
				defer nc.Close()
				preface := make([]byte, len(http2.ClientPreface))
				if _, err := io.ReadFull(nc, preface); err != nil || string(preface) != http2.ClientPreface {
					return
				}
				fr := http2.NewFramer(nc, nc)
				fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
				if err := fr.WriteSettings(settings...); err != nil {
					return
				}
				serve(fr, newHpackWriter())
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		u.wg.Wait()
	})
	return u
}

// hpackWriter encodes header blocks.
type hpackWriter struct {
	buf bytes.Buffer
	enc *hpack.Encoder
}

func newHpackWriter() *hpackWriter {
	w := &hpackWriter{}
	w.enc = hpack.NewEncoder(&w.buf)
	return w
}

func (w *hpackWriter) block(kv ...string) []byte {
	w.buf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		w.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return bytes.Clone(w.buf.Bytes())
}

// nextRequest reads frames until a request's HEADERS and returns its stream id (0 when the
// connection ends).
func nextRequest(fr *http2.Framer) uint32 {
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return 0
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			return f.StreamID
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		}
	}
}

// drainFrames reads and drops frames until the connection ends.
func drainFrames(fr *http2.Framer) {
	for {
		if _, err := fr.ReadFrame(); err != nil {
			return
		}
	}
}

func newTestH2Client(t testing.TB) *h2Client {
	var d net.Dialer
	hc := newH2Client(func(ctx context.Context, addr string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) },
		slog.New(slog.DiscardHandler))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hc.closeAll(ctx)
	})
	return hc
}

func getReq(t testing.TB) *http.Request {
	req, err := http.NewRequest(http.MethodGet, "http://web/x", nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// TestH2ClientHostileUpstream: the client's bounds against an upstream that misbehaves. Each case
// fails its request with a clear error (never hangs, never grows without bound) and, where the
// request was not processed, says so in a way the retry policy treats as a refused stream.
func TestH2ClientHostileUpstream(t *testing.T) {
	tu.CheckGoroutines(t)
	ok := func(fr *http2.Framer, enc *hpackWriter, id uint32) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc.block(":status", "200"), EndHeaders: true, EndStream: true})
	}
	t.Run("REFUSED_STREAM is retryable", func(t *testing.T) {
		u := startRawUpstream(t, nil, func(fr *http2.Framer, enc *hpackWriter) {
			id := nextRequest(fr)
			fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
			drainFrames(fr)
		})
		hc := newTestH2Client(t)
		_, err := hc.roundTrip(context.Background(), getReq(t), u.addr, nil, nil)
		if err == nil || !isDialError(err) || !retryable(defaultRetry, nil, &connectError{err: err}) {
			t.Fatalf("err %v: want a refused stream", err)
		}
	})
	t.Run("GOAWAY refuses newer streams and a new connection serves the next request", func(t *testing.T) {
		u := startRawUpstream(t, nil, func(fr *http2.Framer, enc *hpackWriter) {
			nextRequest(fr)
			fr.WriteGoAway(0, http2.ErrCodeNo, nil)
			drainFrames(fr)
		})
		hc := newTestH2Client(t)
		_, err := hc.roundTrip(context.Background(), getReq(t), u.addr, nil, nil)
		var he *h2Error
		if !errors.As(err, &he) || !he.goAway || !isDialError(err) {
			t.Fatalf("err %v: want refused by GOAWAY", err)
		}
		_, err = hc.roundTrip(context.Background(), getReq(t), u.addr, nil, nil)
		if u.accepted.Load() != 2 {
			t.Fatalf("%d connections after GOAWAY (err %v), want 2", u.accepted.Load(), err)
		}
	})
	t.Run("header list beyond MaxHeaderBytes in CONTINUATION frames", func(t *testing.T) {
		var sent atomic.Int32
		u := startRawUpstream(t, nil, func(fr *http2.Framer, enc *hpackWriter) {
			id := nextRequest(fr)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc.block(":status", "200")})
			chunk := enc.block("x-flood", strings.Repeat("a", 8000))
			for range 64 { // 512 KB of headers
				if fr.WriteContinuation(id, false, chunk) != nil {
					return
				}
				sent.Add(1)
			}
			fr.WriteContinuation(id, true, chunk)
			drainFrames(fr)
		})
		hc := newTestH2Client(t)
		resp, err := hc.roundTrip(context.Background(), getReq(t), u.addr, nil, nil)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("a %d KB header list was accepted", sent.Load()*8)
		}
	})
	t.Run("DATA beyond the stream window", func(t *testing.T) {
		u := startRawUpstream(t, nil, func(fr *http2.Framer, enc *hpackWriter) {
			id := nextRequest(fr)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc.block(":status", "200"), EndHeaders: true})
			chunk := make([]byte, 16<<10)
			for range h2StreamWindow/len(chunk) + 4 { // ignores the window the client advertised
				if fr.WriteData(id, false, chunk) != nil {
					return
				}
			}
			drainFrames(fr)
		})
		hc := newTestH2Client(t)
		resp, err := hc.roundTrip(context.Background(), getReq(t), u.addr, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		tu.WaitFor(t, 5*time.Second, "stream failed", func() bool {
			resp.Body.(*h2Body).s.mu.Lock()
			defer resp.Body.(*h2Body).s.mu.Unlock()
			return resp.Body.(*h2Body).s.err != nil
		})
		if _, err := io.ReadAll(resp.Body); err == nil || !strings.Contains(err.Error(), "window") {
			t.Fatalf("read err %v: want the window overrun", err)
		}
	})
	t.Run("informational flood", func(t *testing.T) {
		u := startRawUpstream(t, nil, func(fr *http2.Framer, enc *hpackWriter) {
			id := nextRequest(fr)
			for range 1000 {
				if fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc.block(":status", "103"), EndHeaders: true}) != nil {
					return
				}
			}
			drainFrames(fr)
		})
		hc := newTestH2Client(t)
		var n atomic.Int32
		_, err := hc.roundTrip(context.Background(), getReq(t), u.addr, nil, func(int, http.Header) { n.Add(1) })
		if err == nil || n.Load() > max1xxResponses {
			t.Fatalf("err %v after %d informational responses", err, n.Load())
		}
	})
	t.Run("MAX_CONCURRENT_STREAMS opens another connection", func(t *testing.T) {
		release := make(chan struct{})
		u := startRawUpstream(t, []http2.Setting{{ID: http2.SettingMaxConcurrentStreams, Val: 1}}, func(fr *http2.Framer, enc *hpackWriter) {
			id := nextRequest(fr)
			<-release
			ok(fr, enc, id)
			drainFrames(fr)
		})
		hc := newTestH2Client(t)
		// The first connection learns the limit from the server's SETTINGS before the second request.
		c, err := hc.take(context.Background(), u.addr)
		if err != nil {
			t.Fatal(err)
		}
		tu.WaitFor(t, 5*time.Second, "SETTINGS applied", func() bool { return c.maxStreams() == 1 })
		hc.release(c)
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				resp, err := hc.roundTrip(context.Background(), getReq(t), u.addr, nil, nil)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
			})
		}
		tu.WaitFor(t, 5*time.Second, "second connection", func() bool { return u.accepted.Load() == 2 })
		close(release)
		wg.Wait()
	})
	t.Run("idle connections expire", func(t *testing.T) {
		closed := make(chan struct{})
		u := startRawUpstream(t, nil, func(fr *http2.Framer, enc *hpackWriter) {
			ok(fr, enc, nextRequest(fr))
			drainFrames(fr)
			close(closed)
		})
		hc := newTestH2Client(t)
		now := time.Now()
		var mu sync.Mutex
		hc.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
		resp, err := hc.roundTrip(context.Background(), getReq(t), u.addr, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		hc.expire()
		select {
		case <-closed:
			t.Fatal("closed before its idle timeout")
		default:
		}
		mu.Lock()
		now = now.Add(h2IdleTimeout)
		mu.Unlock()
		hc.expire()
		select {
		case <-closed:
		case <-time.After(5 * time.Second):
			t.Fatal("idle connection not closed")
		}
	})
	t.Run("RST_STREAM NO_ERROR after the complete response", func(t *testing.T) {
		// gRPC servers answer unary calls before the request's END_STREAM, then reset the stream.
		u := startRawUpstream(t, nil, func(fr *http2.Framer, enc *hpackWriter) {
			id := nextRequest(fr)
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc.block(":status", "200", "content-type", "application/grpc"), EndHeaders: true})
			fr.WriteData(id, false, []byte("response"))
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: enc.block("grpc-status", "0"), EndHeaders: true, EndStream: true})
			fr.WriteRSTStream(id, http2.ErrCodeNo)
			drainFrames(fr)
		})
		hc := newTestH2Client(t)
		pr, pw := io.Pipe()
		defer pw.Close()
		req, _ := http.NewRequest(http.MethodPost, "http://web/svc/M", pr) // a body that never ends
		resp, err := hc.roundTrip(context.Background(), req, u.addr, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		s := resp.Body.(*h2Body).s
		tu.WaitFor(t, 5*time.Second, "reset received", func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.finished
		})
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || string(b) != "response" || resp.Trailer.Get("Grpc-Status") != "0" {
			t.Fatalf("body %q, err %v, trailers %v", b, err, resp.Trailer)
		}
	})
	t.Run("a silent connection is pinged, then closed", func(t *testing.T) {
		pinged := make(chan struct{}, 1)
		u := startRawUpstream(t, nil, func(fr *http2.Framer, enc *hpackWriter) {
			nextRequest(fr)
			for { // never answers, not even the PING
				f, err := fr.ReadFrame()
				if err != nil {
					return
				}
				if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
					pinged <- struct{}{}
				}
			}
		})
		hc := newTestH2Client(t)
		now := time.Now()
		var mu sync.Mutex
		hc.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
		advance := func(d time.Duration) {
			mu.Lock()
			now = now.Add(d)
			mu.Unlock()
		}
		done := make(chan error, 1)
		go func() {
			_, err := hc.roundTrip(context.Background(), getReq(t), u.addr, nil, nil)
			done <- err
		}()
		tu.WaitFor(t, 5*time.Second, "request sent", func() bool {
			hc.mu.Lock()
			defer hc.mu.Unlock()
			return len(hc.conns[u.addr]) == 1 && hc.conns[u.addr][0].active == 1
		})
		hc.expire() // read just now: nothing to do
		advance(h2PingAfter)
		hc.expire()
		select {
		case <-pinged:
		case <-time.After(5 * time.Second):
			t.Fatal("no PING after a silent h2PingAfter")
		}
		advance(h2PingTimeout)
		hc.expire()
		select {
		case err := <-done:
			if !errors.Is(err, errH2PingTimeout) {
				t.Fatalf("err %v, want the PING timeout", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("request still waiting on a dead connection")
		}
	})
	t.Run("cancel while waiting for the response resets the stream", func(t *testing.T) {
		reset := make(chan http2.ErrCode, 1)
		u := startRawUpstream(t, nil, func(fr *http2.Framer, enc *hpackWriter) {
			nextRequest(fr)
			for {
				f, err := fr.ReadFrame()
				if err != nil {
					return
				}
				if rst, ok := f.(*http2.RSTStreamFrame); ok {
					reset <- rst.ErrCode
				}
			}
		})
		hc := newTestH2Client(t)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		if _, err := hc.roundTrip(ctx, getReq(t), u.addr, nil, nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err %v", err)
		}
		select {
		case code := <-reset:
			if code != http2.ErrCodeCancel {
				t.Fatalf("reset %v", code)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no RST_STREAM")
		}
	})
}

// FuzzH2ClientFrames feeds peer-controlled bytes (the upstream's frames after its SETTINGS) to the h2
// client answering one request: it must not panic or hang, and every stream slot must be released
// once the response is read and closed (or the request failed).
func FuzzH2ClientFrames(f *testing.F) {
	enc := newHpackWriter()
	seed := func(write func(fr *http2.Framer)) {
		var b bytes.Buffer
		write(http2.NewFramer(&b, nil))
		f.Add(b.Bytes())
	}
	resp := enc.block(":status", "200", "content-type", "application/grpc", "trailer", "grpc-status")
	trailers := enc.block("grpc-status", "0")
	seed(func(fr *http2.Framer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: resp, EndHeaders: true})
		fr.WriteData(1, false, []byte{0, 0, 0, 0, 1, 7})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: trailers, EndHeaders: true, EndStream: true})
	})
	seed(func(fr *http2.Framer) {
		fr.WriteSettingsAck()
		fr.WritePing(false, [8]byte{1})
		fr.WriteWindowUpdate(0, 1000)
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc.block(":status", "103", "link", "</x>"), EndHeaders: true})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: resp[:3]})
		fr.WriteContinuation(1, true, resp[3:])
		fr.WriteDataPadded(1, true, []byte("body"), make([]byte, 10))
	})
	seed(func(fr *http2.Framer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc.block(":status", "200", "content-length", "3"), EndHeaders: true})
		fr.WriteRSTStream(1, http2.ErrCodeInternal)
	})
	seed(func(fr *http2.Framer) { fr.WriteGoAway(0, http2.ErrCodeNo, []byte("bye")) })
	seed(func(fr *http2.Framer) {
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1}, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 16384})
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: enc.block(":status", "204"), EndHeaders: true, EndStream: true})
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		cli, srv := net.Pipe()
		hc := newH2Client(func(context.Context, string) (net.Conn, error) { return cli, nil }, slog.New(slog.DiscardHandler))
		var wg sync.WaitGroup
		wg.Go(func() { io.Copy(io.Discard, srv) })
		wg.Go(func() {
			fr := http2.NewFramer(srv, nil)
			fr.WriteSettings()
			srv.Write(in)
			srv.Close()
		})
		addr := netip.MustParseAddrPort("127.0.0.1:80")
		req, _ := http.NewRequest(http.MethodPost, "http://web/svc/M", nil)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		resp, err := hc.roundTrip(ctx, req, addr, []byte("request"), func(int, http.Header) {})
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		hc.mu.Lock()
		var conns []*h2Conn
		for _, l := range hc.conns {
			conns = append(conns, l...)
		}
		hc.mu.Unlock()
		hc.closeAll(ctx) // waits for the read loop, which may still be finishing the stream
		wg.Wait()
		hc.mu.Lock()
		for _, c := range conns {
			if c.active != 0 {
				t.Errorf("%d stream slots still taken", c.active)
			}
		}
		hc.mu.Unlock()
		if ctx.Err() != nil {
			t.Fatal("round trip hung")
		}
	})
}
