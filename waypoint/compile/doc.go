// Package compile is the L7 waypoint's one configuration compiler: pure functions from Gateway API and
// Istio objects (HTTPRoute, GRPCRoute, VirtualService, DestinationRule, AuthorizationPolicy and
// RequestAuthentication with targetRefs) and Ambit's LocalRateLimitPolicy to the waypoint's
// configuration spec (waypoint/model), with Istio's semantics and validation. Every invalid object is
// reported naming the object and the field.
//
// The same code serves both sources: the local files (the waypoint compiles a whole version with
// Compile, so one bad document rejects the version) and the API server (waypoint/kube feeds objects one
// by one to a Compiler, which validates each alone, so an invalid object is skipped and the rest apply).
// Like every compiler of Ambit, each module owns its configuration translation: the L4 objects are
// config/local's.
//
// It does no I/O and starts no goroutines. It must not import agent/, config/local, waypoint/kube or the
// engine: sources import it, not the other way round.
package compile
