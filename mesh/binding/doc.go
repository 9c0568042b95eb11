// Package binding decides which waypoint a Service, ServiceEntry, Pod, WorkloadEntry or ServiceEntry
// endpoint is bound to, and the istio.io/WaypointBound condition that results, with the rules istiod
// applies (see waypoint-rules.md R1–R13; the 1.31 canary rule R14 is not implemented).
//
// Everything here is a pure function of its inputs: callers (the local Kubernetes compiler, tests,
// ambitctl) describe ready waypoints and namespace labels through a Lookup and get a decision back.
package binding
