//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * capture.c: steer the TCP connections of enrolled pods into the agent's
 * transparent listeners in the node network namespace.
 *
 * Two programs share the maps:
 *
 * capture (tc) is attached with TCX (or clsact) at ingress of every pod's
 * host-side veth and of every uplink. For a TCP packet whose source or
 * destination is a pod in the pods map it:
 *   1. looks up an existing socket for the exact tuple (established first)
 *      and, if there is one, marks the packet: this carries the agent's own
 *      flows (replies to spoofed upstream connections, packets of accepted
 *      connections) and keeps draining pods working;
 *   2. otherwise, for a pure SYN of an enrolled pod that is to be captured
 *      (see decide), checks that the listener is there and marks the SYN.
 * Marked packets (capture_mark) are delivered locally by policy routing
 * (fwmark -> local table), where the kernel's own TCP input takes over.
 *
 * capture_lookup (sk_lookup) is attached to the node network namespace and
 * runs when TCP input looks for a listener, after the established table
 * missed or when a SYN may reopen a TIME_WAIT connection. It applies the same
 * decide() to the lookup's tuple and arriving interface and selects the
 * listener from the listeners SOCKMAP.
 *
 * Selecting the listener at lookup time, rather than with bpf_sk_assign at tc,
 * matters when a new SYN reuses the 4-tuple of a connection the agent closed
 * first and still holds in TIME_WAIT: the kernel then retires the TIME_WAIT
 * socket (tcp_timewait_state_process, TCP_TW_SYN) before it asks for the
 * listener. A listener assigned at tc skips that, and the request socket it
 * creates collides with the TIME_WAIT entry and is silently dropped until the
 * entry expires.
 *
 * Packets are never rewritten: the agent reads the original destination with
 * getsockname().
 */

#include "bpf_min.h"
#include "capture.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Runtime constants, set by the loader before the program is loaded. */
volatile const __u32 capture_mark = 0x400;
volatile const __u32 capture_mark_mask = 0xf00;
volatile const __u32 own_mark = 0x539;
volatile const __u32 own_mark_mask = 0xfff;
volatile const __u16 hbone_port = 15008;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct pod_key);
	__type(value, struct pod_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pods SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, LISTENER_MAX);
	__type(key, enum listener);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} listeners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VERDICT_MAX);
	__type(key, enum verdict);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

/* reopen holds the connections of a SYN that capture delivered to a TIME_WAIT
 * socket of the agent although the connection is not captured (a draining
 * pod reusing the 4-tuple of a connection the agent closed first). Forwarded,
 * that SYN would be dropped: early demux attaches the TIME_WAIT socket to it
 * and the forwarding path drops packets that carry a socket. Delivered
 * locally, the TIME_WAIT socket may accept it as a new connection and ask for
 * a listener; capture_lookup refuses one for the connections listed here (and
 * forgets them), so the TIME_WAIT socket answers with an ACK, the client
 * resets it (retiring it) and retransmits the SYN at once, and that SYN takes
 * the direct path. Without the refusal a node listener on the same port could
 * take the connection. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct flow_key);
	__type(value, __u8);
} reopen SEC(".maps");

/* flow is what the parser extracts from one TCP packet. */
struct flow {
	struct bpf_sock_tuple tuple;
	struct pod_key src;
	struct pod_key dst;
	__be16 sport;
	__be16 dport;
	__u8 syn;
	__u8 ack;
	__u8 v6;
};

static __always_inline void count(enum verdict v)
{
	__u64 *n = bpf_map_lookup_elem(&stats, &v);
	if (n)
		*n += 1;
}

static __always_inline int finish(struct __sk_buff *skb, enum verdict v)
{
	/* PASS, by far the most common verdict, is not counted: it would cost
	 * a map lookup for every packet of the node. */
	if (v != VERDICT_PASS)
		count(v);
	skb->cb[0] = v;
	switch (v) {
	case VERDICT_ESTABLISHED:
	case VERDICT_OUTBOUND:
	case VERDICT_INBOUND:
	case VERDICT_HBONE:
		skb->mark = (skb->mark & ~capture_mark_mask) | capture_mark;
		return TC_ACT_OK;
	case VERDICT_NO_LISTENER:
		return TC_ACT_SHOT;
	default:
		return TC_ACT_UNSPEC;
	}
}

static __always_inline void v4_key(struct pod_key *k, __be32 addr)
{
	__u32 *w = (__u32 *)k->addr;
	w[0] = 0;
	w[1] = 0;
	w[2] = bpf_htonl(0x0000ffff);
	w[3] = addr;
}

/* parse fills f from the packet and returns 0, or -1 when the packet is not a
 * TCP segment this program handles (non-TCP, IPv6 extension headers, non-first
 * fragments, truncated headers). l2 is the link-layer header length. */
