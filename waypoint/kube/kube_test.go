package kube

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"sigs.k8s.io/yaml"

	tu "github.com/ambit-mesh/ambit/test/testutil"
	"github.com/ambit-mesh/ambit/waypoint/model"
)

func obj(t *testing.T, y string) *unstructured.Unstructured {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(js); err != nil {
		t.Fatal(err)
	}
	return u
}

type logBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestSource(t *testing.T) {
	tu.CheckGoroutines(t)
	route := obj(t, `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: web}]
  rules: [{backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]}]
`)
	bad := obj(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{to: [{operation: {paths: ["/a/{**}/b"]}}]}]
`)
	client := fake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), ListKinds, route, bad)
	var mu sync.Mutex
	var got []*model.Config
	logs := &logBuf{}
	s := &Source{Client: client, Debounce: 10 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil)),
		OnUpdate: func(c *model.Config) { mu.Lock(); got = append(got, c); mu.Unlock() }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	last := func() *model.Config {
		mu.Lock()
		defer mu.Unlock()
		if len(got) == 0 {
			return nil
		}
		return got[len(got)-1]
	}
	tu.WaitFor(t, 5*time.Second, "first configuration", func() bool { return last() != nil })
	if c := last(); len(c.Routes) != 1 || len(c.Authz) != 0 {
		t.Errorf("first configuration: %d routes, %d policies", len(c.Routes), len(c.Authz))
	}
	if !strings.Contains(logs.String(), "spec.rules[0].to[0].operation.paths[0]") || !strings.Contains(logs.String(), "object=app/bad") {
		t.Errorf("rejection does not name the object and field: %s", logs.String())
	}
	rl := obj(t, `apiVersion: policy.ambit.dev/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: rl, namespace: app}
spec:
  targetRefs: [{group: "", kind: Service, name: web}]
  tokenBucket: {maxTokens: 10, fillInterval: 1s}
`)
	if _, err := client.Resource(Resources[7]).Namespace("app").Create(ctx, rl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tu.WaitFor(t, 5*time.Second, "rate limit applied", func() bool { c := last(); return c != nil && len(c.RateLimits) == 1 })
	if err := client.Resource(Resources[1]).Namespace("app").Delete(ctx, "split", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	tu.WaitFor(t, 5*time.Second, "route removed", func() bool { c := last(); return c != nil && len(c.Routes) == 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestSourcePodLabels: the labels DestinationRule subsets select come from the pods the API server lists (the
// workloads istiod sends carry none), keyed by workload UID, and follow label changes (issue 13 item 3: subset
// routes answered 503 in a cluster).
func TestSourcePodLabels(t *testing.T) {
	tu.CheckGoroutines(t)
	pod := obj(t, `apiVersion: v1
kind: Pod
metadata: {name: web-v2-abc, namespace: app, labels: {app: web, version: v2}}
spec:
  containers: [{name: web, image: web}]
