package policy

import (
	"net/http"
	"net/netip"
	"testing"

	"github.com/ambit-mesh/ambit/waypoint/model"
)

func TestValidatePath(t *testing.T) {
	tests := []struct {
		name, path string
		ok         bool
	}{
		{"plain", "/a/b", true},
		{"prefix wildcard", "/a*", true},
		{"one segment", "/a/{*}/c", true},
		{"trailing segments", "/a/{**}", true},
		{"both", "/{*}/x/{**}", true},
		{"double star not last", "/a/{**}/b", false},
		{"partial segment", "/a/b{*}", false},
		{"unknown operator", "/a/{x}", false},
		{"relative", "a/{*}", false},
		{"mixed wildcard", "/a/{*}*", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := ValidatePath(tc.path); (err == nil) != tc.ok {
				t.Errorf("ValidatePath(%q) = %v, want ok %v", tc.path, err, tc.ok)
			}
		})
	}
}

func TestMatchPath(t *testing.T) {
	tests := []struct {
		name, pattern, path string
		want                bool
	}{
		{"exact", "/a/b", "/a/b", true},
		{"exact mismatch", "/a/b", "/a/b/", false},
		{"prefix", "/a/*", "/a/b/c", true},
		{"suffix", "*/c", "/a/b/c", true},
		{"presence", "*", "/", true},
		{"one segment", "/items/{*}", "/items/1", true},
		{"one segment not two", "/items/{*}", "/items/1/2", false},
		{"one segment not empty", "/items/{*}", "/items/", false},
		{"middle segment", "/a/{*}/c", "/a/b/c", true},
		{"middle segment mismatch", "/a/{*}/c", "/a/b/d", false},
		{"many segments", "/a/{**}", "/a/b/c/d", true},
		{"many segments needs one", "/a/{**}", "/a/", false},
		{"many segments not bare", "/a/{**}", "/a", false},
		{"mixed", "/{*}/x/{**}", "/v1/x/y/z", true},
		{"mixed mismatch", "/{*}/x/{**}", "/v1/y/y/z", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := MatchPath(tc.pattern, tc.path); got != tc.want {
				t.Errorf("MatchPath(%q, %q) = %v, want %v", tc.pattern, tc.path, got, tc.want)
			}
		})
	}
}

func pol(name string, action model.Action, rules ...model.AuthzRule) *model.AuthzPolicy {
	return &model.AuthzPolicy{Namespace: "ns", Name: name, Action: action, Rules: rules}
}

