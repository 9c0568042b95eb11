package engine

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint/model"
)

// Hostile HTTP/1.1 clients against the engine's downstream HTTP/1.1 server, each run against every
// server in h1Servers: the status codes are net/http's server's, which the engine's own must give too.

// h1Harness is a harness whose backend answers "<method> <path> host=<host> body=<n>" after reading
// the request body, /big with 1 MiB, and whose /abort route answers 418 without reading the body.
func h1Harness(t *testing.T, mutate ...func(*Options)) *harness {
	t.Helper()
	big := strings.Repeat("b", 1<<20)
	h := newHarness(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			return
		}
		if r.URL.Path == "/big" {
			io.WriteString(w, big)
			return
		}
		fmt.Fprintf(w, "%s %s host=%s body=%d", r.Method, r.URL.Path, r.Host, n)
	}), mutate...)
	be := []model.Backend{{Host: h.svc.Hostname, Port: 80, Weight: 1}}
	h.eng.Update(&model.Config{Routes: []*model.Route{{Kind: model.KindHTTPRoute, Namespace: "app", Name: "r",
		Parents: []model.Parent{{Kind: model.KindService, Hostname: h.svc.Hostname}},
		Rules: []*model.Rule{
			{Name: "abort", Matches: []model.Match{{PathKind: model.PathExact, Path: "/abort"}},
				Fault: &model.Fault{AbortPercent: 100, AbortStatus: 418}, Backends: be},
			{Name: "rest", Backends: be},
		}}}})
	return h
}

// rawExchange writes in to a new connection, followed by a request with Connection: close (so that the
// server ends the connection without the client half-closing it, which net/http's server reads as the
// client going away: 499), and returns the first response (nil when the server answered nothing) and
// everything the server wrote. An empty in is a client that connects and half-closes.
func rawExchange(t *testing.T, h *harness, in string) (*http.Response, string) {
	t.Helper()
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(20 * time.Second))
	go func() {
		if in == "" {
			c.(*net.TCPConn).CloseWrite()
			return
		}
		io.WriteString(c, in+"GET /end HTTP/1.1\r\n"+hostWeb+"Connection: close\r\n\r\n")
	}()
	out, _ := io.ReadAll(c)
	if len(out) == 0 {
		return nil, ""
	}
	resp, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(out))), nil)
	if err != nil {
		t.Fatalf("answer to %.80q does not parse: %v (%.200q)", in, err, out)
	}
	return resp, string(out)
}

const hostWeb = "Host: web.app.svc.cluster.local\r\n"

