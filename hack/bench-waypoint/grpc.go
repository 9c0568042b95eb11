package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ambit-mesh/ambit/test/proc"
	"github.com/ambit-mesh/ambit/test/testutil"
)

// The gRPC rows: fortio's gRPC ping service as the backend and fortio's gRPC load generator (unary
// Ping calls; fortio has no streaming RPC load), through Ambit (appProtocol grpc: HTTP/2 both ways),
// nginx (grpc_pass) and HAProxy (proto h2 both ways).

// fortioVersion is the fortio hack/bench-agent builds into the peer cache (the last one that builds
// from the Go module proxy).
const fortioVersion = "v1.68.2"

// fortioBin returns the cached fortio (${AMBIT_PEER_CACHE:-/var/cache/ambit-peers}/fortio-<version>/bin/fortio,
// as hack/bench-agent caches it), or installs it into dir from the Go module proxy.
func fortioBin(ctx context.Context, dir string) (string, error) {
	root := os.Getenv("AMBIT_PEER_CACHE")
	if root == "" {
		root = "/var/cache/ambit-peers"
	}
	if bin := filepath.Join(root, "fortio-"+fortioVersion, "bin", "fortio"); fileExists(bin) {
		return bin, nil
	}
	fmt.Fprintf(os.Stderr, "installing fortio %s (not in %s; `make bench-agent` caches it)...\n", fortioVersion, root)
	gobin := filepath.Join(dir, "fortio-bin")
	cmd := exec.CommandContext(ctx, "go", "install", "fortio.org/fortio@"+fortioVersion)
	cmd.Dir = dir // outside the repository: no go.mod applies
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "GOFLAGS=-mod=mod")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := proc.Run(cmd); err != nil {
		return "", fmt.Errorf("go install fortio.org/fortio@%s: %w", fortioVersion, err)
	}
	return filepath.Join(gobin, "fortio"), nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// startGRPCBackend runs fortio's server (gRPC ping) on loopback and returns its gRPC address.
func startGRPCBackend(ctx context.Context, fortio string) (string, func(), error) {
	ports, err := testutil.FreePorts(2)
	if err != nil {
		return "", nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	cmd := exec.CommandContext(ctx, fortio, "server", "-http-port", fmt.Sprintf("127.0.0.1:%d", ports[0]), "-grpc-port", addr,
		"-redirect-port", "disabled", "-tcp-port", "disabled", "-udp-port", "disabled")
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	p, err := proc.Start(cmd) // dies with this program (test/proc)
	if err != nil {
		return "", nil, fmt.Errorf("start fortio server: %w", err)
	}
	stop := func() { _ = p.Stop(5 * time.Second) }
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr, stop, nil
		}
		if exited, _ := p.Exited(); exited || time.Now().After(deadline) {
			stop()
			return "", nil, fmt.Errorf("fortio server did not listen on %s", addr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// fortioResult is the part of fortio's JSON result read here.
type fortioResult struct {
	ActualQPS         float64
	RetCodes          map[string]int64
	DurationHistogram struct {
		Count       int64
		Percentiles []struct {
			Percentile float64
			Value      float64 // seconds
		}
	}
}

// grpcLoad runs fortio's gRPC ping load against addr: conns connections with streams concurrent calls
// each, at qps (0: as fast as possible) for d.
func grpcLoad(ctx context.Context, fortio, addr string, conns, streams int, qps int, d time.Duration) (*fortioResult, error) {
	f, err := os.CreateTemp("", "bench-waypoint-fortio-*.json")
	if err != nil {
		return nil, err
	}
	f.Close()
	defer os.Remove(f.Name())
	cmd := exec.CommandContext(ctx, fortio, "load", "-grpc", "-ping", "-qps", strconv.Itoa(qps), "-c", strconv.Itoa(conns*streams),
		"-s", strconv.Itoa(streams), "-t", d.String(), "-p", "50,99", "-json", f.Name(), addr)
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := proc.Run(cmd); err != nil {
		return nil, fmt.Errorf("fortio load %s: %w", addr, err)
	}
	b, err := os.ReadFile(f.Name())
	if err != nil {
		return nil, err
	}
	var r fortioResult
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse fortio result: %w", err)
	}
	var bad int64
	for code, n := range r.RetCodes {
		if code != "SERVING" {
			bad += n
		}
	}
	if n := r.DurationHistogram.Count; n == 0 || bad > n/100 {
		return nil, fmt.Errorf("fortio load %s: %d calls, %d not SERVING (%v)", addr, n, bad, r.RetCodes)
	}
	return &r, nil
}

func (r *fortioResult) percentile(p float64) time.Duration {
	for _, x := range r.DurationHistogram.Percentiles {
		if x.Percentile == p {
			return time.Duration(x.Value * float64(time.Second))
		}
	}
	return 0
}
