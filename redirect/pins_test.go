package redirect

import (
	"errors"
	"strings"
	"testing"
)

// Mount tables as the kernel prints them: the host (bpffs 0:40 on /sys/fs/bpf, private, as on a machine
// without systemd), a namespace made by `ip netns exec` (a fresh sysfs and a fresh bpffs 0:77 that the agent
// mounted), a DaemonSet container (the host's bpffs through a hostPath with mountPropagation Bidirectional),
// the same with mountPropagation None, and a container that mounted its own bpffs.
const (
	hostMounts = `27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
54 23 0:40 / /sys/fs/bpf rw,relatime - bpf bpffs rw,mode=700
`
	hostMountsShared = `27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 27 0:22 / /sys rw,relatime shared:2 - sysfs sysfs rw
54 23 0:40 / /sys/fs/bpf rw,relatime shared:9 - bpf bpffs rw,mode=700
`
	ipNetnsExecMounts = `301 300 254:0 / / rw,relatime master:1 - ext4 /dev/vda rw
305 301 0:91 / /sys rw,relatime - sysfs ambitlab-n0 rw
306 305 0:77 / /sys/fs/bpf rw,relatime - bpf bpffs rw,mode=700
`
	// The host's bpffs still visible through a bind in the private namespace (the pin dir is not under /sys).
	ipNetnsExecRunBPF = ipNetnsExecMounts + `307 301 0:40 / /run/ambit-bpf rw,relatime - bpf bpffs rw,mode=700
`
	containerBidirectional = `900 800 0:120 / / rw,relatime - overlay overlay rw
905 900 0:121 / /sys ro,nosuid - sysfs sysfs ro
906 905 0:40 / /sys/fs/bpf rw,relatime shared:9 master:9 - bpf bpffs rw,mode=700
`
	containerHostToContainer = `900 800 0:120 / / rw,relatime - overlay overlay rw
906 900 0:40 / /sys/fs/bpf rw,relatime master:9 - bpf bpffs rw,mode=700
`
	containerNone = `900 800 0:120 / / rw,relatime - overlay overlay rw
906 900 0:40 / /sys/fs/bpf rw,relatime - bpf bpffs rw,mode=700
`
	noBPF = `27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
23 27 0:22 / /sys rw,relatime - sysfs sysfs rw
`
)

func mounts(t *testing.T, s string) []mountEntry {
	t.Helper()
	ms, err := parseMountinfo(strings.NewReader(s))
	if err != nil {
		t.Fatal(err)
	}
	return ms
}

