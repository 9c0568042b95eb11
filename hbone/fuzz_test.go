package hbone

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// frameSeed builds a byte sequence of HTTP/2 frames with x/net's Framer.
func frameSeed(build func(fr *http2.Framer, hdr func(kv ...string) []byte)) []byte {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	hdr := func(kv ...string) []byte {
		hb.Reset()
		for i := 0; i < len(kv); i += 2 {
			_ = enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return append([]byte(nil), hb.Bytes()...)
	}
	build(fr, hdr)
	return buf.Bytes()
}

func serverSeeds() [][]byte {
	connect := func(fr *http2.Framer, hdr func(kv ...string) []byte, id uint32, end bool) {
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: end,
			BlockFragment: hdr(":method", "CONNECT", ":authority", "10.0.0.1:80", "baggage", "k8s.pod.name=x")})
	}
	return [][]byte{
		frameSeed(func(fr *http2.Framer, hdr func(kv ...string) []byte) {
			_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20})
			_ = fr.WriteSettingsAck()
			connect(fr, hdr, 1, false)
			_ = fr.WriteData(1, false, []byte("hello"))
			_ = fr.WriteWindowUpdate(0, 1000)
			_ = fr.WriteWindowUpdate(1, 1000)
			_ = fr.WritePing(false, [8]byte{1})
			_ = fr.WriteData(1, true, nil)
		}),
		frameSeed(func(fr *http2.Framer, hdr func(kv ...string) []byte) {
			_ = fr.WriteSettings()
			block := hdr(":method", "CONNECT", ":authority", "[fd00::1]:443", "forwarded", `for="1.2.3.4:5"`)
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block[:3]})
			_ = fr.WriteContinuation(3, true, block[3:])
			_ = fr.WriteDataPadded(3, false, []byte("padded"), make([]byte, 10))
			_ = fr.WriteRSTStream(3, http2.ErrCodeCancel)
			connect(fr, hdr, 5, true)
			_ = fr.WritePriority(5, http2.PriorityParam{StreamDep: 3, Weight: 9})
			_ = fr.WriteGoAway(0, http2.ErrCodeNo, []byte("bye"))
		}),
		frameSeed(func(fr *http2.Framer, hdr func(kv ...string) []byte) {
			_ = fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true,
				BlockFragment: hdr(":method", "GET", ":scheme", "https", ":path", "/", ":authority", "a:1")})
			connect(fr, hdr, 3, false)
			_ = fr.WriteData(3, false, make([]byte, 20000))
			_ = fr.WriteData(1, false, []byte("x"))
			_ = fr.WriteRawFrame(0xfe, 0, 7, []byte("unknown"))
		}),
		// Flood limits (flood.go): rapid reset, CONTINUATION and size-update blocks, empty DATA,
		// WINDOW_UPDATE, PRIORITY and oversized SETTINGS, resets for frames on closed streams.
		frameSeed(func(fr *http2.Framer, hdr func(kv ...string) []byte) {
			_ = fr.WriteSettings()
			for id := uint32(1); id < 40; id += 2 {
				connect(fr, hdr, id, false)
				_ = fr.WriteRSTStream(id, http2.ErrCodeCancel)
			}
			connect(fr, hdr, 121, true)
		}),
		frameSeed(func(fr *http2.Framer, hdr func(kv ...string) []byte) {
			_ = fr.WriteSettings()
			block := hdr(":method", "CONNECT", ":authority", "10.0.0.1:80")
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:1]})
			for range maxContinuationFrames + 2 {
				_ = fr.WriteContinuation(1, false, nil)
			}
			_ = fr.WriteContinuation(1, true, block[1:])
		}),
		frameSeed(func(fr *http2.Framer, hdr func(kv ...string) []byte) {
			_ = fr.WriteSettings()
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1})
			for range 3 {
				_ = fr.WriteContinuation(1, false, bytes.Repeat([]byte{0x20}, 1<<10))
			}
			_ = fr.WriteContinuation(1, true, hdr(":method", "CONNECT", ":authority", "10.0.0.1:80"))
			_ = fr.WriteData(1, false, []byte("x"))
		}),
		frameSeed(func(fr *http2.Framer, hdr func(kv ...string) []byte) {
			_ = fr.WriteSettings()
			connect(fr, hdr, 1, false)
			for range maxEmptyDataFrames + 1 {
				_ = fr.WriteData(1, false, nil)
				_ = fr.WriteDataPadded(1, false, nil, []byte{0})
			}
			for range 10 {
				_ = fr.WriteWindowUpdate(0, 1)
				_ = fr.WriteWindowUpdate(1, 1)
			}
		}),
		frameSeed(func(fr *http2.Framer, hdr func(kv ...string) []byte) {
			_ = fr.WriteSettings()
			for range priorityPerStream + 1 {
				_ = fr.WritePriority(3, http2.PriorityParam{StreamDep: 1})
			}
			many := make([]http2.Setting, maxSettingsPerFrame+1)
			for i := range many {
				many[i] = http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(i)}
			}
			_ = fr.WriteSettings(many...)
		}),
		frameSeed(func(fr *http2.Framer, hdr func(kv ...string) []byte) {
			_ = fr.WriteSettings()
			connect(fr, hdr, 1, false)
			_ = fr.WriteRSTStream(1, http2.ErrCodeCancel)
			for range 40 {
				connect(fr, hdr, 1, false)
				_ = fr.WriteData(1, false, []byte("late"))
			}
			for range 50 {
				_ = fr.WritePing(false, [8]byte{})
				_ = fr.WriteSettings()
			}
		}),
	}
}

