package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults of ManagerOptions.
const (
	DefaultWorkers        = 8
	DefaultRequestTimeout = 30 * time.Second
	DefaultInitialBackoff = 500 * time.Millisecond
	DefaultMaxBackoff     = 150 * time.Second
)

// ManagerOptions configures NewManager.
type ManagerOptions struct {
	// Issuer obtains certificates. Required.
	Issuer Issuer
	// Logger; nil discards.
	Logger *slog.Logger
	// Workers bounds concurrent background issuance (prefetch and renewal), default DefaultWorkers.
	// On-demand fetches are not bounded by it and never queue behind background work.
	Workers int
	// RequestTimeout bounds one Issue call (default DefaultRequestTimeout).
	RequestTimeout time.Duration
	// InitialBackoff and MaxBackoff shape the retry delay after a failed issuance: InitialBackoff doubled per
	// consecutive failure, capped at MaxBackoff (defaults DefaultInitialBackoff, DefaultMaxBackoff).
	InitialBackoff, MaxBackoff time.Duration
}

// Manager holds one certificate per workload identity needed on the node.
//
// Fetch returns the current certificate, fetching it on demand; concurrent requests for one identity share a
// single issuance. Every held certificate is renewed in the background at half-life; a failed renewal is
// retried with exponential backoff while the old certificate is served for as long as it is valid. An expired
// certificate is never returned. Background work (Prefetch, renewals) runs on the workers started by Run;
// on-demand issuance runs at once on its own goroutine. All goroutines end by Close or when Run's context
// ends. Methods are safe for concurrent use.
type Manager struct {
	issuer     Issuer
	log        *slog.Logger
	workers    int
	reqTimeout time.Duration
	backoff0   time.Duration
	backoffMax time.Duration

	ctx    context.Context // cancelled by Close; parent of every issuance
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the Manager starts
	wake   chan struct{}  // signals workers that queue is not empty

	// view is a copy-on-write snapshot of entries for the lock-free fast path of Fetch; it is replaced
	// (under mu) whenever an identity is added or forgotten.
	view atomic.Pointer[map[spiffeid.ID]*entry]

	mu      sync.Mutex
	entries map[spiffeid.ID]*entry
	queue   []*entry // background jobs in arrival order
	running bool
	closed  bool
}

// entry is the state of one identity. cur mirrors cert for the lock-free fast path of Fetch.
type entry struct {
	id  spiffeid.ID
	cur atomic.Pointer[Certificate]

	// Guarded by Manager.mu.
	cert     *Certificate
	call     *call // pending or running issuance
	timer    *time.Timer
	timerGen uint64
	next     time.Time // when the timer fires
	failures int
	lastErr  error
	gone     bool // forgotten
}

// call is one issuance shared by every Fetch waiting for it.
type call struct {
	started bool          // guarded by Manager.mu
	done    chan struct{} // closed when cert/err are set
	cert    *Certificate
	err     error
}

