package redirect_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/redirect"
	"github.com/ambit-mesh/ambit/test/lab"
)

// greetPort is where serveGreeter listens in the pods.
const greetPort = 7070

// serveGreeter runs, in every pod of l, a server on greetPort that writes "<peer> hi" and closes first, so that
// whoever relays the connection closes its own side first too.
func serveGreeter(tb testing.TB, l *lab.Lab) {
	tb.Helper()
	var lns []net.Listener
	var wg sync.WaitGroup
	for _, p := range l.Pods() {
		ln, err := p.NS.Listen(tb.Context(), "tcp", fmt.Sprintf(":%d", greetPort))
		if err != nil {
			tb.Fatalf("listen in %s: %v", p.Name, err)
		}
		lns = append(lns, ln)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				peer := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
				fmt.Fprintf(c, "%s hi\n", peer)
				c.Close()
			}
		}()
	}
	tb.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
		wg.Wait()
	})
}

// dialFromPort connects from a fixed local port (SO_REUSEADDR) inside ns. The previous connection of the same
// port may still be closing on the client side (LAST_ACK, EADDRNOTAVAIL); that is retried briefly.
func dialFromPort(ctx context.Context, ns lab.NS, src, dst netip.AddrPort) (net.Conn, error) {
	d := net.Dialer{
		LocalAddr: net.TCPAddrFromAddrPort(src),
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			}); err != nil {
				return err
			}
			return serr
		},
	}
	for {
		var conn net.Conn
		err := ns.Do(func() error {
			var err error
			conn, err = d.DialContext(ctx, "tcp", dst.String())
			return err
		})
		if !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.EADDRINUSE) {
			return conn, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// synRetransmits reports how many times conn's SYN (or any segment so far) was retransmitted.
func synRetransmits(conn net.Conn) (uint32, error) {
	raw, err := conn.(*net.TCPConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var info *unix.TCPInfo
	var ierr error
	if err := raw.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil {
		return 0, err
	}
	if ierr != nil {
		return 0, ierr
	}
	return info.Total_retrans, nil
}

// agentTimeWait reports whether the node namespace holds a TIME_WAIT socket with local address local and
// remote address remote: the agent's side of a captured connection that the agent closed first.
func agentTimeWait(tb testing.TB, node *lab.Node, local, remote netip.AddrPort) bool {
	tb.Helper()
	var found bool
	err := node.NS.Do(func() error {
		// The agent's listeners are dual-stack: IPv4 connections are AF_INET6 sockets too.
		for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
			socks, err := netlink.SocketDiagTCP(fam)
			if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
				return err
			}
			for _, s := range socks {
				l, lok := netip.AddrFromSlice(s.ID.Source)
				r, rok := netip.AddrFromSlice(s.ID.Destination)
				if lok && rok && s.State == unix.BPF_TCP_TIME_WAIT &&
					netip.AddrPortFrom(l.Unmap(), s.ID.SourcePort) == local && netip.AddrPortFrom(r.Unmap(), s.ID.DestinationPort) == remote {
					found = true
				}
			}
		}
		return nil
	})
	if err != nil {
		tb.Fatalf("list node sockets: %v", err)
	}
	return found
}

