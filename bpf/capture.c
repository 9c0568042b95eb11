//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * capture.c: steer the TCP connections of enrolled pods into the agent's
 * transparent listeners in the node network namespace.
 *
 * The programs share the maps:
 *
 * capture (tc) is attached with TCX at ingress of every interface of the
 * node network namespace but loopback (capture_l3 on devices without a
 * link-layer header). For a TCP packet whose source or destination is a pod
 * in the pods map it:
 *   1. looks up an existing socket for the exact tuple (established first)
 *      and, if there is one, marks the packet: this carries the agent's own
 *      flows (replies to spoofed upstream connections, packets of accepted
 *      connections) and keeps draining pods working;
 *   2. otherwise, for a pure SYN of an enrolled pod that is to be captured
 *      (see decide), checks that the listener is there and marks the SYN.
 * Marked packets (capture_mark) are delivered locally by policy routing
 * (fwmark -> local table), where the kernel's own TCP input takes over.
 * TCP from or to a captured pod whose header it cannot check (IP fragments,
 * truncated headers, overlong IPv6 extension header chains) is dropped: tc
 * runs before reassembly (see doc.go for the rule and its MTU assumption).
 *
 * capture_egress (tc) is attached at egress of pods' host-side interfaces:
 * the backstop for new connections to enrolled pods forwarded from an
 * interface capture is not attached to.
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
/* dns_capture, when set, steers the DNS queries of enrolled pods (UDP and
 * TCP to port 53) to the DNS proxy's socket and listener. */
volatile const __u8 dns_capture = 0;

#define DNS_PORT 53

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

/* hooked holds the interfaces (ifindex) whose ingress capture is attached
 * to, written by the loader. capture_egress drops a new connection to an
 * enrolled pod that was forwarded from any other interface: it bypassed
 * capture (an interface that appeared since the agent last looked, or one
 * capture cannot attach to). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} hooked SEC(".maps");

/* flow is what the parser extracts from one packet: the addresses of any IP
 * packet it classifies, and the TCP fields when it is a whole TCP segment. */
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

/* parse_result classifies a packet. */
enum parse_result {
	PARSE_TCP,     /* a TCP segment with a whole, consistent header: f is complete */
	PARSE_OTHER,   /* not TCP (or not IP, or an IP header that IP input drops): not ours */
	PARSE_SUSPECT, /* TCP, or maybe TCP, whose header cannot be checked here: an IP fragment of TCP
	                * (or of an IPv6 header chain that may lead to TCP), a TCP header that is
	                * truncated or shorter than 20 bytes, an IPv6 header chain longer than
	                * V6_MAX_EXT headers or truncated. f has the addresses. */
	PARSE_PULL,    /* (parse_once only) the headers are not all in the linear data: pull and retry */
	PARSE_UDP,     /* a whole UDP datagram (not a fragment, no IPv6 extension headers): f has the
	                * addresses and ports */
};

/* V6_MAX_EXT is how many IPv6 extension headers the parser walks to find
 * TCP. Legitimate TCP has none (or a Hop-by-Hop header); a longer chain to or
 * from a captured pod is dropped. */
#define V6_MAX_EXT 6

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
	case VERDICT_DNS:
		skb->mark = (skb->mark & ~capture_mark_mask) | capture_mark;
		return TC_ACT_OK;
	case VERDICT_NO_LISTENER:
	case VERDICT_MALFORMED:
	case VERDICT_UNHOOKED:
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

/* tcp_fill completes f from a fixed TCP header th of a segment of l4len bytes
 * (TCP header and payload, from the IP lengths). The data offset must cover
 * the fixed header and fit in the segment, as TCP input requires. */
static __always_inline int tcp_fill(struct flow *f, const struct tcphdr *th, __u32 l4len)
{
	__u32 doff = th->doff * 4;
	if (doff < sizeof(*th) || doff > l4len)
		return PARSE_SUSPECT;
	if (f->v6) {
		f->tuple.ipv6.sport = th->source;
		f->tuple.ipv6.dport = th->dest;
	} else {
		f->tuple.ipv4.sport = th->source;
		f->tuple.ipv4.dport = th->dest;
	}
	f->sport = th->source;
	f->dport = th->dest;
	f->syn = th->syn;
	f->ack = th->ack;
	return PARSE_TCP;
}

