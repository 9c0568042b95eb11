package local

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	tu "github.com/ambit-mesh/ambit/test/testutil"
)

// TestWatcher hands over each stable version once: a new file, a listed file gone (a read error), and
// the file back.
func TestWatcher(t *testing.T) {
	tu.CheckGoroutines(t)
	dir := t.TempDir()
	extra := filepath.Join(t.TempDir(), "extra.yaml")
	write := func(path, data string) {
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(dir, "a.yaml"), "one")
	write(filepath.Join(dir, "ignored.txt"), "not config")
	write(extra, "extra")
	type version struct {
		files []File
		err   error
	}
	got := make(chan version, 16)
	w := &Watcher{Paths: []string{dir, extra}, Poll: 5 * time.Millisecond, Changed: func(f []File, err error) { got <- version{f, err} }}
	files, err := w.Read()
	if err != nil || len(files) != 2 || string(files[0].Data) != "one" || files[1].Name != extra {
		t.Fatalf("Read = %v, %v", files, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	next := func() version {
		t.Helper()
		select {
		case v := <-got:
			return v
		case <-time.After(10 * time.Second):
			t.Fatal("no version handed over")
			return version{}
		}
	}

	write(filepath.Join(dir, "b.yml"), "two")
	if v := next(); v.err != nil || len(v.files) != 3 || v.files[1].Name != filepath.Join(dir, "b.yml") {
		t.Errorf("after adding b.yml: %+v", v)
	}
	if err := os.Remove(extra); err != nil {
		t.Fatal(err)
	}
	if v := next(); v.err == nil || v.files != nil {
		t.Errorf("after removing a listed file: %+v, want a read error", v)
	}
	write(extra, "extra")
	if v := next(); v.err != nil || len(v.files) != 3 {
		t.Errorf("after restoring it: %+v", v)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case v := <-got:
		t.Errorf("a version was handed over twice: %+v", v)
	default:
	}
}

func TestDecodeFiles(t *testing.T) {
	objs, err := DecodeFiles([]File{{"a.yaml", []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n")}})
	if err != nil || len(objs.Namespaces) != 1 {
		t.Fatalf("DecodeFiles = %v, %v", objs, err)
	}
	if _, err := DecodeFiles([]File{{"bad.yaml", []byte("apiVersion: v1\nkind: Nope\n")}}); err == nil {
		t.Error("an unknown kind was accepted")
	}
}
