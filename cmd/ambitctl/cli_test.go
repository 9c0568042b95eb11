package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ambitctlBin is the binary built once for the CLI tests, so they exercise exactly what users run.
var ambitctlBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ambitctl-test")
	if err != nil {
		panic(err)
	}
	ambitctlBin = filepath.Join(dir, "ambitctl")
	if out, err := exec.Command("go", "build", "-o", ambitctlBin, ".").CombinedOutput(); err != nil {
		panic("build ambitctl: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

func runCLI(t *testing.T, args ...string) result {
	t.Helper()
	cmd := exec.Command(ambitctlBin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{out.String(), errb.String(), code}
}

// TestWaypointGenerate checks byte-for-byte parity with istioctl waypoint generate (C1–C6).
func TestWaypointGenerate(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		golden string
		stderr string
		code   int
	}{
		{name: "C1 for service in default", args: []string{"--for", "service", "-n", "default"}, golden: "for-service-default.golden"},
		{name: "C2 no flags", golden: "no-flags.golden"},
		{name: "C3 all with revision and name", args: []string{"-n", "ns", "--for", "all", "-r", "canary", "--name", "w1"}, golden: "all-canary-w1.golden"},
		{name: "C4 invalid traffic type", args: []string{"--for", "foo"},
			stderr: "Error: failed to create gateway: invalid traffic type: foo. Valid options are: [all none service workload]\n", code: 1},
		{name: "C5 reserved name none", args: []string{"--name", "none"},
			stderr: "Error: failed to create gateway: invalid name provided for waypoint, 'none' is a reserved value\n", code: 1},
		{name: "C6 empty name means waypoint", args: []string{"--name", ""}, golden: "no-flags.golden"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, append([]string{"waypoint", "generate"}, tc.args...)...)
			if r.code != tc.code {
				t.Fatalf("exit code = %d, want %d (stderr %q)", r.code, tc.code, r.stderr)
			}
			if r.stderr != tc.stderr {
				t.Errorf("stderr = %q, want %q", r.stderr, tc.stderr)
			}
			want := ""
			if tc.golden != "" {
				b, err := os.ReadFile(filepath.Join("testdata", "generate", tc.golden))
				if err != nil {
					t.Fatal(err)
				}
				want = string(b)
			}
			if r.stdout != want {
				t.Errorf("stdout:\n%s\nwant:\n%s", r.stdout, want)
			}
		})
	}
}

func TestWaypointArgs(t *testing.T) {
	if r := runCLI(t, "waypoint", "stray"); r.code != 1 || r.stderr != "Error: unknown subcommand \"stray\"\n" {
		t.Errorf("stray argument: %+v", r)
	}
	if r := runCLI(t, "waypoint"); r.code != 0 || !strings.Contains(r.stdout, "generate") {
		t.Errorf("help: %+v", r)
	}
	// istioctl's exit codes: 1 for errors, 64 (ExitIncorrectUsage) for flag errors.
	if r := runCLI(t, "waypoint", "generate", "--bogus"); r.code != 64 {
		t.Errorf("unknown flag: %+v", r)
	}
	if r := runCLI(t, "waypoint", "list", "--for", "x"); r.code != 64 || r.stderr != "Error: unknown flag: --for\n" {
		t.Errorf("flag of another subcommand: %+v", r)
	}
	// Ambit's own commands keep exit code 2 for bad input.
	if r := runCLI(t, "waypoint", "bindings", "--bogus"); r.code != 2 {
		t.Errorf("unknown flag of bindings: %+v", r)
	}
}

const example = "../../config/local/testdata/ambient.yaml"

