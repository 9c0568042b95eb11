package engine

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/ambit-mesh/ambit/mesh/authz"
	"github.com/ambit-mesh/ambit/mesh/istio"
	"github.com/ambit-mesh/ambit/mesh/state"
	"github.com/ambit-mesh/ambit/waypoint/jwt"
	"github.com/ambit-mesh/ambit/waypoint/model"
	"github.com/ambit-mesh/ambit/waypoint/policy"
	"github.com/ambit-mesh/ambit/waypoint/routing"
	"github.com/ambit-mesh/ambit/waypoint/telemetry"
	"github.com/ambit-mesh/ambit/waypoint/upstream"
)

// Response flags (Envoy's short names).
const (
	FlagNone          = "-"
	FlagNoRoute       = "NR"
	FlagNoHealthy     = "UH"
	FlagConnFailure   = "UF"
	FlagOverflow      = "UO"
	FlagRetryLimit    = "URX"
	FlagTimeout       = "UT"
	FlagDelay         = "DI"
	FlagFault         = "FI"
	FlagRateLimited   = "RL"
	FlagRBAC          = "RBAC"
	FlagUnauthorized  = "UAEX"
	FlagReset         = "UR"
	FlagProtocolError = "UPE"
	FlagDownstreamEnd = "DC"
	FlagStreamIdle    = "SI"
)

// reqState is one request through the engine. It is handed explicitly to every step (handler.go,
// proxy.go, forward.go): the proxy's hooks (rewrite, modifyResponse, proxyError) and its transport
// (RoundTrip) are its methods, and no state travels in the request's context.
type reqState struct {
	e         *Engine
	info      *ConnInfo
	snap      *snapshot
	sel       routing.Selected
	rule      *model.Rule
	backend   *model.Backend
	svc       *state.Service // backend service
	port      uint16         // backend service port
	cluster   *upstream.Cluster
	http1     bool
	body      []byte // replayable body, when buffered
	replay    bool
	span      trace.Span
	hashKey   string
	setCookie *http.Cookie
	upgrade   bool // an allowed (WebSocket) upgrade: only then may the backend answer 101

	// Parts of the request kept here rather than allocated on their own.
	rw         respWriter
	cbody      countingBody
	defBackend model.Backend
	out        http.Request // the outgoing request (proxy.go)
	outURL     url.URL
	ncBody     noCloseBody

	hv               [4]string // header values the proxy sets (rewrite, forward)
	reqHeaderBytes   int64     // the client's request header size, counted before forwarding edits the headers
	reqHeaderCounted bool
	on1xx            func(code int, h http.Header) // relays an informational response to the client

	mu1xx  sync.Mutex
	rtDone bool // guarded by mu1xx; the round trip returned: no more 1xx may touch the response

	flags    []string
	upstream netip.AddrPort
	dstWl    *state.Workload
	attempts int
	start    time.Time
	deadline time.Time
	idle     *idleWatch // Options.StreamIdleTimeout, when set
}

func (s *reqState) flag(f string) {
	for _, x := range s.flags {
		if x == f {
			return
		}
	}
	s.flags = append(s.flags, f)
}

func (s *reqState) flagString() string {
	if len(s.flags) == 0 {
		return FlagNone
	}
	return strings.Join(s.flags, ",")
}

// ServeHTTP runs one request through the pipeline described in the package documentation.
func (e *Engine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor == 2 {
		growStack(0) // a fresh goroutine per HTTP/2 stream; HTTP/1.1 reuses the connection's, already grown
	}
	info, _ := r.Context().Value(connKey{}).(*ConnInfo)
	if info == nil {
		http.Error(w, "no HBONE context", http.StatusInternalServerError)
		return
	}
	e.serveHTTP(w, r, r.Context(), info)
}

