// Package redirect is the only part of Ambit that talks to the kernel to capture traffic. It steers the TCP
// connections of enrolled pods into the agent's three transparent listeners in the node network namespace,
// without touching the pods:
//
//   - outbound: TCP from an enrolled pod to anywhere reaches the outbound listener (15001);
//   - inbound plaintext: TCP to an enrolled pod on any port but the HBONE port reaches the inbound listener (15006);
//   - inbound HBONE: TCP to an enrolled pod's HBONE port (15008) reaches the HBONE listener.
//
// Packets are never rewritten: an accepted connection's local address is the original destination (the dialled
// pod IP and port for inbound and HBONE) and its remote address is the original source. OriginalDst reads it.
//
// Two modes do the same job with the same listeners, policy routing and original-destination handling:
//
//   - ModeEBPF: a tc program (package bpf) attached with TCX at ingress of every veth and uplink of the node
//     namespace assigns the SYNs of enrolled pods to the listeners (kept in a SOCKMAP) and the packets of existing
//     node sockets to those sockets, and marks them; a policy rule sends marked packets to a local routing table.
//     Enrollment is a write to a pinned hash map. Needs Linux 6.6 (TCX) with bpf_sk_assign and SOCKMAP lookups.
//   - ModeTPROXY: nftables "tproxy" rules in the node namespace, driven by nftables sets of enrolled pods.
//
// ModeAuto probes the kernel and uses eBPF when it can, TPROXY otherwise; Probe reports the missing feature by
// name.
//
// Capture outlives the process: maps and links are pinned under bpffs (eBPF) and the nftables table stays in the
// kernel (TPROXY), so a restarted agent calls New again and re-adopts what is installed, replacing the program
// in the existing links. While no agent runs, the SYNs of enrolled pods are dropped (retransmitted by their
// clients) rather than leaking past the mesh. Close releases the process's handles and leaves capture in place;
// Cleanup removes everything that New installed.
//
// The agent's own sockets are never captured: they are created in the node namespace (their packets never cross
// a hooked ingress) and SocketFactory marks them (SO_MARK) as well. SocketFactory also makes the transparent
// listeners and, for inbound delivery, connections bound to the original client's (non-local) address.
//
// Every kernel operation happens in Options.NetNS (a network namespace path), or in the caller's namespace at the
// time of New when it is empty, so tests can run an agent inside a lab node (see test/lab).
package redirect
