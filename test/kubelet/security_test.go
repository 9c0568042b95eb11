package kubelet

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/test/proc"
	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// roleEnv makes the test binary a helper program inside a container:
//
//	somark   open a TCP socket and set SO_MARK on it; print "ok" or the error
const roleEnv = "AMBIT_KUBELET_TEST_ROLE"

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(helper(role))
	}
	os.Exit(m.Run())
}

func helper(role string) int {
	switch role {
	case "somark":
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err != nil {
			fmt.Println("socket:", err)
			return 1
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, 0x539); err != nil {
			fmt.Println("SO_MARK:", err)
			return 0
		}
		fmt.Println("ok")
		return 0
	}
	fmt.Println("unknown role", role)
	return 2
}

func ptr[T any](v T) *T { return &v }

func caps(names ...string) proc.Caps { return mustCaps(names...) }

func TestContainerSecurity(t *testing.T) {
	pod := func(psc *corev1.PodSecurityContext, sc *corev1.SecurityContext) (*corev1.Pod, *corev1.Container) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u1"},
			Spec: corev1.PodSpec{SecurityContext: psc, Containers: []corev1.Container{{Name: "c", SecurityContext: sc}}}}
		return p, &p.Spec.Containers[0]
	}
	waypointSC := &corev1.SecurityContext{ // istiod's waypoint template
		AllowPrivilegeEscalation: ptr(false), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		Privileged: ptr(false), ReadOnlyRootFilesystem: ptr(true), RunAsGroup: ptr(int64(1337)), RunAsNonRoot: ptr(true),
		RunAsUser: ptr(int64(1337)),
	}
	for _, c := range []struct {
		name      string
		psc       *corev1.PodSecurityContext
		sc        *corev1.SecurityContext
		imageUser string
		want      security
		err       string
	}{
		{name: "defaults: root with containerd's capabilities",
			want: security{Security: proc.Security{Groups: []uint32{0}, Caps: defaultCaps}}},
		{name: "image user", imageUser: "1337:1337",
			want: security{Security: proc.Security{UID: 1337, GID: 1337, Groups: []uint32{1337}, Caps: defaultCaps}}},
		{name: "image uid only: primary group from passwd", imageUser: "1337",
			want: security{Security: proc.Security{UID: 1337, GID: 1337, Groups: []uint32{1337}, Caps: defaultCaps}}},
		{name: "istiod's waypoint", sc: waypointSC,
			want: security{readOnlyRoot: true, Security: proc.Security{UID: 1337, GID: 1337, Groups: []uint32{1337}, NoNewPrivs: true}}},
		{name: "pod level, container wins",
			psc: &corev1.PodSecurityContext{RunAsUser: ptr(int64(1000)), RunAsGroup: ptr(int64(3000)), FSGroup: ptr(int64(2000)),
				SupplementalGroups: []int64{4000, 2000}},
			sc:   &corev1.SecurityContext{RunAsUser: ptr(int64(1001))},
			want: security{Security: proc.Security{UID: 1001, GID: 3000, Groups: []uint32{2000, 3000, 4000}, Caps: defaultCaps}}},
		{name: "runAsUser without group: passwd's group, not the image's", sc: &corev1.SecurityContext{RunAsUser: ptr(int64(4242))},
			imageUser: "1337:1337", want: security{Security: proc.Security{UID: 4242, GID: 0, Groups: []uint32{0}, Caps: defaultCaps}}},
		{name: "add and drop",
			sc: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN", "CAP_BPF", "NET_RAW"},
				Drop: []corev1.Capability{"NET_RAW", "MKNOD"}}},
			want: security{Security: proc.Security{Groups: []uint32{0},
				Caps: defaultCaps.Without(unix.CAP_MKNOD).With(unix.CAP_NET_ADMIN).With(unix.CAP_BPF)}}},
		{name: "drop ALL, add some",
			sc: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_ADMIN", "SYS_ADMIN"},
				Drop: []corev1.Capability{"ALL"}}},
			want: security{Security: proc.Security{Groups: []uint32{0}, Caps: caps("NET_ADMIN", "SYS_ADMIN")}}},
		{name: "add ALL", sc: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"ALL"}}},
			want: security{Security: proc.Security{Groups: []uint32{0}, Caps: proc.AllCaps}}},
		{name: "privileged: everything, drops ignored",
			sc:   &corev1.SecurityContext{Privileged: ptr(true), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
			want: security{Security: proc.Security{Groups: []uint32{0}, Caps: proc.AllCaps}}},
		{name: "allowPrivilegeEscalation unset: no no_new_privs", sc: &corev1.SecurityContext{AllowPrivilegeEscalation: ptr(true)},
			want: security{Security: proc.Security{Groups: []uint32{0}, Caps: defaultCaps}}},
		{name: "runAsNonRoot and the image's root", sc: &corev1.SecurityContext{RunAsNonRoot: ptr(true)},
			err: `container has runAsNonRoot and image will run as root (pod: "p_ns(u1)", container: c)`},
		{name: "runAsNonRoot on the pod, image root", psc: &corev1.PodSecurityContext{RunAsNonRoot: ptr(true)},
			err: `container has runAsNonRoot and image will run as root (pod: "p_ns(u1)", container: c)`},
		{name: "runAsNonRoot and runAsUser 0", sc: &corev1.SecurityContext{RunAsNonRoot: ptr(true), RunAsUser: ptr(int64(0))},
			imageUser: "1337", err: `container's runAsUser breaks non-root policy (pod: "p_ns(u1)", container: c)`},
		{name: "runAsNonRoot and a non-root image", sc: &corev1.SecurityContext{RunAsNonRoot: ptr(true)}, imageUser: "1337:1337",
			want: security{Security: proc.Security{UID: 1337, GID: 1337, Groups: []uint32{1337}, Caps: defaultCaps}}},
		{name: "runAsNonRoot false allows root", psc: &corev1.PodSecurityContext{RunAsNonRoot: ptr(true)},
			sc: &corev1.SecurityContext{RunAsNonRoot: ptr(false)}, want: security{Security: proc.Security{Groups: []uint32{0}, Caps: defaultCaps}}},
		{name: "unknown capability", sc: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_WIZARD"}}},
			err: `add: unknown capability "NET_WIZARD"`},
		{name: "named image user", imageUser: "nobody", err: `image user "nobody": only numeric users are supported`},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, ctr := pod(c.psc, c.sc)
			got, err := containerSecurity(p, ctr, Image{User: c.imageUser})
			if c.err != "" {
				if err == nil || err.Error() != c.err {
					t.Fatalf("error %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("got  %+v\nwant %+v", got, c.want)
			}
		})
	}
}

