package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/ambit-mesh/ambit/test/proc"
)

// isolatedEnv names the test a re-executed test binary runs in isolation.
const isolatedEnv = "AMBIT_ISOLATED_TEST"

// Isolate runs the calling test in a private mount namespace with a fresh tmpfs on /run, as on a freshly booted
// machine: whatever the test does to /run (the network-namespace directory /run/netns, lab lock files) and to
// mounts stays invisible to the host and to concurrent runs, and disappears with the test's processes.
//
// Use it first thing in a root-only test:
//
//	if !testutil.Isolate(t) {
//		return // the test ran in a child process; its result is reported here
//	}
//
// In the parent it requires root, re-executes the test binary for this test only in a new mount namespace, and
// fails t with the child's output unless the child passed; it returns false. In the child it detaches the host's
// mounts under /run (covered ones included), mounts the tmpfs and returns true. Network namespaces, bpffs and
// processes are still the host's: clean them up as usual.
func Isolate(t *testing.T) bool {
	t.Helper()
	if os.Getenv(isolatedEnv) == t.Name() {
		if err := detachUnder("/run"); err != nil {
			t.Fatalf("clear /run: %v", err)
		}
		if err := syscall.Mount("ambit-isolated-run", "/run", "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755"); err != nil {
			t.Fatalf("mount tmpfs on /run: %v", err)
		}
		return true
	}
	RequireRoot(t)
	pattern := "^" + regexp.QuoteMeta(strings.SplitN(t.Name(), "/", 2)[0]) + "$"
	if i := strings.Index(t.Name(), "/"); i >= 0 {
		pattern += "/^" + regexp.QuoteMeta(t.Name()[i+1:]) + "$"
	}
	cmd := exec.Command(os.Args[0], "-test.run="+pattern, "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), isolatedEnv+"="+t.Name())
	// Go makes the new mount namespace's mounts private (MS_REC|MS_PRIVATE on /) before exec.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := proc.CombinedOutput(cmd)
	if err != nil || !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Errorf("isolated run of %s failed (%v):\n%s", t.Name(), err, out)
		return false
	}
	t.Logf("isolated run (private mount namespace, fresh /run) passed:\n%s", indent(string(out)))
	return false
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		fmt.Fprintf(&b, "    %s\n", l)
	}
	return b.String()
}

// detachUnder lazily unmounts, in this (private) mount namespace, every mount on dir or below it, covered ones
// included (each round uncovers the next level).
func detachUnder(dir string) error {
	for range 16 {
		b, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			return err
		}
		var points []string
		for _, l := range strings.Split(string(b), "\n") {
			if f := strings.Fields(l); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
				points = append(points, f[4])
			}
		}
		if len(points) == 0 {
			return nil
		}
		for _, p := range points {
			_ = syscall.Unmount(p, syscall.MNT_DETACH) // fails for covered ones until a later round
		}
	}
	return fmt.Errorf("mounts under %s remain", dir)
}
