// Package state is Ambit's in-memory model of the mesh: workloads, services, waypoints (as
// GatewayAddress references) and authorization policies, shaped after Istio's workload API
// (istio.workload.Workload, istio.workload.Service, istio.workload.GatewayAddress and
// istio.security.Authorization).
//
// A Store indexes that model for O(1) lookups by (network, IP), by namespaced hostname and by UID.
// Objects handed to a Store are immutable from then on: an update replaces an object, it never edits
// one in place, so a pointer returned by a lookup stays valid and consistent after the read lock is
// released. Producers (the local Kubernetes file compiler, the xDS client) convert and validate off-lock
// with Validate, then apply a whole batch atomically with Store.Apply or Store.Replace.
//
// It is the root of the pure mesh/ packages: no I/O, no goroutines of its own, and it imports no
// other Ambit package.
package state
