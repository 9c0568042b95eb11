package binding

import "fmt"

// Condition types and reasons written by istiod (status.go, model/service.go).
const (
	ConditionWaypointBound   = "istio.io/WaypointBound"
	ConditionWaypointMissing = "istio.io/WaypointMissing"

	ReasonAccepted               = "WaypointAccepted"
	ReasonNotReady               = "WaypointIsNotReady"
	ReasonAttachmentDenied       = "AttachmentDenied"
	ReasonUnsupportedTrafficType = "UnsupportedTrafficType"
	ReasonNoWaypointForWildcard  = "NoWaypointForWildcardService"
)

// Error is a binding failure with the reason and message istiod reports.
type Error struct {
	Reason  string
	Message string
}

func (e *Error) Error() string { return e.Message }

func notReady(key string) *Error {
	return &Error{Reason: ReasonNotReady, Message: fmt.Sprintf("waypoint %q is not ready", key)}
}

func attachmentDenied(key string) *Error {
	return &Error{Reason: ReasonAttachmentDenied,
		Message: fmt.Sprintf("we are not permitted to attach to waypoint %q (missing allowedRoutes?)", key)}
}

func unsupportedTrafficType(key, ttype string) *Error {
	return &Error{Reason: ReasonUnsupportedTrafficType,
		Message: fmt.Sprintf("attempting to bind to traffic type %q which the waypoint %q does not support", ttype, key)}
}

// Condition is a Kubernetes status condition (type, status, reason, message).
type Condition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// ServiceCondition returns the istio.io/WaypointBound condition of a Service or ServiceEntry, or nil when
// the object has neither a binding nor an error. ingress and ingressPresent come from IngressUseWaypoint.
func ServiceCondition(r Result, ingress, ingressPresent bool) *Condition {
	c := workloadCondition(r)
	if c == nil || r.Waypoint == nil {
		return c
	}
	switch {
	case ingress:
		c.Message += ". Ingress traffic will traverse the waypoint"
	case ingressPresent:
		c.Message += ". Ingress traffic is not using the waypoint, set the istio.io/ingress-use-waypoint label to true if desired."
	}
	return c
}

// WorkloadEntryCondition returns the istio.io/WaypointBound condition of a WorkloadEntry (never with the
// ingress suffix), or nil. Pods never get a condition.
func WorkloadEntryCondition(r Result) *Condition { return workloadCondition(r) }

func workloadCondition(r Result) *Condition {
	switch {
	case r.Err != nil:
		return &Condition{Type: ConditionWaypointBound, Status: "False", Reason: r.Err.Reason, Message: r.Err.Message}
	case r.Waypoint != nil:
		return &Condition{Type: ConditionWaypointBound, Status: "True", Reason: ReasonAccepted,
			Message: "Successfully attached to waypoint " + r.Waypoint.Key()}
	}
	return nil
}

// WildcardMissingCondition is the istio.io/WaypointMissing condition of a ServiceEntry with a wildcard
// host and no waypoint.
func WildcardMissingCondition() *Condition {
	return &Condition{Type: ConditionWaypointMissing, Status: "True", Reason: ReasonNoWaypointForWildcard,
		Message: "ServiceEntry will not apply until it is bound to a valid waypoint."}
}
