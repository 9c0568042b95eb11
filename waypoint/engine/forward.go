package engine

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"net/textproto"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/waypoint/model"
	"github.com/ambit-mesh/ambit/waypoint/upstream"
)

// RoundTrip forwards one request (it is the request's ReverseProxy transport): it picks an endpoint,
// applies the connection pool limits and retries per the rule, and returns the response whose body
// releases the attempt when closed.
func (rs *reqState) RoundTrip(req *http.Request) (*http.Response, error) {
	e := rs.e
	rule := rs.rule
	retry := rule.Retry
	if retry == nil && rs.replay && rs.backend != nil {
		// Istio's default retry policy on waypoints: connect failures and refused streams, twice.
		retry = defaultRetry
	}
	if !rs.replay {
		retry = nil // a streamed body cannot be replayed
	}
	attempts := 1
	if retry != nil {
		attempts += retry.Attempts
	}
	if max := rs.cluster.Policy().Pool.MaxRetries; max > 0 && attempts-1 > max {
		attempts = max + 1
	}
	var tried []netip.AddrPort
	var lastErr error
	for i := 0; i < attempts; i++ {
		if i > 0 {
			if err := sleepCtx(req.Context(), backoff(retry.Backoff, i)); err != nil {
				return nil, err
			}
		}
		eps := e.endpoints(req.Context(), rs)
		ep, err := rs.cluster.Pick(eps, upstream.PickRequest{HashKey: rs.hashKey, Exclude: tried, Now: e.now()})
		if err != nil {
			return nil, err
		}
		tried = append(tried, ep.Addr)
		rs.attempts = i + 1
		rs.upstream, rs.dstWl = ep.Addr, ep.Workload
		release, err := rs.cluster.Admit(req.Context(), rs.http1)
		if err != nil {
			rs.cluster.Done(ep, upstream.Outcome{}, e.now(), len(eps))
			return nil, err
		}
		resp, out, err := e.attempt(req, rs, ep, i)
		if err == nil && i < attempts-1 && retryable(retry, resp, nil) {
			drain(resp.Body)
			release()
			rs.cluster.Done(ep, upstream.Outcome{Status: resp.StatusCode}, e.now(), len(eps))
			lastErr = nil
			continue
		}
		if err != nil {
			release()
			o := upstream.Outcome{ConnectFailure: errors.As(err, new(*connectError)), Reset: true}
			if errors.Is(err, context.DeadlineExceeded) {
				o.Timeout, o.Reset = true, false
			}
			rs.cluster.Done(ep, o, e.now(), len(eps))
			if req.Context().Err() != nil {
				return nil, err
			}
			lastErr = err
			if i < attempts-1 && retryable(retry, nil, err) {
				continue
			}
			if i > 0 {
				rs.flag(FlagRetryLimit)
			}
			return nil, err
		}
		if i > 0 && retryable(retry, resp, nil) {
			rs.flag(FlagRetryLimit)
		}
		n := len(eps)
		resp.Body = wrapBody(resp.Body, func() {
			release()
			rs.cluster.Done(ep, upstream.Outcome{Status: resp.StatusCode}, e.now(), n)
			out.cancel()
		})
		return resp, nil
	}
	if lastErr != nil {
		return nil, lastErr
	}
	return nil, upstream.ErrNoHealthy
}

var defaultRetry = &model.Retry{Attempts: 2, On: []string{model.RetryOnConnectFailure, model.RetryOnRefusedStream},
	Backoff: 25 * time.Millisecond}

type attemptCtx struct{ cancel context.CancelFunc }

// attempt sends the request once to ep, with the per-try timeout. Plain HTTP/1.1 goes through the
// engine's pooled client (h1client.go); HTTP/2, TLS origination and upgrades through http.Transport.
func (e *Engine) attempt(req *http.Request, rs *reqState, ep upstream.Endpoint, i int) (*http.Response, attemptCtx, error) {
	ctx, cancel := req.Context(), context.CancelFunc(func() {})
	if t := rs.rule.PerTryTimeout; t > 0 {
		ctx, cancel = context.WithTimeout(req.Context(), t)
	}
	pool := rs.cluster.Policy().Pool
	if d := pool.ConnectTimeout; d > 0 {
		ctx = context.WithValue(ctx, connectTimeoutKey{}, d)
	}
	if i > 0 {
		req.Header.Set("X-Envoy-Attempt-Count", strconv.Itoa(i+1))
	}
	tlsPolicy := rs.cluster.Policy().TLS
	var resp *http.Response
	var err error
	if rs.http1 && !rs.upgrade && (tlsPolicy == nil || rs.svc == nil) {
		// The request itself goes out: the endpoint is the connection's, not the request's.
		o := h1Request{maxRequests: pool.MaxRequestsPerConn, on1xx: rs.on1xx}
		if rs.body != nil {
			o.body = rs.body
		}
		resp, err = e.h1c.roundTrip(ctx, req, ep.Addr, o)
	} else if !rs.http1 && !rs.upgrade && (tlsPolicy == nil || rs.svc == nil) {
		// HTTP/2 (h2c, gRPC): the engine's multiplexing client (h2client.go).
		on1xx := rs.on1xx
		if isGRPC(req) {
			on1xx = nil // gRPC has no informational responses
		}
		resp, err = e.h2c.roundTrip(ctx, req, ep.Addr, rs.body, on1xx)
	} else {
		resp, err = e.transportAttempt(ctx, req, rs, ep, i, tlsPolicy)
	}
	if err != nil {
		cancel()
		if !errors.As(err, new(*connectError)) && isDialError(err) {
			err = &connectError{err: err}
		}
		if ctx.Err() == context.DeadlineExceeded && req.Context().Err() == nil {
			err = errTimeout
		}
		return nil, attemptCtx{}, err
	}
	return resp, attemptCtx{cancel: cancel}, nil
}

