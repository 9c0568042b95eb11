package hbone

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/testutil"
)

// handedOff is a stream a Handler handed off, with the Handler's context.
type handedOff struct {
	s   *Stream
	ctx context.Context
}

// handOffServer starts a server whose Handler accepts, hands the stream off and returns at once; the
// streams arrive on the returned channel. The channels hold more than any test opens streams, so a
// Handler never waits for the test to take its stream.
func handOffServer(t *testing.T, pki *testPKI) (*testServer, chan handedOff, chan struct{}) {
	t.Helper()
	got := make(chan handedOff, 16)
	returned := make(chan struct{}, 16)
	h := HandlerFunc(func(ctx context.Context, r *Request) error {
		c, err := r.Accept(nil)
		if err != nil {
			return err
		}
		if !r.HandOff() {
			return errors.New("HandOff after Accept reported false")
		}
		got <- handedOff{c.(*Stream), ctx}
		returned <- struct{}{}
		return nil
	})
	return startServer(t, pki, h, nil), got, returned
}

// notified registers a NotifyReadable callback and returns a channel closed when it runs (at once when
// the stream is readable already).
func notified(s *Stream) chan struct{} {
	ch := make(chan struct{})
	if s.NotifyReadable(func() { close(ch) }) {
		close(ch)
	}
	return ch
}

func waitNotified(t *testing.T, ch chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("no readable notification for %s", what)
	}
}

func TestHandOffStreamOutlivesHandler(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts, got, returned := handOffServer(t, pki)
	p := newTestPool(t, pki, nil)
	cs := dialT(t, p, ts.target(pki))
	ho := <-got
	<-returned
	testutil.WaitFor(t, 5*time.Second, "handler slot freed", func() bool { return ts.Stats().Handlers == 0 })
	if ho.ctx.Err() != nil {
		t.Fatal("handed-off stream's context cancelled when the Handler returned")
	}
	// Still a working stream both ways after the Handler returned.
	if _, err := cs.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(ho.s, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("server read %q, %v", buf, err)
	}
	if _, err := ho.s.Write([]byte("pong")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(cs, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("client read %q, %v", buf, err)
	}
	ho.s.Close()
	<-ho.ctx.Done() // Close cancels the Handler's context
	if err := readToEnd(cs); err != io.EOF {
		t.Fatalf("client read after server Close: %v, want io.EOF", err)
	}
	cs.Close()
}

func TestHandOffBeforeAccept(t *testing.T) {
	r := &Request{}
	if r.HandOff() {
		t.Fatal("HandOff before Accept reported true")
	}
}

func TestNotifyReadable(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts, got, _ := handOffServer(t, pki)
	p := newTestPool(t, pki, nil)

	t.Run("data", func(t *testing.T) {
		cs := dialT(t, p, ts.target(pki))
		defer cs.Close()
		ho := <-got
		defer ho.s.Close()
		ch := notified(ho.s)
		select {
		case <-ch:
			t.Fatal("notified before anything arrived")
		default:
		}
		if _, err := cs.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		waitNotified(t, ch, "data")
		var sb strings.Builder
		n, err := ho.s.WriteAvailable(&sb)
		if err != nil || n != 5 || sb.String() != "hello" {
			t.Fatalf("WriteAvailable = %d %q %v", n, sb.String(), err)
		}
		// Nothing left: nil, and readable again only once more arrives.
		if n, err := ho.s.WriteAvailable(&sb); n != 0 || err != nil {
			t.Fatalf("WriteAvailable on an empty stream = %d, %v", n, err)
		}
		ch = notified(ho.s)
		if _, err := cs.Write([]byte("!")); err != nil {
			t.Fatal(err)
		}
		waitNotified(t, ch, "more data")
		// Readable already: NotifyReadable reports it at once.
		if !ho.s.NotifyReadable(func() { t.Error("callback of a readable stream ran") }) {
			t.Fatal("NotifyReadable on a readable stream reported false")
		}
	})
	t.Run("end of stream", func(t *testing.T) {
		cs := dialT(t, p, ts.target(pki))
		defer cs.Close()
		ho := <-got
		defer ho.s.Close()
		ch := notified(ho.s)
		if _, err := cs.Write([]byte("last")); err != nil {
			t.Fatal(err)
		}
		if err := cs.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		waitNotified(t, ch, "end of stream")
		var sb strings.Builder
		testutil.WaitFor(t, 5*time.Second, "end of stream read", func() bool {
			_, err := ho.s.WriteAvailable(&sb)
			return err == io.EOF
		})
		if sb.String() != "last" {
			t.Fatalf("read %q before the end", sb.String())
		}
	})
	t.Run("peer reset", func(t *testing.T) {
		cs := dialT(t, p, ts.target(pki))
		ho := <-got
		defer ho.s.Close()
		ch := notified(ho.s)
		cs.Close() // RST_STREAM(CANCEL)
		waitNotified(t, ch, "peer reset")
		if _, err := ho.s.WriteAvailable(io.Discard); err != io.EOF {
			t.Fatalf("WriteAvailable after a CANCEL = %v, want io.EOF", err)
		}
		<-ho.ctx.Done()
	})
	t.Run("local close", func(t *testing.T) {
		cs := dialT(t, p, ts.target(pki))
		defer cs.Close()
		ho := <-got
		ch := notified(ho.s)
		ho.s.Close()
		waitNotified(t, ch, "Close")
		if _, err := ho.s.WriteAvailable(io.Discard); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("WriteAvailable after Close = %v", err)
		}
	})
	t.Run("connection closed", func(t *testing.T) {
		cs := dialT(t, p, ts.target(pki))
		defer cs.Close()
		ho := <-got
		defer ho.s.Close()
		ch := notified(ho.s)
		ts.Close()
		waitNotified(t, ch, "server close")
		if _, err := ho.s.WriteAvailable(io.Discard); err == nil {
			t.Fatal("WriteAvailable after the connection closed = nil")
		}
	})
}

