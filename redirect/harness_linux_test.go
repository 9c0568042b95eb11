package redirect_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/redirect"
	"github.com/ambit-mesh/ambit/test/lab"
)

// modes are the capture modes every integration scenario runs in.
var modes = []redirect.Mode{redirect.ModeEBPF, redirect.ModeTPROXY}

// accepted is what the test proxy saw for one captured connection.
type accepted struct {
	role   string // "outbound", "inbound", "hbone", "inbound-dnat"
	orig   netip.AddrPort
	remote netip.AddrPort
}

// agent is a trivial node proxy built on redirect: it accepts on the three capture listeners, reads the original
// destination, dials it with SocketFactory (marked; from the client's address for inbound) and splices. On
// HBONE it answers one line naming the dialled address instead of speaking HBONE.
type agent struct {
	tb    testing.TB
	node  *lab.Node
	opts  redirect.Options
	sf    redirect.SocketFactory
	r     redirect.Redirector
	lns   []*net.TCPListener
	conns chan accepted

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	open map[net.Conn]struct{} // guarded by mu
}

func agentOptions(node *lab.Node, mode redirect.Mode) redirect.Options {
	return redirect.Options{
		Mode:         mode,
		NetNS:        node.NS.Path(),
		Uplinks:      []string{node.Uplink},
		PinDir:       node.PinDir,
		DrainTimeout: time.Minute,
	}
}

// startAgent starts an agent in node; it stops (without cleaning capture up) when the test ends.
func startAgent(tb testing.TB, node *lab.Node, opts redirect.Options) *agent {
	return startAgentListeners(tb, node, opts, true)
}

// startAgentListeners is startAgent with or without the InboundDNAT listener (15007, role "inbound-dnat").
func startAgentListeners(tb testing.TB, node *lab.Node, opts redirect.Options, dnat bool) *agent {
	tb.Helper()
	a := &agent{tb: tb, node: node, opts: opts, sf: redirect.SocketFactory{NetNS: node.NS.Path()}, conns: make(chan accepted, 64), open: map[net.Conn]struct{}{}}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	roles := []string{"outbound", "inbound", "hbone"}
	for _, port := range []uint16{15001, 15006, 15008} {
		ln, err := a.sf.Listen(tb.Context(), netip.AddrPortFrom(netip.IPv6Unspecified(), port))
		if err != nil {
			a.stop()
			tb.Fatalf("listen: %v", err)
		}
		a.lns = append(a.lns, ln)
	}
	a.opts.Listeners = redirect.Listeners{Outbound: a.lns[0], Inbound: a.lns[1], HBONE: a.lns[2]}
	if dnat {
		ln, err := a.sf.ListenTracked(tb.Context(), netip.AddrPortFrom(netip.IPv6Unspecified(), 15007))
		if err != nil {
			a.stop()
			tb.Fatalf("listen: %v", err)
		}
		a.lns = append(a.lns, ln)
		a.opts.Listeners.InboundDNAT = ln
		roles = append(roles, "inbound-dnat")
	}
	r, err := redirect.New(tb.Context(), a.opts)
	if err != nil {
		a.stop()
		tb.Fatalf("new redirector: %v", err)
	}
	a.r = r
	for i, role := range roles {
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.serve(a.lns[i], role)
		}()
	}
	tb.Cleanup(a.stop)
	return a
}

// stop closes the listeners, every proxied connection and the redirector; capture stays installed.
func (a *agent) stop() {
	a.cancel()
	for _, ln := range a.lns {
		ln.Close()
	}
	a.mu.Lock()
	for c := range a.open {
		c.Close()
	}
	a.mu.Unlock()
	a.wg.Wait()
	if a.r != nil {
		if err := a.r.Close(); err != nil {
			a.tb.Errorf("close redirector: %v", err)
		}
	}
}

func (a *agent) track(c net.Conn) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ctx.Err() != nil {
		c.Close()
		return false
	}
	a.open[c] = struct{}{}
	return true
}

func (a *agent) untrack(c net.Conn) {
	a.mu.Lock()
	delete(a.open, c)
	a.mu.Unlock()
	c.Close()
}

func (a *agent) serve(ln *net.TCPListener, role string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		if !a.track(c) {
			continue
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			defer a.untrack(c)
			a.handle(c, role)
		}()
	}
}

