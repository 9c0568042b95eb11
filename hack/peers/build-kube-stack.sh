#!/usr/bin/env bash
# build-kube-stack.sh builds (or finds in the peer cache) everything the Kubernetes tier of test/e2e needs on top
# of build-istio-stack.sh: kube-controller-manager and kube-scheduler, istioctl for the CLI parity checks, and
# Istio's echo app for the Gateway API mesh conformance suite (test/e2e/kube/gamma_test.go). It
# prints the cache directories as shell assignments that test/e2e understands, like build-istio-stack.sh.
set -euo pipefail
here=$(dirname "$0")
"$here/build-istio-stack.sh"
echo "AMBIT_KUBE_CONTROLLERS_BIN_DIR=$("$here/build-kube-controllers.sh")"
echo "AMBIT_ISTIOCTL_BIN_DIR=$("$here/build-istioctl.sh")"
echo "AMBIT_ISTIO_ECHO_BIN_DIR=$("$here/build-istio-echo.sh")"
