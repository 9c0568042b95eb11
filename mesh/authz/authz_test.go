package authz_test

import (
	"net/netip"
	"testing"

	"github.com/ambit-mesh/ambit/config/local"
	"github.com/ambit-mesh/ambit/mesh/authz"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// policies compiles AuthorizationPolicy/PeerAuthentication YAML with istiod's rules and returns the
// policies that apply to pod app/server (labels app=server), as the destination agent would.
func policies(t *testing.T, yaml string) []*state.Authorization {
	t.Helper()
	src := `
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: app, labels: {app: server}}
spec: {containers: [{name: c, image: c}]}
status: {podIP: 10.1.0.1}
---
` + yaml
	objs := &local.Objects{}
	if err := objs.Decode("authz.yaml", []byte(src)); err != nil {
		t.Fatal(err)
	}
	res, err := local.Compile(objs, local.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := state.NewStore()
	s.Replace(&res.Snapshot)
	return s.PoliciesFor(s.Workload("Kubernetes//Pod/app/server"))
}

var (
	alice     = authz.PeerFromSPIFFE("spiffe://cluster.local/ns/app/sa/alice")
	bob       = authz.PeerFromSPIFFE("spiffe://cluster.local/ns/other/sa/bob")
	plaintext = authz.Peer{}
)

func conn(p authz.Peer, src string, port uint16) *authz.Conn {
	return &authz.Conn{Peer: p, SourceIP: netip.MustParseAddr(src), DestinationIP: netip.MustParseAddr("10.1.0.1"), DestinationPort: port}
}

func TestEvaluate(t *testing.T) {
	type check struct {
		c      *authz.Conn
		allow  bool
		reason string
	}
	cases := []struct {
		name   string
		yaml   string
		checks []check
	}{
		{"no policies allows everything", "", []check{
			{conn(plaintext, "10.9.0.1", 8080), true, "no allow policies"},
		}},
		{"empty ALLOW policy denies everything", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: app}
spec: {}
`, []check{{conn(alice, "10.9.0.1", 8080), false, "allow policies exist, but none allowed"}}},
		{"ALLOW with one empty rule allows everything", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: app}
spec: {rules: [{}]}
`, []check{{conn(plaintext, "10.9.0.1", 8080), true, "allowed by app/allow-all"}}},
		{"principals without spiffe prefix, namespaces and service accounts", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: from-alice, namespace: app}
spec:
  selector: {matchLabels: {app: server}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/app/sa/alice]}}]
  - from: [{source: {namespaces: ["oth*"], serviceAccounts: [other/bob]}}]
`, []check{
			{conn(alice, "10.9.0.1", 8080), true, "allowed by app/from-alice"},
			{conn(bob, "10.9.0.1", 8080), true, "allowed by app/from-alice"},
			{conn(authz.PeerFromSPIFFE("spiffe://cluster.local/ns/app/sa/eve"), "10.9.0.1", 8080), false, "allow policies exist, but none allowed"},
			{conn(plaintext, "10.9.0.1", 8080), false, "allow policies exist, but none allowed"},
		}},
		{"DENY is evaluated before ALLOW", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: app}
spec: {rules: [{}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-bob-port, namespace: app}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["*/sa/bob"]}}], to: [{operation: {ports: ["8080"]}}]}]
`, []check{
			{conn(bob, "10.9.0.1", 8080), false, "explicitly denied by app/deny-bob-port"},
			{conn(bob, "10.9.0.1", 9090), true, "allowed by app/allow-all"},
			{conn(alice, "10.9.0.1", 8080), true, "allowed by app/allow-all"},
		}},
		{"ip blocks and not ports", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: lan, namespace: app}
spec:
  rules:
  - from: [{source: {ipBlocks: [10.9.0.0/16], notIpBlocks: [10.9.9.9]}}]
    to: [{operation: {notPorts: ["22"]}}]
