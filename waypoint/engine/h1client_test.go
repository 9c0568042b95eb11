package engine

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// TestH1Forwarding checks the engine's HTTP/1.1 forwarder (h1client.go, proxy.go) end to end against a
// real backend: keep-alive reuse, request body framing, trailers, HEAD, 1xx, hop-by-hop headers, and a
// pooled connection the backend closed while idle.
func TestH1Forwarding(t *testing.T) {
	tu.CheckGoroutines(t)
	var mu sync.Mutex
	remotes := map[string]int{}
	var seen http.Header
	var seenTE []string
	var seenLen int64
	h := newHarness(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		remotes[r.RemoteAddr]++
		seen, seenTE, seenLen = r.Header.Clone(), r.TransferEncoding, r.ContentLength
		mu.Unlock()
		switch r.URL.Path {
		case "/echo":
			b, _ := io.ReadAll(r.Body)
			w.Write(b)
		case "/trailer":
			w.Header().Set("Trailer", "X-Sum")
			io.WriteString(w, "body")
			w.Header().Set("X-Sum", "42")
		case "/hints":
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			io.WriteString(w, "final")
		case "/drop":
			// Answer, then close the connection silently while the engine holds it idle.
			hj, _ := w.(http.Hijacker)
			c, brw, err := hj.Hijack()
			if err != nil {
				return
			}
			brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndrop")
			brw.Flush()
			c.Close()
		default:
			io.WriteString(w, "hello")
		}
	}))
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	base := "http://" + h.addr

	do := func(t *testing.T, req *http.Request) (*http.Response, string) {
		t.Helper()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		return resp, string(b)
	}

	t.Run("keep-alive reuse", func(t *testing.T) {
		mu.Lock()
		clear(remotes)
		mu.Unlock()
		for range 5 {
			req, _ := http.NewRequest("GET", base+"/", nil)
			if resp, body := do(t, req); resp.StatusCode != 200 || body != "hello" {
				t.Fatalf("got %d %q", resp.StatusCode, body)
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if len(remotes) != 1 {
			t.Errorf("5 sequential requests used %d upstream connections, want 1: %v", len(remotes), remotes)
		}
	})

	t.Run("bodies", func(t *testing.T) {
		payload := strings.Repeat("0123456789", 10000) // larger than one copy buffer
		for _, tc := range []struct {
			name    string
			body    io.Reader
			length  int64
			chunked bool
		}{
			{"content-length", strings.NewReader(payload), int64(len(payload)), false},
			{"chunked", io.MultiReader(strings.NewReader(payload[:10]), strings.NewReader(payload[10:])), -1, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				req, _ := http.NewRequest("POST", base+"/echo", tc.body)
				req.ContentLength = tc.length
				resp, body := do(t, req)
				if resp.StatusCode != 200 || body != payload {
					t.Fatalf("got %d, %d bytes; want 200 and the %d bytes sent", resp.StatusCode, len(body), len(payload))
				}
				mu.Lock()
				defer mu.Unlock()
				if tc.chunked != (len(seenTE) == 1 && seenTE[0] == "chunked") || !tc.chunked && seenLen != tc.length {
					t.Errorf("backend saw Transfer-Encoding %v, Content-Length %d", seenTE, seenLen)
				}
			})
		}
	})

	t.Run("trailers", func(t *testing.T) {
		req, _ := http.NewRequest("GET", base+"/trailer", nil)
		resp, body := do(t, req)
		if body != "body" || resp.Trailer.Get("X-Sum") != "42" {
			t.Errorf("body %q trailer %v, want body and X-Sum: 42", body, resp.Trailer)
		}
	})

	t.Run("head", func(t *testing.T) {
		req, _ := http.NewRequest("HEAD", base+"/", nil)
		resp, body := do(t, req)
		if resp.StatusCode != 200 || body != "" {
			t.Errorf("HEAD got %d %q", resp.StatusCode, body)
		}
		// The connection stays usable after a bodiless response.
		req, _ = http.NewRequest("GET", base+"/", nil)
		if _, body := do(t, req); body != "hello" {
			t.Errorf("GET after HEAD got %q", body)
		}
	})

	t.Run("1xx relayed", func(t *testing.T) {
		var codes []int
		var link string
		trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
			codes = append(codes, code)
			link = h.Get("Link")
			return nil
		}}
		req, _ := http.NewRequest("GET", base+"/hints", nil)
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), trace))
		resp, body := do(t, req)
		if resp.StatusCode != 200 || body != "final" || fmt.Sprint(codes) != "[103]" || link == "" {
			t.Errorf("got %d %q, 1xx %v (Link %q); want 103 with its Link, then 200", resp.StatusCode, body, codes, link)
		}
	})

	t.Run("hop-by-hop", func(t *testing.T) {
		req, _ := http.NewRequest("GET", base+"/", nil)
		req.Header.Set("Connection", "X-Hop")
		req.Header.Set("X-Hop", "1")
		req.Header.Set("Keep-Alive", "timeout=5")
		req.Header.Set("Te", "trailers")
		req.Header.Set("X-Forwarded-Host", "evil")
		req.Header.Set("X-Kept", "yes")
		do(t, req)
		mu.Lock()
		defer mu.Unlock()
		for _, k := range []string{"X-Hop", "Keep-Alive", "X-Forwarded-Host"} {
			if v := seen.Get(k); v != "" {
				t.Errorf("backend saw %s: %q", k, v)
			}
		}
		if seen.Get("Te") != "trailers" || seen.Get("X-Kept") != "yes" || seen.Get("X-Forwarded-For") == "" || seen.Get("User-Agent") != "Go-http-client/1.1" {
			t.Errorf("backend headers %v: want Te: trailers, X-Kept, X-Forwarded-For and the client's User-Agent", seen)
		}
	})

	t.Run("idle connection closed by the backend", func(t *testing.T) {
		for i := range 3 {
			req, _ := http.NewRequest("GET", base+"/drop", nil)
			if resp, body := do(t, req); resp.StatusCode != 200 || body != "drop" {
				t.Fatalf("request %d: got %d %q, want 200 (retried on a new connection)", i, resp.StatusCode, body)
			}
			time.Sleep(10 * time.Millisecond) // the backend's close reaches the engine's idle connection
		}
	})
}

