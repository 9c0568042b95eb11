package ratelimit

import (
	"sync"
	"time"
)

// Bucket is a token bucket. It is safe for concurrent use.
type Bucket struct {
	max, perFill int64
	interval     time.Duration

	mu     sync.Mutex
	tokens int64     // guarded by mu
	last   time.Time // guarded by mu; start of the current fill interval
}

// NewBucket returns a full bucket.
func NewBucket(maxTokens, tokensPerFill int64, fillInterval time.Duration, now time.Time) *Bucket {
	return &Bucket{max: maxTokens, perFill: tokensPerFill, interval: fillInterval, tokens: maxTokens, last: now}
}

// Same reports whether b has these parameters (a reload keeps a bucket whose limit did not change).
func (b *Bucket) Same(maxTokens, tokensPerFill int64, fillInterval time.Duration) bool {
	return b.max == maxTokens && b.perFill == tokensPerFill && b.interval == fillInterval
}

// Decision is the outcome of Take, with what the x-ratelimit headers report.
type Decision struct {
	Allowed   bool
	Limit     int64
	Remaining int64
	// Reset is the time until the next fill.
	Reset time.Duration
}

// Take takes one token at now.
func (b *Bucket) Take(now time.Time) Decision {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refillLocked(now)
	d := Decision{Limit: b.max, Reset: b.interval - now.Sub(b.last)}
	if b.tokens > 0 {
		b.tokens--
		d.Allowed = true
	}
	d.Remaining = b.tokens
	return d
}

func (b *Bucket) refillLocked(now time.Time) {
	if now.Before(b.last) {
		return
	}
	n := int64(now.Sub(b.last) / b.interval)
	if n <= 0 {
		return
	}
	b.tokens = min(b.max, b.tokens+n*b.perFill)
	b.last = b.last.Add(time.Duration(n) * b.interval)
}
