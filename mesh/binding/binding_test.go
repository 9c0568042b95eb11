package binding

import (
	"testing"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/ambit-mesh/ambit/mesh/istio"
)

// cluster is the Lookup of the table tests: ready waypoints by "<ns>/<name>" and namespace labels.
type cluster struct {
	waypoints  map[string]*Waypoint
	namespaces map[string]map[string]string
}

func (c cluster) Waypoint(ns, name string) *Waypoint { return c.waypoints[ns+"/"+name] }

func (c cluster) Namespace(name string) (map[string]string, bool) {
	l, ok := c.namespaces[name]
	return l, ok
}

func wp(ns, name, traffic string, from From, sel labels.Selector) *Waypoint {
	return &Waypoint{Namespace: ns, Name: name, TrafficType: traffic, From: from, Selector: sel}
}

func lbl(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// want is a decision: the bound waypoint key ("" for none) and the error reason ("" for none).
type want struct{ waypoint, reason string }

func got(r Result) want {
	var w want
	if r.Waypoint != nil {
		w.waypoint = r.Waypoint.Key()
	}
	if r.Err != nil {
		w.reason = r.Err.Reason
	}
	return w
}

const (
	uw  = istio.LabelUseWaypoint
	uwn = istio.LabelUseWaypointNamespace
)

// base is the fixture of docs/waypoint-rules.md §8.1, reduced to what binding reads: namespaces app and
// infra, and ready waypoints of every traffic type.
func base() cluster {
	everything, _ := labels.Parse("")
	appOnly := labels.SelectorFromSet(labels.Set{istio.LabelNamespaceName: "app"})
	return cluster{
		waypoints: map[string]*Waypoint{
			"app/wp":         wp("app", "wp", TrafficService, FromSame, nil),
			"app/all":        wp("app", "all", TrafficAll, FromSame, nil),
			"app/wl":         wp("app", "wl", TrafficWorkload, FromSame, nil),
			"app/notype":     wp("app", "notype", TrafficNone, FromSame, nil),
			"app/bogus":      wp("app", "bogus", "foo", FromSame, nil),
			"infra/same":     wp("infra", "same", TrafficAll, FromSame, nil),
			"infra/all":      wp("infra", "all", TrafficAll, FromAll, nil),
			"infra/sel":      wp("infra", "sel", TrafficAll, FromSelector, appOnly),
			"infra/nilsel":   wp("infra", "nilsel", TrafficAll, FromSelector, nil),
			"infra/emptysel": wp("infra", "emptysel", TrafficAll, FromSelector, everything),
			"app/selself":    wp("app", "selself", TrafficAll, FromSelector, labels.SelectorFromSet(labels.Set{"team": "x"})),
		},
		namespaces: map[string]map[string]string{
			"app":   {istio.LabelNamespaceName: "app"},
			"infra": {istio.LabelNamespaceName: "infra"},
		},
	}
}

// withNS returns base with extra labels on namespace app.
func withNS(kv ...string) cluster {
	c := base()
	for k, v := range lbl(kv...) {
		c.namespaces["app"][k] = v
	}
	return c
}

// TestForService covers the binding rules for Services and ServiceEntries (docs/waypoint-rules.md
// §2), each case named after its rule.
func TestForService(t *testing.T) {
	for _, c := range []struct {
		name string
		l    cluster
		obj  map[string]string
		want want
	}{
		{"R1 a Gateway that is not a ready waypoint is not ready", base(), lbl(uw, "pending"), want{"", ReasonNotReady}},
		{"R3 the waypoint's own Service is never bound", withNS(uw, "wp"), lbl(istio.LabelGatewayManaged, istio.ManagedMeshController), want{}},
		{"R3 an east-west gateway Service is never bound", withNS(uw, "wp"), lbl(uw, "wp", istio.LabelGatewayManaged, istio.ManagedEastWestController), want{}},
		{"R4a object none opts out of the namespace waypoint", withNS(uw, "all"), lbl(uw, istio.DataplaneModeNone), want{}},
		{"R4a only the exact none is reserved", base(), lbl(uw, "None"), want{"", ReasonNotReady}},
		{"R4b object label binds", base(), lbl(uw, "wp"), want{"app/wp", ""}},
		{"R4b object label wins over the namespace", withNS(uw, "all"), lbl(uw, "wp"), want{"app/wp", ""}},
		{"R4b missing target: not ready, no namespace fallback", withNS(uw, "wp"), lbl(uw, "missing"), want{"", ReasonNotReady}},
		{"R4b object use-waypoint-namespace", base(), lbl(uw, "all", uwn, "infra"), want{"infra/all", ""}},
		{"R4b explicit own namespace", base(), lbl(uw, "wp", uwn, "app"), want{"app/wp", ""}},
		{"R5 namespace label applies", withNS(uw, "wp"), nil, want{"app/wp", ""}},
		{"R5 namespace none", withNS(uw, "none"), nil, want{}},
		{"R5 namespace waypoint missing", withNS(uw, "missing"), nil, want{"", ReasonNotReady}},
		{"R5 namespace use-waypoint-namespace", withNS(uw, "all", uwn, "infra"), nil, want{"infra/all", ""}},
		{"R5 object use-waypoint-namespace is ignored when inheriting", withNS(uw, "same"), lbl(uwn, "infra"), want{"", ReasonNotReady}},
		{"R5 no labels anywhere", base(), nil, want{}},
		{"R6 workload-only waypoint refuses services", base(), lbl(uw, "wl"), want{"", ReasonUnsupportedTrafficType}},
		{"R6 inherited workload-only waypoint still errors for services", withNS(uw, "wl"), nil, want{"", ReasonUnsupportedTrafficType}},
		{"R6 traffic type none refuses services", base(), lbl(uw, "notype"), want{"", ReasonUnsupportedTrafficType}},
		{"R6 an unknown traffic type acts like none", base(), lbl(uw, "bogus"), want{"", ReasonUnsupportedTrafficType}},
		{"R6 all accepts services", base(), lbl(uw, "all"), want{"app/all", ""}},
		{"R7 Same refuses another namespace", base(), lbl(uw, "same", uwn, "infra"), want{"", ReasonAttachmentDenied}},
		{"R7 All admits every namespace", base(), lbl(uw, "all", uwn, "infra"), want{"infra/all", ""}},
		{"R7 Selector admits a matching namespace", base(), lbl(uw, "sel", uwn, "infra"), want{"infra/sel", ""}},
		{"R7 a nil selector matches nothing", base(), lbl(uw, "nilsel", uwn, "infra"), want{"", ReasonAttachmentDenied}},
		{"R7 an empty selector matches every namespace", base(), lbl(uw, "emptysel", uwn, "infra"), want{"infra/emptysel", ""}},
		{"R7 Selector applies in the waypoint's own namespace too", base(), lbl(uw, "selself"), want{"", ReasonAttachmentDenied}},
		{"R7 the consumer namespace is the object's when inherited", withNS(uw, "same", uwn, "infra"), nil, want{"", ReasonAttachmentDenied}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := ForService(c.l, Object{Namespace: "app", Name: "svc", Labels: c.obj})
			if g := got(r); g != c.want {
				t.Errorf("ForService = %+v, want %+v", g, c.want)
			}
		})
	}
}

