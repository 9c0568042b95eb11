package waypoint

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/config/local"
)

func TestConfigValidate(t *testing.T) {
	ok := Config{Name: "wp", Namespace: "app", PodIP: netip.MustParseAddr("10.0.0.1"), ConfigFiles: []string{"c.yaml"}, CADir: "/ca"}
	for _, c := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"valid", func(*Config) {}, ""},
		{"name required", func(c *Config) { c.Name = "" }, "--name and --namespace are required"},
		{"pod IP required", func(c *Config) { c.PodIP = netip.Addr{} }, "--pod-ip"},
		{"a source is required", func(c *Config) { c.ConfigFiles = nil; c.L7Source = L7SourceKubernetes }, "a configuration source is required"},
		{"xds needs its root", func(c *Config) { c.XDSAddress = "istiod:15012" }, "--xds-root-file is required"},
		{"xds plaintext", func(c *Config) { c.XDSAddress, c.XDSPlaintext = "istiod:15010", true }, ""},
		{"xds with kubernetes L7 needs no files", func(c *Config) {
			c.XDSAddress, c.XDSPlaintext, c.ConfigFiles, c.L7Source = "istiod:15010", true, nil, L7SourceKubernetes
		}, ""},
		{"file L7 source needs files", func(c *Config) { c.XDSAddress, c.XDSPlaintext, c.ConfigFiles = "istiod:15010", true, nil }, "the file L7 source needs --config-file"},
		{"unknown L7 source", func(c *Config) { c.L7Source = "etcd" }, `unknown L7 source "etcd"`},
		{"identity checked", func(c *Config) { c.CADir = "" }, "--ca-dir is required"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := ok
			c.mutate(&cfg)
			err := cfg.withDefaults().Validate()
			if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
				t.Errorf("Validate() = %v, want %q", err, c.want)
			}
		})
	}
}

// TestCompileL7NamesTheFile checks that an invalid L7 object in a file version is reported with its file
// and document, as the state's errors are.
func TestCompileL7NamesTheFile(t *testing.T) {
	w := &Waypoint{cfg: Config{}.withDefaults()}
	files := []local.File{{Name: "ok.yaml", Data: []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n")},
		{Name: "routes.yaml", Data: []byte(`apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: app}
spec:
  parentRefs: [{kind: Service, group: "", name: web}]
  rules: [{matches: [{path: {type: RegularExpression, value: "(["}}]}]
`)}}
	_, err := w.compileL7(files)
	var ie *local.InputError
	if !errors.As(err, &ie) || ie.File != "routes.yaml" || ie.Doc != 2 || ie.Kind != "HTTPRoute" ||
		!strings.Contains(err.Error(), "routes.yaml: document 2 (HTTPRoute app/r): spec.rules[0].matches[0].path.value") {
		t.Fatalf("error %v, want one naming routes.yaml, document 2 and the field", err)
	}
	if cfg, err := w.compileL7(files[:1]); err != nil || len(cfg.Routes) != 0 {
		t.Errorf("valid version: %v, %v", cfg, err)
	}
}
