package engine

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// TestStreamIdleTimeout: a request body trickling one byte per interval longer than the stream idle
// timeout is ended with 408 (flag SI) over HTTP/1.1 and h2c, the backend's request is cancelled, and the
// goroutines return to their baseline; a request that keeps moving is untouched (issue 14 item 3).
func TestStreamIdleTimeout(t *testing.T) {
	tu.CheckGoroutines(t)
	const idle = 100 * time.Millisecond
	backendDone := make(chan error, 4)
	h := newHarness(t, 1, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, err := io.Copy(io.Discard, r.Body)
		backendDone <- err
		if err == nil {
			io.WriteString(w, strings.Repeat("x", int(n)))
		}
	}), func(o *Options) { o.StreamIdleTimeout = idle })

	// trickle writes one byte, then another every 3 idle periods, until stop is closed or a write fails.
	trickle := func(w io.Writer, stop <-chan struct{}) {
		for {
			if _, err := w.Write([]byte("a")); err != nil {
				return
			}
			select {
			case <-stop:
				return
			case <-time.After(3 * idle):
			}
		}
	}

	t.Run("HTTP/1.1", func(t *testing.T) {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.WriteString(c, "POST /up HTTP/1.1\r\nHost: web.app.svc.cluster.local\r\nContent-Length: 100\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { defer close(done); trickle(c, stop) }()
		defer func() { close(stop); <-done }()
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("no response to a trickling body: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "stream timeout") {
			t.Errorf("trickling body: %d %q, want 408 stream timeout", resp.StatusCode, body)
		}
		if err := <-backendDone; err == nil {
			t.Error("the backend read the whole trickled body")
		}
	})

	t.Run("h2c", func(t *testing.T) {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		tr := &http.Transport{Protocols: &protos}
		defer tr.CloseIdleConnections()
		client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
		pr, pw := io.Pipe()
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() { defer close(done); trickle(pw, stop) }()
		defer func() { close(stop); pw.Close(); <-done }()
		resp, err := client.Post("http://"+h.addr+"/up", "text/plain", pr)
		if err != nil {
			t.Fatalf("no response to a trickling body: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestTimeout || resp.ProtoMajor != 2 {
			t.Errorf("trickling body: %s %d %q, want HTTP/2 408", resp.Proto, resp.StatusCode, body)
		}
		if err := <-backendDone; err == nil {
			t.Error("the backend read the whole trickled body")
		}
		// The connection (the HBONE stream) stays: a request that moves completes on it.
		resp, err = client.Post("http://"+h.addr+"/up", "text/plain", strings.NewReader("abc"))
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "xxx" {
			t.Errorf("request after the timeout: %d %q", resp.StatusCode, body)
		}
		<-backendDone
	})
}
