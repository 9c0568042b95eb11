package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/admin/dump"
)

const istioDump = "testdata/ztunnel/istio/dump.json"

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func readGolden(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// checkStdout runs ambitctl and compares stdout with a golden file byte for byte.
func checkStdout(t *testing.T, golden string, args ...string) {
	t.Helper()
	r := runCLI(t, args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("ambitctl %s: exit %d, stderr %q", strings.Join(args, " "), r.code, r.stderr)
	}
	if want := readGolden(t, golden); r.stdout != want {
		t.Errorf("ambitctl %s:\n%s\nwant (%s):\n%s", strings.Join(args, " "), r.stdout, golden, want)
	}
}

// TestZtunnelConfigIstioGoldens runs ambitctl on istioctl's own test dump (a real ztunnel config dump)
// and expects istioctl's own expected outputs, byte for byte. The certificate golden holds a leaf valid
// until 2033-03-22, as in istioctl's test.
func TestZtunnelConfigIstioGoldens(t *testing.T) {
	g := func(name string) string { return filepath.Join("testdata/ztunnel/istio", name) }
	cases := []struct {
		name   string
		args   []string
		golden string
	}{
		{"workload", []string{"zc", "workload"}, "workloadsummary.txt"},
		{"workload namespace filter", []string{"zc", "w", "--workload-namespace", "default"}, "workloadsummary_default.txt"},
		{"workload pod filter", []string{"zc", "workloads", "productpage-v1-675fc69cf-jscn2.bookinfo"}, "workloadsummary_workload.txt"},
		{"policy", []string{"zc", "pol"}, "policies.txt"},
		{"certificate", []string{"zc", "certificate"}, "secretsummary.txt"},
		{"connections", []string{"zc", "connections"}, "connectionsummary.txt"},
		{"connections pod.namespace", []string{"zc", "cons", "productpage-v1-796f87b58-97bjk.bookinfo"}, "connectionsummary_workload.txt"},
		{"connections pod and -n", []string{"-n", "bookinfo", "zc", "cons", "productpage-v1-796f87b58-97bjk"}, "connectionsummary_workload.txt"},
		{"connections json", []string{"zc", "connections", "-o", "json"}, "connectionsdump.json"},
		{"all", []string{"zc", "all"}, "allsummary.txt"},
		{"all with headers", []string{"zc", "all", "--with-headers"}, "allsummary_withheaders.txt"},
		{"node workloads", []string{"node", "workloads"}, "workloadsummary.txt"},
		{"node certs", []string{"node", "certs"}, "secretsummary.txt"},
		{"node policies", []string{"node", "p"}, "policies.txt"},
		{"node all", []string{"node", "all"}, "allsummary.txt"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkStdout(t, g(tc.golden), append(tc.args, "-f", istioDump)...)
		})
	}
}

// TestNodeAmbitDumpGoldens runs ambitctl on a dump written by Ambit's admin handler and expects what
// istioctl's writer prints for that dump (the goldens were produced by testdata/ztunnel/oracle).
func TestNodeAmbitDumpGoldens(t *testing.T) {
	d := filepath.Join(ambitDumpDir, "dump.json")
	g := func(name string) string { return filepath.Join(ambitDumpDir, name) }
	cases := []struct {
		name   string
		args   []string
		golden string
	}{
		{"workloads", []string{"node", "workloads"}, "workloads.txt"},
		{"services", []string{"node", "services"}, "services.txt"},
		{"policies", []string{"node", "policies"}, "policies.txt"},
		{"certificates", []string{"node", "certificates"}, "certificates.txt"},
		{"connections", []string{"node", "connections"}, "connections.txt"},
		{"connections raw", []string{"node", "connections", "--raw"}, "connections_raw.txt"},
		{"connections json", []string{"node", "connections", "-o", "json"}, "connections.json"},
		{"all", []string{"zc", "all"}, "all.txt"},
		{"all with headers", []string{"zc", "all", "--with-headers"}, "all_withheaders.txt"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			checkStdout(t, g(tc.golden), append(tc.args, "-f", d)...)
		})
	}
}

// TestNodeLiveAgent runs ambitctl against a live admin API (the round trip admin handler -> JSON ->
// ambitctl) and expects the same output as for the committed dump of the same fixture.
func TestNodeLiveAgent(t *testing.T) {
	f := newAgentFixture(t, time.Hour)
	addr := f.serve(t)
	for _, tc := range []struct {
		args   []string
		golden string
	}{
		{[]string{"node", "workloads"}, "workloads.txt"},
		{[]string{"node", "services"}, "services.txt"},
		{[]string{"node", "policies"}, "policies.txt"},
		{[]string{"node", "connections"}, "connections.txt"},
		{[]string{"zc", "connections", "--raw"}, "connections_raw.txt"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			checkStdout(t, filepath.Join(ambitDumpDir, tc.golden), append(tc.args, "--admin-address", addr)...)
		})
	}

	t.Run("certificates", func(t *testing.T) {
		r := runCLI(t, "node", "certificates", "--admin-address", "http://"+addr)
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		rows := tableRows(r.stdout)
		want := [][]string{
			{"CERTIFICATE", "NAME", "TYPE", "STATUS", "VALID", "CERT", "SERIAL", "NUMBER", "NOT", "AFTER", "NOT", "BEFORE"},
			{"spiffe://cluster.local/ns/shop/sa/broken", "NA", "Unavailable", "false", "NA", "NA", "NA"},
			{"spiffe://cluster.local/ns/shop/sa/client", "NA", "Initializing", "false", "NA", "NA", "NA"},
			{"spiffe://cluster.local/ns/shop/sa/reviews", "Leaf", "Available", "true", fmt.Sprintf("%x", f.reviews.Leaf().SerialNumber),
				f.reviews.NotAfter().UTC().Format(time.RFC3339), f.reviews.NotBefore().UTC().Format(time.RFC3339)},
			{"spiffe://cluster.local/ns/shop/sa/reviews", "Root", "Available", "true", fmt.Sprintf("%x", f.reviews.Roots()[0].SerialNumber),
				f.reviews.Roots()[0].NotAfter.UTC().Format(time.RFC3339), f.reviews.Roots()[0].NotBefore.UTC().Format(time.RFC3339)},
		}
		if !slices.EqualFunc(rows, want, slices.Equal) {
			t.Errorf("rows:\n%q\nwant:\n%q", rows, want)
		}
	})

	t.Run("all json is the dump without keys", func(t *testing.T) {
		r := runCLI(t, "node", "all", "-o", "json", "--admin-address", addr)
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		if strings.Contains(r.stdout, "PRIVATE KEY") {
			t.Error("the dump contains a private key")
		}
		d, err := dump.Parse([]byte(r.stdout))
		if err != nil {
			t.Fatal(err)
		}
		if d.NodeName != "node-a" || len(d.Workloads) != 8 || len(d.Certificates) != 3 {
			t.Errorf("nodeName %q, %d workloads, %d certificates", d.NodeName, len(d.Workloads), len(d.Certificates))
		}
	})

	t.Run("node check", func(t *testing.T) {
		if r := runCLI(t, "node", "workloads", "--node", "node-a", "--admin-address", addr); r.code != 0 {
			t.Errorf("--node node-a: exit %d: %s", r.code, r.stderr)
		}
		r := runCLI(t, "node", "workloads", "--node", "node-b", "--admin-address", addr)
		if want := fmt.Sprintf("Error: the agent at %s serves node \"node-a\", not \"node-b\"\n", addr); r.code != 1 || r.stderr != want {
			t.Errorf("--node node-b: exit %d, stderr %q, want 1, %q", r.code, r.stderr, want)
		}
	})

	t.Run("proxy-admin-port", func(t *testing.T) {
		_, port, _ := strings.Cut(addr, ":")
		if r := runCLI(t, "zc", "w", "--admin-address", "127.0.0.1:1", "--proxy-admin-port", port); r.code != 0 {
			t.Errorf("exit %d: %s", r.code, r.stderr)
		}
	})

	t.Run("log", func(t *testing.T) {
		steps := []struct {
			name   string
			args   []string
			stdout string
			level  slog.Level
			access slog.Level
		}{
			{"show", nil, "current log level is info,access=info\n", slog.LevelInfo, slog.LevelInfo},
			{"debug", []string{"--level", "debug"}, "current log level is debug,access=info\n", slog.LevelDebug, slog.LevelInfo},
			{"named loggers, istioctl names", []string{"--level", "warning,access:critical"}, "current log level is warn,access=error\n", slog.LevelWarn, slog.LevelError},
			{"trace and off", []string{"--level", "trace,access=off"}, "current log level is trace,access=off\n", slog.LevelDebug - 4, slog.Level(1 << 20)},
			{"reset", []string{"-r"}, "current log level is info,access=info\n", slog.LevelInfo, slog.LevelInfo},
		}
		for _, s := range steps {
			r := runCLI(t, append([]string{"node", "log", "--admin-address", addr}, s.args...)...)
			if want := addr + ":\n" + s.stdout + "\n"; r.code != 0 || r.stdout != want {
				t.Errorf("%s: exit %d, stdout %q, stderr %q; want %q", s.name, r.code, r.stdout, r.stderr, want)
			}
			if f.level.Level() != s.level || f.access.Level() != s.access {
				t.Errorf("%s: levels %v, access %v; want %v, %v", s.name, f.level.Level(), f.access.Level(), s.level, s.access)
			}
		}
		r := runCLI(t, "node", "log", "--admin-address", addr, "--level", "nosuch:debug")
		if r.code != 1 || !strings.Contains(r.stderr, "400 Bad Request: Invalid level provided: nosuch:debug") {
			t.Errorf("unknown logger: exit %d, stderr %q", r.code, r.stderr)
		}
	})
}

