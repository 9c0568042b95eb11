package identity

import (
	"context"
	"encoding/json"
	"errors"
	"maps"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var errBoom = errors.New("ca down")

// faultyIssuer wraps a real LocalCA with call counting and fault injection: failures, a gate that holds
// every call until released, and a sticky mode that keeps returning the last certificate (as a Workload API
// that has not rotated yet does).
type faultyIssuer struct {
	ca *LocalCA

	mu     sync.Mutex
	calls  map[spiffeid.ID]int
	fail   error
	gate   chan struct{}
	sticky bool
	last   map[spiffeid.ID]*Certificate
}

func newFaultyIssuer(t testing.TB, ttl time.Duration) *faultyIssuer {
	return &faultyIssuer{ca: newTestCA(t, ttl), calls: map[spiffeid.ID]int{}, last: map[spiffeid.ID]*Certificate{}}
}

func (f *faultyIssuer) Issue(ctx context.Context, id spiffeid.ID) (*Certificate, error) {
	f.mu.Lock()
	f.calls[id]++
	gate, fail, sticky, last := f.gate, f.fail, f.sticky, f.last[id]
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if fail != nil {
		return nil, fail
	}
	if sticky && last != nil {
		return last, nil
	}
	c, err := f.ca.Issue(ctx, id)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.last[id] = c
	f.mu.Unlock()
	return c, nil
}

func (f *faultyIssuer) set(fn func(f *faultyIssuer)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *faultyIssuer) count(id spiffeid.ID) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[id]
}

// startManager creates a Manager over iss and runs it until the test ends; run=false leaves the background
// workers off. Call it inside a synctest bubble.
func startManager(t *testing.T, iss Issuer, opts ManagerOptions, run bool) *Manager {
	t.Helper()
	opts.Issuer = iss
	m, err := NewManager(opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	if run {
		go func() { done <- m.Run(context.Background()) }()
		synctest.Wait() // Run is up before the test goes on (and before Cleanup closes m)
	} else {
		done <- nil
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Error(err)
		}
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return m
}

func mustFetch(t *testing.T, m *Manager, id spiffeid.ID) *Certificate {
	t.Helper()
	c, err := m.Fetch(context.Background(), id)
	if err != nil {
		t.Fatalf("Fetch(%s): %v", id, err)
	}
	if !c.ValidAt(time.Now()) {
		t.Fatalf("Fetch(%s) returned a certificate that expired at %v (now %v)", id, c.NotAfter(), time.Now())
	}
	return c
}

func TestManagerCoalescesConcurrentFetches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFaultyIssuer(t, time.Hour)
		gate := make(chan struct{})
		iss.set(func(f *faultyIssuer) { f.gate = gate })
		m := startManager(t, iss, ManagerOptions{}, true)

		const n = 32
		got := make([]*Certificate, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() { got[i] = mustFetch(t, m, testID) })
		}
		wg.Go(func() { mustFetch(t, m, testID2) })
		synctest.Wait() // every Fetch is parked on its identity's single in-flight call
		if c1, c2 := iss.count(testID), iss.count(testID2); c1 != 1 || c2 != 1 {
			t.Fatalf("issuer calls while %d fetches wait: %d and %d, want 1 per identity", n, c1, c2)
		}
		if st := m.Snapshot(); len(st) != 2 || st[0].State != StateInitializing {
			t.Fatalf("snapshot while fetching: %+v", st)
		}
		close(gate)
		wg.Wait()
		for i := range got {
			if got[i] != got[0] {
				t.Fatalf("fetch %d got a different certificate", i)
			}
		}
		if c := iss.count(testID); c != 1 {
			t.Fatalf("issuer calls after release: %d, want 1", c)
		}
		// Warm cache: no more issuer calls.
		if c := mustFetch(t, m, testID); c != got[0] || iss.count(testID) != 1 {
			t.Fatal("warm fetch did not return the cached certificate")
		}
	})
}

