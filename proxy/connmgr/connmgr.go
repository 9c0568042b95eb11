// Package connmgr tracks the connections a process is relaying (the node agent's and the waypoint's):
// it lists them for the admin API, closes inbound ones that a policy change no longer allows (as
// ztunnel's PolicyWatcher does), and drains them all on shutdown.
//
// It imports only mesh/state and proxy/relay; never agent/ or waypoint/.
package connmgr

import (
	"cmp"
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/proxy/relay"
)

// Direction of a tracked connection.
type Direction string

const (
	Inbound  Direction = "inbound"
	Outbound Direction = "outbound"
)

// ErrPolicyChanged is the cause given to connections closed because a policy change denies them.
var ErrPolicyChanged = errors.New("connection closed due to policy change")

// ErrShutdown is the cause given to connections closed when the drain deadline passes.
var ErrShutdown = errors.New("agent shutting down")

// Conn is one tracked connection. Fields are set before Track and not modified afterwards.
type Conn struct {
	Direction Direction
	// Src is the client's address; Dst the original destination (the pod the client dialled, or the
	// service VIP); Hop the address the agent actually connected to (a waypoint or pod :15008, or Dst).
	Src, Dst, Hop netip.AddrPort
	// Authority is the HBONE :authority when HBONE is used.
	Authority string
	Protocol  string // "HBONE" or "TCP"
	// Workload is the local workload the connection belongs to (the source for outbound, the
	// destination for inbound); Peer the other side when known.
	Workload *state.Workload
	Peer     *state.Workload
	Service  *state.Service
	// PeerIdentity is the verified SPIFFE ID of the inbound client ("" for plaintext).
	PeerIdentity string
	Waypoint     string
	Start        time.Time
	Counters     *relay.Counters
	// Recheck, for inbound connections, re-evaluates authorization against the current state and
	// returns false when the connection is no longer allowed.
	Recheck func() bool

	id     uint64
	cancel context.CancelCauseFunc
}

// ID returns the connection's identifier within its manager.
func (c *Conn) ID() uint64 { return c.id }

// Manager is the registry. The zero value is ready to use.
type Manager struct {
	next atomic.Uint64

	mu    sync.Mutex
	conns map[uint64]*Conn // guarded by mu
	idle  chan struct{}    // guarded by mu; closed when conns becomes empty, for Drain
}

// Track registers c with the cancel function of its relay context and returns a function that removes it.
func (m *Manager) Track(c *Conn, cancel context.CancelCauseFunc) (untrack func()) {
	c.id = m.next.Add(1)
	c.cancel = cancel
	m.mu.Lock()
	if m.conns == nil {
		m.conns = map[uint64]*Conn{}
	}
	m.conns[c.id] = c
	m.mu.Unlock()
	return func() {
		m.mu.Lock()
		delete(m.conns, c.id)
		if len(m.conns) == 0 && m.idle != nil {
			close(m.idle)
			m.idle = nil
		}
		m.mu.Unlock()
	}
}

// Snapshot returns the tracked connections, oldest first.
func (m *Manager) Snapshot() []*Conn {
	m.mu.Lock()
	out := make([]*Conn, 0, len(m.conns))
	for _, c := range m.conns {
		out = append(out, c)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b *Conn) int { return cmp.Compare(a.id, b.id) })
	return out
}

// Len returns the number of tracked connections.
func (m *Manager) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.conns)
}

// Recheck re-evaluates every connection that has a Recheck function and closes those no longer
// allowed, with cause ErrPolicyChanged. It returns how many it closed.
func (m *Manager) Recheck() int {
	closed := 0
	for _, c := range m.Snapshot() {
		if c.Recheck != nil && !c.Recheck() {
			c.cancel(ErrPolicyChanged)
			closed++
		}
	}
	return closed
}

// Drain waits until every tracked connection has ended or ctx is done; then it closes what remains
// with cause ErrShutdown and returns ctx's error.
func (m *Manager) Drain(ctx context.Context) error {
	m.mu.Lock()
	if len(m.conns) == 0 {
		m.mu.Unlock()
		return nil
	}
	if m.idle == nil {
		m.idle = make(chan struct{})
	}
	idle := m.idle
	m.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		for _, c := range m.Snapshot() {
			c.cancel(ErrShutdown)
		}
		return ctx.Err()
	}
}
