// Package kube is the L7 waypoint's configuration source in a cluster: it watches the L7 resources
// (HTTPRoute, GRPCRoute, VirtualService, DestinationRule, AuthorizationPolicy, RequestAuthentication,
// LocalRateLimitPolicy, and ServiceEntry for hostnames) through the Kubernetes API with informers, and
// compiles them with the same code as the local files (config/local.CompileL7). Unlike a file,
// where one bad document rejects the version, an invalid object is skipped alone, with a log line
// naming the object and field, and the rest keeps applying. Workloads and services come from the
// waypoint's usual state source.
package kube