func TestManagerRenewsAtHalfLife(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFaultyIssuer(t, time.Hour)
		m := startManager(t, iss, ManagerOptions{}, true)
		c1 := mustFetch(t, m, testID)
		if got := m.Snapshot()[0].NextAttempt; !got.Equal(c1.NotBefore().Add(30 * time.Minute)) {
			t.Fatalf("next renewal at %v, want half-life %v", got, c1.NotBefore().Add(30*time.Minute))
		}

		time.Sleep(30*time.Minute - time.Millisecond)
		synctest.Wait()
		if iss.count(testID) != 1 || mustFetch(t, m, testID) != c1 {
			t.Fatal("renewed before half-life")
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		if n := iss.count(testID); n != 2 {
			t.Fatalf("issuer calls at half-life: %d, want 2", n)
		}
		c2 := mustFetch(t, m, testID)
		if c2 == c1 || !c2.NotBefore().Equal(c1.NotBefore().Add(30*time.Minute)) {
			t.Fatalf("after half-life got NotBefore %v, want a renewed certificate from %v", c2.NotBefore(), c1.RefreshAt())
		}
		// And again at the new certificate's half-life.
		time.Sleep(30 * time.Minute)
		synctest.Wait()
		if n := iss.count(testID); n != 3 {
			t.Fatalf("issuer calls after second half-life: %d, want 3", n)
		}
	})
}

func TestManagerNeverServesExpired(t *testing.T) {
	t.Run("no background renewal", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			iss := newFaultyIssuer(t, time.Hour)
			m := startManager(t, iss, ManagerOptions{}, false) // workers off: renewal never runs by itself
			c1 := mustFetch(t, m, testID)
			time.Sleep(time.Hour - time.Second)
			if mustFetch(t, m, testID) != c1 {
				t.Fatal("replaced a valid certificate without background renewal")
			}
			time.Sleep(time.Second) // now == NotAfter: expired
			c2 := mustFetch(t, m, testID)
			if c2 == c1 || iss.count(testID) != 2 {
				t.Fatalf("after expiry: same certificate %v, issuer calls %d", c2 == c1, iss.count(testID))
			}
		})
	})
	t.Run("issuer returns expired certificate", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			iss := newFaultyIssuer(t, time.Hour)
			m := startManager(t, iss, ManagerOptions{}, false)
			mustFetch(t, m, testID)
			iss.set(func(f *faultyIssuer) { f.sticky = true })
			time.Sleep(time.Hour)
			c, err := m.Fetch(context.Background(), testID)
			if !errors.Is(err, ErrExpired) {
				t.Fatalf("Fetch = %v, %v; want ErrExpired", c, err)
			}
			if st := m.Snapshot()[0]; st.State != StateUnavailable || len(st.CertChain) != 1 {
				t.Fatalf("snapshot after expiry: %+v", st)
			}
		})
	})
}

func TestManagerBackoffKeepsOldCertificate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFaultyIssuer(t, time.Hour)
		m := startManager(t, iss, ManagerOptions{}, true)
		c1 := mustFetch(t, m, testID)
		iss.set(func(f *faultyIssuer) { f.fail = errBoom })

		time.Sleep(30 * time.Minute) // half-life: the renewal fails
		synctest.Wait()
		want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second,
			16 * time.Second, 32 * time.Second, 64 * time.Second, 128 * time.Second, 150 * time.Second, 150 * time.Second}
		for i, d := range want {
			st := m.Snapshot()[0]
			if st.State != StateAvailable || st.Failures != i+1 || !strings.Contains(st.LastError, errBoom.Error()) {
				t.Fatalf("after failure %d: state %v failures %d err %q", i+1, st.State, st.Failures, st.LastError)
			}
			if gap := time.Until(st.NextAttempt); gap != d {
				t.Fatalf("retry %d scheduled in %v, want %v", i+1, gap, d)
			}
			if mustFetch(t, m, testID) != c1 {
				t.Fatal("old certificate not served while renewal fails")
			}
			time.Sleep(d)
			synctest.Wait()
			if n := iss.count(testID); n != i+3 {
				t.Fatalf("issuer calls after retry %d: %d, want %d", i+1, n, i+3)
			}
		}

		// Past expiry the old certificate is gone: Fetch fails instead of serving it.
		time.Sleep(time.Until(c1.NotAfter()))
		c, err := m.Fetch(context.Background(), testID)
		if err == nil || !(errors.Is(err, ErrUnavailable) || errors.Is(err, errBoom)) {
			t.Fatalf("Fetch after expiry with CA down = %v, %v; want an error", c, err)
		}
		if st := m.Snapshot()[0]; st.State != StateUnavailable {
			t.Fatalf("state after expiry: %v", st.State)
		}

		// The CA recovers: the next retry (at most MaxBackoff away) brings a fresh certificate.
		iss.set(func(f *faultyIssuer) { f.fail = nil })
		time.Sleep(DefaultMaxBackoff)
		synctest.Wait()
		st := m.Snapshot()[0]
		if st.State != StateAvailable || st.Failures != 0 || st.LastError != "" {
			t.Fatalf("after recovery: %+v", st)
		}
		if c2 := mustFetch(t, m, testID); c2 == c1 {
			t.Fatal("still the old certificate after recovery")
		}
	})
}

func TestManagerFailsFastDuringBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFaultyIssuer(t, time.Hour)
		iss.set(func(f *faultyIssuer) { f.fail = errBoom })
		m := startManager(t, iss, ManagerOptions{}, true)
		if _, err := m.Fetch(context.Background(), testID); !errors.Is(err, errBoom) {
			t.Fatalf("first Fetch: %v, want the issuer's error", err)
		}
		// Within the backoff window Fetch reports the failure without calling the CA again.
		if _, err := m.Fetch(context.Background(), testID); !errors.Is(err, ErrUnavailable) || !errors.Is(err, errBoom) {
			t.Fatalf("second Fetch: %v, want ErrUnavailable wrapping the cause", err)
		}
		if n := iss.count(testID); n != 1 {
			t.Fatalf("issuer calls: %d, want 1", n)
		}
		if st := m.Snapshot()[0]; st.State != StateUnavailable || st.Failures != 1 {
			t.Fatalf("snapshot: %+v", st)
		}
		iss.set(func(f *faultyIssuer) { f.fail = nil })
		time.Sleep(DefaultInitialBackoff)
		synctest.Wait()
		mustFetch(t, m, testID)
		if n := iss.count(testID); n != 2 {
			t.Fatalf("issuer calls after retry: %d, want 2", n)
		}
	})
}

func TestManagerForget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFaultyIssuer(t, time.Hour)
		m := startManager(t, iss, ManagerOptions{}, true)
		c1 := mustFetch(t, m, testID)
		mustFetch(t, m, testID2)
		m.Forget(testID)
		m.Forget(testID) // idempotent
		if st := m.Snapshot(); len(st) != 1 || st[0].Identity != testID2.String() {
			t.Fatalf("snapshot after Forget: %+v", st)
		}
		time.Sleep(31 * time.Minute)
		synctest.Wait()
		if n, n2 := iss.count(testID), iss.count(testID2); n != 1 || n2 != 2 {
			t.Fatalf("issuer calls after half-life: forgotten %d (want 1), kept %d (want 2)", n, n2)
		}
		if c := mustFetch(t, m, testID); c == c1 || iss.count(testID) != 2 {
			t.Fatal("Fetch after Forget reused the forgotten certificate")
		}
	})
}

func TestManagerForgetDuringFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFaultyIssuer(t, time.Hour)
		gate := make(chan struct{})
		iss.set(func(f *faultyIssuer) { f.gate = gate })
		m := startManager(t, iss, ManagerOptions{}, true)
		var wg sync.WaitGroup
		wg.Go(func() { mustFetch(t, m, testID) }) // the waiter still gets its certificate
		synctest.Wait()
		m.Forget(testID)
		close(gate)
		wg.Wait()
		if st := m.Snapshot(); len(st) != 0 {
			t.Fatalf("forgotten identity came back: %+v", st)
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		if n := iss.count(testID); n != 1 {
			t.Fatalf("forgotten identity renewed: %d calls", n)
		}
	})
}

