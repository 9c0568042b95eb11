// Package dnsproxy is the node agent's DNS proxy (ztunnel's DNS proxying, port 15053): it answers the
// captured DNS queries of enrolled pods from the mesh state, as mesh/dnsname decides (Services,
// headless endpoints, ServiceEntry hosts with their allocated addresses, search-domain forms), and
// forwards every other query to the upstream resolvers over the transport it came on (UDP or TCP).
//
// Server.Handle is the one path from a query's bytes to the reply's: it parses (a message that does
// not parse gets FORMERR when its header is whole, is dropped otherwise), decides, answers or forwards,
// and truncates UDP replies to what the client accepts. ServeUDP and ServeTCP run it on the sockets the
// agent gets from redirect (a transparent UDP socket that learns each datagram's original destination
// and replies from it, and a transparent TCP listener). Bounds for hostile clients: a global pool of
// in-flight queries (a UDP query beyond it is dropped, counted), a cap on TCP connections, both also per
// client address (MaxPerSource, so that one pod cannot starve the others), an idle timeout and a
// message-size bound per TCP connection, an upstream timeout.
//
// Metrics use Istio's names (istio_dns_requests_total, istio_dns_upstream_requests_total,
// istio_dns_upstream_failures_total, istio_dns_upstream_request_duration_seconds) plus
// ambit_dns_responses_total{rcode,answered_by} and ambit_dns_dropped_total{reason}; each query gets an
// access-log line at debug level.
//
// It imports mesh/ and nothing of the agent; the agent wires it (agent/dns.go).
package dnsproxy
