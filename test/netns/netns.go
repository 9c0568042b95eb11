package netns

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Dir is where named network namespaces live, as in iproute2 (NETNS_RUN_DIR).
const Dir = "/var/run/netns"

// realDir is Dir with symbolic links resolved (/var/run is usually a link to /run), as mountinfo prints it.
func realDir() string {
	parent, err := filepath.EvalSymlinks(filepath.Dir(Dir))
	if err != nil {
		return Dir
	}
	return filepath.Join(parent, filepath.Base(Dir))
}

// lockPath serialises the directory's upgrade to a mount point and the uncovering of covered mounts.
func lockPath() string { return filepath.Join(filepath.Dir(realDir()), ".ambit-netns.lock") }

// withLock runs f holding the package's lock file exclusively (blocking: the critical sections are short).
func withLock(f func() error) error {
	if err := os.MkdirAll(filepath.Dir(lockPath()), 0o755); err != nil {
		return fmt.Errorf("make lock directory: %w", err)
	}
	lf, err := os.OpenFile(lockPath(), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", lockPath(), err)
	}
	defer lf.Close()
	for {
		err := unix.Flock(int(lf.Fd()), unix.LOCK_EX)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("lock %s: %w", lockPath(), err)
		}
	}
	defer unix.Flock(int(lf.Fd()), unix.LOCK_UN)
	return f()
}

// prepareDir makes Dir a shared mount point exactly as `ip netns add` does: make it (recursively) shared, and if
// that fails because it is not a mount point yet, bind-mount it (recursively) on itself first.
func prepareDir() error {
	if err := os.MkdirAll(Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", Dir, err)
	}
	makeShared := func() error { return unix.Mount("", Dir, "none", unix.MS_SHARED|unix.MS_REC, "") }
	err := makeShared()
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("mount --make-rshared %s: %w", Dir, err)
	}
	return withLock(func() error {
		if err := makeShared(); err == nil { // another process upgraded it meanwhile
			return nil
		}
		if err := unix.Mount(Dir, Dir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("mount --rbind %s %s: %w", Dir, Dir, err)
		}
		if err := makeShared(); err != nil {
			return fmt.Errorf("mount --make-rshared %s: %w", Dir, err)
		}
		return nil
	})
}

// ValidName reports whether name can name a namespace under Dir.
func ValidName(name string) bool {
	return name != "" && name != "." && name != ".." && !strings.ContainsAny(name, "/\x00") && len(name) < 256
}

// Create makes a new, empty network namespace named name under Dir (as `ip netns add NAME`). On error nothing is
// left behind.
func Create(name string) (NS, error) {
	ns := NS{Name: name}
	if !ValidName(name) {
		return ns, fmt.Errorf("invalid netns name %q", name)
	}
	if err := prepareDir(); err != nil {
		return ns, err
	}
	f, err := os.OpenFile(ns.Path(), os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0)
	if err != nil {
		return ns, fmt.Errorf("create netns file %s: %w", name, err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		// /proc/self names the thread-group leader; this thread's namespace is under /proc/thread-self.
		merr := unix.Mount("/proc/thread-self/ns/net", ns.Path(), "none", unix.MS_BIND, "")
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked and the runtime discards it with this goroutine
		if merr != nil {
			merr = fmt.Errorf("bind-mount netns %s: %w", name, merr)
		}
		errc <- merr
	}()
	if err := <-errc; err != nil {
		_ = Delete(name)
		return ns, err
	}
	return ns, nil
}

// Delete removes the named namespace (as `ip netns del NAME`): every mount on its file, covered ones included, then
// the file. The namespace itself goes away with its last user. A missing namespace is not an error.
func Delete(name string) error {
	if !ValidName(name) {
		return fmt.Errorf("invalid netns name %q", name)
	}
	p := filepath.Join(Dir, name)
	if err := unmountAll(p); err != nil {
		return fmt.Errorf("unmount netns %s: %w", name, err)
	}
	err := os.Remove(p)
	if errors.Is(err, unix.EBUSY) {
		// A mount on the file that no path reaches: uncover it, then retry.
		if uerr := RemoveCovered(func(n string) bool { return n == name }); uerr != nil {
			return fmt.Errorf("remove netns %s: %w", name, uerr)
		}
		err = os.Remove(p)
	}
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", name, err)
	}
	return nil
}

// unmountAll lazily unmounts every mount stacked on path, top first, until none is left.
func unmountAll(path string) error {
	for range 64 {
		err := unix.Unmount(path, unix.MNT_DETACH)
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOENT):
			return nil
		default:
			return err
		}
	}
	return errors.New("more than 64 mounts stacked")
}

