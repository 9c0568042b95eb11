package istio

import "testing"

// TestEnrolled covers istio-cni's default selector (docs/waypoint-rules.md §1, istio.io/dataplane-mode).
func TestEnrolled(t *testing.T) {
	ambient := map[string]string{LabelDataplaneMode: DataplaneModeAmbient}
	none := map[string]string{LabelDataplaneMode: DataplaneModeNone}
	for _, c := range []struct {
		name        string
		pod, ns     map[string]string
		hostNetwork bool
		want        bool
	}{
		{"pod label ambient", ambient, nil, false, true},
		{"namespace label ambient", nil, ambient, false, true},
		{"namespace ambient, pod none", none, ambient, false, false},
		{"pod ambient beats namespace none", ambient, none, false, true},
		{"no labels", nil, nil, false, false},
		{"other pod value under an ambient namespace", map[string]string{LabelDataplaneMode: "Ambient"}, ambient, false, true},
		{"other pod value alone", map[string]string{LabelDataplaneMode: "Ambient"}, nil, false, false},
		{"host network never", ambient, ambient, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Enrolled(c.pod, c.ns, c.hostNetwork); got != c.want {
				t.Errorf("Enrolled(%v, %v, %v) = %v, want %v", c.pod, c.ns, c.hostNetwork, got, c.want)
			}
		})
	}
}

// TestWaypointPodsNotEnrolled: a waypoint pod as istiod's waypoint template renders it (labels copied from
// istiod's deployment testdata) is never captured, even in an ambient namespace, so the waypoint's own sockets
// need no mark; a pod that only carries the managed-gateway label is enrolled like any other, as istio-cni's
// default enablement selectors do.
func TestWaypointPodsNotEnrolled(t *testing.T) {
	ambient := map[string]string{LabelDataplaneMode: DataplaneModeAmbient}
	waypointPod := map[string]string{
		"gateway.istio.io/managed":                     "istio.io-mesh-controller",
		"gateway.networking.k8s.io/gateway-class-name": "istio-waypoint",
		"gateway.networking.k8s.io/gateway-name":       "namespace",
		"istio.io/dataplane-mode":                      "none",
		"service.istio.io/canonical-name":              "namespace",
		"service.istio.io/canonical-revision":          "latest",
		"sidecar.istio.io/inject":                      "false",
		"topology.istio.io/network":                    "network-1",
	}
	if Enrolled(waypointPod, ambient, false) {
		t.Error("istiod's waypoint pod is enrolled in an ambient namespace")
	}
	managedOnly := map[string]string{"gateway.istio.io/managed": "istio.io-mesh-controller"}
	if !Enrolled(managedOnly, ambient, false) {
		t.Error("a pod with only the managed-gateway label is not enrolled; istio-cni's default selectors enroll it")
	}
}
