//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"
)

// stack is shared by every test of the tier: starting it takes seconds, building it minutes.
var stack *Stack

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	bin, err := FindBinaries()
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "ambit-e2e-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		return 1
	}
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
		os.RemoveAll(dir)
	} else {
		fmt.Fprintf(os.Stderr, "e2e: state and logs kept in %s\n", dir)
	}
	return code
}
