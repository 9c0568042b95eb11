// Package policy evaluates L7 AuthorizationPolicies with Istio's semantics (DENY first, then ALLOW;
// with ALLOW policies present a request no rule allows is denied) and matches Istio path templates
// ({*} one segment, {**} one or more trailing segments). It is pure: no I/O, no clock.
package policy