// serveHTTP is ServeHTTP for a request arriving on info, whose context is base.
func (e *Engine) serveHTTP(w http.ResponseWriter, r *http.Request, base context.Context, info *ConnInfo) {
	start := e.now()
	rs := e.newReqState(info, e.snap.Load())
	rs.start = start
	rs.rw.ResponseWriter = w
	rw := &rs.rw
	rs.cbody.ReadCloser = r.Body
	body := &rs.cbody
	// The server reads r.Body after the handler (the unread rest of the body, a 100-continue never
	// sent): it gets its own body back, not the counting wrapper.
	defer func(r *http.Request, orig io.ReadCloser) { r.Body = orig }(r, r.Body)
	r.Body = body

	ctx := base
	if d := e.opts.StreamIdleTimeout; d > 0 {
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		rc := http.NewResponseController(w)
		rs.idle = startIdleWatch(d, func() {
			cancel(errStreamIdle)
			_ = rc.SetReadDeadline(time.Now()) // unblocks a read of the request body
		})
		defer rs.idle.stop()
		rs.rw.idle, rs.cbody.idle = rs.idle, rs.idle
	}
	if hasB3(r.Header) {
		ctx = e.tracing.Propagator.Extract(ctx, headerCarrier(r.Header))
	} else {
		ctx = e.tracing.W3C.Extract(ctx, headerCarrier(r.Header)) // the same result, without B3's context values
	}
	ctx, span := e.tracing.Tracer.Start(ctx, "waypoint", trace.WithSpanKind(trace.SpanKindServer))
	if span.IsRecording() {
		span.SetName(r.Host + r.URL.Path)
		span.SetAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path),
			attribute.String("server.address", r.Host), attribute.String("component", "proxy"),
			attribute.String("istio.waypoint", e.opts.Namespace+"/"+e.opts.Name))
	}
	rs.span = span
	r = r.WithContext(ctx)

	e.handle(rw, r, rs)

	dur := e.now().Sub(start)
	code := rw.status
	if code == 0 {
		code = http.StatusOK
	}
	grpc := isGRPC(r)
	grpcStatus := ""
	if grpc {
		grpcStatus = rw.Header().Get("Grpc-Status")
		if grpcStatus == "" {
			grpcStatus = rw.Header().Get(http.TrailerPrefix + "Grpc-Status")
		}
	}
	proto := "http"
	if grpc {
		proto = "grpc"
	}
	var dstSvc *state.Service
	if rs.svc != nil {
		dstSvc = rs.svc
	} else {
		dstSvc = info.Service
	}
	lbl := &telemetry.Labels{Source: info.Source, SourcePrincipal: strings.TrimPrefix(info.PeerID, "spiffe://"), Destination: rs.dstWl,
		Service: dstSvc, Protocol: proto, Code: code, GRPCStatus: grpcStatus, ResponseFlags: rs.flagString(), MutualTLS: info.PeerID != ""}
	if rs.dstWl != nil {
		lbl.DestPrincipal = strings.TrimPrefix(rs.dstWl.Identity(), "spiffe://")
	}
	reqHdr := rs.reqHeaderBytes
	if !rs.reqHeaderCounted {
		reqHdr = headerSize(r.Header)
	}
	reqBytes := body.n.Load() + reqHdr
	respBytes := rw.n + headerSize(rw.Header())
	e.metrics.Observe(lbl, dur, reqBytes, respBytes)

	if span.IsRecording() {
		span.SetAttributes(attribute.Int("http.response.status_code", code), attribute.String("response_flags", rs.flagString()))
		if rs.upstream.IsValid() {
			span.SetAttributes(attribute.String("upstream_address", rs.upstream.String()))
		}
		if code >= 500 {
			span.SetStatus(codes.Error, http.StatusText(code))
		}
	}
	span.End()

	if !e.log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	attrs := []slog.Attr{
		slog.String("src.addr", info.Remote.String()), slog.String("src.identity", info.PeerID),
		slog.String("method", r.Method), slog.String("authority", r.Host), slog.String("path", r.URL.RequestURI()),
		slog.String("protocol", r.Proto), slog.Int("status", code), slog.String("response_flags", rs.flagString()),
		slog.String("upstream", addrString(rs.upstream)), slog.Int("attempts", rs.attempts),
		slog.Duration("duration", dur), slog.Int64("bytes_received", body.n.Load()), slog.Int64("bytes_sent", rw.n),
		slog.String("trace_id", span.SpanContext().TraceID().String()),
	}
	if dstSvc != nil {
		attrs = append(attrs, slog.String("dst.service", dstSvc.Hostname))
	}
	if rs.sel.Route != nil {
		attrs = append(attrs, slog.String("route", rs.sel.Route.Key()+"#"+rs.sel.Rule.Name))
	}
	e.log.LogAttrs(ctx, slog.LevelInfo, "request complete", attrs...)
}

func addrString(a netip.AddrPort) string {
	if !a.IsValid() {
		return "-"
	}
	return a.String()
}

func headerSize(h http.Header) int64 {
	var n int64
	for k, vs := range h {
		for _, v := range vs {
			n += int64(len(k) + len(v) + 4)
		}
	}
	return n
}

