package lab_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/netns"
	"github.com/ambit-mesh/ambit/test/proc"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// echo serves one line-echo per connection on ln until it is closed, replying with the peer address seen.
func echo(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s", c.RemoteAddr(), line)
		}()
	}
}

func roundTrip(t *testing.T, from lab.NS, to netip.AddrPort) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := from.Dial(ctx, "tcp", to.String())
	if err != nil {
		t.Fatalf("dial %s from %s: %v", to, from.Name, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "hi\n"); err != nil {
		t.Fatalf("write: %v", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read from %s: %v", to, err)
	}
	return strings.TrimSpace(line)
}

func TestLabConnectivity(t *testing.T) {
	l := lab.Start(t, lab.Options{Nodes: 2, PodsPerNode: 2})
	var servers []net.Listener
	for _, p := range l.Pods() {
		ln, err := p.NS.Listen(t.Context(), "tcp", ":8080")
		if err != nil {
			t.Fatalf("listen in %s: %v", p.Name, err)
		}
		servers = append(servers, ln)
		go echo(ln)
	}
	t.Cleanup(func() {
		for _, ln := range servers {
			ln.Close()
		}
	})
	a, b := l.Nodes[0].Pods[0], l.Nodes[1].Pods[1]
	same := l.Nodes[0].Pods[1]
	cases := []struct {
		name     string
		from     lab.NS
		to       netip.AddrPort
		wantPeer netip.Addr
	}{
		{"cross-node v4", a.NS, netip.AddrPortFrom(b.IP, 8080), a.IP},
		{"cross-node v6", a.NS, netip.AddrPortFrom(b.IP6, 8080), a.IP6},
		{"same-node v4", a.NS, netip.AddrPortFrom(same.IP, 8080), a.IP},
		{"same-node v6", b.NS, netip.AddrPortFrom(l.Nodes[1].Pods[0].IP6, 8080), b.IP6},
		{"node to remote pod", l.Nodes[0].NS, netip.AddrPortFrom(b.IP, 8080), l.Nodes[0].IP},
		{"node to local pod v6", l.Nodes[1].NS, netip.AddrPortFrom(b.IP6, 8080), netip.Addr{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := roundTrip(t, tc.from, tc.to)
			peer, _, _ := strings.Cut(got, " ")
			ap, err := netip.ParseAddrPort(peer)
			if err != nil {
				t.Fatalf("bad reply %q: %v", got, err)
			}
			if tc.wantPeer.IsValid() && ap.Addr().Unmap() != tc.wantPeer {
				t.Errorf("server saw peer %s, want %s", ap.Addr(), tc.wantPeer)
			}
			if !strings.HasSuffix(got, " hi") {
				t.Errorf("reply %q does not echo", got)
			}
		})
	}
}

func TestLabCloseRemovesEverything(t *testing.T) {
	testutil.RequireRoot(t)
	l, err := lab.New(t.Context(), lab.Options{Nodes: 1, PodsPerNode: 1})
	if err != nil {
		t.Fatalf("new lab: %v", err)
	}
	ensureBPFFS(t)
	if err := os.MkdirAll(l.Nodes[0].PinDir, 0o755); err != nil {
		t.Fatalf("make pin dir: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	left, _ := filepath.Glob("/var/run/netns/" + l.Name + "*")
	left2, _ := filepath.Glob("/sys/fs/bpf/" + l.Name + "*")
	if len(left)+len(left2) > 0 {
		t.Errorf("left behind: %v %v", left, left2)
	}
}

// ensureBPFFS mounts bpffs on /sys/fs/bpf when nothing is mounted there (as an agent would).
func ensureBPFFS(t *testing.T) {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return
	}
	if err := unix.Mount("bpffs", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
}

// A lab whose owner was SIGKILLed is swept; labs of live owners (another process, this one) are not. Sweep errors
// about unrelated leftovers are reported, not failures: the next Sweep retries them.
func TestSweepRemovesLabsOfDeadProcesses(t *testing.T) {
	testutil.RequireRoot(t)
	dead, failure := startHolder(t, "")
	if dead == nil {
		t.Fatal(failure)
	}
	alive, failure := startHolder(t, "")
	if alive == nil {
		t.Fatal(failure)
	}
	mine := lab.Start(t, lab.Options{Nodes: 1, PodsPerNode: 0})
	dead.kill()
	if err := lab.Sweep(); err != nil {
		t.Logf("sweep (errors about other labs are retried by the next sweep): %v", err)
	}
	if left := leftovers(t, dead.name); len(left) > 0 {
		t.Errorf("sweep left the dead owner's %v", left)
	}
	if _, err := os.Stat(filepath.Join(lab.LockDir, dead.name+".lock")); !os.IsNotExist(err) {
		t.Errorf("the dead lab's lock file remains: %v", err)
	}
	for _, name := range []string{alive.name, mine.Name} {
		if out, err := exec.Command("ip", "netns", "exec", name+"-n0", "ip", "link", "show", "eth0").CombinedOutput(); err != nil {
			t.Errorf("sweep broke the live lab %s: %v: %s", name, err, out)
		}
	}
}

// Two runs using one fixed lab name (as the demo and the benchmarks do) never tear down each other's lab: the
// second fails with ErrInUse and touches nothing, and takes the name over once the first is gone.
func TestFixedNameIsOwnedByOneProcess(t *testing.T) {
	testutil.RequireRoot(t)
	name := fmt.Sprintf("%st%d-fixed%04x", lab.NamePrefix, os.Getpid(), rand.IntN(1<<16))
	first, failure := startHolder(t, name)
	if first == nil {
		t.Fatal(failure)
	}
	if second, failure := startHolder(t, name); second != nil || !strings.Contains(failure, "in use") {
		t.Errorf("a second process building %s: %q, want an in-use error", name, failure)
	}
	if l, err := lab.New(t.Context(), lab.Options{Name: name, Nodes: 1}); !errors.Is(err, lab.ErrInUse) {
		if err == nil {
			l.Close()
		}
		t.Errorf("New(%s) while owned: %v, want ErrInUse", name, err)
	}
	if err := lab.Remove(name); !errors.Is(err, lab.ErrInUse) {
		t.Errorf("Remove(%s) while owned: %v, want ErrInUse", name, err)
	}
	if err := lab.Sweep(); err != nil {
		t.Logf("sweep: %v", err)
	}
	if out, err := exec.Command("ip", "netns", "exec", name+"-n0-p0", "ip", "route", "get", "172.30.0.1").CombinedOutput(); err != nil {
		t.Errorf("the owner's lab stopped working: %v: %s", err, out)
	}
	first.kill()
	l, err := lab.New(t.Context(), lab.Options{Name: name, Nodes: 1, PodsPerNode: 1})
	if err != nil {
		t.Fatalf("New after the owner died: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, name); len(left) > 0 {
		t.Errorf("left %v", left)
	}
}

func TestKeptLabSurvivesSweep(t *testing.T) {
	testutil.RequireRoot(t)
	name := fmt.Sprintf("%st%d-kept%04x", lab.NamePrefix, os.Getpid(), rand.IntN(1<<16))
	l, err := lab.New(t.Context(), lab.Options{Name: name, Nodes: 1, Keep: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lab.Remove(name) })
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := lab.Sweep(); err != nil {
		t.Logf("sweep: %v", err)
	}
	if left := leftovers(t, name); len(left) == 0 {
		t.Fatal("sweep removed a kept lab")
	}
	if l2, err := lab.New(t.Context(), lab.Options{Name: name, Nodes: 1}); err == nil {
		l2.Close()
		t.Error("New over a kept lab succeeded")
	}
	if err := lab.Remove(name); err != nil {
		t.Fatal(err)
	}
	if left := leftovers(t, name); len(left) > 0 {
		t.Errorf("Remove left %v", left)
	}
}

// Labs made before lock files existed: a "t<pid>-" lab of a dead pid is swept; one of a live pid, and a person's,
// are not.
func TestSweepLegacyLabs(t *testing.T) {
	if !testutil.Isolate(t) {
		return
	}
	dead := lab.NamePrefix + "t2147483647-beef" // pid_max is at most 2^22: this pid cannot exist
	live := fmt.Sprintf("%st%d-old", lab.NamePrefix, os.Getpid())
	person := lab.NamePrefix + "m-someone"
	for _, n := range []string{dead, live, person} {
		for _, suffix := range []string{"-fab", "-n0", "-n0-p0", "-n0-k1"} {
			if _, err := netns.Create(n + suffix); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { lab.Remove(n) })
	}
	if err := lab.Sweep(); err != nil {
		t.Errorf("sweep: %v", err)
	}
	if left := leftovers(t, dead); len(left) > 0 {
		t.Errorf("sweep left %v", left)
	}
	for _, n := range []string{live, person} {
		if left := leftovers(t, n); len(left) != 8 { // 4 files, 4 mounts
			t.Errorf("sweep touched %s: left %v", n, left)
		}
	}
}

// leftovers returns what remains of lab name: namespace files, nsfs mounts (covered ones included), bpffs pins.
func leftovers(t *testing.T, name string) []string {
	t.Helper()
	var out []string
	files, _ := filepath.Glob("/var/run/netns/" + name + "-*")
	out = append(out, files...)
	ms, err := netns.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if strings.HasPrefix(m.Name, name+"-") {
			out = append(out, fmt.Sprintf("mount %s (covered %v)", m.Name, m.Covered))
		}
	}
	if _, err := os.Stat("/sys/fs/bpf/" + name); err == nil {
		out = append(out, "/sys/fs/bpf/"+name)
	}
	return out
}

// The failure of issue 17, reproduced on a fresh /run: a test process holding a lab is SIGKILLed, then `ip netns add`
// (as the kubelet of the e2e tier ran it) makes /run/netns a self-bind mount. Sweep must still remove the dead lab.
func TestSweepAfterKilledLabAndIPNetnsAdd(t *testing.T) {
	if !testutil.Isolate(t) {
		return
	}
	h, failure := startHolder(t, "")
	if h == nil {
		t.Fatal(failure)
	}
	h.kill()
	other := fmt.Sprintf("ambit-other-%d", os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", other).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", other).Run() })
	if err := lab.Sweep(); err != nil {
		t.Errorf("sweep: %v", err)
	}
	if left := leftovers(t, h.name); len(left) > 0 {
		t.Errorf("sweep left the killed lab's %v", left)
	}
	if out, err := exec.Command("ip", "netns", "exec", other, "true").CombinedOutput(); err != nil {
		t.Errorf("the other namespace no longer works: %v: %s", err, out)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	testutil.RequireRoot(t)
	for name, o := range map[string]lab.Options{
		"foreign name": {Name: "mylab"},
		"too many":     {Nodes: 201},
	} {
		t.Run(name, func(t *testing.T) {
			if l, err := lab.New(t.Context(), o); err == nil {
				l.Close()
				t.Fatalf("New(%+v) succeeded", o)
			}
		})
	}
}

// TestLabNodesTrackConnections: by default every node namespace has the kube-proxy table, so conntrack is on
// there and pod traffic to the fabric's non-pod addresses leaves masqueraded, as on a real node; with
// NoConntrack the table is absent and the pod's address goes through unchanged.
func TestLabNodesTrackConnections(t *testing.T) {
	for _, off := range []bool{false, true} {
		t.Run(fmt.Sprintf("NoConntrack=%v", off), func(t *testing.T) {
			l := lab.Start(t, lab.Options{Nodes: 2, PodsPerNode: 1, NoConntrack: off})
			pod, n0, n1 := l.Nodes[0].Pods[0], l.Nodes[0], l.Nodes[1]
			for _, to := range []netip.Addr{n1.IP, n1.IP6} {
				ln, err := n1.NS.Listen(t.Context(), "tcp", netip.AddrPortFrom(to, 8080).String())
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
				go echo(ln)
				want, masq := pod.IP, n0.IP
				if to.Is6() {
					want, masq = pod.IP6, n0.IP6
				}
				if !off {
					want = masq
				}
				got := roundTrip(t, pod.NS, netip.AddrPortFrom(to, 8080))
				peer, _, _ := strings.Cut(got, " ")
				if ap, err := netip.ParseAddrPort(peer); err != nil || ap.Addr().Unmap() != want {
					t.Errorf("pod %s -> node %s: server saw %q, want %s", pod.Name, to, peer, want)
				}
			}
			out, err := proc.CombinedOutput(n0.NS.Command(t.Context(), "nft", "list", "tables"))
			if err != nil {
				t.Fatalf("nft list tables: %v\n%s", err, out)
			}
			if has := strings.Contains(string(out), lab.KubeProxyTable); has == off {
				t.Errorf("node tables %q: %s present = %v, want %v", out, lab.KubeProxyTable, has, !off)
			}
		})
	}
}
