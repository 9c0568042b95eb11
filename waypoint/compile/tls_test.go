package compile

import (
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/waypoint/model"
)

func TestDestinationRuleTLS(t *testing.T) {
	const head = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: istio-egress}
spec:
  host: api.example.test
`
	tests := []struct {
		name     string
		spec     string
		err      string
		warnings []string // substrings, one warning each, in order
		check    func(t *testing.T, d *model.Destination)
	}{
		{name: "SIMPLE on the whole rule", spec: `  trafficPolicy: {tls: {mode: SIMPLE, caCertificates: /etc/ca.pem, sni: api.example.test}}`,
			check: func(t *testing.T, d *model.Destination) {
				tl := d.PolicyForPort("", 80).TLS
				if tl == nil || tl.Mode != model.TLSSimple || tl.CACertificates != "/etc/ca.pem" || tl.SNI != "api.example.test" {
					t.Errorf("tls %+v", tl)
				}
			}},
		{name: "portLevelSettings: tls on 443 only", spec: `  trafficPolicy:
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: SIMPLE}`,
			check: func(t *testing.T, d *model.Destination) {
				if tl := d.PolicyForPort("", 443).TLS; tl == nil || tl.Mode != model.TLSSimple {
					t.Errorf("443: %+v", tl)
				}
				if tl := d.PolicyForPort("", 80).TLS; tl != nil {
					t.Errorf("80: %+v", tl)
				}
			}},
		{name: "port-level DISABLE turns the rule's tls off", spec: `  trafficPolicy:
    tls: {mode: SIMPLE}
    portLevelSettings:
    - port: {number: 80}
      tls: {mode: DISABLE}`,
			check: func(t *testing.T, d *model.Destination) {
				if d.PolicyForPort("", 80).TLS != nil || d.PolicyForPort("", 443).TLS == nil {
					t.Errorf("80 %+v 443 %+v", d.PolicyForPort("", 80).TLS, d.PolicyForPort("", 443).TLS)
				}
			}},
		{name: "MUTUAL with files", spec: `  trafficPolicy: {tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, subjectAltNames: [api.example.test]}}`,
			check: func(t *testing.T, d *model.Destination) {
				tl := d.Policy.TLS
				if tl.Mode != model.TLSMutual || tl.ClientCertificate != "/c.pem" || tl.PrivateKey != "/k.pem" || tl.SubjectAltNames[0] != "api.example.test" {
					t.Errorf("tls %+v", tl)
				}
			}},
		{name: "MUTUAL without a client certificate is rejected", spec: `  trafficPolicy: {tls: {mode: MUTUAL}}`,
			err: "spec.trafficPolicy.tls: MUTUAL requires clientCertificate and privateKey"},
		{name: "port-level settings need a port number", spec: `  trafficPolicy: {portLevelSettings: [{tls: {mode: SIMPLE}}]}`,
			err: "portLevelSettings[0].port.number"},
		{name: "credentialName and caCrl are surfaced, TLS kept", spec: `  trafficPolicy: {tls: {mode: MUTUAL, credentialName: api-cert, caCrl: /crl.pem}}`,
			warnings: []string{"spec.trafficPolicy.tls.credentialName: not implemented", "spec.trafficPolicy.tls.caCrl: not implemented"},
			check: func(t *testing.T, d *model.Destination) {
				if d.Policy.TLS == nil || d.Policy.TLS.Mode != model.TLSMutual {
					t.Errorf("tls %+v (must fail closed, not fall back to plain text)", d.Policy.TLS)
				}
			}},
		{name: "ISTIO_MUTUAL, per-port pool and tunnel are surfaced", spec: `  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    tunnel: {targetHost: x, targetPort: 1}
    portLevelSettings:
    - port: {number: 443}
      connectionPool: {tcp: {maxConnections: 1}}`,
			warnings: []string{"tls.mode: ISTIO_MUTUAL is not implemented", "trafficPolicy.tunnel: not implemented", "portLevelSettings[0]: loadBalancer, connectionPool"},
			check: func(t *testing.T, d *model.Destination) {
				if d.Policy.TLS != nil {
					t.Errorf("tls %+v", d.Policy.TLS)
				}
			}},
		{name: "a subset inherits the rule's tls or sets its own", spec: `  trafficPolicy: {tls: {mode: SIMPLE}}
  subsets:
  - {name: a, labels: {v: a}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
  - {name: b, labels: {v: b}, trafficPolicy: {tls: {mode: MUTUAL, clientCertificate: /c, privateKey: /k}}}`,
			check: func(t *testing.T, d *model.Destination) {
				if tl := d.PolicyFor("a").TLS; tl == nil || tl.Mode != model.TLSSimple {
					t.Errorf("a: %+v", tl)
				}
				if tl := d.PolicyFor("b").TLS; tl == nil || tl.Mode != model.TLSMutual {
					t.Errorf("b: %+v", tl)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := compileL7YAML(t, head+tt.spec+"\n")
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Warnings) != len(tt.warnings) {
				t.Fatalf("warnings %q, want %d", cfg.Warnings, len(tt.warnings))
			}
			for i, w := range tt.warnings {
				if !strings.Contains(cfg.Warnings[i], w) || !strings.HasPrefix(cfg.Warnings[i], "DestinationRule istio-egress/api: ") {
					t.Errorf("warning %d %q, want %q", i, cfg.Warnings[i], w)
				}
			}
			tt.check(t, cfg.Destinations["api.example.test"])
		})
	}
}