// TestForWorkload covers the binding rules for Pods, WorkloadEntries and ServiceEntry endpoints.
func TestForWorkload(t *testing.T) {
	for _, c := range []struct {
		name     string
		l        cluster
		obj      map[string]string
		want     want
		instance string
	}{
		{"R2 an instance of a ready waypoint gets none", withNS(uw, "all"), lbl(istio.LabelGatewayName, "all"), want{}, "app/all"},
		{"R2 an instance ignores its own label", base(), lbl(istio.LabelGatewayName, "all", uw, "wl"), want{}, "app/all"},
		{"R2 an instance of a not-ready waypoint resolves normally", withNS(uw, "all"), lbl(istio.LabelGatewayName, "pending"), want{"app/all", ""}, ""},
		{"R4a object none opts out", withNS(uw, "all"), lbl(uw, "none"), want{}, ""},
		{"R4b object label binds a workload waypoint", base(), lbl(uw, "wl"), want{"app/wl", ""}, ""},
		{"R5 namespace waypoint for all", withNS(uw, "all"), nil, want{"app/all", ""}, ""},
		{"R6 own label on a service-only waypoint errors", base(), lbl(uw, "wp"), want{"", ReasonUnsupportedTrafficType}, ""},
		{"R6 inherited service-only waypoint is silent", withNS(uw, "wp"), nil, want{}, ""},
		{"R6 inherited not-ready waypoint errors for workloads too", withNS(uw, "missing"), nil, want{"", ReasonNotReady}, ""},
		{"R6 inherited denied attachment errors for workloads too", withNS(uw, "same", uwn, "infra"), nil, want{"", ReasonAttachmentDenied}, ""},
		{"R6 own label beats the namespace", withNS(uw, "all"), lbl(uw, "wl"), want{"app/wl", ""}, ""},
		{"R7 cross-namespace workload waypoint with All", base(), lbl(uw, "all", uwn, "infra"), want{"infra/all", ""}, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			r, inst := ForWorkload(c.l, Object{Namespace: "app", Name: "pod", Labels: c.obj})
			if g := got(r); g != c.want {
				t.Errorf("ForWorkload = %+v, want %+v", g, c.want)
			}
			gi := ""
			if inst != nil {
				gi = inst.Key()
			}
			if gi != c.instance {
				t.Errorf("instance %q, want %q", gi, c.instance)
			}
		})
	}
}

