package testutil

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
)

var (
	portsMu sync.Mutex
	given   = map[int]bool{} // guarded by portsMu: ports handed out by this process
)

// FreePorts returns n distinct TCP ports that are free on 127.0.0.1 now, for peers that cannot take a listener
// from us. They are chosen at random outside the kernel's ephemeral range (net.ipv4.ip_local_port_range), so the
// source port of some outgoing connection cannot take one before the peer binds it, and never twice in one
// process. Another process may still bind one first: start the peer with a retry on "address already in use"
// (AddrInUse). A child of ours that can take a listener should get one instead (exec.Cmd.ExtraFiles).
func FreePorts(n int) ([]int, error) {
	lo, hi := ephemeralRange()
	var spans [][2]int
	if lo > 10000 {
		spans = append(spans, [2]int{10000, lo - 1})
	}
	if hi < 65000 {
		spans = append(spans, [2]int{hi + 1, 65535})
	}
	portsMu.Lock()
	defer portsMu.Unlock()
	out := make([]int, 0, n)
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000 {
			return nil, errors.New("no free ports outside the ephemeral range")
		}
		var p int
		if len(spans) == 0 { // the ephemeral range covers everything: let the kernel choose
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, fmt.Errorf("pick a port: %w", err)
			}
			p = ln.Addr().(*net.TCPAddr).Port
			ln.Close()
		} else {
			sp := spans[rand.IntN(len(spans))]
			p = sp[0] + rand.IntN(sp[1]-sp[0]+1)
		}
		if given[p] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		given[p] = true
		out = append(out, p)
	}
	return out, nil
}

// ephemeralRange reads net.ipv4.ip_local_port_range (default 32768 60999).
func ephemeralRange() (lo, hi int) {
	lo, hi = 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	var a, z int
	if _, err := fmt.Sscan(string(b), &a, &z); err == nil && a > 0 && z >= a {
		return a, z
	}
	return lo, hi
}

// AddrInUse reports whether a process's output says it could not bind because the address was in use.
func AddrInUse(output string) bool {
	s := strings.ToLower(output)
	return strings.Contains(s, "address already in use") || strings.Contains(s, "eaddrinuse")
}
