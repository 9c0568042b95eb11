//go:build e2e

package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambit-mesh/ambit/test/proc"
)

// CLI parity against the real API server: every command runs with the real istioctl and with ambitctl, each in
// its own namespace (cli-istioctl-<case> and cli-ambitctl-<case>: the commands change the cluster), and the two
// runs must give the same standard output, standard error and exit code once "istioctl" reads "ambitctl" (which
// also maps the namespace names onto each other; they have the same length, so tables line up). Expected texts
// from waypoint-rules.md 8.3 are checked too, so that both tools failing alike does not pass.

// The two tools compared.
const (
	toolIstioctl = "istioctl"
	toolAmbitctl = "ambitctl"
)

var cliTools = []string{toolIstioctl, toolAmbitctl}

// cliResult is what one command run gave.
type cliResult struct {
	stdout, stderr string
	code           int
	took           time.Duration
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d after %v\n--- stdout\n%s--- stderr\n%s", r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
}

// normalized maps istioctl's words onto ambitctl's.
func (r cliResult) normalized() cliResult {
	r.stdout = strings.ReplaceAll(r.stdout, toolIstioctl, toolAmbitctl)
	r.stderr = strings.ReplaceAll(r.stderr, toolIstioctl, toolAmbitctl)
	return r
}

// cliBinary returns the path of tool.
func (c *cluster) cliBinary(t *testing.T, tool string) string {
	t.Helper()
	if tool == toolIstioctl {
		if c.stack.Bin.Istioctl == "" {
			t.Fatal("istioctl not found in the peer cache (build it with hack/peers/build-istioctl.sh)")
		}
		return c.stack.Bin.Istioctl
	}
	return filepath.Join(c.bin, toolAmbitctl)
}

// cliRun runs tool with args against the cluster: the admin kubeconfig is passed with --kubeconfig unless args
// give one, and neither $KUBECONFIG nor a home directory's kubeconfig is visible.
func (c *cluster) cliRun(t *testing.T, tool string, args ...string) cliResult {
	t.Helper()
	if !slices.Contains(args, "--kubeconfig") {
		args = append(args, "--kubeconfig", c.stack.Kubeconfig)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.cliBinary(t, tool), args...)
	env := []string{"HOME=" + filepath.Join(c.dir, "cli-home")}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KUBECONFIG=") && !strings.HasPrefix(kv, "HOME=") {
			env = append(env, kv)
		}
	}
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	t0 := time.Now()
	err := proc.Run(cmd)
	r := cliResult{stdout: out.String(), stderr: errb.String(), took: time.Since(t0)}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("%s %s: %v", tool, strings.Join(args, " "), err)
	}
	return r
}

// cliNS is the namespace of case name for tool.
func cliNS(tool, name string) string { return "cli-" + tool + "-" + name }

// cliCreateNamespace creates namespace name with labels, removed when the test ends.
func (c *cluster) cliCreateNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	_, err := c.client.CoreV1().Namespaces().Create(t.Context(),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := c.client.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete namespace %s: %v", name, err)
		}
	})
}

// cliGateways returns the Gateway API client of the cluster.
func (c *cluster) cliGateways(t *testing.T) gwclient.Interface {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", c.stack.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	gc, err := gwclient.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return gc
}

