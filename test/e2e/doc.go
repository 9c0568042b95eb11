// Package e2e is Ambit's end-to-end tier against a real Istio control plane: etcd, kube-apiserver and istiod
// (pilot-discovery), built from Go modules by hack/peers/build-istio-stack.sh into the peer cache, run on
// loopback with dynamically chosen ports, and driven with the real kubectl.
//
// Stack (this file's harness) starts the peers, applies the Gateway API and Istio CRDs and the objects
// istiod needs (namespace istio-system, nodes, the ztunnel service account and pod), waits for istiod's root
// certificate and mints a pod-bound ztunnel token, exactly as a node agent in a cluster would have them.
//
// TestAgentOnDemandAgainstIstiod runs in-process node agents with XDS_ON_DEMAND in a network-namespace lab
// (test/meshlab, root) against this istiod, with kernel capture and real connections between lab pods.
//
// The tests carry the build tag e2e, so a plain `go test ./...` never needs the peers; run them with
// `make test-e2e`. Binaries are found through AMBIT_ETCD_BIN_DIR, AMBIT_KUBE_APISERVER_BIN_DIR and
// AMBIT_ISTIOD_DIR, or in the peer cache (${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}) under the versions
// below; kubectl through AMBIT_KUBECTL or the versioned kubectl next to the one on PATH.
package e2e
