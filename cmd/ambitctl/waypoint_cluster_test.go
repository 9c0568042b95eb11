package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"
)

// fakeCluster swaps the cluster clients for fake clientsets holding objs for the duration of the test.
func fakeCluster(t *testing.T, objs ...runtime.Object) *clusterClients {
	t.Helper()
	var kube, gws []runtime.Object
	for _, o := range objs {
		if _, ok := o.(*gwv1.Gateway); ok {
			gws = append(gws, o)
		} else {
			kube = append(kube, o)
		}
	}
	c := &clusterClients{kube: kubefake.NewClientset(kube...), gateway: newGatewayFake(gws...)}
	prevClients, prevPoll := newClusterClients, waypointPoll
	newClusterClients = func(*clusterFlags) (*clusterClients, error) { return c, nil }
	waypointPoll = 20 * time.Millisecond
	t.Cleanup(func() { newClusterClients, waypointPoll = prevClients, prevPoll })
	return c
}

// runIn runs ambitctl in-process.
func runIn(args ...string) result {
	var out, errb bytes.Buffer
	code := run(args, &out, &errb)
	return result{out.String(), errb.String(), code}
}

func gateway(name, ns string, programmed, waypoint bool, labels ...string) *gwv1.Gateway {
	status := metav1.ConditionFalse
	if programmed {
		status = metav1.ConditionTrue
	}
	class := "other"
	if waypoint {
		class = waypointClass
	}
	gw := &gwv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:   gwv1.GatewaySpec{GatewayClassName: gwv1.ObjectName(class)},
		Status: gwv1.GatewayStatus{Conditions: []metav1.Condition{{Type: conditionReady, Status: status}}}}
	for i := 0; i+1 < len(labels); i += 2 {
		if gw.Labels == nil {
			gw.Labels = map[string]string{}
		}
		gw.Labels[labels[i]] = labels[i+1]
	}
	return gw
}

func namespace(name string, labels ...string) *corev1.Namespace {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}}
	for i := 0; i+1 < len(labels); i += 2 {
		ns.Labels[labels[i]] = labels[i+1]
	}
	return ns
}

// TestWaypointListStatus checks list and status against the outputs of istioctl's own tests (testdata of
// istioctl/pkg/waypoint), byte for byte.
func TestWaypointListStatus(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		objs   []runtime.Object
		stdout string
		stderr string
		code   int
	}{
		{name: "list, no gateways", args: []string{"list"}, stdout: "No waypoints found.\n"},
		{name: "list, default namespace", args: []string{"list"},
			objs:   []runtime.Object{gateway("waypoint", "default", true, true)},
			stdout: "NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\nwaypoint     default      none             True\n"},
		{name: "list -A", args: []string{"list", "-A"},
			objs: []runtime.Object{gateway("waypoint", "fake", true, true), gateway("waypoint", "default", true, true)},
			stdout: "NAMESPACE     NAME         REVISION     TRAFFIC TYPE     PROGRAMMED\n" +
				"default       waypoint     default      none             True\n" +
				"fake          waypoint     default      none             True\n"},
		{name: "list -A, managed and unmanaged", args: []string{"list", "-A"},
			objs: []runtime.Object{
				gateway("bookinfo", "default", false, true), gateway("bookinfo-invalid", "fake", true, false),
				gateway("waypoint", "default", false, true), gateway("bookinfo-valid", "bookinfo", true, true),
				gateway("no-name-convention", "default", true, true),
				gateway("bookinfo-rev", "bookinfo", true, true, "istio.io/rev", "rev1"),
				gateway("bookinfo-traffic-type", "bookinfo", true, true, "istio.io/waypoint-for", "all"),
			},
			stdout: "NAMESPACE     NAME                      REVISION     TRAFFIC TYPE     PROGRAMMED\n" +
				"bookinfo      bookinfo-rev              rev1         none             True\n" +
				"bookinfo      bookinfo-traffic-type     default      all              True\n" +
				"bookinfo      bookinfo-valid            default      none             True\n" +
				"default       bookinfo                  default      none             False\n" +
				"default       no-name-convention        default      none             True\n" +
				"default       waypoint                  default      none             False\n"},
		{name: "list, only other classes: header only", args: []string{"list", "-n", "x"},
			objs: []runtime.Object{gateway("ingress", "x", true, false)}, stdout: "NAME     REVISION     TRAFFIC TYPE     PROGRAMMED\n"},
		{name: "status ready", args: []string{"status"}, objs: []runtime.Object{gateway("waypoint", "default", true, true)},
			stdout: "NAME         STATUS     TYPE           REASON     MESSAGE\nwaypoint     True       Programmed                \n"},
		{name: "status --all-namespaces", args: []string{"status", "--all-namespaces"},
			objs: []runtime.Object{gateway("waypoint", "fake2", true, true), gateway("waypoint", "fake1", true, true),
				gateway("waypoint", "fake3", true, true)},
			stdout: "NAMESPACE     NAME         STATUS     TYPE           REASON     MESSAGE\n" +
				"fake1         waypoint     True       Programmed                \n" +
				"fake2         waypoint     True       Programmed                \n" +
				"fake3         waypoint     True       Programmed                \n"},
		{name: "status times out", args: []string{"status", "--waypoint-timeout", "0.1s"},
			objs:   []runtime.Object{gateway("waypoint", "default", false, true)},
			stderr: "Error: failed to print waypoint status: timed out while retrieving status for waypoint\tdefault/waypoint\n", code: 1},
		{name: "status --wait=false", args: []string{"status", "--wait=false", "--waypoint-timeout", "0.1s"},
			objs:   []runtime.Object{gateway("waypoint", "default", false, true)},
			stdout: "NAME         STATUS     TYPE           REASON     MESSAGE\nwaypoint     False      Programmed                \n"},
		{name: "status, no gateways", args: []string{"status", "-n", "empty"}, stdout: "No waypoints found.\n"},
		{name: "status with an argument", args: []string{"status", "extra"}, stderr: "Error: unknown subcommand \"extra\"\n", code: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fakeCluster(t, c.objs...)
			r := runIn(append([]string{"waypoint"}, c.args...)...)
			if r.stdout != c.stdout || r.stderr != c.stderr || r.code != c.code {
				t.Errorf("got stdout %q stderr %q code %d\nwant stdout %q stderr %q code %d", r.stdout, r.stderr, r.code, c.stdout, c.stderr, c.code)
			}
		})
	}
}

