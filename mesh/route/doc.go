// Package route decides, for one captured outbound connection, how it is carried: through a waypoint,
// directly to the destination's node agent over HBONE, as plain TCP to a workload outside the mesh,
// passed through untouched, or rejected. It follows ztunnel's build_request (src/proxy/outbound.rs; docs/waypoint-rules.md §4):
// service-addressed traffic uses only the service's waypoint, workload-addressed traffic only the
// workload's waypoint, and a waypoint's own traffic to the workloads it serves goes direct.
//
// Build is a pure function of the request and a read-only View of the state: it does no I/O, starts no
// goroutines and, on the hot path, allocates nothing. It imports only mesh/state.
package route
