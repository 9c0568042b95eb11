package waypoint

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/ambit-mesh/ambit/nsrun"
)

// sockets makes the waypoint's listeners and upstream connections: plain sockets (net.ListenConfig and
// net.Dialer, no socket option at all), so that `ambit waypoint` runs with no capability, as istiod's waypoint
// template runs it (uid 1337, every capability dropped, no privilege escalation). The agent's sockets carry a
// mark so that capture skips them; the waypoint's need none: a waypoint pod is never enrolled (istiod's template
// labels it istio.io/dataplane-mode=none), and a mark set in a pod's namespace would not survive the veth into
// the node's anyway (the kernel clears skb->mark when a packet changes network namespace).
type sockets struct {
	// netns is the path of the network namespace to make sockets in ("": the process's, as in a pod). Entering
	// another namespace needs CAP_SYS_ADMIN: only tests that run waypoints in lab pods set it.
	netns string
}

// Listen makes a TCP listener on addr; an IPv6 wildcard address serves IPv4 too.
func (s sockets) Listen(ctx context.Context, addr netip.AddrPort) (*net.TCPListener, error) {
	network := "tcp6"
	switch {
	case addr.Addr().Is4():
		network = "tcp4"
	case addr.Addr() == netip.IPv6Unspecified():
		network = "tcp"
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	var ln net.Listener
	err := s.do(func() error {
		var err error
		ln, err = lc.Listen(ctx, network, addr.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	return ln.(*net.TCPListener), nil
}

// DialContext connects to address; its signature matches net.Dialer.DialContext.
func (s sockets) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	d.SetMultipathTCP(false)
	var conn net.Conn
	err := s.do(func() error {
		var err error
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", address, err)
	}
	return conn, nil
}

// do runs fn with the calling OS thread in s.netns (directly when it is empty). If the thread cannot return to
// its own namespace it stays locked, so that the Go runtime discards it.
func (s sockets) do(fn func() error) error { return nsrun.Do(s.netns, fn) }
