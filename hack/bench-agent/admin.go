package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// adminAddr is the agents' admin API (the default, on localhost inside each node namespace); it serves
// net/http/pprof under /debug/pprof/.
const adminAddr = "127.0.0.1:15000"

// adminGet fetches path from node i's agent admin API.
func (b *bench) adminGet(ctx context.Context, i int, path string, timeout time.Duration) ([]byte, error) {
	ns := b.lab.Nodes[i].NS
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		return ns.Dial(ctx, network, addr)
	}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+adminAddr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("admin %s on node%d: %w", path, i, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("admin %s on node%d: %w", path, i, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("admin %s on node%d: %s", path, i, resp.Status)
	}
	return body, nil
}

// memStats are the Go runtime's memory figures of both agents together, after a forced GC.
type memStats struct {
	heapLive, stack int64 // bytes: HeapAlloc right after GC, stack spans in use
	goroutines      int64
}

// liveMemory forces a GC in both agents (pprof's heap?gc=1) and reads their runtime.MemStats and goroutine
// counts.
func (b *bench) liveMemory(ctx context.Context) (memStats, error) {
	var m memStats
	for i := range b.agents {
		body, err := b.adminGet(ctx, i, "/debug/pprof/heap?gc=1&debug=1", 30*time.Second)
		if err != nil {
			return m, err
		}
		for _, line := range strings.Split(string(body), "\n") {
			k, v, ok := strings.Cut(strings.TrimPrefix(line, "# "), " = ")
			if !ok {
				continue
			}
			v, _, _ = strings.Cut(v, " ")
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				continue
			}
			switch k {
			case "HeapAlloc":
				m.heapLive += n
			case "Stack":
				m.stack += n
			}
		}
		body, err = b.adminGet(ctx, i, "/debug/pprof/goroutine?debug=1", 30*time.Second)
		if err != nil {
			return m, err
		}
		first, _, _ := strings.Cut(string(body), "\n")
		if n, err := strconv.ParseInt(strings.TrimPrefix(first, "goroutine profile: total "), 10, 64); err == nil {
			m.goroutines += n
		}
	}
	return m, nil
}

// cpuProfiles records a CPU profile of both agents for d while load runs, into the -profile directory.
func (b *bench) cpuProfiles(ctx context.Context, name string, d time.Duration, load func() error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(b.agents))
	secs := max(1, int(d.Seconds()))
	for i := range b.agents {
		wg.Go(func() {
			body, err := b.adminGet(ctx, i, fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), d+time.Minute)
			if err == nil {
				err = os.WriteFile(filepath.Join(b.o.profile, fmt.Sprintf("%s-node%d.pprof", name, i)), body, 0o644)
			}
			errs[i] = err
		})
	}
	time.Sleep(200 * time.Millisecond) // let the profilers start first
	lerr := load()
	wg.Wait()
	if lerr != nil {
		return lerr
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// heapProfiles saves both agents' heap (after GC) and goroutine profiles into the -profile directory.
func (b *bench) heapProfiles(ctx context.Context, name string) error {
	for i := range b.agents {
		for _, p := range []struct{ path, file string }{
			{"/debug/pprof/heap?gc=1", "heap"}, {"/debug/pprof/goroutine", "goroutine"},
		} {
			body, err := b.adminGet(ctx, i, p.path, 30*time.Second)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(b.o.profile, fmt.Sprintf("%s-%s-node%d.pprof", name, p.file, i)), body, 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}
