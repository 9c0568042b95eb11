package kube

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/mesh/istio"
	"github.com/ambit-mesh/ambit/test/kubefake"
	"github.com/ambit-mesh/ambit/test/testutil"
)

func ns(name string, kv ...string) *corev1.Namespace {
	n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}}
	for i := 0; i+1 < len(kv); i += 2 {
		n.Labels[kv[i]] = kv[i+1]
	}
	return n
}

func uids(pods []Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.UID)
	}
	return out
}

func TestNewValidates(t *testing.T) {
	if _, err := New(Options{NodeName: "n"}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("New without client = %v", err)
	}
	if _, err := New(Options{Client: kubefake.New()}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("New without node = %v", err)
	}
}

// TestWatcher follows pods and namespace labels through informers on a fake clientset and keeps the
// redirection annotation on the captured pods only.
func TestWatcher(t *testing.T) {
	testutil.CheckGoroutines(t)
	client := kubefake.New(
		ns("amb", "istio.io/dataplane-mode", "ambient"), ns("plain"),
		mkPod("amb", "web"), mkPod("amb", "optout", withLabels("istio.io/dataplane-mode", "none")),
		mkPod("amb", "elsewhere", onNode("node-1")), mkPod("plain", "solo", withLabels("istio.io/dataplane-mode", "ambient")),
		mkPod("plain", "stale", withAnnotation), mkPod("amb", "hostnet", hostNetwork),
	)
	w, err := New(Options{Client: client, NodeName: "node-0", RetryInterval: 20 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	select {
	case <-w.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("not synced")
	}
	want := []string{"Kubernetes//Pod/amb/web", "Kubernetes//Pod/plain/solo"}
	if got := uids(w.Wanted()); !slices.Equal(got, want) {
		t.Fatalf("Wanted = %v, want %v", got, want)
	}
	annotation := func(ns, name string) string {
		p, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "error: " + err.Error()
		}
		return p.Annotations[istio.AnnotationRedirection]
	}
	// Before the agent reports its captured set, annotations are left alone.
	time.Sleep(50 * time.Millisecond)
	if got := annotation("plain", "stale"); got != istio.RedirectionEnabled {
		t.Errorf("stale annotation touched before SetCaptured: %q", got)
	}

	w.SetCaptured(want)
	testutil.WaitFor(t, 10*time.Second, "annotations follow the captured set", func() bool {
		return annotation("amb", "web") == istio.RedirectionEnabled && annotation("plain", "solo") == istio.RedirectionEnabled &&
			annotation("plain", "stale") == "" && annotation("amb", "optout") == ""
	})

	// The namespace loses its label: web leaves the wanted set, and a change is signalled.
	changed := w.Changed()
	plain := ns("amb")
	if _, err := client.CoreV1().Namespaces().Update(ctx, plain, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no change signalled")
	}
	if got := uids(w.Wanted()); !slices.Equal(got, []string{"Kubernetes//Pod/plain/solo"}) {
		t.Errorf("Wanted after namespace unlabel = %v", got)
	}
	w.SetCaptured(uids(w.Wanted()))
	testutil.WaitFor(t, 10*time.Second, "web's annotation removed", func() bool { return annotation("amb", "web") == "" })

	// A pod that stops running leaves the set too.
	solo, _ := client.CoreV1().Pods("plain").Get(ctx, "solo", metav1.GetOptions{})
	solo.Status.Phase = corev1.PodSucceeded
	if _, err := client.CoreV1().Pods("plain").UpdateStatus(ctx, solo, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, 10*time.Second, "solo leaves", func() bool { return len(w.Wanted()) == 0 })
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
