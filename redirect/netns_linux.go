package redirect

import (
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/ambit-mesh/ambit/nsrun"
)

// nsRunner runs kernel operations in one network namespace.
type nsRunner struct {
	// path is the namespace's path; "" means the process's namespace, where do runs fn directly.
	path string
}

// do runs fn with the calling OS thread in the namespace. Sockets, TCX attachments (ifindexes), sysctls and child
// processes created by fn belong to that namespace. If the thread cannot return to its original namespace it is
// left locked so that the Go runtime discards it.
func (n nsRunner) do(fn func() error) error { return nsrun.Do(n.path, fn) }

// handle returns a netlink handle acting in the namespace. The caller deletes it.
func (n nsRunner) handle() (*netlink.Handle, error) {
	if n.path == "" {
		h, err := netlink.NewHandle()
		if err != nil {
			return nil, fmt.Errorf("open netlink: %w", err)
		}
		return h, nil
	}
	ns, err := netns.GetFromPath(n.path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", n.path, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("open netlink in %s: %w", n.path, err)
	}
	return h, nil
}

// nsHandle opens the namespace for APIs that take a handle (the caller closes it); ok is false for the
// process's namespace.
func (n nsRunner) nsHandle() (h netns.NsHandle, ok bool, err error) {
	if n.path == "" {
		return netns.None(), false, nil
	}
	h, err = netns.GetFromPath(n.path)
	if err != nil {
		return netns.None(), false, fmt.Errorf("open netns %s: %w", n.path, err)
	}
	return h, true, nil
}
