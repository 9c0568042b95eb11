#!/usr/bin/env bash
# bench-capture.sh: capture benchmarks, side by side. Runs the BPF per-packet benchmark (prog.Run) and the lab
# benchmark (direct vs eBPF vs TPROXY capture, relayed by a splice proxy) RUNS times each (default 5) in
# interleaved rounds, then prints the median of every benchmark and the ratios between modes.
# Needs root (network namespaces, BPF). Usage: hack/bench-capture.sh [RUNS]
set -euo pipefail
runs="${1:-5}"
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The benchmark binaries die with this script (parent-death signal), where util-linux setpriv is available.
die_with_us=()
command -v setpriv >/dev/null 2>&1 && die_with_us=(setpriv --pdeathsig KILL --)
go test -c -o "$tmp/bpf.test" ./bpf
go test -c -o "$tmp/redirect.test" ./redirect
out="$tmp/bench.txt"
for i in $(seq "$runs"); do
	echo "round $i/$runs" >&2
	(cd bpf && "${die_with_us[@]}" "$tmp/bpf.test" -test.run '^$' -test.bench '^BenchmarkCapture$' -test.benchtime 1000000x) | grep '^Benchmark' >>"$out"
	(cd redirect && "${die_with_us[@]}" "$tmp/redirect.test" -test.run '^$' -test.bench '^BenchmarkCaptureLab$' -test.benchtime 1s) | grep '^Benchmark' >>"$out"
done
cp "$out" "${BENCH_OUT:-/tmp/ambit-bench-capture.txt}"
awk -v runs="$runs" '
function median(key,   n, i, j, t, a) {
	n = split(vals[key], a, " ")
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
	return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{
	name = $1; sub(/-[0-9]+$/, "", name)
	for (i = 3; i < NF; i += 2) {
		key = name " " $(i + 1)
		if (!(key in vals)) order[++k] = key
		vals[key] = vals[key] " " $i
	}
}
END {
	printf "%-62s %14s   (median of %d runs)\n", "benchmark metric", "value", runs
	for (i = 1; i <= k; i++) { m[order[i]] = median(order[i]); printf "%-62s %14.3f\n", order[i], m[order[i]] }
	base = "BenchmarkCapture/baseline_empty_program ns/op"
	if (base in m) {
		print "\nBPF program cost per packet (prog.Run, minus the empty-program harness baseline):"
		for (i = 1; i <= k; i++) if (order[i] ~ /^BenchmarkCapture\/.* ns\/op$/ && order[i] != base)
			printf "  %-40s %8.1f ns\n", substr(order[i], 18, length(order[i]) - 23), m[order[i]] - m[base]
	}
	print "\nlab (client pod on one node, server pod on another; captured = relayed by a splice proxy):"
	split("connect rr", kinds, " ")
	for (j = 1; j <= 2; j++) {
		p = "BenchmarkCaptureLab/" kinds[j] " "
		if (!((p "direct-ns/op") in m)) continue
		printf "  %-8s direct %.0f ns  ebpf %.0f ns  tproxy %.0f ns   ebpf/direct %.2f  tproxy/direct %.2f  ebpf/tproxy %.2f\n", kinds[j],
			m[p "direct-ns/op"], m[p "ebpf-ns/op"], m[p "tproxy-ns/op"], m[p "ebpf/direct"], m[p "tproxy/direct"], m[p "ebpf/tproxy"]
	}
}' "$out"
