//go:build e2e

package e2e

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/agent/kube"
	"github.com/ambit-mesh/ambit/kubeapi"
	"github.com/ambit-mesh/ambit/test/testutil"
)

const kubeapiScenario = `
apiVersion: v1
kind: Namespace
metadata: {name: kubeapi-e2e, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: kubeapi-e2e}
---
apiVersion: v1
kind: Pod
metadata: {name: here, namespace: kubeapi-e2e}
spec: {nodeName: kubeapi-node, containers: [{name: app, image: echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: elsewhere, namespace: kubeapi-e2e}
spec: {nodeName: kubeapi-other, containers: [{name: app, image: echo}]}
`

// TestKubeAPIAgainstAPIServer runs the node agent's pod watcher on kubeapi's core/v1 client (the agent's
// production client, built without client-go's clientset) against the real kube-apiserver: list and watch of
// the node's pods (field selector) and of namespaces, the redirection annotation patched onto the captured
// pod, and an event written, patched and read back.
func TestKubeAPIAgainstAPIServer(t *testing.T) {
	testutil.CheckGoroutines(t)
	before := runtime.NumGoroutine()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	rc, err := clientcmd.BuildConfigFromFlags("", stack.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kubeapi.NewCoreV1(rc)
	if err != nil {
		t.Fatal(err)
	}
	// Before the goroutine check: client-go caches the transport process-wide, and the watch's connection
	// becomes idle only once its cancelled streams are reset.
	t.Cleanup(func() {
		testutil.WaitFor(t, 10*time.Second, "API server connections idle and closed", func() bool {
			c.CloseIdleConnections()
			return runtime.NumGoroutine() <= before
		})
	})
	if err := stack.Apply(ctx, kubeapiScenario); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stack.Kubectl(context.Background(), "delete", "namespace", "kubeapi-e2e", "--wait=false")
	})
	w, err := kube.New(kube.Options{Client: c, NodeName: "kubeapi-node", Logger: Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(wctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("watcher Run = %v", err)
		}
	}()
	select {
	case <-w.Synced():
	case <-ctx.Done():
		t.Fatal("watcher did not sync")
	}
	// The pods become Running with an IP (what a kubelet would write); only the one on this node is wanted.
	patchPodIP(t, ctx, "kubeapi-e2e", "elsewhere", "10.250.0.9")
	changed := w.Changed()
	patchPodIP(t, ctx, "kubeapi-e2e", "here", "10.250.0.8")
	uid := kube.WorkloadUID("Kubernetes", "kubeapi-e2e", "here")
	for !slices.ContainsFunc(w.Wanted(), func(p kube.Pod) bool { return p.UID == uid }) {
		select {
		case <-changed:
			changed = w.Changed()
		case <-ctx.Done():
			t.Fatalf("pod never wanted through the watch; wanted %v", w.Wanted())
		}
	}
	if got := w.Wanted(); len(got) != 1 {
		t.Fatalf("wanted %v, want the node's pod only", got)
	}
	w.SetCaptured([]string{uid})
	err = poll(ctx, time.Minute, func() error {
		out, err := stack.Kubectl(ctx, "get", "pod", "here", "-n", "kubeapi-e2e",
			"-o", `jsonpath={.metadata.annotations.ambient\.istio\.io/redirection}`)
		if err != nil {
			return err
		}
		if string(out) != "enabled" {
			return errors.New("redirection annotation " + string(out))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	ev := &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "here.kubeapi", Namespace: "kubeapi-e2e"},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "kubeapi-e2e", Name: "here", APIVersion: "v1"},
		Reason:         "Test", Message: "written by kubeapi", Type: corev1.EventTypeNormal, Count: 1,
		Source: corev1.EventSource{Component: "ambit-e2e"}}
	created, err := c.Events().Create(ev)
	if err != nil {
		t.Fatal(err)
	}
	if created.UID == "" || created.Message != ev.Message {
		t.Fatalf("created event %+v", created)
	}
	patched, err := c.Events().Patch(created, []byte(`{"count":2,"message":"patched by kubeapi"}`))
	if err != nil {
		t.Fatal(err)
	}
	if patched.Count != 2 {
		t.Errorf("patched event count %d, want 2", patched.Count)
	}
	patched.Message = "updated by kubeapi"
	if _, err := c.Events().Update(patched); err != nil {
		t.Fatal(err)
	}
	out, err := stack.Kubectl(ctx, "get", "event", "here.kubeapi", "-n", "kubeapi-e2e", "-o", "jsonpath={.count} {.message}")
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != "2 updated by kubeapi" {
		t.Errorf("event as the API server has it: %q", out)
	}

	// The background writer the waypoint's kube source uses.
	ew := kubeapi.NewEventWriter(c.Events(), "ambit-e2e", Logger(t))
	stopEvents := kubeapi.RunEvents(ctx, ew)
	defer stopEvents()
	pod := &unstructured.Unstructured{}
	pod.SetAPIVersion("v1")
	pod.SetKind("Pod")
	pod.SetNamespace("kubeapi-e2e")
	pod.SetName("here")
	ew.Emit(pod, corev1.EventTypeWarning, "Emitted", "queued by the event writer")
	err = poll(ctx, time.Minute, func() error {
		out, err := stack.Kubectl(ctx, "get", "events", "-n", "kubeapi-e2e", "--field-selector", "reason=Emitted",
			"-o", "jsonpath={.items[*].involvedObject.name} {.items[*].type} {.items[*].source.component}")
		if err != nil {
			return err
		}
		if string(out) != "here Warning ambit-e2e" {
			return errors.New("events with reason Emitted: " + string(out))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
