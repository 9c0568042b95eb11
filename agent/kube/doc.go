// Package kube is the node agent's pod enrollment from the Kubernetes API, the role istio-cni plays next to
// ztunnel. A Watcher watches the pods of one node (field selector spec.nodeName) and every namespace's labels
// with client-go informers, and keeps the set of pods the agent must capture: those istio-cni's default
// selector picks (pod label istio.io/dataplane-mode=ambient, or namespace label ambient and pod label not
// none; see mesh/istio.Enrolled) that are not host-network and are Running with an IP (Wanted).
//
// The agent captures the wanted pods and tells the Watcher which it captured (SetCaptured). The Watcher then
// keeps the pod annotation ambient.istio.io/redirection=enabled on exactly those pods: istiod marks a workload
// HBONE only when it sees the annotation, so it is set after capture is in place and removed once capture is
// gone. The annotation sync is level-triggered and retried, so it catches up after an API server outage.
//
// Restarts: the informers' first complete listing (Synced) is what the agent waits for before it reconciles
// capture, so a restarted agent re-adopts the pods it had captured instead of dropping them. While the API
// server is unreachable the informers keep their last view and capture stays as it is.
//
// It must not import config/ (enrollment reads the API server, not the configuration) or waypoint/.
package kube
