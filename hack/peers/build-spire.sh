#!/usr/bin/env bash
# build-spire.sh builds the SPIRE server and agent (github.com/spiffe/spire, pinned) from the Go module proxy
# into a cache directory outside the repository, and prints the directory holding the two binaries.
#
# Cache layout: ${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/spire-${SPIRE_VERSION}/bin/{spire-server,spire-agent}
# A cache hit (both binaries present) returns at once. The build happens in a scratch module (the SPIRE module is
# consumed as a Go tool dependency: `go get -tool`) in a staging directory, then the result is moved into place
# atomically (lib.sh), so an interrupted build never leaves a half-filled cache entry.
#
# Environment:
#   AMBIT_PEER_CACHE  cache root (default /var/cache/ambit-peers)
#   SPIRE_VERSION     module version (default v1.13.3; tests expect this one)
#   GO                go command (default go)
#
# Usage: hack/peers/build-spire.sh        -> prints the bin directory on stdout, progress on stderr
#        AMBIT_SPIRE_BIN_DIR=$(hack/peers/build-spire.sh) go test ./test/spire/...
set -euo pipefail
. "$(dirname "$0")/lib.sh"

SPIRE_VERSION=${SPIRE_VERSION:-v1.13.3}
DEST="$CACHE_ROOT/spire-$SPIRE_VERSION"

if peer_hit "$DEST" bin/spire-server bin/spire-agent; then
	echo "build-spire: cache hit in $DEST" >&2
	echo "$DEST/bin"
	exit 0
fi

start=$(date +%s)
peer_stage spire "$SPIRE_VERSION"
trap 'rm -rf "$STAGE"' EXIT
echo "build-spire: building spire $SPIRE_VERSION in $STAGE (cold build takes minutes on 2 cores)" >&2
(
	cd "$STAGE/mod"
	export GOFLAGS=-mod=mod GOWORK=off
	run_go mod init ambit.local/peers/spire >/dev/null 2>&1
	run_go get -tool "github.com/spiffe/spire/cmd/spire-server@$SPIRE_VERSION" "github.com/spiffe/spire/cmd/spire-agent@$SPIRE_VERSION" >&2
	run_go build -trimpath -o "$STAGE/bin/" github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent >&2
	cp go.mod "$STAGE/go.mod.used"
)
peer_publish spire "$STAGE" "$DEST" "$start" bin/spire-server bin/spire-agent
trap - EXIT
echo "build-spire: built in $(($(date +%s) - start)) s: $(du -sh "$DEST/bin" | cut -f1)" >&2
echo "$DEST/bin"
