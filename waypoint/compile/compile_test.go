package compile

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/waypoint/model"
	"github.com/ambit-mesh/ambit/waypoint/routing"
)

// compileL7YAML decodes src with the local file reader and compiles it as the waypoint does a file version.
func compileL7YAML(t *testing.T, src string) (*model.Config, error) {
	t.Helper()
	objs := &local.Objects{}
	if err := objs.Decode("l7.yaml", []byte(src)); err != nil {
		return nil, err
	}
	return Compile(&Inputs{HTTPRoutes: objs.HTTPRoutes, GRPCRoutes: objs.GRPCRoutes, VirtualServices: objs.VirtualServices,
		DestinationRules: objs.DestinationRules, AuthorizationPolicies: objs.AuthorizationPolicies,
		RequestAuthentications: objs.RequestAuthentications, RateLimitPolicies: objs.RateLimitPolicies,
		ServiceEntries: objs.ServiceEntries, Pods: objs.Pods}, Options{})
}

// l7Valid is one valid object of every kind; config/local's tests read the same file.
var l7Valid = func() string {
	b, err := os.ReadFile("../../config/local/testdata/l7.yaml")
	if err != nil {
		panic(err)
	}
	return string(b)
}()

func TestCompileL7(t *testing.T) {
	cfg, err := compileL7YAML(t, l7Valid)
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Routes) != 3 || len(cfg.Authz) != 1 || len(cfg.JWT) != 1 || len(cfg.RateLimits) != 1 || len(cfg.Destinations) != 1 {
		t.Fatalf("compiled %d routes %d authz %d jwt %d rate limits %d destinations", len(cfg.Routes), len(cfg.Authz), len(cfg.JWT),
			len(cfg.RateLimits), len(cfg.Destinations))
	}
	r := cfg.Routes[0]
	if r.Parents[0].Hostname != "web.app.svc.cluster.local" || r.Parents[0].Port != 80 || r.Parents[1].Kind != model.KindGateway {
		t.Errorf("parents %+v", r.Parents)
	}
	rule := r.Rules[0]
	if rule.Name != "split" || rule.Timeout != 2*time.Second || rule.PerTryTimeout != 500*time.Millisecond ||
		rule.Retry.Attempts != 3 || rule.Retry.Backoff != 100*time.Millisecond || rule.Mirrors[0].Percent != 25 ||
		rule.Backends[0].Weight != 90 || rule.Backends[1].Host != "b.app.svc.cluster.local" || !rule.Filters.Rewrite.PrefixSet {
		t.Errorf("rule %+v", rule)
	}
	if g := cfg.Routes[1].Rules[0].Matches[0]; g.PathKind != model.PathExact || g.Path != "/pkg.Echo/Say" {
		t.Errorf("gRPC match %+v", g)
	}
	vs := cfg.Routes[2].Rules[0]
	if vs.Fault.Delay != time.Second || vs.Fault.DelayPercent != 10 || vs.Fault.AbortStatus != 500 || vs.Retry.Codes[0] != 503 ||
		vs.Backends[0].Subset != "v1" || vs.Backends[0].Weight != 100 || vs.Timeout != 3*time.Second {
		t.Errorf("VirtualService rule %+v", vs)
	}
	d := cfg.Destinations["reviews.app.svc.cluster.local"]
	if d == nil || d.Policy.LB.HashCookie != "sticky" || d.Policy.Pool.MaxConnections != 10 || d.Policy.Outlier.Consecutive5xx != 3 ||
		d.Subsets["v1"].Labels["version"] != "v1" {
		t.Errorf("destination %+v", d)
	}
	if rl := cfg.RateLimits[0]; rl.TokensPerFill != 100 || rl.FillInterval != time.Second || rl.Targets[0].Kind != model.KindHTTPRoute {
		t.Errorf("rate limit %+v", rl)
	}
}

func TestCompileL7Rejects(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"bad regex", `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{kind: Service, group: "", name: web}]
  rules: [{matches: [{path: {type: RegularExpression, value: "(["}}]}]
`, "spec.rules[0].matches[0].path.value: invalid regular expression"},
		{"relative prefix", `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{kind: Service, group: "", name: web}]
  rules: [{matches: [{path: {value: "api"}}]}]
`, "spec.rules[0].matches[0].path.value"},
		{"negative weight", `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{kind: Service, group: "", name: web}]
  rules: [{backendRefs: [{name: a, port: 80, weight: -1}]}]
`, "spec.rules[0].backendRefs[0].weight"},
		{"bad template", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ap, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{to: [{operation: {paths: ["/a/{**}/b"]}}]}]
