// Package bpf holds Ambit's eBPF programs and their bpf2go output: the compiled objects (embedded, committed)
// and the generated Go types for their maps, programs, variables and shared C types. It has no logic; package
// redirect loads and attaches the programs.
//
// capture.c holds two programs that share the maps. capture (tc) is attached with TCX (or clsact) at ingress of
// pod host-side veths and uplinks in the node network namespace: it marks, for policy routing to local delivery,
// the SYNs of enrolled pods that are to be captured and the packets of existing node sockets. capture_lookup
// (sk_lookup) is attached to the node network namespace: when TCP input looks for a listener for one of those
// SYNs, it selects the agent's transparent listener from a SOCKMAP. Both apply the same decision function. See
// capture.c for the exact logic (and why the listener is chosen at lookup time) and include/capture.h for the
// shared types.
//
// Regenerate with `make generate` (needs clang and llvm-strip); a plain `go build` does not need them because the
// generated files are committed.
package bpf