// NewManager returns a Manager; call Run to start background renewal.
func NewManager(opts ManagerOptions) (*Manager, error) {
	if opts.Issuer == nil {
		return nil, errors.New("create identity manager: nil issuer")
	}
	m := &Manager{
		issuer:     opts.Issuer,
		log:        opts.Logger,
		workers:    opts.Workers,
		reqTimeout: opts.RequestTimeout,
		backoff0:   opts.InitialBackoff,
		backoffMax: opts.MaxBackoff,
		wake:       make(chan struct{}, 1),
		entries:    make(map[spiffeid.ID]*entry),
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.workers <= 0 {
		m.workers = DefaultWorkers
	}
	if m.reqTimeout <= 0 {
		m.reqTimeout = DefaultRequestTimeout
	}
	if m.backoff0 <= 0 {
		m.backoff0 = DefaultInitialBackoff
	}
	if m.backoffMax <= 0 {
		m.backoffMax = DefaultMaxBackoff
	}
	m.view.Store(&map[spiffeid.ID]*entry{})
	m.ctx, m.cancel = context.WithCancel(context.Background())
	return m, nil
}

// Run starts the background workers and blocks until ctx ends or Close is called; then it closes the
// Manager, waits for every goroutine it started, and returns nil. A Manager runs at most once.
func (m *Manager) Run(ctx context.Context) error {
	m.mu.Lock()
	switch {
	case m.closed:
		m.mu.Unlock()
		return ErrClosed
	case m.running:
		m.mu.Unlock()
		return errors.New("run identity manager: already running")
	}
	m.running = true
	m.wg.Add(m.workers)
	for range m.workers {
		go m.worker()
	}
	m.mu.Unlock()
	select {
	case <-ctx.Done():
	case <-m.ctx.Done():
	}
	return m.Close()
}

// Close stops background work, cancels in-flight issuance, and waits for every goroutine the Manager started.
// Fetch then fails with ErrClosed. Close is idempotent.
func (m *Manager) Close() error {
	m.mu.Lock()
	if !m.closed {
		m.closed = true
		for _, e := range m.entries {
			m.stopTimerLocked(e)
		}
		m.queue = nil
	}
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	return nil
}

// Fetch returns a valid certificate for id, fetching one if none is held. Concurrent calls for the same id
// share one issuance. Fetch never returns an expired certificate. If the identity has no valid certificate and
// its last issuance failed, Fetch fails at once with ErrUnavailable (wrapping the cause) until the background
// retry is due. The identity stays managed (renewed) until Forget.
func (m *Manager) Fetch(ctx context.Context, id spiffeid.ID) (*Certificate, error) {
	if e := (*m.view.Load())[id]; e != nil {
		if c := e.cur.Load(); c != nil && c.ValidAt(time.Now()) {
			return c, nil
		}
	}
	return m.fetchSlow(ctx, id)
}

func (m *Manager) fetchSlow(ctx context.Context, id spiffeid.ID) (*Certificate, error) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, fmt.Errorf("fetch %s: %w", id, ErrClosed)
	}
	e := m.entryLocked(id)
	now := time.Now()
	if e.cert != nil && e.cert.ValidAt(now) {
		m.mu.Unlock()
		return e.cert, nil
	}
	c := e.call
	switch {
	case c != nil && !c.started:
		m.runLocked(e, c) // promote a queued background job
	case c != nil:
	case e.failures > 0 && now.Before(e.next):
		err := e.lastErr
		next := e.next
		m.mu.Unlock()
		return nil, fmt.Errorf("fetch %s: %w (retry in %v): %w", id, ErrUnavailable, next.Sub(now).Round(time.Millisecond), err)
	default:
		c = m.newCallLocked(e)
		m.runLocked(e, c)
	}
	m.mu.Unlock()

	select {
	case <-c.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("fetch %s: %w", id, ctx.Err())
	case <-m.ctx.Done():
		return nil, fmt.Errorf("fetch %s: %w", id, ErrClosed)
	}
	if c.err != nil {
		return nil, fmt.Errorf("fetch %s: %w", id, c.err)
	}
	if !c.cert.ValidAt(time.Now()) {
		return nil, fmt.Errorf("fetch %s: %w", id, ErrExpired)
	}
	return c.cert, nil
}

// Prefetch starts managing id and queues a low-priority fetch if no valid certificate is held. It does not
// wait; the fetch runs on Run's workers.
func (m *Manager) Prefetch(id spiffeid.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return
	}
	e := m.entryLocked(id)
	if e.call != nil || (e.cert != nil && e.cert.ValidAt(time.Now())) {
		return
	}
	if e.failures > 0 {
		return // a retry is already scheduled
	}
	m.enqueueLocked(e)
}

// Refresh queues a background re-issuance of id now, ahead of its schedule, and resets its backoff. It is a
// no-op for identities that are not managed. Issuers that learn of rotated certificates by themselves (the
// Workload API) use it to hand them over promptly.
func (m *Manager) Refresh(id spiffeid.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[id]
	if m.closed || e == nil || e.call != nil {
		return
	}
	m.stopTimerLocked(e)
	e.failures = 0
	m.enqueueLocked(e)
}

// Forget stops managing id: its certificate is dropped and no more renewals happen. An issuance in flight
// still completes for the Fetch calls waiting on it.
func (m *Manager) Forget(id spiffeid.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.entries[id]
	if e == nil {
		return
	}
	delete(m.entries, id)
	m.publishLocked()
	e.gone = true
	m.stopTimerLocked(e)
	e.cur.Store(nil)
}

func (m *Manager) entryLocked(id spiffeid.ID) *entry {
	e := m.entries[id]
	if e == nil {
		e = &entry{id: id}
		m.entries[id] = e
		m.publishLocked()
	}
	return e
}

// publishLocked replaces the Fetch fast-path view with a copy of entries. Identities change at workload
// churn rate, so the O(n) copy is cheap next to a certificate issuance.
func (m *Manager) publishLocked() {
	v := make(map[spiffeid.ID]*entry, len(m.entries))
	for id, e := range m.entries {
		v[id] = e
	}
	m.view.Store(&v)
}

