package redirect

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrEphemeralPins reports a pin directory on a bpffs that will not outlive the process: one mounted only in
// a mount namespace private to it (as `ip netns exec` makes, which remounts /sys so that the agent mounts a
// fresh bpffs there). Its pins, and with them capture, vanish when the process exits, and until the next
// agent starts captured pods' traffic flows around the mesh in plaintext. New refuses such a directory in
// ModeEBPF unless Options.AllowEphemeralPins.
var ErrEphemeralPins = errors.New("pin directory does not outlive the process")

// mountEntry is the part of one /proc/<pid>/mountinfo line the pin check needs (proc(5)).
type mountEntry struct {
	ID, Parent int
	Dev        string   // major:minor of the filesystem (one per bpffs instance)
	Point      string   // mount point, unescaped
	Optional   []string // propagation: "shared:N", "master:N", "propagate_from:N", "unbindable"
	FSType     string
}

// parseMountinfo parses a mountinfo file.
func parseMountinfo(r io.Reader) ([]mountEntry, error) {
	var out []mountEntry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		pre, post, ok := strings.Cut(line, " - ")
		f := strings.Fields(pre)
		g := strings.Fields(post)
		if !ok || len(f) < 6 || len(g) < 1 {
			return nil, fmt.Errorf("parse mountinfo line %d: %q", n, line)
		}
		id, err1 := strconv.Atoi(f[0])
		parent, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil || !strings.Contains(f[2], ":") {
			return nil, fmt.Errorf("parse mountinfo line %d: %q", n, line)
		}
		out = append(out, mountEntry{ID: id, Parent: parent, Dev: f[2], Point: unescapeMount(f[4]), Optional: f[6:], FSType: g[0]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, \011, \012, \134).
func unescapeMount(s string) string {
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

// mountOf returns the mount that holds path (absolute, clean): the last listed (topmost) of the mounts whose
// mount point is path or its closest ancestor.
func mountOf(ms []mountEntry, path string) (mountEntry, bool) {
	var best mountEntry
	found := false
	for _, m := range ms {
		if !within(path, m.Point) {
			continue
		}
		if !found || len(m.Point) >= len(best.Point) {
			best, found = m, true
		}
	}
	return best, found
}

// within reports whether path is dir or below it.
func within(path, dir string) bool {
	return dir == "/" || path == dir || strings.HasPrefix(path, dir+"/")
}

// pinView is what the pin check knows about the process and the host.
type pinView struct {
	// Self are the mounts of the process's mount namespace (/proc/thread-self/mountinfo).
	Self []mountEntry
	// SelfNS and HostNS identify the process's mount namespace and PID 1's (readlink of .../ns/mnt); HostNS is
	// empty when it cannot be read (it needs ptrace access to PID 1).
	SelfNS, HostNS string
	// Host are PID 1's mounts (/proc/1/mountinfo), nil when they cannot be read or when HostNS is SelfNS.
	Host []mountEntry
	// InitPID reports that the process is in the initial PID namespace, so that PID 1 is the host's init
	// (/proc/thread-self/status lists one NSpid).
	InitPID bool
}

// checkPins decides whether the bpffs that holds dir outlives the process. nil means it does: the process
// shares the host's mount namespace, or the same bpffs (by device number) is mounted in the host's namespace,
// or (when the host's mounts cannot be seen, as in a container with its own PID namespace, whose PID 1 is not
// the host's) the mount propagates to or
// from a peer group outside the process, as a hostPath volume with mountPropagation Bidirectional or
// HostToContainer does. Otherwise the error wraps ErrEphemeralPins and says why.
func checkPins(dir string, v pinView) error {
	dir = filepath.Clean(dir)
	m, ok := mountOf(v.Self, dir)
	if !ok || m.FSType != "bpf" {
		return fmt.Errorf("check pin directory %s: not on a bpffs mount", dir)
	}
	if v.InitPID {
		if v.HostNS != "" && v.SelfNS == v.HostNS {
			return nil // the host's own mount namespace
		}
		if v.Host != nil {
			for _, h := range v.Host {
				if h.FSType == "bpf" && h.Dev == m.Dev {
					return nil // the same bpffs is mounted on the host (or this is the host's namespace)
				}
			}
			return fmt.Errorf("%w: %s is on bpffs %s mounted at %s only in this process's mount namespace, not in the host's, so it ends with the process; run the agent in the host mount namespace (with --netns rather than under `ip netns exec`)",
				ErrEphemeralPins, dir, m.Dev, m.Point)
		}
	}
	for _, o := range m.Optional {
		if strings.HasPrefix(o, "shared:") || strings.HasPrefix(o, "master:") {
			return nil
		}
	}
	return fmt.Errorf("%w: %s is on bpffs %s mounted at %s in a mount namespace other than the host's (or one this process cannot compare with the host's) with no propagation to the host; mount the host's /sys/fs/bpf (a hostPath volume with mountPropagation Bidirectional) or run in the host mount namespace",
		ErrEphemeralPins, dir, m.Dev, m.Point)
}

// initPIDNamespace reports whether a /proc/<pid>/status says the process is in the initial PID namespace (its
// NSpid line lists one PID; kernels before 4.1 have no NSpid line, and then the answer is false).
func initPIDNamespace(status string) bool {
	for line := range strings.Lines(status) {
		if rest, ok := strings.CutPrefix(line, "NSpid:"); ok {
			return len(strings.Fields(rest)) == 1
		}
	}
	return false
}