// TestWaypointStatusPolls shows a waypoint becoming Programmed: one row per poll, the last one True.
func TestWaypointStatusPolls(t *testing.T) {
	c := fakeCluster(t, gateway("waypoint", "default", false, true))
	go func() {
		time.Sleep(80 * time.Millisecond)
		gws := c.gateway.GatewayV1().Gateways("default")
		gw, err := gws.Get(context.Background(), "waypoint", metav1.GetOptions{})
		if err != nil {
			return
		}
		gw.Status.Conditions = []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue}, {Type: conditionReady, Status: metav1.ConditionTrue}}
		_, _ = gws.UpdateStatus(context.Background(), gw, metav1.UpdateOptions{})
	}()
	r := runIn("waypoint", "status")
	lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
	if r.code != 0 || len(lines) < 3 || !strings.HasPrefix(lines[1], "waypoint     False") ||
		!strings.HasPrefix(lines[len(lines)-1], "waypoint     True       Programmed") {
		t.Errorf("status = %q (code %d, stderr %q)", r.stdout, r.code, r.stderr)
	}
}

func TestWaypointDelete(t *testing.T) {
	objs := []runtime.Object{gateway("a", "ns", true, true), gateway("b", "ns", true, true, "istio.io/rev", "v1"),
		gateway("ingress", "ns", true, false), gateway("c", "other", true, true)}
	cases := []struct {
		name   string
		args   []string
		lines  []string // stdout lines, in any order
		stderr string
		code   int
		left   []string // gateways left in ns
	}{
		{name: "no names", args: []string{"-n", "ns"}, code: 1,
			stderr: "Error: must specify a waypoint name or delete all using --all or delete specific revision using --revision\n",
			left:   []string{"a", "b", "ingress"}},
		{name: "names with --all", args: []string{"a", "--all", "-n", "ns"}, code: 1,
			stderr: "Error: cannot specify waypoint names when deleting all waypoints\n", left: []string{"a", "b", "ingress"}},
		{name: "names with -r", args: []string{"a", "-r", "v1", "-n", "ns"}, code: 1,
			stderr: "Error: cannot specify waypoint names when deleting all waypoints\n", left: []string{"a", "b", "ingress"}},
		{name: "by name; a non-waypoint and a missing one are not found", args: []string{"a", "ingress", "zzz", "-n", "ns"},
			lines: []string{"waypoint ns/a deleted", "waypoint ns/ingress not found", "waypoint ns/zzz not found"}, left: []string{"b", "ingress"}},
		{name: "--all deletes waypoints only", args: []string{"--all", "-n", "ns"},
			lines: []string{"waypoint ns/a deleted", "waypoint ns/b deleted"}, left: []string{"ingress"}},
		{name: "--all in a namespace without waypoints", args: []string{"--all", "-n", "empty"}, left: []string{"a", "b", "ingress"}},
		{name: "by revision", args: []string{"-r", "v1", "-n", "ns"}, lines: []string{"waypoint ns/b deleted"}, left: []string{"a", "ingress"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cl := fakeCluster(t, objs...)
			r := runIn(append([]string{"waypoint", "delete"}, c.args...)...)
			var got []string
			if r.stdout != "" {
				got = strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
			}
			slices.Sort(got)
			if !slices.Equal(got, c.lines) || r.stderr != c.stderr || r.code != c.code {
				t.Errorf("got lines %q stderr %q code %d; want %q %q %d", got, r.stderr, r.code, c.lines, c.stderr, c.code)
			}
			l, err := cl.gateway.GatewayV1().Gateways("ns").List(context.Background(), metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var left []string
			for _, gw := range l.Items {
				left = append(left, gw.Name)
			}
			slices.Sort(left)
			if !slices.Equal(left, c.left) {
				t.Errorf("left = %v, want %v", left, c.left)
			}
		})
	}
}

// TestWaypointApplyChecks covers what apply decides before it writes: the namespace must exist, an
// enrolled namespace is left alone without --overwrite, and the traffic type and name are validated. Server-side
// apply itself is exercised against the real API server in test/e2e.
func TestWaypointApplyChecks(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		objs   []runtime.Object
		stdout string
		stderr string
		code   int
	}{
		{name: "missing namespace", args: []string{"-n", "nope"}, stderr: "Error: namespace: nope not found\n", code: 1},
		{name: "missing namespace even with --enroll-namespace", args: []string{"-n", "nope", "--enroll-namespace"},
			stderr: "Error: namespace: nope not found\n", code: 1},
		{name: "already enrolled, no overwrite", args: []string{"-n", "app", "--enroll-namespace"},
			objs:   []runtime.Object{namespace("app", "istio.io/use-waypoint", "none")},
			stdout: "⚠️ Warning: namespace (app) already has an enrolled Waypoint. Consider adding the `--overwrite` flag to your apply command.\n"},
		{name: "invalid traffic type", args: []string{"-n", "app", "--for", "foo"}, objs: []runtime.Object{namespace("app")},
			stderr: "Error: failed to create gateway: invalid traffic type: foo. Valid options are: [all none service workload]\n", code: 1},
		{name: "reserved name", args: []string{"-n", "app", "--name", "none"}, objs: []runtime.Object{namespace("app")},
			stderr: "Error: failed to create gateway: invalid name provided for waypoint, 'none' is a reserved value\n", code: 1},
		{name: "not ambient: warning before the traffic type check", args: []string{"-n", "app", "--enroll-namespace", "--for", "x"},
			objs:   []runtime.Object{namespace("app")},
			stdout: "⚠️ Warning: namespace is not enrolled in ambient. Consider running\t`kubectl label namespace app istio.io/dataplane-mode=ambient`\n",
			stderr: "Error: failed to create gateway: invalid traffic type: x. Valid options are: [all none service workload]\n", code: 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fakeCluster(t, c.objs...)
			r := runIn(append([]string{"waypoint", "apply"}, c.args...)...)
			if r.stdout != c.stdout || r.stderr != c.stderr || r.code != c.code {
				t.Errorf("got stdout %q stderr %q code %d\nwant stdout %q stderr %q code %d", r.stdout, r.stderr, r.code, c.stdout, c.stderr, c.code)
			}
		})
	}
}

