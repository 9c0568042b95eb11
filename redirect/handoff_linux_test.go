package redirect

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/testutil"
)

// handoffRig is a process's side of a hand-off: a listener and the hand-off server serving it.
type handoffRig struct {
	ln     *net.TCPListener
	srv    *HandoffServer
	done   chan error
	failed chan error
	cancel context.CancelFunc
}

func startHandoff(t *testing.T, path string, ln *net.TCPListener) *handoffRig {
	t.Helper()
	srv, err := ListenHandoff(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &handoffRig{ln: ln, srv: srv, done: make(chan error, 1), failed: make(chan error, 4), cancel: cancel}
	go func() {
		r.done <- srv.Serve(ctx, []NamedListener{{Name: "outbound", Ln: ln}}, func(err error) { r.failed <- err })
	}()
	t.Cleanup(func() {
		cancel()
		<-r.done
		srv.Close()
	})
	return r
}

func listenTCP(t *testing.T) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestHandoffPassesTheSameSocket: the successor gets the very listening socket (a connection queued on
// it before the hand-off is accepted by the successor), and the commit ends the predecessor's Serve.
func TestHandoffPassesTheSameSocket(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	path := filepath.Join(t.TempDir(), "handoff.sock")
	old := startHandoff(t, path, listenTCP(t))

	queued, err := net.Dial("tcp", old.ln.Addr().String()) // in the accept queue, never accepted by old
	if err != nil {
		t.Fatal(err)
	}
	defer queued.Close()

	tk, err := Take(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ln := tk.Listeners["outbound"]
	if ln == nil || len(tk.Listeners) != 1 {
		tk.Abort()
		t.Fatalf("listeners %v", tk.Listeners)
	}
	defer ln.Close()
	if ln.Addr().String() != old.ln.Addr().String() {
		t.Errorf("taken listener on %s, want %s", ln.Addr(), old.ln.Addr())
	}
	c, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	if c.RemoteAddr().String() != queued.LocalAddr().String() {
		t.Errorf("accepted %s, want the queued %s", c.RemoteAddr(), queued.LocalAddr())
	}
	c.Close()

	if err := tk.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-old.done; err != nil {
		t.Fatalf("predecessor's Serve after the commit: %v", err)
	}
	old.done <- nil // for the cleanup
}

// TestHandoffAbortKeepsThePredecessorServing: a successor that gives up (or dies) before committing
// leaves the predecessor serving, its listener open, and a later successor can still take over.
func TestHandoffAbortKeepsThePredecessorServing(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	path := filepath.Join(t.TempDir(), "handoff.sock")
	old := startHandoff(t, path, listenTCP(t))

	tk, err := Take(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	tk.Abort()
	if err := <-old.failed; err == nil {
		t.Fatal("aborted hand-off not reported")
	}
	select {
	case err := <-old.done:
		t.Fatalf("predecessor stopped serving hand-offs after an abort: %v", err)
	default:
	}
	// The predecessor's own listener still accepts.
	client, err := net.Dial("tcp", old.ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	c, err := old.ln.AcceptTCP()
	if err != nil {
		t.Fatalf("predecessor's listener after the abort: %v", err)
	}
	c.Close()

	tk, err = Take(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	for _, ln := range tk.Listeners {
		defer ln.Close()
	}
	if err := tk.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-old.done; err != nil {
		t.Fatal(err)
	}
	old.done <- nil
}

// TestTakeWithoutPredecessor: no socket file, or one left by a process that died, means there is
// nothing to take; ListenHandoff replaces the stale file.
func TestTakeWithoutPredecessor(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	if _, err := Take(context.Background(), missing); !errors.Is(err, ErrNoPredecessor) {
		t.Errorf("Take(missing) = %v, want ErrNoPredecessor", err)
	}
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // the file stays, nobody listens: a crashed agent's
	if _, err := Take(context.Background(), stale); !errors.Is(err, ErrNoPredecessor) {
		t.Errorf("Take(stale) = %v, want ErrNoPredecessor", err)
	}
	srv, err := ListenHandoff(stale)
	if err != nil {
		t.Fatalf("ListenHandoff over a stale socket: %v", err)
	}
	srv.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("Close left the socket file: %v", err)
	}
}

// TestHandoffSuccessorOwnsThePath: the successor's socket replaces the predecessor's at the path, and
// the predecessor's Close leaves it in place (the next agent must find the successor).
func TestHandoffSuccessorOwnsThePath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "handoff.sock")
	old, err := ListenHandoff(path)
	if err != nil {
		t.Fatal(err)
	}
	next, err := ListenHandoff(path)
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	old.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("predecessor's Close removed the successor's socket: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ln := listenTCP(t)
	errc := make(chan error, 1)
	go func() { errc <- next.Serve(ctx, []NamedListener{{Name: "hbone", Ln: ln}}, nil) }()
	tk, err := Take(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range tk.Listeners {
		l.Close()
	}
	if err := tk.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestHandoffPassesTheDNSSocket: a UDP socket (the DNS proxy's) is handed off as itself, next to TCP
// listeners: a datagram queued on it before the hand-off is read by the successor.
func TestHandoffPassesTheDNSSocket(t *testing.T) {
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	path := filepath.Join(t.TempDir(), "handoff.sock")
	srv, err := ListenHandoff(path)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ln := listenTCP(t)
	uc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	done := make(chan error, 1)
	go func() {
		done <- srv.Serve(context.Background(), []NamedListener{{Name: "outbound", Ln: ln}, {Name: "dns-udp", PC: uc}}, nil)
	}()
	client, err := net.Dial("udp4", uc.LocalAddr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.Write([]byte("queued")); err != nil {
		t.Fatal(err)
	}
	tk, err := Take(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	pc, tl := tk.PacketConns["dns-udp"], tk.Listeners["outbound"]
	if pc == nil || tl == nil || len(tk.PacketConns) != 1 || len(tk.Listeners) != 1 {
		tk.Abort()
		t.Fatalf("listeners %v, packet conns %v", tk.Listeners, tk.PacketConns)
	}
	defer pc.Close()
	defer tl.Close()
	if pc.LocalAddr().String() != uc.LocalAddr().String() {
		t.Errorf("taken socket on %s, want %s", pc.LocalAddr(), uc.LocalAddr())
	}
	pc.SetReadDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 16)
	n, _, err := pc.ReadFromUDP(buf)
	if err != nil || string(buf[:n]) != "queued" {
		t.Fatalf("read on the taken socket: %q, %v", buf[:n], err)
	}
	if err := tk.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("predecessor's Serve after the commit: %v", err)
	}
}
