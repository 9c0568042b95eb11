package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ambit-mesh/ambit/test/owner"
	"github.com/ambit-mesh/ambit/test/proc"
)

// tier is a test tier (or tool) that can be killed.
type tier struct {
	name string
	// points are the kill points: a name and a test of the running victim (pid, its cgroup).
	points []point
	// cmd returns the victim's command (built binaries in work).
	cmd func(work string) *exec.Cmd
}

type point struct {
	name    string
	reached func(pid int, cg string) bool
}

// labUp: the victim owns a lab (its lock file exists; default names carry the owner's pid).
func labUp(pid int, _ string) bool {
	m, _ := filepath.Glob(fmt.Sprintf("/run/ambit-labs/ambitlab-t%d-*.lock", pid))
	return len(m) > 0
}

// pinsUp: an agent of the victim pinned its capture state in a lab node's bpffs directory.
func pinsUp(pid int, _ string) bool {
	m, _ := filepath.Glob(fmt.Sprintf("/sys/fs/bpf/ambitlab-t%d-*/n*/*", pid))
	return len(m) > 0
}

// running returns a kill point reached when a process of the cgroup runs argv[0] base name exe (with argv[1]
// sub, if set).
func running(exe, sub string) func(int, string) bool {
	return func(_ int, cg string) bool {
		for _, p := range cgroupProcs(cg) {
			argv := cmdline(p)
			if len(argv) > 0 && filepath.Base(argv[0]) == exe && (sub == "" || len(argv) > 1 && argv[1] == sub) {
				return true
			}
		}
		return false
	}
}

func tiers(repo string, peersEnv []string) map[string]tier {
	return map[string]tier{
		"agents": {name: "agents", points: []point{{"lab up", labUp}, {"agents running", pinsUp}},
			cmd: func(work string) *exec.Cmd {
				c := exec.Command(filepath.Join(work, "agent.test"), "-test.run", "^TestAgentMesh$", "-test.count=10", "-test.v")
				c.Dir = filepath.Join(repo, "agent")
				return c
			}},
		"kube": {name: "kube", points: []point{{"lab up", labUp}, {"control plane up", running("kube-apiserver", "")},
			{"kube tier running (agents)", running("ambit", "agent")}},
			cmd: func(work string) *exec.Cmd {
				c := exec.Command(filepath.Join(work, "kube.test"), "-test.run", "^TestInstall$", "-test.count=1", "-test.v",
					"-test.timeout=20m")
				c.Dir = filepath.Join(repo, "test", "e2e", "kube")
				c.Env = append(os.Environ(), peersEnv...)
				return c
			}},
		"demo": {name: "demo", points: []point{{"lab up", func(pid int, _ string) bool {
			return slices.Contains(owner.Holders("/run/ambit-labs/ambitlab-demo.lock"), pid)
		}}, {"agents running", running("ambit", "agent")}, {"waypoints running", running("ambit", "waypoint")}},
			cmd: func(work string) *exec.Cmd {
				return exec.Command(filepath.Join(work, "demo"), "-bin", filepath.Join(work, "bin"))
			}},
	}
}

