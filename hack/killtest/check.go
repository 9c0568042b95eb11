package main

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/ambit-mesh/ambit/test/netns"
	"github.com/ambit-mesh/ambit/test/owner"
)

// tmpEntries lists the temporary directory's entries.
func tmpEntries() ([]string, error) {
	ents, err := os.ReadDir(os.TempDir())
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", os.TempDir(), err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out, nil
}

// nftTables lists the host network namespace's nftables tables ("family name"); nil without nft.
func nftTables() []string {
	out, err := exec.Command("nft", "list", "tables").Output()
	if err != nil {
		return nil
	}
	var t []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 && f[0] == "table" {
			t = append(t, f[1]+" "+f[2])
		}
	}
	return t
}

// listeners maps the inode of every listening TCP socket of this network namespace to its port.
func listeners() map[string]int {
	out := map[string]int{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		fh, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" {
				continue
			}
			_, portHex, ok := strings.Cut(fields[1], ":")
			if !ok {
				continue
			}
			if p, err := strconv.ParseUint(portHex, 16, 16); err == nil {
				out[fields[9]] = int(p)
			}
		}
		fh.Close()
	}
	return out
}

// socketOwners maps socket inodes to the pids holding them, for pids (nil: every process).
func socketOwners(pids []int) map[string][]int {
	if pids == nil {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if p, err := strconv.Atoi(e.Name()); err == nil {
				pids = append(pids, p)
			}
		}
	}
	out := map[string][]int{}
	for _, p := range pids {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p))
		for _, fd := range fds {
			l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", p, fd.Name()))
			if ino, ok := strings.CutPrefix(l, "socket:["); ok && err == nil {
				ino = strings.TrimSuffix(ino, "]")
				out[ino] = append(out[ino], p)
			}
		}
	}
	return out
}

// listeningPorts returns the ports pids listen on in this network namespace.
func listeningPorts(pids []int) []int {
	ls := listeners()
	var out []int
	for ino := range socketOwners(pids) {
		if p, ok := ls[ino]; ok && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}

func duBytes(path string) int64 {
	var n int64
	_ = filepath.WalkDir(path, func(_ string, d fs.DirEntry, err error) error {
		if err == nil {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

func check(statePath string, tempBound int64) error {
	st, err := readState(statePath)
	if err != nil {
		return err
	}
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	var prefixes []string
	for _, k := range st.Kills {
		prefixes = append(prefixes, fmt.Sprintf("ambitlab-t%d-", k.Pid))
		if k.Tier == "demo" {
			// A fixed name: what is there is a leftover only when nobody owns it now.
			if l, err := owner.TryLock("/run/ambit-labs/ambitlab-demo.lock"); err == nil {
				prefixes = append(prefixes, "ambitlab-demo")
				_ = l.Remove()
			}
		}
	}
	ours := func(name string) bool {
		return slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(name, p) })
	}
	names, err := netns.List("ambitlab-")
	if err != nil {
		bad("list namespaces: %v", err)
	}
	for _, n := range names {
		if ours(n) {
			bad("network namespace %s", n)
		}
	}
	ms, err := netns.Mounts()
	if err != nil {
		bad("read mounts: %v", err)
	}
	for _, m := range ms {
		switch {
		case m.Covered:
			bad("covered nsfs mount %s (%s, mount %d)", m.Name, m.NS, m.ID)
		case ours(m.Name):
			bad("nsfs mount %s (%s)", m.Name, m.NS)
		}
	}
	for _, dir := range []string{"/run/ambit-labs", "/sys/fs/bpf"} {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if ours(e.Name()) {
				bad("%s/%s", dir, e.Name())
			}
		}
	}
	for _, t := range nftTables() {
		if !slices.Contains(st.NFTTables, t) {
			bad("nftables table %s in the host namespace", t)
		}
	}
	for _, k := range st.Kills {
		for _, l := range k.Leftovers {
			bad("process of the killed %s run (pid %d) still running after the drain: %s", k.Tier, k.Pid, l)
		}
	}
	if st.Work != "" {
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			if p, err := strconv.Atoi(e.Name()); err == nil {
				if argv := cmdline(p); len(argv) > 0 && strings.HasPrefix(argv[0], st.Work) {
					bad("process %d %s", p, strings.Join(argv, " "))
				}
			}
		}
	}
	ls, owners := listeners(), socketOwners(nil)
	for _, k := range st.Kills {
		for ino, port := range ls {
			if slices.Contains(k.Ports, port) {
				bad("port %d (used by the killed %s run) is listening again, held by %v", port, k.Tier, owners[ino])
			}
		}
	}
	now, err := tmpEntries()
	if err != nil {
		bad("%v", err)
	}
	// What tests make there: their own directories (ambit-*, bench-*) and testing's t.TempDir (Test*). Others
	// (go-build*, other tools) are listed but not counted.
	// A directory whose owner lock (test/owner.MkdirTemp) a live process holds belongs to a run that is still
	// going (another test on a shared machine), not to a killed one.
	var total int64
	var fresh, other, live []string
	for _, e := range now {
		if slices.Contains(st.TmpEntries, e) {
			continue
		}
		if owner.TempDirInUse(filepath.Join(os.TempDir(), e)) {
			live = append(live, e)
			continue
		}
		n := duBytes(filepath.Join(os.TempDir(), e))
		if !strings.HasPrefix(e, "ambit-") && !strings.HasPrefix(e, "bench-") && !strings.HasPrefix(e, "Test") {
			other = append(other, fmt.Sprintf("%s (%d KiB)", e, n>>10))
			continue
		}
		total += n
		fresh = append(fresh, fmt.Sprintf("%s (%d KiB)", e, n>>10))
	}
	fmt.Printf("killtest: %d new test entries in %s since the kills, %d KiB: %v (not counted: %v; owned by live runs: %v)\n",
		len(fresh), os.TempDir(), total>>10, fresh, other, live)
	if total > tempBound {
		bad("new test entries in %s total %d KiB, over the bound of %d KiB", os.TempDir(), total>>10, tempBound>>10)
	}
	if st.Work != "" {
		_ = os.RemoveAll(st.Work)
	}
	if len(problems) > 0 {
		return errors.New("left behind by the killed runs:\n  " + strings.Join(problems, "\n  "))
	}
	fmt.Printf("killtest: nothing left by %d killed runs (namespaces, mounts, lab locks, bpffs pins, nftables tables, "+
		"processes, ports, temporary files)\n", len(st.Kills))
	return nil
}
