// Package kube is the Kubernetes tier of the end-to-end tests: a real control plane (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and istiod with its waypoint deployment controller) on loopback, two
// network-namespace lab nodes run by the netns kubelet (test/kubelet), Ambit installed from manifests/ambit.yaml
// as a DaemonSet, and Istio's waypoint walkthrough driven with the real kubectl and ambitctl, with the path of
// every request read from the agents' and waypoints' access logs.
//
// The tests carry the build tag e2e and need root (network namespaces, eBPF); run them with `make test-e2e-kube`.
package kube
