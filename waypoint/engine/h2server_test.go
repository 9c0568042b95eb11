package engine

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint/model"
)

// TestH2CIdleConnection: a downstream h2c connection without streams for the idle timeout is closed
// with GOAWAY NO_ERROR; one with a running stream is not, and is closed once that stream ended and the
// timeout passed again.
func TestH2CIdleConnection(t *testing.T) {
	tu.CheckGoroutines(t)
	h := slowHarness(t)
	h.eng.h2Idle.Store(int64(200 * time.Millisecond))

	t.Run("idle", func(t *testing.T) {
		p := dialH2(t, h, true)
		p.startReading()
		p.headers(1, true, "/fast")
		if f := p.next("the answer", isStream(1)); status(f) != http.StatusOK {
			t.Fatalf("status %d", status(f))
		}
		if code := p.ended(); http2.ErrCode(code) != http2.ErrCodeNo {
			t.Errorf("idle connection ended with GOAWAY %d, want NO_ERROR", code)
		}
	})
	t.Run("busy", func(t *testing.T) {
		p := dialH2(t, h, true)
		p.startReading()
		p.headers(1, true, "/slow") // waits an hour: the connection is busy
		// Several idle timeouts pass; the stream is still open (a GOAWAY would show up as a frame).
		p.headers(3, true, "/fast")
		if f := p.next("the answer", isStream(3)); status(f) != http.StatusOK {
			t.Fatalf("status %d", status(f))
		}
		time.Sleep(time.Second)
		p.headers(5, true, "/fast")
		if f := p.next("the answer after a second", isStream(5)); status(f) != http.StatusOK {
			t.Fatalf("busy connection: %T, want a 200 on it", f)
		}
		if err := p.fr.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
			t.Fatal(err)
		}
		if code := p.ended(); http2.ErrCode(code) != http2.ErrCodeNo {
			t.Errorf("connection idle after its stream ended: GOAWAY %d, want NO_ERROR", code)
		}
	})
}

// TestH2CRequestShapes: what the server hands to the engine from the wire (split cookies joined, a
// body in two DATA frames; content-length mismatches and connection-specific headers refused), and a
// Date on the response.
func TestH2CRequestShapes(t *testing.T) {
	tu.CheckGoroutines(t)
	h := newHarness(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Cookie", r.Header.Get("Cookie"))
		w.Header().Set("X-Body", string(b))
	}))
	p := dialH2(t, h, true)
	p.startReading()

	p.headers(1, true, "/c", "cookie", "a=1", "cookie", "b=2")
	f := p.next("the cookie answer", isStream(1)).(*http2.MetaHeadersFrame)
	if got := headerValue(f, "x-cookie"); got != "a=1; b=2" {
		t.Errorf("cookies: %q, want %q", got, "a=1; b=2")
	}

	p.headers(3, false, "/b", "content-length", "5")
	if err := p.fr.WriteData(3, false, []byte("hel")); err != nil {
		t.Fatal(err)
	}
	if err := p.fr.WriteData(3, true, []byte("lo")); err != nil {
		t.Fatal(err)
	}
	f = p.next("the body answer", isStream(3)).(*http2.MetaHeadersFrame)
	if got := headerValue(f, "x-body"); got != "hello" {
		t.Errorf("body: %q, want hello", got)
	}

	for i, extra := range [][]string{
		{"connection", "keep-alive"},
		{"transfer-encoding", "chunked"},
		{"te", "gzip"},
	} {
		id := uint32(5 + 2*i)
		p.headers(id, true, "/bad", extra...)
		if rst, ok := p.next("the refusal of "+extra[0], isStream(id)).(*http2.RSTStreamFrame); !ok || rst.ErrCode != http2.ErrCodeProtocol {
			t.Errorf("%s: want RST_STREAM PROTOCOL_ERROR", extra[0])
		}
	}

	p.headers(11, false, "/len", "content-length", "2")
	if err := p.fr.WriteData(11, true, []byte("abc")); err != nil {
		t.Fatal(err)
	}
	if rst, ok := p.next("the refusal of a body over its content-length", isStream(11)).(*http2.RSTStreamFrame); !ok || rst.ErrCode != http2.ErrCodeProtocol {
		t.Errorf("body over its content-length: want RST_STREAM PROTOCOL_ERROR")
	}
	p.headers(13, true, "/after")
	if f := p.next("the next answer", isStream(13)); status(f) != http.StatusOK {
		t.Errorf("after the refusals: %d", status(f))
	}

	// A local reply (no backend response to take a Date from) carries one too.
	h.eng.Update(&model.Config{Routes: []*model.Route{{Kind: model.KindHTTPRoute, Namespace: "app", Name: "r",
		Parents: []model.Parent{{Kind: model.KindService, Hostname: h.svc.Hostname}},
		Rules: []*model.Rule{{Name: "abort", Fault: &model.Fault{AbortPercent: 100, AbortStatus: http.StatusServiceUnavailable},
			Backends: []model.Backend{{Host: h.svc.Hostname, Port: 80, Weight: 1}}}}}}})
	p.headers(15, true, "/abort")
	f = p.next("the local reply", isStream(15)).(*http2.MetaHeadersFrame)
	if status(f) != http.StatusServiceUnavailable {
		t.Errorf("fault abort: %d", status(f))
	}
	if _, err := http.ParseTime(headerValue(f, "date")); err != nil {
		t.Errorf("local reply date: %v", err)
	}
}

