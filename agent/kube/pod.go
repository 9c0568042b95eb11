package kube

import (
	"cmp"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/ambit-mesh/ambit/mesh/istio"
	"github.com/ambit-mesh/ambit/mesh/state"
)

// Pod is a pod of the node that the agent should capture.
type Pod struct {
	// UID is istiod's workload UID for the pod: "<cluster>//Pod/<namespace>/<name>".
	UID string
	// Namespace and Name name the pod; ServiceAccount is its service account (default "default").
	Namespace, Name, ServiceAccount string
	// IPs are the pod's addresses from its status, IPv4 first.
	IPs []netip.Addr
	// Identity is the pod's SPIFFE ID: spiffe://<trust domain>/ns/<namespace>/sa/<service account>.
	Identity string
}

// Wanted reports whether the node agent captures pod, given its namespace's labels: istio-cni's default
// selector (istio.Enrolled; host-network pods never) on a pod that is Running and has an IP.
func Wanted(pod *corev1.Pod, nsLabels map[string]string) bool {
	if pod == nil || pod.Status.Phase != corev1.PodRunning || len(PodIPs(pod)) == 0 {
		return false
	}
	return istio.Enrolled(pod.Labels, nsLabels, pod.Spec.HostNetwork)
}

// PodIPs returns the valid addresses in pod's status (status.podIPs, else status.podIP), IPv4 first, without
// duplicates.
func PodIPs(pod *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	add := func(s string) {
		a, err := netip.ParseAddr(s)
		if err != nil || a.IsUnspecified() {
			return
		}
		if a = a.Unmap(); !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	for _, ip := range pod.Status.PodIPs {
		add(ip.IP)
	}
	if len(out) == 0 {
		add(pod.Status.PodIP)
	}
	slices.SortStableFunc(out, func(a, b netip.Addr) int { return cmp.Compare(a.BitLen(), b.BitLen()) })
	return out
}

// WorkloadUID is the UID istiod gives a pod's workload.
func WorkloadUID(clusterID, namespace, name string) string {
	return clusterID + "//Pod/" + namespace + "/" + name
}

// podFor describes pod for the agent.
func podFor(pod *corev1.Pod, clusterID, trustDomain string) Pod {
	sa := cmp.Or(pod.Spec.ServiceAccountName, "default")
	return Pod{
		UID:            WorkloadUID(clusterID, pod.Namespace, pod.Name),
		Namespace:      pod.Namespace,
		Name:           pod.Name,
		ServiceAccount: sa,
		IPs:            PodIPs(pod),
		Identity:       state.SPIFFEID(trustDomain, pod.Namespace, sa),
	}
}

// annotated reports whether pod carries the redirection annotation set to enabled.
func annotated(pod *corev1.Pod) bool {
	return pod.Annotations[istio.AnnotationRedirection] == istio.RedirectionEnabled
}