func isGRPC(r *http.Request) bool {
	return strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

// local answers the request without forwarding it (Envoy-style local reply).
func local(w http.ResponseWriter, r *http.Request, status int, body string, h http.Header) {
	for k, v := range h {
		w.Header()[k] = v
	}
	if isGRPC(r) && status != http.StatusOK {
		// gRPC clients read a trailers-only response: map the HTTP status as Envoy does.
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", strconv.Itoa(grpcFromHTTP(status)))
		w.Header().Set("Grpc-Message", body)
		w.WriteHeader(http.StatusOK)
		return
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	io.WriteString(w, body)
}

func grpcFromHTTP(s int) int {
	switch s {
	case 400:
		return 13
	case 401:
		return 16
	case 403:
		return 7
	case 404:
		return 12
	case 429, 502, 503, 504:
		return 14
	}
	return 2
}

func (e *Engine) target(info *ConnInfo) routing.Target {
	t := routing.Target{Port: info.Target.Port(), WaypointNamespace: e.opts.Namespace, WaypointName: e.opts.Name}
	if info.Service != nil {
		t.Host, t.Namespace, t.Name = info.Service.Hostname, info.Service.Namespace, info.Service.Name
	}
	return t
}

// destination is what policies' targetRefs are matched against for traffic arriving on info (with
// route selected, if any): the one selection the HTTP pipeline and AuthorizeTCP share.
func (e *Engine) destination(info *ConnInfo, route *model.Route) policy.Destination {
	d := policy.Destination{GatewayNamespace: e.opts.Namespace, GatewayName: e.opts.Name, RootNamespace: e.opts.RootNamespace,
		GatewayClass: istio.WaypointClassName, Route: route}
	if s := info.Service; s != nil {
		d.ServiceNamespace, d.ServiceName = s.Namespace, s.Name
	}
	return d
}

// targets reports whether a policy targeting refs applies to this request.
func (e *Engine) targets(refs []model.TargetRef, info *ConnInfo, route *model.Route) bool {
	d := e.destination(info, route)
	return policy.Targets(refs, &d)
}

// AuthorizeTCP applies the AuthorizationPolicies of the configuration in use that target info's
// destination (the waypoint's Gateway, its GatewayClass, the service; exactly those the HTTP path
// applies) to a TCP stream, with Istio's TCP semantics (policy.EvaluateTCP). The waypoint calls it for
// TCP ports and for the non-HTTP fallback on HTTP ports.
func (e *Engine) AuthorizeTCP(info *ConnInfo) policy.Decision {
	d := e.destination(info, nil)
	pols := policy.Select(e.snap.Load().cfg.Authz, &d)
	if len(pols) == 0 {
		return policy.Decision{Allow: true}
	}
	peer := authz.PeerFromSPIFFE(info.PeerID)
	return policy.EvaluateTCP(pols, &policy.Request{Principal: peer.Principal, Namespace: peer.Namespace,
		SourceIP: info.Remote.Addr().Unmap(), Port: info.Target.Port()})
}

func (e *Engine) handle(w http.ResponseWriter, r *http.Request, rs *reqState) {
	info, cfg := rs.info, rs.snap.cfg
	now := e.now()

	// 0. Upgrades: WebSocket only; h2c is stripped (HTTP2-Settings too), any other type refused.
	// HTTP2-Settings is connection-specific: never forwarded.
	switch classifyUpgrade(r.Header) {
	case upgradeAllow:
		rs.upgrade = true
	case upgradeStrip:
		stripUpgrade(r.Header)
	case upgradeReject:
		local(w, r, http.StatusForbidden, "", nil)
		e.log.Debug("upgrade refused", "upgrade", r.Header.Get("Upgrade"), "path", r.URL.Path)
		return
	}
	r.Header.Del("Http2-Settings")

	// 1. RequestAuthentication.
	var rules []model.JWTRule
	for _, p := range cfg.JWT {
		if e.targets(p.Targets, info, nil) {
			rules = append(rules, p.Rules...)
		}
	}
	var claims *policy.Claims
	if len(rules) > 0 {
		res, err := e.authn.Authenticate(r.Context(), r, rules, now)
		if err != nil {
			rs.flag(FlagUnauthorized)
			msg := jwtMessage(err)
			local(w, r, http.StatusUnauthorized, msg, http.Header{"Www-Authenticate": {`Bearer realm="` + r.Host + `", error="invalid_token"`}})
			e.log.Debug("JWT rejected", "err", err)
			return
		}
		if res != nil {
			claims = res.Claims
		}
		// Claim headers are always the waypoint's: a client's values never pass, token or not.
		jwt.Apply(r, rules, res)
	}

	// 2. Authorization.
	var pols []*model.AuthzPolicy
	for _, p := range cfg.Authz {
		if e.targets(p.Targets, info, nil) {
			pols = append(pols, p)
		}
	}
	if len(pols) > 0 {
		// The peer's identity as the node agents and the waypoint's TCP path read it (mesh/authz).
		peer := authz.PeerFromSPIFFE(info.PeerID)
		pr := &policy.Request{Principal: peer.Principal, Namespace: peer.Namespace, SourceIP: info.Remote.Addr().Unmap(), Host: r.Host,
			Port: info.Target.Port(), Method: r.Method, Path: r.URL.Path, Header: r.Header, Auth: claims}
		// remote.ip and remoteIpBlocks: with Istio's default of no trusted proxies (numTrustedProxies 0),
		// the remote address is the downstream peer; X-Forwarded-For is not trusted.
		pr.RemoteIP = pr.SourceIP
		d := policy.Evaluate(pols, pr)
		if !d.Allow {
			rs.flag(FlagRBAC)
			local(w, r, http.StatusForbidden, "RBAC: access denied", nil)
			e.log.Debug("request denied", "reason", d.Reason(), "path", r.URL.Path)
			return
		}
	}

	// 3. Routing.
	tgt := e.target(info)
	tb := rs.snap.table(tgt)
	if !tb.Empty() {
		sel, ok := tb.Select(&routing.Request{Method: r.Method, Path: r.URL.Path, Query: r.URL.Query(), Header: r.Header})
		if !ok {
			rs.flag(FlagNoRoute)
			local(w, r, http.StatusNotFound, "", nil)
			return
		}
		rs.sel, rs.rule = sel, sel.Rule
	} else {
		rs.rule = &model.Rule{}
	}

	// 4. Local rate limits.
	for _, rl := range cfg.RateLimits {
		if !e.targets(rl.Targets, info, rs.sel.Route) {
			continue
		}
		e.bmu.Lock()
		b := e.buckets[rl.Key()]
		e.bmu.Unlock()
		if b == nil {
			continue
		}
		d := b.Take(now)
		h := w.Header()
		h.Set("X-Ratelimit-Limit", strconv.FormatInt(d.Limit, 10))
		h.Set("X-Ratelimit-Remaining", strconv.FormatInt(d.Remaining, 10))
		reset := int64((d.Reset + time.Second - 1) / time.Second)
		h.Set("X-Ratelimit-Reset", strconv.FormatInt(reset, 10))
		if !d.Allowed {
			rs.flag(FlagRateLimited)
			local(w, r, http.StatusTooManyRequests, "local_rate_limited", http.Header{"Retry-After": {strconv.FormatInt(reset, 10)}})
			return
		}
	}

	rule := rs.rule
	ctx := r.Context()
	if rule.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, rule.Timeout, errTimeout)
		defer cancel()
		rs.deadline = now.Add(rule.Timeout)
		r = r.WithContext(ctx)
	}

	// 5. Fault injection.
	if f := rule.Fault; f != nil {
		if f.Delay > 0 && hit(f.DelayPercent) {
			rs.flag(FlagDelay)
			t := time.NewTimer(f.Delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				e.timeoutOrCancel(w, r, rs)
				return
			}
		}
		if (f.AbortStatus != 0 || f.AbortGRPC != 0) && hit(f.AbortPercent) {
			rs.flag(FlagFault)
			if f.AbortGRPC != 0 && isGRPC(r) {
				w.Header().Set("Content-Type", "application/grpc")
				w.Header().Set("Grpc-Status", strconv.Itoa(f.AbortGRPC))
				w.Header().Set("Grpc-Message", "fault filter abort")
				w.WriteHeader(http.StatusOK)
				return
			}
			local(w, r, cmpOr(f.AbortStatus, http.StatusServiceUnavailable), "fault filter abort", nil)
			return
		}
	}

	// 6. Redirect.
	if red := rule.Redirect; red != nil {
		w.Header().Set("Location", redirectURL(r, red, rs.sel.Match))
		w.WriteHeader(red.StatusCode)
		return
	}

	// 7. Backend.
	if err := e.chooseBackend(r, rs); err != nil {
		if errors.Is(err, errNoBackend) {
			rs.flag(FlagNoRoute)
			local(w, r, http.StatusInternalServerError, "no backend", nil)
			return
		}
		rs.flag(FlagNoHealthy)
		local(w, r, http.StatusServiceUnavailable, "no healthy upstream", nil)
		return
	}

	// 8. Replayable body for retries and mirrors.
	if (rule.Retry != nil && rule.Retry.Attempts > 0 || len(rule.Mirrors) > 0) && r.Body != nil && r.Body != http.NoBody {
		e.bufferBody(r, rs)
	} else if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		rs.replay = true
	}
	for i := range rule.Mirrors {
		if rs.replay && hit(rule.Mirrors[i].Percent) {
			e.mirror(r, rs, &rule.Mirrors[i])
		}
	}

	// 9. Forward.
	if rs.upgrade {
		rs.forwardUpgrade(w, r)
		return
	}
	rs.forward(w, r)
}