// cliWaitProgrammed waits until Gateway ns/name's Programmed condition has status want, and returns it.
func cliWaitProgrammed(t *testing.T, gc gwclient.Interface, ns, name string, want metav1.ConditionStatus, d time.Duration) metav1.Condition {
	t.Helper()
	var last metav1.Condition
	deadline := time.Now().Add(d)
	for {
		gw, err := gc.GatewayV1().Gateways(ns).Get(t.Context(), name, metav1.GetOptions{})
		if err == nil {
			for _, cond := range gw.Status.Conditions {
				if cond.Type == string(gwv1.GatewayConditionProgrammed) {
					last = cond
				}
			}
			if last.Status == want {
				return last
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("gateway %s/%s: Programmed is %q (%s: %s) after %v, want %s (last error %v)", ns, name, last.Status, last.Reason, last.Message, d, want, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// cliStep is one command of a case. {ns} in args and in the expectations stands for the tool's namespace
// (ambitctl's name in expectations).
type cliStep struct {
	args []string
	// unordered compares standard output as a set of lines (deletes run concurrently in both tools).
	unordered bool
	// stdout, stderr and code are the expected result (nil stdout/stderr: not checked).
	stdout, stderr *string
	code           int
	// check inspects the cluster after the step, for each tool; ns is the tool's namespace.
	check func(t *testing.T, tool, ns string)
}

// cliCase prepares a namespace per tool and runs its steps with each tool.
type cliCase struct {
	name string
	// noNamespace leaves the namespace uncreated; labels label it.
	noNamespace bool
	labels      map[string]string
	// setup is applied (server-side) after the namespace is created; {ns} stands for it.
	setup string
	// ready runs after setup, before the steps (waits for state both tools must see alike).
	ready func(t *testing.T, ns string)
	steps []cliStep
}

func cliStr(s string) *string { return &s }

func cliExpand(s, ns string) string { return strings.ReplaceAll(s, "{ns}", ns) }

func cliExpandAll(args []string, ns string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = cliExpand(a, ns)
	}
	return out
}

// cliCompare fails t unless istioctl's (normalised) and ambitctl's results agree, and ambitctl's matches the step's
// expectations. ambitNS "" compares without normalising (both tools saw the same namespaces).
func cliCompare(t *testing.T, what string, st cliStep, istio, ambit cliResult, ambitNS string) {
	t.Helper()
	in := istio
	if ambitNS != "" {
		in = istio.normalized()
	}
	same := in.stderr == ambit.stderr && in.code == ambit.code
	if st.unordered {
		a, b := strings.Split(in.stdout, "\n"), strings.Split(ambit.stdout, "\n")
		slices.Sort(a)
		slices.Sort(b)
		same = same && slices.Equal(a, b)
	} else {
		same = same && in.stdout == ambit.stdout
	}
	if !same {
		t.Errorf("%s: istioctl and ambitctl differ\n=== istioctl (normalised)\n%s=== ambitctl\n%s", what, in, ambit)
		return
	}
	if st.code != ambit.code {
		t.Errorf("%s: both exit %d, want %d\n%s", what, ambit.code, st.code, ambit)
	}
	if st.stdout != nil && !st.unordered && ambit.stdout != cliExpand(*st.stdout, ambitNS) {
		t.Errorf("%s: both print\n%s\nwant\n%s", what, ambit.stdout, cliExpand(*st.stdout, ambitNS))
	}
	if st.stderr != nil && ambit.stderr != cliExpand(*st.stderr, ambitNS) {
		t.Errorf("%s: both print on stderr %q, want %q", what, ambit.stderr, cliExpand(*st.stderr, ambitNS))
	}
}

// cliRunCase runs every step of cc with istioctl in its namespace, then with ambitctl in its own, and compares
// the steps.
func (c *cluster) cliRunCase(t *testing.T, cc cliCase) {
	t.Helper()
	results := map[string][]cliResult{}
	for _, tool := range cliTools {
		ns := cliNS(tool, cc.name)
		if !cc.noNamespace {
			c.cliCreateNamespace(t, ns, cc.labels)
			if cc.setup != "" {
				c.apply(t, cliExpand(cc.setup, ns))
			}
			if cc.ready != nil {
				cc.ready(t, ns)
			}
		}
		for _, st := range cc.steps {
			r := c.cliRun(t, tool, cliExpandAll(st.args, ns)...)
			t.Logf("%s %s: exit %d in %v\n%s%s", tool, strings.Join(cliExpandAll(st.args, ns), " "), r.code, r.took.Round(time.Millisecond), r.stdout, r.stderr)
			results[tool] = append(results[tool], r)
			if st.check != nil {
				st.check(t, tool, ns)
			}
		}
	}
	for i, st := range cc.steps {
		cliCompare(t, "waypoint "+strings.Join(st.args, " "), st, results[toolIstioctl][i], results[toolAmbitctl][i],
			cliNS(toolAmbitctl, cc.name))
	}
}

// cliWaypointYAML is a waypoint Gateway in {ns}: name, then labels as "key: value" pairs.
func cliWaypointYAML(name string, labels ...string) string {
	l := ""
	if len(labels) > 0 {
		l = "\n  labels: {" + strings.Join(labels, ", ") + "}"
	}
	return fmt.Sprintf(`---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: %s
  namespace: "{ns}"%s
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`, name, l)
}

// cliOtherGatewayYAML is a Gateway of a class no controller serves: a Gateway, but not a waypoint.
func cliOtherGatewayYAML(name string) string {
	return fmt.Sprintf(`---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: %s, namespace: "{ns}"}
spec:
  gatewayClassName: ambit-e2e-unserved
  listeners: [{name: http, port: 80, protocol: HTTP}]
`, name)
}

// cliNoPodsQuota admits no pod in {ns}: istiod deploys the waypoint, but its pod is never created, so the Gateway
// is accepted and stays Programmed=False.
const cliNoPodsQuota = `---
apiVersion: v1
kind: ResourceQuota
metadata: {name: no-pods, namespace: "{ns}"}
spec:
  hard: {pods: "0"}
`

// cliUnservedRevision is an istio.io/rev no istiod serves: istiod ignores such waypoints, so nothing is deployed
// for them (and their status stays the CRD's default).
const cliUnservedRevision = "ambit-e2e-unserved"

// TestCLIParity runs the cluster rows of waypoint-rules.md 8.3 and bad input with both tools.
func TestCLIParity(t *testing.T) {
	c := need(t)
	gc := c.cliGateways(t)
	const (
		applied  = "✅ waypoint {ns}/waypoint applied\n"
		labelled = "✅ namespace {ns} labeled with \"istio.io/use-waypoint: waypoint\"\n"
		notAmb   = "⚠️ Warning: namespace is not enrolled in ambient. Consider running\t`kubectl label namespace {ns} istio.io/dataplane-mode=ambient`\n"
	)
	nsLabel := func(key, want string) func(t *testing.T, tool, ns string) {
		return func(t *testing.T, tool, ns string) {
			t.Helper()
			obj, err := c.client.CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if got := obj.Labels[key]; got != want {
				t.Errorf("%s: namespace %s label %s = %q, want %q", tool, ns, key, got, want)
			}
		}
	}
	// gatewayAs checks the applied Gateway: its labels and spec, and that the tool's field manager owns them.
	gatewayAs := func(name string, labels map[string]string) func(t *testing.T, tool, ns string) {
		return func(t *testing.T, tool, ns string) {
			t.Helper()
			gw, err := gc.GatewayV1().Gateways(ns).Get(t.Context(), name, metav1.GetOptions{})
			if err != nil {
				t.Fatalf("%s: %v", tool, err)
			}
			if gw.Spec.GatewayClassName != "istio-waypoint" || len(gw.Spec.Listeners) != 1 ||
				gw.Spec.Listeners[0].Name != "mesh" || gw.Spec.Listeners[0].Port != 15008 || gw.Spec.Listeners[0].Protocol != "HBONE" {
				t.Errorf("%s: gateway spec %+v", tool, gw.Spec)
			}
			got := map[string]string{}
			for k, v := range gw.Labels {
				got[k] = v
			}
			if fmt.Sprint(got) != fmt.Sprint(labels) {
				t.Errorf("%s: gateway labels %v, want %v", tool, got, labels)
			}
			managers := []string{}
			for _, mf := range gw.ManagedFields {
				if mf.Operation == metav1.ManagedFieldsOperationApply {
					managers = append(managers, mf.Manager)
				}
			}
			if !slices.Equal(managers, []string{tool}) {
				t.Errorf("%s: server-side apply managers %v, want [%s]", tool, managers, tool)
			}
		}
	}
	noGateway := func(t *testing.T, tool, ns string) {
		t.Helper()
		l, err := gc.GatewayV1().Gateways(ns).List(t.Context(), metav1.ListOptions{})
		if err != nil || len(l.Items) != 0 {
			t.Errorf("%s: gateways in %s: %v (%d)", tool, ns, err, len(l.Items))
		}
	}
	gatewaysLeft := func(want ...string) func(t *testing.T, tool, ns string) {
		return func(t *testing.T, tool, ns string) {
			t.Helper()
			l, err := gc.GatewayV1().Gateways(ns).List(t.Context(), metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, gw := range l.Items {
				got = append(got, gw.Name)
			}
			slices.Sort(got)
			if !slices.Equal(got, want) {
				t.Errorf("%s: gateways left in %s: %v, want %v", tool, ns, got, want)
			}
		}
	}
	programmedFalse := func(t *testing.T, ns string) {
		cliWaitProgrammed(t, gc, ns, "waypoint", metav1.ConditionFalse, 2*time.Minute)
	}

	cases := []cliCase{
		{name: "c7", steps: []cliStep{
			{args: []string{"waypoint", "apply", "-n", "{ns}", "-r", cliUnservedRevision}, stdout: cliStr(applied), stderr: cliStr(""),
				check: gatewayAs("waypoint", map[string]string{"istio.io/rev": cliUnservedRevision})},
			// Applying again is idempotent (same manager, same fields).
			{args: []string{"waypoint", "apply", "-n", "{ns}", "-r", cliUnservedRevision}, stdout: cliStr(applied), stderr: cliStr("")},
		}},
		{name: "c8", labels: map[string]string{"istio.io/dataplane-mode": "ambient"}, steps: []cliStep{
			{args: []string{"waypoint", "apply", "-n", "{ns}", "--enroll-namespace", "--for", "service"},
				stdout: cliStr(applied + labelled), stderr: cliStr(""),
				check: func(t *testing.T, tool, ns string) {
					gatewayAs("waypoint", map[string]string{"istio.io/waypoint-for": "service"})(t, tool, ns)
					nsLabel("istio.io/use-waypoint", "waypoint")(t, tool, ns)
				}},
			// C9: already enrolled, no --overwrite: a warning, nothing applied.
			{args: []string{"waypoint", "apply", "-n", "{ns}", "--enroll-namespace", "--name", "other"},
				stdout: cliStr("⚠️ Warning: namespace ({ns}) already has an enrolled Waypoint. Consider adding the `--overwrite` flag to your apply command.\n"),
				stderr: cliStr(""), check: gatewaysLeft("waypoint")},
			// --overwrite moves the namespace to the new waypoint.
			{args: []string{"waypoint", "apply", "-n", "{ns}", "--enroll-namespace", "--name", "other", "--overwrite", "-r", cliUnservedRevision},
				stdout: cliStr("✅ waypoint {ns}/other applied\n✅ namespace {ns} labeled with \"istio.io/use-waypoint: other\"\n"),
				stderr: cliStr(""), check: nsLabel("istio.io/use-waypoint", "other")},
		}},
		{name: "c10", steps: []cliStep{
			{args: []string{"waypoint", "apply", "-n", "{ns}", "--enroll-namespace", "-r", cliUnservedRevision},
				stdout: cliStr(notAmb + applied + labelled), stderr: cliStr(""), check: nsLabel("istio.io/use-waypoint", "waypoint")},
		}},
		{name: "c11", noNamespace: true, steps: []cliStep{
			{args: []string{"waypoint", "apply", "-n", "{ns}"}, stdout: cliStr(""), stderr: cliStr("Error: namespace: {ns} not found\n"), code: 1,
				check: noGateway},
			{args: []string{"waypoint", "apply", "-n", "{ns}", "--enroll-namespace"}, stdout: cliStr(""),
				stderr: cliStr("Error: namespace: {ns} not found\n"), code: 1},
			{args: []string{"waypoint", "list", "-n", "{ns}"}, stdout: cliStr("No waypoints found.\n"), stderr: cliStr("")},
			{args: []string{"waypoint", "status", "-n", "{ns}"}, stdout: cliStr("No waypoints found.\n"), stderr: cliStr("")},
			{args: []string{"waypoint", "delete", "w1", "-n", "{ns}"}, stdout: cliStr("waypoint {ns}/w1 not found\n"), stderr: cliStr("")},
			{args: []string{"waypoint", "delete", "--all", "-n", "{ns}"}, stdout: cliStr(""), stderr: cliStr("")},
		}},
		// C12 and C19: the waypoint is really deployed (istiod's deployment controller, the netns kubelet running
		// `ambit waypoint`) and becomes Programmed.
		{name: "c12", steps: []cliStep{
			{args: []string{"waypoint", "apply", "-n", "{ns}", "--wait"}, stdout: cliStr(applied + "✅ waypoint {ns}/waypoint is ready!\n"),
				stderr: cliStr("")},
			{args: []string{"waypoint", "list", "-n", "{ns}"}, stderr: cliStr(""),
				stdout: cliStr("NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\nwaypoint     default      none             True\n")},
			{args: []string{"waypoint", "status", "-n", "{ns}"}, stderr: cliStr(""),
				stdout: cliStr("NAME         STATUS     TYPE           REASON         MESSAGE\nwaypoint     True       Programmed     Programmed     Resource programmed, assigned to service(s) waypoint.{ns}.svc.cluster.local:15008\n")},
			{args: []string{"waypoint", "delete", "waypoint", "nope", "-n", "{ns}"}, unordered: true, stderr: cliStr(""),
				stdout: cliStr("waypoint {ns}/nope not found\nwaypoint {ns}/waypoint deleted\n"), check: noGateway},
		}},
		// C12 timeout, C21, C22: a waypoint that istiod accepts but whose pod the namespace's quota refuses.
		{name: "c21", setup: cliNoPodsQuota + cliWaypointYAML("waypoint"), ready: programmedFalse, steps: []cliStep{
			// The row comes from the last condition when Programmed is not True: istiod lists ResolvedRefs last
			// (the reference's "waypoint False Programmed" row is istioctl's testdata, where Programmed is last).
			{args: []string{"waypoint", "status", "-n", "{ns}", "--wait=false"}, stderr: cliStr(""), stdout: cliStr(
				"NAME         STATUS     TYPE             REASON           MESSAGE\n" +
					"waypoint     True       ResolvedRefs     ResolvedRefs     All references resolved\n")},
			{args: []string{"waypoint", "status", "-n", "{ns}", "--waypoint-timeout", "0.5s"}, stdout: cliStr(""),
				stderr: cliStr("Error: failed to print waypoint status: timed out while retrieving status for waypoint\t{ns}/waypoint\n"), code: 1},
			{args: []string{"waypoint", "apply", "-n", "{ns}", "--wait", "--waypoint-timeout", "2s"}, stdout: cliStr(applied),
				stderr: cliStr("Error: timed out while waiting for waypoint\t{ns}/waypoint\n"), code: 1},
			{args: []string{"waypoint", "list", "-n", "{ns}"}, stderr: cliStr(""),
				stdout: cliStr("NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\nwaypoint     default      none             False\n")},
		}},
		// C21 on a waypoint no istiod serves: its status is the CRD's default (Programmed Unknown, Pending).
		{name: "c21u", setup: cliWaypointYAML("waypoint", "istio.io/rev: "+cliUnservedRevision), steps: []cliStep{
			{args: []string{"waypoint", "status", "-n", "{ns}", "-w=false"}, stderr: cliStr(""),
				stdout: cliStr("NAME         STATUS      TYPE           REASON      MESSAGE\nwaypoint     Unknown     Programmed     Pending     Waiting for controller\n")},
			{args: []string{"waypoint", "apply", "-n", "{ns}", "-r", cliUnservedRevision, "-w", "--waypoint-timeout", "1s"}, stdout: cliStr(applied),
				stderr: cliStr("Error: timed out while waiting for waypoint\t{ns}/waypoint\n"), code: 1},
		}},
		{name: "c14", steps: []cliStep{
			{args: []string{"waypoint", "delete", "-n", "{ns}"}, stdout: cliStr(""),
				stderr: cliStr("Error: must specify a waypoint name or delete all using --all or delete specific revision using --revision\n"), code: 1},
			{args: []string{"waypoint", "delete", "w1", "--all", "-n", "{ns}"}, stdout: cliStr(""),
				stderr: cliStr("Error: cannot specify waypoint names when deleting all waypoints\n"), code: 1},
			{args: []string{"waypoint", "delete", "w1", "-r", "v1", "-n", "{ns}"}, stdout: cliStr(""),
				stderr: cliStr("Error: cannot specify waypoint names when deleting all waypoints\n"), code: 1},
		}},
		{name: "c16", setup: cliWaypointYAML("w1", "istio.io/rev: "+cliUnservedRevision) + cliWaypointYAML("w2", "istio.io/rev: "+cliUnservedRevision) +
			cliOtherGatewayYAML("ingress"), steps: []cliStep{
			// A Gateway of another class is not a waypoint: "not found", exit 0.
			{args: []string{"waypoint", "delete", "ingress", "-n", "{ns}"}, stdout: cliStr("waypoint {ns}/ingress not found\n"), stderr: cliStr("")},
			{args: []string{"waypoint", "delete", "--all", "-n", "{ns}"}, unordered: true,
				stdout: cliStr("waypoint {ns}/w1 deleted\nwaypoint {ns}/w2 deleted\n"), stderr: cliStr(""), check: gatewaysLeft("ingress")},
			// Only a non-waypoint Gateway left: the header and no rows.
			{args: []string{"waypoint", "list", "-n", "{ns}"}, stdout: cliStr("NAME     REVISION     TRAFFIC TYPE     PROGRAMMED\n"), stderr: cliStr("")},
			{args: []string{"waypoint", "delete", "--all", "-n", "{ns}"}, stdout: cliStr(""), stderr: cliStr("")},
		}},
		{name: "c17", setup: cliWaypointYAML("w1", "istio.io/rev: v1") + cliWaypointYAML("w2", "istio.io/rev: v1") +
			cliWaypointYAML("w3", "istio.io/rev: v2") + cliOtherGatewayYAML("ingress"), steps: []cliStep{
			{args: []string{"waypoint", "delete", "-r", "v1", "-n", "{ns}"}, unordered: true,
				stdout: cliStr("waypoint {ns}/w1 deleted\nwaypoint {ns}/w2 deleted\n"), stderr: cliStr(""), check: gatewaysLeft("ingress", "w3")},
			{args: []string{"waypoint", "delete", "-r", "v1", "-n", "{ns}"}, stdout: cliStr(""), stderr: cliStr("")},
		}},
		{name: "c18", steps: []cliStep{
			{args: []string{"waypoint", "list", "-n", "{ns}"}, stdout: cliStr("No waypoints found.\n"), stderr: cliStr("")},
			{args: []string{"waypoint", "status", "-n", "{ns}"}, stdout: cliStr("No waypoints found.\n"), stderr: cliStr("")},
		}},
		// C19 with labels: REVISION and TRAFFIC TYPE come from the labels; rows sorted by name.
		{name: "c19", setup: cliWaypointYAML("zeta", "istio.io/rev: "+cliUnservedRevision, "istio.io/waypoint-for: workload") +
			cliWaypointYAML("alpha", "istio.io/rev: "+cliUnservedRevision, "istio.io/waypoint-for: all") + cliOtherGatewayYAML("ingress"),
			steps: []cliStep{
				{args: []string{"waypoint", "list", "-n", "{ns}"}, stderr: cliStr(""), stdout: cliStr(
					"NAME      REVISION               TRAFFIC TYPE     PROGRAMMED\n" +
						"alpha     ambit-e2e-unserved     all              Unknown\n" +
						"zeta      ambit-e2e-unserved     workload         Unknown\n")},
			}},
		{name: "bad", steps: []cliStep{
			{args: []string{"waypoint", "apply", "-n", "{ns}", "--for", "foo"}, stdout: cliStr(""),
				stderr: cliStr("Error: failed to create gateway: invalid traffic type: foo. Valid options are: [all none service workload]\n"), code: 1,
				check: noGateway},
			{args: []string{"waypoint", "apply", "-n", "{ns}", "--enroll-namespace", "--for", "foo"}, stdout: cliStr(notAmb),
				stderr: cliStr("Error: failed to create gateway: invalid traffic type: foo. Valid options are: [all none service workload]\n"), code: 1,
				check: func(t *testing.T, tool, ns string) {
					noGateway(t, tool, ns)
					nsLabel("istio.io/use-waypoint", "")(t, tool, ns)
				}},
			{args: []string{"waypoint", "apply", "-n", "{ns}", "--name", "none"}, stdout: cliStr(""),
				stderr: cliStr("Error: failed to create gateway: invalid name provided for waypoint, 'none' is a reserved value\n"), code: 1},
			{args: []string{"waypoint", "generate", "-n", "{ns}", "--for", "foo"}, stdout: cliStr(""),
				stderr: cliStr("Error: failed to create gateway: invalid traffic type: foo. Valid options are: [all none service workload]\n"), code: 1},
			{args: []string{"waypoint", "list", "--kubeconfig", "/nonexistent"}, stdout: cliStr(""),
				stderr: cliStr("Error: failed to create Kubernetes client: failed to setup client: stat /nonexistent: no such file or directory\n"), code: 1},
			{args: []string{"waypoint", "apply", "-n", "{ns}", "--kubeconfig", "/nonexistent"}, stdout: cliStr(""),
				stderr: cliStr("Error: failed to create Kubernetes client: failed to setup client: stat /nonexistent: no such file or directory\n"), code: 1},
			{args: []string{"waypoint", "status", "--kubeconfig", "/nonexistent"}, stdout: cliStr(""), code: 1},
			{args: []string{"waypoint", "delete", "--all", "--kubeconfig", "/nonexistent"}, stdout: cliStr(""), code: 1},
			{args: []string{"waypoint", "list", "-n", "{ns}", "--context", "nosuch"}, stdout: cliStr(""), code: 1},
			{args: []string{"waypoint", "list", "--for", "service"}, stdout: cliStr(""), stderr: cliStr("Error: unknown flag: --for\n"), code: 64},
			// istioctl's root flags: impersonation is applied (a user without rights is refused; system:masters
			// may list), and -i, --vklog and --kubeclient-timeout are accepted.
			{args: []string{"waypoint", "list", "-n", "{ns}", "--as", "nobody"}, stdout: cliStr(""), code: 1},
			{args: []string{"waypoint", "apply", "-n", "{ns}", "--as", "nobody"}, stdout: cliStr(""), code: 1},
			{args: []string{"waypoint", "list", "-n", "{ns}", "--as", "nobody", "--as-group", "system:masters"},
				stdout: cliStr("No waypoints found.\n"), stderr: cliStr("")},
			{args: []string{"waypoint", "list", "-n", "{ns}", "-i", "istio-system", "--vklog", "0", "--kubeclient-timeout", "30s"},
				stdout: cliStr("No waypoints found.\n"), stderr: cliStr("")},
			{args: []string{"waypoint", "list", "-n", "{ns}", "--kubeclient-timeout", "soon"}, stdout: cliStr(""),
				stderr: cliStr("Error: failed to create Kubernetes client: error parsing kubeclient-timeout: time: invalid duration \"soon\"\n"), code: 1},
			{args: []string{"waypoint", "apply", "-n", "{ns}", "--waypoint-timeout", "soon"}, stdout: cliStr(""), code: 64},
			{args: []string{"waypoint", "stray", "-n", "{ns}"}, stdout: cliStr(""), stderr: cliStr("Error: unknown subcommand \"stray\"\n"), code: 1},
			{args: []string{"waypoint", "status", "stray", "-n", "{ns}"}, stdout: cliStr(""), stderr: cliStr("Error: unknown subcommand \"stray\"\n"), code: 1},
		}},
	}
	// C20, first while the cluster holds few waypoints (status -A takes a second per waypoint): list -A and
	// status -A over the whole cluster. Both tools read the same cluster back to back and must print the same
	// table byte for byte (retried when another test changed the cluster in between).
	t.Run("c20", func(t *testing.T) {
		for _, tool := range cliTools {
			ns := cliNS(tool, "c20")
			c.cliCreateNamespace(t, ns, nil)
			c.apply(t, cliExpand(cliWaypointYAML("wb", "istio.io/rev: "+cliUnservedRevision)+cliWaypointYAML("wa", "istio.io/rev: "+cliUnservedRevision, "istio.io/waypoint-for: workload")+
				cliOtherGatewayYAML("ingress"), ns))
		}
		same := func(args ...string) cliResult {
			var in, am cliResult
			for try := 0; ; try++ {
				in = c.cliRun(t, toolIstioctl, args...)
				am = c.cliRun(t, toolAmbitctl, args...)
				if (in.stdout == am.stdout && in.stderr == am.stderr && in.code == am.code) || try == 4 {
					break
				}
			}
			cliCompare(t, strings.Join(args, " "), cliStep{stderr: cliStr("")}, in, am, "")
			return am
		}
		st := same("waypoint", "status", "-A", "--wait=false")
		if !strings.HasPrefix(st.stdout, "NAMESPACE ") || !strings.Contains(st.stdout, "\ncli-ambitctl-c20     wa ") {
			t.Errorf("status -A:\n%s", st.stdout)
		}
		am := same("waypoint", "list", "-A")
		lines := strings.Split(strings.TrimRight(am.stdout, "\n"), "\n")
		if len(lines) == 0 || strings.Join(strings.Fields(lines[0]), " ") != "NAMESPACE NAME REVISION TRAFFIC TYPE PROGRAMMED" {
			t.Fatalf("list -A header: %q", am.stdout)
		}
		var mine []string
		for _, l := range lines[1:] {
			if f := strings.Fields(l); strings.HasPrefix(f[0], "cli-") && strings.HasSuffix(f[0], "-c20") {
				mine = append(mine, strings.Join(f, " "))
			}
		}
		want := []string{
			"cli-ambitctl-c20 wa ambit-e2e-unserved workload Unknown",
			"cli-ambitctl-c20 wb ambit-e2e-unserved none Unknown",
			"cli-istioctl-c20 wa ambit-e2e-unserved workload Unknown",
			"cli-istioctl-c20 wb ambit-e2e-unserved none Unknown",
		}
		if !slices.Equal(mine, want) {
			t.Errorf("list -A rows of this test: %q, want %q (sorted by namespace and name, no ingress)", mine, want)
		}
	})

	for _, cc := range cases {
		t.Run(cc.name, func(t *testing.T) { c.cliRunCase(t, cc) })
	}

	// The kubeconfig context's namespace is the default of -n.
	t.Run("context namespace", func(t *testing.T) {
		res := map[string][]cliResult{}
		for _, tool := range cliTools {
			ns := cliNS(tool, "ctxns")
			c.cliCreateNamespace(t, ns, nil)
			kc := c.cliKubeconfigWithNamespace(t, ns)
			res[tool] = append(res[tool], c.cliRun(t, tool, "waypoint", "apply", "-r", cliUnservedRevision, "--kubeconfig", kc),
				c.cliRun(t, tool, "waypoint", "list", "--kubeconfig", kc))
		}
		ns := cliNS(toolAmbitctl, "ctxns")
		cliCompare(t, "waypoint apply (context namespace)", cliStep{stdout: cliStr("✅ waypoint {ns}/waypoint applied\n"), stderr: cliStr("")},
			res[toolIstioctl][0], res[toolAmbitctl][0], ns)
		cliCompare(t, "waypoint list (context namespace)", cliStep{stderr: cliStr(""), stdout: cliStr(
			"NAME         REVISION               TRAFFIC TYPE     PROGRAMMED\nwaypoint     ambit-e2e-unserved     none             Unknown\n")},
			res[toolIstioctl][1], res[toolAmbitctl][1], ns)
	})
}

// cliKubeconfigWithNamespace writes a copy of the admin kubeconfig whose context selects namespace ns.
func (c *cluster) cliKubeconfigWithNamespace(t *testing.T, ns string) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(c.stack.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Contexts[cfg.CurrentContext].Namespace = ns
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, p); err != nil {
		t.Fatal(err)
	}
	return p
}
