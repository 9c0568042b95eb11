#!/usr/bin/env bash
# timed.sh NAME COMMAND...: runs COMMAND and appends "NAME SECONDS STATUS" to $AMBIT_TIMINGS (if set), so that
# .ci/run can print how long each tier of `make test` took, also when one fails. Exits with COMMAND's status.
set -uo pipefail
name=$1
shift
start=$(date +%s.%N)
"$@"
rc=$?
end=$(date +%s.%N)
status=ok
[[ $rc -eq 0 ]] || status="FAILED($rc)"
if [[ -n "${AMBIT_TIMINGS:-}" ]]; then
	awk -v n="$name" -v s="$start" -v e="$end" -v st="$status" 'BEGIN { printf "%s %.1f %s\n", n, e - s, st }' >>"$AMBIT_TIMINGS"
fi
exit $rc
