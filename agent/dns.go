package agent

import (
	"context"
	"fmt"
	"net/netip"
	"os"

	"github.com/ambit-mesh/ambit/agent/dnsproxy"
	"github.com/ambit-mesh/ambit/lifecycle"
)

// The DNS proxy (Config.DNSCapture): capture sends the DNS queries of enrolled pods, UDP and TCP to port
// 53, to the agent's DNS socket and listener on DNSAddr (redirect: the SOCKMAP in ModeEBPF, tproxy rules
// in ModeTPROXY), and dnsproxy answers them from the state or forwards them upstream over the agent's own
// marked sockets, which capture never takes. UDP replies leave from the nameserver address the pod asked.
// A zero-gap restart hands the DNS UDP socket ("dns-udp") and TCP listener ("dns-tcp") off with the others.

// newDNS builds the DNS proxy (New).
func (a *Agent) newDNS() error {
	ups, err := parseUpstreams(a.cfg.DNSUpstreams)
	if err != nil {
		return err
	}
	if len(ups) == 0 {
		b, err := os.ReadFile(a.cfg.DNSResolvConf)
		if err != nil {
			a.log.Warn("no upstream resolver: names outside the mesh get SERVFAIL", "err", err)
		} else if ups = dnsproxy.ParseResolvConf(string(b)); len(ups) == 0 {
			a.log.Warn("no nameserver in resolv.conf: names outside the mesh get SERVFAIL", "file", a.cfg.DNSResolvConf)
		}
	}
	srv, err := dnsproxy.New(dnsproxy.Config{
		Lookup:           a.Store,
		Source:           a.dnsSource,
		KnownClientsOnly: true,
		Domain:           a.cfg.DomainSuffix,
		Upstreams:        ups,
		Dial:             a.in.sockets.DialContext,
		Registerer:       a.Metrics.Registry,
		Logger:           a.log.With("component", "dns"),
	})
	if err != nil {
		return fmt.Errorf("dns proxy: %w", err)
	}
	a.dns = srv
	a.log.Info("dns proxy configured", "addr", a.cfg.DNSAddr, "upstreams", ups)
	return nil
}

// dnsSource finds the local workload behind a query's source address.
func (a *Agent) dnsSource(ip netip.Addr) (dnsproxy.Source, bool) {
	w := a.in.localWorkload(ip)
	if w == nil {
		return dnsproxy.Source{}, false
	}
	name := w.WorkloadName
	if name == "" {
		name = w.Name
	}
	return dnsproxy.Source{Workload: name, Namespace: w.Namespace}, true
}

// dnsUDPName is the DNS UDP socket's name in the listener hand-off (the TCP listener is "dns-tcp", one of
// listenerSpecs).
const dnsUDPName = "dns-udp"

// bindDNS binds the DNS UDP socket unless it was taken from the running agent.
func (a *Agent) bindDNS(ctx context.Context) error {
	if a.dns == nil || a.dnsUDP != nil {
		return nil
	}
	c, err := a.in.sockets.ListenDNS(ctx, a.cfg.DNSAddr)
	if err != nil {
		return err
	}
	a.dnsUDP = c
	return nil
}

// serveDNS starts the DNS proxy on its socket and listener; both stop when the group does.
func (a *Agent) serveDNS(g *lifecycle.Group) {
	if a.dns == nil {
		return
	}
	g.Go("dns-udp", func(ctx context.Context) error { return a.dns.ServeUDP(ctx, a.dnsUDP) })
	g.Go("dns-tcp", func(ctx context.Context) error { return a.dns.ServeTCP(ctx, a.lnDNSTCP) })
}
