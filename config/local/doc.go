// Package local reads Kubernetes objects from local YAML or JSON files and compiles them into
// Ambit's state model with the rules istiod applies: service endpoints from selectors, workload
// identities, waypoint bindings and their conditions, and L4 authorization policies.
//
// It is the configuration source for single-machine use (ambit agent --config-file, the demo, tests)
// and for the offline ambitctl commands; both share Load and Compile so they always agree.
//
// Supported kinds: v1 Namespace, Node, Service, Pod (and v1 List); gateway.networking.k8s.io Gateway
// and GatewayClass; networking.istio.io ServiceEntry and WorkloadEntry; security.istio.io
// AuthorizationPolicy and PeerAuthentication. Anything else is an error naming the file and document.
package local