func cmpOr(a, b int) int {
	if a != 0 {
		return a
	}
	return b
}

func hit(percent float64) bool {
	switch {
	case percent >= 100:
		return true
	case percent <= 0:
		return false
	}
	return rand.Float64()*100 < percent
}

func jwtMessage(err error) string {
	for _, e := range []error{jwt.ErrExpired, jwt.ErrAudience, jwt.ErrUnknownIssuer, jwt.ErrJWKS} {
		if errors.Is(err, e) {
			return jwt.Message(e)
		}
	}
	return jwt.Message(jwt.ErrVerification)
}

func (e *Engine) timeoutOrCancel(w http.ResponseWriter, r *http.Request, rs *reqState) {
	if errors.Is(context.Cause(r.Context()), errStreamIdle) {
		rs.flag(FlagStreamIdle)
		local(w, r, http.StatusRequestTimeout, "stream timeout", nil)
		return
	}
	if errors.Is(context.Cause(r.Context()), errTimeout) {
		rs.flag(FlagTimeout)
		local(w, r, http.StatusGatewayTimeout, "upstream request timeout", nil)
		return
	}
	rs.flag(FlagDownstreamEnd)
}

func redirectURL(r *http.Request, red *model.Redirect, m *model.Match) string {
	scheme := cmpOrS(red.Scheme, "http")
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = cmpOrS(red.Hostname, host)
	if red.Port != 0 && !(scheme == "http" && red.Port == 80 || scheme == "https" && red.Port == 443) {
		host = net.JoinHostPort(host, strconv.Itoa(int(red.Port)))
	}
	path := routing.RewritePath(r.URL.Path, red.PathModifier, m)
	u := scheme + "://" + host + path
	if r.URL.RawQuery != "" {
		u += "?" + r.URL.RawQuery
	}
	return u
}

