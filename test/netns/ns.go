package netns

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ambit-mesh/ambit/nsrun"
)

// NS is a named network namespace under Dir.
type NS struct {
	// Name is the namespace's name under Dir.
	Name string
}

// Path returns the namespace's bind-mount path.
func (ns NS) Path() string { return filepath.Join(Dir, ns.Name) }

// Do runs fn on a fresh OS thread that has entered ns, and returns fn's error. Sockets that fn creates belong to
// ns for their whole life and may be used from any goroutine afterwards. If the thread cannot return to its
// original namespace it is left locked, so the Go runtime discards it.
func (ns NS) Do(fn func() error) error { return nsrun.Do(ns.Path(), fn) }

// Command returns a command that runs name with args inside ns (through `ip netns exec`). Start it with package
// test/proc so that it dies with its parent.
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
