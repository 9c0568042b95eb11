package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestAdminAddrFlag: `ambit agent` refuses a non-loopback --admin-addr (flag or AMBIT_ADMIN_ADDR) with
// exit code 1 unless --admin-allow-remote or AMBIT_ADMIN_ALLOW_REMOTE is given (issue 14 item 11).
// Refused configurations fail in validation, before anything is bound; the allowed one gets past it
// and fails on the missing configuration file instead.
func TestAdminAddrFlag(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	base := []string{"agent", "--node-name", "n", "--config-file", missing, "--ca-dir", t.TempDir(), "--capture", "none"}
	cases := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{name: "flag", args: []string{"--admin-addr", "0.0.0.0:15000"}, want: "--admin-allow-remote"},
		{name: "env", env: map[string]string{"AMBIT_ADMIN_ADDR": "10.1.2.3:15000"}, want: "--admin-allow-remote"},
		{name: "allowed by flag", args: []string{"--admin-addr", "0.0.0.0:15000", "--admin-allow-remote"}, want: "missing.yaml"},
		{name: "allowed by env", args: []string{"--admin-addr", "0.0.0.0:15000"},
			env: map[string]string{"AMBIT_ADMIN_ALLOW_REMOTE": "true"}, want: "missing.yaml"},
		{name: "negative connection cap", args: []string{"--hbone-max-connections", "-1"}, want: "--hbone-max-connections -1"},
		{name: "on demand without istiod", args: []string{"--xds-on-demand"}, want: "--xds-on-demand needs --xds-address"},
		{name: "on demand by env", env: map[string]string{"XDS_ON_DEMAND": "true"}, want: "--xds-on-demand needs --xds-address"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for k, v := range c.env {
				t.Setenv(k, v)
			}
			var stdout, stderr bytes.Buffer
			code := run(append(append([]string{}, base...), c.args...), &stdout, &stderr)
			if code != 1 || !strings.Contains(stderr.String(), c.want) {
				t.Errorf("exit %d, stderr %q; want 1 mentioning %q", code, stderr.String(), c.want)
			}
			if c.want == "missing.yaml" && strings.Contains(stderr.String(), "--admin-allow-remote") {
				t.Errorf("allowed remote admin address refused: %s", stderr.String())
			}
		})
	}
}
