//go:build e2e

package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	josejwt "github.com/go-jose/go-jose/v4/jwt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"github.com/ambit-mesh/ambit/test/kubelet"
)

// l7NS is the namespace of TestL7: ambient, enrolled to its namespace waypoint. l7OtherNS holds a backend
// of cross-namespace references (ambient, no waypoint).
const (
	l7NS      = "l7"
	l7OtherNS = "l7-other"
)

// l7App is TestL7's application: echo servers echo-v1 (node-0) and echo-v2 (node-1) labelled app=echo with
// their version, a mirror backend and a client, and one Service per feature under test so that the routes
// and policies of one feature never apply to another's requests; and in l7OtherNS the echo server other.
func l7App() string {
	var b strings.Builder
	for _, ns := range []string{l7NS, l7OtherNS} {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: %s, labels: {istio.io/dataplane-mode: ambient}}\n", ns)
	}
	deploy := func(ns, name, labels, node string) {
		fmt.Fprintf(&b, `---
apiVersion: apps/v1
kind: Deployment
metadata: {name: %[1]s, namespace: %[4]s}
spec:
  replicas: 1
  selector: {matchLabels: {%[2]s}}
  template:
    metadata: {labels: {%[2]s}}
    spec:
      nodeSelector: {kubernetes.io/hostname: %[3]s}
      containers:
      - name: echo
        image: ambit-e2e/echo:1
        args: [--port=9080, --grpc-port=9090]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        ports: [{containerPort: 9080, name: http}]
        readinessProbe: {tcpSocket: {port: 9080}, periodSeconds: 1}
`, name, labels, node, ns)
	}
	svc := func(ns, name, selector string) {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Service
metadata: {name: %[1]s, namespace: %[3]s}
spec:
  selector: {%[2]s}
  ports: [{name: http, port: 9080, targetPort: 9080}, {name: grpc, port: 9090, targetPort: 9090}]
`, name, selector, ns)
	}
	deploy(l7NS, "echo-v1", "app: echo, version: v1", "node-0")
	deploy(l7NS, "echo-v2", "app: echo, version: v2", "node-1")
	deploy(l7NS, "mirror", "app: mirror", "node-1")
	deploy(l7NS, "client", "app: client", "node-0")
	deploy(l7OtherNS, "other", "app: other", "node-1")
	svc(l7NS, "echo-v1", "app: echo, version: v1")
	svc(l7NS, "echo-v2", "app: echo, version: v2")
	svc(l7NS, "mirror", "app: mirror")
	for _, s := range []string{"route", "vs", "authz", "jwt", "rl", "grpc", "outlier", "cross"} {
		svc(l7NS, s, "app: echo")
	}
	svc(l7NS, "pool", "app: echo, version: v1")
	svc(l7OtherNS, "other", "app: other")
	return b.String()
}

// l7HTTPRoute is the GAMMA route of Service route: every HTTPRoute feature, one path prefix each.
const l7HTTPRoute = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: route, namespace: l7}
spec:
  parentRefs: [{group: "", kind: Service, name: route, port: 9080}]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /match}
      headers: [{name: x-version, value: v2}]
    - path: {type: PathPrefix, value: /match}
      queryParams: [{name: version, value: v2}]
    backendRefs: [{name: echo-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /match}}]
    backendRefs: [{name: echo-v1, port: 9080}]
  - matches: [{path: {type: Exact, value: /exact}}]
    backendRefs: [{name: echo-v2, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /weights}}]
    backendRefs: [{name: echo-v1, port: 9080, weight: 80}, {name: echo-v2, port: 9080, weight: 20}]
  - matches: [{path: {type: PathPrefix, value: /headers}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: X-Set, value: set-by-route}]
        add: [{name: X-Add, value: added-by-route}]
        remove: [X-Remove]
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set: [{name: X-Resp, value: resp-by-route}]
        remove: [X-Echo-Pod]
    backendRefs: [{name: echo-v1, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /redirect}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, hostname: redirected.example, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /moved}}
  - matches: [{path: {type: PathPrefix, value: /rewrite}}]
    filters:
    - type: URLRewrite
      urlRewrite: {hostname: rewritten.example, path: {type: ReplacePrefixMatch, replacePrefixMatch: /rewritten}}
    backendRefs: [{name: echo-v1, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: mirror, port: 9080}}
    backendRefs: [{name: echo-v1, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /slow}}]
    timeouts: {request: 500ms}
    backendRefs: [{name: echo-v1, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /retry}}]
    retry: {attempts: 2, codes: [500], backoff: 10ms}
    backendRefs: [{name: echo-v1, port: 9080}]
`

// l7CrossRoute sends Service cross's requests to Service other of l7OtherNS (a mesh route: no ReferenceGrant
// needed, as istiod has it); l7Grant would permit it.
const l7CrossRoute = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cross, namespace: l7}
spec:
  parentRefs: [{group: "", kind: Service, name: cross, port: 9080}]
  rules:
  - backendRefs: [{name: other, namespace: l7-other, port: 9080}]
