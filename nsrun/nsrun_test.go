package nsrun

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/test/testutil"
)

func TestDo(t *testing.T) {
	errFn := errors.New("from fn")
	if err := Do("", func() error { return errFn }); !errors.Is(err, errFn) {
		t.Errorf(`Do("") = %v, want fn's error`, err)
	}
	// The process's own namespace by path: fn runs on a thread that entered it, and its error comes back.
	ran := false
	if err := Do("/proc/self/ns/net", func() error { ran = true; return nil }); err != nil || !ran {
		t.Errorf("Do(/proc/self/ns/net) = %v, ran %v", err, ran)
	}
	err := Do("/nonexistent/netns", func() error { t.Error("fn ran for a namespace that does not exist"); return nil })
	if err == nil || !strings.Contains(err.Error(), "open netns /nonexistent/netns") {
		t.Errorf("Do(missing) = %v, want an open error", err)
	}
}

// newNS makes a fresh network namespace (loopback up) held by a locked thread for the test's lifetime and
// returns its path. Nothing is mounted: the namespace goes away with the thread, even if the test is killed.
func newNS(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	ready := make(chan string, 1)
	stop := make(chan struct{})
	exited := make(chan struct{})
	go func() { // ends at the test's cleanup; its thread dies with it (never unlocked)
		defer close(exited)
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
			ready <- ""
			return
		}
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			t.Errorf("loopback up: %v", err)
			ready <- ""
			return
		}
		ready <- fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		<-stop
	}()
	path := <-ready
	t.Cleanup(func() { close(stop); <-exited })
	if path == "" {
		t.FailNow()
	}
	return path
}

// TestDial: the socket is made in the namespace (it reaches a listener only that namespace has), the caller's
// Control hook runs, a refused dial comes back as an error, and threads end up home again (a listener made
// by Do("") afterwards is in the process's namespace).
func TestDial(t *testing.T) {
	path := newNS(t)
	var ln net.Listener
	if err := Do(path, func() error {
		var err error
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // ends when ln closes
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("ns"))
			c.Close()
		}
	}()
	for i := range 20 { // more dials than Ps: threads are reused, and each must have come home
		controlled := false
		d := net.Dialer{Control: func(string, string, syscall.RawConn) error { controlled = true; return nil }}
		c, err := Dial(t.Context(), path, d, "tcp4", ln.Addr().String())
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		b, err := io.ReadAll(c)
		c.Close()
		if string(b) != "ns" || err != nil || !controlled {
			t.Fatalf("dial %d: read %q, %v; Control ran %v", i, b, err, controlled)
		}
		// The same address in the process's namespace has no listener.
		if c, err := Dial(t.Context(), "", net.Dialer{}, "tcp4", ln.Addr().String()); err == nil {
			c.Close()
			t.Fatalf("dial %d: the process's namespace reached the namespace's listener", i)
		}
	}
	if _, err := Dial(t.Context(), path, net.Dialer{}, "tcp4", "127.0.0.1:1"); err == nil {
		t.Error("a dial to a closed port succeeded")
	}
	ctrlErr := errors.New("control refuses")
	_, err := Dial(t.Context(), path, net.Dialer{Control: func(string, string, syscall.RawConn) error { return ctrlErr }}, "tcp4", ln.Addr().String())
	if !errors.Is(err, ctrlErr) {
		t.Errorf("dial with a failing Control = %v, want its error", err)
	}
}