func cmpOrS(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// chooseBackend picks the weighted backend of the rule (or the original destination), its service,
// port and cluster.
func (e *Engine) chooseBackend(r *http.Request, rs *reqState) error {
	info, rule := rs.info, rs.rule
	var b *model.Backend
	if len(rule.Backends) > 0 {
		var ok bool
		if b, ok = routing.PickBackend(rule.Backends, rand.Uint64N); !ok {
			return errNoBackend
		}
	} else if info.Service != nil {
		rs.defBackend = model.Backend{Host: info.Service.Hostname, Namespace: info.Service.Namespace, Port: info.Target.Port(), Weight: 1}
		b = &rs.defBackend
	}
	rs.backend = b
	if b == nil {
		// Workload-addressed traffic without a route: the original destination.
		rs.port = info.Target.Port()
		rs.http1 = info.Protocol != state.AppProtocolHTTP2 && info.Protocol != state.AppProtocolGRPC && r.ProtoMajor == 1
		rs.cluster = e.clus.Cluster("workload|"+info.Target.String(), model.TrafficPolicy{})
		return nil
	}
	svc := e.opts.State.ServiceByHostname(b.Host, e.opts.Namespace)
	if svc == nil {
		return errNoBackend
	}
	rs.svc = svc
	port := b.Port
	if port == 0 {
		if _, ok := svc.Port(info.Target.Port()); ok {
			port = info.Target.Port()
		} else if len(svc.Ports) > 0 {
			port = svc.Ports[0].ServicePort
		}
	}
	rs.port = port
	proto := info.Protocol
	if p, ok := svc.Port(port); ok && p.AppProtocol != state.AppProtocolUnknown {
		proto = p.AppProtocol
	}
	rs.http1 = proto != state.AppProtocolHTTP2 && proto != state.AppProtocolGRPC
	if proto == state.AppProtocolUnknown && r.ProtoMajor == 2 {
		rs.http1 = false
	}
	dest := rs.snap.cfg.Destinations[svc.Hostname]
	pol := dest.PolicyForPort(b.Subset, port)
	if dest == nil {
		pol.LB.Kind = model.LBLeastRequest
	}
	rs.cluster = e.clus.Cluster(svc.Hostname+"|"+strconv.Itoa(int(port))+"|"+b.Subset, pol)
	switch lb := pol.LB; {
	case lb.Kind != model.LBConsistentHash:
	case lb.HashHeader != "":
		rs.hashKey = r.Header.Get(lb.HashHeader)
	case lb.HashSourceIP:
		rs.hashKey = info.Remote.Addr().String()
	case lb.HashQuery != "":
		rs.hashKey = r.URL.Query().Get(lb.HashQuery)
	case lb.HashCookie != "":
		if c, err := r.Cookie(lb.HashCookie); err == nil {
			rs.hashKey = c.Value
		} else if lb.HashCookieTTL > 0 {
			v := randomHex(8)
			rs.hashKey = v
			rs.setCookie = &http.Cookie{Name: lb.HashCookie, Value: v, MaxAge: int(lb.HashCookieTTL / time.Second), HttpOnly: true}
		}
	}
	return nil
}

// headerCarrier is propagation.HeaderCarrier without its allocation per Get and Set: the propagators'
// lower-case keys map to canonical header names without building them.
type headerCarrier http.Header

func (c headerCarrier) Get(key string) string {
	if vs := c[traceHeader(key)]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

func (c headerCarrier) Set(key, value string) { c[traceHeader(key)] = []string{value} }

func (c headerCarrier) Keys() []string { return propagation.HeaderCarrier(c).Keys() }

// traceHeader returns the canonical form of a trace propagation header name.
func traceHeader(k string) string {
	switch k {
	case "traceparent":
		return "Traceparent"
	case "tracestate":
		return "Tracestate"
	case "baggage":
		return "Baggage"
	case "b3":
		return "B3"
	case "x-b3-traceid":
		return "X-B3-Traceid"
	case "x-b3-spanid":
		return "X-B3-Spanid"
	case "x-b3-parentspanid":
		return "X-B3-Parentspanid"
	case "x-b3-sampled":
		return "X-B3-Sampled"
	case "x-b3-flags":
		return "X-B3-Flags"
	}
	return http.CanonicalHeaderKey(k)
}

// hasB3 reports whether h carries any B3 header (single or multi).
func hasB3(h http.Header) bool {
	for _, k := range [...]string{"B3", "X-B3-Traceid", "X-B3-Spanid", "X-B3-Sampled", "X-B3-Flags", "X-B3-Parentspanid"} {
		if _, ok := h[k]; ok {
			return true
		}
	}
	return false
}

// requestID returns a random 128-bit hex ID (math/rand/v2's ChaCha8 source: unique, not secret).
func requestID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return hex.EncodeToString(b[:])
}

func randomHex(n int) string {
	b := make([]byte, n)
	crand.Read(b) //nolint:errcheck // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// endpoints returns the usable endpoints of the request's backend (upstream.Endpoints), or the
// original destination of workload-addressed traffic without a route.
func (e *Engine) endpoints(ctx context.Context, rs *reqState) []upstream.Endpoint {
	if rs.backend == nil {
		w := rs.info.Workload
		if w == nil {
			return nil
		}
		return []upstream.Endpoint{{Workload: w, Addr: rs.info.Target}}
	}
	svc := rs.svc
	var sub map[string]string
	if d := rs.snap.cfg.Destinations[svc.Hostname]; d != nil && rs.backend.Subset != "" {
		s, ok := d.Subsets[rs.backend.Subset]
		if !ok {
			return nil
		}
		sub = s.Labels
	}
	eps := upstream.Endpoints(e.opts.State.Endpoints(svc.Key()), svc, rs.port, sub, rs.snap.cfg.WorkloadLabels)
	if sub == nil {
		eps = e.hostEndpoints(ctx, rs, eps) // DNS endpoints carry no labels: no subset selects them
	}
	return eps
}

// bufferBody reads up to MaxReplayBody of the body so it can be replayed; a larger body streams once.
func (e *Engine) bufferBody(r *http.Request, rs *reqState) {
	if r.ContentLength > MaxReplayBody {
		return
	}
	buf, err := io.ReadAll(io.LimitReader(r.Body, MaxReplayBody+1))
	if err != nil || len(buf) > MaxReplayBody {
		r.Body = readCloser{io.MultiReader(bytes.NewReader(buf), r.Body), r.Body}
		return
	}
	rs.body, rs.replay = buf, true
	r.Body = io.NopCloser(bytes.NewReader(buf))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf)), nil }
}

