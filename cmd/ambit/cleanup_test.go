package main

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/test/lab"
)

// TestCleanup runs `ambit cleanup` in a lab node after putting the nftables table of TPROXY capture there:
// the table goes, a second run succeeds too (idempotent), and a bad flag fails with exit code 1.
// (redirect's own tests check Cleanup against a real capture in both modes.)
func TestCleanup(t *testing.T) {
	l := lab.Start(t, lab.Options{Nodes: 1})
	node := l.Nodes[0]
	if out, err := node.NS.Command(t.Context(), "nft", "add", "table", "inet", "ambit").CombinedOutput(); err != nil {
		t.Fatalf("nft: %v\n%s", err, out)
	}
	if err := os.MkdirAll(node.PinDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		var stdout, stderr bytes.Buffer
		if code := run([]string{"cleanup", "--netns", node.NS.Path(), "--pin-dir", node.PinDir}, &stdout, &stderr); code != 0 {
			t.Fatalf("run %d: exit %d: %s", i, code, stderr.String())
		}
		if stdout.String() != "capture removed\n" {
			t.Errorf("run %d printed %q", i, stdout.String())
		}
	}
	out, err := node.NS.Command(t.Context(), "nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list: %v\n%s", err, out)
	}
	if strings.Contains(string(out), "ambit") {
		t.Errorf("table still there:\n%s", out)
	}
	if _, err := os.Stat(node.PinDir); !os.IsNotExist(err) {
		t.Errorf("pin dir %s: %v", node.PinDir, err)
	}
	var stderr bytes.Buffer
	if code := run([]string{"cleanup", "--bogus"}, &bytes.Buffer{}, &stderr); code != 1 || !strings.Contains(stderr.String(), "unknown flag") {
		t.Errorf("bad flag: exit %d, %q", code, stderr.String())
	}
}
