// Package hbone implements HBONE, Istio ambient's tunnel protocol: one HTTP/2 CONNECT stream per
// proxied TCP connection, inside mutual TLS 1.3 with SPIFFE X.509 identities, normally on port 15008.
//
// Wire contract (as ztunnel, see ztunnel-protocols.md 2.1-2.5):
//   - TLS 1.3 only, ALPN exactly "h2", client certificates required, no SNI and no session resumption.
//     The server picks its certificate by the local address the connection was accepted on (the
//     destination pod), never by SNI. It verifies the client chain against its trust bundle and requires a
//     SPIFFE URI SAN in its own trust domain. The client verifies the server chain and requires a URI SAN
//     equal to one of the expected identities.
//   - HTTP/2 with 4 MiB stream windows, a 16 MiB connection window, 1 MiB frames and PING keepalive.
//   - A request is CONNECT with :authority = the target "ip:port" ("[v6]:port") or "host:port", and the
//     headers baggage, forwarded and traceparent (helpers in headers.go). Success is :status 200; the
//     stream then carries raw bytes both ways. END_STREAM is a half-close; RST_STREAM with NO_ERROR or
//     CANCEL is a clean end of stream.
//
// Entry points: Server accepts connections and hands each CONNECT stream to a Handler, which authorizes
// and dials its upstream before calling Request.Accept (the 200 is sent only then). Pool dials streams
// over pooled connections keyed by (source identity, expected identities, next hop, source IP).
//
// The HTTP/2 layer is purpose-built on golang.org/x/net/http2's Framer and hpack rather than net/http:
// DATA is written straight from the caller's buffer (its TLS records gathered into one socket write per
// 16 records) and read straight into a waiting reader's buffer, flow-control credit is returned in large
// batches, and no goroutine sits between a stream and its socket. Package hbone imports nothing from
// agent/ or xdsclient/.
package hbone
