// Package bpf holds Ambit's eBPF programs and their bpf2go output: the compiled objects (embedded, committed)
// and the generated Go types for their maps, programs, variables and shared C types. It has no logic; package
// redirect loads and attaches the programs.
//
// capture.c is attached with TCX (or clsact) at ingress of pod host-side veths and uplinks in the node network
// namespace. It assigns the SYNs of enrolled pods to the agent's transparent listeners (a SOCKMAP), packets of
// existing node sockets to those sockets, and marks what it assigned for policy routing. See capture.c for the
// exact logic and include/capture.h for the shared types.
//
// Regenerate with `make generate` (needs clang and llvm-strip); a plain `go build` does not need them because the
// generated files are committed.
package bpf