func TestCheckPins(t *testing.T) {
	const host, priv = "mnt:[4026531832]", "mnt:[4026532999]"
	cases := []struct {
		name      string
		dir       string
		self      string
		selfNS    string
		hostNS    string // "" when /proc/1/ns/mnt is unreadable
		host      string // "" when /proc/1/mountinfo is unreadable or the namespace is the host's
		initPID   bool
		ephemeral bool // want ErrEphemeralPins
		fail      bool // want another error
	}{
		{name: "host mount namespace", dir: "/sys/fs/bpf/ambit", self: hostMounts, selfNS: host, hostNS: host, initPID: true},
		{name: "host mount namespace, shared mounts", dir: "/sys/fs/bpf/ambit", self: hostMountsShared, selfNS: host, hostNS: host, initPID: true},
		{name: "ip netns exec: private bpffs", dir: "/sys/fs/bpf/ambit", self: ipNetnsExecMounts, selfNS: priv, hostNS: host, host: hostMounts, initPID: true, ephemeral: true},
		{name: "ip netns exec: private bpffs, shared host", dir: "/sys/fs/bpf/lab/n0", self: ipNetnsExecMounts, selfNS: priv, hostNS: host, host: hostMountsShared, initPID: true, ephemeral: true},
		{name: "ip netns exec: host bpffs bound elsewhere", dir: "/run/ambit-bpf/n0", self: ipNetnsExecRunBPF, selfNS: priv, hostNS: host, host: hostMounts, initPID: true},
		{name: "host mount namespace, namespace links unreadable", dir: "/sys/fs/bpf/ambit", self: hostMounts, selfNS: host, hostNS: "", host: hostMounts, initPID: true},
		{name: "ip netns exec, namespace links unreadable", dir: "/sys/fs/bpf/ambit", self: ipNetnsExecMounts, selfNS: priv, hostNS: "", host: hostMounts, initPID: true, ephemeral: true},
		{name: "private namespace, host unreadable, no propagation", dir: "/sys/fs/bpf/ambit", self: ipNetnsExecMounts, selfNS: priv, hostNS: "", initPID: true, ephemeral: true},
		{name: "daemonset: Bidirectional", dir: "/sys/fs/bpf/ambit", self: containerBidirectional, selfNS: priv, hostNS: priv, initPID: false},
		{name: "daemonset: HostToContainer", dir: "/sys/fs/bpf/ambit", self: containerHostToContainer, selfNS: priv, hostNS: priv, initPID: false},
		{name: "container: propagation None", dir: "/sys/fs/bpf/ambit", self: containerNone, selfNS: priv, hostNS: priv, initPID: false, ephemeral: true},
		{name: "container with host PID namespace: host's bpffs", dir: "/sys/fs/bpf/ambit", self: containerNone, selfNS: priv, hostNS: host, host: hostMounts, initPID: true},
		{name: "container: own bpffs, PID namespace", dir: "/sys/fs/bpf/ambit", self: ipNetnsExecMounts, selfNS: priv, hostNS: priv, initPID: false, ephemeral: true},
		{name: "not on bpffs", dir: "/sys/fs/bpf/ambit", self: noBPF, selfNS: host, hostNS: host, initPID: true, fail: true},
		{name: "bpffs mounted below the pin dir only", dir: "/sys/fs", self: hostMounts, selfNS: host, hostNS: host, initPID: true, fail: true},
		{name: "unclean path", dir: "/sys/fs/bpf/../bpf/ambit/", self: ipNetnsExecMounts, selfNS: priv, hostNS: host, host: hostMounts, initPID: true, ephemeral: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := pinView{Self: mounts(t, c.self), SelfNS: c.selfNS, HostNS: c.hostNS, InitPID: c.initPID}
			if c.host != "" {
				v.Host = mounts(t, c.host)
			}
			err := checkPins(c.dir, v)
			switch {
			case c.ephemeral:
				if !errors.Is(err, ErrEphemeralPins) {
					t.Fatalf("checkPins = %v, want ErrEphemeralPins", err)
				}
			case c.fail:
				if err == nil || errors.Is(err, ErrEphemeralPins) {
					t.Fatalf("checkPins = %v, want a non-ephemeral error", err)
				}
			default:
				if err != nil {
					t.Fatalf("checkPins = %v, want nil", err)
				}
			}
		})
	}
}

func TestParseMountinfo(t *testing.T) {
	ms := mounts(t, `36 35 98:0 /mnt1 /mnt\040with\040space rw,noatime master:1 shared:4 - bpf bpffs rw
37 35 0:5 / /x rw - tmpfs none rw
`)
	want := mountEntry{ID: 36, Parent: 35, Dev: "98:0", Point: "/mnt with space", Optional: []string{"master:1", "shared:4"}, FSType: "bpf"}
	if got := ms[0]; got.ID != want.ID || got.Parent != want.Parent || got.Dev != want.Dev || got.Point != want.Point ||
		strings.Join(got.Optional, ",") != strings.Join(want.Optional, ",") || got.FSType != want.FSType {
		t.Errorf("entry = %+v, want %+v", got, want)
	}
	if len(ms) != 2 || len(ms[1].Optional) != 0 || ms[1].FSType != "tmpfs" {
		t.Errorf("second entry = %+v", ms[1:])
	}
	for _, bad := range []string{
		"36 35 98:0 / /mnt rw",               // no separator
		"x 35 98:0 / /mnt rw - bpf bpffs rw", // bad ID
		"36 35 980 / /mnt rw - bpf bpffs rw", // bad device
		"36 35 98:0 / rw - bpf bpffs rw",     // too few fields
		"36 35 98:0 / /mnt rw - ",            // no filesystem type
	} {
		if _, err := parseMountinfo(strings.NewReader(bad + "\n")); err == nil {
			t.Errorf("parseMountinfo(%q) succeeded", bad)
		}
	}
}

func TestInitPIDNamespace(t *testing.T) {
	for status, want := range map[string]bool{
		"Name:\tambit\nNSpid:\t4242\n":         true,
		"Name:\tambit\nNSpid:\t4242\t7\n":      false,
		"Name:\tambit\nNSpid:\t4242\t7\t1\n":   false,
		"Name:\tambit\nPid:\t4242\n":           false, // before Linux 4.1
		"NSpid:\t1\nNStgid:\t1\nTracerPid:\t0": true,
	} {
		if got := initPIDNamespace(status); got != want {
			t.Errorf("initPIDNamespace(%q) = %v, want %v", status, got, want)
		}
	}
}