`)
	client := fake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), ListKinds, pod)
	var mu sync.Mutex
	var got []*model.Config
	s := &Source{Client: client, Debounce: 10 * time.Millisecond,
		OnUpdate: func(c *model.Config) { mu.Lock(); got = append(got, c); mu.Unlock() }}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // before the goroutine check, when a check fails
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	last := func() (*model.Config, int) {
		mu.Lock()
		defer mu.Unlock()
		if len(got) == 0 {
			return nil, 0
		}
		return got[len(got)-1], len(got)
	}
	const uid = "Kubernetes//Pod/app/web-v2-abc"
	tu.WaitFor(t, 5*time.Second, "first configuration", func() bool { c, _ := last(); return c != nil })
	if c, _ := last(); c.WorkloadLabels[uid]["version"] != "v2" {
		t.Fatalf("workload labels %v, want version v2 for %s", c.WorkloadLabels, uid)
	}
	up := pod.DeepCopy()
	up.SetLabels(map[string]string{"app": "web", "version": "v3"})
	if _, err := client.Resource(podsResource).Namespace("app").Update(ctx, up, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	tu.WaitFor(t, 5*time.Second, "the new labels", func() bool { c, _ := last(); return c.WorkloadLabels[uid]["version"] == "v3" })
	if err := client.Resource(podsResource).Namespace("app").Delete(ctx, "web-v2-abc", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	tu.WaitFor(t, 5*time.Second, "pod removed", func() bool { c, _ := last(); return len(c.WorkloadLabels) == 0 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestPodChanged: only what subsets select (a pod's labels) or its presence recompiles; status and spec
// updates of pods, the bulk of a cluster's pod events, do not.
func TestPodChanged(t *testing.T) {
	pod := func(rv string, labels map[string]string) *unstructured.Unstructured {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("v1")
		u.SetKind("Pod")
		u.SetNamespace("app")
		u.SetName("p")
		u.SetResourceVersion(rv)
		u.SetLabels(labels)
		return u
	}
	a := map[string]string{"app": "web", "version": "v1"}
	for _, tc := range []struct {
		name     string
		old, new any
		want     bool
	}{
		{"resync", pod("1", a), pod("1", a), false},
		{"status update", pod("1", a), pod("2", a), false},
		{"label changed", pod("1", a), pod("2", map[string]string{"app": "web", "version": "v2"}), true},
		{"label added", pod("1", a), pod("2", map[string]string{"app": "web", "version": "v1", "x": "y"}), true},
		{"labels removed", pod("1", a), pod("2", nil), true},
		{"not objects", "a", "b", true},
	} {
		if got := podChanged(tc.old, tc.new); got != tc.want {
			t.Errorf("%s: podChanged = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestUnsupportedEvents(t *testing.T) {
	w := func(uid string, gen int64) objectWarnings {
		return objectWarnings{uid: types.UID(uid), generation: gen, warnings: []string{"x: not implemented"}}
	}
	for _, tc := range []struct {
		name     string
		recorded map[types.UID]int64
		warned   []objectWarnings
		emit     []types.UID
		next     map[types.UID]int64
	}{
		{"first sight", nil, []objectWarnings{w("a", 1), w("b", 3)}, []types.UID{"a", "b"}, map[types.UID]int64{"a": 1, "b": 3}},
		{"same generation: no new Event", map[types.UID]int64{"a": 1}, []objectWarnings{w("a", 1)}, nil, map[types.UID]int64{"a": 1}},
		{"new generation", map[types.UID]int64{"a": 1}, []objectWarnings{w("a", 2)}, []types.UID{"a"}, map[types.UID]int64{"a": 2}},
		{"warnings gone: forgotten", map[types.UID]int64{"a": 1, "b": 1}, []objectWarnings{w("b", 1)}, nil, map[types.UID]int64{"b": 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			emit, next := unsupportedEvents(tc.recorded, tc.warned)
			var got []types.UID
			for _, o := range emit {
				got = append(got, o.uid)
			}
			if !slices.Equal(got, tc.emit) || !maps.Equal(next, tc.next) {
				t.Errorf("unsupportedEvents = %v %v, want %v %v", got, next, tc.emit, tc.next)
			}
		})
	}
}

// TestSourceEvents: a field Ambit does not implement is surfaced as a Warning Event on its object.
func TestSourceEvents(t *testing.T) {
	tu.CheckGoroutines(t)
	dr := obj(t, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: istio-egress, uid: dr-uid, generation: 1}
spec:
  host: api.example.test
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: api-credential}
`)
	se := obj(t, `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: any, namespace: istio-egress, uid: se-uid, generation: 2}
spec:
  hosts: ["*.example.test"]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DYNAMIC_DNS
`)
	client := fake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), ListKinds, dr, se)
	kc := kubefake.NewClientset()
	s := &Source{Client: client, Debounce: 10 * time.Millisecond, OnUpdate: func(*model.Config) {},
		Events: &typedcorev1.EventSinkImpl{Interface: kc.CoreV1().Events("")}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	var ev, seEv corev1.Event
	tu.WaitFor(t, 5*time.Second, "UnsupportedField Events on the DestinationRule and the ServiceEntry", func() bool {
		l, err := kc.CoreV1().Events("istio-egress").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		for _, e := range l.Items {
			switch e.InvolvedObject.Kind {
			case "DestinationRule":
				ev = e
			case "ServiceEntry":
				seEv = e
			}
		}
		return ev.Reason != "" && seEv.Reason != ""
	})
	if sio := seEv.InvolvedObject; seEv.Type != corev1.EventTypeWarning || seEv.Reason != ReasonUnsupportedField || sio.Name != "any" ||
		sio.UID != "se-uid" || !strings.Contains(seEv.Message, "spec.resolution: DYNAMIC_DNS is not implemented") {
		t.Errorf("ServiceEntry event %s %s %q on %+v", seEv.Type, seEv.Reason, seEv.Message, sio)
	}
	io := ev.InvolvedObject
	if ev.Type != corev1.EventTypeWarning || ev.Reason != ReasonUnsupportedField || io.Kind != "DestinationRule" ||
		io.Name != "api" || io.Namespace != "istio-egress" || io.UID != "dr-uid" || io.APIVersion != "networking.istio.io/v1" {
		t.Errorf("event %s %s on %+v", ev.Type, ev.Reason, io)
	}
	if !strings.Contains(ev.Message, "spec.trafficPolicy.tls.credentialName: not implemented") {
		t.Errorf("event message %q", ev.Message)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
