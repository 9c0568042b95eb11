package spire

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/ambit-mesh/ambit/identity"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// TestWorkloadAPIWithRealSPIRE drives identity.WorkloadAPI and identity.Manager against a real SPIRE server
// and agent: SVIDs for two registered identities, an unregistered one refused, rotation handed over by the
// Workload API before expiry, and an entry deletion reflected by the issuer.
func TestWorkloadAPIWithRealSPIRE(t *testing.T) {
	bin := RequireBinaries(t)
	testutil.CheckGoroutines(t)
	testutil.CheckFDs(t)
	cl := Start(t, Options{BinDir: bin})
	td := spiffeid.RequireTrustDomainFromString(cl.TrustDomain())
	echo, err := identity.WorkloadID(td.Name(), "demo", "echo")
	if err != nil {
		t.Fatal(err)
	}
	short, err := identity.WorkloadID(td.Name(), "demo", "short")
	if err != nil {
		t.Fatal(err)
	}
	unregistered, err := identity.WorkloadID(td.Name(), "demo", "nobody")
	if err != nil {
		t.Fatal(err)
	}
	// This test process is the workload: the agent attests it by uid.
	uidSel := fmt.Sprintf("unix:uid:%d", os.Getuid())
	echoEntry := cl.CreateEntry(t, echo.String(), time.Hour, uidSel)
	const shortTTL = 20 * time.Second
	cl.CreateEntry(t, short.String(), shortTTL, uidSel)

	var (
		mu      sync.Mutex
		updates = map[spiffeid.ID]int{}
		mgr     *identity.Manager
	)
	api := identity.NewWorkloadAPI(identity.WorkloadAPIOptions{
		Address: cl.WorkloadAPIAddr(),
		OnUpdate: func(id spiffeid.ID) {
			mu.Lock()
			updates[id]++
			m := mgr
			mu.Unlock()
			if m != nil {
				m.Refresh(id)
			}
		},
	})
	m, err := identity.NewManager(identity.ManagerOptions{Issuer: api})
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	mgr = m
	mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := api.Run(ctx); err != nil {
			t.Errorf("WorkloadAPI.Run: %v", err)
		}
	})
	wg.Go(func() {
		if err := m.Run(ctx); err != nil {
			t.Errorf("Manager.Run: %v", err)
		}
	})
	defer func() {
		cancel()
		wg.Wait()
	}()

	// Entries reach the agent within a sync or two; until then Issue reports ErrNoSVID.
	fetch := func(id spiffeid.ID) *identity.Certificate {
		t.Helper()
		var c *identity.Certificate
		testutil.WaitFor(t, 60*time.Second, "SVID for "+id.String(), func() bool {
			fctx, fcancel := context.WithTimeout(ctx, 10*time.Second)
			defer fcancel()
			var err error
			c, err = m.Fetch(fctx, id)
			if err != nil && !errors.Is(err, identity.ErrNoSVID) && !errors.Is(err, identity.ErrUnavailable) {
				t.Fatalf("Fetch(%s): %v", id, err)
			}
			return err == nil
		})
		return c
	}
	echoCert := fetch(echo)
	shortCert := fetch(short)

	for _, c := range []*identity.Certificate{echoCert, shortCert} {
		if _, err := identity.VerifyServerChain(c.Chain(), c.RootPool(), []spiffeid.ID{c.ID()}); err != nil {
			t.Fatalf("%s: SPIRE chain does not verify against its bundle: %v", c.ID(), err)
		}
		if _, err := identity.VerifyClientChain(c.Chain(), c.RootPool(), td); err != nil {
			t.Fatalf("%s: client check: %v", c.ID(), err)
		}
		if c.Leaf().IsCA || len(c.Leaf().URIs) != 1 {
			t.Fatalf("%s: leaf IsCA=%v URIs=%v", c.ID(), c.Leaf().IsCA, c.Leaf().URIs)
		}
		t.Logf("%s: serial %s valid %s..%s, chain %d, roots %d", c.ID(), c.Leaf().SerialNumber,
			c.NotBefore().Format(time.TimeOnly), c.NotAfter().Format(time.TimeOnly), len(c.Chain()), len(c.Roots()))
	}
	if lt := shortCert.NotAfter().Sub(shortCert.NotBefore()); lt > shortTTL+15*time.Second {
		t.Fatalf("short entry lifetime %v, want about %v", lt, shortTTL)
	}

	// Not registered: refused, and no certificate appears.
	if _, err := api.Issue(ctx, unregistered); !errors.Is(err, identity.ErrNoSVID) {
		t.Fatalf("Issue(unregistered) = %v, want ErrNoSVID", err)
	}

	// Rotation: SPIRE rotates the short SVID at half-life; the Workload API streams it, OnUpdate hands it to
	// the Manager, which serves it before the old one expires. The Manager never returns an expired one.
	deadline := shortCert.NotAfter()
	var rotated *identity.Certificate
	testutil.WaitFor(t, time.Until(deadline)+30*time.Second, "rotated SVID for "+short.String(), func() bool {
		c, err := m.Fetch(ctx, short)
		if err != nil {
			return false
		}
		if !c.ValidAt(time.Now()) {
			t.Fatalf("Manager served an expired certificate (NotAfter %v)", c.NotAfter())
		}
		if c.Leaf().SerialNumber.Cmp(shortCert.Leaf().SerialNumber) != 0 {
			rotated = c
			return true
		}
		return false
	})
	if !rotated.NotAfter().After(shortCert.NotAfter()) {
		t.Fatalf("rotated SVID expires %v, not after the old %v", rotated.NotAfter(), shortCert.NotAfter())
	}
	if now := time.Now(); !now.Before(deadline) {
		t.Errorf("rotation reached the Manager only at %v, after the old SVID expired at %v", now, deadline)
	}
	mu.Lock()
	nShort := updates[short]
	mu.Unlock()
	if nShort < 2 {
		t.Errorf("OnUpdate for %s called %d times, want the first SVID and the rotation", short, nShort)
	}
	if c, err := m.Fetch(ctx, echo); err != nil || c != echoCert {
		t.Errorf("long-lived SVID changed or failed during the short one's rotation: %v", err)
	}

	// Deleting the entry withdraws the SVID from the Workload API.
	cl.DeleteEntry(t, echoEntry)
	testutil.WaitFor(t, 30*time.Second, "withdrawal of "+echo.String(), func() bool {
		_, err := api.Issue(ctx, echo)
		return errors.Is(err, identity.ErrNoSVID)
	})

	for _, st := range m.Snapshot() {
		t.Logf("snapshot: %s %s failures=%d next=%s", st.Identity, st.State, st.Failures, st.NextAttempt.Format(time.TimeOnly))
	}
}
