package lab

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/test/netns"
	"github.com/ambit-mesh/ambit/test/owner"
)

// LockDir holds one lock file per lab, <name>.lock, flocked by the lab's owner for the lab's lifetime (package
// test/owner), and <name>.keep for labs kept on purpose (Options.Keep).
const LockDir = "/run/ambit-labs"

// ErrInUse is returned (wrapped) when a live process owns the lab.
var ErrInUse = errors.New("lab is in use by a live process")

func lockPath(name string) string { return filepath.Join(LockDir, name+".lock") }
func keepPath(name string) string { return filepath.Join(LockDir, name+".keep") }

// lockLab takes ownership of name, or fails with ErrInUse.
func lockLab(name string) (*owner.Lock, error) {
	l, err := owner.TryLock(lockPath(name))
	if errors.Is(err, owner.ErrBusy) {
		return nil, fmt.Errorf("lab %s: %w: %w", name, ErrInUse, err)
	}
	return l, err
}

// validName checks a lab name: NamePrefix, then letters, digits, '-', '_' or '.', short enough for the
// namespace names made from it.
var validName = regexp.MustCompile(`^` + NamePrefix + `[A-Za-z0-9_.-]{1,100}$`)

// removeResources removes everything named after lab name, the caller owning it: the bpffs directory (which
// releases pinned maps, programs and links), every network namespace whose name starts with name + "-" (which takes
// their links, addresses, routes, nftables tables and attached programs with them), including covered mounts, and
// the keep marker.
func removeResources(name string) error {
	var errs []error
	if err := os.RemoveAll(filepath.Join(bpffsDir, name)); err != nil {
		errs = append(errs, fmt.Errorf("remove pins of %s: %w", name, err))
	}
	nss, err := namespacesOf(name)
	if err != nil {
		errs = append(errs, err)
	}
	for _, n := range nss {
		if err := netns.Delete(n); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(keepPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove keep marker of %s: %w", name, err))
	}
	return errors.Join(errs...)
}

// namespacesOf returns the namespaces of lab name: files under netns.Dir and nsfs mounts (covered ones too).
func namespacesOf(name string) ([]string, error) {
	names, err := netns.List(name + "-")
	if err != nil {
		return nil, err
	}
	ms, err := netns.Mounts()
	if err != nil {
		return names, err
	}
	for _, m := range ms {
		if strings.HasPrefix(m.Name, name+"-") && !slices.Contains(names, m.Name) {
			names = append(names, m.Name)
		}
	}
	return names, nil
}

// Remove removes lab name (see Lab.Close) unless a live process owns it, in which case it fails with ErrInUse and
// touches nothing. It also removes a lab kept with Options.Keep.
func Remove(name string) error {
	if !strings.HasPrefix(name, NamePrefix) {
		return fmt.Errorf("lab name %q must start with %q", name, NamePrefix)
	}
	l, err := lockLab(name)
	if err != nil {
		return err
	}
	if err := removeResources(name); err != nil {
		_ = l.Release()
		return err
	}
	return l.Remove()
}

// Sweep removes every lab whose owner is gone: each lab whose lock it can take, except labs kept on purpose
// (Options.Keep, hack/lab). A live owner's lab is never touched, whatever its name. Labs made before locks existed
// (no lock file) are removed when their name says a test process made them ("t<pid>-") and that pid is gone.
// Sweep finds labs by their lock files, namespace files, nsfs mounts (including covered ones, through mountinfo)
// and bpffs directories, so a lab that left any of these behind is found. It returns an error naming each lab it
// could not remove; the next Sweep retries them.
func Sweep() error {
	names, err := candidates()
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	for _, name := range names {
		if err := sweepOne(name); err != nil {
			errs = append(errs, fmt.Errorf("sweep lab %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func sweepOne(name string) error {
	if _, err := os.Stat(keepPath(name)); err == nil {
		return nil
	}
	if _, err := os.Stat(lockPath(name)); errors.Is(err, fs.ErrNotExist) && legacyOwnerAlive(name) {
		return nil
	}
	l, err := lockLab(name)
	if errors.Is(err, ErrInUse) {
		return nil
	}
	if err != nil {
		return err
	}
	if _, err := os.Stat(keepPath(name)); err == nil { // kept between our check and the lock
		return l.Release()
	}
	if err := removeResources(name); err != nil {
		_ = l.Release()
		return err
	}
	return l.Remove()
}

// legacyOwnerAlive applies the rule of labs without a lock file (made before locks existed): a "t<pid>-" name is
// owned while that pid exists; any other name belongs to a person and is left alone.
func legacyOwnerAlive(name string) bool {
	rest, ok := strings.CutPrefix(name, NamePrefix+"t")
	if !ok {
		return true
	}
	pidStr, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid <= 0 {
		return true
	}
	return !errors.Is(unix.Kill(pid, 0), unix.ESRCH)
}

// nsSuffix matches the namespace names a lab and the e2e kubelet make after the lab name.
var nsSuffix = regexp.MustCompile(`-(fab|n[0-9]+(-[pk][0-9]+)?)$`)

// candidates lists the names of the labs that left anything behind, sorted.
func candidates() ([]string, error) {
	set := map[string]bool{}
	var errs []error
	if ents, err := os.ReadDir(LockDir); err == nil {
		for _, e := range ents {
			for _, ext := range []string{".lock", ".keep"} {
				if n, ok := strings.CutSuffix(e.Name(), ext); ok && strings.HasPrefix(n, NamePrefix) {
					set[n] = true
				}
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("list %s: %w", LockDir, err))
	}
	if ents, err := os.ReadDir(bpffsDir); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), NamePrefix) {
				set[e.Name()] = true
			}
		}
	}
	nss, err := netns.List(NamePrefix)
	if err != nil {
		errs = append(errs, err)
	}
	if ms, err := netns.Mounts(); err == nil {
		for _, m := range ms {
			if strings.HasPrefix(m.Name, NamePrefix) {
				nss = append(nss, m.Name)
			}
		}
	} else {
		errs = append(errs, err)
	}
	for _, ns := range nss {
		if set[labOf(ns, set)] {
			continue
		}
		if loc := nsSuffix.FindStringIndex(ns); loc != nil {
			set[ns[:loc[0]]] = true
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	slices.Sort(out)
	return out, errors.Join(errs...)
}

// labOf returns the longest known lab name that ns belongs to, or "".
func labOf(ns string, known map[string]bool) string {
	best := ""
	for n := range known {
		if strings.HasPrefix(ns, n+"-") && len(n) > len(best) {
			best = n
		}
	}
	return best
}

// List returns the names of the labs that exist (found by their fabric namespaces).
func List() ([]string, error) {
	names, err := netns.List(NamePrefix)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range names {
		if lab, ok := strings.CutSuffix(n, "-fab"); ok {
			out = append(out, lab)
		}
	}
	return out, nil
}
