package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// clusterBaseObjects are what a cluster with real controllers needs before istiod starts: istio-system and
// the istiod Service (selectorless: istiod runs on the host; the kubelet forwards its ClusterIP there).
const clusterBaseObjects = `
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Service
metadata: {name: istiod, namespace: istio-system, labels: {app: istiod, istio: pilot}}
spec:
  ports:
  - {name: grpc-xds, port: 15010, protocol: TCP}
  - {name: https-dns, port: 15012, protocol: TCP}
  - {name: https-webhook, port: 443, targetPort: 15017, protocol: TCP}
  - {name: http-monitoring, port: 15014, protocol: TCP}
`

// startControllers runs kube-controller-manager and kube-scheduler against the API server with the admin
// kubeconfig, and waits for their health endpoints.
func (s *Stack) startControllers(ctx context.Context, kdir string) error {
	kc := s.Kubeconfig
	insecure := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // loopback health checks of self-signed peers
	healthy := func(port int) func() error {
		return func() error { return httpOK(ctx, insecure, fmt.Sprintf("https://127.0.0.1:%d/healthz", port), "") }
	}
	if _, err := s.spawnListening(ctx, "kube-controller-manager", 1, func(ports []int) launch {
		return launch{bin: s.Bin.KubeControllerManager, args: []string{
			"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
			"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", ports[0]), "--cert-dir=" + filepath.Join(s.Dir, "kcm"),
			"--leader-elect=false", "--profiling=false", "--controllers=*",
			"--root-ca-file=" + filepath.Join(kdir, "ca.crt"), "--service-account-private-key-file=" + filepath.Join(kdir, "sa.key"),
			"--use-service-account-credentials=false", "--v=1"},
			readiness: 60 * time.Second, ready: healthy(ports[0])}
	}); err != nil {
		return err
	}
	_, err := s.spawnListening(ctx, "kube-scheduler", 1, func(ports []int) launch {
		return launch{bin: s.Bin.KubeScheduler, args: []string{
			"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
			"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", ports[0]), "--cert-dir=" + filepath.Join(s.Dir, "scheduler"),
			"--leader-elect=false", "--profiling=false", "--v=1"},
			readiness: 60 * time.Second, ready: healthy(ports[0])}
	})
	return err
}

// writeInjectionConfig writes istiod's injection configuration into dir (config and values, as the
// istio-sidecar-injector ConfigMap holds them) with Istio's real waypoint template from charts, so that
// istiod's deployment controller renders waypoint Deployments exactly as in a cluster.
func writeInjectionConfig(dir, charts string) error {
	tmpl, err := os.ReadFile(filepath.Join(charts, "files", "waypoint.yaml"))
	if err != nil {
		return fmt.Errorf("read waypoint template: %w", err)
	}
	raw, err := os.ReadFile(filepath.Join(charts, "values.yaml"))
	if err != nil {
		return fmt.Errorf("read chart values: %w", err)
	}
	var chart map[string]any
	if err := yaml.Unmarshal(raw, &chart); err != nil {
		return fmt.Errorf("parse chart values: %w", err)
	}
	defaults, _ := chart["_internal_defaults_do_not_set"].(map[string]any)
	if defaults == nil {
		defaults = chart
	}
	pick := func(m map[string]any, keys ...string) map[string]any {
		out := map[string]any{}
		for _, k := range keys {
			if v, ok := m[k]; ok {
				out[k] = v
			}
		}
		return out
	}
	// The same subset of values the chart's injector ConfigMap carries.
	values := pick(defaults, "global", "sidecarInjectorWebhook", "revision")
	values["pilot"] = pick(defaults, "cni", "env")
	gateways, _ := defaults["gateways"].(map[string]any)
	values["gateways"] = pick(gateways, "securityContext", "seccompProfile")
	vb, err := yaml.Marshal(values)
	if err != nil {
		return err
	}
	vjson, err := yaml.YAMLToJSON(vb)
	if err != nil {
		return err
	}
	var cfg strings.Builder
	cfg.WriteString("defaultTemplates: [sidecar]\npolicy: enabled\nalwaysInjectSelector: []\nneverInjectSelector: []\n")
	cfg.WriteString("injectedAnnotations: {}\ntemplates:\n  waypoint: |\n")
	for _, line := range strings.Split(strings.TrimRight(string(tmpl), "\n"), "\n") {
		cfg.WriteString("    " + line + "\n")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config"), []byte(cfg.String()), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "values"), vjson, 0o644)
}

// ServiceIP returns a Service's ClusterIP.
func (s *Stack) ServiceIP(ctx context.Context, namespace, name string) (string, error) {
	out, err := s.Kubectl(ctx, "get", "svc", name, "-n", namespace, "-o", "jsonpath={.spec.clusterIP}")
	return strings.TrimSpace(string(out)), err
}
