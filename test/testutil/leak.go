package testutil

import (
	"os"
	"runtime"
	"strings"
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
