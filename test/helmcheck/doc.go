// Package helmcheck renders Ambit's Helm chart (charts/ambit) with Helm's own Go packages, exactly as
// `helm template` does, and checks the result: every object parses as its Kubernetes type, the DaemonSet and
// the waypoint class configuration say what the docs say, values flow into the right places, and the default
// rendering is byte for byte manifests/ambit.yaml (the static install manifest; regenerate it with
// `go test . -update`). It is a module of its own so that the ambit module does not depend on Helm.
//
// The real API server's verdict on these objects (server-side dry-run) is in test/e2e.
package helmcheck
