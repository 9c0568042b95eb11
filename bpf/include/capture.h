/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * capture.h: the single definition of the types shared between the capture
 * program and Go (bpf2go generates Go types from these with -type).
 */
#ifndef AMBIT_CAPTURE_H
#define AMBIT_CAPTURE_H

#include "bpf_min.h"

/* verdict is what a program decided. The tc program writes its verdict to
 * skb->cb[0] (so BPF_PROG_TEST_RUN returns it in ContextOut); both programs
 * count every verdict but VERDICT_PASS in the per-CPU stats map. */
enum verdict {
	VERDICT_PASS = 0,          /* not ours: the next program or the stack decides */
	VERDICT_ESTABLISHED = 1,   /* tc: belongs to an existing node socket (or is a SYN of a connection
	                            * not captured that meets the agent's TIME_WAIT socket): marked */
	VERDICT_OUTBOUND = 2,      /* tc: SYN from an enrolled pod: marked for the outbound listener */
	VERDICT_INBOUND = 3,       /* tc: SYN to an enrolled pod: marked for the inbound plaintext listener */
	VERDICT_HBONE = 4,         /* tc: SYN to an enrolled pod's HBONE port: marked for the HBONE listener */
	VERDICT_NO_LISTENER = 5,   /* tc or sk_lookup: connection to capture but the listener is missing
	                            * (agent restarting): dropped */
	VERDICT_ASSIGN_FAILED = 6, /* sk_lookup: bpf_sk_assign refused the listener: dropped */
	VERDICT_MALFORMED = 7,     /* tc ingress: from or to a captured pod, TCP that cannot be checked (an IP
	                            * fragment of TCP, a truncated or short TCP header, an IPv6 header chain
	                            * too long or truncated to find TCP): dropped */
	VERDICT_UNHOOKED = 8,      /* tc egress (pod side): a new TCP connection to an enrolled pod forwarded
	                            * from an interface capture does not hook: dropped */
	VERDICT_DNS = 9,           /* tc: a DNS query (UDP, or the SYN of TCP, to port 53) from an enrolled
	                            * pod with DNS capture on: marked for the DNS socket or listener */
	VERDICT_MAX = 10,
};

/* listener is the key of the listeners SOCKMAP. */
enum listener {
	LISTENER_OUTBOUND = 0,
	LISTENER_INBOUND = 1,
	LISTENER_HBONE = 2,
	LISTENER_DNS_UDP = 3, /* the DNS proxy's UDP socket (DNS capture on) */
	LISTENER_DNS_TCP = 4, /* the DNS proxy's TCP listener (DNS capture on) */
	LISTENER_MAX = 5,
};

/* pod_flags are the bits of pod_info.flags. A pod entry without
 * POD_ENROLLED is draining: its new connections are no longer captured but
 * packets of connections the agent already holds still reach them. */
enum pod_flags {
	POD_ENROLLED = 1,
};

/* pod_key is an IPv6 address; IPv4 addresses are stored v4-mapped
 * (::ffff:a.b.c.d). */
struct pod_key {
	__u8 addr[16];
};

/* flow_key names a TCP connection: addresses as in pod_key, ports in
 * network byte order. */
struct flow_key {
	struct pod_key src;
	struct pod_key dst;
	__be16 sport;
	__be16 dport;
};

/* pod_info is the value of the pods map. */
struct pod_info {
	__u32 ifindex;     /* host-side interface of the pod (anti-spoofing for outbound) */
	enum pod_flags flags;
	__u64 drain_since; /* CLOCK_MONOTONIC ns when unenrolled, 0 while enrolled; read by user space only */
	__u8 uid[64];      /* pod UID, NUL padded; read by user space only */
};

#endif /* AMBIT_CAPTURE_H */
