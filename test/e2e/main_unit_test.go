//go:build !e2e

package e2e

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	if code, ok := runHelper(); ok {
		os.Exit(code)
	}
	os.Exit(m.Run())
}
