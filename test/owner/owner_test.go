package owner_test

import (
	"bufio"
	"errors"
	"fmt"
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

// helperEnv makes the test binary a helper process: "lock <path>" takes the lock, prints "locked" and blocks
// on stdin; "tempdir <prefix>" makes an owned temp dir, prints its path and blocks.
const helperEnv = "AMBIT_OWNER_TEST_HELPER"

func TestMain(m *testing.M) {
	if role := os.Getenv(helperEnv); role != "" {
		os.Exit(helper(role))
	}
	os.Exit(m.Run())
}

func helper(role string) int {
	kind, arg, _ := strings.Cut(role, " ")
	switch kind {
	case "lock":
		if _, err := owner.TryLock(arg); err != nil {
			fmt.Println("error:", err)
			return 1
		}
		fmt.Println("locked")
	case "tempdir":
		d, err := owner.MkdirTemp(arg)
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		fmt.Println(d.Path)
	default:
		return 2
	}
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // until the test closes stdin or kills us
	return 0
}

// child runs a helper and returns it with its first output line; the test kills it at cleanup.
func child(t *testing.T, role string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+role)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("helper %q: %v", role, err)
	}
	line = strings.TrimSpace(line)
	if strings.HasPrefix(line, "error:") {
		t.Fatalf("helper %q: %s", role, line)
	}
	return cmd, line
}

func kill(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
}

func TestLockFollowsTheOwnerProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	c, _ := child(t, "lock "+path)
	_, err := owner.TryLock(path)
	if !errors.Is(err, owner.ErrBusy) {
		t.Fatalf("TryLock while a live process holds it: %v, want ErrBusy", err)
	}
	if h := owner.Holders(path); !slices.Contains(h, c.Process.Pid) {
		t.Errorf("Holders = %v, want it to include the holder %d", h, c.Process.Pid)
	}
	if !strings.Contains(err.Error(), fmt.Sprint(c.Process.Pid)) {
		t.Errorf("error %q does not name the holder pid %d", err, c.Process.Pid)
	}
	kill(t, c) // SIGKILL: no cleanup code runs in the owner
	l, err := owner.TryLock(path)
	if err != nil {
		t.Fatalf("TryLock after the owner was killed: %v", err)
	}
	if err := l.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lock file still there after Remove: %v", err)
	}
}

func TestLockIsExclusiveWithinAProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	l, err := owner.TryLock(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := owner.TryLock(path); !errors.Is(err, owner.ErrBusy) {
		t.Fatalf("second TryLock in the same process: %v, want ErrBusy", err)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	l2, err := owner.TryLock(path)
	if err != nil {
		t.Fatalf("TryLock after Release: %v", err)
	}
	l2.Release()
}

// A lock taken on a file that a remover unlinked between open and flock would protect nothing: TryLock must end
// up holding the file the path names.
func TestLockAfterRemoveUsesTheNewFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "x.lock")
	l, err := owner.TryLock(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Remove(); err != nil {
		t.Fatal(err)
	}
	l2, err := owner.TryLock(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Release()
	c := exec.Command(os.Args[0], "-test.run=^$")
	c.Env = append(os.Environ(), helperEnv+"=lock "+path)
	out, _ := c.Output()
	if !strings.Contains(string(out), "held by a live process") {
		t.Errorf("another process could take the lock held on the recreated file: %q", out)
	}
}

func TestSweepTempRemovesExactlyTheDirsOfDeadOwners(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	prefix := "ambit-owner-test-"
	_, live := child(t, "tempdir "+prefix)
	dead, deadDir := child(t, "tempdir "+prefix)
	kill(t, dead)
	foreign := filepath.Join(os.TempDir(), prefix+"foreign")
	if err := os.Mkdir(foreign, 0o755); err != nil {
		t.Fatal(err)
	}
	var kept []string
	for i := range owner.KeptTempDirs + 2 {
		d, err := owner.MkdirTemp(prefix)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Keep(); err != nil {
			t.Fatal(err)
		}
		at := time.Now().Add(time.Duration(i-10) * time.Minute)
		if err := os.Chtimes(filepath.Join(d.Path, ".keep"), at, at); err != nil {
			t.Fatal(err)
		}
		kept = append(kept, d.Path)
	}
	mine, err := owner.MkdirTemp(prefix)
	if err != nil {
		t.Fatal(err)
	}
	removed, err := owner.SweepTemp(prefix)
	if err != nil {
		t.Fatalf("SweepTemp: %v", err)
	}
	slices.Sort(removed)
	want := []string{deadDir, kept[0], kept[1]}
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("removed %v, want %v", removed, want)
	}
	for _, d := range append([]string{live, foreign, mine.Path}, kept[2:]...) {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("%s should remain: %v", d, err)
		}
	}
	if err := mine.RemoveAll(); err != nil {
		t.Fatal(err)
	}
}

func TestBadTempPrefix(t *testing.T) {
	for _, p := range []string{"", "a/b", "x*"} {
		if _, err := owner.MkdirTemp(p); err == nil {
			t.Errorf("MkdirTemp(%q) succeeded", p)
		}
		if _, err := owner.SweepTemp(p); err == nil {
			t.Errorf("SweepTemp(%q) succeeded", p)
		}
	}
}

func TestTempDirInUse(t *testing.T) {
	d, err := owner.MkdirTemp("ambit-owner-inuse-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(d.Path)
	if !owner.TempDirInUse(d.Path) {
		t.Error("a directory this process owns is not in use")
	}
	if err := d.Keep(); err != nil {
		t.Fatal(err)
	}
	if owner.TempDirInUse(d.Path) {
		t.Error("a kept directory (lock released) is still in use")
	}
	if owner.TempDirInUse(t.TempDir()) {
		t.Error("a directory without an owner lock is in use")
	}
}
