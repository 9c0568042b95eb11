#!/usr/bin/env bash
# build-istio-echo.sh builds Istio's Go echo app (istio.io/istio/pkg/test/echo/cmd/server and .../client) from the
# same istio.io/istio pseudo-version as build-istiod.sh into the peer cache and prints the directory holding it.
# The Gateway API mesh conformance suite (test/e2e/kube/gamma_test.go) runs it as its echo image: the server in
# every backend pod, the client driven by exec into the client pod.
#
# Cache layout: ${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/istio-echo-${ISTIO_VERSION}/bin/{server,client}
#
# Environment: AMBIT_PEER_CACHE, ISTIO_VERSION (default v0.0.0-20260827124520-eed52ebb66ad), GO.
# Usage: hack/peers/build-istio-echo.sh   -> prints the bin directory on stdout, progress on stderr
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ISTIO_VERSION=${ISTIO_VERSION:-v0.0.0-20260827124520-eed52ebb66ad}
DEST="$CACHE_ROOT/istio-echo-$ISTIO_VERSION"
if peer_hit "$DEST" bin/server bin/client; then
	echo "build-istio-echo: cache hit in $DEST" >&2
	echo "$DEST/bin"
	exit 0
fi

start=$(date +%s)
peer_stage istio-echo "$ISTIO_VERSION"
trap 'rm -rf "$STAGE"' EXIT
echo "build-istio-echo: building the echo server and client $ISTIO_VERSION in $STAGE" >&2
(
	cd "$STAGE/mod"
	export GOFLAGS=-mod=mod GOWORK=off CGO_ENABLED=0
	printf 'module ambit.local/peers/istio-echo\n\ngo 1.26.0\n\nrequire istio.io/istio %s\n' "$ISTIO_VERSION" >go.mod
	printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "istio.io/istio/pkg/test/echo/cmd/client"\n\t_ "istio.io/istio/pkg/test/echo/cmd/server"\n)\n' >tools.go
	run_go mod tidy >&2
	run_go build -trimpath -o "$STAGE/bin/server" istio.io/istio/pkg/test/echo/cmd/server >&2
	run_go build -trimpath -o "$STAGE/bin/client" istio.io/istio/pkg/test/echo/cmd/client >&2
	cp go.mod "$STAGE/go.mod.used"
)
peer_publish istio-echo "$STAGE" "$DEST" "$start" bin/server bin/client
trap - EXIT
echo "$DEST/bin"
