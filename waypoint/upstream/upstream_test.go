package upstream

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/waypoint/model"
)

func eps(n int) []Endpoint {
	out := make([]Endpoint, n)
	for i := range out {
		out[i] = Endpoint{Workload: &state.Workload{UID: string(rune('a' + i))}, Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 8080)}
	}
	return out
}

func TestPick(t *testing.T) {
	now := time.Unix(100, 0)
	tests := []struct {
		name string
		lb   model.LB
		req  PickRequest
		n    int
		want func(t *testing.T, got []Endpoint)
	}{
		{"round robin cycles", model.LB{Kind: model.LBRoundRobin}, PickRequest{Now: now}, 6, func(t *testing.T, got []Endpoint) {
			for i := range got {
				if got[i].Addr != got[i%3].Addr || i < 3 && i > 0 && got[i].Addr == got[i-1].Addr {
					t.Errorf("pick %d: %v", i, got[i].Addr)
				}
			}
		}},
		{"consistent hash is stable", model.LB{Kind: model.LBConsistentHash}, PickRequest{Now: now, HashKey: "user-1"}, 5, func(t *testing.T, got []Endpoint) {
			for i := range got {
				if got[i].Addr != got[0].Addr {
					t.Errorf("pick %d moved to %v", i, got[i].Addr)
				}
			}
		}},
		{"retries avoid tried endpoints", model.LB{Kind: model.LBRandom}, PickRequest{Now: now, Exclude: []netip.AddrPort{eps(3)[0].Addr, eps(3)[1].Addr}}, 5,
			func(t *testing.T, got []Endpoint) {
				for _, e := range got {
					if e.Addr != eps(3)[2].Addr {
						t.Errorf("picked excluded %v", e.Addr)
					}
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var m Manager
			c := m.Cluster("k", model.TrafficPolicy{LB: tc.lb})
			var got []Endpoint
			for range tc.n {
				e, err := c.Pick(eps(3), tc.req)
				if err != nil {
					t.Fatal(err)
				}
				c.Done(e, Outcome{Status: 200}, now, 3)
				got = append(got, e)
			}
			tc.want(t, got)
		})
	}
	var m Manager
	if _, err := m.Cluster("k", model.TrafficPolicy{}).Pick(nil, PickRequest{}); !errors.Is(err, ErrNoHealthy) {
		t.Errorf("no endpoints: %v", err)
	}
}

func TestLeastRequestPrefersIdle(t *testing.T) {
	var m Manager
	c := m.Cluster("k", model.TrafficPolicy{LB: model.LB{Kind: model.LBLeastRequest}})
	all := eps(2)
	busy, _ := c.Pick(all[:1], PickRequest{})
	for range 3 {
		c.Pick(all[:1], PickRequest{}) // three more in flight on endpoint 0
	}
	// The two choices are 0 then 1: the idle one wins.
	seq := []uint64{0, 1}
	i := 0
	e, _ := c.Pick(all, PickRequest{Rand: func(uint64) uint64 { v := seq[i%2]; i++; return v }})
	if e.Addr == busy.Addr {
		t.Errorf("least request picked the busy endpoint")
	}
}

func TestOutlierEjection(t *testing.T) {
	now := time.Unix(100, 0)
	var m Manager
	c := m.Cluster("k", model.TrafficPolicy{LB: model.LB{Kind: model.LBRoundRobin},
		Outlier: &model.Outlier{Consecutive5xx: 2, BaseEjection: 30 * time.Second, MaxEjectionPercent: 10}})
	all := eps(3)
	bad := all[1]
	c.Done(bad, Outcome{Status: 500}, now, 3)
	if c.Ejected(bad.Addr, now) {
		t.Fatal("ejected after one error")
	}
	if !c.Done(bad, Outcome{Status: 503}, now, 3) || !c.Ejected(bad.Addr, now) {
		t.Fatal("not ejected after two consecutive errors")
	}
	for range 6 {
		e, _ := c.Pick(all, PickRequest{Now: now})
		if e.Addr == bad.Addr {
			t.Fatal("picked an ejected endpoint")
		}
		c.Done(e, Outcome{Status: 200}, now, 3)
	}
	// Max ejection percent (10% of 3, at least one): a second failing endpoint is not ejected.
	other := all[2]
	c.Done(other, Outcome{ConnectFailure: true}, now, 3)
	if c.Done(other, Outcome{ConnectFailure: true}, now, 3) {
		t.Error("ejected beyond max ejection percent")
	}
	if later := now.Add(31 * time.Second); c.Ejected(bad.Addr, later) {
		t.Error("still ejected after the base ejection time")
	}
	// A success resets the consecutive count.
	c2 := m.Cluster("k2", model.TrafficPolicy{Outlier: &model.Outlier{Consecutive5xx: 2, BaseEjection: time.Second, MaxEjectionPercent: 100}})
	c2.Done(bad, Outcome{Status: 500}, now, 3)
	c2.Done(bad, Outcome{Status: 200}, now, 3)
	if c2.Done(bad, Outcome{Status: 500}, now, 3) {
		t.Error("ejected after non-consecutive errors")
	}
}

func TestAdmit(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		pool   model.ConnPool
		http1  bool
		admit  int // admitted without waiting
		queued bool
	}{
		{"unlimited", model.ConnPool{}, true, 10, false},
		{"max requests overflows at once", model.ConnPool{MaxRequests: 2}, false, 2, false},
		{"max connections queue HTTP/1.1 requests", model.ConnPool{MaxConnections: 1, MaxPending: 1}, true, 1, true},
		{"max connections do not bound HTTP/2", model.ConnPool{MaxConnections: 1}, false, 10, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var m Manager
			c := m.Cluster("k", model.TrafficPolicy{Pool: tc.pool})
			var rels []func()
			for range tc.admit {
				rel, err := c.Admit(ctx, tc.http1)
				if err != nil {
					t.Fatal(err)
				}
				rels = append(rels, rel)
			}
			if tc.admit == 10 {
				return
			}
			if !tc.queued {
				if _, err := c.Admit(ctx, tc.http1); !errors.Is(err, ErrOverflow) {
					t.Fatalf("over the limit: %v", err)
				}
				return
			}
			got := make(chan error, 1)
			go func() {
				rel, err := c.Admit(ctx, tc.http1)
				if err == nil {
					rel()
				}
				got <- err
			}()
			for {
				if _, p := c.Active(); p == 1 {
					break
				}
				time.Sleep(time.Millisecond)
			}
			if _, err := c.Admit(ctx, tc.http1); !errors.Is(err, ErrOverflow) {
				t.Fatalf("beyond max pending: %v", err)
			}
			rels[0]() // hands the slot to the waiter
			if err := <-got; err != nil {
				t.Fatalf("pending request: %v", err)
			}
			if a, p := c.Active(); a != 0 || p != 0 {
				t.Errorf("active %d pending %d after release", a, p)
			}
		})
	}
}
