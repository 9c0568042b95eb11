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
