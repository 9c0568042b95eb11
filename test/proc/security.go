package proc

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Security is what a contained child runs as: the credentials and kernel restrictions a container runtime
// (runc, under containerd) gives a container's first process. The child applies them to itself, in runc's
// order, just before it executes the program (see Security.Command).
type Security struct {
	// NetNS is the path of a network namespace to enter first (empty: the parent's).
	NetNS string `json:"netns,omitempty"`
	// Root is a directory to chroot into (empty: none); the program is looked up there.
	Root string `json:"root,omitempty"`
	// Dir is the working directory, inside Root (default "/" when Root is set, else the parent's).
	Dir string `json:"dir,omitempty"`
	// UID and GID are the real, effective and saved user and group ids.
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
	// Groups are the supplementary groups (none if empty).
	Groups []uint32 `json:"groups,omitempty"`
	// Caps is the capability bounding set, and the permitted and effective sets (AllCaps: those this process
	// holds, as a privileged container gets); the inheritable and ambient
	// sets are empty (as containerd leaves them). The kernel's exec rules then apply: a root program keeps
	// Caps, any other uid ends with no capabilities (unless the file itself carries capabilities).
	Caps Caps `json:"caps"`
	// NoNewPrivs sets PR_SET_NO_NEW_PRIVS (Kubernetes' allowPrivilegeEscalation: false): exec can never grant
	// privileges (setuid bits and file capabilities are ignored).
	NoNewPrivs bool `json:"noNewPrivs,omitempty"`
}

// Caps is a set of capabilities: bit i is capability number i (unix.CAP_*).
type Caps uint64

// AllCaps holds every capability (masked by the kernel's cap_last_cap when applied).
const AllCaps = ^Caps(0)

// Has reports whether c holds capability number n.
func (c Caps) Has(n int) bool { return n >= 0 && n < 64 && c&(1<<n) != 0 }

// With returns c with capability number n added.
func (c Caps) With(n int) Caps { return c | 1<<n }

// Without returns c with capability number n removed.
func (c Caps) Without(n int) Caps { return c &^ (1 << n) }

// String lists the capabilities' names, as /proc/<pid>/status shows them in hex.
func (c Caps) String() string {
	var names []string
	for n, name := range capNames {
		if c.Has(n) {
			names = append(names, name)
		}
	}
	return strings.Join(names, ",")
}

// capNames are the kernel's capability names, by number (include/uapi/linux/capability.h).
var capNames = []string{
	"CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
	"LINUX_IMMUTABLE", "NET_BIND_SERVICE", "NET_BROADCAST", "NET_ADMIN", "NET_RAW", "IPC_LOCK", "IPC_OWNER",
	"SYS_MODULE", "SYS_RAWIO", "SYS_CHROOT", "SYS_PTRACE", "SYS_PACCT", "SYS_ADMIN", "SYS_BOOT", "SYS_NICE",
	"SYS_RESOURCE", "SYS_TIME", "SYS_TTY_CONFIG", "MKNOD", "LEASE", "AUDIT_WRITE", "AUDIT_CONTROL", "SETFCAP",
	"MAC_OVERRIDE", "MAC_ADMIN", "SYSLOG", "WAKE_ALARM", "BLOCK_SUSPEND", "AUDIT_READ", "PERFMON", "BPF",
	"CHECKPOINT_RESTORE",
}

// ParseCap returns the number of a capability named as Kubernetes and the OCI spec name them ("NET_ADMIN" or
// "CAP_NET_ADMIN", any case).
func ParseCap(name string) (int, error) {
	n := strings.TrimPrefix(strings.ToUpper(name), "CAP_")
	if i := slices.Index(capNames, n); i >= 0 {
		return i, nil
	}
	return 0, fmt.Errorf("unknown capability %q", name)
}

// initArg is the first argument that makes this executable a container init (see Security.Command).
const initArg = "ambit-proc-init"

// InitArgv returns the argv prefix that runs a program under s: this executable, re-executed, applies s to
// itself and then executes the program named by the arguments that follow (looked up in $PATH inside Root when
// it has no slash). Every program that links this package has the init: a shell script can end in
// `exec <prefix> "$@"`.
func (s Security) InitArgv() ([]string, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	spec, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("encode security: %w", err)
	}
	return []string{self, initArg, string(spec)}, nil
}