func (a *agent) handle(c net.Conn, role string) {
	orig, err := a.r.OriginalDst(c)
	if role == "inbound-dnat" {
		// The node translated the destination: the pod is the local address (conntrack answers the service).
		l := c.LocalAddr().(*net.TCPAddr).AddrPort()
		orig, err = netip.AddrPortFrom(l.Addr().Unmap(), l.Port()), nil
	}
	if err != nil {
		a.tb.Errorf("original dst: %v", err)
		return
	}
	remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	select {
	case a.conns <- accepted{role: role, orig: orig, remote: remote}:
	default: // benchmarks do not read them
	}
	var up net.Conn
	ctx, cancel := context.WithTimeout(a.ctx, 5*time.Second)
	defer cancel()
	switch role {
	case "hbone":
		fmt.Fprintf(c, "hbone %s\n", orig)
		// The agent closes first (TestCapture's time-wait reuse relies on it), but as a server does: FIN,
		// then read until the client closes. Closing with the client's bytes unread resets the connection,
		// and the client's FIN, which then finds no socket, reaches conntrack as an invalid packet
		// (TestCaptureUnderStrictConntrack failed about one run in fifteen).
		if tc, ok := c.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		io.Copy(io.Discard, c)
		return
	case "outbound":
		up, err = a.sf.DialContext(ctx, "tcp", orig.String())
	case "inbound", "inbound-dnat":
		up, err = a.sf.DialFrom(ctx, remote.Addr(), orig)
	}
	if err != nil {
		a.tb.Logf("agent dial %s for %s: %v", orig, remote, err)
		return
	}
	if !a.track(up) {
		return
	}
	defer a.untrack(up)
	splice(c, up)
}

// splice copies both ways until both directions end.
func splice(a, b net.Conn) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}

// next returns the next connection the agent accepted, failing after a timeout.
func (a *agent) next(tb testing.TB) accepted {
	tb.Helper()
	select {
	case c := <-a.conns:
		return c
	case <-time.After(5 * time.Second):
		tb.Fatalf("agent accepted no connection")
		return accepted{}
	}
}

// none fails if the agent accepted a connection.
func (a *agent) none(tb testing.TB) {
	tb.Helper()
	select {
	case c := <-a.conns:
		tb.Fatalf("agent unexpectedly accepted %+v", c)
	default:
	}
}

func (a *agent) enroll(tb testing.TB, p *lab.Pod) {
	tb.Helper()
	if err := a.r.Enroll(tb.Context(), redirect.Pod{UID: p.UID, Name: p.Name, IPs: p.IPs()}); err != nil {
		tb.Fatalf("enroll %s: %v", p.Name, err)
	}
}

// serveEcho runs, in every pod of l, a server on :8080 and :15008 that answers each line with
// "<peer address> <line>".
func serveEcho(tb testing.TB, l *lab.Lab) {
	tb.Helper()
	var lns []net.Listener
	var wg sync.WaitGroup
	for _, p := range l.Pods() {
		for _, port := range []string{":8080", ":15008"} {
			ln, err := p.NS.Listen(tb.Context(), "tcp", port)
			if err != nil {
				tb.Fatalf("listen in %s: %v", p.Name, err)
			}
			lns = append(lns, ln)
			wg.Add(1)
			go func() {
				defer wg.Done()
				echoServe(ln)
			}()
		}
	}
	tb.Cleanup(func() {
		for _, ln := range lns {
			ln.Close()
		}
		wg.Wait()
	})
}

func echoServe(ln net.Listener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	defer func() {
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			peer := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			br := bufio.NewReader(c)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				if _, err := fmt.Fprintf(c, "%s %s", peer, line); err != nil {
					return
				}
			}
		}()
	}
}

// client is a line-oriented connection from a pod.
type client struct {
	c  net.Conn
	br *bufio.Reader
}

func dial(tb testing.TB, from lab.NS, to netip.AddrPort) *client {
	tb.Helper()
	ctx, cancel := context.WithTimeout(tb.Context(), 5*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, "tcp", to.String())
	if err != nil {
		tb.Fatalf("dial %s from %s: %v", to, from.Name, err)
	}
	tb.Cleanup(func() { c.Close() })
	return &client{c: c, br: bufio.NewReader(c)}
}

// say sends one line and returns the reply line without its newline.
func (c *client) say(tb testing.TB, msg string) string {
	tb.Helper()
	reply, err := c.trySay(msg)
	if err != nil {
		tb.Fatalf("exchange %q over %s->%s: %v", msg, c.c.LocalAddr(), c.c.RemoteAddr(), err)
	}
	return reply
}

func (c *client) trySay(msg string) (string, error) {
	c.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.c, msg+"\n"); err != nil {
		return "", err
	}
	line, err := c.br.ReadString('\n')
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(line, "\n"), nil
}

// peerOf extracts the peer address from an echo reply "<peer> <msg>".
func peerOf(tb testing.TB, reply string) netip.Addr {
	tb.Helper()
	p, _, ok := strings.Cut(reply, " ")
	a, err := netip.ParseAddr(p)
	if !ok || err != nil {
		tb.Fatalf("reply %q is not from the echo server", reply)
	}
	return a
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }
