package arch

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/ambit-mesh/ambit"

type pkg struct {
	ImportPath string
	Dir        string
	GoFiles    []string
	Imports    []string
	Deps       []string
	Standard   bool
}

func listPackages(t *testing.T) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pkgs := map[string]pkg{}
	dec := json.NewDecoder(out)
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		pkgs[p.ImportPath] = p
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	return pkgs
}

func rel(path string) string { return strings.TrimPrefix(strings.TrimPrefix(path, module), "/") }

func under(path, dir string) bool { return path == dir || strings.HasPrefix(path, dir+"/") }

// TestDependencyRules checks the direct imports of every production package against the rules of
// ARCHITECTURE.md.
func TestDependencyRules(t *testing.T) {
	pkgs := listPackages(t)
	if len(pkgs) < 5 {
		t.Fatalf("only %d packages listed", len(pkgs))
	}
	type rule struct {
		name      string
		applies   func(p string) bool
		forbidden func(imp string) bool
	}
	ours := func(dirs ...string) func(string) bool {
		return func(imp string) bool {
			for _, d := range dirs {
				if under(rel(imp), d) && strings.HasPrefix(imp, module) {
					return true
				}
			}
			return false
		}
	}
	// oursExcept forbids every package of the module except those under the allowed dirs.
	oursExcept := func(allowed ...string) func(string) bool {
		return func(imp string) bool {
			if imp != module && !strings.HasPrefix(imp, module+"/") {
				return false
			}
			for _, d := range allowed {
				if under(rel(imp), d) {
					return false
				}
			}
			return true
		}
	}
	in := func(dirs ...string) func(string) bool {
		return func(p string) bool {
			for _, d := range dirs {
				if under(p, d) {
					return true
				}
			}
			return false
		}
	}
	production := func(p string) bool { return !under(p, "test") && !under(p, "hack") }
	rules := []rule{
		{"hbone is protocol only", in("hbone"), oursExcept("hbone")},
		{"xdsclient is transport only", in("xdsclient"), oursExcept("xdsclient")},
		{"bpf holds generated objects only", in("bpf"), oursExcept("bpf")},
		{"redirect does not make policy decisions", in("redirect"), oursExcept("redirect", "bpf", "nsrun")},
		{"nsrun knows nothing of what it runs", in("nsrun"), oursExcept("nsrun")},
		{"only redirect and bpf touch x/sys/unix for capture",
			func(p string) bool { return production(p) && !under(p, "redirect") && !under(p, "bpf") },
			func(imp string) bool { return imp == "golang.org/x/sys/unix" }},
		{"mesh is pure: it imports only mesh", in("mesh"), oursExcept("mesh")},
		{"the DNS proxy reads the state only", in("agent/dnsproxy"), oursExcept("agent/dnsproxy", "mesh")},
		{"mesh does no I/O", in("mesh"), func(imp string) bool {
			switch imp {
			case "net", "net/http", "os", "os/exec", "os/signal", "syscall", "io/fs", "io/ioutil", "path/filepath", "unsafe":
				return true
			}
			// net/netip and net/url only parse values.
			return strings.HasPrefix(imp, "golang.org/x/sys/") || strings.HasPrefix(imp, "net/") && imp != "net/netip" && imp != "net/url"
		}},
		{"the node agent never imports the waypoint", in("agent"), ours("waypoint")},
		{"the waypoint never imports the node agent", in("waypoint"), ours("agent")},
		{"the east-west gateway imports neither process", in("eastwest"), ours("agent", "waypoint", "cmd")},
		{"neither process imports the east-west gateway", in("agent", "waypoint"), ours("eastwest")},
		{"config imports neither process", in("config"), ours("agent", "waypoint", "proxy", "admin", "lifecycle", "cmd")},
		{"config/local compiles L4 only: no L7 packages", in("config/local"), ours("waypoint")},
		{"the L7 kube source only watches and feeds the compiler", in("waypoint/kube"), ours("config/local", "waypoint/engine")},
		{"the L7 compiler is pure and source-independent", in("waypoint/compile"),
			ours("config/local", "config/xds", "waypoint/kube", "waypoint/engine", "proxy", "identity", "admin", "lifecycle", "hbone")},
		{"the shared parts import neither process", in("proxy", "identity", "admin", "lifecycle"), ours("agent", "waypoint", "eastwest", "cmd")},
		{"lifecycle knows nothing of what it runs", in("lifecycle"), oursExcept("lifecycle")},
		{"ambitctl imports only admin/dump, mesh and config/local", in("cmd/ambitctl"), oursExcept("admin/dump", "mesh", "config/local")},
		{"ambitctl reaches the data plane only through the admin API", in("cmd/ambitctl"),
			ours("agent", "waypoint", "bpf", "redirect", "hbone", "xdsclient")},
		{"production code never imports test packages", production, ours("test")},
		// Their scheme registers every API group at start, in every process, and the recorder brings in the
		// OpenAPI models (package kubeapi); ambitctl is another binary.
		{"the data-plane processes never import client-go's clientset",
			func(p string) bool { return production(p) && !under(p, "cmd/ambitctl") },
			func(imp string) bool {
				return imp == "k8s.io/client-go/kubernetes" || strings.HasPrefix(imp, "k8s.io/client-go/kubernetes/") ||
					imp == "k8s.io/client-go/informers" || strings.HasPrefix(imp, "k8s.io/client-go/informers/") ||
					imp == "k8s.io/client-go/dynamic/dynamicinformer" || imp == "k8s.io/client-go/tools/record"
			}},
	}
	for _, p := range pkgs {
		path := rel(p.ImportPath)
		for _, r := range rules {
			if !r.applies(path) {
				continue
			}
			for _, imp := range p.Imports {
				if r.forbidden(imp) {
					t.Errorf("%s: %s imports %s", r.name, p.ImportPath, imp)
				}
			}
		}
	}
}

