package upstream

import (
	"net/netip"
	"sync"
	"time"
)

// IdlePool keeps idle keep-alive connections per endpoint address, for reuse by later requests: at
// most MaxPerKey per address (the most recently used first), none older than IdleTimeout. It only
// decides which connections to keep: every connection it hands back from Put, Get or Expire is the
// caller's to close. The zero value is not usable; set both limits.
type IdlePool[C any] struct {
	MaxPerKey   int
	IdleTimeout time.Duration

	mu   sync.Mutex
	idle map[netip.AddrPort][]idleConn[C] // guarded by mu; oldest first
}

type idleConn[C any] struct {
	c     C
	since time.Time
}

// Get returns the most recently idled connection to addr that is not expired at now; expired ones
// are removed and returned in stale for the caller to close.
func (p *IdlePool[C]) Get(addr netip.AddrPort, now time.Time) (c C, ok bool, stale []C) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.idle[addr]
	// Idle entries are appended as they idle, so expired ones are at the front.
	n := 0
	for n < len(l) && now.Sub(l[n].since) >= p.IdleTimeout {
		stale = append(stale, l[n].c)
		n++
	}
	l = l[n:]
	if len(l) > 0 {
		c, ok = l[len(l)-1].c, true
		var zero idleConn[C]
		l[len(l)-1] = zero
		l = l[:len(l)-1]
	}
	p.set(addr, l)
	return c, ok, stale
}

// Put keeps c as idle to addr since now. When addr already has MaxPerKey idle connections, the
// oldest is dropped and returned as evicted (it may be c itself when MaxPerKey is 0).
func (p *IdlePool[C]) Put(addr netip.AddrPort, c C, now time.Time) (evicted C, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.MaxPerKey <= 0 {
		return c, true
	}
	if p.idle == nil {
		p.idle = map[netip.AddrPort][]idleConn[C]{}
	}
	l := append(p.idle[addr], idleConn[C]{c: c, since: now})
	if len(l) > p.MaxPerKey {
		evicted, ok = l[0].c, true
		var zero idleConn[C]
		l[0] = zero
		l = l[1:]
	}
	p.idle[addr] = l
	return evicted, ok
}

// Expire removes and returns every connection idle for IdleTimeout or longer at now.
func (p *IdlePool[C]) Expire(now time.Time) []C {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []C
	for addr, l := range p.idle {
		n := 0
		for n < len(l) && now.Sub(l[n].since) >= p.IdleTimeout {
			out = append(out, l[n].c)
			n++
		}
		p.set(addr, l[n:])
	}
	return out
}

// Drain removes and returns every idle connection.
func (p *IdlePool[C]) Drain() []C {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []C
	for _, l := range p.idle {
		for _, ic := range l {
			out = append(out, ic.c)
		}
	}
	p.idle = nil
	return out
}

// Len returns the number of idle connections to addr.
func (p *IdlePool[C]) Len(addr netip.AddrPort) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle[addr])
}

// set stores l for addr, dropping the key when l is empty. Called with mu held.
func (p *IdlePool[C]) set(addr netip.AddrPort, l []idleConn[C]) {
	if len(l) == 0 {
		delete(p.idle, addr)
		return
	}
	p.idle[addr] = l
}
