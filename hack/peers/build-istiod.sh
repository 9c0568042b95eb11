#!/usr/bin/env bash
# build-istiod.sh builds istiod (pilot-discovery, from the istio.io/istio module, pinned) into the peer cache,
# copies the CRDs it needs (Istio's crd-all.gen.yaml and the Gateway API CRDs, standard and experimental channel,
# at the version istio requires) next to it, and prints the cache entry's directory.
#
# Cache layout: ${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/istiod-${ISTIO_VERSION}/
#   bin/pilot-discovery
#   crds/istio/crd-all.gen.yaml
#   crds/gateway-api/*.yaml                 Gateway API standard channel
#   crds/gateway-api-experimental/*.yaml    Gateway API experimental channel (what the e2e tiers install)
#   charts/istio-discovery/{files/waypoint.yaml,values.yaml}   istiod's waypoint template and chart defaults
# istio.io/istio has no semver tags, only pseudo-versions; the default is master of 2026-08-27 (1.31-dev).
#
# Environment: AMBIT_PEER_CACHE, ISTIO_VERSION (default v0.0.0-20260827124520-eed52ebb66ad; test/e2e expects
# it), ISTIO_LABEL (version string baked into the binary, default 1.31-dev), GO.
# Usage: hack/peers/build-istiod.sh   -> prints the entry directory on stdout, progress on stderr
set -euo pipefail
. "$(dirname "$0")/lib.sh"

ISTIO_VERSION=${ISTIO_VERSION:-v0.0.0-20260827124520-eed52ebb66ad}
ISTIO_LABEL=${ISTIO_LABEL:-1.31-dev}
DEST="$CACHE_ROOT/istiod-$ISTIO_VERSION"

# copy_charts MODULE_DIR TARGET: the parts of Istio's istio-discovery chart that istiod's injection
# configuration is made of (test/e2e renders waypoint Deployments with them).
copy_charts() {
	local src="$1/manifests/charts/istio-control/istio-discovery" dst="$2/charts/istio-discovery"
	mkdir -p "$dst/files"
	cp "$src/values.yaml" "$dst/"
	cp "$src/files/waypoint.yaml" "$dst/files/"
	chmod -R u+w "$dst"
}

# copy_gateway_crds GATEWAY_API_MODULE_DIR TARGET: both channels of the Gateway API CRDs.
copy_gateway_crds() {
	mkdir -p "$2/crds/gateway-api" "$2/crds/gateway-api-experimental"
	cp "$1"/config/crd/standard/gateway.networking*.yaml "$2/crds/gateway-api/"
	cp "$1"/config/crd/experimental/gateway.networking*.yaml "$2/crds/gateway-api-experimental/"
	chmod -R u+w "$2/crds"
}

ENTRY_FILES=(bin/pilot-discovery crds/istio/crd-all.gen.yaml crds/gateway-api crds/gateway-api-experimental
	charts/istio-discovery/files/waypoint.yaml)
if peer_hit "$DEST" "${ENTRY_FILES[@]}"; then
	echo "build-istiod: cache hit in $DEST" >&2
	echo "$DEST"
	exit 0
fi

start=$(date +%s)
if peer_complete "$DEST" bin/pilot-discovery crds/istio/crd-all.gen.yaml crds/gateway-api GATEWAY_API_VERSION; then
	# An entry from before the charts or the experimental CRDs were cached: a new entry made of its files and the
	# missing ones (module downloads only, no build) replaces it; the old one is never changed in place.
	peer_stage istiod "$ISTIO_VERSION"
	trap 'rm -rf "$STAGE"' EXIT
	cp -a "$DEST/." "$STAGE/"
	if [[ ! -e "$STAGE/charts/istio-discovery/files/waypoint.yaml" ]]; then
		dir=$(GOFLAGS=-mod=mod run_go mod download -json "istio.io/istio@$ISTIO_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
		copy_charts "$dir" "$STAGE"
	fi
	gwv=$(awk '{print $2}' "$STAGE/GATEWAY_API_VERSION")
	gw=$(GOFLAGS=-mod=mod run_go mod download -json "sigs.k8s.io/gateway-api@$gwv" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
	copy_gateway_crds "$gw" "$STAGE"
	peer_publish istiod "$STAGE" "$DEST" "$start" "${ENTRY_FILES[@]}"
	trap - EXIT
	echo "build-istiod: added the missing charts or CRDs to $DEST" >&2
	echo "$DEST"
	exit 0
fi

rev=${ISTIO_VERSION##*-}
peer_stage istiod "$ISTIO_VERSION"
trap 'rm -rf "$STAGE"' EXIT
echo "build-istiod: building pilot-discovery $ISTIO_VERSION in $STAGE (cold: ~3.5 min of compile on 2 cores)" >&2
(
	cd "$STAGE/mod"
	export GOFLAGS=-mod=mod GOWORK=off
	printf 'module ambit.local/peers/istiod\n\ngo 1.26.0\n\nrequire istio.io/istio %s\n' "$ISTIO_VERSION" >go.mod
	printf '//go:build tools\n\npackage tools\n\nimport _ "istio.io/istio/pilot/cmd/pilot-discovery"\n' >tools.go
	run_go mod tidy >&2
	run_go build -trimpath -ldflags "-X istio.io/istio/pkg/version.buildVersion=$ISTIO_LABEL \
		-X istio.io/istio/pkg/version.buildGitRevision=$rev -X istio.io/istio/pkg/version.buildStatus=Clean" \
		-o "$STAGE/bin/pilot-discovery" istio.io/istio/pilot/cmd/pilot-discovery >&2
	istio=$(run_go list -m -f '{{.Dir}}' istio.io/istio)
	gw=$(run_go list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)
	run_go list -m sigs.k8s.io/gateway-api >"$STAGE/GATEWAY_API_VERSION"
	mkdir -p "$STAGE/crds/istio"
	cp "$istio/manifests/charts/base/files/crd-all.gen.yaml" "$STAGE/crds/istio/"
	copy_gateway_crds "$gw" "$STAGE"
	copy_charts "$istio" "$STAGE"
	chmod -R u+w "$STAGE/crds"
	cp go.mod "$STAGE/go.mod.used"
)
peer_publish istiod "$STAGE" "$DEST" "$start" "${ENTRY_FILES[@]}"
trap - EXIT
echo "$DEST"
