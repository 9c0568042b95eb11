package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Proc is a running child process started by Start.
type Proc struct {
	// Cmd is the command; do not call its Wait: Proc waits.
	Cmd  *exec.Cmd
	done chan struct{}
	err  error // set before done is closed
}

var (
	spawnc = make(chan func())

	liveMu sync.Mutex
	live   = map[*Proc]bool{} // guarded by liveMu
)

// spawner runs fork requests on an OS thread that never exits before the process does.
func spawner() {
	runtime.LockOSThread() // never unlocked: the thread lives (and parents every child) until the process ends
	for f := range spawnc {
		f()
	}
}

// The spawner starts with the package, so that it is part of any goroutine baseline (testutil.CheckGoroutines).
func init() { go spawner() }

// onSpawnerThread runs f on the spawner thread and waits for it.
func onSpawnerThread(f func()) {
	done := make(chan struct{})
	spawnc <- func() {
		defer close(done)
		f()
	}
	<-done
}

// prepare sets the process attributes every child gets.
func prepare(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	a := cmd.SysProcAttr
	if !a.Setsid {
		a.Setpgid, a.Pgid = true, 0
	}
	if a.Pdeathsig == 0 {
		a.Pdeathsig = syscall.SIGKILL
	}
	if cmd.Cancel != nil { // exec.CommandContext: kill the group, not just the leader
		cmd.Cancel = func() error { return killGroup(cmd, syscall.SIGKILL) }
	}
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = 10 * time.Second // a grandchild holding our pipes cannot block Wait forever
	}
}

// Start starts cmd as a child that dies with this process (see the package documentation) and waits for it in
// the background.
func Start(cmd *exec.Cmd) (*Proc, error) {
	prepare(cmd)
	var err error
	onSpawnerThread(func() { err = cmd.Start() })
	if err != nil {
		return nil, err
	}
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	liveMu.Lock()
	live[p] = true
	liveMu.Unlock()
	go p.wait()
	return p, nil
}

// wait reaps the child: first it waits without reaping, kills what is left of the child's process group (the group
// id stays ours while the leader is an unreaped zombie), then reaps.
func (p *Proc) wait() {
	pid := p.Cmd.Process.Pid
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err == nil || !errors.Is(err, unix.EINTR) {
			break
		}
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	p.err = p.Cmd.Wait()
	liveMu.Lock()
	delete(live, p)
	liveMu.Unlock()
	close(p.done)
}

// Done is closed when the process has exited and been reaped.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns what exec.Cmd.Wait returned.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Exited reports whether the process has exited, and its Wait error if so.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Pid is the child's process id (and its process group id).
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Signal sends sig to the child's process group while the child has not been reaped.
func (p *Proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	return killGroup(p.Cmd, sig)
}

// Stop sends SIGTERM to the process group, waits up to grace, then SIGKILLs the group, and returns the Wait error.
func (p *Proc) Stop(grace time.Duration) error {
	_ = p.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.Signal(syscall.SIGKILL)
		<-p.done
	}
	return p.err
}

func killGroup(cmd *exec.Cmd, sig syscall.Signal) error {
	if cmd.Process == nil {
		return nil
	}
	if err := syscall.Kill(-cmd.Process.Pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal process group %d: %w", cmd.Process.Pid, err)
	}
	return nil
}

// KillAll SIGKILLs the process group of every child still running and waits for them. Call it on the way out
// (TestMain after m.Run, a tool's exit path) so that nothing is left even when a cleanup was skipped.
func KillAll() {
	liveMu.Lock()
	ps := make([]*Proc, 0, len(live))
	for p := range live {
		ps = append(ps, p)
	}
	liveMu.Unlock()
	for _, p := range ps {
		_ = p.Signal(syscall.SIGKILL)
	}
	for _, p := range ps {
		<-p.done
	}
}

// Run starts cmd with Start and waits for it (exec.Cmd.Run).
func Run(cmd *exec.Cmd) error {
	p, err := Start(cmd)
	if err != nil {
		return err
	}
	return p.Wait()
}

// Output runs cmd and returns its standard output (exec.Cmd.Output: on failure the error is an *exec.ExitError
// carrying the standard error, unless cmd.Stderr was set).
func Output(cmd *exec.Cmd) ([]byte, error) {
	if cmd.Stdout != nil {
		return nil, errors.New("proc: Stdout already set")
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	captureErr := cmd.Stderr == nil
	if captureErr {
		cmd.Stderr = &stderr
	}
	err := Run(cmd)
	var ee *exec.ExitError
	if captureErr && errors.As(err, &ee) {
		ee.Stderr = stderr.Bytes()
	}
	return stdout.Bytes(), err
}

// CombinedOutput runs cmd and returns its standard output and standard error together.
func CombinedOutput(cmd *exec.Cmd) ([]byte, error) {
	if cmd.Stdout != nil || cmd.Stderr != nil {
		return nil, errors.New("proc: Stdout or Stderr already set")
	}
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := Run(cmd)
	return b.Bytes(), err
}
