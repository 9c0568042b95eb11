package engine

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/waypoint/model"
)

// h1Recorder is a backend that records what reaches it, per connection tag (the X-Fuzz-Run header
// the fuzz target cannot set: it is added by the test's route).
type h1Recorder struct {
	mu   sync.Mutex
	seen map[string][]string
}

func (rec *h1Recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		// A body cut by a client error: the backend may see it after the client got its answer, so
		// it is not compared (both servers forward the same bytes up to the error).
		return
	}
	rec.mu.Lock()
	run := r.Header.Get("X-Fuzz-Run")
	rec.seen[run] = append(rec.seen[run], fmt.Sprintf("%s %s %q", r.Method, r.URL.RequestURI(), b))
	rec.mu.Unlock()
	io.WriteString(w, "ok")
}

func (rec *h1Recorder) take(run string) []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	s := rec.seen[run]
	delete(rec.seen, run)
	return s
}

// fuzzExchange sends in (then a request with Connection: close) on a new connection and returns the
// status codes of the final responses, each response checked to be well formed for its request.
func fuzzExchange(t *testing.T, h *harness, in []byte, run string) []int {
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// 2 s: a request whose body fails mid-chunk can leave the upstream exchange waiting (both servers
	// alike); the fuzzer must not take it for a hang.
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	end := "GET /end HTTP/1.1\r\nHost: web.app.svc.cluster.local\r\nConnection: close\r\n\r\n"
	go func() {
		c.Write(in)
		io.WriteString(c, end)
	}()
	out, _ := io.ReadAll(c)
	// The methods of the requests, as net/http's parser reads them from the same bytes.
	var methods []string
	rbr := bufio.NewReader(io.MultiReader(bytes.NewReader(in), strings.NewReader(end)))
	for {
		req, err := http.ReadRequest(rbr)
		if err != nil {
			break
		}
		methods = append(methods, req.Method)
		io.Copy(io.Discard, req.Body)
	}
	var codes []int
	rem := out
	for i := 0; len(rem) > 0; {
		m := "GET"
		// A request the server rejects is answered with the server's own error (a body, whatever the
		// method): only an answer from the handler follows the request's method.
		if i < len(methods) && !ownError(rem) {
			m = methods[i]
		}
		rd := bytes.NewReader(rem)
		br := bufio.NewReader(rd)
		resp, err := http.ReadResponse(br, &http.Request{Method: m})
		if err != nil {
			t.Fatalf("response %d to %q does not parse: %v (%q)", i+1, in, err, out)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		rem = rem[len(rem)-rd.Len()-br.Buffered():]
		if resp.StatusCode < 200 {
			continue
		}
		if err != nil && !resp.Close && resp.ContentLength < 0 && resp.TransferEncoding == nil {
			t.Fatalf("response %d to %q: body: %v", i+1, in, err)
		}
		codes = append(codes, resp.StatusCode)
		i++
	}
	return codes
}

// ownError reports whether b starts with an error the server answers on its own (errorHeaders).
func ownError(b []byte) bool {
	i := bytes.IndexByte(b, '\n')
	return i > 0 && bytes.HasPrefix(b[i-1:], []byte(errorHeaders))
}

// FuzzH1ServerRequests feeds arbitrary client bytes to the engine's HTTP/1.1 server and to net/http's
// side by side: neither may crash, every response must be well formed, and both must answer the same
// status codes and forward the same requests upstream (net/http's server is the oracle: nothing it
// rejects may reach the backend through the engine's own server).
func FuzzH1ServerRequests(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\n\r\nabc",
		"POST /x HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nT: v\r\n\r\n",
		"POST /x HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"HEAD / HTTP/1.1\r\nHost: web\r\n\r\n",
		"GET http://web/abs HTTP/1.1\r\nHost: other\r\n\r\n",
		"GET http://web/abs HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost:\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web\r\nX: a\r\n b\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: web\r\nX : a\r\n\r\n",
		"POST /e HTTP/1.1\r\nHost: web\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
		"GET / HTTP/1.1\r\nHost: web\r\nExpect: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
		"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 1\r\n\r\na\r\n\r\nGET /next HTTP/1.1\r\nHost: web\r\n\r\n",
		"GET /\x00 HTTP/1.1\r\nHost: web\r\n\r\n",
		"GET / HTTP/2.0\r\nHost: web\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	rec := &h1Recorder{seen: map[string][]string{}}
	var hs []*harness
	for _, srv := range h1Servers {
		h := newHarness(f, 1, rec, srv.mutate)
		// Every request forwarded upstream carries the run tag set below: the route sets it.
		hs = append(hs, h)
	}
	runs := 0
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) > 8<<10 || bytes.HasPrefix(in, []byte("PRI")) {
			return
		}
		var codes [][]int
		var seen [][]string
		for i, h := range hs {
			runs++
			run := fmt.Sprint(runs)
			h.eng.Update(&model.Config{Routes: []*model.Route{{Kind: model.KindHTTPRoute, Namespace: "app", Name: "r",
				Parents: []model.Parent{{Kind: model.KindService, Hostname: h.svc.Hostname}},
				Rules: []*model.Rule{{Name: "all", Backends: []model.Backend{{Host: h.svc.Hostname, Port: 80, Weight: 1}},
					Filters: model.Filters{Request: model.HeaderMod{Set: []model.Header{{Name: "X-Fuzz-Run", Value: run}}}}}},
			}}})
			codes = append(codes, fuzzExchange(t, h, in, run))
			seen = append(seen, rec.take(run))
			if i > 0 {
				if fmt.Sprint(codes[i]) != fmt.Sprint(codes[0]) {
					t.Fatalf("%q: %s answered %v, %s %v", in, h1Servers[0].name, codes[0], h1Servers[i].name, codes[i])
				}
				if strings.Join(seen[i], "\n") != strings.Join(seen[0], "\n") {
					t.Fatalf("%q: forwarded upstream\n%s: %q\n%s: %q", in, h1Servers[0].name, seen[0], h1Servers[i].name, seen[i])
				}
			}
		}
	})
}

func TestHeadEnd(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", 25},
		{"GET / HTTP/1.1\nHost: a\n\nbody", 23},
		{"GET / HTTP/1.1\r\n\r\n", 16},
		{"GET / HTTP/1.1\r\nHost: a\r\n", -1},
		{"GET / HTTP/1.1\r\nHost: a\r\n\r", -1},
		{"", -1},
		{"\n\n", 1},
	} {
		if got := headEnd([]byte(tc.in)); got != tc.want {
			t.Errorf("headEnd(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}
