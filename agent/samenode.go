package agent

import (
	"context"
	"errors"
	"net"
	"net/netip"

	"github.com/ambit-mesh/ambit/mesh/authz"
	"github.com/ambit-mesh/ambit/proxy/metrics"
)

// sameNode delivers an outbound HBONE connection whose destination pod is on this node, without a
// network round trip: capture cannot take the agent's own dial to a local pod's :15008. It applies the
// destination side's checks (authorization with the source workload's identity as the peer, then the
// dial) and reports both sides: the outbound result it is handed and a delivery result of its own,
// sharing one set of counters.
type sameNode struct {
	*inputs
}

// serve delivers down, whose outbound side is out, to the local pod at target.
func (s *sameNode) serve(ctx context.Context, down net.Conn, out *metrics.ConnectionResult, target netip.AddrPort) {
	if j := s.start(ctx, down, out, target); j != nil {
		// One relay, tracked as the delivery (policy changes may close it); the outbound side ends with it.
		s.relay(ctx, j, func() { s.rec.Complete(out, nil) })
	}
}

// start checks and opens the pod; nil when refused (both sides accounted, down closed).
func (s *sameNode) start(ctx context.Context, down net.Conn, out *metrics.ConnectionResult, target netip.AddrPort) *relayJob {
	src := out.Conn.Workload
	d := &delivery{peer: authz.PeerFromSPIFFE(src.Identity()), src: out.Conn.Src, dst: target, local: s.localWorkload(target.Addr()),
		service: out.Conn.Service, mtls: true}
	if d.local == nil {
		s.rec.Fail(out, errors.New("local destination vanished"))
		down.Close()
		return nil
	}
	res := s.result(d, "HBONE")
	up, err := s.prepare(ctx, d)
	if err != nil {
		s.rec.Fail(res, err)
		s.rec.Fail(out, err)
		down.Close()
		return nil
	}
	out.Conn.Counters = res.Conn.Counters
	return &relayJob{res: res, down: down, up: up, recheck: s.recheck(d)}
}
