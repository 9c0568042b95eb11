// Package local reads Kubernetes objects from local YAML or JSON files and compiles the L4 ones into
// Ambit's state model with the rules istiod applies: service endpoints from selectors, workload
// identities, waypoint bindings and their conditions (mesh/binding), and L4 authorization policies. It
// also owns the files themselves for both processes: Watcher re-reads them once a change has settled
// (one debounce), and a version that does not load or compile is rejected as a whole.
//
// It is the configuration source for single-machine use (ambit agent --config-file, ambit waypoint
// --config-file, the demo, tests) and for the offline ambitctl commands; all share Load and Compile so
// they always agree.
//
// Supported kinds: v1 Namespace, Node, Service, Pod (and v1 List); gateway.networking.k8s.io Gateway
// and GatewayClass; networking.istio.io ServiceEntry and WorkloadEntry; security.istio.io
// AuthorizationPolicy and PeerAuthentication. The L7 kinds (HTTPRoute, GRPCRoute, VirtualService,
// DestinationRule, RequestAuthentication, LocalRateLimitPolicy, AuthorizationPolicy with targetRefs) are
// read into Objects and left to the waypoint's compiler (waypoint/compile). Anything else is an error
// naming the file and document.
//
// It must not import agent/, waypoint/ (no L7 packages) or proxy/; it imports config/resource and mesh/.
package local
