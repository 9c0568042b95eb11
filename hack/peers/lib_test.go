package peers

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/owner"
)

// sh runs script with lib.sh sourced and the peer cache at cache, and returns its output.
func sh(t *testing.T, cache, script string) string {
	t.Helper()
	cmd := exec.Command("bash", "-c", "set -euo pipefail; . ./lib.sh; "+script)
	cmd.Env = append(os.Environ(), "AMBIT_PEER_CACHE="+cache)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

func mkdirs(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}

func touch(t *testing.T, files ...string) {
	t.Helper()
	for _, f := range files {
		mkdirs(t, filepath.Dir(f))
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func entries(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// Staging directories of killed builds (lock free) go when the next build starts; a build in progress (lock held,
// here by this process) and a recent lock-less one stay; a lock-less one older than a day goes.
func TestStageRemovesStaleStagingDirectories(t *testing.T) {
	cache := t.TempDir()
	dead := filepath.Join(cache, ".etcd-v1.aaaaaa")
	live := filepath.Join(cache, ".etcd-v1.bbbbbb")
	recent := filepath.Join(cache, ".etcd-v1.cccccc")
	old := filepath.Join(cache, ".etcd-v1.dddddd")
	entry := filepath.Join(cache, "etcd-v1")
	touch(t, filepath.Join(dead, ".lock"), filepath.Join(live, ".lock"), filepath.Join(recent, "bin", "etcd"),
		filepath.Join(old, "bin", "etcd"), filepath.Join(entry, "bin", "etcd"))
	l, err := owner.TryLock(filepath.Join(live, ".lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	day := time.Now().Add(-25 * time.Hour)
	if err := os.Chtimes(old, day, day); err != nil {
		t.Fatal(err)
	}
	stage := strings.TrimSpace(sh(t, cache, `peer_stage kapi v2 2>/dev/null; echo "$STAGE"`))
	got := entries(t, cache)
	want := []string{".etcd-v1.bbbbbb", ".etcd-v1.cccccc", filepath.Base(stage), "etcd-v1"}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("cache holds %v, want %v", got, want)
	}
	// The stage made by that (now finished) shell is itself stale: the next build removes it.
	sh(t, cache, `peer_sweep_stale 2>/dev/null`)
	if _, err := os.Stat(stage); !os.IsNotExist(err) {
		t.Errorf("the stage of a finished shell survived: %v", err)
	}
}

// A build holds its stage's lock while it runs, and a SIGKILL releases it.
func TestStageLockIsHeldWhileTheBuildRuns(t *testing.T) {
	cache := t.TempDir()
	cmd := exec.Command("bash", "-c", `set -euo pipefail; . ./lib.sh; peer_stage etcd v1; echo "$STAGE"; sleep 300`)
	cmd.Env = append(os.Environ(), "AMBIT_PEER_CACHE="+cache)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() }()
	buf := make([]byte, 4096)
	n, _ := out.Read(buf)
	stage := strings.TrimSpace(string(buf[:n]))
	if _, err := owner.TryLock(filepath.Join(stage, ".lock")); err == nil {
		t.Fatal("the stage's lock is free while its build runs")
	}
	sh(t, cache, `peer_sweep_stale`)
	if _, err := os.Stat(stage); err != nil {
		t.Fatalf("a running build's stage was removed: %v", err)
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
	sh(t, cache, `peer_sweep_stale 2>/dev/null`)
	if _, err := os.Stat(stage); !os.IsNotExist(err) {
		t.Errorf("the killed build's stage survived: %v", err)
	}
}

// An incomplete entry is replaced as a whole (a new directory), never filled in place; a complete one is kept.
func TestPublishNeverChangesAnEntryInPlace(t *testing.T) {
	cache := t.TempDir()
	dest := filepath.Join(cache, "x-v1")
	touch(t, filepath.Join(dest, "bin", "a"), filepath.Join(dest, "old-marker"))
	var before syscall.Stat_t
	if err := syscall.Stat(dest, &before); err != nil {
		t.Fatal(err)
	}
	sh(t, cache, `peer_stage x v1; touch "$STAGE/bin/a" "$STAGE/bin/b"; peer_publish x "$STAGE" "$CACHE_ROOT/x-v1" 0 bin/a bin/b 2>/dev/null`)
	var after syscall.Stat_t
	if err := syscall.Stat(dest, &after); err != nil {
		t.Fatal(err)
	}
	if after.Ino == before.Ino {
		t.Error("the incomplete entry was changed in place")
	}
	if _, err := os.Stat(filepath.Join(dest, "old-marker")); !os.IsNotExist(err) {
		t.Error("the new entry holds files of the old one")
	}
	for _, f := range []string{"bin/a", "bin/b", "BUILDINFO"} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("published entry lacks %s", f)
		}
	}
	if _, err := os.Stat(filepath.Join(dest, ".lock")); !os.IsNotExist(err) {
		t.Error("published entry holds the stage's lock file")
	}
	if got := entries(t, cache); !slices.Equal(got, []string{"x-v1"}) {
		t.Errorf("cache holds %v, want only the entry", got)
	}

	// Complete now: a second build is dropped and the entry stays the same directory.
	sh(t, cache, `peer_stage x v1; touch "$STAGE/bin/a" "$STAGE/bin/b" "$STAGE/second"; peer_publish x "$STAGE" "$CACHE_ROOT/x-v1" 0 bin/a bin/b 2>/dev/null`)
	var again syscall.Stat_t
	if err := syscall.Stat(dest, &again); err != nil {
		t.Fatal(err)
	}
	if again.Ino != after.Ino {
		t.Error("a complete entry was replaced")
	}
	if _, err := os.Stat(filepath.Join(dest, "second")); !os.IsNotExist(err) {
		t.Error("a complete entry was changed")
	}
	if got := entries(t, cache); !slices.Equal(got, []string{"x-v1"}) {
		t.Errorf("cache holds %v, want only the entry", got)
	}
}
