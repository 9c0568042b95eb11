package testutil

import (
	"os"
	"testing"
)

// RequireRootEnv is the environment variable that turns a skipped root-only test into a failure.
// CI sets it so that a missing privilege can never hide a broken test.
const RequireRootEnv = "AMBIT_REQUIRE_ROOT"

// RequireRoot skips tb when the process is not root, naming the reason, unless AMBIT_REQUIRE_ROOT=1,
// in which case it fails tb instead.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv(RequireRootEnv) == "1" {
		tb.Fatalf("test needs root (network namespaces, eBPF) and %s=1 forbids skipping", RequireRootEnv)
	}
	tb.Skip("test needs root (network namespaces, eBPF); run as root or set " + RequireRootEnv + "=1 to make this a failure")
}
