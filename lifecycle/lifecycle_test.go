package lifecycle

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// app records the order Run calls it in.
type app struct {
	calls   []string
	start   func(g *Group) error
	drained bool
}

func (a *app) Start(g *Group) error {
	a.calls = append(a.calls, "start")
	return a.start(g)
}

func (a *app) Drain(ctx context.Context) {
	a.calls = append(a.calls, "drain")
	_, a.drained = ctx.Deadline()
}

func (a *app) Close() { a.calls = append(a.calls, "close") }

func TestRunStopsOnCancel(t *testing.T) {
	tu.CheckGoroutines(t)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	a := &app{start: func(g *Group) error {
		g.Go("serve", func(ctx context.Context) error {
			<-ctx.Done()
			close(stopped)
			return errors.New("listener closed") // after the group stopped: part of stopping
		})
		cancel()
		return nil
	}}
	if err := Run(ctx, a, time.Second, nil); err != nil {
		t.Fatalf("Run = %v", err)
	}
	<-stopped
	if strings.Join(a.calls, ",") != "start,drain,close" || !a.drained {
		t.Errorf("calls %v, drain with a deadline %v", a.calls, a.drained)
	}
}

func TestRunStopsOnComponentFailure(t *testing.T) {
	tu.CheckGoroutines(t)
	boom := errors.New("boom")
	other := make(chan struct{})
	a := &app{start: func(g *Group) error {
		g.Go("other", func(ctx context.Context) error { <-ctx.Done(); close(other); return ctx.Err() })
		g.Go("broken", func(context.Context) error { return boom })
		return nil
	}}
	err := Run(context.Background(), a, time.Second, nil)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "broken: boom") {
		t.Fatalf("Run = %v, want the failed component's error", err)
	}
	<-other
	if strings.Join(a.calls, ",") != "start,drain,close" {
		t.Errorf("calls %v", a.calls)
	}
}

func TestRunFailedStart(t *testing.T) {
	tu.CheckGoroutines(t)
	bind := errors.New("listen: address in use")
	a := &app{start: func(g *Group) error {
		g.Go("early", func(ctx context.Context) error { <-ctx.Done(); return nil })
		return bind
	}}
	if err := Run(context.Background(), a, time.Second, nil); !errors.Is(err, bind) {
		t.Fatalf("Run = %v", err)
	}
	if strings.Join(a.calls, ",") != "start,close" {
		t.Errorf("calls %v: a failed start is closed, not drained", a.calls)
	}
}
