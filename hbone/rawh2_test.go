package hbone

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// rawPeer is a hand-driven HTTP/2 endpoint on x/net's Framer, for sending what a correct client or
// server would not.
type rawPeer struct {
	tb   testing.TB
	c    net.Conn
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
}

func newRawPeer(tb testing.TB, c net.Conn) *rawPeer {
	p := &rawPeer{tb: tb, c: c, fr: http2.NewFramer(c, c)}
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.henc = hpack.NewEncoder(&p.hbuf)
	return p
}

// dialRawClient connects to an HBONE server as a client, completing TLS and the HTTP/2 preface.
func dialRawClient(tb testing.TB, addr netip.AddrPort, creds *Credentials) *rawPeer {
	tb.Helper()
	tc, err := rawTLS(tb, addr, clientTLS(creds, "h2"))
	if err != nil {
		tb.Fatalf("tls: %v", err)
	}
	p := newRawPeer(tb, tc)
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		tb.Fatal(err)
	}
	if err := p.fr.WriteSettings(); err != nil {
		tb.Fatal(err)
	}
	return p
}

func (p *rawPeer) headers(id uint32, endStream bool, kv ...string) {
	p.tb.Helper()
	p.hbuf.Reset()
	for i := 0; i < len(kv); i += 2 {
		if err := p.henc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]}); err != nil {
			p.tb.Fatal(err)
		}
	}
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{
		StreamID: id, BlockFragment: p.hbuf.Bytes(), EndHeaders: true, EndStream: endStream,
	}); err != nil {
		p.tb.Fatal(err)
	}
}

// status reads frames until the response headers of stream id and returns :status.
func (p *rawPeer) status(id uint32) int {
	p.tb.Helper()
	_ = p.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			p.tb.Fatalf("read frame: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = p.fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				n, _ := strconv.Atoi(f.PseudoValue("status"))
				return n
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				p.tb.Fatalf("stream %d reset: %v", id, f.ErrCode)
			}
		case *http2.GoAwayFrame:
			p.tb.Fatalf("GOAWAY %v", f.ErrCode)
		}
	}
}

// expectGoAway reads frames until a GOAWAY and returns its error code, or fails (10 s at most).
func (p *rawPeer) expectGoAway() http2.ErrCode {
	p.tb.Helper()
	_ = p.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			p.tb.Fatalf("read frame: %v", err)
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			return g.ErrCode
		}
	}
}

// rawServer is an HTTP/2 server on x/net's Framer: it answers every CONNECT with 200 and, unless
// answerPings, never acknowledges PINGs (a peer that stopped responding).
type rawServer struct {
	ln          net.Listener
	addr        netip.AddrPort
	answerPings bool
	handle      func(p *rawPeer, f *http2.MetaHeadersFrame, first bool) // answers a request; nil: 200
	wg          sync.WaitGroup
	mu          sync.Mutex
	conns       []net.Conn
}

func startRawServer(tb testing.TB, creds *Credentials, answerPings bool) *rawServer {
	tb.Helper()
	return startRawServerWith(tb, creds, answerPings, nil)
}

// startRawServerWith is startRawServer with handle answering each request (first: the connection's
// first request).
func startRawServerWith(tb testing.TB, creds *Credentials, answerPings bool,
	handle func(p *rawPeer, f *http2.MetaHeadersFrame, first bool)) *rawServer {
	tb.Helper()
	var peer = new(struct{})
	_ = peer
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	rs := &rawServer{ln: ln, addr: ln.Addr().(*net.TCPAddr).AddrPort(), answerPings: answerPings, handle: handle}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
		Certificates: []tls.Certificate{creds.Certificate}, ClientAuth: tls.RequireAnyClientCert,
	}
	rs.wg.Add(1)
	go func() {
		defer rs.wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			rs.mu.Lock()
			rs.conns = append(rs.conns, nc)
			rs.mu.Unlock()
			rs.wg.Add(1)
			go func() {
				defer rs.wg.Done()
				defer nc.Close()
				rs.serve(tb, tls.Server(nc, cfg))
			}()
		}
	}()
	tb.Cleanup(func() {
		_ = ln.Close()
		rs.mu.Lock()
		for _, c := range rs.conns {
			_ = c.Close()
		}
		rs.mu.Unlock()
		rs.wg.Wait()
	})
	return rs
}

func (rs *rawServer) serve(tb testing.TB, tc *tls.Conn) {
	pre := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(tc, pre); err != nil {
		return
	}
	p := newRawPeer(tb, tc)
	if err := p.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 100}); err != nil {
		return
	}
	first := true
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				_ = p.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if rs.answerPings && !f.IsAck() {
				_ = p.fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			if rs.handle != nil {
				rs.handle(p, f, first)
				first = false
				continue
			}
			p.hbuf.Reset()
			_ = p.henc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
			_ = p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, BlockFragment: p.hbuf.Bytes(), EndHeaders: true})
		}
	}
}

var errTest = errors.New("test error")