// build compiles what the chosen tiers run, into work.
func build(ctx context.Context, repo, work string, need map[string]bool) error {
	var steps [][]string
	if need["agents"] {
		steps = append(steps, []string{"test", "-c", "-race", "-o", filepath.Join(work, "agent.test"), "./agent"})
	}
	if need["kube"] {
		steps = append(steps, []string{"test", "-c", "-race", "-tags", "e2e", "-o", filepath.Join(work, "kube.test"), "./test/e2e/kube"})
	}
	if need["demo"] {
		steps = append(steps, []string{"build", "-o", filepath.Join(work, "bin", "ambit"), "./cmd/ambit"},
			[]string{"build", "-o", filepath.Join(work, "bin", "ambitctl"), "./cmd/ambitctl"},
			[]string{"build", "-o", filepath.Join(work, "demo"), "./hack/demo"})
	}
	for _, args := range steps {
		c := exec.CommandContext(ctx, "go", args...)
		c.Dir = repo
		if out, err := proc.CombinedOutput(c); err != nil {
			return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// peers returns the environment of the kube tier's peers, or an error if they are not in the cache.
func peers(ctx context.Context, repo string) ([]string, error) {
	cache := os.Getenv("AMBIT_PEER_CACHE")
	if cache == "" {
		cache = "/var/cache/ambit-peers"
	}
	if m, _ := filepath.Glob(filepath.Join(cache, "kube-controllers-*")); len(m) == 0 {
		return nil, fmt.Errorf("no kube peers in %s (make test builds them first)", cache)
	}
	c := exec.CommandContext(ctx, filepath.Join(repo, "hack", "peers", "build-kube-stack.sh"))
	c.Stderr = os.Stderr
	out, err := proc.Output(c)
	if err != nil {
		return nil, fmt.Errorf("hack/peers/build-kube-stack.sh: %w", err)
	}
	return strings.Fields(string(out)), nil
}

func kill(ctx context.Context, statePath string, n int, names []string, seed uint64, maxDelay, drain time.Duration) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (labs, cgroups)")
	}
	repo, err := os.Getwd()
	if err != nil {
		return err
	}
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	rng := rand.New(rand.NewPCG(seed, seed>>1))
	fmt.Printf("killtest: %d kills of %v, seed %d\n", n, names, seed)
	var peerEnv []string
	if slices.Contains(names, "kube") {
		if peerEnv, err = peers(ctx, repo); err != nil {
			fmt.Printf("killtest: %v; killing the demo instead of the kube tier\n", err)
			for i, t := range names {
				if t == "kube" {
					names[i] = "demo"
				}
			}
		}
	}
	all := tiers(repo, peerEnv)
	need := map[string]bool{}
	for _, t := range names {
		if _, ok := all[t]; !ok {
			return fmt.Errorf("unknown tier %q (want agents, kube or demo)", t)
		}
		need[t] = true
	}
	cgRoot, err := cgroup2Root()
	if err != nil {
		return err
	}
	work, err := filepath.Abs(filepath.Join(filepath.Dir(statePath), "work"))
	if err != nil {
		return err
	}
	st := &State{Started: time.Now(), Work: work}
	if st.TmpEntries, err = tmpEntries(); err != nil {
		return err
	}
	st.NFTTables = nftTables()
	if err := os.MkdirAll(st.Work, 0o755); err != nil {
		return err
	}
	t0 := time.Now()
	if err := build(ctx, repo, st.Work, need); err != nil {
		return err
	}
	fmt.Printf("killtest: built the tiers in %v\n", time.Since(t0).Round(time.Second))
	for i := range n {
		t := all[names[i%len(names)]]
		var k Kill
		for attempt := 0; ; attempt++ {
			pt := t.points[rng.IntN(len(t.points))]
			delay := time.Duration(rng.Int64N(int64(maxDelay) + 1))
			k, err = killOnce(ctx, t, pt, delay, st.Work, cgRoot, i, drain)
			if !errors.Is(err, errMissed) || attempt == 2 {
				break
			}
			fmt.Printf("killtest: %s ended before %q; again\n", t.name, pt.name)
		}
		if err != nil {
			return fmt.Errorf("kill %d (%s): %w", i+1, t.name, err)
		}
		st.Kills = append(st.Kills, k)
		fmt.Printf("killtest: kill %d/%d: %s at %q + %v (pid %d, after %s); listening on %v; left running: %v\n",
			i+1, n, k.Tier, k.Point, k.Delay.Round(time.Millisecond), k.Pid, k.Took, k.Ports, k.Leftovers)
		if err := writeState(statePath, st); err != nil {
			return err
		}
	}
	return writeState(statePath, st)
}

var errMissed = errors.New("the run ended before its kill point")

// killOnce runs t in a fresh cgroup, SIGKILLs it at pt after delay, and waits for the cgroup to empty.
func killOnce(ctx context.Context, t tier, pt point, delay time.Duration, work, cgRoot string, i int, drain time.Duration) (Kill, error) {
	k := Kill{Tier: t.name, Point: pt.name, Delay: delay}
	cg := filepath.Join(cgRoot, fmt.Sprintf("ambit-killtest-%d-%d", os.Getpid(), i))
	if err := os.Mkdir(cg, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return k, fmt.Errorf("make cgroup: %w", err)
	}
	defer removeCgroup(cg)
	logf, err := os.Create(filepath.Join(work, fmt.Sprintf("run%d-%s.log", i+1, t.name)))
	if err != nil {
		return k, err
	}
	defer logf.Close()
	cmd := t.cmd(work)
	cmd.Stdout, cmd.Stderr = logf, logf
	if cmd.Env == nil {
		cmd.Env = os.Environ()
	}
	cmd.Env = append(cmd.Env, "AMBIT_REQUIRE_ROOT=1")
	v, err := startVictim(cmd, cg)
	if err != nil {
		return k, err
	}
	k.Pid = v.pid
	t0 := time.Now()
	deadline := t0.Add(15 * time.Minute)
	for !pt.reached(v.pid, cg) {
		if v.exited() {
			<-v.done
			return k, errMissed
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			_ = syscall.Kill(v.pid, syscall.SIGKILL)
			<-v.done
			return k, fmt.Errorf("%q not reached in time (see %s)", pt.name, logf.Name())
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case <-time.After(delay):
	case <-v.done:
		return k, errMissed
	}
	k.Ports = listeningPorts(cgroupProcs(cg))
	k.Took = time.Since(t0).Round(time.Millisecond).String()
	if err := syscall.Kill(v.pid, syscall.SIGKILL); err != nil { // the run's process only: not its group
		return k, fmt.Errorf("kill %d: %w", v.pid, err)
	}
	<-v.done
	// Death signals are asynchronous and a killed `go build` leaves compilers that finish their file: wait.
	end := time.Now().Add(drain)
	for len(cgroupProcs(cg)) > 0 && time.Now().Before(end) {
		time.Sleep(100 * time.Millisecond)
	}
	for _, p := range cgroupProcs(cg) {
		k.Leftovers = append(k.Leftovers, fmt.Sprintf("%d %s", p, strings.Join(cmdline(p), " ")))
	}
	return k, nil
}

// victim is the killed run's process.
type victim struct {
	pid  int
	done chan struct{}
}

func (v *victim) exited() bool {
	select {
	case <-v.done:
		return true
	default:
		return false
	}
}

// startVictim starts cmd in cgroup cg (clone3 into it, so not even an early child escapes) with a death signal,
// from a goroutine locked to its thread until the victim is reaped (the death signal follows the forking thread).
// It deliberately does not use test/proc: that would kill the victim's process group on its exit and hide a child
// that does not die on its own.
func startVictim(cmd *exec.Cmd, cg string) (*victim, error) {
	fd, err := syscall.Open(cg, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open cgroup: %w", err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, UseCgroupFD: true, CgroupFD: fd}
	v := &victim{done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		err := cmd.Start()
		syscall.Close(fd)
		if err != nil {
			errc <- err
			return
		}
		v.pid = cmd.Process.Pid
		errc <- nil
		_ = cmd.Wait()
		close(v.done)
	}()
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	return v, nil
}

// cgroup2Root finds a cgroup2 mount.
func cgroup2Root() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) && fields[i+1] == "cgroup2" {
				return fields[4], nil
			}
		}
	}
	return "", errors.New("no cgroup2 mount: killtest tracks a run's processes with a cgroup")
}

// cgroupProcs lists the processes in cgroup cg.
func cgroupProcs(cg string) []int {
	b, err := os.ReadFile(filepath.Join(cg, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for _, l := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(l); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// removeCgroup kills whatever is left in cg and removes it.
func removeCgroup(cg string) {
	_ = os.WriteFile(filepath.Join(cg, "cgroup.kill"), []byte("1"), 0o644)
	for range 100 {
		if err := os.Remove(cg); err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "killtest: cannot remove cgroup %s\n", cg)
}

func cmdline(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}
