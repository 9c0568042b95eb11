#!/usr/bin/env bash
# verify-gen.sh: regenerate the bpf2go output and fail if it differs from what is committed.
# Skips (exit 0, with a message) when clang is not installed, since a plain build never needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v clang >/dev/null 2>&1; then
	echo "verify-gen: clang not found; skipping the check that bpf/ generated files are up to date" >&2
	exit 0
fi
# bpf2go reads defaults from these; the committed output is built without them.
unset BPF2GO_CC BPF2GO_CFLAGS BPF2GO_STRIP BPF2GO_MAKEBASE
go generate ./bpf/...
if ! git diff --exit-code --stat -- bpf/; then
	echo "verify-gen: bpf/ generated files are stale; run 'make generate' and commit the result" >&2
	exit 1
fi
if [ -n "$(git status --porcelain --untracked-files=all -- bpf/)" ]; then
	git status --porcelain --untracked-files=all -- bpf/
	echo "verify-gen: go generate produced untracked files in bpf/" >&2
	exit 1
fi
echo "verify-gen: bpf/ generated files are up to date"
