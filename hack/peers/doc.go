// Package peers holds the tests of the peer build scripts in this directory (build-*.sh and their shared lib.sh),
// which build etcd, kube-apiserver, the kube controllers, istiod, istioctl, Istio's echo app and SPIRE from Go
// modules into the peer cache. It has no Go API.
package peers
