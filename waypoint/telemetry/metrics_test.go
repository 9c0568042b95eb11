package telemetry

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambit-mesh/ambit/mesh/state"
)

func TestLabelValues(t *testing.T) {
	src := &state.Workload{WorkloadName: "client", Namespace: "app", CanonicalName: "client", CanonicalRevision: "v1", ClusterID: "c1"}
	dst := &state.Workload{WorkloadName: "web", Namespace: "app", CanonicalName: "web", CanonicalRevision: "v2", ClusterID: "c1"}
	svc := &state.Service{Name: "web", Namespace: "app", Hostname: "web.app.svc.cluster.local"}
	tests := []struct {
		name string
		l    Labels
		want map[string]string
	}{
		{"full", Labels{Source: src, SourcePrincipal: "cluster.local/ns/app/sa/client", Destination: dst, Service: svc,
			Protocol: "http", Code: 200, ResponseFlags: "-", MutualTLS: true}, map[string]string{
			"reporter": "waypoint", "source_workload": "client", "source_app": "client", "source_version": "v1",
			"source_principal": "cluster.local/ns/app/sa/client", "destination_workload": "web", "destination_version": "v2",
			"destination_service": "web.app.svc.cluster.local", "destination_service_name": "web", "destination_service_namespace": "app",
			"destination_canonical_service": "web", "destination_cluster": "c1", "request_protocol": "http", "response_code": "200",
			"grpc_response_status": "unknown", "response_flags": "-", "connection_security_policy": "mutual_tls"}},
		{"local reply", Labels{Protocol: "grpc", Code: 403, GRPCStatus: "7", ResponseFlags: "RBAC"}, map[string]string{
			"source_workload": "unknown", "destination_service": "unknown", "response_code": "403", "grpc_response_status": "7",
			"response_flags": "RBAC", "connection_security_policy": "unknown"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := tc.l.Values()
			if len(v) != len(requestLabels) {
				t.Fatalf("%d values for %d labels", len(v), len(requestLabels))
			}
			for i, name := range requestLabels {
				if want, ok := tc.want[name]; ok && v[i] != want {
					t.Errorf("%s = %q, want %q", name, v[i], want)
				}
			}
		})
	}
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.Observe(&tests[0].l, 0, 10, 20)
	if n, _ := reg.Gather(); len(n) != 4 {
		t.Errorf("%d metric families, want 4", len(n))
	}
}