`

const l7Grant = `
apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: from-l7, namespace: l7-other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: l7}]
  to: [{group: "", kind: Service, name: other}]
`

// l7GRPCRoute sends the health checks of Service grpc carrying x-version: v2 to echo-v2, the rest to echo-v1.
const l7GRPCRoute = `
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: l7}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc, port: 9090}]
  rules:
  - matches: [{method: {service: grpc.health.v1.Health, method: Check}, headers: [{name: x-version, value: v2}]}]
    backendRefs: [{name: echo-v2, port: 9090}]
  - backendRefs: [{name: echo-v1, port: 9090}]
`

// l7Istio is the VirtualService and DestinationRule of Service vs (subsets by version, retries, faults) and
// the policies: L7 AuthorizationPolicies targeting a Service, the Gateway (the namespace waypoint) and the
// GatewayClass (from the root namespace), a RequestAuthentication with an inline JWKS ({{jwks}}) and the
// AuthorizationPolicy requiring a request principal on Service jwt, and a local rate limit on Service rl.
const l7Istio = `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: l7}
spec:
  hosts: [vs]
  http:
  - match: [{uri: {prefix: /subset-v2}}]
    route: [{destination: {host: vs, subset: v2}}]
  - match: [{uri: {prefix: /subset-canary}}]
    route: [{destination: {host: vs, subset: canary}}]
  - match: [{uri: {prefix: /retry}}]
    retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: vs, subset: v1}}]
  - match: [{uri: {prefix: /noretry}}]
    retries: {attempts: 0}
    route: [{destination: {host: vs, subset: v1}}]
  - match: [{uri: {prefix: /vs-timeout}}]
    timeout: 300ms
    route: [{destination: {host: vs, subset: v1}}]
  - match: [{uri: {prefix: /vs-rewrite}}]
    rewrite: {uri: /vs-rewritten, authority: vs-rewritten.example}
    headers:
      request: {set: {x-vs-set: vs}, remove: [x-vs-remove]}
      response: {add: {x-vs-resp: vs}}
    route: [{destination: {host: vs, subset: v2}}]
  - match: [{uri: {prefix: /fault-abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: vs, subset: v1}}]
  - match: [{uri: {prefix: /fault-delay}}]
    fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}
    route: [{destination: {host: vs, subset: v1}}]
  - route: [{destination: {host: vs, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: vs, namespace: l7}
spec:
  host: vs
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: canary, labels: {track: canary}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool, namespace: l7}
spec:
  host: pool
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 1}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: outlier, namespace: l7}
spec:
  host: outlier
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 10m, maxEjectionPercent: 100}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-svc, namespace: l7}
spec:
  targetRefs: [{kind: Service, group: "", name: authz}]
  action: DENY
  rules: [{to: [{operation: {paths: [/deny-svc]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-principal, namespace: l7}
spec:
  targetRefs: [{kind: Service, group: "", name: authz}]
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/l7/sa/default]}}]
    to: [{operation: {paths: [/deny-principal]}}]
  - from: [{source: {notPrincipals: [cluster.local/ns/l7/sa/default]}}]
    to: [{operation: {paths: [/deny-others]}}]
  - to: [{operation: {methods: [DELETE]}}]
    when: [{key: "request.headers[x-deny]", values: ["yes"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-gw, namespace: l7}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/deny-gw]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: l7-deny-class, namespace: istio-system}
spec:
  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: [/l7-deny-class]}}]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: l7}
