package agent

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"

	"github.com/ambit-mesh/ambit/hbone"
	"github.com/ambit-mesh/ambit/mesh/authz"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/metrics"
	"github.com/ambit-mesh/ambit/redirect"
)

// inbound delivers the connections that arrive for a local pod from the network: HBONE (:15008, the
// peer's verified identity) and plaintext (:15006, no identity, so STRICT PeerAuthentication denies it).
type inbound struct {
	*inputs
}

// serveHBONE handles one CONNECT stream for a local pod (ztunnel's inbound phases). An accepted stream is
// handed off to its relay (hbone.Request.HandOff), so the handler's goroutine returns while it relays.
func (in *inbound) serveHBONE(ctx context.Context, r *hbone.Request) error {
	j, err := in.startHBONE(ctx, r)
	if j != nil && r.HandOff() {
		in.relay(ctx, j, nil)
	}
	return err
}

// startHBONE checks a CONNECT request, opens the pod and accepts the stream; without a job when it
// refused the request (the status to answer) or the stream went away (accounted here).
func (in *inbound) startHBONE(ctx context.Context, r *hbone.Request) (*relayJob, error) {
	if !in.configured.Load() {
		return nil, errNotConfigured
	}
	local := in.localWorkload(r.Local.Addr())
	if local == nil {
		return nil, hbone.NewFlagError(http.StatusServiceUnavailable, metrics.FlagConnect, "no local workload with address %s", r.Local.Addr())
	}
	var target netip.AddrPort
	var svc *state.Service
	if r.AuthorityAddr.IsValid() {
		target = netip.AddrPortFrom(r.AuthorityAddr.Addr().Unmap(), r.AuthorityAddr.Port())
		if target.Addr() != r.Local.Addr().Unmap() && local.ApplicationTunnel == nil {
			return nil, hbone.NewFlagError(http.StatusBadRequest, metrics.FlagConnect, "ip mismatch: authority %s on a connection to %s", target, r.Local.Addr())
		}
	} else {
		var err error
		if svc, target, err = in.hostnameTarget(r, local); err != nil {
			return nil, err
		}
	}
	d := &delivery{peer: authz.PeerFromSPIFFE(r.PeerID.String()), src: r.Remote, dst: netip.AddrPortFrom(r.Local.Addr().Unmap(), target.Port()),
		local: local, service: svc, mtls: true}
	if d.src.Addr().Is4In6() {
		d.src = netip.AddrPortFrom(d.src.Addr().Unmap(), d.src.Port())
	}
	if n := r.Header.Get(hbone.HeaderForwardedNetwork); n != "" && n != in.network {
		// Through an east-west gateway from another network: the TCP peer is the gateway, not the
		// client, so the source workload is not looked up by address.
		d.remoteNetwork = true
	}
	if f, err := hbone.ParseForwarded(r.Header.Values(hbone.HeaderForwarded)...); err == nil && f.Host != "" && d.service == nil {
		d.service = in.store.ServiceByHostname(f.Host, local.Namespace)
	}
	in.demandSource(ctx, d)
	res := in.result(d, "HBONE")
	if svc != nil {
		res.Conn.Authority = r.Authority // a hostname authority says more than the pod's address
	}
	up, err := in.prepare(ctx, d)
	if err != nil {
		in.rec.Fail(res, err)
		return nil, err
	}
	resp := make(http.Header, 1)
	resp.Set(hbone.HeaderBaggage, baggageOf(local).String())
	down, err := r.Accept(resp)
	if err != nil {
		up.Close()
		in.rec.Fail(res, fmt.Errorf("accept stream: %w", err))
		return nil, nil
	}
	return &relayJob{res: res, down: down, up: up, recheck: in.recheck(d)}, nil
}

