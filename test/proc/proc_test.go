package proc_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/test/proc"
)

// roleEnv makes the test binary a helper:
//
//	sleep        block until killed
//	middle       start a "sleep" child with proc.Start, print its pid, block
//	forker       start a "sleep" child in the same process group (plain exec), print its pid, exit 0
//	forker-wait  as forker, but block instead of exiting
//	echo         print "out" on stdout and "err" on stderr, exit 3
const roleEnv = "AMBIT_PROC_TEST_ROLE"

func TestMain(m *testing.M) {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(helper(role))
	}
	// Orphans of our helpers are re-parented to this process, so the tests can wait for them and see how they died.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "set child subreaper:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func self(role string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"="+role)
	return cmd
}

func helper(role string) int {
	switch role {
	case "sleep":
		for {
			time.Sleep(time.Hour)
		}
	case "middle":
		p, err := proc.Start(self("sleep"))
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		fmt.Println(p.Pid())
		for {
			time.Sleep(time.Hour)
		}
	case "forker", "forker-wait":
		c := self("sleep")
		if err := c.Start(); err != nil {
			fmt.Println("error:", err)
			return 1
		}
		fmt.Println(c.Process.Pid)
		for role == "forker-wait" {
			time.Sleep(time.Hour)
		}
		return 0
	case "echo":
		fmt.Print("out")
		fmt.Fprint(os.Stderr, "err")
		return 3
	}
	return 2
}

// firstLine starts cmd with its stdout piped and returns the first line it prints.
func firstLine(t *testing.T, cmd *exec.Cmd, start func(*exec.Cmd) error) string {
	t.Helper()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := start(cmd); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("read helper output: %v", err)
	}
	return strings.TrimSpace(line)
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("helper printed %q", s)
	}
	return n
}

// waitKilled waits for pid (our child, or an orphan re-parented to us) and fails unless SIGKILL ended it.
func waitKilled(t *testing.T, pid int) {
	t.Helper()
	waitSignaled(t, pid, unix.SIGKILL)
}

// waitSignaled waits for pid and fails unless sig ended it.
func waitSignaled(t *testing.T, pid int, sig unix.Signal) {
	t.Helper()
	var ws unix.WaitStatus
	done := make(chan error, 1)
	go func() {
		_, err := unix.Wait4(pid, &ws, 0, nil)
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("wait for %d: %v", pid, err)
		}
	case <-time.After(30 * time.Second):
		_ = unix.Kill(pid, unix.SIGKILL)
		t.Fatalf("process %d is still running", pid)
	}
	if !ws.Signaled() || ws.Signal() != sig {
		t.Errorf("process %d ended with status %#x, want signal %v", pid, ws, sig)
	}
}

func TestChildDiesWithItsParent(t *testing.T) {
	middle := self("middle")
	grandchild := atoi(t, firstLine(t, middle, (*exec.Cmd).Start))
	if err := middle.Process.Kill(); err != nil { // SIGKILL: no cleanup runs in the middle process
		t.Fatal(err)
	}
	_ = middle.Wait()
	waitKilled(t, grandchild)
}

// Pdeathsig fires when the forking *thread* exits. A goroutine that exits while locked to its thread ends that
// thread; a child forked from it (plain exec.Cmd.Start with Pdeathsig) would die right then. proc forks from its
// own thread, so the child lives on.
func TestChildOutlivesTheThreadThatAskedForIt(t *testing.T) {
	type started struct {
		p   *proc.Proc
		tid int
		err error
	}
	var s started
	for range 20 {
		ch := make(chan started, 1)
		go func() {
			runtime.LockOSThread() // never unlocked: the thread exits with this goroutine
			p, err := proc.Start(self("sleep"))
			ch <- started{p, unix.Gettid(), err}
		}()
		s = <-ch
		if s.err != nil {
			t.Fatal(s.err)
		}
		defer s.p.Stop(time.Second)
		if s.tid != os.Getpid() {
			break
		}
		// The goroutine ran on the main thread, which Go never ends: not the case under test. Again.
	}
	if s.tid == os.Getpid() {
		t.Fatal("could not get a goroutine off the main thread")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", s.tid)); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread %d did not exit", s.tid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The death signal, had it fired, is delivered by the time the thread is gone; give the child a moment to die.
	time.Sleep(200 * time.Millisecond)
	if exited, err := s.p.Exited(); exited {
		t.Fatalf("child died when the thread that asked for it exited: %v", err)
	}
}

func TestGroupIsKilledWhenTheChildExits(t *testing.T) {
	var p *proc.Proc
	start := func(c *exec.Cmd) (err error) { p, err = proc.Start(c); return err }
	grandchild := atoi(t, firstLine(t, self("forker"), start))
	if err := p.Wait(); err != nil {
		t.Fatalf("forker: %v", err)
	}
	waitKilled(t, grandchild) // it shared the forker's process group
}

func TestStopKillsTheGroup(t *testing.T) {
	var p *proc.Proc
	start := func(c *exec.Cmd) (err error) { p, err = proc.Start(c); return err }
	grandchild := atoi(t, firstLine(t, self("forker-wait"), start))
	if err := p.Stop(5 * time.Second); err == nil {
		t.Error("Stop returned no error for a signalled process")
	}
	waitSignaled(t, grandchild, unix.SIGTERM) // SIGTERM went to the whole group
}

func TestCancelKillsTheGroup(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), roleEnv+"=forker-wait")
	var p *proc.Proc
	start := func(c *exec.Cmd) (err error) { p, err = proc.Start(c); return err }
	grandchild := atoi(t, firstLine(t, cmd, start))
	cancel()
	if err := p.Wait(); err == nil {
		t.Error("cancelled command reported success")
	}
	waitKilled(t, grandchild)
}

func TestKillAll(t *testing.T) {
	var ps []*proc.Proc
	for range 3 {
		p, err := proc.Start(self("sleep"))
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	proc.KillAll()
	for _, p := range ps {
		if exited, _ := p.Exited(); !exited {
			t.Errorf("process %d still running after KillAll", p.Pid())
		}
	}
}

func TestOutputs(t *testing.T) {
	out, err := proc.Output(self("echo"))
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("Output error = %v, want exit status 3", err)
	}
	if string(out) != "out" || string(ee.Stderr) != "err" {
		t.Errorf("Output = %q, stderr %q; want \"out\", \"err\"", out, ee.Stderr)
	}
	both, err := proc.CombinedOutput(self("echo"))
	if err == nil || string(both) != "outerr" {
		t.Errorf("CombinedOutput = %q, %v; want \"outerr\" and an error", both, err)
	}
	c := self("echo")
	c.Stdout = os.Stdout
	if _, err := proc.Output(c); err == nil {
		t.Error("Output with Stdout set succeeded")
	}
}
