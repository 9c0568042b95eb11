// Package nsrun runs a function with an OS thread inside a network namespace, so that the sockets, links and
// sysctls it creates belong to that namespace. It is the one implementation shared by redirect (capture set-up),
// the waypoint (its lab sockets) and test/netns. It imports nothing of Ambit.
package nsrun

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on a fresh OS thread that has entered the network namespace at path and returns fn's error; path
// "" runs fn directly in the caller's namespace. Sockets fn creates stay in that namespace for their whole life
// and may be used from any goroutine afterwards. If the thread cannot return to its original namespace it is
// left locked, so that the Go runtime discards it.
func Do(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() { // ends with fn
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(path)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open netns %s: %w", path, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
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