func TestEvaluate(t *testing.T) {
	base := func() *Request {
		return &Request{Principal: "cluster.local/ns/app/sa/client", Namespace: "app", SourceIP: netip.MustParseAddr("10.0.0.5"),
			Host: "web.app.svc.cluster.local:80", Port: 80, Method: "GET", Path: "/items/1", Header: http.Header{"X-Env": {"prod"}}}
	}
	denyDelete := pol("deny-delete", model.ActionDeny, model.AuthzRule{To: []model.Operation{{Methods: []string{"DELETE"}}}})
	allowItems := pol("allow-items", model.ActionAllow, model.AuthzRule{To: []model.Operation{{Paths: []string{"/items/{*}"}}}})
	allowClaim := pol("allow-claim", model.ActionAllow, model.AuthzRule{
		From: []model.Source{{RequestPrincipals: []string{"iss/*"}}},
		When: []model.Condition{{Key: "request.auth.claims[groups]", Values: []string{"admins"}}},
	})
	allowNS := pol("allow-ns", model.ActionAllow, model.AuthzRule{From: []model.Source{{Namespaces: []string{"app"}, NotPrincipals: []string{"*/sa/bad"}}}})
	allowHeader := pol("allow-header", model.ActionAllow, model.AuthzRule{When: []model.Condition{{Key: "request.headers[x-env]", Values: []string{"prod"}}}})
	allowIP := pol("allow-ip", model.ActionAllow, model.AuthzRule{From: []model.Source{{IPBlocks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24")}}}})
	allowHost := pol("allow-host", model.ActionAllow, model.AuthzRule{To: []model.Operation{{Hosts: []string{"web.app.svc.cluster.local"}, NotPorts: []uint16{8080}}}})
	tests := []struct {
		name     string
		policies []*model.AuthzPolicy
		mutate   func(*Request)
		allow    bool
		by       string
	}{
		{"no policies", nil, nil, true, ""},
		{"deny matches", []*model.AuthzPolicy{denyDelete, allowItems}, func(r *Request) { r.Method = "DELETE" }, false, "ns/deny-delete"},
		{"deny first then allow", []*model.AuthzPolicy{denyDelete, allowItems}, nil, true, "ns/allow-items"},
		{"allow with template misses", []*model.AuthzPolicy{allowItems}, func(r *Request) { r.Path = "/items/1/2" }, false, ""},
		{"only deny policies allow the rest", []*model.AuthzPolicy{denyDelete}, nil, true, ""},
		{"claims and request principal", []*model.AuthzPolicy{allowClaim}, func(r *Request) {
			r.Auth = &Claims{Principal: "iss/alice", Raw: map[string]any{"groups": []any{"users", "admins"}}}
		}, true, "ns/allow-claim"},
		{"claims mismatch", []*model.AuthzPolicy{allowClaim}, func(r *Request) {
			r.Auth = &Claims{Principal: "iss/alice", Raw: map[string]any{"groups": []any{"users"}}}
		}, false, ""},
		{"no token no principal", []*model.AuthzPolicy{allowClaim}, nil, false, ""},
		{"namespace", []*model.AuthzPolicy{allowNS}, nil, true, "ns/allow-ns"},
		{"not principal", []*model.AuthzPolicy{allowNS}, func(r *Request) { r.Principal = "cluster.local/ns/app/sa/bad" }, false, ""},
		{"header condition", []*model.AuthzPolicy{allowHeader}, nil, true, "ns/allow-header"},
		{"header condition mismatch", []*model.AuthzPolicy{allowHeader}, func(r *Request) { r.Header = http.Header{} }, false, ""},
		{"ip block", []*model.AuthzPolicy{allowIP}, nil, true, "ns/allow-ip"},
		{"ip block miss", []*model.AuthzPolicy{allowIP}, func(r *Request) { r.SourceIP = netip.MustParseAddr("10.0.1.5") }, false, ""},
		{"host ignores the request port", []*model.AuthzPolicy{allowHost}, nil, true, "ns/allow-host"},
		{"dry-run deny does not decide", []*model.AuthzPolicy{{Namespace: "ns", Name: "dry", Action: model.ActionDeny, DryRun: true,
			Rules: []model.AuthzRule{{}}}}, nil, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := base()
			if tc.mutate != nil {
				tc.mutate(r)
			}
			d := Evaluate(tc.policies, r)
			by := ""
			if d.Policy != nil {
				by = d.Policy.Key()
			}
			if d.Allow != tc.allow || by != tc.by {
				t.Errorf("Evaluate = allow %v by %q (%s), want allow %v by %q", d.Allow, by, d.Reason(), tc.allow, tc.by)
			}
		})
	}
}

func TestEvaluateTCP(t *testing.T) {
	r := &Request{Principal: "cluster.local/ns/app/sa/client", Namespace: "app", Port: 5432}
	denyHTTP := pol("deny-get", model.ActionDeny, model.AuthzRule{From: []model.Source{{Namespaces: []string{"app"}}},
		To: []model.Operation{{Methods: []string{"GET"}}}})
	allowHTTP := pol("allow-get", model.ActionAllow, model.AuthzRule{To: []model.Operation{{Methods: []string{"GET"}}}})
	allowPort := pol("allow-port", model.ActionAllow, model.AuthzRule{To: []model.Operation{{Ports: []uint16{5432}}}})
	tests := []struct {
		name     string
		policies []*model.AuthzPolicy
		allow    bool
	}{
		{"DENY with HTTP fields matches TCP", []*model.AuthzPolicy{denyHTTP}, false},
		{"ALLOW with HTTP fields never matches TCP", []*model.AuthzPolicy{allowHTTP}, false},
		{"ALLOW on ports matches", []*model.AuthzPolicy{allowHTTP, allowPort}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if d := EvaluateTCP(tc.policies, r); d.Allow != tc.allow {
				t.Errorf("EvaluateTCP = %v (%s), want %v", d.Allow, d.Reason(), tc.allow)
			}
		})
	}
}

func TestValidateCondition(t *testing.T) {
	for _, k := range []string{"request.headers[x-a]", "request.auth.claims[groups]", "request.auth.claims[a][b]", "source.ip", "destination.port"} {
		if err := ValidateCondition(k); err != nil {
			t.Errorf("%s: %v", k, err)
		}
	}
	for _, k := range []string{"request.headers[]", "request.headers", "foo", "connection.sni"} {
		if ValidateCondition(k) == nil {
			t.Errorf("%s accepted", k)
		}
	}
}

// FuzzPathTemplate checks the template matcher against peer-controlled paths: it never panics, and a
// validated template containing no operator matches exactly like string equality.
func FuzzPathTemplate(f *testing.F) {
	f.Add("/a/{*}/c", "/a/b/c")
	f.Add("/a/{**}", "/a/b/c")
	f.Add("/{*}/x/{**}", "/v/x/")
	f.Add("/a/b", "/a/b")
	f.Add("/{*}", "//")
	f.Fuzz(func(t *testing.T, tmpl, path string) {
		if ValidatePath(tmpl) != nil {
			return
		}
		got := MatchPath(tmpl, path)
		if !IsTemplate(tmpl) {
			return
		}
		// {*} never matches an empty segment nor spans a "/", so a match has at least as many segments.
		if got && len(splitSegs(path)) < len(splitSegs(tmpl)) {
			t.Errorf("MatchPath(%q, %q) matched fewer segments", tmpl, path)
		}
	})
}

func splitSegs(p string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			out = append(out, p[start:i])
			start = i + 1
		}
	}
	return out
}

