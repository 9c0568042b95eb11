//go:build e2e

package kube

import (
	"strings"
	"testing"
)

// TestInstall checks what installing Ambit gave: an agent pod on every node, ready, run by the DaemonSet the
// controllers made from the manifest.
func TestInstall(t *testing.T) {
	c := need(t)
	out := c.kubectl(t, "get", "pods", "-n", "istio-system", "-l", agentSelector, "-o",
		"jsonpath={range .items[*]}{.spec.nodeName} {.status.phase} {.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}")
	lines := strings.Split(out, "\n")
	if len(lines) != 2 {
		t.Fatalf("agent pods:\n%s", out)
	}
	for _, l := range lines {
		if !strings.HasSuffix(l, "Running True") {
			t.Errorf("agent pod not ready: %q", l)
		}
	}
}
