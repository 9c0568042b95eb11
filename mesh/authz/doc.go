// Package authz evaluates Istio's L4 authorization policies (istio.security.Authorization) for one
// inbound connection, with the exact semantics of ztunnel (ztunnel-protocols.md 4.3): DENY policies
// first, then, when any ALLOW policy exists, at least one must match. Dry-run policies never decide.
//
// Evaluate is a pure function: no I/O, no goroutines, no allocations.
package authz
