package identity

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/testutil"
)

// The real Workload API is exercised against SPIRE in test/spire; this covers the no-agent path.
func TestWorkloadAPIWithoutAgent(t *testing.T) {
	testutil.CheckGoroutines(t)
	api := NewWorkloadAPI(WorkloadAPIOptions{Address: "unix://" + filepath.Join(t.TempDir(), "missing.sock")})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := api.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	defer func() {
		cancel()
		wg.Wait()
	}()

	ictx, icancel := context.WithTimeout(ctx, 2*time.Second)
	defer icancel()
	_, err := api.Issue(ictx, testID)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Issue without an agent: %v, want deadline exceeded", err)
	}
	t.Logf("Issue without an agent: %v", err)

	// Behind a Manager the failure is recorded and retried, never turned into a certificate.
	m, err := NewManager(ManagerOptions{Issuer: api, RequestTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Fetch(ctx, testID); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Fetch without an agent: %v", err)
	}
	if st := m.Snapshot(); len(st) != 1 || st[0].State != StateUnavailable {
		t.Fatalf("snapshot: %+v", st)
	}
}

func TestWorkloadAPIBadAddress(t *testing.T) {
	api := NewWorkloadAPI(WorkloadAPIOptions{Address: "tcp://not-an-ip:1"})
	if err := api.Run(context.Background()); err == nil {
		t.Fatal("Run accepted an invalid address")
	}
}
