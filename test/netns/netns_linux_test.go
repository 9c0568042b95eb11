package netns_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/ambit-mesh/ambit/test/netns"
	"github.com/ambit-mesh/ambit/test/testutil"
)

func ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// dirMounts returns the mountinfo lines of mounts on /run/netns itself.
func dirMounts(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && f[4] == "/run/netns" {
			out = append(out, l)
		}
	}
	return out
}

func named(t *testing.T, name string) []netns.Mount {
	t.Helper()
	ms, err := netns.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	var out []netns.Mount
	for _, m := range ms {
		if m.Name == name {
			out = append(out, m)
		}
	}
	return out
}

func TestCreateAndDeleteAsIPRoute2(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.CheckFDs(t)
	name := fmt.Sprintf("ambit-netns-test-%d", os.Getpid())
	ns, err := netns.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { netns.Delete(name) })
	if _, err := netns.Create(name); err == nil {
		t.Error("a second Create of the same name succeeded")
	}
	mounts := dirMounts(t)
	if len(mounts) != 1 || !strings.Contains(mounts[0], " shared:") {
		t.Errorf("/run/netns is not one shared mount point: %q", mounts)
	}
	if !strings.Contains(ip(t, "netns", "list"), name) {
		t.Errorf("ip netns list does not show %s", name)
	}
	if out := ip(t, "netns", "exec", name, "ip", "-o", "link"); !strings.Contains(out, "lo:") || strings.Contains(out, "eth0") {
		t.Errorf("%s is not a fresh namespace: %s", name, out)
	}
	if err := ns.Sysctl("net/ipv4/ip_forward", "1"); err != nil {
		t.Error(err)
	}
	if len(named(t, name)) != 1 {
		t.Errorf("Mounts does not list %s once: %+v", name, named(t, name))
	}
	if err := netns.Delete(name); err != nil {
		t.Fatal(err)
	}
	if err := netns.Delete(name); err != nil {
		t.Errorf("second Delete: %v", err)
	}
	if _, err := os.Stat(ns.Path()); !os.IsNotExist(err) {
		t.Errorf("%s still exists: %v", ns.Path(), err)
	}
	if m := named(t, name); len(m) != 0 {
		t.Errorf("mounts left: %+v", m)
	}
}

// The failure this package exists for: on a machine where /run/netns is a plain directory, a namespace mounted in
// it by a process that then died, and `ip netns add` self-bind-mounted the directory over it, the dead namespace's
// mount is covered: no path reaches it and its file cannot be removed (EBUSY). Delete must remove it anyway.
func TestDeleteRemovesCoveredMounts(t *testing.T) {
	if !testutil.Isolate(t) {
		return
	}
	if err := os.MkdirAll(netns.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The old convention: a bind mount on a file in the plain directory.
	if out, err := exec.Command("sh", "-c", "touch /run/netns/legacy && unshare --net mount --bind /proc/self/ns/net /run/netns/legacy").CombinedOutput(); err != nil {
		t.Fatalf("legacy mount: %v: %s", err, out)
	}
	ip(t, "netns", "add", "live")
	t.Cleanup(func() { exec.Command("ip", "netns", "del", "live").Run() })
	ms := named(t, "legacy")
	if len(ms) != 2 || !ms[0].Covered || ms[1].Covered {
		t.Fatalf("want a covered mount and its visible copy for legacy, got %+v", ms)
	}
	if err := os.Remove("/run/netns/legacy"); err == nil {
		t.Fatal("removing the covered file worked without uncovering: the scenario is not reproduced")
	}
	if err := netns.Delete("legacy"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if m := named(t, "legacy"); len(m) != 0 {
		t.Errorf("mounts left: %+v", m)
	}
	if _, err := os.Stat("/run/netns/legacy"); !os.IsNotExist(err) {
		t.Errorf("file left: %v", err)
	}
	// The covering mount is back in place, with the live namespace in it.
	if len(dirMounts(t)) != 1 {
		t.Errorf("mounts on /run/netns after uncovering: %q", dirMounts(t))
	}
	ip(t, "netns", "exec", "live", "true")
}

// Concurrent first creations must upgrade /run/netns once: two self-binds would stack, the second covering the
// first's namespaces.
func TestConcurrentCreateMakesOneMountPoint(t *testing.T) {
	if !testutil.Isolate(t) {
		return
	}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = netns.Create(fmt.Sprintf("c%d", i))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("create c%d: %v", i, err)
		}
		t.Cleanup(func() { netns.Delete(fmt.Sprintf("c%d", i)) })
	}
	if m := dirMounts(t); len(m) != 1 {
		t.Errorf("mounts on /run/netns: %q", m)
	}
	ms, err := netns.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Covered {
			t.Errorf("covered mount %+v", m)
		}
	}
}
