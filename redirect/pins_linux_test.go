package redirect

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/test/lab"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// inPrivateMountNS runs f on an OS thread that has its own mount namespace, a slave of the host's made as
// `ip netns exec` makes it (mounts there never propagate back), with a fresh bpffs mounted on /sys/fs/bpf
// once mountBPF is set, as an agent under `ip netns exec` mounts one. The thread is discarded afterwards, so
// the namespace and its bpffs end with it (and with the test process, however it ends): nothing is left on
// the host.
func inPrivateMountNS(f func(mountBPF func() error) error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the runtime ends the thread with this goroutine
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			errc <- fmt.Errorf("unshare mount namespace: %w", err)
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_SLAVE|unix.MS_REC, ""); err != nil {
			errc <- fmt.Errorf("make / a slave: %w", err)
			return
		}
		errc <- f(func() error {
			if err := unix.Mount("bpffs", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
				return fmt.Errorf("mount a private bpffs: %w", err)
			}
			return nil
		})
	}()
	return <-errc
}

// TestCheckPinDirLive runs the pin check on the real mount tables: the host's /sys/fs/bpf from the host mount
// namespace and from a private one outlives the process; a bpffs mounted in the private namespace does not,
// and New refuses it in ModeEBPF and ModeAuto, unless AllowEphemeralPins (then it logs at error level).
func TestCheckPinDirLive(t *testing.T) {
	testutil.RequireRoot(t)
	if !isBPFFS("/sys/fs/bpf") {
		t.Fatalf("the host has no bpffs on /sys/fs/bpf")
	}
	l := lab.Start(t, lab.Options{Nodes: 1, PodsPerNode: 0})
	node := l.Nodes[0]
	var logs bytes.Buffer
	o := Options{PinDir: node.PinDir, Logger: slog.New(slog.NewTextHandler(&logs, nil))}.withDefaults()
	if err := ensureBPFFS(o.PinDir); err != nil {
		t.Fatal(err)
	}
	if err := checkPinDir(o); err != nil {
		t.Fatalf("host mount namespace: %v", err)
	}

	sf := SocketFactory{NetNS: node.NS.Path()}
	var lns []*net.TCPListener
	for range 3 {
		ln, err := sf.Listen(t.Context(), netip.AddrPortFrom(netip.IPv6Unspecified(), 0))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		lns = append(lns, ln)
	}
	newOpts := func(mode Mode) Options {
		return Options{Mode: mode, NetNS: node.NS.Path(), PinDir: node.PinDir, Uplinks: []string{node.Uplink},
			Listeners: Listeners{Outbound: lns[0], Inbound: lns[1], HBONE: lns[2]}}
	}
	err := inPrivateMountNS(func(mountBPF func() error) error {
		if err := checkPinDir(o); err != nil {
			return fmt.Errorf("host bpffs seen from a private mount namespace: %w", err)
		}
		if err := mountBPF(); err != nil {
			return err
		}
		if err := checkPinDir(o); !errors.Is(err, ErrEphemeralPins) {
			return fmt.Errorf("private bpffs: checkPinDir = %v, want ErrEphemeralPins", err)
		}
		for _, mode := range []Mode{ModeEBPF, ModeAuto} {
			if r, err := New(t.Context(), newOpts(mode)); !errors.Is(err, ErrEphemeralPins) {
				if r != nil {
					r.Close()
				}
				return fmt.Errorf("New(%s) on a private bpffs = %v, want ErrEphemeralPins", mode, err)
			}
		}
		allowed := o
		allowed.AllowEphemeralPins = true
		if err := checkPinDir(allowed); err != nil {
			return fmt.Errorf("private bpffs, allowed: %w", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "CAPTURE DIES WITH THIS PROCESS") {
		t.Errorf("allowed ephemeral pins logged %q, want an error-level warning", logs.String())
	}
}