func TestManagerPrefetchYieldsToFetch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFaultyIssuer(t, time.Hour)
		gate := make(chan struct{})
		iss.set(func(f *faultyIssuer) { f.gate = gate })
		m := startManager(t, iss, ManagerOptions{Workers: 1}, true)
		m.Prefetch(testID)
		m.Prefetch(testID2)
		m.Prefetch(testID2) // already queued
		synctest.Wait()
		if n1, n2 := iss.count(testID), iss.count(testID2); n1 != 1 || n2 != 0 {
			t.Fatalf("with one worker: calls %d and %d, want 1 running and 1 queued", n1, n2)
		}
		// An on-demand Fetch of the queued identity starts at once instead of waiting for the worker.
		var wg sync.WaitGroup
		wg.Go(func() { mustFetch(t, m, testID2) })
		synctest.Wait()
		if n := iss.count(testID2); n != 1 {
			t.Fatalf("Fetch of queued identity: %d calls, want 1 (started on demand)", n)
		}
		close(gate)
		wg.Wait()
		synctest.Wait()
		for _, st := range m.Snapshot() {
			if st.State != StateAvailable {
				t.Fatalf("after prefetch: %+v", st)
			}
		}
		if n1, n2 := iss.count(testID), iss.count(testID2); n1 != 1 || n2 != 1 {
			t.Fatalf("calls %d and %d, want 1 each", n1, n2)
		}
		m.Prefetch(testID) // already held: no call
		synctest.Wait()
		if n := iss.count(testID); n != 1 {
			t.Fatalf("Prefetch of a held identity called the issuer: %d", n)
		}
	})
}

func TestManagerRefreshAndStaleIssuer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFaultyIssuer(t, time.Hour)
		m := startManager(t, iss, ManagerOptions{}, true)
		c1 := mustFetch(t, m, testID)
		m.Refresh(testID2) // unmanaged: no-op
		time.Sleep(time.Minute)
		m.Refresh(testID)
		synctest.Wait()
		c2 := mustFetch(t, m, testID)
		if c2 == c1 || iss.count(testID) != 2 || iss.count(testID2) != 0 {
			t.Fatalf("Refresh: new cert %v, calls %d/%d", c2 != c1, iss.count(testID), iss.count(testID2))
		}

		// An issuer that keeps answering with the certificate due for renewal is retried with backoff,
		// and the certificate is kept meanwhile.
		iss.set(func(f *faultyIssuer) { f.sticky = true })
		time.Sleep(time.Until(c2.RefreshAt()))
		synctest.Wait()
		st := m.Snapshot()[0]
		if st.State != StateAvailable || st.Failures != 1 || !strings.Contains(st.LastError, "no newer certificate") {
			t.Fatalf("stale renewal: %+v", st)
		}
		iss.set(func(f *faultyIssuer) { f.sticky = false })
		time.Sleep(DefaultInitialBackoff)
		synctest.Wait()
		if c3 := mustFetch(t, m, testID); c3 == c2 || m.Snapshot()[0].Failures != 0 {
			t.Fatal("no renewal after the issuer rotated")
		}
	})
}

func TestManagerClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFaultyIssuer(t, time.Hour)
		gate := make(chan struct{})
		iss.set(func(f *faultyIssuer) { f.gate = gate })
		m, err := NewManager(ManagerOptions{Issuer: iss})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		runErr := make(chan error, 1)
		go func() { runErr <- m.Run(ctx) }()
		fetchErr := make(chan error, 1)
		go func() {
			_, err := m.Fetch(context.Background(), testID)
			fetchErr <- err
		}()
		synctest.Wait()
		if err := m.Run(ctx); err == nil {
			t.Fatal("second Run succeeded")
		}
		cancel() // Run's context ends: the Manager closes and cancels the blocked issuance
		if err := <-runErr; err != nil {
			t.Fatalf("Run: %v", err)
		}
		if err := <-fetchErr; !errors.Is(err, ErrClosed) && !errors.Is(err, context.Canceled) {
			t.Fatalf("in-flight Fetch after close: %v", err)
		}
		if _, err := m.Fetch(context.Background(), testID); !errors.Is(err, ErrClosed) {
			t.Fatalf("Fetch after Close: %v, want ErrClosed", err)
		}
		if err := m.Run(context.Background()); !errors.Is(err, ErrClosed) {
			t.Fatalf("Run after Close: %v, want ErrClosed", err)
		}
		m.Prefetch(testID)
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestManagerFetchHonoursContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFaultyIssuer(t, time.Hour)
		gate := make(chan struct{})
		iss.set(func(f *faultyIssuer) { f.gate = gate })
		m := startManager(t, iss, ManagerOptions{}, true)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := m.Fetch(ctx, testID); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Fetch: %v, want deadline exceeded", err)
		}
		close(gate) // the shared issuance goes on for later callers
		mustFetch(t, m, testID)
		if n := iss.count(testID); n != 1 {
			t.Fatalf("calls: %d, want 1", n)
		}
	})
}

