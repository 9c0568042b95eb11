// Package authz evaluates Istio's L4 authorization policies (istio.security.Authorization, from istiod
// over config/xds or compiled from files by config/local) for one connection to a pod, with the
// semantics of ztunnel's inbound authorization (src/rbac.rs): DENY policies first, then, when any ALLOW
// policy exists, at least one must match. Dry-run policies never decide. It also parses a peer's
// SPIFFE identity (PeerFromSPIFFE) for every component that authorizes by identity.
//
// Boundary with waypoint/policy: this package is the node agent's L4 model (the policies without
// targetRefs, selected by workload and evaluated on source, destination IP and port); the
// AuthorizationPolicies with targetRefs that a waypoint enforces per HTTP request or TCP stream are a
// different model, waypoint/model, evaluated by waypoint/policy. The two never evaluate each other's
// policies.
//
// Evaluate is a pure function: no I/O, no goroutines, no allocations. It imports only mesh/state.
package authz
