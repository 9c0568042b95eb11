package arch

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var fuzzFunc = regexp.MustCompile(`(?m)^func (Fuzz[A-Za-z0-9_]*)\(`)

// TestFuzzCorpora: every fuzz target of the module has a committed seed corpus in its package's
// testdata/fuzz/<Target>/ (so `go test` replays it in CI and `make fuzz` starts from it), and the Makefile's
// fuzz target finds it (it greps for "^func Fuzz" in *_test.go outside test/hboneinterop).
func TestFuzzCorpora(t *testing.T) {
	root := "../.."
	var targets int
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "hboneinterop" || d.Name() == ".git" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range fuzzFunc.FindAllStringSubmatch(string(src), -1) {
			targets++
			dir := filepath.Join(filepath.Dir(path), "testdata", "fuzz", m[1])
			ents, err := os.ReadDir(dir)
			if err != nil || len(ents) == 0 {
				rel, _ := filepath.Rel(root, dir)
				t.Errorf("%s: no committed corpus in %s (run the target, then copy entries from $(go env GOCACHE)/fuzz)", m[1], rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if targets == 0 {
		t.Fatal("found no fuzz targets; the walk is broken")
	}
}
