#!/usr/bin/env bash
# build-spire.sh builds the SPIRE server and agent (github.com/spiffe/spire, pinned) from the Go module proxy
# into a cache directory outside the repository, and prints the directory holding the two binaries.
#
# Cache layout: ${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/spire-${SPIRE_VERSION}/bin/{spire-server,spire-agent}
# A cache hit (both binaries present and executable) returns at once. The build happens in a scratch module
# (the SPIRE module is consumed as a Go tool dependency: `go get -tool`), then the result is moved into place
# atomically, so an interrupted build never leaves a half-filled cache entry.
#
# Environment:
#   AMBIT_PEER_CACHE  cache root (default /var/cache/ambit-peers)
#   SPIRE_VERSION     module version (default v1.13.3; tests expect this one)
#   GO                go command (default go)
#
# Usage: hack/peers/build-spire.sh        -> prints the bin directory on stdout, progress on stderr
#        AMBIT_SPIRE_BIN_DIR=$(hack/peers/build-spire.sh) go test ./test/spire/...
set -euo pipefail

SPIRE_VERSION=${SPIRE_VERSION:-v1.13.3}
CACHE_ROOT=${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}
GO=${GO:-go}
DEST="$CACHE_ROOT/spire-$SPIRE_VERSION"

if [[ -x "$DEST/bin/spire-server" && -x "$DEST/bin/spire-agent" ]]; then
	echo "build-spire: cache hit in $DEST" >&2
	echo "$DEST/bin"
	exit 0
fi

mkdir -p "$CACHE_ROOT"
STAGE=$(mktemp -d "$CACHE_ROOT/.spire-$SPIRE_VERSION.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

start=$(date +%s)
echo "build-spire: building spire $SPIRE_VERSION in $STAGE (cold build takes minutes on 2 cores)" >&2
mkdir -p "$STAGE/mod" "$STAGE/bin"
(
	cd "$STAGE/mod"
	export GOFLAGS=-mod=mod GOWORK=off
	"$GO" mod init ambit.local/peers/spire >/dev/null 2>&1
	"$GO" get -tool "github.com/spiffe/spire/cmd/spire-server@$SPIRE_VERSION" "github.com/spiffe/spire/cmd/spire-agent@$SPIRE_VERSION" >&2
	"$GO" build -trimpath -o "$STAGE/bin/" github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent >&2
	cp go.mod "$STAGE/go.mod.used"
)
end=$(date +%s)
{
	echo "spire $SPIRE_VERSION"
	"$GO" version
	echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $((end - start)) s"
} >"$STAGE/BUILDINFO"
rm -rf "$STAGE/mod"
chmod 0755 "$STAGE"

# Publish atomically; if a concurrent build won the race, keep its result.
if ! mv -T "$STAGE" "$DEST" 2>/dev/null; then
	[[ -x "$DEST/bin/spire-server" && -x "$DEST/bin/spire-agent" ]] || { echo "build-spire: cannot publish $DEST" >&2; exit 1; }
	echo "build-spire: $DEST appeared concurrently; using it" >&2
fi
trap - EXIT
rm -rf "$STAGE"
echo "build-spire: built in $((end - start)) s: $(du -sh "$DEST/bin" | cut -f1)" >&2
echo "$DEST/bin"