func TestFSUser(t *testing.T) {
	sc := func(u int64) *corev1.SecurityContext { return &corev1.SecurityContext{RunAsUser: &u} }
	for _, c := range []struct {
		name string
		spec corev1.PodSpec
		want *int64
	}{
		{"one user", corev1.PodSpec{Containers: []corev1.Container{{SecurityContext: sc(1337)}, {SecurityContext: sc(1337)}}}, ptr(int64(1337))},
		{"pod level", corev1.PodSpec{SecurityContext: &corev1.PodSecurityContext{RunAsUser: ptr(int64(7))}, Containers: []corev1.Container{{}}}, ptr(int64(7))},
		{"two users", corev1.PodSpec{Containers: []corev1.Container{{SecurityContext: sc(1337)}, {SecurityContext: sc(1)}}}, nil},
		{"one unset", corev1.PodSpec{Containers: []corev1.Container{{SecurityContext: sc(1337)}, {}}}, nil},
		{"init container differs", corev1.PodSpec{InitContainers: []corev1.Container{{SecurityContext: sc(0)}},
			Containers: []corev1.Container{{SecurityContext: sc(1337)}}}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := fsUser(&corev1.Pod{Spec: c.spec})
			if (got == nil) != (c.want == nil) || got != nil && *got != *c.want {
				t.Errorf("fsUser = %v, want %v", got, c.want)
			}
		})
	}
}