// List returns the names of the namespaces under Dir that start with prefix (files, whether mounted or not).
func List(prefix string) ([]string, error) {
	ents, err := os.ReadDir(Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", Dir, err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) && ValidName(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// Mount is one nsfs mount under Dir.
type Mount struct {
	// ID and Parent are the mount's and its parent's ids in mountinfo.
	ID, Parent int
	// Name is the file it is mounted on, relative to Dir.
	Name string
	// NS is the namespace it pins, as mountinfo shows it ("net:[4026532175]").
	NS string
	// Covered is true when no path reaches the mount (another mount hides it).
	Covered bool
}

// Mounts returns every nsfs mount on a file directly under Dir, covered or not, in mount order.
func Mounts() ([]Mount, error) {
	f, err := os.Open("/proc/thread-self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	ms, err := parseMountinfo(f)
	if err != nil {
		return nil, err
	}
	return nsfsMounts(ms, realDir()), nil
}

// mountinfoEntry is the part of a /proc/PID/mountinfo line this package needs.
type mountinfoEntry struct {
	id, parent int
	root       string // the mounted file or directory, within its filesystem
	point      string // mount point, relative to the process's root
	fstype     string
}

// parseMountinfo parses mountinfo(5) lines: "ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER".
func parseMountinfo(r io.Reader) ([]mountinfoEntry, error) {
	var out []mountinfoEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 || sep+1 >= len(f) {
			return nil, fmt.Errorf("mountinfo line %d: malformed %q", n, sc.Text())
		}
		id, err1 := strconv.Atoi(f[0])
		parent, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("mountinfo line %d: bad ids %q %q", n, f[0], f[1])
		}
		out = append(out, mountinfoEntry{id: id, parent: parent, root: unescape(f[3]), point: unescape(f[4]), fstype: f[sep+1]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// unescape decodes mountinfo's octal escapes (\040 for a space, \011, \012, \134).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// covered returns the ids of the mounts that no path reaches: a mount is covered when its parent is, when a
// sibling (same parent) is mounted on an ancestor directory of its mount point or on the same mount point after it
// (it is listed later), or when a child is mounted on its own root (stacked: the path reaches the child).
func covered(ms []mountinfoEntry) map[int]bool {
	byID := map[int]int{}
	children := map[int][]int{}
	for i, m := range ms {
		byID[m.id] = i
	}
	for i, m := range ms {
		children[m.parent] = append(children[m.parent], i)
	}
	out := map[int]bool{}
	var visit func(i int, hidden bool)
	visit = func(i int, hidden bool) {
		m := ms[i]
		stacked := false
		for _, c := range children[m.id] {
			if c != i && ms[c].point == m.point {
				stacked = true // under c; c itself (and what c hides) is judged by the sibling rule below
			}
		}
		if hidden || stacked {
			out[m.id] = true
		}
		for _, c := range children[m.id] {
			if c == i {
				continue
			}
			h := hidden
			if !h {
				for _, s := range children[m.id] {
					if s == c {
						continue
					}
					if isAncestor(ms[s].point, ms[c].point) || (ms[s].point == ms[c].point && s > c) {
						h = true
						break
					}
				}
			}
			visit(c, h)
		}
	}
	for i, m := range ms {
		if _, ok := byID[m.parent]; !ok || m.parent == m.id {
			visit(i, false)
		}
	}
	return out
}

// isAncestor reports whether directory a is a strict ancestor of path b.
func isAncestor(a, b string) bool {
	if a == "/" {
		return b != "/"
	}
	return strings.HasPrefix(b, a+"/")
}

// nsfsMounts picks the nsfs mounts on files directly under dir.
func nsfsMounts(ms []mountinfoEntry, dir string) []Mount {
	cov := covered(ms)
	var out []Mount
	for _, m := range ms {
		if m.fstype != "nsfs" || filepath.Dir(m.point) != dir {
			continue
		}
		out = append(out, Mount{ID: m.id, Parent: m.parent, Name: filepath.Base(m.point), NS: m.root, Covered: cov[m.id]})
	}
	return out
}

// RemoveCovered unmounts the covered nsfs mounts under Dir whose name match accepts (see the package
// documentation): it moves the mount on Dir aside, unmounts the matching mounts now reachable, and moves it back,
// level by level, holding the package's lock. It returns an error naming the mounts it could not remove.
func RemoveCovered(match func(name string) bool) error {
	return withLock(func() error {
		for range 8 {
			ms, err := Mounts()
			if err != nil {
				return err
			}
			var want []Mount
			for _, m := range ms {
				if m.Covered && match(m.Name) {
					want = append(want, m)
				}
			}
			if len(want) == 0 {
				return nil
			}
			if err := uncoverOnce(want); err != nil {
				return err
			}
		}
		return errors.New("covered netns mounts remain after 8 levels")
	})
}

// uncoverOnce moves the topmost mount on Dir aside, lazily unmounts want's names where they are now reachable, and
// moves the mount back. Any mount left covered at a deeper level is handled by the caller's next round.
func uncoverOnce(want []Mount) error {
	dir := realDir()
	aside := filepath.Join(filepath.Dir(dir), fmt.Sprintf(".ambit-netns-aside-%d", os.Getpid()))
	if err := os.Mkdir(aside, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("make %s: %w", aside, err)
	}
	defer os.Remove(aside)
	if err := unix.Mount(dir, aside, "", unix.MS_MOVE, ""); err != nil {
		names := make([]string, len(want))
		for i, m := range want {
			names[i] = m.Name
		}
		return fmt.Errorf("covered netns mounts %v cannot be uncovered: move the mount on %s aside: %w (a shared "+
			"parent mount forbids it; these mounts go away at reboot)", names, dir, err)
	}
	var errs []error
	for _, m := range want {
		if err := unmountAll(filepath.Join(dir, m.Name)); err != nil {
			errs = append(errs, fmt.Errorf("unmount covered %s: %w", m.Name, err))
		}
	}
	// Move it back; retry on EINTR-like transient failures, it must not stay aside.
	var err error
	for range 10 {
		if err = unix.Mount(aside, dir, "", unix.MS_MOVE, ""); err == nil || !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("move the mount on %s back from %s (do it by hand: mount --move %s %s): %w",
			dir, aside, aside, dir, err))
	}
	return errors.Join(errs...)
}