`, []check{
			{conn(plaintext, "10.9.1.1", 8080), true, "allowed by app/lan"},
			{conn(plaintext, "10.9.9.9", 8080), false, "allow policies exist, but none allowed"},
			{conn(plaintext, "10.9.1.1", 22), false, "allow policies exist, but none allowed"},
			{conn(plaintext, "192.0.2.1", 8080), false, "allow policies exist, but none allowed"},
		}},
		{"when conditions on L4 keys", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: when, namespace: app}
spec:
  rules:
  - when:
    - {key: source.namespace, values: [app]}
    - {key: destination.port, notValues: ["9090"]}
`, []check{
			{conn(alice, "10.9.0.1", 8080), true, "allowed by app/when"},
			{conn(alice, "10.9.0.1", 9090), false, "allow policies exist, but none allowed"},
			{conn(bob, "10.9.0.1", 8080), false, "allow policies exist, but none allowed"},
		}},
		{"ALLOW rule with HTTP attributes is dropped (more restrictive)", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: http, namespace: app}
spec:
  rules: [{to: [{operation: {methods: [GET]}}]}]
`, []check{{conn(alice, "10.9.0.1", 8080), false, "allow policies exist, but none allowed"}}},
		{"DENY rule with HTTP attributes keeps its L4 part", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-http, namespace: app}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [other], requestPrincipals: ["*"]}}]}]
`, []check{
			{conn(bob, "10.9.0.1", 8080), false, "explicitly denied by app/deny-http"},
			{conn(alice, "10.9.0.1", 8080), true, "no allow policies"},
		}},
		{"DENY whose operation is only HTTP attributes has no effect (as istiod compiles it)", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-post, namespace: app}
spec:
  action: DENY
  rules: [{from: [{source: {namespaces: [other]}}], to: [{operation: {methods: [POST]}}]}]
`, []check{{conn(bob, "10.9.0.1", 8080), true, "no allow policies"}}},
		{"DENY with only HTTP attributes has no effect", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-get, namespace: app}
spec:
  action: DENY
  rules: [{to: [{operation: {methods: [GET]}}]}]
`, []check{{conn(bob, "10.9.0.1", 8080), true, "no allow policies"}}},
		{"STRICT peer authentication denies plaintext only", `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
`, []check{
			{conn(plaintext, "10.9.0.1", 8080), false, "explicitly denied by istio-system/istio_converted_static_strict"},
			{conn(alice, "10.9.0.1", 8080), true, "no allow policies"},
		}},
		{"PERMISSIVE namespace overrides STRICT mesh", `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: app}
spec: {mtls: {mode: PERMISSIVE}}
`, []check{{conn(plaintext, "10.9.0.1", 8080), true, "no allow policies"}}},
		{"STRICT workload with a PERMISSIVE port", `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: server, namespace: app}
spec:
  selector: {matchLabels: {app: server}}
  mtls: {mode: STRICT}
  portLevelMtls: {"9090": {mode: PERMISSIVE}}
`, []check{
			{conn(plaintext, "10.9.0.1", 8080), false, "explicitly denied by app/converted_peer_authentication_server"},
			{conn(plaintext, "10.9.0.1", 9090), true, "no allow policies"},
			{conn(alice, "10.9.0.1", 8080), true, "no allow policies"},
		}},
		{"dry-run policies never decide", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: dry, namespace: app, annotations: {istio.io/dry-run: "true"}}
