#!/usr/bin/env bash
# build-istioctl.sh builds istioctl from the same istio.io/istio pseudo-version as build-istiod.sh into the peer
# cache and prints the directory holding it. test/e2e runs it next to ambitctl against the real API server, so
# that `ambitctl waypoint ...` is compared with `istioctl waypoint ...` byte for byte.
#
# Cache layout: ${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/istioctl-${ISTIO_VERSION}/bin/istioctl
#
# Environment: AMBIT_PEER_CACHE, ISTIO_VERSION (default v0.0.0-20260827124520-eed52ebb66ad; test/e2e expects
# it), ISTIO_LABEL (default 1.31-dev), GO.
# Usage: hack/peers/build-istioctl.sh   -> prints the bin directory on stdout, progress on stderr
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ISTIO_VERSION=${ISTIO_VERSION:-v0.0.0-20260827124520-eed52ebb66ad}
ISTIO_LABEL=${ISTIO_LABEL:-1.31-dev}
DEST="$CACHE_ROOT/istioctl-$ISTIO_VERSION"
if peer_hit "$DEST" bin/istioctl; then
	echo "build-istioctl: cache hit in $DEST" >&2
	echo "$DEST/bin"
	exit 0
fi

rev=${ISTIO_VERSION##*-}
start=$(date +%s)
peer_stage istioctl "$ISTIO_VERSION"
trap 'rm -rf "$STAGE"' EXIT
echo "build-istioctl: building istioctl $ISTIO_VERSION in $STAGE" >&2
(
	cd "$STAGE/mod"
	export GOFLAGS=-mod=mod GOWORK=off
	printf 'module ambit.local/peers/istioctl\n\ngo 1.26.0\n\nrequire istio.io/istio %s\n' "$ISTIO_VERSION" >go.mod
	printf '//go:build tools\n\npackage tools\n\nimport _ "istio.io/istio/istioctl/cmd/istioctl"\n' >tools.go
	run_go mod tidy >&2
	run_go build -trimpath -ldflags "-X istio.io/istio/pkg/version.buildVersion=$ISTIO_LABEL \
		-X istio.io/istio/pkg/version.buildGitRevision=$rev -X istio.io/istio/pkg/version.buildStatus=Clean" \
		-o "$STAGE/bin/istioctl" istio.io/istio/istioctl/cmd/istioctl >&2
	cp go.mod "$STAGE/go.mod.used"
)
peer_publish istioctl "$STAGE" "$DEST" "$start" bin/istioctl
trap - EXIT
echo "$DEST/bin"
