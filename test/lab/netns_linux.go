package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// netnsDir is where named network namespaces are bind-mounted, as iproute2 does, so that
// `ip netns exec NAME ...` works on lab namespaces.
const netnsDir = "/var/run/netns"

// NS is a named network namespace created by a lab.
type NS struct {
	// Name is the namespace's name under /var/run/netns.
	Name string
}

// Path returns the namespace's bind-mount path.
func (ns NS) Path() string { return filepath.Join(netnsDir, ns.Name) }

// Do runs fn on a fresh OS thread that has entered ns, and returns fn's error. Sockets that fn creates belong to
// ns for their whole life and may be used from any goroutine afterwards. If the thread cannot return to its
// original namespace it is left locked, so the Go runtime discards it.
func (ns NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(ns.Path())
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", ns.Name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", ns.Name, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}

// Command returns a command that runs name with args inside ns (through `ip netns exec`).
func (ns NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
}

// Listen announces on the local network address inside ns (see net.ListenConfig.Listen).
func (ns NS) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = (&net.ListenConfig{}).Listen(ctx, network, address)
		return err
	})
	return ln, err
}

// Dial connects to address from inside ns (see net.Dialer.DialContext).
func (ns NS) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := ns.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Handle returns a netlink handle that acts inside ns. The caller closes it.
func (ns NS) Handle() (*netlink.Handle, error) {
	h, err := netns.GetFromPath(ns.Path())
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", ns.Name, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", ns.Name, err)
	}
	return nh, nil
}

// Sysctl sets a sysctl (for example "net/ipv4/ip_forward") inside ns.
func (ns NS) Sysctl(key, value string) error {
	return ns.Do(func() error {
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
			return fmt.Errorf("set sysctl %s in %s: %w", key, ns.Name, err)
		}
		return nil
	})
}

// createNS makes a new, empty network namespace named name, bind-mounted under /var/run/netns.
func createNS(name string) (NS, error) {
	ns := NS{Name: name}
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return ns, fmt.Errorf("create %s: %w", netnsDir, err)
	}
	f, err := os.OpenFile(ns.Path(), os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return ns, fmt.Errorf("create netns file %s: %w", name, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		merr := unix.Mount(src, ns.Path(), "none", unix.MS_BIND, "")
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		if merr != nil {
			merr = fmt.Errorf("bind-mount netns %s: %w", name, merr)
		}
		errc <- merr
	}()
	if err := <-errc; err != nil {
		os.Remove(ns.Path())
		return ns, err
	}
	return ns, nil
}

// deleteNS removes the named namespace's bind mount (the namespace itself goes away with its last user).
func deleteNS(name string) error {
	p := filepath.Join(netnsDir, name)
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount netns %s: %w", name, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", name, err)
	}
	return nil
}

// listNS returns the names of the named network namespaces that start with prefix.
func listNS(prefix string) ([]string, error) {
	ents, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", netnsDir, err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