static __always_inline int parse(struct __sk_buff *skb, __u32 l2, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct tcphdr *tcp;
	__be16 proto;

	if (l2) {
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) > end)
			return -1;
		proto = eth->h_proto;
	} else {
		proto = (__be16)skb->protocol;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + l2;
		if ((void *)(ip + 1) > end)
			return -1;
		if (ip->protocol != IPPROTO_TCP)
			return -1;
		if (ip->frag_off & bpf_htons(IP_OFFSET))
			return -1;
		__u32 ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return -1;
		tcp = (void *)ip + ihl;
		if ((void *)(tcp + 1) > end)
			return -1;
		f->tuple.ipv4.saddr = ip->saddr;
		f->tuple.ipv4.daddr = ip->daddr;
		f->tuple.ipv4.sport = tcp->source;
		f->tuple.ipv4.dport = tcp->dest;
		v4_key(&f->src, ip->saddr);
		v4_key(&f->dst, ip->daddr);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + l2;
		if ((void *)(ip6 + 1) > end)
			return -1;
		if (ip6->nexthdr != IPPROTO_TCP)
			return -1;
		tcp = (void *)(ip6 + 1);
		if ((void *)(tcp + 1) > end)
			return -1;
		__builtin_memcpy(f->tuple.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(f->tuple.ipv6.daddr, &ip6->daddr, 16);
		f->tuple.ipv6.sport = tcp->source;
		f->tuple.ipv6.dport = tcp->dest;
		f->v6 = 1;
		__builtin_memcpy(f->src.addr, &ip6->saddr, 16);
		__builtin_memcpy(f->dst.addr, &ip6->daddr, 16);
	} else {
		return -1;
	}
	f->sport = tcp->source;
	f->dport = tcp->dest;
	f->syn = tcp->syn;
	f->ack = tcp->ack;
	return 0;
}

/* pods_of looks up the pod entries of a connection's source and destination.
 * A pod's entry only speaks for packets that arrive on its own interface
 * (ifindex): a spoofed source elsewhere is not outbound capture. */
static __always_inline void pods_of(struct pod_key *src_key, struct pod_key *dst_key, __u32 ifindex,
				    struct pod_info **src, struct pod_info **dst)
{
	struct pod_info *s = bpf_map_lookup_elem(&pods, src_key);
	if (s && s->ifindex != ifindex)
		s = 0;
	*src = s;
	*dst = bpf_map_lookup_elem(&pods, dst_key);
}

/* decide returns the listener that a new connection from src to dst (their
 * pod entries, either may be missing) on destination port dport is captured
 * into, or LISTENER_MAX when it is not captured. Both programs use it, so tc
 * never marks a SYN that sk_lookup would not steer. */
static __always_inline enum listener decide(struct pod_info *src, struct pod_info *dst, __be16 dport)
{
	if (src && (src->flags & POD_ENROLLED))
		return LISTENER_OUTBOUND;
	if (dst && (dst->flags & POD_ENROLLED)) {
		if (dport == bpf_htons(hbone_port))
			return LISTENER_HBONE;
		return LISTENER_INBOUND;
	}
	return LISTENER_MAX; /* neither end enrolled, or draining */
}

