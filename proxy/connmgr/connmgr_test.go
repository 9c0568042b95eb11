package connmgr

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestRecheckAndDrain(t *testing.T) {
	var m Manager
	var allowed atomic.Bool
	allowed.Store(true)
	ctxA, cancelA := context.WithCancelCause(context.Background())
	untrackA := m.Track(&Conn{Direction: Inbound, Recheck: allowed.Load}, cancelA)
	ctxB, cancelB := context.WithCancelCause(context.Background())
	untrackB := m.Track(&Conn{Direction: Outbound}, cancelB)
	if m.Len() != 2 || len(m.Snapshot()) != 2 {
		t.Fatalf("len = %d", m.Len())
	}
	if n := m.Recheck(); n != 0 || ctxA.Err() != nil {
		t.Fatalf("allowed connection closed: %d", n)
	}
	allowed.Store(false)
	if n := m.Recheck(); n != 1 || !errors.Is(context.Cause(ctxA), ErrPolicyChanged) {
		t.Fatalf("recheck closed %d, cause %v", n, context.Cause(ctxA))
	}
	if ctxB.Err() != nil {
		t.Fatal("outbound connection without Recheck closed")
	}
	untrackA()

	// Drain returns when the last connection ends...
	go func() {
		time.Sleep(20 * time.Millisecond)
		untrackB()
	}()
	if err := m.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	// ...or closes what is left at the deadline.
	ctxC, cancelC := context.WithCancelCause(context.Background())
	untrackC := m.Track(&Conn{}, cancelC)
	defer untrackC()
	dctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if err := m.Drain(dctx); !errors.Is(err, context.DeadlineExceeded) || !errors.Is(context.Cause(ctxC), ErrShutdown) {
		t.Fatalf("drain = %v, cause %v", err, context.Cause(ctxC))
	}
}
