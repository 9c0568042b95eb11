// Package resource is what every reader of Kubernetes resources in Ambit shares, whatever the resources
// come from (local files in config/local, the API server in waypoint/kube): strict decoding of one
// object (Decode), the metadata and label checks the API server would apply (ValidateMeta,
// ValidateLabels), and the Go types of Ambit's own resource, LocalRateLimitPolicy
// (policy.ambit.dev/v1alpha1).
//
// It does no I/O. It must not import agent/, waypoint/ or the other config packages: the compilers
// import it, not the other way round.
package resource
