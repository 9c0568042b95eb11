// Package binding decides which waypoint a Service, ServiceEntry, Pod, WorkloadEntry or ServiceEntry
// endpoint is bound to, and the istio.io/WaypointBound condition that results, with the rules istiod
// applies (docs/waypoint-rules.md R1–R13 and §3; the 1.31 canary rule R14 is not implemented). The
// table tests name each case after its rule.
//
// Everything here is a pure function of its inputs: callers (the local Kubernetes compiler, tests,
// ambitctl) describe ready waypoints and namespace labels through a Lookup and get a decision back. It
// does no I/O and starts no goroutines; it imports only mesh/istio, mesh/state and Kubernetes label
// selectors.
package binding
