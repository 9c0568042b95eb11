// Package dial opens the next hop of a route plan (mesh/route): an HBONE CONNECT stream, or plain TCP.
// It is the one upstream dial of the node agent (outbound connections) and the waypoint (L4
// forwarding), so both send the same CONNECT for the same plan.
//
// It does no planning: the plan says where to go. It must not import agent/ or waypoint/.
package dial

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/mesh/route"
)

// TCP dials plain TCP connections. redirect.SocketFactory implements it with sockets marked so that
// capture ignores them.
type TCP interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// ErrNoIdentity reports an HBONE plan with no valid identity to expect of the peer: the upstream's
// identity does not parse as a SPIFFE ID, or there is none at all. Such a plan is never dialled, since
// an empty expected list would accept any identity (fail closed).
var ErrNoIdentity = errors.New("no valid SPIFFE identity to expect of the upstream")

// Upstream opens p's next hop. For an HBONE plan it opens a stream through pool to p.NextHop with the
// :authority p.Authority, accepting only the identities the plan expects (ErrNoIdentity, without
// dialling, when there is none); t supplies the rest (the source identity, the source IP to dial from,
// the CONNECT headers). Otherwise it dials p.NextHop with tcp.
//
// For double HBONE (p.DoubleHBONE) it opens the outer stream to the network gateway, pooled, expecting
// the gateway's identities, and inside it the inner connection (DialOver, not pooled) expecting the
// destination's, with x-forwarded-network: network added to the inner CONNECT only; both carry the
// :authority <service hostname>:<service port>.
func Upstream(ctx context.Context, p *route.Plan, pool hbone.Dialer, tcp TCP, t hbone.Target, network string) (net.Conn, error) {
	if p.Protocol != route.ProtocolHBONE {
		return tcp.DialContext(ctx, "tcp", p.NextHop.String())
	}
	expected, err := ExpectedIdentities(p)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", p.NextHop, err)
	}
	if !p.DoubleHBONE() {
		t.NextHop = p.NextHop
		t.Authority = p.Authority.String()
		t.Expected = expected
		return pool.Dial(ctx, t)
	}
	gw, err := ids(p.GatewayIdentities)
	if err != nil {
		return nil, fmt.Errorf("connect to network gateway %s: %w", p.NextHop, err)
	}
	authority := net.JoinHostPort(p.Host, strconv.Itoa(int(p.HostPort)))
	ot := t
	ot.NextHop, ot.Authority, ot.Expected = p.NextHop, authority, gw
	outer, err := pool.Dial(ctx, ot)
	if err != nil {
		return nil, fmt.Errorf("connect to network gateway: %w", err)
	}
	it := t
	it.NextHop, it.Authority, it.Expected = p.NextHop, authority, expected
	it.Header = t.Header.Clone()
	if it.Header == nil {
		it.Header = make(http.Header, 1)
	}
	it.Header.Set(hbone.HeaderForwardedNetwork, network)
	inner, err := pool.DialOver(ctx, outer, it)
	if err != nil {
		return nil, fmt.Errorf("double HBONE to %s: %w", authority, err)
	}
	return inner, nil
}

// ids collects the identities each calls back with: the first must parse, the rest are skipped when
// they do not (ExpectedIdentities' rule).
func ids(each func(func(string))) ([]spiffeid.ID, error) {
	var out []spiffeid.ID
	var first error
	n := 0
	each(func(s string) {
		id, err := spiffeid.FromString(s)
		if err == nil {
			out = append(out, id)
		} else if n == 0 {
			first = fmt.Errorf("%w: %q: %w", ErrNoIdentity, s, err)
		}
		n++
	})
	if first != nil {
		return nil, first
	}
	if len(out) == 0 {
		return nil, ErrNoIdentity
	}
	return out, nil
}

// ExpectedIdentities returns the SPIFFE identities p's HBONE peer may present: its upstream's and the
// service SANs. The upstream's identity must parse and the list must not be empty (ErrNoIdentity
// otherwise); a SAN that does not parse is skipped (it only narrows what is accepted).
func ExpectedIdentities(p *route.Plan) ([]spiffeid.ID, error) {
	var expected []spiffeid.ID
	if p.Upstream != nil {
		id, err := spiffeid.FromString(p.Upstream.Identity())
		if err != nil {
			return nil, fmt.Errorf("%w: workload %s/%s identity %q: %w", ErrNoIdentity, p.Upstream.Namespace, p.Upstream.Name,
				p.Upstream.Identity(), err)
		}
		expected = append(expected, id)
	}
	for _, s := range p.SANs {
		if id, err := spiffeid.FromString(s); err == nil {
			expected = append(expected, id)
		}
	}
	if len(expected) == 0 {
		return nil, ErrNoIdentity
	}
	return expected, nil
}
