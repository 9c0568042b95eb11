package hbone

// stats.go: counters for the agent's and the waypoint's metrics (Server.Stats, Pool.Stats). Package hbone
// exports plain snapshots; the owner turns them into metrics (hbone imports no metrics package).

import "sync/atomic"

// FloodStats counts connections closed with GOAWAY because the peer exceeded a flood limit, by limit
// (see flood.go; Envoy's HTTP/2 codec counts the same events as *_flood stats).
type FloodStats struct {
	// RapidReset: streams reset before their response faster than the handlers could return
	// (CVE-2023-44487): the handler-slot queue overflowed or half of 500+ streams were reset early.
	RapidReset uint64
	// ControlQueue: control frames (PING and SETTINGS acks, RST_STREAM, ...) queued for a peer that
	// does not read them (Envoy outbound_control_flood).
	ControlQueue uint64
	// Continuation: a header block of too many CONTINUATION frames or bytes (CVE-2024-27316 class).
	Continuation uint64
	// EmptyFrames: consecutive empty DATA frames (Envoy inbound_empty_frames_flood).
	EmptyFrames uint64
	// WindowUpdate: WINDOW_UPDATE frames out of proportion to the data sent (Envoy
	// inbound_window_update_frames_flood).
	WindowUpdate uint64
	// Priority: PRIORITY frames out of proportion to the streams (Envoy inbound_priority_frames_flood).
	Priority uint64
	// Settings: a SETTINGS frame with too many parameters.
	Settings uint64
	// Resets: too many streams this side had to reset for the peer's errors.
	Resets uint64
}

// ServerStats is a snapshot of a Server. Counts are since the Server was created; gauges are now.
type ServerStats struct {
	Conns    int // open connections, handshaking ones included (gauge)
	Streams  int // open streams (gauge)
	Handlers int // running handlers, including those of streams already reset (gauge)

	ConnsAccepted uint64 // connections accepted, rejected ones included
	// ConnsRejected: connections closed at accept because MaxConns were open (Envoy: overload
	// manager downstream_cx_overflow).
	ConnsRejected uint64
	// HandshakeTimeouts: connections closed because TLS and the HTTP/2 preface did not complete
	// within HandshakeTimeout.
	HandshakeTimeouts uint64
	// HandshakeErrors: connections closed for a failed TLS handshake, a missing ALPN h2 or a bad client
	// preface, timeouts excluded.
	HandshakeErrors uint64
	// IdleTimeouts: connections closed after IdleTimeout without streams (Envoy:
	// downstream_cx_idle_timeout).
	IdleTimeouts uint64
	// StreamIdleTimeouts: streams reset after their idle timeout (Envoy: downstream_rq_idle_timeout).
	StreamIdleTimeouts uint64
	// ProtocolErrors: connections closed with GOAWAY for a protocol error other than a flood.
	ProtocolErrors uint64
	// Floods: connections closed with GOAWAY for exceeding a flood limit.
	Floods FloodStats
}

// counters are the event counts behind ServerStats and PoolStats; every method is safe on a nil
// *counters (it discards).
type counters struct {
	connsAccepted, connsRejected, handshakeTimeouts, handshakeErrors atomic.Uint64
	idleTimeouts, streamIdleTimeouts, protocolErrors                 atomic.Uint64
	floods                                                           [floodResets + 1]atomic.Uint64
}

func (c *counters) idleTimeout() {
	if c != nil {
		c.idleTimeouts.Add(1)
	}
}

func (c *counters) streamIdleTimeout() {
	if c != nil {
		c.streamIdleTimeouts.Add(1)
	}
}

// connError counts a connection closed for ce.
func (c *counters) connError(ce connError) {
	if c == nil {
		return
	}
	if ce.flood != floodNone {
		c.floods[ce.flood].Add(1)
		return
	}
	c.protocolErrors.Add(1)
}

func (c *counters) floodStats() FloodStats {
	return FloodStats{
		RapidReset:   c.floods[floodRapidReset].Load(),
		ControlQueue: c.floods[floodControlQueue].Load(),
		Continuation: c.floods[floodContinuation].Load(),
		EmptyFrames:  c.floods[floodEmptyFrames].Load(),
		WindowUpdate: c.floods[floodWindowUpdate].Load(),
		Priority:     c.floods[floodPriority].Load(),
		Settings:     c.floods[floodSettings].Load(),
		Resets:       c.floods[floodResets].Load(),
	}
}

// Stats returns a snapshot of the server's connections and counters.
func (s *Server) Stats() ServerStats {
	s.init()
	st := ServerStats{
		Conns:              int(s.connCount.Load()),
		ConnsAccepted:      s.stats.connsAccepted.Load(),
		ConnsRejected:      s.stats.connsRejected.Load(),
		HandshakeTimeouts:  s.stats.handshakeTimeouts.Load(),
		HandshakeErrors:    s.stats.handshakeErrors.Load(),
		IdleTimeouts:       s.stats.idleTimeouts.Load(),
		StreamIdleTimeouts: s.stats.streamIdleTimeouts.Load(),
		ProtocolErrors:     s.stats.protocolErrors.Load(),
		Floods:             s.stats.floodStats(),
	}
	s.mu.Lock()
	for c := range s.conns {
		st.Streams += int(c.streamCount.Load())
		st.Handlers += int(c.handlerCount.Load())
	}
	s.mu.Unlock()
	return st
}