/* need_linear returns PARSE_PULL (setting *need) when the skb holds n bytes
 * but its linear data does not, else fail: the packet is shorter than that. */
static __always_inline int need_linear(struct __sk_buff *skb, __u32 n, __u32 *need, int fail)
{
	if (skb->len < n)
		return fail;
	*need = n;
	return PARSE_PULL;
}

static __always_inline int v6_ext_header(__u8 nh)
{
	return nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS || nh == IPPROTO_AH ||
	       nh == IPPROTO_FRAGMENT;
}

/* v6_ext walks the IPv6 extension headers from next header nh at offset base
 * (the end of the IPv6 header; plen is the payload length after it) to find
 * TCP, as IPv6 input does: Hop-by-Hop, Routing, Destination Options,
 * Fragment and AH headers are walked, any other next header ends the chain.
 * It reads with bpf_skb_load_bytes (no linear data needed): this is the slow
 * path, taken only by packets with extension headers. */
static __always_inline int v6_ext(struct __sk_buff *skb, struct flow *f, __u8 nh, __u32 base, __u32 plen)
{
	__u32 off = base;
	int frag = 0;

	for (int i = 0; i < V6_MAX_EXT; i++) {
		if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS) {
			__u8 h[2];
			if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
				return PARSE_SUSPECT;
			nh = h[0];
			off += (h[1] + 1) * 8;
		} else if (nh == IPPROTO_AH) {
			__u8 h[2];
			if (bpf_skb_load_bytes(skb, off, h, sizeof(h)))
				return PARSE_SUSPECT;
			nh = h[0];
			off += (h[1] + 2) * 4;
		} else if (nh == IPPROTO_FRAGMENT) {
			struct frag_hdr fh;
			if (bpf_skb_load_bytes(skb, off, &fh, sizeof(fh)))
				return PARSE_SUSPECT;
			nh = fh.nexthdr;
			off += sizeof(fh);
			if (fh.frag_off & bpf_htons(IP6_OFFSET)) {
				/* A later fragment: what it carries is only known from
				 * the first one. An upper-layer protocol other than TCP
				 * is not ours; TCP, or extension headers that may lead
				 * to it, is a fragment of (maybe) TCP. */
				if (nh == IPPROTO_TCP || v6_ext_header(nh))
					return PARSE_SUSPECT;
				return PARSE_OTHER;
			}
			/* The first fragment, or an atomic fragment (offset 0, no
			 * more fragments), which is a whole packet. */
			if (fh.frag_off & bpf_htons(IP6_MF))
				frag = 1;
		} else {
			break;
		}
	}
	if (nh != IPPROTO_TCP) {
		if (v6_ext_header(nh))
			return PARSE_SUSPECT; /* the chain goes on past V6_MAX_EXT headers */
		return PARSE_OTHER;
	}
	if (frag)
		return PARSE_SUSPECT;
	__u32 hdrs = off - base;
	if (hdrs > plen || plen - hdrs < sizeof(struct tcphdr))
		return PARSE_SUSPECT;
	struct tcphdr th;
	if (bpf_skb_load_bytes(skb, off, &th, sizeof(th)))
		return PARSE_SUSPECT;
	return tcp_fill(f, &th, plen - hdrs);
}

/* udp_fill completes f from the UDP header uh (ports only: DNS capture needs
 * no more). */
static __always_inline int udp_fill(struct flow *f, const struct udphdr *uh)
{
	f->sport = uh->source;
	f->dport = uh->dest;
	return PARSE_UDP;
}

/* udp_parse4 classifies an IPv4 UDP datagram: whole ones are PARSE_UDP,
 * fragments and truncated headers are not ours (PARSE_OTHER: DNS capture
 * leaves them to the stack). */
