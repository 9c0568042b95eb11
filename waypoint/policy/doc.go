// Package policy evaluates the L7 waypoint's AuthorizationPolicies with Istio's semantics (DENY first,
// then ALLOW; with ALLOW policies present a request no rule allows is denied), for HTTP requests
// (Evaluate) and for TCP streams through the waypoint (EvaluateTCP: HTTP-only conditions never match in
// ALLOW rules and are ignored in DENY rules), and matches Istio path templates ({*} one segment, {**} one
// or more trailing segments).
//
// Boundary with mesh/authz: this package evaluates the policies with targetRefs (compiled by
// waypoint/compile into waypoint/model) that attach to a waypoint, its Gateway class, a service or a
// route; the L4 policies a node agent enforces on connections to its pods are mesh/authz's, another
// model. The peer's identity is parsed by mesh/authz.PeerFromSPIFFE before it reaches a Request.
//
// It is pure: no I/O, no clock. It imports only waypoint/model.
package policy
