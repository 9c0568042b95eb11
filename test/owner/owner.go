package owner

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrBusy is returned (wrapped) by TryLock when another open file description holds the lock: a live owner.
var ErrBusy = errors.New("held by a live process")

// Lock is an exclusive flock on a lock file. The package keeps every held Lock reachable, so that a dropped
// reference can never let the garbage collector close the file and release the lock early.
type Lock struct {
	// Path is the lock file.
	Path string
	f    *os.File
}

var (
	heldMu sync.Mutex
	held   = map[*Lock]bool{} // guarded by heldMu
)

// TryLock takes the lock file path (created if missing, its directory too) without blocking. It returns an
// error wrapping ErrBusy when a live process holds it. The file's content is set to this process's pid, for
// people; ownership is the lock alone.
func TryLock(path string) (*Lock, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("make lock directory: %w", err)
	}
	for range 100 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("open lock %s: %w", path, err)
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("lock %s: %w%s", path, ErrBusy, holdersSuffix(path))
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		same, err := samePath(f, path)
		if err != nil {
			f.Close()
			return nil, err
		}
		if !same {
			f.Close() // a remover unlinked the file after we opened it: lock the new one
			continue
		}
		if err := f.Truncate(0); err == nil {
			_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		}
		l := &Lock{Path: path, f: f}
		heldMu.Lock()
		held[l] = true
		heldMu.Unlock()
		return l, nil
	}
	return nil, fmt.Errorf("lock %s: the file keeps being replaced", path)
}

// samePath reports whether path still names the file f has open.
func samePath(f *os.File, path string) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &a); err != nil {
		return false, fmt.Errorf("stat lock %s: %w", path, err)
	}
	if err := unix.Stat(path, &b); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("stat lock %s: %w", path, err)
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// Release drops the lock and keeps the file (the resource stays, unowned: the next sweep may remove it).
// Safe to call more than once.
func (l *Lock) Release() error {
	heldMu.Lock()
	defer heldMu.Unlock()
	if !held[l] {
		return nil
	}
	delete(held, l)
	return l.f.Close()
}

// Remove unlinks the lock file while still holding the lock, then drops it. Call it after the resource is gone.
// Safe to call more than once.
func (l *Lock) Remove() error {
	heldMu.Lock()
	defer heldMu.Unlock()
	if !held[l] {
		return nil
	}
	delete(held, l)
	err := os.Remove(l.Path)
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if cerr := l.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("remove lock %s: %w", l.Path, err)
	}
	return nil
}

// Holders returns the pids that hold an flock on path, from /proc/locks (as this pid namespace sees them; a
// holder in another pid namespace shows as pid 0 or is missing). For messages only.
func Holders(path string) []int {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil
	}
	f, err := os.Open("/proc/locks")
	if err != nil {
		return nil
	}
	defer f.Close()
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	var pids []int
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "1: FLOCK  ADVISORY  WRITE 1234 fd:00:5678 0 EOF"; blocked waiters carry "->" after the number.
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || slices.Contains(fields, "->") || fields[1] != "FLOCK" {
			continue
		}
		if fields[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(fields[4]); err == nil && !slices.Contains(pids, pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func holdersSuffix(path string) string {
	pids := Holders(path)
	if len(pids) == 0 {
		return ""
	}
	s := make([]string, len(pids))
	for i, p := range pids {
		s[i] = strconv.Itoa(p)
	}
	return " (pid " + strings.Join(s, ", ") + ")"
}
