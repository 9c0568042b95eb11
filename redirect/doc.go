// Package redirect is the only part of Ambit that talks to the kernel to capture traffic. It steers the TCP
// connections of enrolled pods into the agent's transparent listeners in the node network namespace,
// without touching the pods:
//
//   - outbound: TCP from an enrolled pod to anywhere reaches the outbound listener (15001);
//   - inbound plaintext: TCP to an enrolled pod on any port but the HBONE port reaches the inbound listener (15006);
//   - inbound HBONE: TCP to an enrolled pod's HBONE port (15008) reaches the HBONE listener;
//   - inbound after the node's DNAT: TCP that the node itself translates to an enrolled pod's address (kube-proxy's
//     ClusterIP, NodePort, LoadBalancer and external IPs) reaches the InboundDNAT listener (15007). Capture proper
//     looks at packets before netfilter's DNAT and sees only the Service address, so a "postdnat" nftables
//     chain after the DNAT (both modes) tproxies these connections; the listener's own mark keeps them tracked
//     by conntrack, which undoes the DNAT on the agent's replies. Without that listener, or in ModeEBPF without
//     nftables, they are dropped (with nftables) or, without nftables at all, pass as before (logged at start).
//
// Packets are never rewritten: an accepted connection's local address is the original destination (the dialled
// pod IP and port for inbound and HBONE) and its remote address is the original source. OriginalDst reads it.
//
// Two modes do the same job with the same listeners, policy routing and original-destination handling:
//
//   - ModeEBPF: a tc program (package bpf) attached with TCX at ingress of every interface of the node namespace
//     but loopback (veths, uplinks, overlay devices, second NICs, L3 tunnels; interfaces that appear later as
//     netlink reports them) marks the SYNs of enrolled pods and the packets of existing node sockets; a policy rule sends
//     marked packets to a local routing table, so the kernel's own TCP input receives them. When that input looks
//     for a listener, an sk_lookup program attached to the node namespace selects the agent's listener (kept in a
//     SOCKMAP) for the connections to capture. Choosing the listener there, not at tc, lets the kernel retire a
//     TIME_WAIT socket of the agent's that a new SYN reuses (TPROXY does the same), instead of dropping that SYN
//     until the TIME_WAIT socket expires. A draining pod's SYN that reuses such a 4-tuple is delivered to the
//     TIME_WAIT socket too (forwarded, it would be dropped) but refused a listener, so the socket is reset by
//     the client, which retries at once on the direct path. Enrollment is a write to a pinned hash map.
//     Fail closed: TCP from or to a captured pod that the program cannot check (IP fragments, a truncated TCP
//     header, an IPv6 extension header chain longer than it walks) is dropped, never passed: tc runs before
//     reassembly, so a SYN split into fragments would otherwise reach the pod (or leave it) around the agent.
//     Legitimate TCP is not fragmented (DF and path MTU discovery; the pod network's MTU must carry the pods'
//     full segments), and non-TCP fragments pass (package bpf documents the rule). A backstop at egress of
//     every veth (and of any other interface a pod is routed through, added at Enroll) drops a new connection
//     to an enrolled pod that the node forwards from an interface capture is not attached to (one whose link
//     type it cannot parse, or one that appeared a moment ago).
//     Kernel features: TCX links (Linux 6.6), bpf_skc_lookup_tcp in tc (5.2), SOCKMAP lookups from BPF (5.9),
//     sk_lookup programs with bpf_sk_assign (5.9) and their ingress_ifindex (5.17), netns bpf_links. The
//     minimum is Linux 6.6 (TCX); Probe checks each.
//   - ModeTPROXY: nftables "tproxy" rules in the node namespace, driven by nftables sets of enrolled pods.
//     Netfilter reassembles fragments and walks IPv6 extension headers before the rules run, and the rules
//     match on every interface, so fragmented or extension-header SYNs are captured like any other.
//
// ModeAuto probes the kernel and uses eBPF when it can, TPROXY otherwise; Probe reports the missing feature by
// name.
//
// Capture outlives the process: maps and links (TCX and sk_lookup) are pinned under bpffs (eBPF) and the nftables
// table stays in the kernel (TPROXY), so a restarted agent calls New again and re-adopts what is installed,
// replacing the programs in the existing links. While no agent runs, the SYNs of enrolled pods are dropped (retransmitted by their
// clients) rather than leaking past the mesh. Close releases the process's handles and leaves capture in place;
// Cleanup removes everything that New installed. That holds only if the pins outlive the process: a bpffs
// mounted in a mount namespace private to it (under `ip netns exec`, which remounts /sys, the agent mounts a
// fresh one) goes, with every pin and so capture itself, when the process exits. ModeEBPF's New therefore
// refuses (ErrEphemeralPins) a PinDir whose bpffs is not the host's: not in the host mount namespace, and not
// the same bpffs as one mounted in PID 1's mount table, or, where the host cannot be seen (a container with
// its own PID namespace), not propagated to or from it (a hostPath with mountPropagation Bidirectional or
// HostToContainer). Options.AllowEphemeralPins starts anyway, logging the danger at error level.
//
// Conntrack. On a real node conntrack is on in the node namespace (kube-proxy's NAT, the CNI's masquerade and
// firewall rules), so both modes keep every connection of the agent's either tracked in both directions or in
// neither. Captured connections (those the listeners accept) skip it in both: their clients' packets in a raw
// prerouting chain (ModeEBPF: the packets the program marked; ModeTPROXY: the SYNs of enrolled pods and the
// packets of transparent sockets) and the agent's packets on them in a raw output chain (packets of transparent
// sockets without the own mark). Tracked one way only, conntrack takes the listener's SYN-ACK for invalid (which
// a "ct state invalid drop" rule drops) and picks the connection up at the agent's next packet with the agent as
// its originator: SO_ORIGINAL_DST then names the client as the original destination, and a masquerade of pod
// sources rewrites the agent's replies on inbound connections. The connections the agent dials (SocketFactory,
// own mark) are tracked in both directions: the raw prerouting chains leave their replies alone by the mark of
// the socket they belong to, so node NAT (the masquerade of egress dialled from a pod's IP) and stateful
// firewall rules apply to them as to the pods' own connections. OriginalDst also ignores a conntrack answer that
// names the peer, the sign of such a pick-up. Options.DisableNoTrack removes the raw chains: captured
// connections are then tracked from their clients' SYNs on.
//
// Every reply of a connection the agent dialled reaches the agent, whatever NAT the node applies to it: the first
// packet stamps the own mark into the connection's conntrack mark (bits under Marks.OwnMask), and reply packets
// of such connections get the capture mark in prerouting. This covers the node's destination NAT in output
// (kube-proxy's ClusterIP or LoadBalancer address of a Service the agent passes through from a pod's address),
// whose replies name the backend, which no socket lookup can match to the agent's socket before conntrack undoes
// the translation on local delivery.
//
// The agent's own sockets are never captured: they are created in the node namespace (their packets never cross
// a hooked ingress) and SocketFactory marks them (SO_MARK) as well. SocketFactory also makes the transparent
// listeners and, for inbound delivery, connections bound to the original client's (non-local) address.
//
// A restarted agent keeps its listening sockets too: HandoffServer and Take pass them from the running process
// to its successor over a unix socket (SCM_RIGHTS), so the SOCKMAP (ModeEBPF) and the TPROXY ports keep naming
// the same sockets and no connection meets a closed port during the restart (see handoff_linux.go).
//
// Every kernel operation happens in Options.NetNS (a network namespace path), or in the caller's namespace at the
// time of New when it is empty, so tests can run an agent inside a lab node (see test/lab).
package redirect
