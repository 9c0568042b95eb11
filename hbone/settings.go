package hbone

import (
	"fmt"
	"time"
)

// Defaults, as ztunnel (ztunnel-protocols.md 2.2 and 2.5).
const (
	DefaultStreamWindow         = 4 << 20  // SETTINGS_INITIAL_WINDOW_SIZE
	DefaultConnWindow           = 16 << 20 // connection receive window
	DefaultMaxFrameSize         = 1 << 20  // SETTINGS_MAX_FRAME_SIZE
	DefaultClientMaxHeaderList  = 16 << 10
	DefaultServerMaxHeaderList  = 64 << 10
	DefaultMaxConcurrentStreams = 200 // server: ztunnel's (hyper's); Envoy 2^31-1, Istio's waypoint listener 100
	DefaultMaxStreamsPerConn    = 100 // client pool
	DefaultKeepaliveInterval    = 10 * time.Second
	DefaultKeepaliveTimeout     = 20 * time.Second
	DefaultIdleTimeout          = 5 * time.Minute // client pool (ztunnel POOL_UNUSED_RELEASE_TIMEOUT)
	DefaultConnectTimeout       = 10 * time.Second
	// DefaultIdleGrace and DefaultMaxIdleConnsPerKey (client pool): a connection without streams is
	// kept for DefaultIdleGrace whatever its key has, so that a burst that paused finds its connections;
	// beyond that a key keeps at most DefaultMaxIdleConnsPerKey of them (until DefaultIdleTimeout) and
	// the others go away with GOAWAY. A burst of 10,000 streams leaves 100 connections behind, each
	// with its reader, TLS state and HPACK tables; two serve the next 200 streams without a dial, and a
	// dial beyond them costs one handshake. The grace is long enough for bursts seconds apart, and
	// short enough that the memory releaser (proxy/memory, which counts LiveConns) returns the trimmed
	// connections' memory within the 30 s after a burst that issue 15 allows (trim at 15 s, release
	// one or two 2 s samples later).
	DefaultIdleGrace          = 15 * time.Second
	DefaultMaxIdleConnsPerKey = 2

	// Server bounds (Server fields; README "Limits" has the table with Envoy's and ztunnel's values).

	// DefaultHandshakeTimeout bounds TLS handshake plus the client's HTTP/2 preface and first SETTINGS
	// (ztunnel's connect timeout; Envoy: transport_socket_connect_timeout, unset by default).
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultServerIdleTimeout closes a connection without streams (Envoy HTTP connection manager
	// common_http_protocol_options.idle_timeout: 1 h; ztunnel: none, its clients release after 5 min).
	DefaultServerIdleTimeout = time.Hour
	// DefaultStreamIdleTimeoutHTTP and DefaultStreamIdleTimeoutTCP are Envoy's stream idle timeouts, for
	// a waypoint to apply to HTTP and TCP ports (HTTP connection manager stream_idle_timeout 5 min,
	// tcp_proxy idle_timeout 1 h). Server.StreamIdleTimeout defaults to none, as ztunnel, since the node
	// agent carries TCP connections that may idle for long (databases, long polls).
	DefaultStreamIdleTimeoutHTTP = 5 * time.Minute
	DefaultStreamIdleTimeoutTCP  = time.Hour

	http2DefaultWindow    = 65535
	http2DefaultFrameSize = 16384
	maxWindow             = 1<<31 - 1
)

// Settings are the HTTP/2 parameters one endpoint announces and enforces. Zero fields take the defaults
// above; tests and benchmarks lower them to exercise flow control.
type Settings struct {
	StreamWindow         uint32 // per-stream receive window (SETTINGS_INITIAL_WINDOW_SIZE)
	ConnWindow           uint32 // connection receive window
	MaxFrameSize         uint32 // largest frame accepted (SETTINGS_MAX_FRAME_SIZE)
	MaxHeaderListSize    uint32 // SETTINGS_MAX_HEADER_LIST_SIZE
	MaxConcurrentStreams uint32 // server only: SETTINGS_MAX_CONCURRENT_STREAMS
}

func (s Settings) withDefaults(server bool) (Settings, error) {
	if s.StreamWindow == 0 {
		s.StreamWindow = DefaultStreamWindow
	}
	if s.ConnWindow == 0 {
		s.ConnWindow = DefaultConnWindow
	}
	if s.MaxFrameSize == 0 {
		s.MaxFrameSize = DefaultMaxFrameSize
	}
	if s.MaxHeaderListSize == 0 {
		s.MaxHeaderListSize = DefaultClientMaxHeaderList
		if server {
			s.MaxHeaderListSize = DefaultServerMaxHeaderList
		}
	}
	if s.MaxConcurrentStreams == 0 && server {
		s.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	switch {
	case s.StreamWindow > maxWindow:
		return s, fmt.Errorf("validate settings: stream window %d above 2^31-1", s.StreamWindow)
	case s.ConnWindow < http2DefaultWindow || s.ConnWindow > maxWindow:
		return s, fmt.Errorf("validate settings: connection window %d outside [65535, 2^31-1]", s.ConnWindow)
	case s.MaxFrameSize < http2DefaultFrameSize || s.MaxFrameSize > 1<<24-1:
		return s, fmt.Errorf("validate settings: max frame size %d outside [16384, 2^24-1]", s.MaxFrameSize)
	}
	return s, nil
}
