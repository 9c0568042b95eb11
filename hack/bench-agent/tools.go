package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"time"

	"github.com/ambit-mesh/ambit/test/owner"
	"github.com/ambit-mesh/ambit/test/proc"
)

// fortioVersion is the last fortio that builds from the Go module proxy (newer ones need grol.io/grol,
// which the Go module proxy refuses to serve).
const fortioVersion = "v1.68.2"

// tools are the programs the benchmark runs.
type tools struct {
	ambit, iperf3, fortio, self string
}

func findTools(ctx context.Context) (tools, error) {
	var t tools
	var err error
	if t.iperf3, err = exec.LookPath("iperf3"); err != nil {
		return t, errors.New("iperf3 not found; install it with: apt-get install -y iperf3")
	}
	if t.self, err = os.Executable(); err != nil {
		return t, fmt.Errorf("find own executable: %w", err)
	}
	if t.fortio, err = fortio(ctx); err != nil {
		return t, err
	}
	return t, nil
}

// fortio returns the cached fortio binary, building it first if needed. The cache follows hack/peers:
// ${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/fortio-<version>/bin/fortio plus a BUILDINFO file, built
// in a staging directory and published with an atomic rename.
func fortio(ctx context.Context) (string, error) {
	root := os.Getenv("AMBIT_PEER_CACHE")
	if root == "" {
		root = "/var/cache/ambit-peers"
	}
	dest := filepath.Join(root, "fortio-"+fortioVersion)
	bin := filepath.Join(dest, "bin", "fortio")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	fmt.Fprintf(os.Stderr, "building fortio %s into %s (once; a few minutes on 2 cores)\n", fortioVersion, dest)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return "", fmt.Errorf("make peer cache: %w", err)
	}
	sweepStages(root)
	stage, err := os.MkdirTemp(root, ".fortio-"+fortioVersion+".")
	if err != nil {
		return "", fmt.Errorf("make staging dir: %w", err)
	}
	defer os.RemoveAll(stage) // a no-op once published
	// Held while we build, as hack/peers/lib.sh does: a build killed mid-way leaves a stage whose lock is free.
	lock, err := owner.TryLock(filepath.Join(stage, ".lock"))
	if err != nil {
		return "", err
	}
	defer lock.Release()
	start := time.Now()
	cmd := exec.CommandContext(ctx, "go", "install", "fortio.org/fortio@"+fortioVersion)
	cmd.Dir = stage // outside the repository: no go.mod applies
	cmd.Env = append(os.Environ(), "GOBIN="+filepath.Join(stage, "bin"), "GOFLAGS=-mod=mod")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := proc.Run(cmd); err != nil {
		return "", fmt.Errorf("go install fortio.org/fortio@%s: %w", fortioVersion, err)
	}
	info := fmt.Sprintf("fortio %s\n%s\nbuilt %s in %.0f s by hack/bench-agent\n", fortioVersion, runtime.Version(),
		time.Now().UTC().Format(time.RFC3339), time.Since(start).Seconds())
	if err := os.WriteFile(filepath.Join(stage, "BUILDINFO"), []byte(info), 0o644); err != nil {
		return "", fmt.Errorf("write BUILDINFO: %w", err)
	}
	if err := os.Remove(filepath.Join(stage, ".lock")); err != nil {
		return "", err
	}
	if err := os.Chmod(stage, 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(stage, dest); err != nil {
		if _, serr := os.Stat(bin); serr != nil { // not published concurrently by someone else either
			return "", fmt.Errorf("publish %s: %w", dest, err)
		}
	}
	return bin, nil
}

// sweepStages removes the staging directories (".<name>-<version>.*") in the peer cache left by builds that were
// killed: those whose lock file is free (hack/peers/lib.sh's convention).
func sweepStages(root string) {
	stages, _ := filepath.Glob(filepath.Join(root, ".*-*.*"))
	for _, st := range stages {
		lockPath := filepath.Join(st, ".lock")
		if _, err := os.Stat(lockPath); err != nil {
			continue // published entries have none; foreign directories are not ours
		}
		l, err := owner.TryLock(lockPath)
		if err != nil {
			continue // a build in progress
		}
		if err := os.RemoveAll(st); err == nil {
			fmt.Fprintf(os.Stderr, "removed %s (a build that was killed)\n", st)
		}
		_ = l.Release()
	}
}