type readCloser struct {
	io.Reader
	io.Closer
}

// newReqState returns the state of a request arriving on info.
func (e *Engine) newReqState(info *ConnInfo, snap *snapshot) *reqState {
	return &reqState{e: e, info: info, snap: snap}
}

// rewrite builds the upstream request out from the client's request in.
func (rs *reqState) rewrite(in, out *http.Request) {
	e := rs.e
	out.URL.Scheme = "http"
	rule := rs.rule
	applyRequestFilters(out, &rule.Filters, rs.sel.Match)
	if rs.backend != nil {
		applyRequestFilters(out, &rs.backend.Filters, rs.sel.Match)
	}
	// The values live in rs (rs.hv): setting them costs no allocation of their own.
	if ip := rs.info.Remote.Addr(); ip.IsValid() {
		if prior := out.Header.Get("X-Forwarded-For"); prior != "" {
			rs.hv[0] = prior + ", " + ip.Unmap().String()
		} else {
			rs.hv[0] = ip.Unmap().String()
		}
		out.Header["X-Forwarded-For"] = rs.hv[0:1:1]
	}
	rs.hv[1] = "http"
	out.Header["X-Forwarded-Proto"] = rs.hv[1:2:2]
	if out.Header.Get("X-Request-Id") == "" {
		rs.hv[2] = requestID()
		out.Header["X-Request-Id"] = rs.hv[2:3:3]
	}
	// W3C trace context always; B3 too when the client used B3 (the formats the client understands).
	b3 := out.Header.Get("X-B3-Traceid") != "" || out.Header.Get("B3") != ""
	if b3 {
		for _, h := range []string{"X-B3-Traceid", "X-B3-Spanid", "X-B3-Parentspanid", "X-B3-Sampled", "X-B3-Flags", "B3"} {
			out.Header.Del(h)
		}
		e.tracing.Propagator.Inject(in.Context(), headerCarrier(out.Header))
	} else {
		out.Header.Del("Tracestate")
		e.tracing.W3C.Inject(in.Context(), headerCarrier(out.Header))
	}
	if rs.http1 && out.ProtoMajor == 2 {
		out.Header.Del("Te") // h2 "te: trailers" is meaningless to an HTTP/1.1 upstream
	}
}

