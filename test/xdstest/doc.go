// Package xdstest runs an in-process delta xDS server for tests: go-control-plane's ADS server over one
// LinearCache per type URL (any type URL, including Istio's workload types), on a loopback TCP listener,
// optionally with TLS and a required bearer token. It records every request it receives, so tests can check
// ACKs, NACK details, node metadata and initial_resource_versions, and it can be stopped and restarted on
// the same address to exercise reconnects. It also has builders for istio.workload and istio.security
// resources. Production code never imports it.
package xdstest