// Command returns a command that runs argv under s (start it with Start). The program's environment is the
// command's Env, as for any exec.Cmd.
func (s Security) Command(argv ...string) (*exec.Cmd, error) {
	if len(argv) == 0 {
		return nil, errors.New("security command: no program")
	}
	pre, err := s.InitArgv()
	if err != nil {
		return nil, err
	}
	return exec.Command(pre[0], append(pre[1:], argv...)...), nil
}

func init() {
	if len(os.Args) < 4 || os.Args[1] != initArg {
		return
	}
	// Credentials, capabilities and namespaces are per thread: this one applies them and executes the program.
	runtime.LockOSThread()
	var s Security
	err := json.Unmarshal([]byte(os.Args[2]), &s)
	if err == nil {
		err = s.apply(os.Args[3:])
	}
	fmt.Fprintf(os.Stderr, "container init: %v\n", err)
	os.Exit(127)
}

// apply makes the calling thread run as s and executes argv; it returns only on failure. The order is runc's:
// namespaces and root first, then the bounding set, then the ids (keeping the permitted set across the uid
// change), then the capability sets, then no_new_privs, then exec.
func (s Security) apply(argv []string) error {
	if s.NetNS != "" {
		fd, err := unix.Open(s.NetNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open netns %s: %w", s.NetNS, err)
		}
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter netns %s: %w", s.NetNS, err)
		}
		unix.Close(fd)
	}
	last, err := lastCap()
	if err != nil {
		return err
	}
	held, err := ownCaps()
	if err != nil {
		return err
	}
	if s.Root != "" {
		if err := unix.Chroot(s.Root); err != nil {
			return fmt.Errorf("chroot %s: %w", s.Root, err)
		}
		if err := unix.Chdir("/"); err != nil {
			return fmt.Errorf("chdir /: %w", err)
		}
	}
	if s.Dir != "" {
		if err := unix.Chdir(s.Dir); err != nil {
			return fmt.Errorf("chdir %s: %w", s.Dir, err)
		}
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return fmt.Errorf("find %s: %w", argv[0], err)
	}
	for n := 0; n <= last; n++ {
		if !s.Caps.Has(n) || s.Caps == AllCaps && !held.Has(n) {
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(n), 0, 0, 0); err != nil {
				return fmt.Errorf("drop capability %s from the bounding set: %w", capName(n), err)
			}
		}
	}
	if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("set keepcaps: %w", err)
	}
	// Raw system calls: only this thread changes ids (the Go wrappers change every thread's); it is the one that
	// executes the program, and the others end with the exec.
	groups := make([]uint32, len(s.Groups))
	copy(groups, s.Groups)
	if len(groups) == 0 {
		groups = []uint32{0} // a valid pointer; the count is what matters
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(s.Groups)), uintptr(unsafe.Pointer(&groups[0])), 0); e != 0 {
		return fmt.Errorf("setgroups %v: %w", s.Groups, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(s.GID), uintptr(s.GID), uintptr(s.GID)); e != 0 {
		return fmt.Errorf("setresgid %d: %w", s.GID, e)
	}
	if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(s.UID), uintptr(s.UID), uintptr(s.UID)); e != 0 {
		return fmt.Errorf("setresuid %d: %w", s.UID, e)
	}
	if err := unix.Prctl(unix.PR_SET_KEEPCAPS, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("clear keepcaps: %w", err)
	}
	caps := s.Caps
	if caps == AllCaps {
		// Every capability this process has: a runtime cannot grant more than it holds (a nested one may hold
		// fewer than the kernel knows).
		if caps, err = ownCaps(); err != nil {
			return err
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	data := [2]unix.CapUserData{
		{Effective: uint32(caps), Permitted: uint32(caps)},
		{Effective: uint32(caps >> 32), Permitted: uint32(caps >> 32)},
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("set capabilities %s: %w", caps, err)
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	if s.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("set no_new_privs: %w", err)
		}
	}
	if err := unix.Exec(path, argv, os.Environ()); err != nil {
		return fmt.Errorf("exec %s: %w", path, err)
	}
	return nil
}

func capName(n int) string {
	if n < len(capNames) {
		return capNames[n]
	}
	return strconv.Itoa(n)
}

// ownCaps is the calling thread's permitted set.
func ownCaps() (Caps, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return 0, fmt.Errorf("get capabilities: %w", err)
	}
	return Caps(data[0].Permitted) | Caps(data[1].Permitted)<<32, nil
}

// lastCap is the highest capability number the kernel knows.
func lastCap() (int, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("read cap_last_cap: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || n < 0 || n > 63 {
		return 0, fmt.Errorf("cap_last_cap %q: not a capability number", b)
	}
	return n, nil
}
