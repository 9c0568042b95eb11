package dump

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	cases := []struct {
		name  string
		in    string
		check func(t *testing.T, d *ConfigDump)
		err   string
	}{
		{"lists", `{"workloads":[{"uid":"a","name":"a","namespace":"ns","workloadIps":["10.0.0.1"],"protocol":"HBONE","status":"Healthy","clusterId":"c","capacity":1,"services":["ns/s"]}],
			"services":[{"name":"s","namespace":"ns","hostname":"s.ns","vips":["/10.96.0.1"],"ports":{"80":8080},"endpoints":{"a":{"workloadUid":"a","port":{"80":8080}}}}],
			"policies":[{"name":"p","namespace":"ns","scope":"Global","action":"Deny","rules":[[[{"principals":[{"Presence":{}}]}]]]}],
			"certificates":[{"identity":"i","state":"Initializing","certChain":[],"rootCerts":[]}],
			"workloadState":{"a":{"connections":{"inbound":[],"outbound":[{"src":"1.1.1.1:1","originalDst":"2.2.2.2:2","actualDst":"3.3.3.3:15008","protocol":"HBONE"}]},"info":{"name":"a","namespace":"ns"}}},
			"version":{"version":"1","gitRevision":"r"},"config":{"x":1},"nodeName":"n"}`,
			func(t *testing.T, d *ConfigDump) {
				if len(d.Workloads) != 1 || d.Workloads[0].Services[0] != "ns/s" || d.Services[0].Ports[80] != 8080 ||
					d.Services[0].Endpoints["a"].Port[80] != 8080 || d.Policies[0].Rules[0][0][0].Principals[0].Presence == nil ||
					d.Certificates[0].State != "Initializing" || d.WorkloadState["a"].Connections.Outbound[0].ActualDst != "3.3.3.3:15008" ||
					d.Version.GitRevision != "r" || string(d.Config.(json.RawMessage)) != `{"x":1}` || d.NodeName != "n" {
					t.Errorf("parsed: %+v", d)
				}
			}, ""},
		{"maps in key order, as older ztunnel writes", `{"workloads":{"net/10.0.0.2":{"name":"b"},"net/10.0.0.1":{"name":"a"},"x":null},
			"services":{"/10.96.0.1":{"name":"s"}},"policies":{"ns/p":{"name":"p"}},"certificates":{}}`,
			func(t *testing.T, d *ConfigDump) {
				if len(d.Workloads) != 2 || d.Workloads[0].Name != "a" || d.Workloads[1].Name != "b" || d.Services[0].Name != "s" ||
					d.Policies[0].Name != "p" || len(d.Certificates) != 0 {
					t.Errorf("parsed: %+v", d)
				}
			}, ""},
		{"local-config style service map on a workload", `{"workloads":[{"name":"a","services":{"ns/z":{"80":8080},"ns/b":{}}}]}`,
			func(t *testing.T, d *ConfigDump) {
				if got := strings.Join(d.Workloads[0].Services, ","); got != "ns/b,ns/z" {
					t.Errorf("services %q", got)
				}
			}, ""},
		{"empty object", `{}`, func(t *testing.T, d *ConfigDump) {
			if d.Workloads != nil || d.Config != nil || d.Version != nil {
				t.Errorf("parsed: %+v", d)
			}
		}, ""},
		{"null sections", `{"workloads":null,"config":null}`, func(t *testing.T, d *ConfigDump) {
			if d.Workloads != nil || d.Config != nil {
				t.Errorf("parsed: %+v", d)
			}
		}, ""},
		{"not an object", `[1]`, nil, "parse config dump: config dump is not a JSON object"},
		{"empty input", ``, nil, "parse config dump: config dump is not a JSON object"},
		{"bad section", `{"workloads":"x"}`, nil, "parse config dump: workloads: json: cannot unmarshal string into Go value of type map[string]*dump.Workload"},
		{"bad field", `{"services":[{"ports":{"x":1}}]}`, nil, "parse config dump: services: "},
		{"truncated", `{"workloads":[`, nil, "parse config dump: unexpected end of JSON input"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, err := Parse([]byte(tc.in))
			if tc.err != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.err) {
					t.Fatalf("err = %v, want prefix %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, d)
		})
	}
	if _, err := Parse([]byte(" 1")); !errors.Is(err, ErrNotObject) {
		t.Errorf("Parse(1): %v, want ErrNotObject", err)
	}
}

// TestParseRoundTrip checks that a dump written with this schema reads back identically.
func TestParseRoundTrip(t *testing.T) {
	port := uint16(15088)
	in := &ConfigDump{
		Workloads: []*Workload{{WorkloadIPs: []string{"10.0.0.1"}, Protocol: "HBONE", Name: "a", Namespace: "ns", Status: "Healthy",
			Waypoint: &GatewayAddress{Destination: "ns/w.ns.svc", HBONEMTLSPort: 15008}, ApplicationTunnel: &ApplicationTunnel{Protocol: "PROXY", Port: &port},
			Locality: &Locality{Region: "r"}, Services: ServiceNames{"ns/s"}, Capacity: 1}},
		Services: []*Service{{Name: "s", Namespace: "ns", Hostname: "s.ns.svc", Vips: []string{"/10.96.0.1"}, Ports: map[uint16]uint16{80: 8080},
			Endpoints: map[string]*Endpoint{"a": {WorkloadUID: "a", Port: map[uint16]uint16{80: 8080}, Status: "Healthy"}}, SubjectAltNames: []string{},
			LoadBalancer: &LoadBalancer{RoutingPreferences: []string{"Zone"}, Mode: "Strict", HealthPolicy: "AllowAll"}}},
		Policies: []*Policy{{Name: "p", Namespace: "ns", Scope: "Namespace", Action: "Allow",
			Rules: [][][]*Match{{{{Namespaces: []StringMatch{{Exact: "x"}}, DestinationPorts: []uint16{80}}}}}}},
		Certificates:  []*Certificate{{Identity: "i", State: "Available", CertChain: []*Cert{{PEM: "p", SerialNumber: "1"}}, RootCerts: []*Cert{}}},
		WorkloadState: map[string]WorkloadState{"a": {Info: WorkloadInfo{Name: "a"}, Connections: WorkloadConnections{Inbound: []InboundConnection{}, Outbound: []OutboundConnection{}}}},
		Version:       &BuildInfo{Version: "1"},
		NodeName:      "n",
	}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	b2, err := json.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != string(b2) {
		t.Errorf("round trip:\n%s\n%s", b, b2)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"workloads":[{"name":"a","workloadIps":["10.0.0.1"],"services":{"ns/s":{}}}],"services":{"/1.1.1.1":{"ports":{"80":80}}}}`))
	f.Add([]byte(`{"policies":[{"rules":[[[{"principals":[{"Exact":"x"},{"Presence":{}}]}]]]}],"workloadState":{"u":{"info":{}}}}`))
	f.Add([]byte(`{"certificates":[{"identity":"i","certChain":[{"serialNumber":"1"}]}],"config":[1,2]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := Parse(b)
		if err != nil {
			return
		}
		// Whatever parses must encode and parse again.
		out, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("marshal parsed dump: %v", err)
		}
		if _, err := Parse(out); err != nil {
			t.Fatalf("re-parse: %v\n%s", err, out)
		}
	})
}