static __always_inline int udp_parse4(struct __sk_buff *skb, __u32 l2, struct iphdr *ip, void *end, struct flow *f,
				      __u32 *need)
{
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip) || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return PARSE_OTHER;
	f->tuple.ipv4.saddr = ip->saddr;
	f->tuple.ipv4.daddr = ip->daddr;
	v4_key(&f->src, ip->saddr);
	v4_key(&f->dst, ip->daddr);
	struct udphdr *uh = (void *)ip + ihl;
	if ((void *)(uh + 1) > end)
		return need_linear(skb, l2 + ihl + sizeof(*uh), need, PARSE_OTHER);
	return udp_fill(f, uh);
}

/* udp_parse6 is udp_parse4 for IPv6 (UDP right after the fixed header). */
static __always_inline int udp_parse6(struct __sk_buff *skb, __u32 l2, struct ipv6hdr *ip6, void *end, struct flow *f,
				      __u32 *need)
{
	__builtin_memcpy(f->src.addr, &ip6->saddr, 16);
	__builtin_memcpy(f->dst.addr, &ip6->daddr, 16);
	f->v6 = 1;
	struct udphdr *uh = (void *)(ip6 + 1);
	if ((void *)(uh + 1) > end)
		return need_linear(skb, l2 + sizeof(*ip6) + sizeof(*uh), need, PARSE_OTHER);
	return udp_fill(f, uh);
}

/* parse_once classifies the packet (see parse_result) and fills f. l2 is the
 * link-layer header length. It returns PARSE_PULL with *need set when the
 * headers it must read directly are not all in the linear data. */
static __always_inline int parse_once(struct __sk_buff *skb, __u32 l2, struct flow *f, __u32 *need)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__be16 proto;

	if (l2) {
		struct ethhdr *eth = data;
		if ((void *)(eth + 1) > end)
			return need_linear(skb, sizeof(*eth), need, PARSE_OTHER);
		proto = eth->h_proto;
	} else {
		proto = (__be16)skb->protocol;
	}

	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + l2;
		if ((void *)(ip + 1) > end)
			return need_linear(skb, l2 + sizeof(*ip), need, PARSE_OTHER);
		if (ip->protocol == IPPROTO_UDP)
			return udp_parse4(skb, l2, ip, end, f, need);
		if (ip->protocol != IPPROTO_TCP)
			return PARSE_OTHER;
		f->tuple.ipv4.saddr = ip->saddr;
		f->tuple.ipv4.daddr = ip->daddr;
		v4_key(&f->src, ip->saddr);
		v4_key(&f->dst, ip->daddr);
		__u32 ihl = ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return PARSE_OTHER; /* IP input drops it */
		/* Any fragment, the first (MF) or a later one (offset): only
		 * reassembly, after this program, shows the whole TCP header. */
		if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
			return PARSE_SUSPECT;
		__u32 tot = bpf_ntohs(ip->tot_len);
		if (tot == 0)
			tot = skb->len - l2; /* BIG TCP: GSO packets over 64 KiB */
		if (tot < ihl)
			return PARSE_OTHER; /* IP input drops it */
		if (tot - ihl < sizeof(struct tcphdr))
			return PARSE_SUSPECT;
		struct tcphdr *tcp = (void *)ip + ihl;
		if ((void *)(tcp + 1) > end)
			return need_linear(skb, l2 + ihl + sizeof(*tcp), need, PARSE_SUSPECT);
		return tcp_fill(f, tcp, tot - ihl);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + l2;
		if ((void *)(ip6 + 1) > end)
			return need_linear(skb, l2 + sizeof(*ip6), need, PARSE_OTHER);
		__u8 nh = ip6->nexthdr;
		if (nh == IPPROTO_UDP)
			return udp_parse6(skb, l2, ip6, end, f, need);
		if (nh != IPPROTO_TCP && !v6_ext_header(nh))
			return PARSE_OTHER;
		__u32 plen = bpf_ntohs(ip6->payload_len);
		__builtin_memcpy(f->tuple.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(f->tuple.ipv6.daddr, &ip6->daddr, 16);
		__builtin_memcpy(f->src.addr, &ip6->saddr, 16);
		__builtin_memcpy(f->dst.addr, &ip6->daddr, 16);
		f->v6 = 1;
		if (plen == 0)
			plen = skb->len - l2 - sizeof(*ip6); /* jumbogram or BIG TCP */
		if (nh != IPPROTO_TCP)
			return v6_ext(skb, f, nh, l2 + sizeof(*ip6), plen);
		if (plen < sizeof(struct tcphdr))
			return PARSE_SUSPECT;
		struct tcphdr *tcp = (void *)(ip6 + 1);
		if ((void *)(tcp + 1) > end)
			return need_linear(skb, l2 + sizeof(*ip6) + sizeof(*tcp), need, PARSE_SUSPECT);
		return tcp_fill(f, tcp, plen);
	}
	return PARSE_OTHER;
}

