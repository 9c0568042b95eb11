package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// File is the content of one configuration file.
type File struct {
	Name string
	Data []byte
}

// ReadFiles returns the content of every path (a directory stands for its *.yaml, *.yml and *.json
// files, in name order) and its digest. A read error is returned with a digest of the error, so that a
// Watcher reports the same error once.
func ReadFiles(paths []string) ([]File, [sha256.Size]byte, error) {
	var out []File
	h := sha256.New()
	for _, p := range paths {
		names := []string{p}
		if st, err := os.Stat(p); err == nil && st.IsDir() {
			names = nil
			ents, err := os.ReadDir(p)
			if err != nil {
				return nil, sha256.Sum256([]byte(err.Error())), fmt.Errorf("read config dir: %w", err)
			}
			for _, e := range ents {
				if ext := filepath.Ext(e.Name()); !e.IsDir() && (ext == ".yaml" || ext == ".yml" || ext == ".json") {
					names = append(names, filepath.Join(p, e.Name()))
				}
			}
			slices.Sort(names)
		}
		for _, n := range names {
			b, err := os.ReadFile(n)
			if err != nil {
				return nil, sha256.Sum256([]byte(err.Error())), fmt.Errorf("read config: %w", err)
			}
			h.Write([]byte(n))
			h.Write(b)
			out = append(out, File{n, b})
		}
	}
	var d [sha256.Size]byte
	copy(d[:], h.Sum(nil))
	return out, d, nil
}

// DecodeFiles decodes every file into one Objects; the first bad document stops it with an *InputError.
func DecodeFiles(files []File) (*Objects, error) {
	objs := &Objects{}
	for _, f := range files {
		if err := objs.Decode(f.Name, bytes.Clone(f.Data)); err != nil {
			return nil, err
		}
	}
	return objs, nil
}

// Watcher follows configuration files for a process (both the node agent and the waypoint use it). It
// polls them and hands over a new version only once its content has stayed the same for one poll
// interval, so a half-written file (an editor, a copy) is never applied; each version, good or bad, is
// handed over once.
type Watcher struct {
	// Paths are files or directories (see ReadFiles).
	Paths []string
	// Poll is the interval between checks (default 1 s).
	Poll time.Duration
	// Changed is called from Run with each new stable version, or with the error that kept it from being
	// read (files is then nil).
	Changed func(files []File, err error)

	digest  [sha256.Size]byte // of the last content handled; owned by Read and Run
	pending [sha256.Size]byte // of new content seen once; handed over when the next poll sees it unchanged
}

// Read reads the files now and marks this content as handled, so that Run reports only later changes
// (a process loads its first version with Read before it starts).
func (w *Watcher) Read() ([]File, error) {
	files, digest, err := ReadFiles(w.Paths)
	if err != nil {
		return nil, err
	}
	w.digest = digest
	return files, nil
}

// Run polls until ctx ends.
func (w *Watcher) Run(ctx context.Context) error {
	poll := w.Poll
	if poll <= 0 {
		poll = time.Second
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		files, digest, err := ReadFiles(w.Paths)
		if digest == w.digest {
			continue
		}
		if digest != w.pending {
			w.pending = digest
			continue
		}
		w.digest = digest
		w.Changed(files, err)
	}
}

// CompileFiles decodes files and compiles them (Compile).
func CompileFiles(files []File, opts Options) (*Result, error) {
	objs, err := DecodeFiles(files)
	if err != nil {
		return nil, err
	}
	return Compile(objs, opts)
}
