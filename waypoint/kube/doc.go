// Package kube is the L7 waypoint's configuration source in a cluster: it watches the L7 resources
// (HTTPRoute, GRPCRoute, VirtualService, DestinationRule, AuthorizationPolicy, RequestAuthentication,
// LocalRateLimitPolicy, ServiceEntry for hostnames, and pods for the labels DestinationRule subsets select,
// which the workloads istiod sends do not carry; of a pod only its name and labels are kept) through the
// Kubernetes API with informers, and feeds them, once each, to the one L7 compiler (waypoint/compile).
// Unlike a file, where one bad document rejects the version, an invalid object is skipped alone, with a
// log line naming the object and field, and the rest keeps applying. Fields Ambit does not implement (the
// compile warnings) become a Warning Event (reason UnsupportedField) on their object, once per generation,
// when Source.Events is set. Workloads and services come from the waypoint's state source (files or istiod).
//
// It only watches and feeds: it must not compile anything itself, and must not import config/local
// (file documents) or the engine.
package kube
