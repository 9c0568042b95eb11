# lib.sh: shared helpers for the hack/peers/build-*.sh scripts (sourced, not executed).
#
# Cache convention (shared with build-spire.sh): ${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/<name>-<version>/,
# holding bin/ and a BUILDINFO file. An entry is built in a staging directory next to it and published with an
# atomic rename, so an interrupted build never leaves a half-filled entry.

CACHE_ROOT=${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}
GO=${GO:-go}

# peer_stage NAME VERSION: creates and prints a staging directory for NAME-VERSION; removed on exit unless published.
peer_stage() {
	mkdir -p "$CACHE_ROOT"
	local stage
	stage=$(mktemp -d "$CACHE_ROOT/.$1-$2.XXXXXX")
	mkdir -p "$stage/bin" "$stage/mod"
	echo "$stage"
}

# peer_publish NAME STAGE DEST START_EPOCH CHECK_FILE...: writes BUILDINFO, drops the scratch module and renames
# STAGE to DEST; if DEST appeared concurrently and is complete, keeps it.
peer_publish() {
	local name=$1 stage=$2 dest=$3 start=$4
	shift 4
	{
		echo "$name $(basename "$dest" | sed "s/^$name-//")"
		"$GO" version
		echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(($(date +%s) - start)) s"
	} >"$stage/BUILDINFO"
	rm -rf "$stage/mod"
	chmod 0755 "$stage"
	if ! mv -T "$stage" "$dest" 2>/dev/null; then
		local f
		for f in "$@"; do
			[[ -e "$dest/$f" ]] || { echo "$name: cannot publish $dest" >&2; return 1; }
		done
		echo "$name: $dest appeared concurrently; using it" >&2
		rm -rf "$stage"
	fi
}

# peer_hit DEST FILE...: true when every FILE exists under DEST.
peer_hit() {
	local dest=$1 f
	shift
	for f in "$@"; do
		[[ -e "$dest/$f" ]] || return 1
	done
}