// hostnameTarget resolves a hostname authority, "<service hostname>:<service port>" (double HBONE,
// relayed by an east-west gateway): the service by hostname, preferring the local workload's namespace;
// the local workload must be one of its endpoints, and the port maps to its target port (the workload's
// own port list first, then the service's numeric target port; 503 when there is none).
func (in *inbound) hostnameTarget(r *hbone.Request, local *state.Workload) (*state.Service, netip.AddrPort, error) {
	svc := in.store.ServiceByHostname(r.AuthorityHost, local.Namespace)
	if svc == nil {
		return nil, netip.AddrPort{}, hbone.NewFlagError(http.StatusBadRequest, metrics.FlagConnect, "authority %q: no service with hostname %s",
			r.Authority, r.AuthorityHost)
	}
	ref := local.ServiceRef(svc.Key())
	if ref == nil {
		return nil, netip.AddrPort{}, hbone.NewFlagError(http.StatusBadRequest, metrics.FlagConnect, "authority %q: workload %s/%s is not an endpoint of %s",
			r.Authority, local.Namespace, local.Name, svc.Key())
	}
	port, ok := svc.Port(r.AuthorityPort)
	if !ok {
		return nil, netip.AddrPort{}, hbone.NewFlagError(http.StatusServiceUnavailable, metrics.FlagConnect, "authority %q: service %s has no port %d",
			r.Authority, svc.Key(), r.AuthorityPort)
	}
	tp, ok := ref.Target(r.AuthorityPort)
	if !ok {
		tp = port.TargetPort
	}
	if tp == 0 {
		return nil, netip.AddrPort{}, hbone.NewFlagError(http.StatusServiceUnavailable, metrics.FlagConnect, "authority %q: no target port for %s/%s",
			r.Authority, local.Namespace, local.Name)
	}
	return svc, netip.AddrPortFrom(r.Local.Addr().Unmap(), tp), nil
}

// servePlaintext handles traffic that reached a local pod without HBONE: authorization sees no peer
// identity, so STRICT peer authentication denies it.
func (in *inbound) servePlaintext(ctx context.Context, down *net.TCPConn) {
	if j := in.startPlaintext(ctx, down, false); j != nil {
		in.relay(ctx, j, nil)
	}
}

// servePlaintextDNAT handles a connection the node destination-NATed to a local pod (a ClusterIP, NodePort or
// LoadBalancer address of a Service kube-proxy translates): the pod is the accepted socket's local address
// (the translated destination; conntrack would answer the Service address the client dialled), and the
// rest is plaintext inbound.
func (in *inbound) servePlaintextDNAT(ctx context.Context, down *net.TCPConn) {
	if j := in.startPlaintext(ctx, down, true); j != nil {
		in.relay(ctx, j, nil)
	}
}

// startPlaintext checks and opens the pod for a plaintext connection; nil when refused (accounted and
// closed here). dnat says the node translated the destination (servePlaintextDNAT).
func (in *inbound) startPlaintext(ctx context.Context, down *net.TCPConn, dnat bool) *relayJob {
	src := addrPort(down.RemoteAddr())
	if !in.configured.Load() {
		in.log.Warn("inbound plaintext refused: policy not loaded yet", "src", src)
		down.Close()
		return nil
	}
	dst, err := addrPort(down.LocalAddr()), error(nil)
	if !dnat {
		dst, err = redirect.OriginalDst(down)
	}
	if err != nil {
		in.log.Warn("original destination", "src", src, "err", err)
		down.Close()
		return nil
	}
	local := in.localWorkload(dst.Addr())
	if local == nil {
		in.log.Warn("inbound plaintext for an unknown workload", "src", src, "dst", dst)
		down.Close()
		return nil
	}
	d := &delivery{src: src, dst: dst, local: local}
	in.demandSource(ctx, d)
	res := in.result(d, "TCP")
	up, err := in.prepare(ctx, d)
	if err != nil {
		in.rec.Fail(res, err)
		down.Close()
		return nil
	}
	return &relayJob{res: res, down: down, up: up, recheck: in.recheck(d)}
}