func applyRequestFilters(r *http.Request, f *model.Filters, m *model.Match) {
	applyHeaderMod(r.Header, &f.Request)
	if rw := f.Rewrite; rw != nil {
		if rw.Hostname != "" {
			r.Host = rw.Hostname
		}
		if rw.FullPath != "" || rw.PrefixSet {
			r.URL.Path = routing.RewritePath(r.URL.Path, rw.PathModifier, m)
			r.URL.RawPath = ""
		}
	}
}

func applyHeaderMod(h http.Header, m *model.HeaderMod) {
	for _, s := range m.Set {
		h.Set(s.Name, s.Value)
	}
	for _, a := range m.Add {
		h.Add(a.Name, a.Value)
	}
	for _, name := range m.Remove {
		h.Del(name)
	}
}

// modifyResponse applies the response filters.
func (rs *reqState) modifyResponse(resp *http.Response) error {
	if resp.StatusCode == http.StatusSwitchingProtocols && (!rs.upgrade || !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket")) {
		return errUnexpectedUpgrade // the proxy closes the body (releasing the attempt) and calls proxyError
	}
	if resp.StatusCode == http.StatusSwitchingProtocols && rs.idle != nil {
		// The upgraded bytes bypass the request's counters; the HBONE stream's idle timeout covers them.
		rs.idle.stop()
	}
	applyHeaderMod(resp.Header, &rs.rule.Filters.Response)
	if rs.backend != nil {
		applyHeaderMod(resp.Header, &rs.backend.Filters.Response)
	}
	if rs.setCookie != nil {
		resp.Header.Add("Set-Cookie", rs.setCookie.String())
	}
	return nil
}

