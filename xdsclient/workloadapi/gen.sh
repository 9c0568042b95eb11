#!/usr/bin/env bash
# gen.sh regenerates the Go types of Istio's workload API (workload.proto, security/authorization.proto) from the
# .proto files in this directory, which are verbatim copies of istio.io/istio's pkg/workloadapi at the version in
# ISTIO_PROTO_VERSION below. The generated *.pb.go files are committed; nothing else needs protoc.
#
# Needs protoc and the well-known types (Debian: protobuf-compiler libprotobuf-dev). protoc-gen-go is pinned
# in go.mod's tool block and run through `go tool`. The registered proto paths ("workloadapi/workload.proto",
# "workloadapi/security/authorization.proto") and packages (istio.workload, istio.security) are Istio's, so
# the wire format and type URLs are identical; never link istio.io/istio/pkg/workloadapi into the same binary.
#
# Usage: xdsclient/workloadapi/gen.sh [--check]   (--check: fail if the committed output is stale)
set -euo pipefail
# ISTIO_PROTO_VERSION: istio.io/istio v0.0.0-20260827124520-eed52ebb66ad (master, 1.31-dev)
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here") # xdsclient/, the proto root
mod=github.com/ambit-mesh/ambit/xdsclient/workloadapi
plugin=$(cd "$root/.." && go tool -n protoc-gen-go)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
include=()
for d in /usr/include /usr/local/include; do
	[[ -f $d/google/protobuf/any.proto ]] && include+=("-I$d")
done
protoc -I"$root" "${include[@]}" --plugin=protoc-gen-go="$plugin" --go_out="$out" \
	--go_opt=module=$mod \
	--go_opt=Mworkloadapi/workload.proto=$mod \
	--go_opt=Mworkloadapi/security/authorization.proto=$mod/security \
	workloadapi/workload.proto workloadapi/security/authorization.proto
if [[ ${1:-} == --check ]]; then
	diff -u "$here/workload.pb.go" "$out/workload.pb.go"
	diff -u "$here/security/authorization.pb.go" "$out/security/authorization.pb.go"
	echo "workloadapi: generated code is up to date" >&2
	exit 0
fi
cp "$out/workload.pb.go" "$here/workload.pb.go"
cp "$out/security/authorization.pb.go" "$here/security/authorization.pb.go"
