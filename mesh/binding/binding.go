package binding

import (
	"strconv"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/ambit-mesh/ambit/mesh/istio"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// Values of the use-waypoint label with a meaning of their own.
const (
	// None is the reserved use-waypoint value that opts an object out. It is compared case-sensitively.
	None = "none"
)

// Traffic types a waypoint may accept (the istio.io/waypoint-for label).
const (
	TrafficService  = "service"
	TrafficWorkload = "workload"
	TrafficAll      = "all"
	TrafficNone     = "none"
)

// From says which namespaces may attach to a waypoint (Gateway listener allowedRoutes.namespaces.from).
type From uint8

const (
	FromSame From = iota
	FromAll
	FromSelector
)

// Waypoint is a ready waypoint: a Gateway with at least one status address (R1).
type Waypoint struct {
	Namespace string
	Name      string
	// TrafficType is the raw waypoint-for value; any value other than service, workload or all acts like none.
	TrafficType string
	From        From
	// Selector applies when From is FromSelector. A nil selector matches nothing.
	Selector labels.Selector
	// Address is how the data plane reaches the waypoint (R13); nil when no status address is usable.
	Address *state.GatewayAddress
	// ServiceAccounts of the waypoint's instances (pods labelled with its gateway name), sorted.
	ServiceAccounts []string
	// GatewayClass is the Gateway's class; binding does not check it (row #52 quirk).
	GatewayClass string
}

// Key returns "<namespace>/<name>".
func (w *Waypoint) Key() string { return w.Namespace + "/" + w.Name }

// AcceptsService reports whether the waypoint handles service-addressed traffic.
func (w *Waypoint) AcceptsService() bool {
	return w.TrafficType == TrafficService || w.TrafficType == TrafficAll
}

// AcceptsWorkload reports whether the waypoint handles workload-addressed traffic.
func (w *Waypoint) AcceptsWorkload() bool {
	return w.TrafficType == TrafficWorkload || w.TrafficType == TrafficAll
}

// AllowsAttachmentFrom applies R7: may an object in namespace ns, whose Namespace has labels nsLabels,
// attach to w?
func (w *Waypoint) AllowsAttachmentFrom(ns string, nsLabels map[string]string) bool {
	switch w.From {
	case FromAll:
		return true
	case FromSelector:
		return w.Selector != nil && w.Selector.Matches(labels.Set(nsLabels))
	default:
		return w.Namespace == ns
	}
}

// Lookup is what the rules need to know about the cluster.
type Lookup interface {
	// Waypoint returns the ready waypoint namespace/name, or nil.
	Waypoint(namespace, name string) *Waypoint
	// Namespace returns the labels of a namespace and whether it exists.
	Namespace(name string) (labels map[string]string, ok bool)
}

// Object is the part of a resource the rules read.
type Object struct {
	Namespace string
	Name      string
	Labels    map[string]string
}

// Result is a binding decision: at most one of Waypoint and Err is set.
type Result struct {
	Waypoint *Waypoint
	Err      *Error
}

// useWaypoint parses the use-waypoint labels of one object (GetUseWaypoint): the named target, whether
// the label is present, and whether it is the reserved none.
func useWaypoint(lbls map[string]string, defaultNamespace string) (ns, name string, present, none bool) {
	v, ok := lbls[istio.LabelUseWaypoint]
	if !ok {
		return "", "", false, false
	}
	if v == None {
		return "", "", true, true
	}
	ns = defaultNamespace
	if o, ok := lbls[istio.LabelUseWaypointNamespace]; ok {
		ns = o
	}
	return ns, v, true, false
}

// forTarget applies R4, R5 and R7: the object label first with no fallback, then the namespace label.
// inherited reports whether the result came from the namespace.
func forTarget(l Lookup, o Object) (wp *Waypoint, err *Error, inherited bool) {
	if ns, name, present, none := useWaypoint(o.Labels, o.Namespace); present {
		if none {
			return nil, nil, false
		}
		w := l.Waypoint(ns, name)
		if w == nil {
			return nil, notReady(ns + "/" + name), false
		}
		nsLabels, _ := l.Namespace(o.Namespace)
		if !w.AllowsAttachmentFrom(o.Namespace, nsLabels) {
			return nil, attachmentDenied(w.Key()), false
		}
		return w, nil, false
	}
	nsLabels, ok := l.Namespace(o.Namespace)
	if !ok {
		return nil, nil, true
	}
	ns, name, present, none := useWaypoint(nsLabels, o.Namespace)
	if !present || none {
		return nil, nil, true
	}
	w := l.Waypoint(ns, name)
	if w == nil {
		return nil, notReady(ns + "/" + name), true
	}
	if !w.AllowsAttachmentFrom(o.Namespace, nsLabels) {
		return nil, attachmentDenied(w.Key()), true
	}
	return w, nil, true
}

// ForService resolves the waypoint of a Service or ServiceEntry (R3, R4–R7, R6 service filter).
func ForService(l Lookup, o Object) Result {
	switch o.Labels[istio.LabelGatewayManaged] {
	case istio.ManagedMeshController, istio.ManagedEastWestController:
		return Result{}
	}
	w, err, _ := forTarget(l, o)
	if err != nil || w == nil {
		return Result{Err: err}
	}
	if !w.AcceptsService() {
		return Result{Err: unsupportedTrafficType(w.Key(), TrafficService)}
	}
	return Result{Waypoint: w}
}

// ForWorkload resolves the waypoint of a Pod, WorkloadEntry or ServiceEntry endpoint (R2, R4–R7,
// R6 workload filter). instance is set when the object is itself an instance of a ready waypoint; such
// objects never get a waypoint.
func ForWorkload(l Lookup, o Object) (res Result, instance *Waypoint) {
	if gw := o.Labels[istio.LabelGatewayName]; gw != "" {
		if w := l.Waypoint(o.Namespace, gw); w != nil {
			return Result{}, w
		}
	}
	w, err, inherited := forTarget(l, o)
	if err != nil || w == nil {
		return Result{Err: err}, nil
	}
	if !w.AcceptsWorkload() {
		if inherited {
			// An inherited service-only namespace waypoint is not an error for workloads (since 1.30).
			return Result{}, nil
		}
		return Result{Err: unsupportedTrafficType(w.Key(), TrafficWorkload)}, nil
	}
	return Result{Waypoint: w}, nil
}

// IngressUseWaypoint reads istio.io/ingress-use-waypoint from the object, falling back to its namespace.
// present reports whether either carries the label; value is its strconv.ParseBool value (false when
// unparseable).
func IngressUseWaypoint(objLabels, nsLabels map[string]string) (value, present bool) {
	v, ok := objLabels[istio.LabelIngressUseWaypoint]
	if !ok {
		v, ok = nsLabels[istio.LabelIngressUseWaypoint]
	}
	if !ok {
		return false, false
	}
	b, err := strconv.ParseBool(v)
	return err == nil && b, true
}
