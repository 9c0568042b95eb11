#!/usr/bin/env bash
# build-istio-stack.sh builds (or finds in the peer cache) everything test/e2e needs: etcd, kube-apiserver and
# istiod with its CRDs, one after the other (parallel builds only thrash a 2-core machine). It prints the three
# cache directories as shell assignments that test/e2e also understands:
#   AMBIT_ETCD_BIN_DIR=... AMBIT_KUBE_APISERVER_BIN_DIR=... AMBIT_ISTIOD_DIR=...
# A warm cache returns in well under a second.
set -euo pipefail
here=$(dirname "$0")
etcd=$("$here/build-etcd.sh")
kapi=$("$here/build-kube-apiserver.sh")
istiod=$("$here/build-istiod.sh")
echo "AMBIT_ETCD_BIN_DIR=$etcd"
echo "AMBIT_KUBE_APISERVER_BIN_DIR=$kapi"
echo "AMBIT_ISTIOD_DIR=$istiod"