// transportAttempt sends the request through http.Transport: HTTP/2 (h2c), TLS origination, and
// HTTP/1.1 upgrades.
func (e *Engine) transportAttempt(ctx context.Context, req *http.Request, rs *reqState, ep upstream.Endpoint, i int, t *model.TLS) (*http.Response, error) {
	// req is the proxy's own outgoing request: a shallow copy with the endpoint address is enough.
	out := req.WithContext(ctx)
	u := *req.URL
	u.Host = ep.Addr.String()
	out.URL = &u
	if i > 0 && rs.body != nil {
		out.Body = io.NopCloser(strings.NewReader(string(rs.body)))
	}
	if rs.on1xx != nil && !isGRPC(req) { // gRPC has no informational responses
		out = out.WithContext(httptrace.WithClientTrace(out.Context(), &httptrace.ClientTrace{
			Got1xxResponse: func(code int, h textproto.MIMEHeader) error {
				rs.mu1xx.Lock()
				defer rs.mu1xx.Unlock()
				if !rs.rtDone {
					rs.on1xx(code, http.Header(h))
				}
				return nil
			}}))
		defer func() {
			rs.mu1xx.Lock()
			rs.rtDone = true
			rs.mu1xx.Unlock()
		}()
	}
	var retire **countedConn // set to the connection this request retires (maxRequestsPerConnection)
	if rs.http1 {
		switch limit := rs.cluster.Policy().Pool.MaxRequestsPerConn; {
		case limit == 1:
			out.Close = true
		case limit > 1:
			// Find the connection the transport uses; the request that reaches the limit retires it.
			// (The variable captured here lives on the heap; only requests with a limit pay for it.)
			conn := new(*countedConn)
			retire = conn
			out = out.WithContext(httptrace.WithClientTrace(out.Context(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
				if c, ok := i.Conn.(*countedConn); ok && c.requests.Add(1) >= int64(limit) {
					*conn = c
				}
			}}))
		}
		out.Proto, out.ProtoMajor, out.ProtoMinor = "HTTP/1.1", 1, 1
	}
	var resp *http.Response
	var err error
	switch {
	case t != nil && rs.svc != nil:
		// TLS origination: the client's plain request goes out over TLS to the endpoint.
		u.Scheme = "https"
		resp, err = e.tls.get(t, rs.svc.Hostname, rs.http1).RoundTrip(out)
	case rs.http1:
		resp, err = e.h1.RoundTrip(out)
	default:
		resp, err = e.h2.RoundTrip(out)
	}
	if err != nil {
		return nil, err
	}
	if retire != nil && *retire != nil {
		// Close the connection once this response has been read; the transport then drops it.
		conn := *retire
		resp.Body = wrapBody(resp.Body, func() { conn.Close() })
	}
	return resp, nil
}

// isDialError recognizes failures to open the upstream connection.
func isDialError(err error) bool {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return true
	}
	s := err.Error()
	return strings.Contains(s, "REFUSED_STREAM") || strings.Contains(s, "dial ") || strings.Contains(s, "connect to") ||
		strings.Contains(s, "hbone")
}

