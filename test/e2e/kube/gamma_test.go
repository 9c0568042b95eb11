//go:build e2e

package kube

import (
	"io/fs"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/gateway-api/apis/v1alpha2"
	"sigs.k8s.io/gateway-api/apis/v1beta1"
	"sigs.k8s.io/gateway-api/conformance"
	confv1 "sigs.k8s.io/gateway-api/conformance/apis/v1"
	"sigs.k8s.io/gateway-api/conformance/tests"
	"sigs.k8s.io/gateway-api/conformance/utils/config"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"
	"sigs.k8s.io/yaml"
)

// meshNamespace is the suite's mesh namespace (its producer Services): enrolled to a namespace waypoint.
const meshNamespace = "gateway-conformance-mesh"

// gammaSkips are the mesh conformance tests this tier does not run, each with the reason.
var gammaSkips = map[string]string{}

// gammaExempt are the mesh features this tier does not claim, each with the reason (the suite reports their
// tests as not supported).
var gammaExempt = map[features.FeatureName]string{
	// A waypoint serves the producer's routes: ambient has no consumer-side proxy (Istio's ambient harness
	// drops this feature too).
	features.SupportMeshConsumerRoute: "ambient routes at the producer's waypoint; a consumer namespace has none",
}

// TestGatewayMeshConformance runs the upstream Gateway API mesh conformance suite (GAMMA: the MESH-HTTP and
// MESH-GRPC profiles, every mesh feature) of sigs.k8s.io/gateway-api/conformance against Ambit: its echo is
// Istio's Go echo app, its client is driven by exec into the pods, names resolve through the test kubelet's
// cluster DNS, and every route is served by the namespace waypoint istiod deploys and Ambit runs. The setup is
// that of Istio's ambient harness (tests/integration/ambient/gateway_conformance_test.go): the suite's namespaces
// are labelled ambient, and after the suite's setup the mesh namespace gets a waypoint and is enrolled to it.
func TestGatewayMeshConformance(t *testing.T) {
	c := need(t)
	if c.meshEcho.missing != "" {
		if os.Getenv("AMBIT_REQUIRE_PEERS") == "1" {
			t.Fatal(c.meshEcho.missing)
		}
		t.Skip(c.meshEcho.missing)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", c.stack.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	rc.QPS, rc.Burst = 50, 100
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme,
		gatewayv1.Install, v1beta1.Install, v1alpha2.Install} {
		if err := add(scheme); err != nil {
			t.Fatal(err)
		}
	}
	cli, err := client.New(rc, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	supported := features.SetsToNamesSet(features.MeshCoreFeatures, features.MeshExtendedFeatures,
		features.HTTPRouteCoreFeatures, features.HTTPRouteExtendedFeatures, features.GRPCRouteCoreFeatures)
	cs, err := suite.NewConformanceTestSuite(suite.ConformanceOptions{
		ConfigurableOptions: suite.ConfigurableOptions{
			NamespaceLabels:      map[string]string{"istio.io/dataplane-mode": "ambient"},
			CleanupBaseResources: true,
			CleanupTestResources: true,
			SupportedFeatures:    slices.Sorted(maps.Keys(supported)),
			ExemptFeatures:       slices.Sorted(maps.Keys(gammaExempt)),
			SkipTests:            slices.Sorted(maps.Keys(gammaSkips)),
			TimeoutConfig:        config.DefaultTimeoutConfig(),
			// The tier installs the v1.6.0 standard CRDs (the gateway-api version istiod's module pins); the
			// suite is v1.6.3, the module's own version: patch releases change no API, and v1.6.0's mesh-only
			// setup waits for the Gateway profile's namespaces (fixed by v1.6.3), so it cannot run alone.
			AllowCRDsMismatch:   true,
			ConformanceProfiles: []suite.ConformanceProfileName{suite.MeshHTTPConformanceProfileName, suite.MeshGRPCConformanceProfileName},
			Implementation: confv1.Implementation{Organization: "ambit-mesh", Project: "ambit", URL: "https://github.com/ambit-mesh/ambit",
				Version: "dev", Contact: []string{"@ambit-mesh"}},
		},
		Client: cli, Clientset: c.client, RestConfig: rc,
		ManifestFS: []fs.FS{&conformance.Manifests},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The mesh tests only: the others need a Gateway implementation (ingress), which is not this suite's
	// subject, and would show as skipped (not supported).
	var meshTests []suite.ConformanceTest
	for _, ct := range tests.ConformanceTests {
		if slices.Contains(ct.Features, features.SupportMesh) {
			meshTests = append(meshTests, ct)
		}
	}
	if len(meshTests) == 0 {
		t.Fatal("the conformance suite has no mesh tests")
	}
	cs.Setup(t, meshTests)
	// The namespace waypoint, applied and enrolled the way users do (the suite's setup replaced the namespace's
	// labels with its own).
	out := c.mustAmbitctl(t, "waypoint", "apply", "-n", meshNamespace, "--enroll-namespace", "--wait")
	if !strings.Contains(out, `labeled with "istio.io/use-waypoint: waypoint"`) {
		t.Fatalf("ambitctl waypoint apply --enroll-namespace: %s", out)
	}
	c.kubectl(t, "rollout", "status", "deployment/waypoint", "-n", meshNamespace, "--timeout=120s")
	// The report is complete once the suite's subtests and cleanups are done (its own runner reports in a
	// cleanup too). Registered before Run, it runs after the suite's cleanups, which go last-in first-out.
	wp, _ := c.podBy(t, meshNamespace, "gateway.networking.k8s.io/gateway-name=waypoint")
	t.Cleanup(func() {
		// The routes were the waypoint's: it logged the suite's requests (before the suite deletes it).
		if n := len(c.accessLines(meshNamespace, wp.Name, "istio-proxy", map[string]string{"msg": "request complete"})); n == 0 {
			t.Error("the waypoint logged no request")
		} else {
			t.Logf("the waypoint logged %d requests", n)
		}
		report, err := cs.Report()
		if err != nil {
			t.Errorf("conformance report: %v", err)
			return
		}
		rep, err := yaml.Marshal(report)
		if err != nil {
			t.Errorf("conformance report: %v", err)
			return
		}
		t.Logf("conformance report:\n%s", rep)
		for _, p := range report.ProfileReports {
			if p.Core.Result == confv1.Failure {
				t.Errorf("profile %s: core failed %v", p.Name, p.Core.FailedTests)
			}
			if p.Extended != nil && p.Extended.Result == confv1.Failure {
				t.Errorf("profile %s: extended failed %v", p.Name, p.Extended.FailedTests)
			}
		}
	})
	if err := cs.Run(t, meshTests); err != nil {
		t.Error(err)
	}
}
