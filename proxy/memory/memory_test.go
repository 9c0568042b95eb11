package memory

import (
	"context"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/test/testutil"
)

func TestDecide(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	def := Policy{}
	cases := []struct {
		name       string
		p          Policy
		s          State
		goroutines int
		now        time.Time
		release    bool
		next       State
	}{
		{"first sample sets the peak", def, State{}, 40, t0, false, State{Peak: 40, Prev: 40}},
		{"growth raises the peak", def, State{Peak: 40, Prev: 40}, 20040, t0, false, State{Peak: 20040, Prev: 20040}},
		{"still falling: wait for the close to finish", def, State{Peak: 20040, Prev: 20040}, 60, t0,
			false, State{Peak: 20040, Prev: 60}},
		{"burst ended: release, new peak from now", def, State{Peak: 20040, Prev: 60}, 60, t0,
			true, State{Peak: 60, Last: t0, Prev: 60}},
		{"fell to half exactly", def, State{Peak: 4000, Prev: 2500}, 2000, t0, true, State{Peak: 2000, Last: t0, Prev: 2000}},
		{"fell by less than half", def, State{Peak: 4000, Prev: 2500}, 2001, t0, false, State{Peak: 4000, Prev: 2001}},
		{"fell by half but fewer than MinDrop", def, State{Peak: 1500, Prev: 600}, 600, t0, false, State{Peak: 1500, Prev: 600}},
		{"MinDrop lowered", Policy{MinDrop: 500}, State{Peak: 1500, Prev: 700}, 600, t0,
			true, State{Peak: 600, Last: t0, Prev: 600}},
		{"too soon after the last release", def, State{Peak: 20000, Last: t0, Prev: 60}, 60, t0.Add(9 * time.Second),
			false, State{Peak: 20000, Last: t0, Prev: 60}},
		{"interval passed", def, State{Peak: 20000, Last: t0, Prev: 60}, 60, t0.Add(10 * time.Second),
			true, State{Peak: 60, Last: t0.Add(10 * time.Second), Prev: 60}},
		{"longer interval", Policy{Interval: time.Minute}, State{Peak: 20000, Last: t0, Prev: 60}, 60, t0.Add(30 * time.Second),
			false, State{Peak: 20000, Last: t0, Prev: 60}},
		{"disabled: tracks the peak, never releases", Policy{Interval: -1}, State{Peak: 20000, Prev: 60}, 60, t0,
			false, State{Peak: 20000, Prev: 60}},
		{"steady high load: no release", def, State{Peak: 10000, Last: t0, Prev: 9900}, 9800, t0.Add(time.Hour),
			false, State{Peak: 10000, Last: t0, Prev: 9800}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			release, next := Decide(c.p, c.s, c.goroutines, c.now)
			if release != c.release || next != c.next {
				t.Errorf("Decide(%+v, %+v, %d) = %v, %+v; want %v, %+v", c.p, c.s, c.goroutines, release, next,
					c.release, c.next)
			}
		})
	}
}

// TestReleaserAfterBurst runs the releaser against this process's own goroutines: a burst of 3,000 parked
// goroutines, then their end, must make it release (and only then: nothing is released while they run).
func TestReleaserAfterBurst(t *testing.T) {
	testutil.CheckGoroutines(t)
	ctx, cancel := context.WithCancel(t.Context())
	released := make(chan int, 1)
	r := &Releaser{Policy: Policy{Sample: time.Millisecond}, Release: func() {
		select {
		case released <- runtime.NumGoroutine():
		default:
		}
	}}
	hold := make(chan struct{})
	var burst sync.WaitGroup
	for range 3000 {
		burst.Go(func() { <-hold })
	}
	var done sync.WaitGroup
	done.Go(func() { r.Run(ctx) })
	defer func() { cancel(); done.Wait() }()
	// Let the releaser see the burst as its peak: wait for a few of its samples.
	seen := []metrics.Sample{{Name: goroutinesMetric}}
	metrics.Read(seen)
	if seen[0].Value.Uint64() < 3000 {
		t.Fatalf("goroutines metric = %d with 3,000 parked", seen[0].Value.Uint64())
	}
	tick := time.NewTicker(time.Millisecond)
	for range 20 {
		<-tick.C
	}
	tick.Stop()
	select {
	case n := <-released:
		t.Fatalf("released during the burst (%d goroutines)", n)
	default:
	}
	close(hold)
	burst.Wait()
	n := <-released
	if n >= 1500 {
		t.Errorf("released with %d goroutines, want well below the burst's 3,000", n)
	}
}

func TestReleaserDisabled(t *testing.T) {
	r := &Releaser{Policy: Policy{Interval: -1}, Release: func() { t.Error("released while disabled") }}
	if err := r.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// TestReleaserExtra: connections counted through Extra (idle relays hold no goroutine) make a burst too;
// their end makes the releaser release, with no change in the goroutine count.
func TestReleaserExtra(t *testing.T) {
	testutil.CheckGoroutines(t)
	ctx, cancel := context.WithCancel(t.Context())
	var conns atomic.Int64
	conns.Store(3000)
	samples := make(chan struct{}, 1)
	released := make(chan int64, 1)
	r := &Releaser{Policy: Policy{Sample: time.Millisecond},
		Extra: func() int {
			select {
			case samples <- struct{}{}:
			default:
			}
			return int(conns.Load())
		},
		Release: func() {
			select {
			case released <- conns.Load():
			default:
			}
		}}
	var done sync.WaitGroup
	done.Go(func() { r.Run(ctx) })
	defer func() { cancel(); done.Wait() }()
	for range 3 { // a few samples see the burst as the peak
		<-samples
	}
	select {
	case n := <-released:
		t.Fatalf("released during the burst (%d connections)", n)
	default:
	}
	conns.Store(0)
	if n := <-released; n != 0 {
		t.Errorf("released with %d connections, want after they ended", n)
	}
}
