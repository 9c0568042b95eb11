#!/usr/bin/env bash
# build-etcd.sh builds etcd and etcdctl (go.etcd.io/etcd v3.6, pinned) from the Go module proxy into the peer
# cache and prints the directory holding the binaries.
#
# Cache layout: ${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/etcd-${ETCD_VERSION}/bin/{etcd,etcdctl}
# `go install go.etcd.io/etcd/server/v3@...` is refused (its go.mod has replace directives), so the build
# happens in a scratch module that requires the server and etcdctl modules.
#
# Environment: AMBIT_PEER_CACHE, ETCD_VERSION (default v3.6.16; test/e2e expects it), GO.
# Usage: hack/peers/build-etcd.sh   -> prints the bin directory on stdout, progress on stderr
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
DEST="$CACHE_ROOT/etcd-$ETCD_VERSION"
if peer_hit "$DEST" bin/etcd bin/etcdctl; then
	echo "build-etcd: cache hit in $DEST" >&2
	echo "$DEST/bin"
	exit 0
fi

start=$(date +%s)
peer_stage etcd "$ETCD_VERSION"
trap 'rm -rf "$STAGE"' EXIT
echo "build-etcd: building etcd $ETCD_VERSION in $STAGE" >&2
(
	cd "$STAGE/mod"
	export GOFLAGS=-mod=mod GOWORK=off
	cat >go.mod <<M
module ambit.local/peers/etcd

go 1.26.0

require (
	go.etcd.io/etcd/server/v3 $ETCD_VERSION
	go.etcd.io/etcd/etcdctl/v3 $ETCD_VERSION
)
M
	printf '//go:build tools\n\npackage tools\n\nimport (\n\t_ "go.etcd.io/etcd/server/v3"\n\t_ "go.etcd.io/etcd/etcdctl/v3"\n)\n' >tools.go
	run_go mod tidy >&2
	run_go build -trimpath -o "$STAGE/bin/etcd" go.etcd.io/etcd/server/v3 >&2
	run_go build -trimpath -o "$STAGE/bin/etcdctl" go.etcd.io/etcd/etcdctl/v3 >&2
	cp go.mod "$STAGE/go.mod.used"
)
peer_publish etcd "$STAGE" "$DEST" "$start" bin/etcd bin/etcdctl
trap - EXIT
echo "$DEST/bin"