// TestConditions covers the istio.io/WaypointBound messages (docs/waypoint-rules.md §3).
func TestConditions(t *testing.T) {
	bound := Result{Waypoint: wp("app", "wp", TrafficService, FromSame, nil)}
	for _, c := range []struct {
		name                    string
		cond                    *Condition
		status, reason, message string
	}{
		{"§3 bound", ServiceCondition(bound, false, false), "True", ReasonAccepted, "Successfully attached to waypoint app/wp"},
		{"§3 bound with ingress true", ServiceCondition(bound, true, true), "True", ReasonAccepted,
			"Successfully attached to waypoint app/wp. Ingress traffic will traverse the waypoint"},
		{"§3 bound with ingress false or unparseable", ServiceCondition(bound, false, true), "True", ReasonAccepted,
			"Successfully attached to waypoint app/wp. Ingress traffic is not using the waypoint, set the istio.io/ingress-use-waypoint label to true if desired."},
		{"§3 WorkloadEntry never gets the ingress suffix", WorkloadEntryCondition(bound), "True", ReasonAccepted, "Successfully attached to waypoint app/wp"},
		{"§3 not ready", ServiceCondition(Result{Err: notReady("app/x")}, true, true), "False", ReasonNotReady, `waypoint "app/x" is not ready`},
		{"§3 attachment denied", ServiceCondition(Result{Err: attachmentDenied("infra/wp")}, false, false), "False", ReasonAttachmentDenied,
			`we are not permitted to attach to waypoint "infra/wp" (missing allowedRoutes?)`},
		{"§3 unsupported traffic type", WorkloadEntryCondition(Result{Err: unsupportedTrafficType("app/wp", TrafficWorkload)}), "False",
			ReasonUnsupportedTrafficType, `attempting to bind to traffic type "workload" which the waypoint "app/wp" does not support`},
		{"§3 wildcard ServiceEntry without a waypoint", WildcardMissingCondition(), "True", ReasonNoWaypointForWildcard,
			"ServiceEntry will not apply until it is bound to a valid waypoint."},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.cond == nil || c.cond.Status != c.status || c.cond.Reason != c.reason || c.cond.Message != c.message {
				t.Errorf("condition %+v, want %s %s %q", c.cond, c.status, c.reason, c.message)
			}
		})
	}
	if ServiceCondition(Result{}, true, true) != nil || WorkloadEntryCondition(Result{}) != nil {
		t.Error("an object with neither a binding nor an error got a condition")
	}
}

// TestIngressUseWaypoint covers the istio.io/ingress-use-waypoint label (docs/waypoint-rules.md §1).
func TestIngressUseWaypoint(t *testing.T) {
	l := istio.LabelIngressUseWaypoint
	for _, c := range []struct {
		name           string
		obj, ns        map[string]string
		value, present bool
	}{
		{"§1 object label true", lbl(l, "true"), nil, true, true},
		{"§1 object label wins over the namespace", lbl(l, "false"), lbl(l, "true"), false, true},
		{"§1 namespace fallback", nil, lbl(l, "1"), true, true},
		{"§1 unparseable is false but present", lbl(l, "eurt"), nil, false, true},
		{"§1 absent", nil, nil, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if v, p := IngressUseWaypoint(c.obj, c.ns); v != c.value || p != c.present {
				t.Errorf("IngressUseWaypoint = %v, %v; want %v, %v", v, p, c.value, c.present)
			}
		})
	}
}