// testTimeWaitReuse makes many short captured connections from one fixed client port, each closed by the agent
// first, so that every new connection's SYN meets the agent's TIME_WAIT socket of the previous one (the 4-tuple
// is the same). Each must be captured and set up at once, in every role.
func testTimeWaitReuse(t *testing.T, mode redirect.Mode) {
	const conns = 25
	l, a, pod, remote := setup(t, mode)
	serveGreeter(t, l)
	node := l.Nodes[0]
	roles := []struct {
		name     string
		role     string
		client   *lab.Pod
		dst      func(f family) netip.AddrPort
		wantLine func(f family, dst netip.AddrPort) string
	}{
		{
			"outbound", "outbound", pod,
			func(f family) netip.AddrPort { return netip.AddrPortFrom(f.ip(remote), greetPort) },
			func(f family, _ netip.AddrPort) string { return f.node(node).String() + " hi" },
		},
		{
			"inbound plaintext", "inbound", remote,
			func(f family) netip.AddrPort { return netip.AddrPortFrom(f.ip(pod), greetPort) },
			func(f family, _ netip.AddrPort) string { return f.ip(remote).String() + " hi" },
		},
		{
			"inbound hbone", "hbone", remote,
			func(f family) netip.AddrPort { return netip.AddrPortFrom(f.ip(pod), 15008) },
			func(_ family, dst netip.AddrPort) string { return "hbone " + dst.String() },
		},
	}
	port := uint16(41000)
	for _, r := range roles {
		for _, f := range families {
			port++
			t.Run(r.name+"/"+f.name, func(t *testing.T) {
				src := netip.AddrPortFrom(f.ip(r.client), port)
				dst := r.dst(f)
				var retrans uint32
				for i := range conns {
					ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
					conn, err := dialFromPort(ctx, r.client.NS, src, dst)
					cancel()
					if err != nil {
						t.Fatalf("connection %d of %d from %s to %s: %v", i+1, conns, src, dst, err)
					}
					n, err := synRetransmits(conn)
					if err != nil {
						conn.Close()
						t.Fatalf("tcp info: %v", err)
					}
					retrans += n
					if got := a.next(t); got.role != r.role || got.orig != dst || got.remote != src {
						conn.Close()
						t.Fatalf("connection %d: agent saw %+v, want %s %s from %s", i+1, got, r.role, dst, src)
					}
					// The agent closes first: read its line, then its FIN, then close.
					conn.SetDeadline(time.Now().Add(5 * time.Second))
					line, err := bufio.NewReader(conn).ReadString('\n')
					if err == nil {
						_, err = conn.Read(make([]byte, 1))
					}
					conn.Close()
					if want := r.wantLine(f, dst); strings.TrimSuffix(line, "\n") != want || err != io.EOF {
						t.Fatalf("connection %d: read %q then %v, want %q then EOF", i+1, line, err, want)
					}
					if i == 0 && !waitFor(func() bool { return agentTimeWait(t, node, dst, src) }) {
						t.Fatalf("the agent's side of %s->%s is not in TIME_WAIT: the test does not exercise reuse", src, dst)
					}
				}
				t.Logf("%d connections, %d SYN retransmissions", conns, retrans)
			})
		}
	}
}

// waitFor polls cond for up to 2 seconds.
func waitFor(cond func() bool) bool {
	for range 200 {
		if cond() {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// testTimeWaitReuseDraining checks that after a pod is unenrolled, its new connections, which go direct, connect
// even when they reuse the 4-tuple of a captured connection that the agent closed first and still holds in
// TIME_WAIT.
func testTimeWaitReuseDraining(t *testing.T, mode redirect.Mode) {
	l, a, pod, remote := setup(t, mode)
	serveGreeter(t, l)
	node := l.Nodes[0]
	type conn struct {
		name     string
		client   *lab.Pod
		src, dst netip.AddrPort
	}
	var conns []conn
	port := uint16(42000)
	for _, f := range families {
		port++
		conns = append(conns,
			conn{"outbound/" + f.name, pod, netip.AddrPortFrom(f.ip(pod), port), netip.AddrPortFrom(f.ip(remote), greetPort)},
			conn{"inbound/" + f.name, remote, netip.AddrPortFrom(f.ip(remote), port), netip.AddrPortFrom(f.ip(pod), greetPort)})
	}
	// greet connects from src to dst and reads the greeting and the server's close; it returns the address the
	// server saw.
	greet := func(t *testing.T, c conn) netip.Addr {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		nc, err := dialFromPort(ctx, c.client.NS, c.src, c.dst)
		cancel()
		if err != nil {
			t.Fatalf("connect %s->%s: %v", c.src, c.dst, err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(5 * time.Second))
		line, err := bufio.NewReader(nc).ReadString('\n')
		if err == nil {
			_, err = nc.Read(make([]byte, 1))
		}
		if err != io.EOF {
			t.Fatalf("%s->%s: read %q then %v, want a line then EOF", c.src, c.dst, line, err)
		}
		return peerOf(t, line)
	}
	for _, c := range conns {
		greet(t, c)
		if got := a.next(t); got.orig != c.dst || got.remote != c.src {
			t.Fatalf("agent saw %+v, want %s from %s", got, c.dst, c.src)
		}
		if !waitFor(func() bool { return agentTimeWait(t, node, c.dst, c.src) }) {
			t.Fatalf("the agent's side of %s->%s is not in TIME_WAIT: the test does not exercise reuse", c.src, c.dst)
		}
	}
	if err := a.r.Unenroll(t.Context(), pod.UID); err != nil {
		t.Fatalf("unenroll: %v", err)
	}
	for _, c := range conns {
		t.Run(c.name, func(t *testing.T) {
			if peer := greet(t, c); peer != c.src.Addr() {
				t.Errorf("server saw %s, want the client %s (direct)", peer, c.src.Addr())
			}
			a.none(t)
		})
	}
}