/* parse classifies the packet and fills f (see parse_result). Headers are
 * read from the linear data; in the rare packet whose headers are not all
 * there (some drivers leave them in page fragments) they are pulled in once. */
static __always_inline int parse(struct __sk_buff *skb, __u32 l2, struct flow *f)
{
	__u32 need = 0;
	int r = parse_once(skb, l2, f, &need);
	if (r != PARSE_PULL)
		return r;
	if (bpf_skb_pull_data(skb, need))
		return PARSE_SUSPECT;
	__builtin_memset(f, 0, sizeof(*f));
	r = parse_once(skb, l2, f, &need);
	if (r == PARSE_PULL)
		return PARSE_SUSPECT;
	return r;
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
	if (src && (src->flags & POD_ENROLLED)) {
		if (dns_capture && dport == bpf_htons(DNS_PORT))
			return LISTENER_DNS_TCP;
		return LISTENER_OUTBOUND;
	}
	if (dst && (dst->flags & POD_ENROLLED)) {
		if (dport == bpf_htons(hbone_port))
			return LISTENER_HBONE;
		return LISTENER_INBOUND;
	}
	return LISTENER_MAX; /* neither end enrolled, or draining */
}

/* steer_udp marks a DNS query of an enrolled pod (UDP to port 53, arriving on
 * the pod's own interface) for local delivery, where capture_lookup selects
 * the DNS socket. Without the socket (the agent is restarting, or DNS capture
 * is off) the query takes its direct path to the nameserver. */
static __always_inline int steer_udp(struct __sk_buff *skb, struct flow *f)
{
	if (!dns_capture || f->dport != bpf_htons(DNS_PORT))
		return finish(skb, VERDICT_PASS);
	struct pod_info *src = bpf_map_lookup_elem(&pods, &f->src);
	if (!src || src->ifindex != skb->ingress_ifindex || !(src->flags & POD_ENROLLED))
		return finish(skb, VERDICT_PASS);
	enum listener key = LISTENER_DNS_UDP;
	struct bpf_sock *sk = bpf_map_lookup_elem(&listeners, &key);
	if (!sk)
		return finish(skb, VERDICT_PASS);
	bpf_sk_release(sk);
	return finish(skb, VERDICT_DNS);
}

