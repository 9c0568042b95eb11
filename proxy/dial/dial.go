// Package dial opens the next hop of a route plan (mesh/route): an HBONE CONNECT stream, or plain TCP.
// It is the one upstream dial of the node agent (outbound connections) and the waypoint (L4
// forwarding), so both send the same CONNECT for the same plan.
//
// It does no planning: the plan says where to go. It must not import agent/ or waypoint/.
package dial

import (
	"context"
	"net"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/mesh/route"
)

// TCP dials plain TCP connections. redirect.SocketFactory implements it with sockets marked so that
// capture ignores them.
type TCP interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// Upstream opens p's next hop. For an HBONE plan it opens a stream through pool to p.NextHop with the
// :authority p.Authority, accepting only the identities the plan expects; t supplies the rest (the
// source identity, the source IP to dial from, the CONNECT headers). Otherwise it dials p.NextHop with
// tcp.
func Upstream(ctx context.Context, p *route.Plan, pool hbone.Dialer, tcp TCP, t hbone.Target) (net.Conn, error) {
	if p.Protocol != route.ProtocolHBONE {
		return tcp.DialContext(ctx, "tcp", p.NextHop.String())
	}
	t.NextHop = p.NextHop
	t.Authority = p.Authority.String()
	t.Expected = ExpectedIdentities(p)
	return pool.Dial(ctx, t)
}

// ExpectedIdentities returns the SPIFFE identities p's HBONE peer may present (its upstream's and the
// service SANs); values that do not parse as SPIFFE IDs are skipped.
func ExpectedIdentities(p *route.Plan) []spiffeid.ID {
	var expected []spiffeid.ID
	p.ExpectedIdentities(func(s string) {
		if id, err := spiffeid.FromString(s); err == nil {
			expected = append(expected, id)
		}
	})
	return expected
}
