package lab_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"

	"github.com/ambit-mesh/ambit/test/lab"
)

// helperEnv makes the test binary a helper process that builds a lab and holds it until killed:
// "hold" (a default-named lab) or "hold NAME". It prints the lab's name, or "error: ...".
const helperEnv = "AMBIT_LAB_TEST_HELPER"

func TestMain(m *testing.M) {
	if role := os.Getenv(helperEnv); role != "" {
		os.Exit(helper(role))
	}
	os.Exit(m.Run())
}

func helper(role string) int {
	_, name, _ := strings.Cut(role, " ")
	l, err := lab.New(context.Background(), lab.Options{Nodes: 1, PodsPerNode: 1, Name: name})
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println(l.Name)
	_, _ = bufio.NewReader(os.Stdin).ReadString('\n') // until killed (or stdin closes: then exit without Close)
	return 0
}

// holder is a helper process holding a lab.
type holder struct {
	cmd  *exec.Cmd
	name string
}

// startHolder starts a helper that builds a lab (named name, or by default) and returns once the lab is up; if the
// helper fails, it returns its error line.
func startHolder(t *testing.T, name string) (*holder, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.TrimSpace("hold "+name))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{cmd: cmd}
	t.Cleanup(func() {
		stdin.Close()
		h.kill()
		if h.name != "" { // the helper died without closing its lab: remove it, as the next Sweep would
			if err := lab.Remove(h.name); err != nil {
				t.Errorf("remove the helper's lab: %v", err)
			}
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	line = strings.TrimSpace(line)
	if err != nil || strings.HasPrefix(line, "error:") {
		h.kill()
		return nil, fmt.Sprintf("helper: %s %v", line, err)
	}
	h.name = line
	return h, ""
}

// kill SIGKILLs the helper (no cleanup of its own runs) and reaps it.
func (h *holder) kill() {
	if h.cmd.ProcessState == nil {
		_ = h.cmd.Process.Kill()
		_ = h.cmd.Wait()
	}
}
