//go:build e2e

package kube

import (
	"context"
	"testing"
	"time"
)

// This file's name sorts last on purpose: go test runs the tests of a package in file order, and
// TestMissingGatewayCRDs removes the Gateway API CRDs from the shared cluster, which deletes every Gateway (so
// every waypoint) in it. It reinstalls the CRDs before it returns, but the waypoints other tests made are gone.

// gatewayCRD is the CRD the waypoint commands need.
const gatewayCRD = "gateways.gateway.networking.k8s.io"

// TestMissingGatewayCRDs checks that, without the Gateway CRD, ambitctl's waypoint commands fail (or not) exactly
// as istioctl's do, and that they work again once the CRDs are back.
func TestMissingGatewayCRDs(t *testing.T) {
	c := need(t)
	reinstalled := false
	// reinstall also runs as a cleanup, when t.Context() is already canceled.
	reinstall := func() {
		if reinstalled {
			return
		}
		reinstalled = true
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if _, err := c.stack.Kubectl(ctx, "apply", "--server-side", "-f", c.stack.Bin.GatewayCRDs); err != nil {
			t.Fatalf("reinstall the Gateway API CRDs: %v", err)
		}
		if _, err := c.stack.Kubectl(ctx, "wait", "--for", "condition=established", "--timeout=60s", "crd", gatewayCRD); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now()
	c.kubectl(t, "delete", "crd", gatewayCRD, "--wait=true", "--timeout=90s")
	t.Cleanup(reinstall)
	t.Logf("Gateway CRD deleted in %v", time.Since(t0).Round(time.Millisecond))

	// client-go's NotFound text for a resource the server does not serve, with the verb and resource.
	const (
		notFound      = "the server could not find the requested resource"
		patchNotFound = notFound + " (patch gateways.gateway.networking.k8s.io waypoint)"
		getNotFound   = notFound + " (get gateways.gateway.networking.k8s.io)"
	)
	c.cliRunCase(t, cliCase{name: "nocrd", labels: map[string]string{"istio.io/dataplane-mode": "ambient"}, steps: []cliStep{
		{args: []string{"waypoint", "apply", "-n", "{ns}"}, stdout: cliStr(""),
			stderr: cliStr("Error: missing Kubernetes Gateway CRDs need to be installed before applying a waypoint: " + patchNotFound + "\n"), code: 1},
		// --enroll-namespace: the namespace is checked first; it is not labelled, as the apply failed.
		{args: []string{"waypoint", "apply", "-n", "{ns}", "--enroll-namespace", "--for", "all"}, stdout: cliStr(""),
			stderr: cliStr("Error: missing Kubernetes Gateway CRDs need to be installed before applying a waypoint: " + patchNotFound + "\n"), code: 1,
			check: func(t *testing.T, tool, ns string) {
				if v := c.kubectl(t, "get", "ns", ns, "-o", "jsonpath={.metadata.labels.istio\\.io/use-waypoint}"); v != "" {
					t.Errorf("%s: namespace %s labelled use-waypoint=%q after a failed apply", tool, ns, v)
				}
			}},
		// The namespace is checked before the Gateway: a missing namespace wins.
		{args: []string{"waypoint", "apply", "-n", "{ns}-nope"}, stdout: cliStr(""), stderr: cliStr("Error: namespace: {ns}-nope not found\n"), code: 1},
		{args: []string{"waypoint", "list", "-n", "{ns}"}, stdout: cliStr(""), stderr: cliStr("Error: " + getNotFound + "\n"), code: 1},
		{args: []string{"waypoint", "list", "-A"}, stdout: cliStr(""), stderr: cliStr("Error: " + getNotFound + "\n"), code: 1},
		{args: []string{"waypoint", "status", "-n", "{ns}"}, stdout: cliStr(""), stderr: cliStr("Error: " + getNotFound + "\n"), code: 1},
		{args: []string{"waypoint", "delete", "--all", "-n", "{ns}"}, stdout: cliStr(""), stderr: cliStr("Error: " + getNotFound + "\n"), code: 1},
		{args: []string{"waypoint", "delete", "w1", "-n", "{ns}"}, stdout: cliStr(""), stderr: cliStr("Error: " + getNotFound + "\n"), code: 1},
		// Offline generation needs no cluster.
		{args: []string{"waypoint", "generate", "-n", "{ns}", "--for", "workload"}, stderr: cliStr("")},
	}})

	reinstall()
	// The same commands work again.
	c.cliRunCase(t, cliCase{name: "crdback", steps: []cliStep{
		{args: []string{"waypoint", "apply", "-n", "{ns}", "-r", cliUnservedRevision}, stdout: cliStr("✅ waypoint {ns}/waypoint applied\n"), stderr: cliStr("")},
		{args: []string{"waypoint", "list", "-n", "{ns}"}, stderr: cliStr(""),
			stdout: cliStr("NAME         REVISION               TRAFFIC TYPE     PROGRAMMED\nwaypoint     ambit-e2e-unserved     none             Unknown\n")},
		{args: []string{"waypoint", "delete", "--all", "-n", "{ns}"}, stdout: cliStr("waypoint {ns}/waypoint deleted\n"), stderr: cliStr("")},
	}})
}
