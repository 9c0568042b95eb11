package ratelimit

import (
	"testing"
	"time"
)

func TestBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name    string
		max     int64
		perFill int64
		takes   []time.Duration // offsets from t0
		want    []bool
	}{
		{"starts full then denies", 3, 3, []time.Duration{0, 0, 0, 0}, []bool{true, true, true, false}},
		{"refills after the interval", 2, 2, []time.Duration{0, 0, 0, time.Second, time.Second}, []bool{true, true, false, true, true}},
		{"partial fill", 4, 1, []time.Duration{0, 0, 0, 0, 0, time.Second, time.Second}, []bool{true, true, true, true, false, true, false}},
		{"caps at max", 2, 5, []time.Duration{10 * time.Second, 10 * time.Second, 10 * time.Second}, []bool{true, true, false}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := NewBucket(tc.max, tc.perFill, time.Second, t0)
			for i, off := range tc.takes {
				d := b.Take(t0.Add(off))
				if d.Allowed != tc.want[i] {
					t.Fatalf("take %d at +%v: allowed %v, want %v", i, off, d.Allowed, tc.want[i])
				}
				if d.Limit != tc.max || d.Remaining < 0 || d.Reset <= 0 || d.Reset > time.Second {
					t.Fatalf("take %d: decision %+v", i, d)
				}
			}
		})
	}
}