static __always_inline int steer(struct __sk_buff *skb, __u32 l2)
{
	struct flow f = {};
	struct pod_info *src, *dst;
	struct bpf_sock *sk;

	if ((skb->mark & own_mark_mask) == own_mark)
		return finish(skb, VERDICT_PASS);
	int r = parse(skb, l2, &f);
	if (r == PARSE_OTHER)
		return finish(skb, VERDICT_PASS);
	if (r == PARSE_UDP)
		return steer_udp(skb, &f);

	pods_of(&f.src, &f.dst, skb->ingress_ifindex, &src, &dst);
	/* Sequential branches: clang may fold (!src && !dst) into a pointer OR
	 * that the verifier rejects. */
	if (!src) {
		if (!dst)
			return finish(skb, VERDICT_PASS);
	}
	if (r != PARSE_TCP) {
		/* TCP whose header this program cannot check (a fragment, a
		 * truncated header, an unwalkable IPv6 chain) would reach the
		 * pod, or leave it, around the agent: after reassembly it may
		 * well be a SYN. Legitimate TCP never looks like this here (see
		 * doc.go: DF and path MTU discovery). */
		if (decide(src, dst, 0) != LISTENER_MAX)
			return finish(skb, VERDICT_MALFORMED);
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
	case LISTENER_DNS_TCP:
		v = VERDICT_DNS;
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

/* capture is attached at ingress of Ethernet devices (veth, physical NICs,
 * vxlan, geneve, macvlan, bridges, bonds, VLANs). */
SEC("tc")
int capture(struct __sk_buff *skb)
{
	return steer(skb, ETH_HLEN);
}

/* capture_l3 is attached at ingress of devices without a link-layer header
 * (ipip, ip6tnl, sit, wireguard, tun): the packet starts with its IP header. */
SEC("tc")
int capture_l3(struct __sk_buff *skb)
{
	return steer(skb, 0);
}

/* capture_egress is attached at egress of pods' host-side interfaces: the
 * fail-closed backstop for new connections to enrolled pods that reach the
 * pod without crossing a hooked ingress. A SYN (or TCP the parser cannot
 * check) to an enrolled pod that the node forwards from an interface missing
 * from hooked is dropped. Forwarded from a hooked
 * interface, it is a connection capture saw with another destination (node
 * DNAT, such as a NodePort) and is left alone. Everything else costs the
 * parse only. */
SEC("tc")
int capture_egress(struct __sk_buff *skb)
{
	struct flow f = {};

	/* Packets the node sends (the agent's, and node processes' such as
	 * kubelet probes, which capture leaves alone) were never received: no
	 * arriving interface. */
	__u32 iif = skb->ingress_ifindex;
	if (!iif)
		return TC_ACT_UNSPEC;
	int r = parse(skb, ETH_HLEN, &f);
	if (r == PARSE_OTHER || r == PARSE_UDP)
		return TC_ACT_UNSPEC;
	if (r == PARSE_TCP && (!f.syn || f.ack))
		return TC_ACT_UNSPEC;
	struct pod_info *dst = bpf_map_lookup_elem(&pods, &f.dst);
	if (!dst || !(dst->flags & POD_ENROLLED))
		return TC_ACT_UNSPEC;
	if (bpf_map_lookup_elem(&hooked, &iif))
		return TC_ACT_UNSPEC;
	return finish(skb, VERDICT_UNHOOKED);
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

/* lookup_udp selects the DNS socket for a datagram that capture marked: a
 * query of an enrolled pod to port 53 arriving on the pod's interface. It
 * runs only after the kernel found no connected socket for the datagram's
 * exact tuple. A missing socket, or one that refuses, leaves the datagram to
 * the regular lookup (no socket on the nameserver's address: it is dropped,
 * and the client retries). */
static __always_inline int lookup_udp(struct bpf_sk_lookup *ctx)
{
	struct pod_key src_key;

	if (!dns_capture || ctx->local_port != DNS_PORT)
		return SK_PASS;
	if (ctx->family == AF_INET)
		v4_key(&src_key, ctx->remote_ip4);
	else if (ctx->family == AF_INET6)
		v6_key(&src_key, ctx->remote_ip6);
	else
		return SK_PASS;
	struct pod_info *src = bpf_map_lookup_elem(&pods, &src_key);
	if (!src || src->ifindex != ctx->ingress_ifindex || !(src->flags & POD_ENROLLED))
		return SK_PASS;
	enum listener key = LISTENER_DNS_UDP;
	struct bpf_sock *sk = bpf_map_lookup_elem(&listeners, &key);
	if (!sk)
		return SK_PASS;
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err)
		count(VERDICT_ASSIGN_FAILED);
	return SK_PASS;
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

	if (ctx->protocol == IPPROTO_UDP)
		return lookup_udp(ctx);
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