func (m *Manager) newCallLocked(e *entry) *call {
	c := &call{done: make(chan struct{})}
	e.call = c
	return c
}

// runLocked starts c now on its own goroutine (on-demand priority).
func (m *Manager) runLocked(e *entry, c *call) {
	c.started = true
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		m.issue(e, c)
	}()
}

// enqueueLocked creates a background call for e and hands it to the workers.
func (m *Manager) enqueueLocked(e *entry) {
	m.newCallLocked(e)
	m.queue = append(m.queue, e)
	m.signal()
}

func (m *Manager) signal() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

func (m *Manager) worker() {
	defer m.wg.Done()
	for {
		e, c := m.nextJob()
		if e == nil {
			select {
			case <-m.wake:
				continue
			case <-m.ctx.Done():
				return
			}
		}
		m.issue(e, c)
	}
}

// nextJob pops the next background job that is still wanted and marks it started.
func (m *Manager) nextJob() (*entry, *call) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(m.queue) > 0 {
		e := m.queue[0]
		m.queue[0] = nil
		m.queue = m.queue[1:]
		c := e.call
		if e.gone || c == nil || c.started {
			continue
		}
		c.started = true
		if len(m.queue) > 0 {
			m.signal() // let another worker take the rest
		}
		return e, c
	}
	return nil, nil
}

// issue performs one issuance for e and publishes the outcome to e and to the waiters of c.
func (m *Manager) issue(e *entry, c *call) {
	ctx, cancel := context.WithTimeout(m.ctx, m.reqTimeout)
	cert, err := m.issuer.Issue(ctx, e.id)
	cancel()
	now := time.Now()
	if err == nil {
		switch {
		case cert == nil || cert.ID() != e.id:
			err = fmt.Errorf("issuer answered for another identity: %w", ErrIdentityMismatch)
		case !cert.ValidAt(now):
			err = fmt.Errorf("issuer returned a certificate that expired at %v: %w", cert.NotAfter(), ErrExpired)
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if e.call == c {
		e.call = nil
	}
	if err != nil {
		c.err = err
		if !e.gone && !m.closed {
			m.failLocked(e, err, now)
		}
		close(c.done)
		return
	}
	if e.gone {
		c.cert = cert
		close(c.done)
		return
	}
	if old := e.cert; old == nil || !old.ValidAt(now) ||
		(!cert.NotAfter().Before(old.NotAfter()) && cert.Leaf().SerialNumber.Cmp(old.Leaf().SerialNumber) != 0) {
		e.cert = cert
		e.cur.Store(cert)
		m.log.Info("certificate issued", "identity", e.id.String(), "serial", cert.Leaf().SerialNumber.String(),
			"not_before", cert.NotBefore(), "not_after", cert.NotAfter())
	}
	c.cert = e.cert
	if m.closed {
		close(c.done)
		return
	}
	if due := e.cert.RefreshAt(); due.After(now) {
		e.failures, e.lastErr = 0, nil
		m.scheduleLocked(e, due)
	} else {
		m.failLocked(e, fmt.Errorf("%w (valid until %v)", errNotFresher, e.cert.NotAfter()), now)
	}
	close(c.done)
}

// failLocked records a failure and schedules the retry with exponential backoff.
func (m *Manager) failLocked(e *entry, err error, now time.Time) {
	e.failures++
	e.lastErr = err
	d := backoff(m.backoff0, m.backoffMax, e.failures)
	m.log.Warn("certificate issuance failed", "identity", e.id.String(), "failures", e.failures, "retry_in", d,
		"have_valid_cert", e.cert != nil && e.cert.ValidAt(now), "err", err)
	m.scheduleLocked(e, now.Add(d))
}

// backoff returns initial doubled for every failure after the first, capped at max.
func backoff(initial, maxDelay time.Duration, failures int) time.Duration {
	d := initial
	for i := 1; i < failures; i++ {
		d *= 2
		if d >= maxDelay {
			return maxDelay
		}
	}
	return min(d, maxDelay)
}

// scheduleLocked arranges a background issuance for e at t, replacing any earlier schedule.
func (m *Manager) scheduleLocked(e *entry, t time.Time) {
	m.stopTimerLocked(e)
	e.next = t
	gen := e.timerGen
	e.timer = time.AfterFunc(time.Until(t), func() { m.onTimer(e, gen) })
}

func (m *Manager) stopTimerLocked(e *entry) {
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
	e.timerGen++
}

func (m *Manager) onTimer(e *entry, gen uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed || e.gone || gen != e.timerGen || e.call != nil {
		return
	}
	e.timer = nil
	m.enqueueLocked(e)
}
