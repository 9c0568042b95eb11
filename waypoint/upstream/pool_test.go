package upstream

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

func TestIdlePool(t *testing.T) {
	a := netip.MustParseAddrPort("10.0.0.1:80")
	b := netip.MustParseAddrPort("10.0.0.2:80")
	t0 := time.Unix(1000, 0)
	type op struct {
		kind string // put, get, expire, drain
		addr netip.AddrPort
		c    int // put: the connection; get: the one expected (0: none)
		at   time.Duration
		out  []int // evicted (put), stale (get), expired (expire), drained (drain)
	}
	for _, tc := range []struct {
		name string
		max  int
		ops  []op
	}{
		{"reuse most recent first", 4, []op{
			{kind: "put", addr: a, c: 1}, {kind: "put", addr: a, c: 2},
			{kind: "get", addr: a, c: 2}, {kind: "get", addr: a, c: 1}, {kind: "get", addr: a, c: 0},
		}},
		{"per address", 4, []op{
			{kind: "put", addr: a, c: 1}, {kind: "get", addr: b, c: 0}, {kind: "get", addr: a, c: 1},
		}},
		{"bound evicts the oldest", 2, []op{
			{kind: "put", addr: a, c: 1}, {kind: "put", addr: a, c: 2}, {kind: "put", addr: a, c: 3, out: []int{1}},
			{kind: "get", addr: a, c: 3}, {kind: "get", addr: a, c: 2}, {kind: "get", addr: a, c: 0},
		}},
		{"no idle connections kept", 0, []op{
			{kind: "put", addr: a, c: 1, out: []int{1}}, {kind: "get", addr: a, c: 0},
		}},
		{"expired on get", 4, []op{
			{kind: "put", addr: a, c: 1}, {kind: "put", addr: a, c: 2, at: 50 * time.Second},
			{kind: "get", addr: a, c: 2, at: 95 * time.Second, out: []int{1}}, {kind: "get", addr: a, c: 0, at: 95 * time.Second},
		}},
		{"all expired on get", 4, []op{
			{kind: "put", addr: a, c: 1}, {kind: "get", addr: a, c: 0, at: 90 * time.Second, out: []int{1}},
		}},
		{"expire", 4, []op{
			{kind: "put", addr: a, c: 1}, {kind: "put", addr: b, c: 2}, {kind: "put", addr: a, c: 3, at: 60 * time.Second},
			{kind: "expire", at: 100 * time.Second, out: []int{1, 2}}, {kind: "get", addr: a, c: 3, at: 100 * time.Second},
		}},
		{"drain", 4, []op{
			{kind: "put", addr: a, c: 1}, {kind: "put", addr: b, c: 2}, {kind: "drain", out: []int{1, 2}},
			{kind: "get", addr: a, c: 0}, {kind: "put", addr: a, c: 3}, {kind: "get", addr: a, c: 3},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &IdlePool[int]{MaxPerKey: tc.max, IdleTimeout: 90 * time.Second}
			for i, o := range tc.ops {
				now := t0.Add(o.at)
				var got []int
				switch o.kind {
				case "put":
					if ev, ok := p.Put(o.addr, o.c, now); ok {
						got = []int{ev}
					}
				case "get":
					c, ok, stale := p.Get(o.addr, now)
					if !ok {
						c = 0
					}
					if c != o.c {
						t.Fatalf("op %d: Get = %d, %v; want %d", i, c, ok, o.c)
					}
					got = stale
				case "expire":
					got = p.Expire(now)
				case "drain":
					got = p.Drain()
				}
				slices.Sort(got)
				if !slices.Equal(got, o.out) {
					t.Fatalf("op %d (%s): returned %v, want %v", i, o.kind, got, o.out)
				}
			}
		})
	}
}
