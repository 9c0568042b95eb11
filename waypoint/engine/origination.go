package engine

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/waypoint/model"
	"github.com/ambit-mesh/ambit/waypoint/upstream"
)

// tlsTransports are the HTTP transports that originate TLS (DestinationRule tls SIMPLE or MUTUAL), one per
// settings, destination host and HTTP version. They are dropped at each configuration update, so that
// certificate files are read again after a change.
type tlsTransports struct {
	dial func(ctx context.Context, addr string) (net.Conn, error)

	mu sync.Mutex
	m  map[tlsKey]*http.Transport // guarded by mu
}

type tlsKey struct {
	settings string
	host     string
	http1    bool
}

// get returns the transport for t to host (the SNI when t names none).
func (ts *tlsTransports) get(t *model.TLS, host string, http1 bool) *http.Transport {
	k := tlsKey{settings: t.Key(), host: host, http1: http1}
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if tr := ts.m[k]; tr != nil {
		return tr
	}
	if ts.m == nil {
		ts.m = map[tlsKey]*http.Transport{}
	}
	alpn := []string{"http/1.1"}
	var protos http.Protocols
	if http1 {
		protos.SetHTTP1(true)
	} else {
		alpn = []string{"h2"}
		protos.SetHTTP2(true)
	}
	tcopy := *t
	tr := &http.Transport{
		DialTLSContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			cfg, err := upstream.TLSConfig(&tcopy, host, alpn)
			if err != nil {
				return nil, &connectError{err: &tlsError{err: err}}
			}
			c, err := ts.dial(ctx, addr)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(c, cfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				c.Close()
				return nil, &connectError{err: &tlsError{err: err}}
			}
			return tc, nil
		},
		Protocols:           &protos,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	ts.m[k] = tr
	return tr
}

// tlsError is a failed TLS origination (configuration or handshake): UF with Envoy's TLS_error reason.
type tlsError struct{ err error }

func (e *tlsError) Error() string { return "TLS_error: " + e.err.Error() }
func (e *tlsError) Unwrap() error { return e.err }

// reset drops every transport (closing their idle connections).
func (ts *tlsTransports) reset() {
	ts.mu.Lock()
	old := ts.m
	ts.m = nil
	ts.mu.Unlock()
	for _, tr := range old {
		tr.CloseIdleConnections()
	}
}

// hostEndpoints adds the resolved DNS endpoints of the request's service (upstream.HostEndpoints with the
// engine's resolver) to eps.
func (e *Engine) hostEndpoints(ctx context.Context, rs *reqState, eps []upstream.Endpoint) []upstream.Endpoint {
	if e.opts.Resolver == nil || rs.svc == nil {
		return eps
	}
	more, err := upstream.HostEndpoints(ctx, e.opts.State.Endpoints(rs.svc.Key()), rs.svc, rs.port, e.opts.Resolver.Lookup)
	if err != nil {
		e.log.Debug("DNS endpoints not resolved", "service", rs.svc.Hostname, "err", err)
	}
	return append(eps, more...)
}
