#!/usr/bin/env bash
# build-kube-controllers.sh builds kube-controller-manager and kube-scheduler (k8s.io/kubernetes, pinned; the
# same module, staging replaces and version -ldflags as build-kube-apiserver.sh) into the peer cache and prints
# the directory holding the binaries.
#
# Cache layout: ${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/kube-controllers-${K8S_VERSION}/bin/
#   kube-controller-manager, kube-scheduler
# After build-kube-apiserver.sh the shared packages are in the Go build cache, so a cold build mostly compiles the
# controllers themselves.
#
# Environment: AMBIT_PEER_CACHE, K8S_VERSION (default v1.36.3; test/e2e expects it), GO.
# Usage: hack/peers/build-kube-controllers.sh   -> prints the bin directory on stdout, progress on stderr
set -euo pipefail
. "$(dirname "$0")/lib.sh"

K8S_VERSION=${K8S_VERSION:-v1.36.3}
DEST="$CACHE_ROOT/kube-controllers-$K8S_VERSION"
if peer_hit "$DEST" bin/kube-controller-manager bin/kube-scheduler; then
	echo "build-kube-controllers: cache hit in $DEST" >&2
	echo "$DEST/bin"
	exit 0
fi

minor=$(echo "$K8S_VERSION" | cut -d. -f2)
STAGING="v0.${K8S_VERSION#v1.}"
start=$(date +%s)
peer_stage kube-controllers "$K8S_VERSION"
trap 'rm -rf "$STAGE"' EXIT
echo "build-kube-controllers: building kube-controller-manager and kube-scheduler $K8S_VERSION in $STAGE" >&2
(
	cd "$STAGE/mod"
	export GOFLAGS=-mod=mod GOWORK=off
	gomod=$(run_go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
	req=$(sed -n '/^require/,/^)/p' "$gomod" | grep -E '^\s+k8s.io/[a-z-]+ v0.0.0$' | awk '{print $1}')
	{
		printf 'module ambit.local/peers/kcontrollers\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
		for m in $req; do printf '\t%s => %s %s\n' "$m" "$m" "$STAGING"; done
		printf ')\n'
	} >go.mod
	printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "k8s.io/kubernetes/cmd/kube-controller-manager"\n\t_ "k8s.io/kubernetes/cmd/kube-scheduler"\n)\n' >tools.go
	run_go mod tidy >&2
	ldflags="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 \
		-X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
	for c in kube-controller-manager kube-scheduler; do
		run_go build -trimpath -ldflags "$ldflags" -o "$STAGE/bin/$c" "k8s.io/kubernetes/cmd/$c" >&2
	done
	cp go.mod "$STAGE/go.mod.used"
)
peer_publish kube-controllers "$STAGE" "$DEST" "$start" bin/kube-controller-manager bin/kube-scheduler
trap - EXIT
echo "$DEST/bin"