// runContainer runs container c of a pod with the kubelet's launch path (private root, volumes, container init)
// in the test's network namespace, and returns its output and exit error.
func runContainer(t *testing.T, psc *corev1.PodSecurityContext, c corev1.Container, img Image, mounts []mount) (string, error) {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns", UID: "u1"},
		Spec: corev1.PodSpec{SecurityContext: psc, Containers: []corev1.Container{c}}}
	sec, err := containerSecurity(p, &p.Spec.Containers[0], img)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	etc, root := filepath.Join(dir, "etc"), filepath.Join(dir, "root")
	if err := writeEtc(etc, "127.0.0.1 localhost\n", resolvConf("default", netip.Addr{})); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}
	script, err := launchScript(root, etc, p.Name, img, mounts, sec)
	if err != nil {
		t.Fatal(err)
	}
	env, envMap, err := (&Kubelet{}).containerEnv(p, &c, addrs{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "log")
	pr, logf, err := startProcess("/proc/self/ns/net", script, command(&c, img, envMap), env, logPath)
	if err != nil {
		t.Fatal(err)
	}
	werr := pr.Wait()
	logf.Close()
	out, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(out), werr
}

// statusOf parses /proc/<pid>/status lines.
func statusOf(out string) map[string]string {
	f := map[string]string{}
	for line := range strings.Lines(out) {
		k, v, ok := strings.Cut(line, ":")
		if ok {
			f[k] = strings.Join(strings.Fields(v), " ")
		}
	}
	return f
}

func hexCaps(c proc.Caps) string { return fmt.Sprintf("%016x", uint64(c)) }

var shImage = Image{Binary: "/bin/sh", Path: "/usr/local/bin/sh"}

