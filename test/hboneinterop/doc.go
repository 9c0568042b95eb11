// Package hboneinterop tests Ambit's HBONE against Istio's own Go implementation,
// istio.io/istio/pkg/hbone, in both directions over mutual TLS with SPIFFE certificates. It is a
// separate module so that istio.io/istio never enters the ambit binary's dependency graph.
package hboneinterop
