//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/owner"
	"github.com/ambit-mesh/ambit/test/proc"
)

// stack is shared by every test of the tier: starting it takes seconds, building it minutes.
var stack *Stack

func TestMain(m *testing.M) {
	if code, ok := runHelper(); ok {
		os.Exit(code)
	}
	code := run(m)
	proc.KillAll()
	os.Exit(code)
}

func run(m *testing.M) int {
	bin, err := FindBinaries()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	// State of runs that were killed (etcd data, logs) goes now; a run's own state is owned by it (test/owner).
	if removed, err := owner.SweepTemp("ambit-e2e-istiod-"); err != nil || len(removed) > 0 {
		fmt.Fprintf(os.Stderr, "e2e: swept the state of dead runs %v (errors: %v)\n", removed, err)
	}
	tmp, err := owner.MkdirTemp("ambit-e2e-istiod-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	dir := tmp.Path
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	stack, err = Start(ctx, bin, dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: start stack: %v\n", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "e2e: stack up in %v:", time.Since(t0).Round(time.Millisecond))
	for _, t := range stack.Timings {
		fmt.Fprintf(os.Stderr, " %s %v;", t.Phase, t.Took.Round(time.Millisecond))
	}
	fmt.Fprintln(os.Stderr)
	code := m.Run()
	stack.Stop()
	if code == 0 {
		tmp.RemoveAll()
	} else {
		tmp.Keep()
		fmt.Fprintf(os.Stderr, "e2e: state and logs kept in %s\n", dir)
	}
	return code
}
