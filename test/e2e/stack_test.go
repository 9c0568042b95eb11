package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/testutil"
)

// A port chosen for a peer can be taken before the peer binds it: spawnListening must start the peer again on new
// ports instead of failing the tier.
func TestSpawnListeningRetriesWhenThePortIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	picks := 0
	s := &Stack{Dir: t.TempDir(), pickPorts: func(n int) ([]int, error) {
		picks++
		if picks == 1 {
			return []int{taken.Addr().(*net.TCPAddr).Port}, nil // as if another process bound it first
		}
		return testutil.FreePorts(n)
	}}
	defer s.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ports, err := s.spawnListening(ctx, "stand-in", 1, func(ports []int) launch {
		return launch{env: []string{fmt.Sprintf("%s=listen %d", helperEnv, ports[0])}, bin: os.Args[0], args: []string{"-test.run=^$"},
			readiness: 30 * time.Second, ready: func() error { return httpOK(ctx, nil, fmt.Sprintf("http://127.0.0.1:%d/", ports[0]), "") }}
	})
	if err != nil {
		t.Fatalf("spawnListening: %v", err)
	}
	if picks != 2 || ports[0] == taken.Addr().(*net.TCPAddr).Port {
		t.Errorf("picked ports %d times, ready on %v; want a second pick and a new port", picks, ports)
	}
	if len(s.procs) != 1 {
		t.Errorf("%d peers recorded, want the one that became ready", len(s.procs))
	}
}

// A peer that fails for another reason is not retried.
func TestSpawnListeningReportsOtherFailures(t *testing.T) {
	s := &Stack{Dir: t.TempDir(), pickPorts: testutil.FreePorts}
	defer s.Stop()
	picks := 0
	_, err := s.spawnListening(t.Context(), "stand-in", 1, func(ports []int) launch {
		picks++
		return launch{env: []string{helperEnv + "=bogus"}, bin: os.Args[0], args: []string{"-test.run=^$"},
			readiness: 30 * time.Second, ready: func() error { return fmt.Errorf("not yet") }}
	})
	if err == nil || picks != 1 {
		t.Errorf("spawnListening = %v after %d starts; want an error after one", err, picks)
	}
}