// TestH1ServerHostile: malformed, smuggling and oversized requests get net/http's status codes, and
// nothing that net/http's parser rejects reaches the backend.
func TestH1ServerHostile(t *testing.T) {
	bigHeader := "X-Big: " + strings.Repeat("a", MaxHeaderBytes+8<<10) + "\r\n"
	manyHeaders := strings.Repeat("X-A: b\r\n", 5000)
	tests := []struct {
		name   string
		in     string
		status int    // 0: no response at all
		body   string // a prefix of the response body, when set
	}{
		{"plain", "GET /a HTTP/1.1\r\n" + hostWeb + "\r\n", 200, "GET /a host=web.app.svc.cluster.local body=0"},
		// net/http takes the chunked body and drops the Content-Length (RFC 9112 section 6.3): what goes
		// upstream is one unambiguous body.
		{"content-length and transfer-encoding", "POST /a HTTP/1.1\r\n" + hostWeb + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 200, "POST /a host=web.app.svc.cluster.local body=3"},
		{"two content-lengths", "POST /a HTTP/1.1\r\n" + hostWeb + "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400, ""},
		{"same content-length twice", "POST /a HTTP/1.1\r\n" + hostWeb + "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 200, "POST /a host=web.app.svc.cluster.local body=3"},
		{"content-length list", "POST /a HTTP/1.1\r\n" + hostWeb + "Content-Length: 3, 3\r\n\r\nabc", 400, ""},
		{"negative content-length", "POST /a HTTP/1.1\r\n" + hostWeb + "Content-Length: -3\r\n\r\nabc", 400, ""},
		{"content-length with sign", "POST /a HTTP/1.1\r\n" + hostWeb + "Content-Length: +3\r\n\r\nabc", 400, ""},
		{"transfer-encoding gzip", "POST /a HTTP/1.1\r\n" + hostWeb + "Transfer-Encoding: gzip\r\n\r\nabc", 501, ""},
		{"transfer-encoding gzip, chunked", "POST /a HTTP/1.1\r\n" + hostWeb + "Transfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501, ""},
		{"transfer-encoding chunked, gzip", "POST /a HTTP/1.1\r\n" + hostWeb + "Transfer-Encoding: chunked, gzip\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501, ""},
		{"transfer-encoding twice", "POST /a HTTP/1.1\r\n" + hostWeb + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 501, ""},
		{"chunked", "POST /a HTTP/1.1\r\n" + hostWeb + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n", 200, "POST /a host=web.app.svc.cluster.local body=5"},
		// HTTP/1.0 has no chunked coding: net/http ignores the header and reads no body (the connection ends).
		{"chunked on HTTP/1.0", "POST /a HTTP/1.0\r\n" + hostWeb + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 200, "POST /a host=web.app.svc.cluster.local body=0"},
		{"chunk size overflow", "POST /a HTTP/1.1\r\n" + hostWeb + "Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nabc\r\n0\r\n\r\n", 503, ""},
		{"chunk size bad hex", "POST /a HTTP/1.1\r\n" + hostWeb + "Transfer-Encoding: chunked\r\n\r\n3z\r\nabc\r\n0\r\n\r\n", 503, ""},
		{"chunk extension flood", "POST /a HTTP/1.1\r\n" + hostWeb + "Transfer-Encoding: chunked\r\n\r\n" +
			strings.Repeat("1;"+strings.Repeat("e", 1000)+"\r\na\r\n", 200) + "0\r\n\r\n", 503, ""},
		{"bare CR in header", "GET /a HTTP/1.1\r\n" + hostWeb + "X-A: b\rc\r\n\r\n", 400, ""},
		{"bare CR line end", "GET /a HTTP/1.1\r\n" + hostWeb + "X-A: b\r\rX-B: c\r\n\r\n", 400, ""},
		{"NUL in header", "GET /a HTTP/1.1\r\n" + hostWeb + "X-A: b\x00c\r\n\r\n", 400, ""},
		// net/http's textproto joins an obs-fold into one value (RFC 9112 section 5.2 lets a server do so).
		{"obs-fold", "GET /a HTTP/1.1\r\n" + hostWeb + "X-A: b\r\n c\r\n\r\n", 200, "GET /a host=web.app.svc.cluster.local body=0"},
		{"space before colon", "GET /a HTTP/1.1\r\n" + hostWeb + "X-A : b\r\n\r\n", 400, ""},
		{"header name with space", "GET /a HTTP/1.1\r\n" + hostWeb + "X A: b\r\n\r\n", 400, ""},
		{"no colon", "GET /a HTTP/1.1\r\n" + hostWeb + "X-A\r\n\r\n", 400, ""},
		{"invalid method", "G(T /a HTTP/1.1\r\n" + hostWeb + "\r\n", 400, ""},
		{"invalid URI", "GET a HTTP/1.1\r\n" + hostWeb + "\r\n", 400, ""},
		{"URI with space", "GET /a b HTTP/1.1\r\n" + hostWeb + "\r\n", 400, ""},
		{"invalid version", "GET /a HTTP/1.x\r\n" + hostWeb + "\r\n", 400, ""},
		{"HTTP/2.0 in HTTP/1 syntax", "GET /a HTTP/2.0\r\n" + hostWeb + "\r\n", 505, ""},
		{"HTTP/0.9", "GET /a\r\n\r\n", 400, ""},
		{"LF line ends", "GET /a HTTP/1.1\nHost: web.app.svc.cluster.local\n\n", 200, "GET /a host=web.app.svc.cluster.local body=0"},
		{"missing Host on HTTP/1.1", "GET /a HTTP/1.1\r\n\r\n", 400, ""},
		{"two Hosts", "GET /a HTTP/1.1\r\n" + hostWeb + hostWeb + "\r\n", 400, ""},
		{"bad Host", "GET /a HTTP/1.1\r\nHost: web/x\r\n\r\n", 400, ""},
		{"HTTP/1.0 without Host", "GET /a HTTP/1.0\r\n\r\n", 200, "GET /a host="},
		{"absolute-form wins over Host", "GET http://web.app.svc.cluster.local/a HTTP/1.1\r\nHost: other.example\r\n\r\n", 200, "GET /a host=web.app.svc.cluster.local body=0"},
		{"header block over MaxHeaderBytes", "GET /a HTTP/1.1\r\n" + hostWeb + bigHeader + "\r\n", 431, ""},
		{"request line too long", "GET /" + strings.Repeat("a", MaxHeaderBytes+8<<10) + " HTTP/1.1\r\n" + hostWeb + "\r\n", 431, ""},
		{"many headers", "GET /a HTTP/1.1\r\n" + hostWeb + manyHeaders + "\r\n", 200, "GET /a host=web.app.svc.cluster.local body=0"},
		{"unknown expectation", "GET /a HTTP/1.1\r\n" + hostWeb + "Expect: coffee\r\n\r\n", 417, ""},
		{"HEAD", "HEAD /a HTTP/1.1\r\n" + hostWeb + "\r\n", 200, ""},
		{"garbage", "\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 400, ""},
		{"nothing", "", 0, ""},
		{"empty lines before the request", "\r\n\r\nGET /a HTTP/1.1\r\n" + hostWeb + "\r\n", 400, ""},
	}
	for _, srv := range h1Servers {
		t.Run(srv.name, func(t *testing.T) {
			h := h1Harness(t, srv.mutate)
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					resp, out := rawExchange(t, h, tc.in)
					if tc.status == 0 {
						if resp != nil {
							t.Fatalf("answered %q, want nothing", out)
						}
						return
					}
					if resp == nil {
						t.Fatalf("no answer, want %d", tc.status)
					}
					b, _ := io.ReadAll(resp.Body)
					if resp.StatusCode != tc.status || !strings.HasPrefix(string(b), tc.body) {
						t.Fatalf("%d %.100q, want %d %q", resp.StatusCode, b, tc.status, tc.body)
					}
					if tc.status >= 400 && tc.status != 418 && tc.status < 500 && strings.Contains(out, "host=") {
						t.Fatalf("a rejected request reached the backend: %.200q", out)
					}
				})
			}
		})
	}
}

// readResponses reads n responses from br, answering requests of the given method.
func readResponses(t *testing.T, br *bufio.Reader, n int) []string {
	t.Helper()
	var bodies []string
	for len(bodies) < n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", len(bodies)+1, err)
		}
		if resp.StatusCode < 200 {
			continue // an informational response relayed from the backend (its own 100 Continue)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("response %d body: %v", len(bodies)+1, err)
		}
		bodies = append(bodies, strconv.Itoa(resp.StatusCode)+" "+string(b))
	}
	return bodies
}

// TestH1ServerPipelining: requests sent together are answered in order on one connection, with the
// keep-alive rules of net/http (HTTP/1.0 closes unless it asks for keep-alive; Connection: close ends it).
func TestH1ServerPipelining(t *testing.T) {
	for _, srv := range h1Servers {
		t.Run(srv.name, func(t *testing.T) {
			tu.CheckGoroutines(t)
			h := h1Harness(t, srv.mutate)
			in := "GET /1 HTTP/1.1\r\n" + hostWeb + "\r\n" +
				"POST /2 HTTP/1.1\r\n" + hostWeb + "Content-Length: 5\r\n\r\nhello" +
				"POST /3 HTTP/1.1\r\n" + hostWeb + "Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n" +
				"GET /abort HTTP/1.1\r\n" + hostWeb + "\r\n" +
				"GET /4 HTTP/1.0\r\n" + hostWeb + "Connection: keep-alive\r\n\r\n" +
				"GET /5 HTTP/1.1\r\n" + hostWeb + "Connection: close\r\n\r\n" +
				"GET /6 HTTP/1.1\r\n" + hostWeb + "\r\n"
			c, err := net.Dial("tcp", h.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.WriteString(c, in); err != nil {
				t.Fatal(err)
			}
			br := bufio.NewReader(c)
			got := readResponses(t, br, 6)
			want := []string{"200 GET /1 host=web.app.svc.cluster.local body=0", "200 POST /2 host=web.app.svc.cluster.local body=5",
				"200 POST /3 host=web.app.svc.cluster.local body=2", "418 fault filter abort",
				"200 GET /4 host=web.app.svc.cluster.local body=0", "200 GET /5 host=web.app.svc.cluster.local body=0"}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("responses\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if rest, _ := io.ReadAll(br); len(rest) != 0 {
				t.Fatalf("after Connection: close the server wrote %q", rest)
			}

			// HTTP/1.0 without keep-alive: one response, then the end.
			resp, out := rawExchange(t, h, "GET /7 HTTP/1.0\r\n"+hostWeb+"\r\n")
			if resp == nil || resp.StatusCode != 200 || strings.Contains(out, "/end") {
				t.Fatalf("HTTP/1.0 without keep-alive: %q", out)
			}
		})
	}
}

// TestH1ServerExpectContinue: a 100-continue request whose body is read gets "100 Continue" and then
// its response; one whose handler answers without reading the body gets no 100 and the connection
// closes after the response (net/http's rule: the unsent body is not parsed as the next request).
func TestH1ServerExpectContinue(t *testing.T) {
	for _, srv := range h1Servers {
		t.Run(srv.name, func(t *testing.T) {
			h := h1Harness(t, srv.mutate)
			c, err := net.Dial("tcp", h.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			br := bufio.NewReader(c)
			io.WriteString(c, "POST /up HTTP/1.1\r\n"+hostWeb+"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n")
			line, err := br.ReadString('\n')
			if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
				t.Fatalf("first line %q (%v), want 100 Continue", line, err)
			}
			if l, _ := br.ReadString('\n'); l != "\r\n" {
				t.Fatalf("100 Continue followed by %q", l)
			}
			io.WriteString(c, "abcd")
			if got := readResponses(t, br, 1); got[0] != "200 POST /up host=web.app.svc.cluster.local body=4" {
				t.Fatalf("response %q", got[0])
			}

			// Not read: the abort route answers 418 at once.
			io.WriteString(c, "POST /abort HTTP/1.1\r\n"+hostWeb+"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != 418 || !resp.Close {
				t.Fatalf("unread 100-continue body: %d close=%v, want 418 and close", resp.StatusCode, resp.Close)
			}
			if rest, _ := io.ReadAll(br); len(rest) != 0 {
				t.Fatalf("after the close the server wrote %q", rest)
			}
		})
	}
}

// TestH1ServerUnreadBody: a body the handler does not read is discarded up to 256 KiB and the
// connection kept; beyond that the response closes the connection (net/http's maxPostHandlerReadBytes).
func TestH1ServerUnreadBody(t *testing.T) {
	for _, srv := range h1Servers {
		t.Run(srv.name, func(t *testing.T) {
			h := h1Harness(t, srv.mutate)
			for _, tc := range []struct {
				size  int
				close bool
			}{{10, false}, {100 << 10, false}, {1 << 20, true}} {
				c, err := net.Dial("tcp", h.addr)
				if err != nil {
					t.Fatal(err)
				}
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				go func() {
					io.WriteString(c, "POST /abort HTTP/1.1\r\n"+hostWeb+"Content-Length: "+strconv.Itoa(tc.size)+"\r\n\r\n"+strings.Repeat("x", tc.size)+
						"GET /next HTTP/1.1\r\n"+hostWeb+"\r\n")
				}()
				br := bufio.NewReader(c)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				if resp.StatusCode != 418 || resp.Close != tc.close {
					t.Fatalf("%d-byte unread body: %d close=%v, want 418 close=%v", tc.size, resp.StatusCode, resp.Close, tc.close)
				}
				if !tc.close {
					if got := readResponses(t, br, 1); got[0] != "200 GET /next host=web.app.svc.cluster.local body=0" {
						t.Fatalf("next response %q", got[0])
					}
				}
				c.Close()
			}
		})
	}
}

// TestH1ServerSlowloris: a client that never finishes its header block is closed after the header
// read timeout, and one idle between requests after the idle timeout; both ends free the goroutine.
func TestH1ServerSlowloris(t *testing.T) {
	for _, srv := range h1Servers {
		t.Run(srv.name, func(t *testing.T) {
			tu.CheckGoroutines(t)
			h := h1Harness(t, srv.mutate, func(o *Options) {
				o.readHeaderTimeout, o.idleTimeout = 200*time.Millisecond, 300*time.Millisecond
			})
			for _, in := range []string{"GET /a HTTP/1.1\r\n" + hostWeb + "X-A: ", "GET /a HTTP/1.1\r\n" + hostWeb + "\r\n"} {
				c, err := net.Dial("tcp", h.addr)
				if err != nil {
					t.Fatal(err)
				}
				_ = c.SetDeadline(time.Now().Add(20 * time.Second))
				stop := make(chan struct{})
				done := make(chan struct{})
				go func() { // trickle: one more header byte every 50 ms, never finishing
					defer close(done)
					io.WriteString(c, in)
					if strings.HasSuffix(in, "\r\n\r\n") {
						return
					}
					for {
						select {
						case <-stop:
							return
						case <-time.After(50 * time.Millisecond):
						}
						if _, err := io.WriteString(c, "a"); err != nil {
							return
						}
					}
				}()
				out, err := io.ReadAll(c)
				close(stop)
				<-done
				c.Close()
				if err != nil {
					t.Fatalf("%.30q: connection not closed by the server: %v", in, err)
				}
				if strings.HasSuffix(in, "\r\n\r\n") && !strings.HasPrefix(string(out), "HTTP/1.1 200") {
					t.Fatalf("idle: %q", out)
				}
			}
		})
	}
}

// TestH1ServerSlowBody: a request body that stops coming ends the request after the stream idle timeout
// (408) and frees its goroutines.
func TestH1ServerSlowBody(t *testing.T) {
	for _, srv := range h1Servers {
		t.Run(srv.name, func(t *testing.T) {
			tu.CheckGoroutines(t)
			h := h1Harness(t, append([]func(*Options){srv.mutate}, func(o *Options) { o.StreamIdleTimeout = 100 * time.Millisecond })...)
			c, err := net.Dial("tcp", h.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			io.WriteString(c, "POST /a HTTP/1.1\r\n"+hostWeb+"Content-Length: 10\r\n\r\nabc")
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestTimeout {
				t.Fatalf("status %d, want 408", resp.StatusCode)
			}
		})
	}
}

// TestH1ServerNotReading: a client that pipelines requests for 1 MiB responses and never reads them
// stalls its own connection: the server stops reading requests, its heap stays bounded, and closing
// the client frees everything.
func TestH1ServerNotReading(t *testing.T) {
	for _, srv := range h1Servers {
		t.Run(srv.name, func(t *testing.T) {
			tu.CheckGoroutines(t)
			h := h1Harness(t, srv.mutate)
			hw := newHeapWatch()
			c, err := net.Dial("tcp", h.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.(*net.TCPConn).SetReadBuffer(8 << 10)
			req := "GET /big HTTP/1.1\r\n" + hostWeb + "X-Pad: " + strings.Repeat("p", 8<<10) + "\r\n\r\n"
			_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			sent := 0
			for ; sent < 10000; sent++ {
				if _, err := io.WriteString(c, req); err != nil {
					break // the server stopped reading: the client's writes block
				}
				if sent%100 == 0 {
					hw.sample()
				}
			}
			hw.sample()
			if sent == 10000 {
				t.Fatalf("the server read all %d requests (%d MiB) while the client read none of their responses", sent, sent*8>>10)
			}
			if hw.peak > 64<<20 {
				t.Fatalf("heap grew by %d MiB for a client that does not read", hw.peak>>20)
			}
			t.Logf("%d requests written before the client's writes blocked; heap peak +%d KiB", sent, hw.peak>>10)
		})
	}
}

// h1Servers are the downstream HTTP/1.1 servers the tests and benchmarks run side by side.
var h1Servers = []struct {
	name   string
	mutate func(*Options)
}{{"own", func(*Options) {}}, {"nethttp", func(o *Options) { o.netHTTP1 = true }}}

// TestH1ServerClientGone: a client that closes its connection while its request waits for the upstream
// cancels that upstream request (Envoy resets it, flag DC), rather than leaving it to run until a timeout;
// the connection's goroutines end.
func TestH1ServerClientGone(t *testing.T) {
	for _, srv := range h1Servers {
		t.Run(srv.name, func(t *testing.T) {
			tu.CheckGoroutines(t)
			started, cancelled := make(chan struct{}, 1), make(chan struct{}, 1)
			h := newHarness(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				started <- struct{}{}
				select {
				case <-r.Context().Done():
					cancelled <- struct{}{}
				case <-time.After(20 * time.Second):
				}
			}), srv.mutate)
			h.eng.Update(&model.Config{Routes: []*model.Route{{Kind: model.KindHTTPRoute, Namespace: "app", Name: "r",
				Parents: []model.Parent{{Kind: model.KindService, Hostname: h.svc.Hostname}},
				Rules:   []*model.Rule{{Name: "all", Backends: []model.Backend{{Host: h.svc.Hostname, Port: 80, Weight: 1}}}}}}})
			for _, close := range []struct {
				name string
				do   func(*net.TCPConn)
			}{{"close", func(c *net.TCPConn) { c.Close() }}, {"reset", func(c *net.TCPConn) { c.SetLinger(0); c.Close() }}} {
				c, err := net.Dial("tcp", h.addr)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := io.WriteString(c, "GET /hang HTTP/1.1\r\n"+hostWeb+"\r\n"); err != nil {
					t.Fatal(err)
				}
				select {
				case <-started:
				case <-time.After(20 * time.Second):
					t.Fatalf("%s: the request did not reach the backend", close.name)
				}
				close.do(c.(*net.TCPConn))
				select {
				case <-cancelled:
				case <-time.After(15 * time.Second):
					t.Fatalf("%s: the client went away and the upstream request was not cancelled", close.name)
				}
			}
		})
	}
}

// TestH1ServerWatchKeepsPipelined: a request sent while a slow one is served (so read by the watch for
// the client leaving) is served next, whole and in order.
func TestH1ServerWatchKeepsPipelined(t *testing.T) {
	for _, srv := range h1Servers {
		t.Run(srv.name, func(t *testing.T) {
			tu.CheckGoroutines(t)
			started := make(chan struct{}, 4)
			h := newHarness(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/slow" {
					started <- struct{}{}
					time.Sleep(300 * time.Millisecond) // longer than the watch delay
				}
				io.WriteString(w, r.Method+" "+r.URL.Path)
			}), srv.mutate)
			h.eng.Update(&model.Config{Routes: []*model.Route{{Kind: model.KindHTTPRoute, Namespace: "app", Name: "r",
				Parents: []model.Parent{{Kind: model.KindService, Hostname: h.svc.Hostname}},
				Rules:   []*model.Rule{{Name: "all", Backends: []model.Backend{{Host: h.svc.Hostname, Port: 80, Weight: 1}}}}}}})
			c, err := net.Dial("tcp", h.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			io.WriteString(c, "GET /slow HTTP/1.1\r\n"+hostWeb+"\r\n")
			<-started
			time.Sleep(100 * time.Millisecond) // past the watch delay: the watch is reading
			io.WriteString(c, "GET /next HTTP/1.1\r\n"+hostWeb+"\r\n")
			br := bufio.NewReader(c)
			got := readResponses(t, br, 2)
			if want := "200 GET /slow\n200 GET /next"; strings.Join(got, "\n") != want {
				t.Fatalf("responses\n%s\nwant\n%s", strings.Join(got, "\n"), want)
			}
		})
	}
}