// TestContainerEnforcement runs real containers through the kubelet's launch path and checks, from inside, what
// their securityContext allows.
func TestContainerEnforcement(t *testing.T) {
	tu.RequireRoot(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	helperImage := Image{Binary: self, Path: "/usr/local/bin/kubelet-test"}
	waypointSC := &corev1.SecurityContext{
		AllowPrivilegeEscalation: ptr(false), Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		Privileged: ptr(false), ReadOnlyRootFilesystem: ptr(true), RunAsGroup: ptr(int64(1337)), RunAsNonRoot: ptr(true),
		RunAsUser: ptr(int64(1337)),
	}
	status := []string{"/bin/sh", "-c", "cat /proc/self/status"}

	t.Run("runAsUser 1337 with drop ALL has uid 1337 and no capabilities", func(t *testing.T) {
		out, err := runContainer(t, &corev1.PodSecurityContext{SupplementalGroups: []int64{4000}},
			corev1.Container{Name: "c", Command: status, SecurityContext: waypointSC}, shImage, nil)
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		st := statusOf(out)
		for k, want := range map[string]string{"Uid": "1337 1337 1337 1337", "Gid": "1337 1337 1337 1337", "Groups": "1337 4000",
			"CapPrm": hexCaps(0), "CapEff": hexCaps(0), "CapBnd": hexCaps(0), "CapAmb": hexCaps(0), "NoNewPrivs": "1"} {
			if st[k] != want {
				t.Errorf("%s: %q, want %q", k, st[k], want)
			}
		}
	})
	t.Run("the container has the pod's hostname and the image's other files", func(t *testing.T) {
		extra := filepath.Join(t.TempDir(), "cert.crt")
		if err := os.WriteFile(extra, []byte("image file\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		img := shImage
		img.Files = map[string]string{"/cert.crt": extra}
		out, err := runContainer(t, nil, corev1.Container{Name: "c", Command: []string{"/bin/sh", "-c",
			"cat /proc/sys/kernel/hostname /cert.crt; echo x >/cert.crt || echo read-only"}}, img, nil)
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if !strings.HasPrefix(out, "p\nimage file\n") || !strings.Contains(out, "read-only") {
			t.Errorf("output %q, want the pod name p, the image file, read-only", out)
		}
	})
	t.Run("root without a capabilities field has containerd's default set", func(t *testing.T) {
		out, err := runContainer(t, nil, corev1.Container{Name: "c", Command: status}, shImage, nil)
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		st := statusOf(out)
		if st["Uid"] != "0 0 0 0" || st["CapEff"] != hexCaps(defaultCaps) || st["CapBnd"] != hexCaps(defaultCaps) || st["NoNewPrivs"] != "0" {
			t.Errorf("Uid %q CapEff %q CapBnd %q NoNewPrivs %q, want root with %s (%s)", st["Uid"], st["CapEff"], st["CapBnd"],
				st["NoNewPrivs"], hexCaps(defaultCaps), defaultCaps)
		}
	})
	// Since Linux 5.17 SO_MARK takes CAP_NET_ADMIN or CAP_NET_RAW, and containerd's default set has NET_RAW.
	t.Run("SO_MARK needs NET_ADMIN or NET_RAW", func(t *testing.T) {
		env := []corev1.EnvVar{{Name: roleEnv, Value: "somark"}}
		for _, c := range []struct {
			name string
			caps *corev1.Capabilities
			want string
		}{
			{"drop ALL", &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}, "SO_MARK: operation not permitted"},
			{"default without NET_RAW", &corev1.Capabilities{Drop: []corev1.Capability{"NET_RAW"}}, "SO_MARK: operation not permitted"},
			{"default (NET_RAW)", nil, "ok"},
			{"drop ALL, add NET_ADMIN", &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN"}}, "ok"},
		} {
			out, err := runContainer(t, nil, corev1.Container{Name: "c", Env: env, SecurityContext: &corev1.SecurityContext{Capabilities: c.caps}},
				helperImage, nil)
			if err != nil || strings.TrimSpace(out) != c.want {
				t.Errorf("%s: %v, %q; want %q", c.name, err, out, c.want)
			}
		}
	})
	t.Run("readOnlyRootFilesystem: the root is read-only, volumes are not", func(t *testing.T) {
		vol := t.TempDir()
		if err := os.Chmod(vol, 0o777); err != nil {
			t.Fatal(err)
		}
		ro := filepath.Join(t.TempDir(), "ro")
		if err := os.Mkdir(ro, 0o777); err != nil {
			t.Fatal(err)
		}
		mounts := []mount{{host: vol, path: "/data"}, {host: ro, path: "/config", readOnly: true}}
		try := `for f in /tmp/x /etc/x /data/x /config/x /usr/local/bin/sh; do if (echo x > $f) 2>/dev/null; then echo "$f writable"; else echo "$f read-only"; fi; done`
		out, err := runContainer(t, nil, corev1.Container{Name: "c", Command: []string{"/bin/sh", "-c", try}, SecurityContext: waypointSC},
			shImage, mounts)
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		want := "/tmp/x read-only\n/etc/x read-only\n/data/x writable\n/config/x read-only\n/usr/local/bin/sh read-only\n"
		if out != want {
			t.Errorf("read-only root:\n%s\nwant\n%s", out, want)
		}
		if b, err := os.ReadFile(filepath.Join(vol, "x")); err != nil || string(b) != "x\n" {
			t.Errorf("volume file: %q, %v", b, err)
		}
		out, err = runContainer(t, nil, corev1.Container{Name: "c", Command: []string{"/bin/sh", "-c", try}}, shImage, mounts)
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		// Without it the private root is writable; the image's files stay read-only (they are the host's).
		want = "/tmp/x writable\n/etc/x writable\n/data/x writable\n/config/x read-only\n/usr/local/bin/sh read-only\n"
		if out != want {
			t.Errorf("writable root:\n%s\nwant\n%s", out, want)
		}
	})
	t.Run("the exit code is the program's", func(t *testing.T) {
		_, err := runContainer(t, nil, corev1.Container{Name: "c", Command: []string{"/bin/sh", "-c", "exit 3"}, SecurityContext: waypointSC}, shImage, nil)
		var ee interface{ ExitCode() int }
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Errorf("exit: %v, want code 3", err)
		}
	})
}

// TestVolumeOwnership checks fsGroup on an emptyDir-like tree: group, group permissions, setgid directories.
func TestVolumeOwnership(t *testing.T) {
	tu.RequireRoot(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		readOnly          bool
		dirMode, fileMode os.FileMode
	}{
		{false, 0o775 | os.ModeSetgid | os.ModeDir, 0o660},
		{true, 0o775 | os.ModeSetgid | os.ModeDir, 0o640},
	} {
		if err := os.Chmod(filepath.Join(dir, "sub", "f"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := setOwnership(dir, 2000, c.readOnly); err != nil {
			t.Fatal(err)
		}
		for p, want := range map[string]os.FileMode{filepath.Join(dir, "sub"): c.dirMode, filepath.Join(dir, "sub", "f"): c.fileMode} {
			st, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode() != want || st.Sys().(*syscall.Stat_t).Gid != 2000 {
				t.Errorf("readOnly %v: %s: mode %v gid %d, want %v gid 2000", c.readOnly, p, st.Mode(), st.Sys().(*syscall.Stat_t).Gid, want)
			}
		}
	}
}