spec: {action: DENY, rules: [{}]}
`, []check{{conn(alice, "10.9.0.1", 8080), true, "no allow policies"}}},
		{"root namespace policy is global", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-deny, namespace: istio-system}
spec: {action: DENY, rules: [{from: [{source: {ipBlocks: [192.0.2.0/24]}}]}]}
`, []check{{conn(alice, "192.0.2.9", 8080), false, "explicitly denied by istio-system/mesh-deny"}}},
		{"policies of other namespaces and unselected workloads do not apply", `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: other}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-me, namespace: app}
spec: {selector: {matchLabels: {app: client}}}
`, []check{{conn(alice, "10.9.0.1", 8080), true, "no allow policies"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pols := policies(t, tc.yaml)
			for _, ck := range tc.checks {
				d := authz.Evaluate(pols, ck.c)
				if d.Allow != ck.allow || d.Reason() != ck.reason {
					t.Errorf("peer %q from %v port %d: allow=%v %q, want allow=%v %q",
						ck.c.Peer.Principal, ck.c.SourceIP, ck.c.DestinationPort, d.Allow, d.Reason(), ck.allow, ck.reason)
				}
			}
		})
	}
}

func TestEmptyMatchMatchesNothing(t *testing.T) {
	p := &state.Authorization{Name: "p", Namespace: "n", Action: state.ActionDeny,
		Groups: []state.Group{{Rules: []state.Rules{{Matches: []state.Match{{}}}}}}}
	if d := authz.Evaluate([]*state.Authorization{p}, conn(alice, "10.9.0.1", 80)); !d.Allow {
		t.Errorf("an empty match denied: %+v", d)
	}
}

func TestPeerFromSPIFFE(t *testing.T) {
	cases := map[string]authz.Peer{
		"spiffe://td/ns/a/sa/b":       {Principal: "td/ns/a/sa/b", Namespace: "a", ServiceAccount: "b"},
		"spiffe://td/ns/a/sa/b/extra": {},
		"spiffe://td/ns//sa/b":        {},
		"td/ns/a/sa/b":                {},
		"spiffe://td/x/a/sa/b":        {},
		"":                            {},
	}
	for in, want := range cases {
		if got := authz.PeerFromSPIFFE(in); got != want {
			t.Errorf("PeerFromSPIFFE(%q) = %+v, want %+v", in, got, want)
		}
	}
}

func FuzzEvaluate(f *testing.F) {
	f.Add("spiffe://cluster.local/ns/app/sa/alice", []byte{10, 9, 0, 1}, uint16(8080), "app", "*", "10.0.0.0/8")
	f.Fuzz(func(t *testing.T, id string, src []byte, port uint16, ns, principal, cidr string) {
		ip, ok := netip.AddrFromSlice(src)
		if !ok {
			return
		}
		pfx, err := netip.ParsePrefix(cidr)
		if err != nil {
			return
		}
		sm := []state.StringMatch{{Kind: state.MatchPrefix, Value: principal}, {Kind: state.MatchSuffix, Value: principal}, {Kind: state.MatchPresence}}
		p := &state.Authorization{Name: "f", Namespace: ns, Action: state.ActionAllow, Groups: []state.Group{{Rules: []state.Rules{
			{Matches: []state.Match{{Principals: sm[:1], NotNamespaces: []state.StringMatch{{Value: ns}}}, {SourceIPs: []netip.Prefix{pfx}}}},
			{Matches: []state.Match{{NotDestinationPorts: []uint16{port}}, {Principals: sm[1:]}}},
		}}}}
		d := authz.Evaluate([]*state.Authorization{p}, &authz.Conn{Peer: authz.PeerFromSPIFFE(id), SourceIP: ip, DestinationPort: port})
		if d.Allow && d.Policy != p {
			t.Fatalf("allowed without the only ALLOW policy: %+v", d)
		}
	})
}

func BenchmarkEvaluate(b *testing.B) {
	pols := policies(&testing.T{}, `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: app}
spec:
  rules:
  - from: [{source: {principals: [cluster.local/ns/app/sa/alice, cluster.local/ns/app/sa/carol]}}]
    to: [{operation: {ports: ["8080"]}}]
`)
	c := conn(alice, "10.9.0.1", 8080)
	b.ReportAllocs()
	for b.Loop() {
		if !authz.Evaluate(pols, c).Allow {
			b.Fatal("denied")
		}
	}
}