// tableRows splits a table into whitespace-separated fields per line.
func tableRows(s string) [][]string {
	var rows [][]string
	for line := range strings.Lines(s) {
		rows = append(rows, strings.Fields(line))
	}
	return rows
}

func TestNodeErrors(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		stdin  string
		stderr string // exact, or a prefix when it ends with "..."
		code   int
	}{
		{"C25 pod and node", []string{"zc", "workload", "pod1", "--node", "n1"},
			"", "Error: at most one of --file, --node, or pod name must be passed\n", 2},
		{"file and node", []string{"node", "services", "-f", istioDump, "--node", "n1"},
			"", "Error: at most one of --file, --node, or pod name must be passed\n", 2},
		{"bad output", []string{"node", "workloads", "-f", istioDump, "-o", "xml"},
			"", "Error: output format \"xml\" not supported\n", 2},
		{"positional on services", []string{"node", "services", "x", "-f", istioDump},
			"", "Error: accepts at most 0 argument(s), received 1\n", 2},
		{"bad direction", []string{"zc", "cons", "-f", istioDump, "--direction", "sideways"},
			"", "Error: invalid --direction \"sideways\": use inbound or outbound\n", 2},
		{"missing file", []string{"node", "workloads", "-f", "testdata/nope.json"},
			"", "Error: read config dump: open testdata/nope.json: no such file or directory\n", 2},
		{"not json", []string{"node", "workloads", "-f", "-"},
			"hello", "Error: -: parse config dump: config dump is not a JSON object\n", 2},
		{"bad port", []string{"node", "workloads", "--proxy-admin-port", "0"},
			"", "Error: port number 0 must be in the range 1..65535\n", 2},
		{"unreachable agent", []string{"node", "workloads", "--admin-address", "127.0.0.1:1"},
			"", "Error: reach node agent admin API at 127.0.0.1:1: ...", 1},
		{"log level and reset", []string{"zc", "log", "--level", "debug", "-r"},
			"", "Error: --level cannot be combined with --reset\n", 2},
		{"log output", []string{"node", "log", "-o", "json"},
			"", "Error: --output is not applicable for this command\n", 2},
		{"log bad level", []string{"node", "log", "--level", "access:loud", "--admin-address", "127.0.0.1:1"},
			"", "Error: unrecognized logging level: loud\n", 2},
		{"unknown subcommand", []string{"node", "pods"}, "", "Error: unknown subcommand \"pods\"\n", 2},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLIStdin(t, tc.stdin, tc.args...)
			if r.code != tc.code {
				t.Errorf("exit %d, want %d (stderr %q)", r.code, tc.code, r.stderr)
			}
			if prefix, ok := strings.CutSuffix(tc.stderr, "..."); ok {
				if !strings.HasPrefix(r.stderr, prefix) {
					t.Errorf("stderr %q, want prefix %q", r.stderr, prefix)
				}
			} else if r.stderr != tc.stderr {
				t.Errorf("stderr %q, want %q", r.stderr, tc.stderr)
			}
			if r.stdout != "" {
				t.Errorf("stdout %q, want none", r.stdout)
			}
		})
	}
}

