package local

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/waypoint/model"
)

func compileL7YAML(t *testing.T, src string) (*model.Config, error) {
	t.Helper()
	objs := &Objects{}
	if err := objs.Decode("l7.yaml", []byte(src)); err != nil {
		return nil, err
	}
	return CompileL7(objs, Options{})
}

const l7Valid = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}, {name: wp}]
  rules:
  - name: split
    matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-v, value: "2"}], method: GET}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}
    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 80}, fraction: {numerator: 1, denominator: 4}}}
    backendRefs: [{name: a, port: 80, weight: 90}, {name: b, port: 80, weight: 10}]
    timeouts: {request: 2s, backendRequest: 500ms}
    retry: {codes: [503], attempts: 3, backoff: 100ms}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: app}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules: [{matches: [{method: {service: pkg.Echo, method: Say}}], backendRefs: [{name: echo-v2, port: 9000}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: app}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /x}}]
    fault: {delay: {percentage: {value: 10}, fixedDelay: 1s}, abort: {percentage: {value: 5}, httpStatus: 500}}
    retries: {attempts: 2, perTryTimeout: 1s, retryOn: "gateway-error,503"}
    timeout: 3s
    route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: app}
spec:
  host: reviews
  trafficPolicy:
    loadBalancer: {consistentHash: {httpCookie: {name: sticky, ttl: 60s}}}
    connectionPool: {tcp: {maxConnections: 10, connectTimeout: 1s}, http: {http1MaxPendingRequests: 5, http2MaxRequests: 50}}
    outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 15s, maxEjectionPercent: 50}
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ap, namespace: app}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin/{**}"], ports: ["80"]}}], when: [{key: "request.auth.claims[role]", values: [guest]}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: ra, namespace: app}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  jwtRules: [{issuer: iss, jwksUri: "https://issuer.example/jwks", fromHeaders: [{name: x-jwt, prefix: "Bearer "}]}]
---
apiVersion: policy.ambit.dev/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: rl, namespace: app}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]
  tokenBucket: {maxTokens: 100, fillInterval: 1s}
`

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
			var ie *InputError
			if err == nil || !errors.As(err, &ie) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want an InputError containing %q", err, tc.want)
			}
		})
	}
}

// TestCompileIgnoresL7Kinds checks that the L4 compile accepts and ignores the L7 kinds.
func TestCompileIgnoresL7Kinds(t *testing.T) {
	objs := &Objects{}
	if err := objs.Decode("l7.yaml", []byte(l7Valid)); err != nil {
		t.Fatal(err)
	}
	res, err := Compile(objs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Snapshot.Policies) != 0 {
		t.Errorf("targetRef policies reached the L4 state: %d", len(res.Snapshot.Policies))
	}
}