// retryable applies the retry policy to a response or an error.
func retryable(rt *model.Retry, resp *http.Response, err error) bool {
	if rt == nil {
		return false
	}
	on := func(c string) bool { return slices.Contains(rt.On, c) }
	if err != nil {
		if errors.Is(err, errTimeout) {
			return on(model.RetryOn5xx) || on(model.RetryOnGatewayError)
		}
		if errors.As(err, new(*connectError)) {
			return on(model.RetryOnConnectFailure) || on(model.RetryOn5xx) || on(model.RetryOnGatewayError) || on(model.RetryOnRefusedStream)
		}
		return on(model.RetryOnReset) || on(model.RetryOn5xx)
	}
	code := resp.StatusCode
	switch {
	case on(model.RetryOn5xx) && code >= 500:
		return true
	case on(model.RetryOnGatewayError) && (code == 502 || code == 503 || code == 504):
		return true
	case on(model.RetryOnRetriable4xx) && code == 409:
		return true
	case on(model.RetryOnRetriableCodes) && slices.Contains(rt.Codes, code):
		return true
	}
	if g := resp.Header.Get("Grpc-Status"); g != "" {
		switch g {
		case "1":
			return on(model.RetryOnGRPCCancelled)
		case "4":
			return on(model.RetryOnGRPCDeadline)
		case "8":
			return on(model.RetryOnGRPCResource)
		case "13":
			return on(model.RetryOnGRPCInternalError)
		case "14":
			return on(model.RetryOnGRPCUnavailable)
		}
	}
	return false
}

// backoff is Envoy's fully jittered exponential backoff, capped at ten times the base.
func backoff(base time.Duration, attempt int) time.Duration {
	if base <= 0 {
		base = 25 * time.Millisecond
	}
	ceil := base << min(attempt, 10)
	ceil = min(ceil, 10*base)
	return time.Duration(rand.Int64N(int64(ceil)) + 1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func drain(b io.ReadCloser) {
	io.Copy(io.Discard, io.LimitReader(b, 64<<10))
	b.Close()
}

// wrapBody calls done once when the body is closed, keeping io.ReadWriteCloser for upgrades.
func wrapBody(b io.ReadCloser, done func()) io.ReadCloser {
	w := &body{ReadCloser: b, done: done}
	if rwc, ok := b.(io.ReadWriteCloser); ok {
		return &rwBody{body: w, w: rwc}
	}
	return w
}

type body struct {
	io.ReadCloser
	once sync.Once
	done func()
}

func (b *body) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.done)
	return err
}

type rwBody struct {
	*body
	w io.Writer
}

func (b *rwBody) Write(p []byte) (int, error) { return b.w.Write(p) }

// mirror sends a copy of r (whose body is buffered) to m's backend and discards the answer.
func (e *Engine) mirror(r *http.Request, rs *reqState, m *model.Mirror) {
	select {
	case e.mirrors <- struct{}{}:
	default:
		return // too many mirrors in flight: drop this copy
	}
	svc := e.opts.State.ServiceByHostname(m.Backend.Host, e.opts.Namespace)
	if svc == nil {
		<-e.mirrors
		e.log.Debug("mirror dropped: unknown service", "backend", m.Backend.Host)
		return
	}
	port := m.Backend.Port
	if port == 0 {
		port = rs.info.Target.Port()
	}
	mrs := &reqState{e: e, info: rs.info, snap: rs.snap, rule: &model.Rule{}, backend: &m.Backend, svc: svc, port: port, http1: true}
	if p, ok := svc.Port(port); ok && (p.AppProtocol == state.AppProtocolHTTP2 || p.AppProtocol == state.AppProtocolGRPC) {
		mrs.http1 = false
	}
	mrs.cluster = e.clus.Cluster(svc.Hostname+"|"+strconv.Itoa(int(port))+"|", rs.snap.cfg.Destinations[svc.Hostname].PolicyForPort("", port))
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 10*time.Second)
	out := r.Clone(ctx)
	out.RequestURI = ""
	out.URL.Scheme = "http"
	out.Host = hostWithoutPort(r.Host) + "-shadow"
	if rs.body != nil {
		out.Body = io.NopCloser(strings.NewReader(string(rs.body)))
	} else {
		out.Body = http.NoBody
	}
	e.wg.Go(func() {
		defer func() { <-e.mirrors }()
		defer cancel()
		eps := e.endpoints(ctx, mrs)
		ep, err := mrs.cluster.Pick(eps, upstream.PickRequest{Now: e.now()})
		if err != nil {
			e.log.Debug("mirror dropped", "backend", m.Backend.Host, "err", err)
			return
		}
		resp, a, err := e.attempt(out, mrs, ep, 0)
		mrs.cluster.Done(ep, upstream.Outcome{}, e.now(), len(eps))
		if err != nil {
			e.log.Debug("mirror failed", "backend", m.Backend.Host, "err", err)
			return
		}
		drain(resp.Body)
		a.cancel()
	})
}

func hostWithoutPort(h string) string {
	if i := strings.LastIndexByte(h, ':'); i > 0 && !strings.Contains(h[i:], "]") {
		return h[:i]
	}
	return h
}
