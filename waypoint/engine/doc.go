// Package engine is the L7 engine of `ambit waypoint`: it serves HTTP/1.1 and HTTP/2 (h2c, gRPC) inside
// each HBONE stream addressed to an HTTP service port, applies the waypoint's L7 configuration
// (waypoint/model, compiled from HTTPRoute, GRPCRoute, VirtualService, DestinationRule,
// AuthorizationPolicy, RequestAuthentication and LocalRateLimitPolicy) and forwards each request to an
// endpoint over HBONE.
//
// Per request, in order: JWT authentication (401 on an invalid token), authorization (DENY then ALLOW;
// 403 "RBAC: access denied"), route selection (404 NR when routes attach but none matches), local rate
// limit (429 RL with x-ratelimit-* headers), fault injection (delay DI, abort FI), redirect, header
// and URL rewrites, mirroring, then forwarding with the DestinationRule's load balancer, connection
// pool limits (503 UO), outlier detection, the route's retries (URX when exhausted) and timeouts (504
// UT). Every request is counted in Istio's HTTP metrics, written as one access-log line, and traced
// (W3C traceparent and B3 in, W3C and B3 out, spans over OTLP).
//
// Serving: HTTP/1.1 goes through the engine's own server loop (h1server.go) on the goroutine
// ServeConn runs on: requests parsed by http.ReadRequest with net/http's server checks on top (so the
// same requests are rejected with the same status codes: 400, 417, 431 over MaxHeaderBytes, 501, 505),
// net/http's keep-alive rules (HTTP/1.0 keep-alive, Connection: close, an unsent 100 Continue or more
// than 256 KiB of unread body closes the connection), pipelined requests answered in order, a 30 s
// header read timeout and an hour's idle timeout, and the 4 KiB reader and writer back in their pools
// while the connection is idle. It has no background read per request: a client that goes away is
// seen at the next write (or when ServeConn's context ends). HTTP/2 with prior knowledge (h2c, gRPC),
// told apart by the client preface, goes through the engine's own server on x/net/http2's Framer and hpack
// (h2server.go): one read loop per connection, one goroutine per stream only while its handler runs,
// frames of concurrent streams coalesced into shared socket writes, a small response sent as HEADERS
// plus one DATA with END_STREAM. Its bounds: 1000 concurrent streams (REFUSED_STREAM beyond), at most
// 2000 running handlers and fewer than half of 500+ streams reset before their response (rapid reset:
// GOAWAY ENHANCE_YOUR_CALM), header lists of MaxHeaderBytes (431; a CONTINUATION flood ends the
// connection), 256 KiB per stream and 1 MiB per connection of unread request body (FLOW_CONTROL_ERROR),
// control frames answered in line so a peer that does not read stalls its own connection, 64 KiB
// frames, and a connection without streams for an hour closed with GOAWAY.
//
// Forwarding: the engine is its own reverse proxy (proxy.go: ReverseProxy's header rules, without its
// per-request copies; the outgoing request shares the client's header map). Plain HTTP/1.1 upstreams
// go through its own client (h1client.go): keep-alive connections pooled per endpoint (at most 256 idle
// per endpoint, closed after 90 s idle), the request head written from one pooled buffer, the response
// read on the handler's goroutine; a streamed request body is written by one goroutine meanwhile. HTTP/2
// (h2c, gRPC) upstreams go through its own client on x/net/http2's Framer and hpack (h2client.go):
// requests multiplexed per endpoint (at most 256 streams per connection, bounded by the endpoint's
// MAX_CONCURRENT_STREAMS, and 16 connections per endpoint, closed after 90 s without streams; GOAWAY
// refuses newer streams, which the retry policy treats as refused; headers encoded straight from the
// request's map, 256 KiB stream and 4 MiB connection receive windows, response header lists bounded
// by MaxHeaderBytes, a busy connection silent for 30 s pinged and closed when still silent 15 s later).
// TLS origination and WebSocket upgrades use http.Transport (and ReverseProxy for
// the upgrade's tunnel).
//
// Buffering and limits (backpressure): bodies stream through a pooled 32 KiB copy buffer in both
// directions and are never held whole, except a request body of at most MaxReplayBody (64 KiB) when the
// rule retries or mirrors (a larger body is streamed once: no retry, no mirror). Request headers are
// limited to 64 KiB (HTTP/1.1 and HTTP/2). An HTTP/2 client may have at most 256 KiB of request body
// per stream and 1 MiB per connection in flight to the waypoint (flow control), and the waypoint's
// HBONE streams to endpoints use 256 KiB windows, so a slow client holds at most about 256 KiB per
// response in the waypoint plus one copy buffer. On each downstream stream, small reads go through a
// pooled 4 KiB read-ahead, HTTP/2 writes are coalesced with at most 64 KiB pending, and the read
// deadline (moved several times per request by net/http's server) is one lazily re-armed timer. With
// Options.StreamIdleTimeout (the waypoint's --stream-idle-timeout, Envoy's stream_idle_timeout), a request
// whose body moves no bytes either way for that long is ended: 408 "stream timeout" (flag SI) before the
// response started, a reset after; a trickling body cannot hold a request forever.
//
// Upgrades, as Istio configures Envoy (upgrade_configs: websocket): a WebSocket upgrade is relayed as raw
// bytes after the 101; an h2c upgrade is stripped (Upgrade, HTTP2-Settings and their Connection tokens)
// and the request continues as HTTP/1.1, as Envoy's HTTP/1 codec does; any other upgrade type gets 403.
// A 101 from a backend to a request without an allowed upgrade is never relayed (502 UPE), so no
// backend can turn a stream into a tunnel that later requests' policy does not see (h2c smuggling).
//
// The engine is safe for concurrent use; Update swaps the configuration atomically, so a request runs
// start to end with one version and in-flight requests are never dropped by a reload. The state of one
// request is handed from step to step explicitly (it owns the request's proxy hooks), never through the
// request's context.
//
// It executes what the pure packages decide (routing, policy, jwt, ratelimit, upstream) and must not
// import the compiler, the configuration sources (waypoint/compile, waypoint/kube, config/), agent/ or
// the waypoint package.
package engine