func TestClusterClientErrors(t *testing.T) {
	r := runIn("waypoint", "list", "--kubeconfig", "/nonexistent/kubeconfig")
	want := "Error: failed to create Kubernetes client: failed to setup client: stat /nonexistent/kubeconfig: no such file or directory\n"
	if r.stderr != want || r.code != 1 || r.stdout != "" {
		t.Errorf("missing kubeconfig: %+v", r)
	}
	// istioctl parses the client timeout before it reads the kubeconfig.
	r = runIn("waypoint", "list", "--kubeconfig", "/nonexistent/kubeconfig", "--kubeclient-timeout", "soon")
	want = "Error: failed to create Kubernetes client: error parsing kubeclient-timeout: time: invalid duration \"soon\"\n"
	if r.stderr != want || r.code != 1 {
		t.Errorf("bad client timeout: %+v", r)
	}
	// istioctl's other root flags are accepted.
	r = runIn("waypoint", "list", "--kubeconfig", "/nonexistent/kubeconfig", "-i", "istio-system", "--vklog", "0", "--as", "u",
		"--as-group", "g", "--as-uid", "1", "--kubeclient-timeout", "2s")
	if r.code != 1 || !strings.Contains(r.stderr, "stat /nonexistent/kubeconfig") {
		t.Errorf("root flags: %+v", r)
	}
	if r := runIn("waypoint", "list", "--vklog", "x"); r.code != 64 ||
		r.stderr != "Error: invalid argument \"x\" for \"--vklog\" flag: strconv.ParseInt: parsing \"x\": invalid syntax\n" {
		t.Errorf("bad --vklog: %+v", r)
	}
	prev := newClusterClients
	defer func() { newClusterClients = prev }()
	newClusterClients = func(*clusterFlags) (*clusterClients, error) { return nil, errors.New("boom") }
	if r := runIn("waypoint", "apply", "-n", "x"); r.stderr != "Error: failed to create Kubernetes client: boom\n" || r.code != 1 {
		t.Errorf("client error: %+v", r)
	}
}

