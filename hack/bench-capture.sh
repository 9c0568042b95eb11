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
go test -c -o "$tmp/bpf.test" ./bpf
go test -c -o "$tmp/redirect.test" ./redirect
out="$tmp/bench.txt"
for i in $(seq "$runs"); do
	echo "round $i/$runs" >&2
	(cd bpf && "$tmp/bpf.test" -test.run '^$' -test.bench '^BenchmarkCapture$' -test.benchtime 1000000x) | grep '^Benchmark' >>"$out"
	(cd redirect && "$tmp/redirect.test" -test.run '^$' -test.bench '^BenchmarkCaptureLab$' -test.benchtime 1s) | grep '^Benchmark' >>"$out"
done
awk -v runs="$runs" '
function median(name,   n, i, j, t, a) {
	n = split(vals[name], a, " ")
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
	return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
{ name = $1; sub(/-[0-9]+$/, "", name); if (!(name in vals)) order[++k] = name; vals[name] = vals[name] " " $3 }
END {
	printf "%-60s %14s   (median of %d runs)\n", "benchmark", "ns/op", runs
	for (i = 1; i <= k; i++) { m[order[i]] = median(order[i]); printf "%-60s %14.1f\n", order[i], m[order[i]] }
	base = "BenchmarkCapture/baseline_empty_program"
	if (base in m) {
		print "\nBPF program cost per packet (minus the empty-program harness baseline):"
		for (i = 1; i <= k; i++) if (order[i] ~ /^BenchmarkCapture\// && order[i] != base)
			printf "  %-40s %8.1f ns\n", substr(order[i], 18), m[order[i]] - m[base]
	}
	print "\nratios (time per op; < 1 is faster):"
	split("connect rr", kinds, " ")
	for (j = 1; j <= 2; j++) {
		p = "BenchmarkCaptureLab/" kinds[j] "/mode="
		if (!((p "direct") in m)) continue
		printf "  %-8s ebpf/direct %.2f   tproxy/direct %.2f   ebpf/tproxy %.2f\n", kinds[j], m[p "ebpf"] / m[p "direct"], m[p "tproxy"] / m[p "direct"], m[p "ebpf"] / m[p "tproxy"]
		printf "  %-8s rate (ops/s): direct %.0f  ebpf %.0f  tproxy %.0f\n", kinds[j], 1e9 / m[p "direct"], 1e9 / m[p "ebpf"], 1e9 / m[p "tproxy"]
	}
}' "$out"