// TestMeshStartsNoGoroutines checks that the decision packages start no goroutines, neither themselves
// (no go statement) nor through a dependency that runs background work (clients, servers, exporters).
func TestMeshStartsNoGoroutines(t *testing.T) {
	pkgs := listPackages(t)
	background := []string{"net/http", "google.golang.org/grpc", "k8s.io/client-go", "github.com/prometheus/",
		"go.opentelemetry.io/", "github.com/spiffe/go-spiffe/v2/workloadapi", "os/signal"}
	n := 0
	for _, p := range pkgs {
		if !under(rel(p.ImportPath), "mesh") {
			continue
		}
		n++
		for _, d := range p.Deps {
			for _, b := range background {
				if d == strings.TrimSuffix(b, "/") || strings.HasPrefix(d, b) || strings.HasPrefix(d, b+"/") {
					t.Errorf("%s depends on %s, which starts goroutines", p.ImportPath, d)
				}
			}
		}
		fset := token.NewFileSet()
		for _, f := range p.GoFiles {
			file, err := parser.ParseFile(fset, filepath.Join(p.Dir, f), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			ast.Inspect(file, func(n ast.Node) bool {
				if g, ok := n.(*ast.GoStmt); ok {
					t.Errorf("%s starts a goroutine", fset.Position(g.Pos()))
				}
				return true
			})
		}
	}
	if n < 5 {
		t.Fatalf("only %d mesh packages found", n)
	}
}

// TestPackageDocs requires a package comment in every package (CONTRIBUTING.md, Code).
func TestPackageDocs(t *testing.T) {
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}}\t{{.Doc}}", module+"/...")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, doc, _ := strings.Cut(line, "\t")
		if strings.TrimSpace(doc) == "" {
			t.Errorf("%s has no package doc comment", path)
		}
	}
}

// TestBinaryDependencies keeps heavy packages out of the ambit binary (agent, waypoint and east-west gateway:
// every process runs it). Each linked package costs disk, and its init and package data cost resident
// memory in every agent and every waypoint pod (README.md "Memory"); these are packages the processes once
// pulled in, or could through a careless import, without needing them.
func TestBinaryDependencies(t *testing.T) {
	// A pattern ending in /... bans the package and every package under it.
	banned := []struct{ pkg, why string }{
		{"database/sql", "a database driver registry (database/sql/driver, interfaces only, comes with github.com/google/uuid); came only with prometheus's collectors package (proxy/metrics uses the same collectors from package prometheus)"},
		{"k8s.io/client-go/kubernetes/...", "the clientset registers every API group's scheme at start (package kubeapi has the few calls the processes make)"},
		{"k8s.io/client-go/informers/...", "the generated informers bring the clientset"},
		{"k8s.io/client-go/tools/record", "the event recorder brings the OpenAPI models and the clientset"},
		{"github.com/google/gnostic-models/...", "OpenAPI models, with their protobuf descriptors"},
		{"github.com/emicklei/go-restful/v3/...", "an API server framework"},
		{"github.com/gogo/protobuf/...", "a second protobuf runtime with its own registry"},
		{"google.golang.org/grpc/xds/...", "registers gRPC's xDS resolvers and balancers, with all of go-control-plane's types"},
		{"github.com/google/cel-go/...", "an expression language runtime the processes do not evaluate"},
	}
	cmd := exec.Command("go", "list", "-deps", module+"/cmd/ambit")
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 100 {
		t.Fatalf("only %d dependencies listed", len(deps))
	}
	for _, b := range banned {
		for _, d := range deps {
			if prefix, ok := strings.CutSuffix(b.pkg, "/..."); ok && (d == prefix || strings.HasPrefix(d, prefix+"/")) || d == b.pkg {
				t.Errorf("cmd/ambit depends on %s (%s): %s", d, b.pkg, b.why)
				break
			}
		}
	}
}
