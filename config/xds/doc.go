// Package xds connects Ambit's state to Istio's control plane: it converts the workload discovery resources
// istiod serves over delta xDS (istio.workload.Address: workloads and services with their waypoints;
// istio.security.Authorization: L4 policies) into mesh/state objects, applies each response to a
// state.Store as one atomic batch, and runs the xdsclient transport for both processes (Source).
//
// Conversion (ConvertAddress, ConvertAuthorization) is pure and fuzzed. It reads every field the data plane
// uses, applies istiod's defaults (trust domain cluster.local, service account default, cluster Kubernetes,
// capacity 1) and rejects what ztunnel rejects: unknown enum values (except WorkloadType, AppProtocol and
// Service.Visibility, which fall back to their defaults as in ztunnel), addresses that are not 4 or 16
// bytes, gateway addresses without a destination, ports above 65535, and resources whose name does not match
// their key (a workload's UID, "<namespace>/<hostname>" of a service, "<namespace>/<name>" of a policy).
//
// The handlers decode workloads straight from the wire bytes into state.Workload (decoder: no generated
// message in between, repeated strings interned through a local state.Interner per goroutine that the handler
// keeps across responses, large responses spread over the CPUs): at a million workloads the generated
// messages cost more than the state itself (BenchmarkIngest measures the first response). That fast path
// takes on only the encoding protoc and istiod produce; anything else, every error included, goes through
// proto.Unmarshal and ConvertAddress, which stay the reference (FuzzFastDecode checks the two agree).
//
// The handlers (AddressHandler, AuthorizationHandler) reject a malformed resource alone, reported in the
// NACK as "<name>: <reason>", and apply the rest of the response. A resource name that appears twice in one
// response is rejected in both places. A workload or service whose waypoint names a service that is not
// known is rejected too, but parked rather than forgotten: it is admitted as soon as that service arrives,
// since istiod does not resend a resource it already sent. Objects in the store are never edited, so a
// rejected update leaves the previous version serving, and while istiod is unreachable the last good state
// keeps serving. One exception fails closed: a DENY Authorization whose name, namespace and scope are valid
// but whose rules do not convert is reported and applied as a deny-all of that scope (DenyAll), since
// dropping it would allow what it denies.
//
// CertPrefetcher links the state to identity: it keeps the certificate manager warm for the
// identities of the HBONE workloads on this node, which istiod's CA issues through node impersonation.
//
// It must not import agent/, waypoint/ or proxy/: both processes import it.
package xds
