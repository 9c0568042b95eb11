package hbone

import (
	"sync"
	"time"
)

// deadline is a resettable deadline for one direction of a Stream, in the shape of net.Pipe's: wait
// returns a channel that is closed while the deadline has passed. The channel is created on first set, so
// streams that never set a deadline carry neither channel nor timer.
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	cancel chan struct{} // closed while the deadline has passed; nil until the first set
}

// set arms the deadline for t; the zero time disarms it. A time in the past fires at once.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cancel == nil {
		d.cancel = make(chan struct{})
	}
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel // the callback ran or is running: wait until it has closed cancel
	}
	d.timer = nil
	closed := isClosed(d.cancel)
	if t.IsZero() {
		if closed {
			d.cancel = make(chan struct{})
		}
		return
	}
	if dur := time.Until(t); dur > 0 {
		if closed {
			d.cancel = make(chan struct{})
		}
		c := d.cancel
		d.timer = time.AfterFunc(dur, func() { close(c) })
		return
	}
	if !closed {
		close(d.cancel)
	}
}

// wait returns a channel closed while the deadline has passed; nil (never ready) if never set.
func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cancel
}

// waitAlloc is wait, but creates the channel if needed, so that a later set (Close expires the write
// deadline to interrupt writers) is always seen.
func (d *deadline) waitAlloc() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cancel == nil {
		d.cancel = make(chan struct{})
	}
	return d.cancel
}

// expire makes the deadline pass now if anything waits on it (its channel exists); it does not allocate.
func (d *deadline) expire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cancel == nil {
		return
	}
	if d.timer != nil && !d.timer.Stop() {
		<-d.cancel
	}
	d.timer = nil
	if !isClosed(d.cancel) {
		close(d.cancel)
	}
}

// stop releases the timer, if any.
func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
