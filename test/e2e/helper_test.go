package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
)

// helperEnv makes the test binary a stand-in peer: "listen PORT" serves HTTP 200 on 127.0.0.1:PORT until killed,
// or exits 1 printing the listen error (as a peer whose port was taken does).
const helperEnv = "AMBIT_E2E_TEST_HELPER"

// runHelper runs the helper role named by helperEnv, if any, and reports whether it did.
func runHelper() (int, bool) {
	role := os.Getenv(helperEnv)
	if role == "" {
		return 0, false
	}
	port, ok := strings.CutPrefix(role, "listen ")
	if !ok {
		return 2, true
	}
	ln, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		return 1, true
	}
	_ = http.Serve(ln, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	return 0, true
}
