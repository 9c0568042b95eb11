package kube

import (
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambit-mesh/ambit/mesh/istio"
)

type podOpt func(*corev1.Pod)

func withLabels(kv ...string) podOpt {
	return func(p *corev1.Pod) {
		p.Labels = map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			p.Labels[kv[i]] = kv[i+1]
		}
	}
}

func withPhase(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }
func withIPs(ips ...string) podOpt {
	return func(p *corev1.Pod) {
		p.Status.PodIPs = nil
		p.Status.PodIP = ""
		for _, ip := range ips {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
		}
		if len(ips) > 0 {
			p.Status.PodIP = ips[0]
		}
	}
}
func hostNetwork(p *corev1.Pod) { p.Spec.HostNetwork = true }
func withAnnotation(p *corev1.Pod) {
	p.Annotations = map[string]string{istio.AnnotationRedirection: istio.RedirectionEnabled}
}
func onNode(n string) podOpt { return func(p *corev1.Pod) { p.Spec.NodeName = n } }

func mkPod(ns, name string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.PodSpec{NodeName: "node-0"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.5", PodIPs: []corev1.PodIP{{IP: "10.244.0.5"}}}}
	for _, o := range opts {
		o(p)
	}
	return p
}

func TestWanted(t *testing.T) {
	ambientNS := map[string]string{"istio.io/dataplane-mode": "ambient"}
	cases := []struct {
		name string
		pod  *corev1.Pod
		ns   map[string]string
		want bool
	}{
		{"namespace ambient", mkPod("a", "p"), ambientNS, true},
		{"namespace ambient, pod opts out", mkPod("a", "p", withLabels("istio.io/dataplane-mode", "none")), ambientNS, false},
		{"namespace ambient, pod label other value", mkPod("a", "p", withLabels("istio.io/dataplane-mode", "sidecar")), ambientNS, true},
		{"pod label ambient, namespace plain", mkPod("a", "p", withLabels("istio.io/dataplane-mode", "ambient")), nil, true},
		{"neither", mkPod("a", "p"), map[string]string{"x": "y"}, false},
		{"namespace label none", mkPod("a", "p"), map[string]string{"istio.io/dataplane-mode": "none"}, false},
		{"host network", mkPod("a", "p", hostNetwork), ambientNS, false},
		{"pending", mkPod("a", "p", withPhase(corev1.PodPending)), ambientNS, false},
		{"succeeded", mkPod("a", "p", withPhase(corev1.PodSucceeded)), ambientNS, false},
		{"running without IP", mkPod("a", "p", withIPs()), ambientNS, false},
		{"running with unparsable IP", mkPod("a", "p", withIPs("bogus")), ambientNS, false},
		{"nil pod", nil, ambientNS, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Wanted(c.pod, c.ns); got != c.want {
				t.Errorf("Wanted = %v, want %v", got, c.want)
			}
		})
	}
}

func TestPodIPs(t *testing.T) {
	cases := []struct {
		name string
		pod  *corev1.Pod
		want []string
	}{
		{"podIPs, IPv4 first", mkPod("a", "p", withIPs("fd00::5", "10.0.0.5")), []string{"10.0.0.5", "fd00::5"}},
		{"podIP only", &corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.6"}}, []string{"10.0.0.6"}},
		{"duplicates and mapped", mkPod("a", "p", withIPs("10.0.0.7", "::ffff:10.0.0.7")), []string{"10.0.0.7"}},
		{"unspecified and invalid dropped", mkPod("a", "p", withIPs("0.0.0.0", "x", "10.0.0.8")), []string{"10.0.0.8"}},
		{"none", mkPod("a", "p", withIPs()), nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var got []string
			for _, a := range PodIPs(c.pod) {
				got = append(got, a.String())
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("PodIPs = %v, want %v", got, c.want)
			}
		})
	}
}

func TestPodFor(t *testing.T) {
	p := podFor(mkPod("demo", "web-1"), "Kubernetes", "example.org")
	want := Pod{UID: "Kubernetes//Pod/demo/web-1", Namespace: "demo", Name: "web-1", ServiceAccount: "default",
		IPs: []netip.Addr{netip.MustParseAddr("10.244.0.5")}, Identity: "spiffe://example.org/ns/demo/sa/default"}
	if !samePod(p, want) || p.Namespace != want.Namespace || p.Name != want.Name || p.ServiceAccount != want.ServiceAccount {
		t.Errorf("podFor = %+v, want %+v", p, want)
	}
}

func TestPlanAnnotations(t *testing.T) {
	deleting := func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{} }
	cases := []struct {
		name        string
		pods        []*corev1.Pod
		captured    []string
		add, remove []string
	}{
		{"captured without annotation gets it", []*corev1.Pod{mkPod("a", "p1"), mkPod("a", "p2", withAnnotation)},
			[]string{"a/p1", "a/p2"}, []string{"a/p1"}, nil},
		{"annotated but not captured loses it", []*corev1.Pod{mkPod("a", "p1", withAnnotation), mkPod("b", "p0")},
			nil, nil, []string{"a/p1"}},
		{"annotation with another value counts as absent", []*corev1.Pod{mkPod("a", "p1", func(p *corev1.Pod) {
			p.Annotations = map[string]string{istio.AnnotationRedirection: "disabled"}
		})}, []string{"a/p1"}, []string{"a/p1"}, nil},
		{"pods being deleted are left alone", []*corev1.Pod{mkPod("a", "p1", withAnnotation, deleting), mkPod("a", "p2", deleting)},
			[]string{"a/p2"}, nil, nil},
		{"sorted by namespace then name", []*corev1.Pod{mkPod("b", "x"), mkPod("a", "z"), mkPod("a", "y")},
			[]string{"b/x", "a/z", "a/y"}, []string{"a/y", "a/z", "b/x"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cap := map[string]bool{}
			for _, k := range c.captured {
				ns, name, _ := cutSlash(k)
				cap[WorkloadUID("Kubernetes", ns, name)] = true
			}
			plan := PlanAnnotations(c.pods, cap, "Kubernetes")
			if got := names(plan.Add); !slices.Equal(got, c.add) {
				t.Errorf("Add = %v, want %v", got, c.add)
			}
			if got := names(plan.Remove); !slices.Equal(got, c.remove) {
				t.Errorf("Remove = %v, want %v", got, c.remove)
			}
		})
	}
}

func cutSlash(s string) (string, string, bool) {
	for i := range s {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func names(pods []*corev1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Namespace+"/"+p.Name)
	}
	return out
}

func TestAnnotationPatch(t *testing.T) {
	if got := string(annotationPatch(true)); got != `{"metadata":{"annotations":{"ambient.istio.io/redirection":"enabled"}}}` {
		t.Errorf("set patch = %s", got)
	}
	if got := string(annotationPatch(false)); got != `{"metadata":{"annotations":{"ambient.istio.io/redirection":null}}}` {
		t.Errorf("remove patch = %s", got)
	}
}