// TestAppendRequestHead checks the request head the HTTP/1.1 client writes: framing per body kind,
// Connection: close when the connection retires, and what it refuses to write.
func TestAppendRequestHead(t *testing.T) {
	for _, tc := range []struct {
		name     string
		req      func() *http.Request
		body     []byte
		streamed bool
		chunked  bool
		close    bool
		want     []string // lines that must appear
		not      []string // substrings that must not
		err      string
	}{
		{name: "get", req: func() *http.Request { return mustReq("GET", "http://x/a%20b?q=1", nil) },
			want: []string{"GET /a%20b?q=1 HTTP/1.1", "Host: web"}, not: []string{"Content-Length", "User-Agent", "Connection"}},
		{name: "post empty", req: func() *http.Request { return mustReq("POST", "http://x/", nil) }, want: []string{"Content-Length: 0"}},
		{name: "buffered body", req: func() *http.Request { return mustReq("PUT", "http://x/", nil) }, body: []byte("abc"), want: []string{"Content-Length: 3"}},
		{name: "streamed", req: func() *http.Request {
			r := mustReq("POST", "http://x/", strings.NewReader("abcd"))
			r.ContentLength = 4
			return r
		}, streamed: true, want: []string{"Content-Length: 4"}, not: []string{"chunked"}},
		{name: "chunked", req: func() *http.Request {
			r := mustReq("POST", "http://x/", strings.NewReader("abcd"))
			r.ContentLength = -1
			return r
		}, streamed: true, chunked: true, want: []string{"Transfer-Encoding: chunked"}, not: []string{"Content-Length"}},
		{name: "retiring connection", req: func() *http.Request { return mustReq("GET", "http://x/", nil) }, close: true,
			want: []string{"Connection: close"}},
		{name: "framing headers are the client's", req: func() *http.Request {
			r := mustReq("GET", "http://x/", nil)
			r.Header.Set("Content-Length", "99")
			r.Header.Set("Transfer-Encoding", "chunked")
			r.Header.Set("Connection", "keep-alive")
			r.Header.Set("User-Agent", "ua/1")
			return r
		}, want: []string{"User-Agent: ua/1"}, not: []string{"99", "chunked", "keep-alive"}},
		{name: "newline in a header value", req: func() *http.Request {
			r := mustReq("GET", "http://x/", nil)
			r.Header["X-Bad"] = []string{"a\r\nX-Injected: 1"}
			return r
		}, err: "invalid header field value"},
		{name: "bad header name", req: func() *http.Request {
			r := mustReq("GET", "http://x/", nil)
			r.Header["X Bad"] = []string{"1"}
			return r
		}, err: "invalid header field name"},
		{name: "bad host", req: func() *http.Request {
			r := mustReq("GET", "http://x/", nil)
			r.Host = "a\r\nb"
			return r
		}, err: "invalid Host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := tc.req()
			if r.Host == "x" {
				r.Host = "web"
			}
			b, err := appendRequestHead(nil, r, netipAddr("127.0.0.1:80"), tc.body, tc.streamed, tc.chunked, tc.close)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s := string(b)
			if !strings.HasSuffix(s, "\r\n\r\n") || strings.Count(s, "\r\n\r\n") != 1 {
				t.Fatalf("head %q does not end with exactly one blank line", s)
			}
			for _, w := range tc.want {
				if !strings.Contains(s, w+"\r\n") {
					t.Errorf("head %q lacks %q", s, w)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(s, n) {
					t.Errorf("head %q has %q", s, n)
				}
			}
			if _, err := http.ReadRequest(bufioReader(s + string(tc.body))); err != nil && !tc.streamed {
				t.Errorf("head does not parse: %v", err)
			}
		})
	}
}

func mustReq(method, url string, body io.Reader) *http.Request {
	r, err := http.NewRequest(method, url, body)
	if err != nil {
		panic(err)
	}
	return r
}

func netipAddr(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func bufioReader(s string) *bufio.Reader { return bufio.NewReader(strings.NewReader(s)) }

// TestH1HostileResponseHeads: an endpoint that sends a response head larger than MaxHeaderBytes, or more
// informational responses than max1xxResponses, gets its request failed (an error status to the client), not
// read into the waypoint's memory without bound. Before the bounds both were relayed as a 200.
func TestH1HostileResponseHeads(t *testing.T) {
	tu.CheckGoroutines(t)
	h := newHarness(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hj, _ := w.(http.Hijacker)
		c, brw, err := hj.Hijack()
		if err != nil {
			return
		}
		defer c.Close()
		switch r.URL.Path {
		case "/huge-head":
			brw.WriteString("HTTP/1.1 200 OK\r\nX-Big: ")
			brw.WriteString(strings.Repeat("a", 1<<20))
			brw.WriteString("\r\nContent-Length: 2\r\n\r\nok")
		case "/endless-1xx":
			for range 100 {
				brw.WriteString("HTTP/1.1 102 Processing\r\n\r\n")
			}
			brw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		}
		brw.Flush()
	}))
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	for _, path := range []string{"/huge-head", "/endless-1xx"} {
		resp, err := c.Get("http://" + h.addr + path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode < 500 {
			t.Errorf("%s: status %d, want the request failed", path, resp.StatusCode)
		}
	}
}