func TestManagerSnapshotJSON(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		iss := newFaultyIssuer(t, time.Hour)
		m := startManager(t, iss, ManagerOptions{}, true)
		c := mustFetch(t, m, testID)
		raw, err := json.Marshal(m.Snapshot())
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(raw), "PRIVATE") {
			t.Fatal("snapshot leaks a private key")
		}
		var got []map[string]any
		if err := json.Unmarshal(raw, &got); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0]["identity"] != testID.String() || got[0]["state"] != "Available" {
			t.Fatalf("snapshot JSON: %s", raw)
		}
		chain := got[0]["cert_chain"].([]any)
		leaf := chain[0].(map[string]any)
		if leaf["serialNumber"] != c.Leaf().SerialNumber.String() || leaf["expirationTime"] != c.NotAfter().Format(time.RFC3339) {
			t.Fatalf("leaf entry: %v", leaf)
		}
		if roots := got[0]["root_certs"].([]any); len(roots) != 1 {
			t.Fatalf("root_certs: %v", roots)
		}
	})
}

func TestBackoff(t *testing.T) {
	tests := []struct {
		name     string
		failures int
		want     time.Duration
	}{
		{"first", 1, 500 * time.Millisecond},
		{"second", 2, time.Second},
		{"ninth", 9, 128 * time.Second},
		{"capped", 10, 150 * time.Second},
		{"far past cap", 200, 150 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := backoff(DefaultInitialBackoff, DefaultMaxBackoff, tt.failures); got != tt.want {
				t.Fatalf("backoff(%d) = %v, want %v", tt.failures, got, tt.want)
			}
		})
	}
}

func TestNewManagerRequiresIssuer(t *testing.T) {
	if _, err := NewManager(ManagerOptions{}); err == nil {
		t.Fatal("NewManager without issuer succeeded")
	}
}

func BenchmarkFetchWarm(b *testing.B) {
	iss := newFaultyIssuer(b, time.Hour)
	m, err := NewManager(ManagerOptions{Issuer: iss})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	for i := range 100 { // a node-sized cache
		id, _ := WorkloadID("", "ns", "sa"+string(rune('a'+i%26))+string(rune('a'+i/26)))
		if _, err := m.Fetch(ctx, id); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := m.Fetch(ctx, testID); err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.Fetch(ctx, testID); err != nil {
				b.Fatal(err)
			}
		}
	})
	// References measured in the same run: the clock read every Fetch makes, and the RWMutex-guarded map
	// lookup the fast path used before it became a copy-on-write view.
	b.Run("ref-time-now", func(b *testing.B) {
		b.ReportAllocs()
		var t time.Time
		for b.Loop() {
			t = time.Now()
		}
		_ = t
	})
	var (
		rw    sync.RWMutex
		plain = map[spiffeid.ID]*entry{}
	)
	m.mu.Lock()
	maps.Copy(plain, m.entries)
	m.mu.Unlock()
	rwFetch := func() {
		rw.RLock()
		e := plain[testID]
		rw.RUnlock()
		if c := e.cur.Load(); c == nil || !c.ValidAt(time.Now()) {
			b.Fatal("no certificate")
		}
	}
	b.Run("ref-rwmutex-map", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			rwFetch()
		}
	})
	b.Run("ref-rwmutex-map-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				rwFetch()
			}
		})
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := m.Fetch(ctx, testID); err != nil {
					b.Fatal(err)
				}
			}
		})
	})
}