func TestMultiError(t *testing.T) {
	if multiError(nil) != nil {
		t.Error("no errors gave an error")
	}
	if got := multiError([]error{errors.New("a")}).Error(); got != "1 error occurred:\n\t* a\n\n" {
		t.Errorf("one: %q", got)
	}
	if got := multiError([]error{errors.New("a"), errors.New("b")}).Error(); got != "2 errors occurred:\n\t* a\n\t* b\n\n" {
		t.Errorf("two: %q", got)
	}
}

// newGatewayFake is a Gateway API clientset over a map: the generated fake's object tracker does not find the
// Gateway resource with this client-go version, so a reactor serves get, list (label selectors), update of
// status and delete.
func newGatewayFake(objs ...runtime.Object) *gwfake.Clientset {
	var mu sync.Mutex
	store := map[string]*gwv1.Gateway{}
	for _, o := range objs {
		gw := o.(*gwv1.Gateway)
		store[gw.Namespace+"/"+gw.Name] = gw.DeepCopy()
	}
	cs := &gwfake.Clientset{}
	cs.AddReactor("*", "gateways", func(a k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		defer mu.Unlock()
		gr := schema.GroupResource{Group: "gateway.networking.k8s.io", Resource: "gateways"}
		switch a := a.(type) {
		case k8stesting.DeleteAction:
			key := a.GetNamespace() + "/" + a.GetName()
			if _, ok := store[key]; !ok {
				return true, nil, apierrors.NewNotFound(gr, a.GetName())
			}
			delete(store, key)
			return true, nil, nil
		case k8stesting.GetAction:
			gw, ok := store[a.GetNamespace()+"/"+a.GetName()]
			if !ok {
				return true, nil, apierrors.NewNotFound(gr, a.GetName())
			}
			return true, gw.DeepCopy(), nil
		case k8stesting.ListAction:
			sel := a.GetListRestrictions().Labels
			l := &gwv1.GatewayList{}
			for _, gw := range store {
				if (a.GetNamespace() == "" || gw.Namespace == a.GetNamespace()) && sel.Matches(labels.Set(gw.Labels)) {
					l.Items = append(l.Items, *gw.DeepCopy())
				}
			}
			return true, l, nil
		case k8stesting.UpdateAction:
			gw := a.GetObject().(*gwv1.Gateway)
			store[gw.Namespace+"/"+gw.Name] = gw.DeepCopy()
			return true, gw, nil
		}
		return true, nil, fmt.Errorf("unsupported action %s", a.GetVerb())
	})
	return cs
}
