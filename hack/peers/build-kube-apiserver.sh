#!/usr/bin/env bash
# build-kube-apiserver.sh builds kube-apiserver (k8s.io/kubernetes, pinned) from the Go module proxy into the
# peer cache and prints the directory holding the binary.
#
# Cache layout: ${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/kube-apiserver-${K8S_VERSION}/bin/kube-apiserver
# k8s.io/kubernetes requires its staging modules at v0.0.0 through replace directives; the scratch module
# replaces each of them with the published v0.<minor>.<patch> release. The version -ldflags make the server
# report a parseable version (kubectl needs it).
#
# Environment: AMBIT_PEER_CACHE, K8S_VERSION (default v1.36.3; test/e2e expects it), GO.
# Usage: hack/peers/build-kube-apiserver.sh   -> prints the bin directory on stdout, progress on stderr
set -euo pipefail
. "$(dirname "$0")/lib.sh"

K8S_VERSION=${K8S_VERSION:-v1.36.3}
DEST="$CACHE_ROOT/kube-apiserver-$K8S_VERSION"
if peer_hit "$DEST" bin/kube-apiserver; then
	echo "build-kube-apiserver: cache hit in $DEST" >&2
	echo "$DEST/bin"
	exit 0
fi

minor=$(echo "$K8S_VERSION" | cut -d. -f2)
STAGING="v0.${K8S_VERSION#v1.}"
start=$(date +%s)
peer_stage kube-apiserver "$K8S_VERSION"
trap 'rm -rf "$STAGE"' EXIT
echo "build-kube-apiserver: building kube-apiserver $K8S_VERSION in $STAGE (cold: ~3 min of compile on 2 cores)" >&2
(
	cd "$STAGE/mod"
	export GOFLAGS=-mod=mod GOWORK=off
	gomod=$(run_go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
	req=$(sed -n '/^require/,/^)/p' "$gomod" | grep -E '^\s+k8s.io/[a-z-]+ v0.0.0$' | awk '{print $1}')
	{
		printf 'module ambit.local/peers/kapi\n\ngo 1.26.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n' "$K8S_VERSION"
		for m in $req; do printf '\t%s => %s %s\n' "$m" "$m" "$STAGING"; done
		printf ')\n'
	} >go.mod
	printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kube-apiserver"\n' >tools.go
	run_go mod tidy >&2
	run_go build -trimpath -ldflags "-X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
		-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
		-X k8s.io/component-base/version.gitTreeState=clean" \
		-o "$STAGE/bin/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2
	cp go.mod "$STAGE/go.mod.used"
)
peer_publish kube-apiserver "$STAGE" "$DEST" "$start" bin/kube-apiserver
trap - EXIT
echo "$DEST/bin"
