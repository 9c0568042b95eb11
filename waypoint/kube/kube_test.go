package kube

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic/fake"
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
