// Package kube is the Kubernetes tier of the end-to-end tests: a real control plane (etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and istiod with its waypoint deployment controller) on loopback, two
// network-namespace lab nodes run by the netns kubelet (test/kubelet), Ambit installed from manifests/ambit.yaml
// as a DaemonSet, and Istio's waypoint walkthrough driven with the real kubectl and ambitctl, with the path of
// every request read from the agents' and waypoints' access logs. TestGatewayMeshConformance runs the upstream
// Gateway API mesh conformance suite (GAMMA, sigs.k8s.io/gateway-api/conformance) against a namespace waypoint,
// with Istio's echo app (hack/peers/build-istio-echo.sh) and the kubelet's cluster DNS.
//
// The tests carry the build tag e2e and need root (network namespaces, eBPF); run them with `make test-e2e-kube`.
package kube