func clientSeeds() [][]byte {
	return [][]byte{
		frameSeed(func(fr *http2.Framer, hdr func(kv ...string) []byte) {
			_ = fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 100},
				http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: hdr(":status", "200", "baggage", "k8s.pod.name=d")})
			_ = fr.WriteData(1, false, []byte("response"))
			_ = fr.WriteWindowUpdate(1, 5)
			_ = fr.WriteData(1, true, nil)
		}),
		frameSeed(func(fr *http2.Framer, hdr func(kv ...string) []byte) {
			_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: hdr(":status", "100")})
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, EndStream: true, BlockFragment: hdr(":status", "503")})
			_ = fr.WritePing(true, [8]byte{})
			_ = fr.WriteGoAway(1, http2.ErrCodeEnhanceYourCalm, nil)
		}),
		frameSeed(func(fr *http2.Framer, hdr func(kv ...string) []byte) {
			_ = fr.WriteSettings()
			_ = fr.WriteRSTStream(1, http2.ErrCodeRefusedStream)
			_ = fr.WritePushPromise(http2.PushPromiseParam{StreamID: 1, PromiseID: 2, EndHeaders: true})
		}),
		// A server flooding the client: a CONTINUATION-split response, empty DATA, WINDOW_UPDATEs.
		frameSeed(func(fr *http2.Framer, hdr func(kv ...string) []byte) {
			_ = fr.WriteSettings()
			block := hdr(":status", "200")
			_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:1]})
			for range maxContinuationFrames + 2 {
				_ = fr.WriteContinuation(1, false, nil)
			}
			_ = fr.WriteContinuation(1, true, block[1:])
			for range maxEmptyDataFrames + 1 {
				_ = fr.WriteData(1, false, nil)
			}
			for range 20 {
				_ = fr.WriteWindowUpdate(0, 1)
			}
			_ = fr.WriteGoAway(1, http2.ErrCodeEnhanceYourCalm, []byte("calm"))
		}),
	}
}

// fuzzSettings are small, so that short inputs reach the limits: windows, and the header list size that
// bounds header blocks (twice it, across CONTINUATIONs).
func fuzzSettings(server bool) Settings {
	s, _ := Settings{StreamWindow: 1 << 16, ConnWindow: 1 << 17, MaxHeaderListSize: 1 << 10}.withDefaults(server)
	return s
}

// runPipeConn runs a conn over net.Pipe, feeding it input as the peer's bytes, and fails if the conn
// does not finish within 10 s of the input ending. setup runs after the conn started.
func runPipeConn(t *testing.T, cfg connConfig, input []byte, setup func(c *conn, wg *sync.WaitGroup)) {
	peer, local := net.Pipe()
	var wg sync.WaitGroup
	c := newConn(local, nil, cfg, spiffeid.ID{})
	wg.Add(1)
	go func() { // the peer reads (and drops) whatever the conn writes
		defer wg.Done()
		_, _ = io.Copy(io.Discard, peer)
	}()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.readLoop()
	}()
	if err := c.start(); err != nil {
		c.close(err)
	}
	setup(c, &wg)
	wg.Add(1)
	go func() {
		defer wg.Done()
		_, _ = peer.Write(input)
		_ = peer.Close() // end of input: the conn must see EOF and finish
	}()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		buf := make([]byte, 1<<20)
		t.Fatalf("conn did not finish after its input ended:\n%s", buf[:runtime.Stack(buf, true)])
	}
	c.close(nil)
	_ = peer.Close()
	finished := make(chan struct{})
	go func() {
		wg.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-time.After(3 * time.Second):
		buf := make([]byte, 1<<20)
		t.Fatalf("goroutines did not finish after the conn closed:\n%s", buf[:runtime.Stack(buf, true)])
	}
}