func TestTargets(t *testing.T) {
	d := &Destination{GatewayNamespace: "app", GatewayName: "wp", RootNamespace: "istio-system", GatewayClass: "istio-waypoint",
		ServiceNamespace: "app", ServiceName: "web"}
	workload := &Destination{GatewayNamespace: "app", GatewayName: "wp", RootNamespace: "istio-system", GatewayClass: "istio-waypoint"}
	route := &model.Route{Kind: model.KindHTTPRoute, Namespace: "app", Name: "r"}
	withRoute := *d
	withRoute.Route = route
	ref := func(kind, ns, name string) []model.TargetRef {
		return []model.TargetRef{{Kind: kind, Namespace: ns, Name: name}}
	}
	tests := []struct {
		name string
		refs []model.TargetRef
		d    *Destination
		want bool
	}{
		{"GatewayClass in the root namespace", ref(model.KindGatewayClass, "istio-system", "istio-waypoint"), d, true},
		{"GatewayClass for workload-addressed traffic", ref(model.KindGatewayClass, "istio-system", "istio-waypoint"), workload, true},
		{"GatewayClass outside the root namespace", ref(model.KindGatewayClass, "app", "istio-waypoint"), d, false},
		{"other GatewayClass", ref(model.KindGatewayClass, "istio-system", "istio"), d, false},
		{"this Gateway", ref(model.KindGateway, "app", "wp"), d, true},
		{"this Gateway, workload-addressed", ref(model.KindGateway, "app", "wp"), workload, true},
		{"other Gateway", ref(model.KindGateway, "app", "other"), d, false},
		{"the Service", ref(model.KindService, "app", "web"), d, true},
		{"a ServiceEntry of that name", ref(model.KindServiceEntry, "app", "web"), d, true},
		{"other Service", ref(model.KindService, "app", "raw"), d, false},
		{"Service of another namespace", ref(model.KindService, "other", "web"), d, false},
		{"Service, workload-addressed", ref(model.KindService, "app", "web"), workload, false},
		{"empty Service ref never matches workload-addressed", ref(model.KindService, "", ""), workload, false},
		{"route, none selected", ref(model.KindHTTPRoute, "app", "r"), d, false},
		{"route selected", ref(model.KindHTTPRoute, "app", "r"), &withRoute, true},
		{"route of another kind", ref(model.KindGRPCRoute, "app", "r"), &withRoute, false},
		{"any of several", append(ref(model.KindService, "app", "raw"), ref(model.KindGateway, "app", "wp")...), d, true},
		{"no refs", nil, d, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Targets(tc.refs, tc.d); got != tc.want {
				t.Errorf("Targets = %v, want %v", got, tc.want)
			}
		})
	}
	pols := []*model.AuthzPolicy{{Name: "a", Targets: ref(model.KindService, "app", "raw")}, {Name: "b", Targets: ref(model.KindGatewayClass, "istio-system", "istio-waypoint")}}
	if got := Select(pols, d); len(got) != 1 || got[0].Name != "b" {
		t.Errorf("Select = %v", got)
	}
}
