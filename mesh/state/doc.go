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
// The index is compact, for a million workloads: an address one workload claims maps to that workload
// alone (only shared addresses hold a list), endpoint sets are sorted slices merged with each batch's
// changes, and producers intern the strings workloads repeat (Interner), so a namespace or service account
// is stored once. A batch costs O(its size plus the endpoint sets it touches).
//
// It is the root of the pure mesh/ packages: no I/O, no goroutines of its own, and it imports no
// other Ambit package.
package state
