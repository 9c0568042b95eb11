// Package upstream chooses where the L7 waypoint sends a request: the endpoints of a backend
// (Endpoints: healthy, in the DestinationRule subset, at the target port) and its per-destination state:
// load balancing (round robin, least request, random, consistent hash), circuit breaking
// (DestinationRule connection pool limits) and outlier detection (ejection after consecutive errors).
// Clusters survive configuration reloads, so counters and ejections are not reset by an unrelated
// change. IdlePool keeps the engine's idle HTTP/1.1 keep-alive connections per endpoint (bounded per
// address, expired after an idle timeout); it decides which to keep and leaves closing to the caller.
//
// Two parts do I/O, at request time and on the engine's behalf: Resolver resolves the hostnames of DNS
// endpoints (ServiceEntry resolution DNS; HostEndpoints turns them into endpoints) with a resolv.conf's
// name servers and caches each answer for its TTL, and TLSConfig reads the certificate files of a
// DestinationRule's TLS origination (SIMPLE, MUTUAL). The rest is pure (time is passed in). Of Ambit it
// imports only mesh/state and waypoint/model.
package upstream
