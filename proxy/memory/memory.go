// Package memory returns the memory of connection bursts to the operating system. Go's runtime keeps the
// heap and the goroutine stacks of a burst (10,000 connections: ~400 MB) mapped after the connections close:
// an idle process runs no garbage collection for up to two minutes, and the background scavenger then
// releases what it keeps above the heap goal at a low pace. Releaser samples the number of goroutines (plus, through
// Releaser.Extra, the relayed connections, which hold none while idle, and the HBONE connections, weighted
// by ConnWeight) and, when it has fallen well below its recent peak, runs
// runtime/debug.FreeOSMemory (a garbage collection that returns every free page to the OS), at most once per
// interval. The decision is Decide, a pure function.
//
// The policy for the rest is the Go runtime's own, set from the environment: GOGC (default 100) paces the
// collector; GOMEMLIMIT (unset by default; the Helm chart sets it from the container's memory limit) makes it
// collect harder and scavenge down to the limit as the process nears it.
//
// It imports only the standard library.
package memory

import (
	"context"
	"log/slog"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Policy tunes when memory is released. The zero value of a field means its default.
type Policy struct {
	// Interval is the minimum time between two releases (default 10 s; negative: never release).
	Interval time.Duration
	// Sample is how often the goroutine count is read (default 2 s).
	Sample time.Duration
	// MinDrop is the fall below the peak, in goroutines, that counts as the end of a burst (default 1,000:
	// a few hundred connections leave too little behind to be worth a collection).
	MinDrop int
}

// ConnWeight is what one HBONE connection (hbone.LiveConns) counts for in the sampled count, against
// one for a goroutine or an idle relayed connection: measured, an idle HBONE connection held ~130 KB of
// RSS once the pool trimmed it (its TLS state, HPACK tables, reader, goroutine), a relayed connection
// ~6 KB; 16 makes the trimming of a burst's 100 pooled connections (1,600) count as the end of a burst.
const ConnWeight = 16

// Defaults of Policy.
const (
	DefaultInterval = 10 * time.Second
	DefaultSample   = 2 * time.Second
	DefaultMinDrop  = 1000
)

func (p Policy) withDefaults() Policy {
	if p.Interval == 0 {
		p.Interval = DefaultInterval
	}
	if p.Sample <= 0 {
		p.Sample = DefaultSample
	}
	if p.MinDrop <= 0 {
		p.MinDrop = DefaultMinDrop
	}
	return p
}

// State is what Decide remembers between samples. The zero value is the state before the first sample.
type State struct {
	// Peak is the highest goroutine count since the last release (or the start).
	Peak int
	// Last is when memory was last released (zero: never).
	Last time.Time
	// Prev is the count at the previous sample.
	Prev int
}

// Decide returns whether to release memory now, given the goroutine count just sampled, and the next state.
// It releases when the count has fallen to at most half of the peak and by at least p.MinDrop goroutines,
// has stopped falling (less than p.MinDrop below the previous sample: a release in the middle of a mass close
// would leave the rest of the burst's memory for the next one), and the last release is at least p.Interval
// ago; a release starts a new peak from the current count.
func Decide(p Policy, s State, goroutines int, now time.Time) (release bool, next State) {
	p = p.withDefaults()
	next = s
	next.Peak = max(s.Peak, goroutines)
	next.Prev = goroutines
	if p.Interval < 0 {
		return false, next
	}
	fell := next.Peak-goroutines >= p.MinDrop && goroutines <= next.Peak/2
	falling := s.Prev-goroutines >= p.MinDrop
	if !fell || falling || (!s.Last.IsZero() && now.Sub(s.Last) < p.Interval) {
		return false, next
	}
	return true, State{Peak: goroutines, Last: now, Prev: goroutines}
}

// Releaser runs the policy. Create it with a Policy and a Logger (nil discards), then Run it.
type Releaser struct {
	Policy Policy
	Logger *slog.Logger
	// Release returns memory to the OS (nil: Release).
	Release func()
	// Extra, when set, is added to every goroutine count sampled: connections that hold no goroutine
	// while idle (relay.Live), so that their end still counts as the end of a burst.
	Extra func() int
}

// Release returns the memory a burst left behind: two garbage collections, as sync.Pool keeps what it held
// through one (its victim cache), then debug.FreeOSMemory, which collects once more and returns every free
// page to the OS.
func Release() {
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
}

const goroutinesMetric = "/sched/goroutines:goroutines"

// Run samples and releases until ctx ends. It returns nil at once when the policy never releases.
func (r *Releaser) Run(ctx context.Context) error {
	p := r.Policy.withDefaults()
	if p.Interval < 0 {
		return nil
	}
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	release := r.Release
	if release == nil {
		release = Release
	}
	sample := []metrics.Sample{{Name: goroutinesMetric}}
	var st State
	t := time.NewTicker(p.Sample)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			metrics.Read(sample)
			if sample[0].Value.Kind() != metrics.KindUint64 {
				return nil // not this runtime's metric: nothing to decide on
			}
			n := int(sample[0].Value.Uint64())
			if r.Extra != nil {
				n += r.Extra()
			}
			peak := st.Peak
			var ok bool
			if ok, st = Decide(p, st, n, now); ok {
				start := time.Now()
				release()
				log.Debug("returned memory to the OS after a burst", "goroutines", n, "peak", max(peak, n),
					"took", time.Since(start))
			}
		}
	}
}