// TestHandOffShutdown: a graceful Shutdown waits for a handed-off stream as for a running Handler (the
// stream keeps working after the GOAWAY) and returns once its owner closes it; the owner, waiting with
// NotifyReadable, is woken by its Close.
func TestHandOffShutdown(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts, got, _ := handOffServer(t, pki)
	p := newTestPool(t, pki, nil)
	cs := dialT(t, p, ts.target(pki))
	defer cs.Close()
	ho := <-got
	ch := notified(ho.s)
	done := make(chan error, 1)
	go func() { done <- ts.Shutdown(context.Background()) }()
	if _, err := cs.Write([]byte("after goaway")); err != nil {
		t.Fatal(err)
	}
	waitNotified(t, ch, "data after GOAWAY")
	var sb strings.Builder
	testutil.WaitFor(t, 5*time.Second, "data after GOAWAY read", func() bool {
		_, _ = ho.s.WriteAvailable(&sb)
		return sb.Len() == len("after goaway")
	})
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) while a handed-off stream was open", err)
	default:
	}
	ho.s.Close()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

// TestNotifyReadableAllocatesNothing: the relay arms a parked stream with one callback it keeps, once per
// drain, so arming must not allocate, whether the stream is readable already or not.
func TestNotifyReadableAllocatesNothing(t *testing.T) {
	testutil.CheckGoroutines(t)
	pki := newPKI(t)
	ts, got, _ := handOffServer(t, pki)
	p := newTestPool(t, pki, nil)
	cs := dialT(t, p, ts.target(pki))
	defer cs.Close()
	ho := <-got
	defer ho.s.Close()
	f := func() {}
	if n := testing.AllocsPerRun(100, func() { ho.s.NotifyReadable(f) }); n != 0 {
		t.Errorf("NotifyReadable on an empty stream: %v allocations, want 0", n)
	}
	ch := notified(ho.s)
	if _, err := cs.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	waitNotified(t, ch, "data")
	if n := testing.AllocsPerRun(100, func() {
		if !ho.s.NotifyReadable(f) {
			t.Error("NotifyReadable on a readable stream reported false")
		}
	}); n != 0 {
		t.Errorf("NotifyReadable on a readable stream: %v allocations, want 0", n)
	}
}
