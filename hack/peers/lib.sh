# lib.sh: shared helpers for the hack/peers/build-*.sh scripts (sourced, not executed).
#
# Cache convention: ${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/<name>-<version>/, holding bin/ and a BUILDINFO
# file. An entry is never changed in place:
#   - it is built in a staging directory next to it, .<name>-<version>.XXXXXX, whose lock file .lock the build holds
#     (flock) for as long as the build (and any process it started) runs;
#   - it is published by renaming the staging directory into place; an existing entry that lacks files is first
#     renamed aside (then removed), a complete one is kept and the new build dropped;
#   - staging directories whose lock is free (their build was killed) are removed when the next build starts, as are
#     lock-less ones (from before this convention) older than a day.

CACHE_ROOT=${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}
GO=${GO:-go}

# run_go ARGS...: runs $GO so that it dies with this script (util-linux setpriv's parent-death signal), where
# setpriv is available.
run_go() {
	if command -v setpriv >/dev/null 2>&1; then
		setpriv --pdeathsig KILL -- "$GO" "$@"
	else
		"$GO" "$@"
	fi
}

# peer_sweep_stale: removes staging directories of builds that are gone (see above).
peer_sweep_stale() {
	local d
	for d in "$CACHE_ROOT"/.*-*.*; do
		[[ -d "$d" ]] || continue
		if [[ -e "$d/.lock" ]]; then
			# Free lock: nobody builds there any more. (flock -n fails while a build or its children hold it.)
			if flock -n "$d/.lock" true 2>/dev/null; then
				echo "peers: removing $d (its build was killed)" >&2
				rm -rf "$d"
			fi
		elif [[ -n "$(find "$d" -maxdepth 0 -mmin +1440 2>/dev/null)" ]]; then
			echo "peers: removing $d (a staging directory without a lock, older than a day)" >&2
			rm -rf "$d"
		fi
	done
}

# peer_stage NAME VERSION: removes stale staging directories, then creates one for NAME-VERSION in $STAGE (with
# bin/ and mod/) and holds its lock until this shell exits. Call it directly, not in $(...): the lock lives in
# this shell. The caller removes $STAGE on failure (trap) unless published.
peer_stage() {
	mkdir -p "$CACHE_ROOT"
	peer_sweep_stale
	STAGE=$(mktemp -d "$CACHE_ROOT/.$1-$2.XXXXXX")
	exec {PEER_STAGE_LOCK}>"$STAGE/.lock"
	flock -n "$PEER_STAGE_LOCK"
	mkdir -p "$STAGE/bin" "$STAGE/mod"
}

# peer_complete DEST FILE...: true when every FILE exists under DEST.
peer_complete() {
	local dest=$1 f
	shift
	for f in "$@"; do
		[[ -e "$dest/$f" ]] || return 1
	done
}

# peer_hit DEST FILE...: a complete entry is a hit.
peer_hit() {
	peer_complete "$@"
}

# peer_publish NAME STAGE DEST START_EPOCH CHECK_FILE...: writes BUILDINFO, drops the scratch module and publishes
# STAGE as DEST by renames (see above).
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
	if [[ -e "$dest" ]]; then
		if peer_complete "$dest" "$@"; then
			echo "$name: $dest appeared concurrently; using it" >&2
			rm -rf "$stage"
			return 0
		fi
		local old
		old=$(mktemp -u "$CACHE_ROOT/.$(basename "$dest").old.XXXXXX")
		mv -T "$dest" "$old" || { echo "$name: cannot move the incomplete $dest aside" >&2; return 1; }
		echo "$name: replacing the incomplete $dest" >&2
		rm -rf "$old"
	fi
	rm -f "$stage/.lock" # still held through our descriptor until this shell exits
	if ! mv -T "$stage" "$dest" 2>/dev/null; then
		peer_complete "$dest" "$@" || { echo "$name: cannot publish $dest" >&2; return 1; }
		echo "$name: $dest appeared concurrently; using it" >&2
		rm -rf "$stage"
	fi
}
