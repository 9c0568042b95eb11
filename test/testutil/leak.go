package testutil

import (
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// CheckGoroutines records the number of goroutines now and, at cleanup, fails tb if more remain after a
// grace period of up to 5 s. Call it first in a test, before anything that starts goroutines.
func CheckGoroutines(tb testing.TB) {
	tb.Helper()
	before := runtime.NumGoroutine()
	tb.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := runtime.NumGoroutine()
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				buf = buf[:runtime.Stack(buf, true)]
				tb.Errorf("goroutine leak: %d before, %d after\n%s", before, n, buf)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

// CheckFDs records the number of open file descriptors now and, at cleanup, fails tb if more remain
// after a grace period of up to 5 s.
func CheckFDs(tb testing.TB) {
	tb.Helper()
	pollerOnce.Do(startPoller)
	before := countFDs(tb)
	tb.Cleanup(func() {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n := countFDs(tb)
			if n <= before {
				return
			}
			if time.Now().After(deadline) {
				tb.Errorf("fd leak: %d open before, %d after: %s", before, n, listFDs())
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
}

var pollerOnce sync.Once

// startPoller makes the runtime open its network poller's descriptors (an epoll instance and an eventfd,
// opened at the first pollable file) before the first count, so that a test which is the process's
// first to touch the network does not report them as its leak (as when a test binary runs one test).
func startPoller() {
	r, w, err := os.Pipe()
	if err != nil {
		return
	}
	r.Close()
	w.Close()
}

func countFDs(tb testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		tb.Fatalf("read /proc/self/fd: %v", err)
	}
	return len(ents)
}

func listFDs() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var b strings.Builder
	for _, e := range ents {
		target, _ := os.Readlink("/proc/self/fd/" + e.Name())
		b.WriteString(e.Name() + "->" + target + " ")
	}
	return b.String()
}

// WaitFor polls cond every 10 ms until it returns true or timeout passes, then fails tb with msg.
func WaitFor(tb testing.TB, timeout time.Duration, msg string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %v waiting for %s", timeout, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
