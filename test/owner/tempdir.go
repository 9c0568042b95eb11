package owner

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// KeptTempDirs is how many kept directories (Dir.Keep) of one prefix SweepTemp leaves, newest first.
const KeptTempDirs = 3

const (
	tempLockName = ".owner.lock"
	tempKeepName = ".keep"
)

// Dir is a temporary directory owned by this process (see MkdirTemp).
type Dir struct {
	// Path is the directory.
	Path string
	lock *Lock
}

// MkdirTemp creates a directory named prefix + random in os.TempDir(), owned by this process: it holds the lock
// file <dir>/.owner.lock until RemoveAll, Keep or exit. SweepTemp(prefix) removes the directories whose owner is
// gone, so a killed test run leaves its (possibly large) state behind only until the next run starts.
func MkdirTemp(prefix string) (*Dir, error) {
	if !tempPrefixOK(prefix) {
		return nil, fmt.Errorf("temp dir prefix %q is not a plain name", prefix)
	}
	path, err := os.MkdirTemp("", prefix)
	if err != nil {
		return nil, fmt.Errorf("make temp dir: %w", err)
	}
	l, err := TryLock(filepath.Join(path, tempLockName))
	if err != nil {
		os.RemoveAll(path)
		return nil, err
	}
	return &Dir{Path: path, lock: l}, nil
}

// RemoveAll removes the directory and drops its lock.
func (d *Dir) RemoveAll() error {
	err := os.RemoveAll(d.Path)
	if rerr := d.lock.Release(); err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("remove %s: %w", d.Path, err)
	}
	return nil
}

// Keep marks the directory to be kept (for example the logs of a failed run) and drops the lock: SweepTemp
// leaves the newest KeptTempDirs kept directories of a prefix and removes older ones.
func (d *Dir) Keep() error {
	err := os.WriteFile(filepath.Join(d.Path, tempKeepName), []byte(time.Now().UTC().Format(time.RFC3339)+"\n"), 0o644)
	if rerr := d.lock.Release(); err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("keep %s: %w", d.Path, err)
	}
	return nil
}

// SweepTemp removes the directories prefix* in os.TempDir() made by MkdirTemp whose owner is gone: those that were
// not kept, and kept ones beyond the newest KeptTempDirs. A directory without a lock file (made otherwise) is never
// touched. It returns what it removed and an error naming each directory it could not remove.
func SweepTemp(prefix string) (removed []string, err error) {
	if !tempPrefixOK(prefix) {
		return nil, fmt.Errorf("temp dir prefix %q is not a plain name", prefix)
	}
	matches, gerr := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
	if gerr != nil {
		return nil, fmt.Errorf("list %s*: %w", prefix, gerr)
	}
	type kept struct {
		path string
		at   time.Time
		lock *Lock
	}
	var keep []kept
	var errs []error
	for _, dir := range matches {
		lockPath := filepath.Join(dir, tempLockName)
		if _, err := os.Stat(lockPath); err != nil {
			continue
		}
		l, err := TryLock(lockPath)
		if errors.Is(err, ErrBusy) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if st, err := os.Stat(filepath.Join(dir, tempKeepName)); err == nil {
			keep = append(keep, kept{dir, st.ModTime(), l})
			continue
		}
		if err := os.RemoveAll(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", dir, err))
		} else {
			removed = append(removed, dir)
		}
		_ = l.Release()
	}
	slices.SortFunc(keep, func(a, b kept) int { return b.at.Compare(a.at) })
	for i, k := range keep {
		if i < KeptTempDirs {
			_ = k.lock.Release()
			continue
		}
		if err := os.RemoveAll(k.path); err != nil {
			errs = append(errs, fmt.Errorf("remove kept %s: %w", k.path, err))
		} else {
			removed = append(removed, k.path)
		}
		_ = k.lock.Release()
	}
	return removed, errors.Join(errs...)
}

// tempPrefixOK reports whether prefix is safe to glob in the temp directory (a plain name).
func tempPrefixOK(prefix string) bool {
	return prefix != "" && !strings.ContainsAny(prefix, `/*?[\`)
}

// TempDirInUse reports whether dir, made by MkdirTemp, is still owned by a live process (its lock is held).
// It only reads /proc/locks: the lock file is not touched.
func TempDirInUse(dir string) bool { return len(Holders(filepath.Join(dir, tempLockName))) > 0 }