`, "spec.rules[0].to[0].operation.paths[0]"},
		{"unknown condition", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ap, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  rules: [{when: [{key: request.bogus, values: [x]}]}]
`, "spec.rules[0].when[0].key"},
		{"CUSTOM action", `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ap, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: CUSTOM
  provider: {name: ext}
`, "spec.action"},
		{"both JWKS sources", `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ra, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  jwtRules: [{issuer: i, jwks: "{}", jwksUri: "https://x"}]
`, "spec.jwtRules[0].jwks"},
		{"fault percentage", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: app}
spec:
  hosts: [web]
  http: [{fault: {abort: {percentage: {value: 150}, httpStatus: 500}}, route: [{destination: {host: web}}]}]
`, "spec.http[0].fault"},
		{"retryOn", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: app}
spec:
  hosts: [web]
  http: [{retries: {attempts: 1, retryOn: sometimes}, route: [{destination: {host: web}}]}]
`, "spec.http[0].retries.retryOn"},
		{"rate limit interval", `apiVersion: policy.ambit.dev/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: rl, namespace: app}
spec:
  targetRefs: [{group: "", kind: Service, name: web}]
  tokenBucket: {maxTokens: 1, fillInterval: 1ms}
`, "spec.tokenBucket.fillInterval"},
		{"rate limit target", `apiVersion: policy.ambit.dev/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: rl, namespace: app}
spec:
  targetRefs: [{group: apps, kind: Deployment, name: web}]
  tokenBucket: {maxTokens: 1, fillInterval: 1s}
`, "spec.targetRefs[0].kind"},
		{"unknown field", `apiVersion: policy.ambit.dev/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: rl, namespace: app}
spec:
  targetRefs: [{group: "", kind: Service, name: web}]
  tokenBucket: {maxTokens: 1, fillInterval: 1s, burst: 3}
`, "unknown field"},
		{"DR outlier percent", `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: app}
spec:
  host: web
  trafficPolicy: {outlierDetection: {maxEjectionPercent: 200}}
`, "spec.trafficPolicy.outlierDetection.maxEjectionPercent"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := compileL7YAML(t, tc.yaml)
			// Strict decoding (unknown fields) is the reader's; everything else is the compiler's *Error.
			var ce *Error
			var ie *local.InputError
			if err == nil || !errors.As(err, &ce) && !errors.As(err, &ie) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want an *Error or *local.InputError containing %q", err, tc.want)
			}
		})
	}
}

// TestCompilerAdd validates objects one at a time, as the API server source does: an invalid object is
// rejected alone and leaves the configuration as it was; the others apply.
func TestCompilerAdd(t *testing.T) {
	objs := &local.Objects{}
	if err := objs.Decode("l7.yaml", []byte(l7Valid+`---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad, namespace: app}
spec:
  parentRefs: [{kind: Service, group: "", name: web}]
  rules: [{matches: [{path: {type: RegularExpression, value: "(["}}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: newer, namespace: app}
spec: {host: reviews, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l4, namespace: app}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [x]}}]}]}
`)); err != nil {
		t.Fatal(err)
	}
	c := New(Options{}, objs.ServiceEntries, objs.Pods)
	in := &Inputs{HTTPRoutes: objs.HTTPRoutes, GRPCRoutes: objs.GRPCRoutes, VirtualServices: objs.VirtualServices,
		DestinationRules: objs.DestinationRules, AuthorizationPolicies: objs.AuthorizationPolicies,
		RequestAuthentications: objs.RequestAuthentications, RateLimitPolicies: objs.RateLimitPolicies}
	var rejected []string
	for _, o := range in.Objects() {
		if err := c.Add(o); err != nil {
			var ce *Error
			if !errors.As(err, &ce) || ce.Object != o {
				t.Fatalf("error %v does not name the object", err)
			}
			rejected = append(rejected, ce.Kind+" "+ce.Namespace+"/"+ce.Name)
		}
	}
	if len(rejected) != 1 || rejected[0] != "HTTPRoute app/bad" {
		t.Errorf("rejected %v, want only HTTPRoute app/bad", rejected)
	}
	cfg := c.Config()
	if len(cfg.Routes) != 3 || len(cfg.Authz) != 1 || len(cfg.Destinations) != 1 {
		t.Errorf("compiled %d routes, %d authz, %d destinations; want the valid objects only (3, 1, 1)",
			len(cfg.Routes), len(cfg.Authz), len(cfg.Destinations))
	}
	if d := cfg.Destinations["reviews.app.svc.cluster.local"]; d == nil || d.Name != "dr" {
		t.Errorf("destination %+v, want the oldest rule dr", d)
	}
	if err := c.Add(objs.Pods); err == nil {
		t.Error("Add accepted an unsupported object")
	}
	// Compile, the file path, rejects the whole version for the one bad object.
	if _, err := Compile(in, Options{}); err == nil || !strings.Contains(err.Error(), "HTTPRoute app/bad: spec.rules[0].matches[0].path.value") {
		t.Errorf("Compile error %v, want HTTPRoute app/bad named with its field", err)
	}
}

