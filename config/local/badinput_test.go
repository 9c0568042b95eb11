package local

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBadInput(t *testing.T) {
	ok := "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: fine\n---\n"
	cases := []struct {
		name, doc string
		want      string // substring of the error, after the location
		loc       string // "file: document N (Kind ns/name)"
	}{
		{"malformed YAML", "apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n", "parse YAML", "bad.yaml: document 2"},
		{"unknown kind", "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n", "unknown kind apps/v1 Deployment", "bad.yaml: document 2 (Deployment d)"},
		{"missing kind", "apiVersion: v1\nmetadata:\n  name: x\n", "missing apiVersion or kind", "bad.yaml: document 2"},
		{"object without name", "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: a\nspec: {}\n", "metadata.name is required", "bad.yaml: document 2 (Service)"},
		{"unknown field", "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  clusterIPz: 1.2.3.4\n", "unknown field", "bad.yaml: document 2 (Service s)"},
		{"invalid pod IP", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: a\nspec:\n  containers: []\nstatus:\n  podIP: 10.0.0.999\n", `status.podIP: invalid IP "10.0.0.999"`, "bad.yaml: document 2 (Pod a/p)"},
		{"invalid cluster IP", "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  clusterIP: nope\n", `invalid IP "nope"`, "bad.yaml: document 2 (Service default/s)"},
		{"port out of range", "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  ports:\n  - port: 70000\n", "port 70000 out of range", "bad.yaml: document 2 (Service default/s)"},
		{"invalid label value", "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  labels:\n    istio.io/use-waypoint: \"#none\"\nspec: {}\n", "metadata.labels", "bad.yaml: document 2 (Service default/s)"},
		{"invalid name", "apiVersion: v1\nkind: Pod\nmetadata:\n  name: Bad_Name\nspec:\n  containers: []\n", "metadata.name", "bad.yaml: document 2 (Pod Bad_Name)"},
		{"invalid gateway address", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: g\nspec:\n  gatewayClassName: istio-waypoint\n  listeners: []\nstatus:\n  addresses:\n  - value: 1.2.3\n", `invalid IP "1.2.3"`, "bad.yaml: document 2 (Gateway default/g)"},
		{"invalid policy CIDR", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\nspec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [10.0.0.0/99]\n", "invalid CIDR", "bad.yaml: document 2 (AuthorizationPolicy default/p)"},
		{"invalid policy port", "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\nspec:\n  rules:\n  - to:\n    - operation:\n        ports: [http]\n", `invalid port "http"`, "bad.yaml: document 2 (AuthorizationPolicy default/p)"},
		{"service entry without hosts", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: se\nspec:\n  ports: [{number: 80, name: http}]\n", "spec.hosts is required", "bad.yaml: document 2 (ServiceEntry default/se)"},
		{"invalid selector", "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: g\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n    allowedRoutes:\n      namespaces:\n        from: Selector\n        selector:\n          matchExpressions: [{key: a, operator: Bogus}]\nstatus:\n  addresses: [{value: 10.0.0.1}]\n", "selector", "bad.yaml: document 2 (Gateway default/g)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			objs := &Objects{}
			err := objs.Decode("bad.yaml", []byte(ok+tc.doc))
			if err == nil {
				_, err = Compile(objs, Options{})
			}
			if err == nil {
				t.Fatal("no error")
			}
			var ie *InputError
			if !errors.As(err, &ie) {
				t.Fatalf("error %v is not an *InputError", err)
			}
			if !strings.HasPrefix(err.Error(), tc.loc) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %q\nwant prefix %q containing %q", err, tc.loc, tc.want)
			}
		})
	}
}

func TestLoadFilesDirectory(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"a.yaml":   "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n",
		"b.yml":    "# comment only\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n",
		"c.json":   `{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"c"}}]}`,
		"skip.txt": "not config",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	objs, err := LoadFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, ns := range objs.Namespaces {
		names = append(names, ns.Name)
	}
	if strings.Join(names, ",") != "a,b,c" {
		t.Errorf("namespaces = %v", names)
	}
	if _, err := LoadFiles(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("missing file: no error")
	}
	if err := os.WriteFile(filepath.Join(dir, "d.yaml"), []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n---\nkind: Pod\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadFiles(dir)
	if err == nil || !strings.Contains(err.Error(), "d.yaml: document 2") {
		t.Errorf("error = %v", err)
	}
}

// TestCompileIgnoresL7Kinds checks that the L4 compile accepts and ignores the L7 kinds.
func TestCompileIgnoresL7Kinds(t *testing.T) {
	objs := &Objects{}
	l7, err := os.ReadFile("testdata/l7.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := objs.Decode("l7.yaml", l7); err != nil {
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

// TestCompileRejectsInvalidIdentity: a workload whose SPIFFE identity does not parse is rejected with an
// error naming it (issue 14 item 8): stored, it would leave the dial path no identity to expect.
func TestCompileRejectsInvalidIdentity(t *testing.T) {
	const ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n---\n"
	pod := func(sa string) string {
		return ns + "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: app}\nspec: {serviceAccountName: \"" + sa +
			"\", containers: []}\nstatus: {podIP: 10.0.0.1}\n"
	}
	cases := []struct {
		name, doc, trustDomain string
		want                   string // substring of the error; "" for success
	}{
		{"valid", pod("web"), "", ""},
		{"upper-case trust domain", pod("web"), "Cluster.Local", `trust domain "Cluster.Local"`},
		{"trust domain with a space", pod("web"), "cluster local", `trust domain "cluster local"`},
		{"service account with a space", pod("bad sa"), "", `bad.yaml: document 2 (Pod app/p): spec.serviceAccountName: invalid identity "spiffe://cluster.local/ns/app/sa/bad sa"`},
		{"workload entry service account", ns + "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: we, namespace: app}\n" +
			"spec: {address: 10.0.0.2, serviceAccount: \"bad sa\"}\n", "", "(WorkloadEntry app/we): spec.serviceAccount: invalid identity"},
		{"service entry endpoint service account", ns + "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: se, namespace: app}\n" +
			"spec: {hosts: [x.example], ports: [{number: 80, name: http}], resolution: STATIC, endpoints: [{address: 10.0.0.3, serviceAccount: \"A B\"}]}\n",
			"", "(ServiceEntry app/se): spec.endpoints[0].serviceAccount: invalid identity"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			objs := &Objects{}
			if err := objs.Decode("bad.yaml", []byte(tc.doc)); err != nil {
				t.Fatal(err)
			}
			res, err := Compile(objs, Options{TrustDomain: tc.trustDomain})
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Compile: %v", err)
			case tc.want == "" && len(res.Snapshot.Workloads) != 1:
				t.Fatalf("workloads = %v", res.Snapshot.Workloads)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("Compile error = %v, want one containing %q", err, tc.want)
			case tc.want != "" && res != nil:
				t.Errorf("rejected input produced a result")
			}
		})
	}
}
