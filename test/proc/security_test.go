package proc_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/test/proc"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// status runs `cat /proc/self/status` under s and returns its fields.
func status(t *testing.T, s proc.Security) map[string]string {
	t.Helper()
	cmd, err := s.Command("cat", "/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := proc.CombinedOutput(cmd)
	if err != nil {
		t.Fatalf("run under %+v: %v: %s", s, err, out)
	}
	f := map[string]string{}
	for line := range strings.Lines(string(out)) {
		k, v, _ := strings.Cut(line, ":")
		f[k] = strings.Join(strings.Fields(v), " ")
	}
	return f
}

func hex(c proc.Caps) string { return fmt.Sprintf("%016x", uint64(c)) }

// ownCaps is this process's permitted set (a privileged child gets all of it).
func ownCaps(t *testing.T) proc.Caps {
	t.Helper()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Fatal(err)
	}
	return proc.Caps(data[0].Permitted) | proc.Caps(data[1].Permitted)<<32
}

func TestSecurityApplied(t *testing.T) {
	tu.RequireRoot(t)
	netAdmin, _ := proc.ParseCap("NET_ADMIN")
	chown, _ := proc.ParseCap("cap_chown")
	for _, c := range []struct {
		name string
		s    proc.Security
		want map[string]string
	}{
		{"non-root, no capabilities, no_new_privs", proc.Security{UID: 1337, GID: 1337, Groups: []uint32{1337, 4000}, NoNewPrivs: true},
			map[string]string{"Uid": "1337 1337 1337 1337", "Gid": "1337 1337 1337 1337", "Groups": "1337 4000",
				"CapInh": hex(0), "CapPrm": hex(0), "CapEff": hex(0), "CapBnd": hex(0), "CapAmb": hex(0), "NoNewPrivs": "1"}},
		// A non-root process loses its capabilities at exec (no ambient set), as under containerd: the bounding set
		// keeps what was granted, so only a file with capabilities could use them.
		{"non-root with NET_ADMIN granted", proc.Security{UID: 1000, GID: 3000, Caps: proc.Caps(0).With(netAdmin)},
			map[string]string{"Uid": "1000 1000 1000 1000", "Gid": "3000 3000 3000 3000", "Groups": "",
				"CapEff": hex(0), "CapBnd": hex(proc.Caps(0).With(netAdmin)), "NoNewPrivs": "0"}},
		{"root keeps exactly the granted set", proc.Security{Caps: proc.Caps(0).With(chown).With(netAdmin)},
			map[string]string{"Uid": "0 0 0 0", "CapInh": hex(0), "CapPrm": hex(proc.Caps(0).With(chown).With(netAdmin)),
				"CapEff": hex(proc.Caps(0).With(chown).With(netAdmin)), "CapBnd": hex(proc.Caps(0).With(chown).With(netAdmin))}},
		{"root with every capability", proc.Security{Caps: proc.AllCaps},
			map[string]string{"Uid": "0 0 0 0", "CapEff": hex(ownCaps(t)), "CapBnd": hex(ownCaps(t))}},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := status(t, c.s)
			for k, v := range c.want {
				if got[k] != v {
					t.Errorf("%s: %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

// TestSecurityRootAndNetNS runs a program chrooted, in its working directory, inside another network namespace.
func TestSecurityRootAndNetNS(t *testing.T) {
	tu.RequireRoot(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "work"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"usr", "proc"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"bin", "lib", "lib64"} {
		if target, err := os.Readlink("/" + l); err == nil {
			if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A network namespace held by a child of ours.
	holder, err := proc.Start(exec.Command("unshare", "--net", "--", "sleep", "infinity"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Stop(time.Second) })
	nsPath := fmt.Sprintf("/proc/%d/ns/net", holder.Pid())
	tu.WaitFor(t, 5*time.Second, "unshared network namespace", func() bool {
		a, errA := os.Readlink(nsPath)
		b, errB := os.Readlink("/proc/self/ns/net")
		return errA == nil && errB == nil && a != b
	})
	// Bind the host's /usr and /proc in a private mount namespace of a helper shell, then run the init there.
	s := proc.Security{Root: root, Dir: "/work", NetNS: nsPath, Caps: proc.AllCaps}
	pre, err := s.InitArgv()
	if err != nil {
		t.Fatal(err)
	}
	script := `set -e; mount --rbind /usr "$R/usr"; mount --rbind /proc "$R/proc"; exec "$@"`
	cmd, err := proc.Security{Caps: proc.AllCaps}.Command(append([]string{"unshare", "--mount", "--propagation", "private", "--",
		"/bin/sh", "-c", script, "sh"}, append(pre, "sh", "-c", `pwd; readlink /proc/self/ns/net; ls /`)...)...)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = []string{"PATH=/usr/bin:/bin", "R=" + root}
	out, err := proc.CombinedOutput(cmd)
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var st unix.Stat_t
	if err := unix.Stat(nsPath, &st); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 2 || lines[0] != "/work" || lines[1] != fmt.Sprintf("net:[%d]", st.Ino) {
		t.Errorf("output %q: want /work and net:[%d]", out, st.Ino)
	}
	if !strings.Contains(string(out), "work") || strings.Contains(string(out), "etc") {
		t.Errorf("root listing in %q is not the chroot's", out)
	}
}
