package resource

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestDecodeIsStrict(t *testing.T) {
	var rl LocalRateLimitPolicy
	if err := Decode([]byte(`{"metadata":{"name":"rl"},"spec":{"tokenBucket":{"maxTokens":1,"fillInterval":"1s"}}}`), &rl); err != nil {
		t.Fatal(err)
	}
	if rl.Name != "rl" || rl.Spec.TokenBucket.MaxTokens != 1 {
		t.Errorf("decoded %+v", rl)
	}
	for _, bad := range []string{
		`{"spec":{"tokenBucket":{"burst":1}}}`,
		`{"spec":{"targetRefs":[]},"spec":{}}`,
		`{"spec":`,
	} {
		if err := Decode([]byte(bad), &LocalRateLimitPolicy{}); err == nil || !strings.HasPrefix(err.Error(), "decode: ") {
			t.Errorf("Decode(%s) = %v, want a decode error", bad, err)
		}
	}
}

func TestValidateMeta(t *testing.T) {
	for _, c := range []struct {
		name       string
		meta       metav1.ObjectMeta
		namespaced bool
		want       string // "" = valid
	}{
		{"namespaced defaults to default", metav1.ObjectMeta{Name: "a"}, true, ""},
		{"name required", metav1.ObjectMeta{}, true, "metadata.name is required"},
		{"name must be a DNS subdomain", metav1.ObjectMeta{Name: "A_b"}, true, `metadata.name "A_b"`},
		{"namespace must be a DNS label", metav1.ObjectMeta{Name: "a", Namespace: "a.b"}, true, `metadata.namespace "a.b"`},
		{"cluster-scoped has no namespace", metav1.ObjectMeta{Name: "a", Namespace: "x"}, false, "must be empty"},
		{"labels are checked", metav1.ObjectMeta{Name: "a", Labels: map[string]string{"bad key!": "v"}}, true, "metadata.labels"},
	} {
		t.Run(c.name, func(t *testing.T) {
			m := c.meta
			err := ValidateMeta(&m, c.namespaced)
			switch {
			case c.want == "" && err != nil:
				t.Fatalf("error %v", err)
			case c.want == "" && c.namespaced && m.Namespace == "":
				t.Error("namespace not defaulted")
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("error %v, want it to contain %q", err, c.want)
			}
		})
	}
	if err := ValidateLabels(map[string]string{"ok": "v"}, "spec", "selector"); err != nil {
		t.Error(err)
	}
	if err := ValidateLabels(map[string]string{"ok": "not valid!"}, "spec", "selector"); err == nil || !strings.Contains(err.Error(), "spec.selector") {
		t.Errorf("error %v, want it to name spec.selector", err)
	}
}
