package arch

import (
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/ambit-mesh/ambit"

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
	Standard   bool
}

func listPackages(t *testing.T) map[string]pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps=false", "-json", module+"/...")
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

// TestDependencyRules checks the direct imports of every production package against the rules.
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
	rules := []rule{
		{"hbone is protocol only", func(p string) bool { return under(p, "hbone") }, ours("agent", "waypoint", "mesh", "config", "proxy", "identity", "admin", "xdsclient", "redirect", "bpf")},
		{"xdsclient is transport only", func(p string) bool { return under(p, "xdsclient") }, ours("agent", "waypoint", "mesh", "config", "proxy", "identity", "admin", "hbone", "redirect", "bpf")},
		{"bpf holds generated objects only", func(p string) bool { return under(p, "bpf") }, ours("agent", "hbone", "xdsclient", "redirect")},
		{"redirect does not make policy decisions", func(p string) bool { return under(p, "redirect") }, ours("agent", "hbone", "xdsclient")},
		{"only redirect and bpf touch x/sys/unix for capture",
			func(p string) bool {
				return !under(p, "redirect") && !under(p, "bpf") && !under(p, "test") && !under(p, "hack")
			},
			func(imp string) bool { return imp == "golang.org/x/sys/unix" }},
		{"decisions do no I/O", func(p string) bool {
			return under(p, "mesh")
		}, func(imp string) bool {
			switch imp {
			case "net", "net/http", "os", "os/exec", "syscall", "io/fs":
				return true
			}
			return false
		}},
		{"ambitctl reaches the data plane only through the admin API",
			func(p string) bool { return under(p, "cmd/ambitctl") }, ours("bpf", "redirect", "hbone", "xdsclient")},
		{"production code never imports test packages",
			func(p string) bool { return !under(p, "test") && !under(p, "hack") }, ours("test")},
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
