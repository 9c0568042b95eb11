package testutil

import (
	"fmt"
	"net"
	"testing"
)

func TestFreePortsAvoidTheEphemeralRange(t *testing.T) {
	lo, hi := ephemeralRange()
	ports, err := FreePorts(20)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Errorf("port %d handed out twice", p)
		}
		seen[p] = true
		if lo > 10000 && p >= lo && p <= hi {
			t.Errorf("port %d is in the ephemeral range %d-%d", p, lo, hi)
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Errorf("port %d is not free: %v", p, err)
			continue
		}
		ln.Close()
	}
	more, err := FreePorts(5)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range more {
		if seen[p] {
			t.Errorf("port %d handed out again in a later call", p)
		}
	}
}

func TestAddrInUse(t *testing.T) {
	for out, want := range map[string]bool{
		"listen tcp 127.0.0.1:2379: bind: address already in use": true,
		"failed to listen: EADDRINUSE":                            true,
		"connection refused":                                      false,
	} {
		if got := AddrInUse(out); got != want {
			t.Errorf("AddrInUse(%q) = %v, want %v", out, got, want)
		}
	}
}