static __always_inline int steer(struct __sk_buff *skb, __u32 l2)
{
	struct flow f = {};
	struct pod_info *src, *dst;
	struct bpf_sock *sk;

	if ((skb->mark & own_mark_mask) == own_mark)
		return finish(skb, VERDICT_PASS);
	if (parse(skb, l2, &f) < 0)
		return finish(skb, VERDICT_PASS);

	pods_of(&f.src, &f.dst, skb->ingress_ifindex, &src, &dst);
	/* Sequential branches: clang may fold (!src && !dst) into a pointer OR
	 * that the verifier rejects. */
	if (!src) {
		if (!dst)
			return finish(skb, VERDICT_PASS);
	}

	/* Established (or half-open, or time-wait) socket first, so flows the
	 * agent holds keep working through enroll, unenroll and draining. */
	if (f.v6)
		sk = bpf_skc_lookup_tcp(skb, &f.tuple, sizeof(f.tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_skc_lookup_tcp(skb, &f.tuple, sizeof(f.tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	int reopen_tw = 0;
	if (sk) {
		/* A listener means no connection exists: the lookup fell
		 * through to the listener lookup (where capture_lookup itself
		 * answers for connections to capture). A pure SYN that meets a
		 * TIME_WAIT socket may open a new connection: it is decided
		 * below like any SYN, and TCP input retires the TIME_WAIT
		 * socket before capture_lookup selects the listener. Anything
		 * else on a TIME_WAIT socket (a retransmitted FIN, a late ACK)
		 * is that socket's. */
		reopen_tw = sk->state == BPF_TCP_TIME_WAIT && f.syn && !f.ack;
		int is_new = reopen_tw || sk->state == BPF_TCP_LISTEN;
		bpf_sk_release(sk);
		/* Marking is enough: policy routing delivers the packet
		 * locally and the stack finds this socket itself, through
		 * early demux (which bpf_sk_assign would disable, costing a
		 * full route lookup per packet). */
		if (!is_new)
			return finish(skb, VERDICT_ESTABLISHED);
	}

	/* Only a connection's first SYN is ever captured: flows that started
	 * before enrollment stay on their direct path. */
	if (!f.syn || f.ack)
		return finish(skb, VERDICT_PASS);

	enum listener key = decide(src, dst, f.dport);
	if (key == LISTENER_MAX && reopen_tw) {
		/* Not captured, but it meets the agent's TIME_WAIT socket: see
		 * reopen. Without the entry the SYN must not go local. */
		struct flow_key fk = {.src = f.src, .dst = f.dst, .sport = f.sport, .dport = f.dport};
		__u8 one = 1;
		if (bpf_map_update_elem(&reopen, &fk, &one, BPF_ANY))
			return finish(skb, VERDICT_PASS);
		return finish(skb, VERDICT_ESTABLISHED);
	}
	enum verdict v;
	switch (key) {
	case LISTENER_OUTBOUND:
		v = VERDICT_OUTBOUND;
		break;
	case LISTENER_INBOUND:
		v = VERDICT_INBOUND;
		break;
	case LISTENER_HBONE:
		v = VERDICT_HBONE;
		break;
	default:
		return finish(skb, VERDICT_PASS);
	}
	/* Without its listener (the agent is restarting) the SYN is dropped
	 * here, so that its client retransmits it, rather than delivered
	 * locally to nothing (a reset) or to some other node listener. */
	sk = bpf_map_lookup_elem(&listeners, &key);
	if (!sk)
		return finish(skb, VERDICT_NO_LISTENER);
	bpf_sk_release(sk);
	return finish(skb, v);
}

/* capture is attached to Ethernet devices (veth, physical NICs, vxlan,
 * geneve). Devices without a link-layer header (ipip, wireguard) are not
 * supported. */
SEC("tc")
int capture(struct __sk_buff *skb)
{
	return steer(skb, ETH_HLEN);
}

static __always_inline void v6_key(struct pod_key *k, const __u32 *addr)
{
	__u32 *w = (__u32 *)k->addr;
	/* Word by word: sk_lookup context fields allow loads of 4 bytes at most. */
	w[0] = addr[0];
	w[1] = addr[1];
	w[2] = addr[2];
	w[3] = addr[3];
}

/* capture_lookup is attached to the node network namespace (sk_lookup). It
 * runs for every TCP listener lookup there (TCP input, but also
 * bpf_skc_lookup_tcp in capture and netfilter socket matches), so it only
 * acts on connections that decide() captures. Those only reach TCP input
 * because capture marked their SYN (pod addresses are never local), except
 * connections from an enrolled pod to a node address, which capture marks
 * too. It cannot see TCP flags: a non-SYN segment that misses the
 * established table gets the listener too, which answers it with a reset as
 * any listener would. */
SEC("sk_lookup")
int capture_lookup(struct bpf_sk_lookup *ctx)
{
	struct pod_key src_key, dst_key;
	struct pod_info *src, *dst;
	struct bpf_sock *sk;

	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	if (ctx->family == AF_INET) {
		v4_key(&src_key, ctx->remote_ip4);
		v4_key(&dst_key, ctx->local_ip4);
	} else if (ctx->family == AF_INET6) {
		v6_key(&src_key, ctx->remote_ip6);
		v6_key(&dst_key, ctx->local_ip6);
	} else {
		return SK_PASS;
	}
	pods_of(&src_key, &dst_key, ctx->ingress_ifindex, &src, &dst);
	if (!src) {
		if (!dst)
			return SK_PASS;
	}
	enum listener key = decide(src, dst, bpf_htons((__u16)ctx->local_port));
	if (key == LISTENER_MAX) {
		/* A draining pod's connection: refuse a listener if capture
		 * delivered its SYN to the agent's TIME_WAIT socket. */
		struct flow_key fk = {.src = src_key, .dst = dst_key, .sport = ctx->remote_port,
				      .dport = bpf_htons((__u16)ctx->local_port)};
		if (!bpf_map_lookup_elem(&reopen, &fk))
			return SK_PASS;
		bpf_map_delete_elem(&reopen, &fk);
		return SK_DROP;
	}

	/* From here on the connection is the agent's: rather than let the
	 * regular lookup find some other node listener, drop it (TCP input
	 * then answers with a reset). */
	sk = bpf_map_lookup_elem(&listeners, &key);
	if (!sk) {
		count(VERDICT_NO_LISTENER);
		return SK_DROP;
	}
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		count(VERDICT_ASSIGN_FAILED);
		return SK_DROP;
	}
	return SK_PASS;
}
