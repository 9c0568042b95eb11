package agent_test

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/ambit-mesh/ambit/agent"
	"github.com/ambit-mesh/ambit/config/xds"
	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/meshlab"
	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/test/xdstest"
	"github.com/ambit-mesh/ambit/xdsclient/workloadapi"
)

// TestOutboundRefusedBeforePolicy: with configuration from istiod, a captured pod's connection that arrives
// after the agent knows the pod (Address) but before the first Authorization response is refused, not
// forwarded; policy could deny it. Once Authorization arrives the same connection goes through.
func TestOutboundRefusedBeforePolicy(t *testing.T) {
	tu.RequireRoot(t)
	srv := xdstest.Start(t, xdstest.Options{TypeURLs: []string{xds.AddressTypeURL, xds.AuthorizationTypeURL},
		Hold: []string{xds.AuthorizationTypeURL}})
	l := lab.Start(t, lab.Options{Nodes: 1, PodsPerNode: 2})
	client, server := l.Nodes[0].Pods[0], l.Nodes[0].Pods[1]
	onNode0 := func(w *workloadapi.Workload) { w.Node = "node0" }
	srv.Set(xds.AddressTypeURL, map[string]proto.Message{
		xdstest.PodUID("app", "client"): xdstest.Pod("app", "client", client.IP.String(), onNode0),
	})
	// Not meshlab.StartCluster: it waits for readiness, which must not come here.
	logs := &meshlab.SyncBuffer{}
	n := l.Nodes[0]
	a, err := agent.New(agent.Config{
		NodeName: "node0", CADir: filepath.Join(t.TempDir(), "ca"), Capture: agent.CaptureEBPF,
		NetNS: n.NS.Path(), Uplinks: []string{n.Uplink}, PinDir: n.PinDir, ConnectTimeout: 2 * time.Second,
		XDSAddress: srv.Addr, XDSPlaintext: true, PodName: "ztunnel", PodNamespace: "istio-system",
	}, slog.New(slog.NewTextHandler(io.MultiWriter(logs, meshlab.TestWriter{T: t, Node: 0}), nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := a.Run(ctx); err != nil {
			t.Errorf("agent: %v", err)
		}
	}()
	defer func() { cancel(); <-done }()
	serve(t, server, 8080) // outside the mesh: istiod never sent it
	// Enrolled (captured) from istiod's Address alone: its connections now reach the agent.
	tu.WaitFor(t, 20*time.Second, "the client pod captured", func() bool { return strings.Contains(logs.String(), `msg="pod captured"`) })
	if ok, _ := a.Ready(); ok {
		t.Fatal("agent ready before the first Authorization response")
	}
	addr := server.IP.String() + ":8080"
	if got, err := call(t, client, addr); err == nil {
		t.Fatalf("a captured connection before policy arrived was forwarded: answer %q", got)
	}

	srv.Set(xds.AuthorizationTypeURL, map[string]proto.Message{})
	srv.Release(xds.AuthorizationTypeURL)
	tu.WaitFor(t, 20*time.Second, "agent ready", func() bool { ok, _ := a.Ready(); return ok })
	got, err := call(t, client, addr)
	if err != nil {
		t.Fatalf("once policy arrived: %v", err)
	}
	if want := server.Name + " " + client.IP.String() + ":"; len(got) < len(want) || got[:len(want)] != want {
		t.Errorf("answer %q, want prefix %q", got, want)
	}
}
