package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/memory/exepages"
	"github.com/ambit-mesh/ambit/waypoint/engine"
)

// serveAmbit runs the L7 engine as a plain reverse proxy: each accepted TCP connection is served as
// if it were an HBONE stream to web.bench.svc.cluster.local:80, whose one endpoint is the backend. No
// routes or policies are configured (the default route to the original destination), as the nginx and
// HAProxy configurations have none; Istio's HTTP metrics are recorded (the others keep no metrics),
// access logs are off in all three. With grpcListen, connections accepted there go to
// grpc.bench.svc.cluster.local:9000 (appProtocol grpc: HTTP/2 upstream), whose endpoint is grpcBackend.
func serveAmbit(ctx context.Context, listen, backend, grpcListen, grpcBackend string) error {
	be, err := netip.ParseAddrPort(backend)
	if err != nil {
		return fmt.Errorf("parse backend: %w", err)
	}
	svc := &state.Service{Name: "web", Namespace: "bench", Hostname: "web.bench.svc.cluster.local",
		Addresses: []state.NetworkAddress{{Addr: netip.MustParseAddr("10.96.0.10")}},
		Ports:     []state.Port{{ServicePort: 80, TargetPort: be.Port(), AppProtocol: state.AppProtocolHTTP11, Name: "http"}}}
	w := &state.Workload{UID: "Kubernetes//Pod/bench/web", Name: "web", Namespace: "bench", Addresses: []netip.Addr{be.Addr()},
		Services: []state.ServiceRef{{Service: svc.Key()}}, Status: state.Healthy}
	services := []*state.Service{svc}
	var gsvc *state.Service
	if grpcListen != "" {
		gbe, err := netip.ParseAddrPort(grpcBackend)
		if err != nil {
			return fmt.Errorf("parse gRPC backend: %w", err)
		}
		if gbe.Addr() != be.Addr() {
			return fmt.Errorf("gRPC backend %s: want the HTTP backend's address %s (one workload serves both)", gbe, be.Addr())
		}
		gsvc = &state.Service{Name: "grpc", Namespace: "bench", Hostname: "grpc.bench.svc.cluster.local",
			Addresses: []state.NetworkAddress{{Addr: netip.MustParseAddr("10.96.0.11")}},
			Ports:     []state.Port{{ServicePort: 9000, TargetPort: gbe.Port(), AppProtocol: state.AppProtocolGRPC, Name: "grpc"}}}
		services = append(services, gsvc)
		w.Services = append(w.Services, state.ServiceRef{Service: gsvc.Key()})
	}
	if err := w.Validate(); err != nil {
		return err
	}
	store := state.NewStore()
	store.Replace(&state.Snapshot{Workloads: []*state.Workload{w}, Services: services})
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
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // before wg.Wait: the listeners close
	errs := make(chan error, 2)
	serve := func(listen string, svc *state.Service, port uint16, proto state.AppProtocol) {
		ln, err := listener(listen)
		if err != nil {
			errs <- err
			return
		}
		wg.Go(func() { <-ctx.Done(); ln.Close() })
		target := netip.AddrPortFrom(svc.Addresses[0].Addr, port)
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				remote, _ := netip.ParseAddrPort(c.RemoteAddr().String())
				wg.Go(func() {
					eng.ServeConn(ctx, c, &engine.ConnInfo{PeerID: "spiffe://cluster.local/ns/bench/sa/client", Remote: remote, Target: target,
						Service: svc, Protocol: proto})
				})
			}
		})
	}
	serve(listen, svc, 80, state.AppProtocolHTTP11)
	if gsvc != nil {
		serve(grpcListen, gsvc, 9000, state.AppProtocolGRPC)
	}
	// Serving: drop the executable's start-up pages, as `ambit waypoint` does once ready.
	if _, err := exepages.Trim(); err != nil {
		return err
	}
	select {
	case err := <-errs:
		return err
	case <-ctx.Done():
		return nil
	}
}

// listener opens addr, or "fd:N": a listener the parent passed (ExtraFiles), so no other process can
// take the port first.
func listener(addr string) (net.Listener, error) {
	if fd, ok := strings.CutPrefix(addr, "fd:"); ok {
		n, err := strconv.Atoi(fd)
		if err != nil {
			return nil, fmt.Errorf("listener %q: %w", addr, err)
		}
		return net.FileListener(os.NewFile(uintptr(n), "listener"))
	}
	return net.Listen("tcp", addr)
}