// proxyError answers a request that could not be forwarded.
func (rs *reqState) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	e := rs.e
	switch {
	case errors.Is(err, upstream.ErrOverflow):
		rs.flag(FlagOverflow)
		local(w, r, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: overflow", nil)
	case errors.Is(err, errUnexpectedUpgrade):
		rs.flag(FlagProtocolError)
		local(w, r, http.StatusBadGateway, "upstream connect error or disconnect/reset before headers. reset reason: protocol error", nil)
	case errors.Is(err, upstream.ErrNoHealthy):
		rs.flag(FlagNoHealthy)
		local(w, r, http.StatusServiceUnavailable, "no healthy upstream", nil)
	case errors.Is(context.Cause(r.Context()), errStreamIdle):
		rs.flag(FlagStreamIdle)
		local(w, r, http.StatusRequestTimeout, "stream timeout", nil)
	case errors.Is(context.Cause(r.Context()), errTimeout) || errors.Is(err, errTimeout):
		rs.flag(FlagTimeout)
		local(w, r, http.StatusGatewayTimeout, "upstream request timeout", nil)
	case r.Context().Err() != nil:
		rs.flag(FlagDownstreamEnd)
		w.WriteHeader(499) // client went away; nothing reaches it
	case errors.As(err, new(*connectError)):
		rs.flag(FlagConnFailure)
		if te := (*tlsError)(nil); errors.As(err, &te) {
			// Envoy's words for a failed TLS origination.
			local(w, r, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: "+
				"remote connection failure, transport failure reason: TLS_error: "+te.err.Error(), nil)
			break
		}
		local(w, r, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection failure", nil)
	default:
		rs.flag(FlagReset)
		local(w, r, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection termination", nil)
	}
	e.log.Debug("forward failed", "err", err, "path", r.URL.Path)
}

// connectError marks a failure to establish the upstream connection.
type connectError struct{ err error }

func (c *connectError) Error() string { return fmt.Sprintf("connect upstream: %v", c.err) }
func (c *connectError) Unwrap() error { return c.err }

// respWriter counts the response and remembers its status.
type respWriter struct {
	http.ResponseWriter
	status int
	n      int64
	idle   *idleWatch
}

func (w *respWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *respWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	if n > 0 && w.idle != nil {
		w.idle.touch()
	}
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *respWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// Flush implements http.Flusher.
func (w *respWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

type countingBody struct {
	io.ReadCloser
	n    atomic.Int64 // read by ServeHTTP while a streamed body's writer may still count
	idle *idleWatch
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	if n > 0 && b.idle != nil {
		b.idle.touch()
	}
	return n, err
}

// idleWatch ends a request that moves no body bytes for its timeout: a timer ticks every quarter of it
// and expires the request after idleTicks ticks without activity (touch), so bytes cost one atomic add
// rather than a timer reset.
type idleWatch struct {
	activity atomic.Uint32
	tick     time.Duration
	expire   func()

	mu      sync.Mutex
	timer   *time.Timer // guarded by mu
	seen    uint32      // guarded by mu; activity at the last tick
	quiet   int         // guarded by mu; ticks without activity
	stopped bool        // guarded by mu
}

const idleTicks = 4

func startIdleWatch(d time.Duration, expire func()) *idleWatch {
	w := &idleWatch{tick: max(d/idleTicks, time.Millisecond), expire: expire}
	w.mu.Lock()
	w.timer = time.AfterFunc(w.tick, w.check)
	w.mu.Unlock()
	return w
}

func (w *idleWatch) touch() { w.activity.Add(1) }

func (w *idleWatch) check() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	if now := w.activity.Load(); now != w.seen {
		w.seen, w.quiet = now, 0
	} else if w.quiet++; w.quiet >= idleTicks {
		w.stopped = true
		w.expire()
		return
	}
	w.timer.Reset(w.tick)
}

func (w *idleWatch) stop() {
	w.mu.Lock()
	w.stopped = true
	w.timer.Stop()
	w.mu.Unlock()
}

// stackReserve is the stack a request's goroutine grows to at once, at the top of ServeHTTP, where
// growing copies a few frames; without it the HTTP/2 server's fresh goroutine per stream doubles its
// stack two or three times deep in the proxy and transport, each copy walking every frame.
const stackReserve = 12 << 10

// growStack moves the calling goroutine to a stack of at least stackReserve bytes.
//
//go:noinline
func growStack(i int) byte {
	var b [stackReserve]byte
	b[i%len(b)] = 1
	return b[(i+1)%len(b)]
}