func TestWaypointBindings(t *testing.T) {
	r := runCLI(t, "waypoint", "bindings", "-f", example, "-o", "json")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatal(err)
	}
	got := map[string]map[string]any{}
	for _, row := range rows {
		if len(row) != 5 {
			t.Errorf("row keys = %v, want exactly kind, namespace, name, waypoint, condition", row)
		}
		got[row["kind"].(string)+" "+row["namespace"].(string)+"/"+row["name"].(string)] = row
	}
	check := func(key string, waypoint any, reason any) {
		t.Helper()
		row, ok := got[key]
		if !ok {
			t.Errorf("%s missing", key)
			return
		}
		if row["waypoint"] != waypoint {
			t.Errorf("%s waypoint = %v, want %v", key, row["waypoint"], waypoint)
		}
		var gotReason any
		if c, ok := row["condition"].(map[string]any); ok {
			gotReason = c["reason"]
		}
		if gotReason != reason {
			t.Errorf("%s condition reason = %v, want %v", key, gotReason, reason)
		}
	}
	check("Service shop/reviews", "shop/waypoint", "WaypointAccepted")
	check("Service shop/waypoint", nil, nil)
	check("Pod shop/reviews-v2-def", "shop/reviews-v2-pod-waypoint", nil)
	check("Pod shop/reviews-v1-abc", nil, nil)
	check("ServiceEntry shop/httpbin", "common-infrastructure/egress-gateway", "WaypointAccepted")

	r = runCLI(t, "waypoint", "bindings", "-f", example, "-n", "legacy")
	if r.code != 0 || !strings.Contains(r.stdout, "legacy-client") || strings.Contains(r.stdout, "reviews") {
		t.Errorf("-n filter: %+v", r)
	}
	r = runCLI(t, "waypoint", "bindings", "-f", example, "-o", "yaml")
	if r.code != 0 || !strings.Contains(r.stdout, "- condition:") {
		t.Errorf("yaml: %+v", r)
	}
}

func TestExplain(t *testing.T) {
	cases := []struct {
		name, from, to string
		want           map[string]any
	}{
		{"service via namespace waypoint", "shop/client", "10.96.20.1:9080", map[string]any{"path": "waypoint", "waypoint": "shop/waypoint",
			"protocol": "HBONE", "nextHop": "10.244.1.10:15008", "authority": "10.96.20.1:9080"}},
		{"pod via its workload waypoint", "shop/client", "10.244.1.22:9080", map[string]any{"path": "waypoint", "waypoint": "shop/reviews-v2-pod-waypoint",
			"protocol": "HBONE", "nextHop": "10.244.0.11:15008", "authority": "10.244.1.22:9080"}},
		{"pod without waypoint goes direct", "shop/client", "10.244.0.21:9080", map[string]any{"path": "direct", "waypoint": nil,
			"protocol": "HBONE", "nextHop": "10.244.0.21:15008", "authority": "10.244.0.21:9080"}},
		{"service entry via cross-namespace waypoint", "shop/client", "240.240.0.1:80", map[string]any{"path": "waypoint",
			"waypoint": "common-infrastructure/egress-gateway", "protocol": "HBONE", "nextHop": "10.244.1.12:15008", "authority": "240.240.0.1:80"}},
		{"unknown address passes through", "shop/client", "192.0.2.1:443", map[string]any{"path": "passthrough", "waypoint": nil,
			"protocol": "TCP", "nextHop": "192.0.2.1:443", "authority": nil}},
		{"uncaptured source is not routed by Ambit", "legacy/legacy-client", "10.96.20.1:9080", map[string]any{"path": "passthrough", "waypoint": nil,
			"protocol": "TCP", "nextHop": "10.96.20.1:9080", "authority": nil}},
		{"undeclared port is rejected", "shop/client", "10.244.0.21:1", map[string]any{"path": "direct"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, "explain", "-f", example, "--from", tc.from, "--to", tc.to, "-o", "json")
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			var got map[string]any
			if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
				t.Fatal(err)
			}
			if len(got) != 6 {
				t.Errorf("keys = %v, want path, waypoint, protocol, nextHop, authority, reason", got)
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s = %v, want %v", k, got[k], v)
				}
			}
			if s, _ := got["reason"].(string); s == "" {
				t.Error("empty reason")
			}
		})
	}
}

func TestBadInputExitCode(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: ok\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nstatus:\n  podIP: 300.1.1.1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := [][]string{
		{"waypoint", "bindings", "-f", bad},
		{"waypoint", "bindings"},
		{"waypoint", "bindings", "-f", filepath.Join(dir, "missing.yaml")},
		{"explain", "-f", example, "--from", "shop", "--to", "1.2.3.4:80"},
		{"explain", "-f", example, "--from", "shop/client", "--to", "1.2.3.4"},
		{"explain", "-f", example, "--from", "shop/client"},
		{"waypoint", "bindings", "-f", example, "-o", "xml"},
	}
	for _, args := range cases {
		r := runCLI(t, args...)
		if r.code != 2 || !strings.HasPrefix(r.stderr, "Error: ") {
			t.Errorf("%v: exit %d stderr %q, want exit 2 with an error", args, r.code, r.stderr)
		}
	}
	r := runCLI(t, "waypoint", "bindings", "-f", bad)
	if !strings.Contains(r.stderr, "bad.yaml: document 2 (Pod default/p): status.podIP: invalid IP \"300.1.1.1\"") {
		t.Errorf("error does not locate the object: %q", r.stderr)
	}
}
