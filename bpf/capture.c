//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * capture.c: steer the TCP connections of enrolled pods into the agent's
 * transparent listeners in the node network namespace.
 *
 * Attached with TCX (or clsact) at ingress of every pod's host-side veth and
 * of every uplink. For a TCP packet whose source or destination is a pod in
 * the pods map it:
 *   1. looks up an existing socket for the exact tuple (established first) and,
 *      if there is one, assigns the packet to it: this carries the agent's own
 *      flows (replies to spoofed upstream connections, packets of accepted
 *      connections) and keeps draining pods working;
 *   2. otherwise, for a pure SYN of an enrolled pod, assigns the agent's
 *      outbound (from the pod), HBONE (to the pod's hbone_port) or inbound
 *      plaintext (to any other port) listener, taken from the listeners
 *      SOCKMAP.
 * Every assigned packet gets capture_mark so that policy routing
 * (fwmark -> local table) delivers it locally. Packets are never rewritten:
 * the agent reads the original destination with getsockname().
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

/* flow is what the parser extracts from one TCP packet. */
struct flow {
	struct bpf_sock_tuple tuple;
	struct pod_key src;
	struct pod_key dst;
	__be16 dport;
	__u8 syn;
	__u8 ack;
	__u8 v6;
};

static __always_inline int finish(struct __sk_buff *skb, enum verdict v, long err)
{
	/* PASS, by far the most common verdict, is not counted: it would cost
	 * a map lookup for every packet of the node. */
	if (v != VERDICT_PASS) {
		__u64 *n = bpf_map_lookup_elem(&stats, &v);
		if (n)
			*n += 1;
	}
	skb->cb[0] = v;
	skb->cb[1] = (__u32)err;
	switch (v) {
	case VERDICT_ESTABLISHED:
	case VERDICT_OUTBOUND:
	case VERDICT_INBOUND:
	case VERDICT_HBONE:
		skb->mark = (skb->mark & ~capture_mark_mask) | capture_mark;
		return TC_ACT_OK;
	case VERDICT_NO_LISTENER:
	case VERDICT_ASSIGN_FAILED:
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
	f->dport = tcp->dest;
	f->syn = tcp->syn;
	f->ack = tcp->ack;
	return 0;
}

static __always_inline int steer(struct __sk_buff *skb, __u32 l2)
{
	struct flow f = {};
	struct pod_info *src, *dst;
	struct bpf_sock *sk;
	enum listener key;
	long err;

	if ((skb->mark & own_mark_mask) == own_mark)
		return finish(skb, VERDICT_PASS, 0);
	if (parse(skb, l2, &f) < 0)
		return finish(skb, VERDICT_PASS, 0);

	/* A pod's entry only speaks for packets that arrive on its own
	 * interface: a spoofed source elsewhere is not outbound capture. */
	src = bpf_map_lookup_elem(&pods, &f.src);
	if (src && src->ifindex != skb->ingress_ifindex)
		src = 0;
	dst = bpf_map_lookup_elem(&pods, &f.dst);
	/* Sequential branches: clang may fold (!src && !dst) into a pointer OR
	 * that the verifier rejects. */
	if (!src) {
		if (!dst)
			return finish(skb, VERDICT_PASS, 0);
	}

	/* Established (or half-open, or time-wait) socket first, so flows the
	 * agent holds keep working through enroll, unenroll and draining. */
	if (f.v6)
		sk = bpf_skc_lookup_tcp(skb, &f.tuple, sizeof(f.tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_skc_lookup_tcp(skb, &f.tuple, sizeof(f.tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		if (sk->state == BPF_TCP_LISTEN || (sk->state == BPF_TCP_TIME_WAIT && f.syn && !f.ack)) {
			bpf_sk_release(sk);
		} else {
			/* Marking is enough: policy routing delivers the packet
			 * locally and the stack finds this socket itself, through
			 * early demux (which bpf_sk_assign would disable, costing
			 * a full route lookup per packet). */
			bpf_sk_release(sk);
			return finish(skb, VERDICT_ESTABLISHED, 0);
		}
	}

	/* Only a connection's first SYN is ever captured: flows that started
	 * before enrollment stay on their direct path. */
	if (!f.syn || f.ack)
		return finish(skb, VERDICT_PASS, 0);

	enum verdict v;
	if (src && (src->flags & POD_ENROLLED)) {
		key = LISTENER_OUTBOUND;
		v = VERDICT_OUTBOUND;
	} else if (dst && (dst->flags & POD_ENROLLED)) {
		if (f.dport == bpf_htons(hbone_port)) {
			key = LISTENER_HBONE;
			v = VERDICT_HBONE;
		} else {
			key = LISTENER_INBOUND;
			v = VERDICT_INBOUND;
		}
	} else {
		return finish(skb, VERDICT_PASS, 0); /* draining */
	}

	sk = bpf_map_lookup_elem(&listeners, &key);
	if (!sk)
		return finish(skb, VERDICT_NO_LISTENER, 0);
	/* The verdict is recorded before the assignment result is known so
	 * that BPF_PROG_TEST_RUN, where bpf_sk_assign returns -EOPNOTSUPP,
	 * still shows the decision; cb[1] carries the error. */
	skb->cb[2] = v;
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return finish(skb, VERDICT_ASSIGN_FAILED, err);
	return finish(skb, v, 0);
}

/* capture is attached to Ethernet devices (veth, physical NICs, vxlan,
 * geneve). Devices without a link-layer header (ipip, wireguard) are not
 * supported. */
SEC("tc")
int capture(struct __sk_buff *skb)
{
	return steer(skb, ETH_HLEN);
}