// FuzzServerFrames feeds arbitrary bytes, after the client preface, to a server-side connection with a
// handler that accepts and reads, and checks it neither panics nor hangs.
func FuzzServerFrames(f *testing.F) {
	for _, s := range serverSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var hwg *sync.WaitGroup
		cfg := connConfig{
			server:    true,
			settings:  fuzzSettings(true),
			keepalive: keepalive{Interval: -1},
			logger:    slog.New(slog.DiscardHandler),
			onRequest: func(s *Stream, fields []hpack.HeaderField, truncated bool) {
				hwg.Add(1)
				go func() {
					defer hwg.Done()
					defer s.c.handlerDone()
					defer s.Close()
					req, status, err := parseRequest(fields, truncated)
					if err != nil {
						_ = s.respondStatus(status)
						return
					}
					req.stream = s
					c, err := req.Accept(nil)
					if err != nil {
						return
					}
					_, _ = io.Copy(io.Discard, c)
					_, _ = c.Write([]byte("reply"))
				}()
			},
		}
		runPipeConn(t, cfg, append([]byte(http2.ClientPreface), data...), func(c *conn, wg *sync.WaitGroup) { hwg = wg })
	})
}

// FuzzClientFrames feeds arbitrary bytes as a server's frames to a client-side connection with one
// stream being opened and read, and checks it neither panics nor hangs.
func FuzzClientFrames(f *testing.F) {
	for _, s := range clientSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg := connConfig{
			settings:     fuzzSettings(false),
			keepalive:    keepalive{Interval: -1},
			logger:       slog.New(slog.DiscardHandler),
			onStreamDone: func() {},
		}
		runPipeConn(t, cfg, data, func(c *conn, wg *sync.WaitGroup) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				s, err := c.openStream(ctx, appendRequestFields(nil, Target{Authority: "10.0.0.1:80"}))
				if err != nil {
					return
				}
				defer s.Close()
				_, _ = s.Write([]byte("request"))
				_, _ = io.Copy(io.Discard, s)
			}()
		})
	})
}

func FuzzParseAuthority(f *testing.F) {
	for _, s := range []string{"10.0.0.1:80", "[fd00::1]:443", "svc.ns.svc.cluster.local:9080", "a:0", "[::ffff:1.2.3.4]:1", "1.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAuthority(s)
		if err != nil {
			return
		}
		b, err := ParseAuthority(a.String())
		if err != nil || a != b {
			t.Fatalf("%q parsed to %+v, which formats as %q and reparses to %+v, %v", s, a, a.String(), b, err)
		}
		if a.Port == 0 || a.Host == "" {
			t.Fatalf("%q: accepted %+v", s, a)
		}
		if a.Addr.IsValid() && a.Host != a.Addr.Addr().String() {
			t.Fatalf("%q: Host %q is not the canonical form of %v", s, a.Host, a.Addr.Addr())
		}
	})
}

func FuzzParseBaggage(f *testing.F) {
	f.Add("k8s.cluster.name=K1,k8s.namespace.name=NS1,k8s.deployment.name=N1,service.name=N2,service.version=V1", "a", "b")
	f.Add("service.name=a%2Cb;p=1, k8s.pod.name = x", "", "%")
	f.Fuzz(func(t *testing.T, header, v1, v2 string) {
		b := ParseBaggage(header, v1)
		if got := ParseBaggage(b.String()); got != b {
			t.Fatalf("parsed %q to %+v; its format %q parses to %+v", header, b, b.String(), got)
		}
		built := Baggage{ClusterID: v1, Namespace: v2, WorkloadType: "deployment", WorkloadName: v1 + v2,
			ServiceName: v2, Revision: v1, Region: v2, Zone: v1}
		if built.WorkloadName == "" {
			built.WorkloadType = ""
		}
		if got := ParseBaggage(built.String()); got != built {
			t.Fatalf("%+v formats as %q, which parses to %+v", built, built.String(), got)
		}
	})
}

func FuzzParseForwarded(f *testing.F) {
	f.Add(`for="10.0.0.1:4000";host=svc.ns.svc.cluster.local`)
	f.Add(`For="[fd00::1]:1";proto=https, for=x`)
	f.Add(`host="a\"b"`)
	f.Fuzz(func(t *testing.T, s string) {
		fw, err := ParseForwarded(s)
		if err != nil {
			return
		}
		again, err := ParseForwarded(fw.String())
		if err != nil || again != fw {
			t.Fatalf("%q parsed to %+v, formatted %q, reparsed %+v, %v", s, fw, fw.String(), again, err)
		}
	})
}

func FuzzParseTraceparent(f *testing.F) {
	f.Add("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	f.Add(NewTraceparent().String())
	f.Fuzz(func(t *testing.T, s string) {
		tp, err := ParseTraceparent(s)
		if err != nil {
			return
		}
		if tp.String() != s {
			t.Fatalf("%q parsed and formatted as %q", s, tp.String())
		}
	})
}
