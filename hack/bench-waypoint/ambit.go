package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/waypoint/engine"
)

// serveAmbit runs the L7 engine as a plain reverse proxy: each accepted TCP connection is served as
// if it were an HBONE stream to web.bench.svc.cluster.local:80, whose one endpoint is the backend. No
// routes or policies are configured (the default route to the original destination), as the nginx and
// HAProxy configurations have none; Istio's HTTP metrics are recorded (the others keep no metrics),
// access logs are off in all three.
func serveAmbit(ctx context.Context, listen, backend string) error {
	be, err := netip.ParseAddrPort(backend)
	if err != nil {
		return fmt.Errorf("parse backend: %w", err)
	}
	svc := &state.Service{Name: "web", Namespace: "bench", Hostname: "web.bench.svc.cluster.local",
		Addresses: []state.NetworkAddress{{Addr: netip.MustParseAddr("10.96.0.10")}},
		Ports:     []state.Port{{ServicePort: 80, TargetPort: be.Port(), AppProtocol: state.AppProtocolHTTP11, Name: "http"}}}
	w := &state.Workload{UID: "Kubernetes//Pod/bench/web", Name: "web", Namespace: "bench", Addresses: []netip.Addr{be.Addr()},
		Services: []state.ServiceRef{{Service: svc.Key()}}, Status: state.Healthy}
	if err := w.Validate(); err != nil {
		return err
	}
	store := state.NewStore()
	store.Replace(&state.Snapshot{Workloads: []*state.Workload{w}, Services: []*state.Service{svc}})
	var d net.Dialer
	eng, err := engine.New(engine.Options{Registerer: prometheus.NewRegistry(), State: store, Namespace: "bench", Name: "wp",
		Logger: slog.New(slog.DiscardHandler),
		Dial: func(ctx context.Context, a netip.AddrPort) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", a.String())
		}})
	if err != nil {
		return err
	}
	defer eng.Close()
	// "fd:3": the listener the parent passed (ExtraFiles), so no other process can take the port first.
	var ln net.Listener
	if listen == "fd:3" {
		ln, err = net.FileListener(os.NewFile(3, "listener"))
	} else {
		ln, err = net.Listen("tcp", listen)
	}
	if err != nil {
		return err
	}
	go func() { <-ctx.Done(); ln.Close() }()
	target := netip.AddrPortFrom(svc.Addresses[0].Addr, 80)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			return nil
		}
		remote, _ := netip.ParseAddrPort(c.RemoteAddr().String())
		wg.Go(func() {
			eng.ServeConn(ctx, c, &engine.ConnInfo{PeerID: "spiffe://cluster.local/ns/bench/sa/client", Remote: remote, Target: target,
				Service: svc, Protocol: state.AppProtocolHTTP11})
		})
	}
}
