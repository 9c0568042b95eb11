// Package istio holds, in one place, the names of the Istio labels and annotations Ambit reads or writes
// and istio-cni's default enrollment selector (Enrolled). The rules that give them meaning are in
// docs/waypoint-rules.md §1 (labels) and are applied by mesh/binding (waypoint binding), config/local
// (the local compiler) and agent/kube (pod enrollment).
//
// It is a leaf: it imports nothing, does no I/O and starts no goroutines.
package istio

// Labels (docs/waypoint-rules.md §1).
const (
	// LabelUseWaypoint binds a Pod, WorkloadEntry, Service, ServiceEntry or every such object of a
	// Namespace to the waypoint Gateway it names; the exact value "none" opts out.
	LabelUseWaypoint = "istio.io/use-waypoint"
	// LabelUseWaypointNamespace overrides the namespace the use-waypoint label of the same object names.
	LabelUseWaypointNamespace = "istio.io/use-waypoint-namespace"
	// LabelWaypointFor is a Gateway's or GatewayClass's traffic type: service, workload, all or none.
	LabelWaypointFor = "istio.io/waypoint-for"
	// LabelIngressUseWaypoint makes ingress gateways route to the service's waypoint.
	LabelIngressUseWaypoint = "istio.io/ingress-use-waypoint"
	// LabelGatewayManaged marks the resources istiod generates for a Gateway (see ManagedMeshController).
	LabelGatewayManaged = "gateway.istio.io/managed"
	// LabelGatewayName names the Gateway a generated resource (a waypoint pod) belongs to.
	LabelGatewayName = "gateway.networking.k8s.io/gateway-name"
	// LabelNamespaceName is the label Kubernetes sets on every Namespace to its name.
	LabelNamespaceName = "kubernetes.io/metadata.name"
	// LabelDataplaneMode enrolls a Pod or Namespace in ambient (see Enrolled).
	LabelDataplaneMode = "istio.io/dataplane-mode"
	// LabelTunnel with a value listing "http" marks a workload that terminates HBONE itself.
	LabelTunnel = "networking.istio.io/tunnel"
	// LabelCanonicalName, LabelCanonicalRevision and LabelWorkloadName name a workload in telemetry.
	LabelCanonicalName     = "service.istio.io/canonical-name"
	LabelCanonicalRevision = "service.istio.io/canonical-revision"
	LabelWorkloadName      = "service.istio.io/workload-name"
	// LabelRevision is the istiod revision (or tag) a Gateway or Namespace belongs to.
	LabelRevision = "istio.io/rev"
	// LabelSubzone is a Node's locality subzone.
	LabelSubzone = "topology.istio.io/subzone"
	// LabelNetwork names the network of a pod, a namespace (istiod reads the system namespace's as the
	// cluster's network) or an east-west gateway.
	LabelNetwork = "topology.istio.io/network"
)

// Label values.
const (
	DataplaneModeAmbient = "ambient"
	DataplaneModeNone    = "none"
	// ManagedMeshController marks the resources istiod generates for a waypoint.
	ManagedMeshController = "istio.io-mesh-controller"
	// ManagedEastWestController marks the resources of an east-west gateway.
	ManagedEastWestController = "istio.io-eastwest-controller"
	// WaypointClassName is the GatewayClass of Istio waypoints.
	WaypointClassName = "istio-waypoint"
	// EastWestClassName is the GatewayClass of ambient east-west gateways (multi-network, double HBONE).
	EastWestClassName = "istio-east-west"
)

// Annotations.
const (
	// AnnotationRedirection ("enabled") is what istio-cni sets on a pod once its traffic is captured;
	// istiod then marks the pod's workload HBONE.
	AnnotationRedirection = "ambient.istio.io/redirection"
	// RedirectionEnabled is the value of AnnotationRedirection on a captured pod.
	RedirectionEnabled = "enabled"
	// AnnotationInboundBinding selects the "sandwich" listener whose allowedRoutes apply (R7).
	AnnotationInboundBinding = "ambient.istio.io/waypoint-inbound-binding"
	// AnnotationAutoRegistration names the WorkloadGroup a WorkloadEntry was registered from.
	AnnotationAutoRegistration = "istio.io/autoRegistrationGroup"
	// AnnotationDryRun ("true") makes an AuthorizationPolicy log its decision without enforcing it.
	AnnotationDryRun = "istio.io/dry-run"
)

// Enrolled reports whether istio-cni's default selector captures a pod: pod label
// istio.io/dataplane-mode=ambient, or namespace label ambient and pod label not none; host-network pods
// are never captured.
func Enrolled(podLabels, nsLabels map[string]string, hostNetwork bool) bool {
	if hostNetwork {
		return false
	}
	if podLabels[LabelDataplaneMode] == DataplaneModeAmbient {
		return true
	}
	return nsLabels[LabelDataplaneMode] == DataplaneModeAmbient && podLabels[LabelDataplaneMode] != DataplaneModeNone
}
