// Package bpf holds Ambit's eBPF programs and their bpf2go output: the compiled objects (embedded, committed)
// and the generated Go types for their maps, programs, variables and shared C types. It has no logic; package
// redirect loads and attaches the programs.
//
// capture.c holds the programs, which share the maps. capture (tc) is attached with TCX at ingress of every
// interface of the node network namespace but loopback (capture_l3, the same program, on devices without a
// link-layer header: ipip, sit, ip6tnl, wireguard, tun): it marks, for policy routing to local delivery, the SYNs
// of enrolled pods that are to be captured and the packets of existing node sockets. capture_lookup (sk_lookup)
// is attached to the node network namespace: when TCP input looks for a listener for one of those SYNs, it
// selects the agent's transparent listener from a SOCKMAP. Both apply the same decision function.
// capture_egress, at egress of pods' host-side interfaces, is the fail-closed backstop: a new connection to an
// enrolled pod that the node forwards from an interface capture is not attached to (the hooked map; one that
// appeared since the agent last looked, or one whose link type capture cannot parse) is dropped. See capture.c
// for the exact logic (and why the listener is chosen at lookup time) and include/capture.h for the shared types.
//
// What capture cannot check it drops (verdict VERDICT_MALFORMED, counted in stats) when it is TCP to an
// enrolled pod or from one (arriving on the pod's own interface), and passes otherwise (draining pods, pods
// not enrolled, the rest of the node):
//
//   - IP fragments. tc ingress runs before reassembly, and a fragment hides or splits the TCP header: a tiny
//     first IPv4 fragment carrying 8 bytes of TCP (RFC 1858) has no flags, a later fragment has no header at
//     all, yet after reassembly they may be a SYN. Capture neither reassembles (a BPF program cannot hold
//     fragments) nor steers fragments (the listener decision needs the flags), so every IPv4 fragment (MF set
//     or a non-zero offset) and every IPv6 packet with a non-atomic Fragment header of TCP is dropped. An IPv6
//     atomic fragment (offset 0, no more fragments) is a whole packet and is parsed like one.
//   - TCP headers that do not fit: fewer than 20 bytes, or a data offset below 20 bytes or past the segment.
//   - IPv6 extension header chains (Hop-by-Hop, Routing, Destination Options, Fragment, AH) are walked, up to
//     six headers, to find TCP, as IPv6 input does; a longer or truncated chain is dropped.
//
// The MTU assumption this rests on: legitimate TCP is never fragmented. Linux (and every common stack) sends
// TCP with DF set and sizes segments by path MTU discovery, routers do not fragment DF packets, and IPv6
// routers never fragment; an overlay fragments its outer (UDP) packets, which capture passes, and its device
// hands capture whole inner packets. So the pod network's MTU must carry a full-sized TCP segment of its pods'
// MSS without fragmenting it (ICMP "fragmentation needed" / "packet too big" must reach the pods, as PMTU
// discovery needs anyway); a pod that disables PMTU discovery (IP_PMTUDISC_DONT) over a smaller link loses
// the fragmented segments of its captured connections. Non-TCP fragments (UDP, ICMP) are never touched.
//
// Regenerate with `make generate` (needs clang and llvm-strip); a plain `go build` does not need them because the
// generated files are committed.
package bpf