func runCLIStdin(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	if stdin == "" {
		return runCLI(t, args...)
	}
	cmd := exec.Command(ambitctlBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb strings.Builder
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

// TestNodeAmbitDumpJSON checks that -o json prints the dump's own objects (Ambit's schema, a superset of
// what istioctl prints), sorted and filtered as the summaries are.
func TestNodeAmbitDumpJSON(t *testing.T) {
	path := filepath.Join(ambitDumpDir, "dump.json")
	d, err := dump.Parse([]byte(readGolden(t, path)))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want any
	}{
		{"services", []string{"node", "services"}, d.Services},
		{"services of a namespace", []string{"zc", "svc", "--service-namespace", "COMMON-infrastructure"}, d.Services[:1]},
		{"policies", []string{"node", "policies"}, d.Policies},
		{"certificates", []string{"node", "certificates"}, d.Certificates},
		{"workloads on a node", []string{"node", "workloads", "--workload-node", "node-b"},
			slices.DeleteFunc(slices.Clone(d.Workloads), func(w *dump.Workload) bool { return w.Node != "node-b" })},
		{"workload by address", []string{"node", "workloads", "--address", "10.244.0.5"},
			slices.DeleteFunc(slices.Clone(d.Workloads), func(w *dump.Workload) bool { return w.Name != "client" })},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, append(tc.args, "-f", path, "-o", "json")...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			if want := mustJSONIndent(t, tc.want) + "\n"; r.stdout != want {
				t.Errorf("stdout:\n%s\nwant:\n%s", r.stdout, want)
			}
		})
	}
}

func mustJSONIndent(t *testing.T, v any) string {
	t.Helper()
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestNodeStructuredOutput checks -o json and -o yaml on the istioctl dump: every workload once, in the
// summary's order, and YAML that is the same document.
func TestNodeStructuredOutput(t *testing.T) {
	r := runCLI(t, "node", "workloads", "-f", istioDump, "-o", "json")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	var ws []*dump.Workload
	if err := json.Unmarshal([]byte(r.stdout), &ws); err != nil {
		t.Fatal(err)
	}
	if len(ws) != 27 {
		t.Fatalf("%d workloads, want 27", len(ws))
	}
	if !slices.IsSortedFunc(ws, func(a, b *dump.Workload) int {
		return strings.Compare(a.Namespace+"."+a.Name+"\x00"+a.Node, b.Namespace+"."+b.Name+"\x00"+b.Node)
	}) {
		t.Error("workloads are not sorted by namespace.name, node")
	}
	if !strings.HasPrefix(r.stdout, "[\n    {\n        \"workloadIps\": [") {
		t.Errorf("not indented by 4 spaces: %.60q", r.stdout)
	}

	yr := runCLIStdin(t, readGolden(t, istioDump), "node", "workloads", "-f", "-", "-o", "yaml")
	if yr.code != 0 || !strings.HasSuffix(yr.stdout, "\n\n") {
		t.Fatalf("yaml: exit %d, stderr %q, ends %q", yr.code, yr.stderr, yr.stdout[max(0, len(yr.stdout)-10):])
	}
	var fromYAML []*dump.Workload
	if err := yaml.Unmarshal([]byte(yr.stdout), &fromYAML); err != nil {
		t.Fatal(err)
	}
	if a, b := mustJSON(t, fromYAML), mustJSON(t, ws); a != b {
		t.Error("the YAML output is not the JSON output")
	}
}
