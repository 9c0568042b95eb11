// Package nsrun runs a function with an OS thread inside a network namespace, so that the sockets, links and
// sysctls it creates belong to that namespace. It is the one implementation shared by redirect (capture set-up),
// the waypoint (its lab sockets) and test/netns. It imports nothing of Ambit.
package nsrun

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"syscall"

	"github.com/vishvananda/netns"
)

// home is the process's own network namespace, where every thread not inside Do is. It is opened once, at
// start-up, on the thread running package initialisation (opening /proc/.../ns/net per call cost as much as
// the setns calls); the descriptor is close-on-exec and lives as long as the process.
var home struct {
	h   netns.NsHandle
	err error
}

func init() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	home.h, home.err = netns.Get()
	if home.err != nil {
		home.err = fmt.Errorf("get current netns: %w", home.err)
	}
}

func homeNS() (netns.NsHandle, error) { return home.h, home.err }

// enter locks the calling goroutine to its thread and moves the thread into the namespace at path. On error the
// thread is unlocked again and still in the home namespace.
func enter(path string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := homeNS()
	if err != nil {
		runtime.UnlockOSThread()
		return 0, err
	}
	target, err := netns.GetFromPath(path)
	if err != nil {
		runtime.UnlockOSThread()
		return 0, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return 0, fmt.Errorf("enter netns %s: %w", path, err)
	}
	return orig, nil
}

// leave moves the thread back home and unlocks it. If that fails the thread stays locked, so that the Go runtime
// discards it when its goroutine ends.
func leave(orig netns.NsHandle) error {
	if err := netns.Set(orig); err != nil {
		return fmt.Errorf("return to the original netns: %w", err)
	}
	runtime.UnlockOSThread()
	return nil
}

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
		orig, err := enter(path)
		if err != nil {
			errc <- err
			return
		}
		ferr := fn()
		leave(orig) //nolint:errcheck // on failure the thread stays locked and dies with this goroutine
		errc <- ferr
	}()
	return <-errc
}

// errLeft refuses a second socket of one Dial: the thread has left the namespace after the first.
var errLeft = errors.New("nsrun: a dial made a second socket after leaving the namespace")

// Dial is d.DialContext with the socket made in the network namespace at path ("" = the caller's). The thread
// stays in the namespace only while the socket is made: d's Control hook (run right after socket(2), before
// connect) takes it home, so the connect wait holds no locked thread. address must be an IP literal: a dial
// that would make a second socket (another address of a name) fails instead of making it outside the namespace.
func Dial(ctx context.Context, path string, d net.Dialer, network, address string) (net.Conn, error) {
	if path == "" {
		return d.DialContext(ctx, network, address)
	}
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() { // ends with the dial
		orig, err := enter(path)
		if err != nil {
			done <- result{err: err}
			return
		}
		inside := true
		control, ctrlCtx := d.Control, d.ControlContext
		d.Control = nil
		d.ControlContext = func(ctx context.Context, network, address string, c syscall.RawConn) error {
			if !inside {
				return errLeft
			}
			var err error
			switch {
			case ctrlCtx != nil:
				err = ctrlCtx(ctx, network, address, c)
			case control != nil:
				err = control(network, address, c)
			}
			if lerr := leave(orig); lerr != nil {
				return errors.Join(err, lerr) // the thread stays locked and dies with this goroutine
			}
			inside = false
			return err
		}
		c, err := d.DialContext(ctx, network, address)
		if inside {
			leave(orig) //nolint:errcheck // on failure the thread stays locked and dies with this goroutine
		}
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}
