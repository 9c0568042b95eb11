package lab_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// echo serves one line-echo per connection on ln until it is closed, replying with the peer address seen.
func echo(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s", c.RemoteAddr(), line)
		}()
	}
}

func roundTrip(t *testing.T, from lab.NS, to netip.AddrPort) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, "tcp", to.String())
	if err != nil {
		t.Fatalf("dial %s from %s: %v", to, from.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "hi\n"); err != nil {
		t.Fatalf("write: %v", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v", to, err)
	}
	return strings.TrimSpace(line)
}

func TestLabConnectivity(t *testing.T) {
	l := lab.Start(t, lab.Options{Nodes: 2, PodsPerNode: 2})
	var servers []net.Listener
	for _, p := range l.Pods() {
		ln, err := p.NS.Listen(t.Context(), "tcp", ":8080")
		if err != nil {
			t.Fatalf("listen in %s: %v", p.Name, err)
		}
		servers = append(servers, ln)
		go echo(ln)
	}
	t.Cleanup(func() {
		for _, ln := range servers {
			ln.Close()
		}
	})
	a, b := l.Nodes[0].Pods[0], l.Nodes[1].Pods[1]
	same := l.Nodes[0].Pods[1]
	cases := []struct {
		name     string
		from     lab.NS
		to       netip.AddrPort
		wantPeer netip.Addr
	}{
		{"cross-node v4", a.NS, netip.AddrPortFrom(b.IP, 8080), a.IP},
		{"cross-node v6", a.NS, netip.AddrPortFrom(b.IP6, 8080), a.IP6},
		{"same-node v4", a.NS, netip.AddrPortFrom(same.IP, 8080), a.IP},
		{"same-node v6", b.NS, netip.AddrPortFrom(l.Nodes[1].Pods[0].IP6, 8080), b.IP6},
		{"node to remote pod", l.Nodes[0].NS, netip.AddrPortFrom(b.IP, 8080), l.Nodes[0].IP},
		{"node to local pod v6", l.Nodes[1].NS, netip.AddrPortFrom(b.IP6, 8080), netip.Addr{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := roundTrip(t, tc.from, tc.to)
			peer, _, _ := strings.Cut(got, " ")
			ap, err := netip.ParseAddrPort(peer)
			if err != nil {
				t.Fatalf("bad reply %q: %v", got, err)
			}
			if tc.wantPeer.IsValid() && ap.Addr().Unmap() != tc.wantPeer {
				t.Errorf("server saw peer %s, want %s", ap.Addr(), tc.wantPeer)
			}
			if !strings.HasSuffix(got, " hi") {
				t.Errorf("reply %q does not echo", got)
			}
		})
	}
}

func TestLabCloseRemovesEverything(t *testing.T) {
	testutil.RequireRoot(t)
	l, err := lab.New(t.Context(), lab.Options{Nodes: 1, PodsPerNode: 1})
	if err != nil {
		t.Fatalf("new lab: %v", err)
	}
	ensureBPFFS(t)
	if err := os.MkdirAll(l.Nodes[0].PinDir, 0o755); err != nil {
		t.Fatalf("make pin dir: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	left, _ := filepath.Glob("/var/run/netns/" + l.Name + "*")
	left2, _ := filepath.Glob("/sys/fs/bpf/" + l.Name + "*")
	if len(left)+len(left2) > 0 {
		t.Errorf("left behind: %v %v", left, left2)
	}
}

// ensureBPFFS mounts bpffs on /sys/fs/bpf when nothing is mounted there (as an agent would).
func ensureBPFFS(t *testing.T) {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return
	}
	if err := unix.Mount("bpffs", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
}

func TestSweepRemovesLabsOfDeadProcesses(t *testing.T) {
	testutil.RequireRoot(t)
	// PID 0x7fffffff cannot exist (pid_max is at most 2^22), so this lab looks abandoned.
	name := lab.NamePrefix + "t2147483647-beef"
	l, err := lab.New(t.Context(), lab.Options{Nodes: 1, PodsPerNode: 1, Name: name})
	if err != nil {
		t.Fatalf("new lab: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	mine := lab.Start(t, lab.Options{Nodes: 1, PodsPerNode: 0})
	if err := lab.Sweep(); err != nil {
		t.Fatalf("sweep: %v", err)
	}
	if left, _ := filepath.Glob("/var/run/netns/" + name + "*"); len(left) > 0 {
		t.Errorf("sweep left %v", left)
	}
	if left, _ := filepath.Glob("/var/run/netns/" + mine.Name + "*"); len(left) == 0 {
		t.Errorf("sweep removed the live lab %s", mine.Name)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	testutil.RequireRoot(t)
	for name, o := range map[string]lab.Options{
		"foreign name": {Name: "mylab"},
		"too many":     {Nodes: 201},
	} {
		t.Run(name, func(t *testing.T) {
			if l, err := lab.New(t.Context(), o); err == nil {
				l.Close()
				t.Fatalf("New(%+v) succeeded", o)
			}
		})
	}
}