spec:
  targetRefs: [{kind: Service, group: "", name: jwt}]
  jwtRules:
  - issuer: l7-test
    jwks: '{{jwks}}'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: l7}
spec:
  targetRefs: [{kind: Service, group: "", name: jwt}]
  action: ALLOW
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
---
apiVersion: policy.ambit.dev/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: rl, namespace: l7}
spec:
  targetRefs: [{kind: Service, group: "", name: rl}]
  tokenBucket: {maxTokens: 3, fillInterval: 1h}
`

// l7Response is one answer through the waypoint.
type l7Response struct {
	status int
	header http.Header
	body   string
}

// TestL7 configures the namespace waypoint istiod deploys from the API server only (the chart's default
// --l7-source kubernetes) and proves each L7 feature with requests from a client pod.
func TestL7(t *testing.T) {
	c := need(t)
	c.apply(t, l7App())
	for _, d := range []string{"echo-v1", "echo-v2", "mirror", "client"} {
		c.kubectl(t, "rollout", "status", "deployment/"+d, "-n", l7NS, "--timeout=120s")
	}
	c.kubectl(t, "rollout", "status", "deployment/other", "-n", l7OtherNS, "--timeout=120s")
	// The namespace waypoint, applied and enrolled the way users do.
	out := c.mustAmbitctl(t, "waypoint", "apply", "-n", l7NS, "--enroll-namespace", "--wait")
	if !strings.Contains(out, `namespace l7 labeled with "istio.io/use-waypoint: waypoint"`) {
		t.Fatalf("apply --enroll-namespace printed %q", out)
	}
	c.kubectl(t, "rollout", "status", "deployment/waypoint", "-n", l7NS, "--timeout=120s")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// The GatewayClass policy lives in the root namespace: it would reach other tests' waypoints.
		_, _ = c.stack.Kubectl(ctx, "delete", "authorizationpolicy", "l7-deny-class", "-n", "istio-system", "--ignore-not-found")
		_, _ = c.stack.Kubectl(ctx, "delete", "namespace", l7NS, l7OtherNS, "--wait=false")
	})
	_, client := c.podBy(t, l7NS, "app=client")
	vip := map[string]string{}
	for _, s := range []string{"route", "vs", "authz", "jwt", "rl", "grpc", "outlier", "pool", "cross"} {
		vip[s] = c.kubectl(t, "get", "svc", s, "-n", l7NS, "-o", "jsonpath={.spec.clusterIP}")
	}

	key, jwks, sign := l7Signer(t)
	signExpired := func(k *ecdsa.PrivateKey, iss string) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithHeader("kid", "l7"))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := josejwt.Signed(s).Claims(josejwt.Claims{Issuer: iss, Subject: "l7-user",
			Expiry: josejwt.NewNumericDate(time.Now().Add(-time.Hour))}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	c.apply(t, l7HTTPRoute)
	c.apply(t, l7GRPCRoute)
	c.apply(t, l7CrossRoute)
	c.apply(t, strings.ReplaceAll(l7Istio, "{{jwks}}", jwks))

	do := func(t *testing.T, svc, uri string, hdr map[string]string) (l7Response, error) {
		return l7Do(t.Context(), client, vip[svc], svc, uri, hdr)
	}
	// until sends the request until check accepts the answer (for up to 30 s while the waypoint's
	// informers catch up), and returns the accepted answer; on timeout it fails t with the last one.
	until := func(t *testing.T, svc, uri string, hdr map[string]string, check func(l7Response) bool) l7Response {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			r, err := do(t, svc, uri, hdr)
			if err == nil && check(r) {
				return r
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s %s: last answer %d %q %v (err %v)", svc, uri, r.status, r.body, r.header, err)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	is := func(status int, pod string) func(l7Response) bool {
		return func(r l7Response) bool {
			return r.status == status && (pod == "" || strings.HasPrefix(r.body, pod+"-"))
		}
	}
	// local is a local reply of the waypoint: its status and Envoy's body.
	local := func(status int, body string) func(l7Response) bool {
		return func(r l7Response) bool { return r.status == status && r.body == body }
	}
	// same checks that n more answers (the configuration is in force now) all pass check.
	same := func(t *testing.T, n int, svc, uri string, hdr map[string]string, check func(l7Response) bool) {
		t.Helper()
		for range n {
			r, err := do(t, svc, uri, hdr)
			if err != nil || !check(r) {
				t.Fatalf("%s %s: answer %d %q %v (err %v)", svc, uri, r.status, r.body, r.header, err)
			}
		}
	}
	// Every request of the test goes through the waypoint: wait for it on the plainest one.
	wp, _ := c.podBy(t, l7NS, "gateway.networking.k8s.io/gateway-name=waypoint")
	until(t, "route", "/match", nil, is(200, "echo-v1"))
	if len(c.accessLines(l7NS, wp.Name, "istio-proxy", nil)) == 0 {
		t.Fatal("the waypoint logged no request")
	}

	t.Run("HTTPRoute", func(t *testing.T) {
		t.Run("path, header and query matches", func(t *testing.T) {
			until(t, "route", "/match", map[string]string{"X-Version": "v2"}, is(200, "echo-v2"))
			same(t, 5, "route", "/match/x", nil, is(200, "echo-v1"))
			same(t, 5, "route", "/match/x", map[string]string{"X-Version": "v2"}, is(200, "echo-v2"))
			same(t, 5, "route", "/match?version=v2", nil, is(200, "echo-v2"))
			same(t, 5, "route", "/match?version=v3", nil, is(200, "echo-v1"))
			same(t, 5, "route", "/exact", nil, is(200, "echo-v2"))
			// No rule matches: Gateway API's 404.
			same(t, 1, "route", "/exact/more", nil, is(404, ""))
			same(t, 1, "route", "/none", nil, is(404, ""))
		})
		t.Run("weights 80/20", func(t *testing.T) {
			until(t, "route", "/weights", nil, is(200, ""))
			const n = 100
			v1 := 0
			for range n {
				r, err := do(t, "route", "/weights", nil)
				if err != nil || r.status != 200 {
					t.Fatalf("weights: %d %q %v", r.status, r.body, err)
				}
				if strings.HasPrefix(r.body, "echo-v1-") {
					v1++
				}
			}
			// Binomial(100, 0.8): mean 80, sd 4; 60..95 is 5 sd below and 3.75 above.
			t.Logf("weights: %d of %d to echo-v1", v1, n)
			if v1 < 60 || v1 > 95 {
				t.Errorf("%d of %d requests went to echo-v1 (weight 80 of 100)", v1, n)
			}
		})
		t.Run("request and response header modifiers", func(t *testing.T) {
			hdr := map[string]string{"X-Set": "from-client", "X-Remove": "from-client"}
			r := until(t, "route", "/headers?dump", hdr, func(r l7Response) bool { return r.header.Get("X-Resp") != "" })
			for _, want := range []string{"header X-Set: set-by-route\n", "header X-Add: added-by-route\n"} {
				if !strings.Contains(r.body, want) {
					t.Errorf("backend did not see %q:\n%s", want, r.body)
				}
			}
			for _, not := range []string{"from-client", "X-Remove"} {
				if strings.Contains(r.body, not) {
					t.Errorf("backend saw %q:\n%s", not, r.body)
				}
			}
			if got := r.header.Get("X-Resp"); got != "resp-by-route" {
				t.Errorf("X-Resp %q", got)
			}
			if got := r.header.Get("X-Echo-Pod"); got != "" {
				t.Errorf("X-Echo-Pod %q not removed", got)
			}
		})
		t.Run("redirect", func(t *testing.T) {
			r := until(t, "route", "/redirect/x", nil, is(301, ""))
			if got := r.header.Get("Location"); got != "https://redirected.example/moved" {
				t.Errorf("Location %q", got)
			}
		})
		t.Run("URL rewrite", func(t *testing.T) {
			r := until(t, "route", "/rewrite/x?dump", nil, is(200, "echo-v1"))
			for _, want := range []string{"uri /rewritten/x?dump\n", "host rewritten.example\n"} {
				if !strings.Contains(r.body, want) {
					t.Errorf("backend did not see %q:\n%s", want, r.body)
				}
			}
		})
		t.Run("mirror", func(t *testing.T) {
			uri := fmt.Sprintf("/mirror/%d", time.Now().UnixNano())
			until(t, "route", uri, nil, is(200, "echo-v1"))
			_, mirror := c.podBy(t, l7NS, "app=mirror")
			waitFor(t, 10*time.Second, "the mirror backend to see "+uri, func() bool {
				r, err := l7Do(t.Context(), mirror, "127.0.0.1", "", "/_seen", nil)
				return err == nil && strings.Contains(r.body, uri+"\n")
			})
		})
		t.Run("request timeout answers 504", func(t *testing.T) {
			until(t, "route", "/slow?delay=5s", nil, is(504, ""))
			same(t, 1, "route", "/slow", nil, is(200, "echo-v1"))
		})
		t.Run("retry (experimental channel)", func(t *testing.T) {
			// echo-v1 answers 500 to the first request with a key: a rule without retry shows it ...
			k := time.Now().UnixNano()
			same(t, 1, "route", fmt.Sprintf("/match?fail-first=n%d", k), nil, is(500, "echo-v1"))
			// ... the rule with retry {codes: [500]} retries and the client sees the second attempt's 200.
			// (The route is one object: its /match rule answered, so its /retry rule is loaded too.)
			same(t, 1, "route", fmt.Sprintf("/retry?fail-first=r%d", k), nil, is(200, "echo-v1"))
		})
		t.Run("status written by istiod", func(t *testing.T) {
			// istiod is the route's one controller: one parent status, the Service, Accepted and ResolvedRefs
			// (and its ResolvedWaypoints), for the current generation. Ambit's waypoint writes none (it cannot:
			// its role only reads).
			const want = "istio.io/gateway-controller Service/route Accepted=True/1 ResolvedRefs=True/1 ResolvedWaypoints=True/1;"
			got := ""
			read := func() string {
				out, _ := c.stack.Kubectl(t.Context(), "get", "httproute", "route", "-n", l7NS, "-o",
					`jsonpath={range .status.parents[*]}{.controllerName} {.parentRef.kind}/{.parentRef.name}{range .conditions[*]} {.type}={.status}/{.observedGeneration}{end};{end}`)
				return strings.TrimSpace(string(out))
			}
			waitFor(t, 30*time.Second, "Accepted and ResolvedRefs on HTTPRoute route", func() bool { got = read(); return got == want })
			// Not fought over: a request later, the same conditions.
			same(t, 1, "route", "/match", nil, is(200, "echo-v1"))
			if got = read(); got != want {
				t.Errorf("route status %q, want %q", got, want)
			}
			// kubectl auth can-i exits 1 when the answer is no.
			out, _ := c.stack.Kubectl(t.Context(), "auth", "can-i", "update", "httproutes/status", "-n", l7NS,
				"--as=system:serviceaccount:"+l7NS+":waypoint")
			if got := strings.TrimSpace(string(out)); got != "no" {
				t.Errorf("the waypoint may update route status: %q", got)
			}
		})
	})

	t.Run("HTTPRoute cross-namespace backendRef of a mesh route", func(t *testing.T) {
		// istiod enforces ReferenceGrants only for routes attached to gateways, not for mesh (GAMMA) routes:
		// it resolves the reference (ResolvedRefs True) and an Envoy waypoint routes it. The Ambit waypoint
		// does the same, and keeps doing so after a ReferenceGrant comes and goes.
		resolved := func() string {
			out, _ := c.stack.Kubectl(t.Context(), "get", "httproute", "cross", "-n", l7NS, "-o",
				`jsonpath={range .status.parents[*].conditions[*]}{.type}={.status}/{.reason} {end}`)
			return strings.TrimSpace(string(out))
		}
		l7WaitValue(t, 30*time.Second, "ResolvedRefs on HTTPRoute cross", resolved, "ResolvedRefs=True/ResolvedRefs")
		until(t, "cross", "/", nil, is(200, "other"))
		same(t, 3, "cross", "/", nil, is(200, "other"))
		c.apply(t, l7Grant)
		same(t, 3, "cross", "/", nil, is(200, "other"))
		c.kubectl(t, "delete", "referencegrant", "from-l7", "-n", l7OtherNS)
		same(t, 3, "cross", "/", nil, is(200, "other"))
		l7WaitValue(t, 30*time.Second, "ResolvedRefs on HTTPRoute cross", resolved, "ResolvedRefs=True/ResolvedRefs")
	})

	t.Run("VirtualService and DestinationRule subsets", func(t *testing.T) {
		until(t, "vs", "/subset-v2", nil, is(200, "echo-v2"))
		same(t, 10, "vs", "/subset-v2", nil, is(200, "echo-v2"))
		same(t, 10, "vs", "/", nil, is(200, "echo-v1"))
		// Subsets follow pod labels as they change: no pod is track=canary yet ...
		same(t, 1, "vs", "/subset-canary", nil, local(503, "no healthy upstream"))
		echo1, _ := c.podBy(t, l7NS, "app=echo,version=v1")
		c.kubectl(t, "label", "pod", echo1.Name, "-n", l7NS, "track=canary")
		// ... then echo-v1 is ...
		until(t, "vs", "/subset-canary", nil, is(200, "echo-v1"))
		c.kubectl(t, "label", "pod", echo1.Name, "-n", l7NS, "track-")
		// ... and is no more.
		until(t, "vs", "/subset-canary", nil, local(503, "no healthy upstream"))
	})
	t.Run("routes apply whatever Host the client sends", func(t *testing.T) {
		// A waypoint routes by the service the request was addressed to: short names, names with the port,
		// the VIP and foreign names all get the service's routes.
		for _, host := range []string{"vs", "vs:9080", "vs.l7", "vs.l7.svc.cluster.local:9080", hostPort(vip["vs"], 9080), "other.example"} {
			same(t, 1, "vs", "/subset-v2", map[string]string{"Host": host}, is(200, "echo-v2"))
		}
		for _, host := range []string{"route", "route:9080", hostPort(vip["route"], 9080), "other.example"} {
			same(t, 1, "route", "/exact", map[string]string{"Host": host}, is(200, "echo-v2"))
		}
	})
	t.Run("VirtualService retries", func(t *testing.T) {
		until(t, "vs", "/subset-v2", nil, is(200, "echo-v2"))
		// echo-v1 answers 500 to the first request with a key: without retries the client sees it ...
		k := time.Now().UnixNano()
		same(t, 1, "vs", fmt.Sprintf("/noretry?fail-first=n%d", k), nil, is(500, "echo-v1"))
		// ... with retryOn 5xx the waypoint retries and the client sees the second attempt's 200.
		same(t, 1, "vs", fmt.Sprintf("/retry?fail-first=r%d", k), nil, is(200, "echo-v1"))
	})
	t.Run("VirtualService timeout, rewrite and header operations", func(t *testing.T) {
		until(t, "vs", "/vs-timeout?delay=5s", nil, is(504, ""))
		r := until(t, "vs", "/vs-rewrite/x?dump", map[string]string{"X-Vs-Set": "client", "X-Vs-Remove": "client"}, is(200, "echo-v2"))
		for _, want := range []string{"uri /vs-rewritten/x?dump\n", "host vs-rewritten.example\n", "header X-Vs-Set: vs\n"} {
			if !strings.Contains(r.body, want) {
				t.Errorf("backend did not see %q:\n%s", want, r.body)
			}
		}
		if strings.Contains(r.body, "X-Vs-Remove") || strings.Contains(r.body, "X-Vs-Set: client") {
			t.Errorf("backend saw the client's headers:\n%s", r.body)
		}
		if got := r.header.Get("X-Vs-Resp"); got != "vs" {
			t.Errorf("X-Vs-Resp %q", got)
		}
	})
	t.Run("VirtualService fault injection", func(t *testing.T) {
		until(t, "vs", "/fault-abort", nil, local(418, "fault filter abort"))
		t0 := time.Now()
		same(t, 1, "vs", "/fault-delay", nil, is(200, "echo-v1"))
		// A lower bound only: the injected delay must have happened.
		if d := time.Since(t0); d < time.Second {
			t.Errorf("fault-delay answered after %v, before the 1s delay", d)
		}
	})

	t.Run("DestinationRule connection pool", func(t *testing.T) {
		// http2MaxRequests 1: while one request is in flight at pool's one pod, a second one overflows.
		uri := fmt.Sprintf("/held/%d?delay=3s", time.Now().UnixNano())
		held := make(chan l7Response, 1)
		go func() { r, _ := do(t, "pool", uri, nil); held <- r }()
		_, echo1 := c.podBy(t, l7NS, "app=echo,version=v1")
		waitFor(t, 10*time.Second, "the held request at echo-v1", func() bool {
			r, err := l7Do(t.Context(), echo1, "127.0.0.1", "", "/_seen", nil)
			return err == nil && strings.Contains(r.body, uri+"\n")
		})
		r, err := do(t, "pool", "/second", nil)
		if err != nil || r.status != 503 || !strings.Contains(r.body, "overflow") {
			t.Errorf("second request while one is held: %d %q (err %v), want 503 overflow", r.status, r.body, err)
		}
		if r := <-held; r.status != 200 {
			t.Errorf("held request: %d %q", r.status, r.body)
		}
		same(t, 1, "pool", "/after", nil, is(200, "echo-v1"))
	})
	t.Run("DestinationRule outlier detection", func(t *testing.T) {
		// echo-v2 answers 500 to these requests: after its first 5xx it is ejected for 10 minutes, and every
		// later request lands on echo-v1. Without ejection 20 in a row on echo-v1 after a failure has odds of
		// 1 in 10^6.
		run, failed := 0, 0
		deadline := time.Now().Add(30 * time.Second)
		for run < 20 || failed == 0 {
			r, err := do(t, "outlier", "/?fail-on=echo-v2", nil)
			switch {
			case err == nil && r.status == 200 && strings.HasPrefix(r.body, "echo-v1-"):
				run++
			case err == nil && r.status == 500 && strings.HasPrefix(r.body, "echo-v2-"):
				run, failed = 0, failed+1
			default:
				t.Fatalf("answer %d %q (err %v)", r.status, r.body, err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("no run of 20 answers from echo-v1 after a failure of echo-v2 in 30s (%d failures)", failed)
			}
		}
		t.Logf("outlier: echo-v2 failed %d times before its ejection", failed)
	})
	t.Run("GRPCRoute", func(t *testing.T) {
		conn, err := grpc.NewClient("passthrough:///"+net.JoinHostPort(vip["grpc"], "9090"),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithAuthority("grpc."+l7NS+".svc.cluster.local:9090"),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return client.NS.Dial(ctx, "tcp", addr) }))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		hc := healthpb.NewHealthClient(conn)
		check := func(version string) (string, error) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			if version != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "x-version", version)
			}
			var md metadata.MD
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Header(&md))
			if err != nil {
				return "", err
			}
			if resp.Status != healthpb.HealthCheckResponse_SERVING {
				return "", fmt.Errorf("status %v", resp.Status)
			}
			return strings.Join(md.Get("x-echo-pod"), ","), nil
		}
		waitFor(t, 30*time.Second, "a gRPC check with x-version v2 routed to echo-v2", func() bool {
			pod, err := check("v2")
			return err == nil && strings.HasPrefix(pod, "echo-v2-")
		})
		for range 5 {
			if pod, err := check("v2"); err != nil || !strings.HasPrefix(pod, "echo-v2-") {
				t.Fatalf("check with x-version v2: %q %v", pod, err)
			}
			if pod, err := check(""); err != nil || !strings.HasPrefix(pod, "echo-v1-") {
				t.Fatalf("check without x-version: %q %v", pod, err)
			}
		}
	})

	t.Run("AuthorizationPolicy targetRefs", func(t *testing.T) {
		t.Run("Service", func(t *testing.T) {
			until(t, "authz", "/deny-svc", nil, local(403, "RBAC: access denied"))
			same(t, 1, "authz", "/other", nil, is(200, ""))
			same(t, 1, "rl", "/deny-svc?not-limited", nil, is(200, "")) // another Service of the same waypoint
		})
		t.Run("Service, by the client's identity, method and header", func(t *testing.T) {
			// The client runs as l7's default service account: the waypoint knows it from HBONE.
			until(t, "authz", "/deny-principal", nil, local(403, "RBAC: access denied"))
			same(t, 1, "authz", "/deny-others", nil, is(200, ""))
			same(t, 1, "authz", "/x", map[string]string{"X-Deny": "yes"}, is(200, "")) // GET, not DELETE
			r, err := l7DoMethod(t.Context(), client, http.MethodDelete, vip["authz"], "authz", "/x", map[string]string{"X-Deny": "yes"})
			if err != nil || r.status != 403 {
				t.Errorf("DELETE with x-deny: %d %q (err %v)", r.status, r.body, err)
			}
			r, err = l7DoMethod(t.Context(), client, http.MethodDelete, vip["authz"], "authz", "/x", nil)
			if err != nil || r.status != 200 {
				t.Errorf("DELETE without x-deny: %d %q (err %v)", r.status, r.body, err)
			}
		})
		t.Run("Gateway", func(t *testing.T) {
			until(t, "authz", "/deny-gw", nil, local(403, "RBAC: access denied"))
			same(t, 1, "route", "/match/deny-gw", nil, is(200, ""))
		})
		t.Run("GatewayClass", func(t *testing.T) {
			until(t, "authz", "/l7-deny-class", nil, local(403, "RBAC: access denied"))
			until(t, "vs", "/l7-deny-class", nil, local(403, "RBAC: access denied"))
		})
	})

	t.Run("RequestAuthentication and JWT", func(t *testing.T) {
		until(t, "jwt", "/", nil, local(403, "RBAC: access denied"))
		valid := sign(key, "l7-test")
		same(t, 1, "jwt", "/", map[string]string{"Authorization": "Bearer " + valid}, is(200, ""))
		other, _, _ := l7Signer(t)
		same(t, 1, "jwt", "/", map[string]string{"Authorization": "Bearer " + sign(other, "l7-test")}, local(401, "Jwt verification fails"))
		same(t, 1, "jwt", "/", map[string]string{"Authorization": "Bearer not-a-token"}, is(401, ""))
		// Envoy's default locations: the Authorization header and the access_token query parameter.
		same(t, 1, "jwt", "/?access_token="+valid, nil, is(200, ""))
		same(t, 1, "jwt", "/", map[string]string{"Authorization": "Bearer " + signExpired(key, "l7-test")}, local(401, "Jwt is expired"))
	})

	t.Run("local rate limit", func(t *testing.T) {
		// The bucket holds 3 tokens and refills after an hour: once it is in force, a burst ends in 429s.
		until(t, "rl", "/", nil, local(429, "local_rate_limited"))
		same(t, 3, "rl", "/", nil, local(429, "local_rate_limited"))
		same(t, 1, "authz", "/", nil, is(200, "")) // other Services are not limited
	})
}

// l7Do is l7DoMethod with GET.
func l7Do(ctx context.Context, from kubelet.Pod, ip, svc, uri string, hdr map[string]string) (l7Response, error) {
	return l7DoMethod(ctx, from, http.MethodGet, ip, svc, uri, hdr)
}

// l7DoMethod sends one request on a fresh connection from the pod to ip:9080 with Host <svc>.l7.svc.cluster.local
// (ip when svc is ""), without following redirects.
func l7DoMethod(ctx context.Context, from kubelet.Pod, method, ip, svc, uri string, hdr map[string]string) (l7Response, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	hc := &http.Client{
		Transport:     &http.Transport{DialContext: from.NS.Dial, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+net.JoinHostPort(ip, "9080")+uri, nil)
	if err != nil {
		return l7Response{}, err
	}
	if svc != "" {
		req.Host = svc + "." + l7NS + ".svc.cluster.local"
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return l7Response{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return l7Response{status: resp.StatusCode, header: resp.Header, body: string(b)}, err
}

// l7Signer returns a fresh P-256 key, its JWKS (JSON) and a signer of one-hour tokens of an issuer.
func l7Signer(t *testing.T) (*ecdsa.PrivateKey, string, func(*ecdsa.PrivateKey, string) string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	set, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "l7", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	sign := func(k *ecdsa.PrivateKey, iss string) string {
		s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: k}, (&jose.SignerOptions{}).WithHeader("kid", "l7"))
		if err != nil {
			t.Fatal(err)
		}
		tok, err := josejwt.Signed(s).Claims(josejwt.Claims{Issuer: iss, Subject: "l7-user",
			Expiry: josejwt.NewNumericDate(time.Now().Add(time.Hour))}).Serialize()
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	return key, string(set), sign
}

// l7WaitValue polls get until its value contains want, for up to d; on timeout it fails t with the last value.
func l7WaitValue(t *testing.T, d time.Duration, what string, get func() string, want string) {
	t.Helper()
	var last string
	deadline := time.Now().Add(d)
	for last = get(); !strings.Contains(last, want); last = get() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: last %q", d, what, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}
