package redirect_test

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestDialFromSharesSourcePorts: the agent's dials from a pod's address pick their source port at connect
// time (IP_BIND_ADDRESS_NO_PORT), so a port is unique per 4-tuple as for the pod's own connections, not per
// source address. Before, bind(pod IP, 0) took a port no other socket of that address held towards any
// destination: with every ephemeral port of the address in use (live or in TIME_WAIT, as after a few seconds of
// a busy client's short connections to one server) the next dial failed with EADDRINUSE, and long before that
// each bind scanned the port range under the bind-hash locks (76% of the destination agent's CPU in the soak).
func TestDialFromSharesSourcePorts(t *testing.T) {
	l, a, pod, remote := setup(t, modes[0])
	// Four ephemeral ports in the node's namespace, where the agent's sockets live.
	nsRun(t, l.Nodes[0].NS, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=40000 40003")
	for _, f := range families {
		t.Run(f.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			dial := func(port uint16) net.Conn {
				t.Helper()
				conn, err := a.sf.DialFrom(ctx, f.ip(pod), netip.AddrPortFrom(f.ip(remote), port))
				if err != nil {
					t.Fatalf("dial port %d from %s: %v", port, f.ip(pod), err)
				}
				t.Cleanup(func() { conn.Close() })
				c := &client{c: conn, br: newReader(conn)}
				if peer := peerOf(t, c.say(t, "hello")); peer != f.ip(pod) {
					t.Errorf("server saw %s, want the pod's %s", peer, f.ip(pod))
				}
				return conn
			}
			for range 4 { // every port of the range, towards one server
				dial(8080)
			}
			// Another destination: every source port is free for that 4-tuple.
			for range 4 {
				dial(15008)
			}
		})
	}
}
