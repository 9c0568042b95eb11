package main

import (
	"context"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/proxy/memory/exepages"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// residentReadOnly is the resident size of this test binary's read-only mappings that a trim drops.
func residentReadOnly(t *testing.T) int64 {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	ranges, err := exepages.Plan(smaps, exe)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, r := range ranges {
		n += r.Rss
	}
	return n
}

// TestTrimStartupPages: with --trim-startup-pages (the default) the process drops its executable's
// resident read-only pages once ready; without it, readiness is never even asked.
func TestTrimStartupPages(t *testing.T) {
	testutil.CheckGoroutines(t)
	log := slog.New(slog.DiscardHandler)
	t.Run("on", func(t *testing.T) {
		var mf memFlags
		fs := newWaypointCmd(os.Stderr).Flags()
		if f := fs.Lookup("trim-startup-pages"); f == nil || f.DefValue != "true" {
			t.Fatalf("--trim-startup-pages: %+v, want a flag defaulting to true", f)
		}
		mf.trimStartup = true
		before := residentReadOnly(t)
		var asked atomic.Bool
		ready := func() (bool, []string) { asked.Store(true); return true, nil }
		err := mf.run(context.Background(), log, ready, func(ctx context.Context) error {
			testutil.WaitFor(t, 10*time.Second, "readiness asked", asked.Load)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		// run has returned: the trimmer goroutine has finished, and it trims right after ready says true.
		if after := residentReadOnly(t); after >= before {
			t.Errorf("resident read-only pages: %d bytes before, %d after; want fewer", before, after)
		}
	})
	t.Run("off", func(t *testing.T) {
		mf := memFlags{trimStartup: false}
		var asked atomic.Bool
		ready := func() (bool, []string) { asked.Store(true); return true, nil }
		if err := mf.run(context.Background(), log, ready, func(context.Context) error { return nil }); err != nil {
			t.Fatal(err)
		}
		if asked.Load() {
			t.Error("readiness asked with --trim-startup-pages=false")
		}
	})
}