func headerValue(f *http2.MetaHeadersFrame, name string) string {
	for _, hf := range f.RegularFields() {
		if hf.Name == name {
			return hf.Value
		}
	}
	return ""
}

// FuzzH2ServerFrames sends arbitrary frames after the client preface and SETTINGS: the server never
// crashes, ends the connection once the client closed its side, and writes only well-formed frames.
func FuzzH2ServerFrames(f *testing.F) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	block := func(kv ...string) []byte {
		hb.Reset()
		for i := 0; i < len(kv); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return bytes.Clone(hb.Bytes())
	}
	get := block(":method", "GET", ":scheme", "http", ":authority", "web", ":path", "/", "cookie", "a=1", "cookie", "b=2")
	post := block(":method", "POST", ":scheme", "http", ":authority", "web", ":path", "/p?q=1", "content-length", "3", "trailer", "x-t")
	grpc := block(":method", "POST", ":scheme", "http", ":authority", "web", ":path", "/g.S/M", "content-type", "application/grpc", "te", "trailers")
	seed := func(fn func(fr *http2.Framer)) {
		var b bytes.Buffer
		fn(http2.NewFramer(&b, nil))
		f.Add(b.Bytes())
	}
	seed(func(fr *http2.Framer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: get, EndHeaders: true, EndStream: true})
	})
	seed(func(fr *http2.Framer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: post, EndHeaders: true})
		fr.WriteData(1, false, []byte("abc"))
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block("x-t", "v"), EndHeaders: true, EndStream: true})
	})
	seed(func(fr *http2.Framer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: grpc[:5]})
		fr.WriteContinuation(3, true, grpc[5:])
		fr.WriteDataPadded(3, true, []byte{0, 0, 0, 0, 0}, []byte{0, 0})
		fr.WritePing(false, [8]byte{1})
		fr.WriteWindowUpdate(0, 1<<20)
		fr.WriteRSTStream(3, http2.ErrCodeCancel)
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1})
		fr.WriteGoAway(3, http2.ErrCodeNo, nil)
	})
	h := newHarness(f, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(w, r.Body)
		w.Header().Set(http.TrailerPrefix+"X-End", "1")
	}))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		var pre bytes.Buffer
		pre.WriteString(http2.ClientPreface)
		http2.NewFramer(&pre, nil).WriteSettings()
		pre.Write(in)
		go func() {
			c.Write(pre.Bytes())
			c.(*net.TCPConn).CloseWrite()
		}()
		fr := http2.NewFramer(nil, c)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fr.SetMaxReadFrameSize(1 << 24)
		for {
			_, err := fr.ReadFrame()
			if err == nil {
				continue
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("the server kept the connection open after the client's end: %q", in)
			}
			var se http2.StreamError
			var ce http2.ConnectionError
			if errors.As(err, &se) || errors.As(err, &ce) || strings.Contains(err.Error(), "frame") {
				t.Fatalf("the server wrote a malformed frame for %q: %v", in, err)
			}
			return // EOF or reset: the connection ended
		}
	})
}