// TestCompilerAddInvalidDeny: an API object that fails validation is skipped, except a DENY
// AuthorizationPolicy, which must never deny less for being invalid: it becomes a deny-all for its
// targets (istiod does the same for its selection) and is still reported (issue 14 item 4).
func TestCompilerAddInvalidDeny(t *testing.T) {
	objs := &local.Objects{}
	if err := objs.Decode("l7.yaml", []byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-deny, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"], ports: ["99999"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-allow, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: ALLOW
  rules: [{to: [{operation: {ports: ["0"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: bad-deny-target, namespace: app}
spec:
  targetRefs: [{kind: Pod, group: "", name: web}]
  action: DENY
`)); err != nil {
		t.Fatal(err)
	}
	c := New(Options{}, nil, nil)
	var rejected []string
	for _, ap := range objs.AuthorizationPolicies {
		if err := c.Add(ap); err != nil {
			rejected = append(rejected, ap.Name)
		}
	}
	if strings.Join(rejected, ",") != "bad-deny,bad-allow,bad-deny-target" {
		t.Errorf("rejected %v, want all three reported", rejected)
	}
	authz := c.Config().Authz
	if len(authz) != 1 {
		t.Fatalf("compiled %d policies, want the invalid DENY as a deny-all: %+v", len(authz), authz)
	}
	p := authz[0]
	if p.Key() != "app/bad-deny" || p.Action != model.ActionDeny || len(p.Rules) != 1 || len(p.Rules[0].From) != 0 ||
		len(p.Rules[0].To) != 0 || len(p.Rules[0].When) != 0 || len(p.Targets) != 1 || p.Targets[0].Name != "web" {
		t.Errorf("policy %+v, want a deny-all (one empty rule) targeting Service web", p)
	}
}

// TestVirtualServiceRewritePrefix: a VirtualService uri prefix match is Istio's plain string prefix, and
// rewrite.uri replaces the matched prefix (Envoy's prefix_rewrite); the kube tier's TestL7 found the path
// left as it was.
func TestVirtualServiceRewritePrefix(t *testing.T) {
	cfg, err := compileL7YAML(t, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: app}
spec:
  hosts: [web]
  http:
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new}
    route: [{destination: {host: web}}]
`)
	if err != nil {
		t.Fatal(err)
	}
	rule := cfg.Routes[0].Rules[0]
	m := &rule.Matches[0]
	for _, tc := range []struct {
		path  string
		match bool
		want  string
	}{
		{"/old", true, "/new"},
		{"/old/x", true, "/new/x"},
		{"/oldx", true, "/newx"}, // a string prefix, not element-wise
		{"/other/old", false, ""},
		{"/ol", false, ""},
	} {
		if got := routing.MatchPath(m, tc.path); got != tc.match {
			t.Errorf("%s: match %v, want %v", tc.path, got, tc.match)
			continue
		}
		if !tc.match {
			continue
		}
		if got := routing.RewritePath(tc.path, rule.Filters.Rewrite.PathModifier, m); got != tc.want {
			t.Errorf("rewrite %s = %q, want %q", tc.path, got, tc.want)
		}
	}
}
