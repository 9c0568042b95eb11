/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * bpf_min.h: the small part of the Linux UAPI and of the libbpf helper
 * macros that Ambit's tc and sk_lookup programs use, so that building them needs only
 * clang (no kernel or libbpf headers). Layouts are copied from the stable
 * UAPI (linux/bpf.h, linux/if_ether.h, linux/ip.h, linux/ipv6.h,
 * linux/tcp.h, linux/pkt_cls.h); helper numbers are from enum bpf_func_id.
 */
#ifndef AMBIT_BPF_MIN_H
#define AMBIT_BPF_MIN_H

typedef unsigned char __u8;
typedef signed char __s8;
typedef unsigned short __u16;
typedef signed short __s16;
typedef unsigned int __u32;
typedef signed int __s32;
typedef unsigned long long __u64;
typedef signed long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

/* ---- libbpf-style macros ---- */

#define SEC(name) __attribute__((section(name), used))
#define __always_inline inline __attribute__((always_inline))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name
#define __array(name, val) typeof(val) *name[]

#define bpf_htons(x) ((__be16)__builtin_bswap16((__u16)(x)))
#define bpf_ntohs(x) ((__u16)__builtin_bswap16((__u16)(x)))
#define bpf_htonl(x) ((__be32)__builtin_bswap32((__u32)(x)))

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

/* ---- linux/bpf.h ---- */

enum {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_SOCKMAP = 15,
};

enum {
	BPF_F_NO_PREALLOC = (1U << 0),
};

#define BPF_ANY 0

enum {
	LIBBPF_PIN_NONE = 0,
	LIBBPF_PIN_BY_NAME = 1,
};

#define BPF_F_CURRENT_NETNS (-1L)

enum {
	BPF_TCP_ESTABLISHED = 1,
	BPF_TCP_SYN_SENT = 2,
	BPF_TCP_SYN_RECV = 3,
	BPF_TCP_FIN_WAIT1 = 4,
	BPF_TCP_FIN_WAIT2 = 5,
	BPF_TCP_TIME_WAIT = 6,
	BPF_TCP_CLOSE = 7,
	BPF_TCP_CLOSE_WAIT = 8,
	BPF_TCP_LAST_ACK = 9,
	BPF_TCP_LISTEN = 10,
	BPF_TCP_CLOSING = 11,
	BPF_TCP_NEW_SYN_RECV = 12,
};

#define __bpf_md_ptr(type, name) \
	union {                  \
		type name;       \
		__u64 : 64;      \
	} __attribute__((aligned(8)))

struct bpf_flow_keys;
struct bpf_sock;

struct __sk_buff {
	__u32 len;
	__u32 pkt_type;
	__u32 mark;
	__u32 queue_mapping;
	__u32 protocol;
	__u32 vlan_present;
	__u32 vlan_tci;
	__u32 vlan_proto;
	__u32 priority;
	__u32 ingress_ifindex;
	__u32 ifindex;
	__u32 tc_index;
	__u32 cb[5];
	__u32 hash;
	__u32 tc_classid;
	__u32 data;
	__u32 data_end;
	__u32 napi_id;
	__u32 family;
	__u32 remote_ip4;
	__u32 local_ip4;
	__u32 remote_ip6[4];
	__u32 local_ip6[4];
	__u32 remote_port;
	__u32 local_port;
	__u32 data_meta;
	__bpf_md_ptr(struct bpf_flow_keys *, flow_keys);
	__u64 tstamp;
	__u32 wire_len;
	__u32 gso_segs;
	__bpf_md_ptr(struct bpf_sock *, sk);
	__u32 gso_size;
	__u8 tstamp_type;
	__u32 : 24;
	__u64 hwtstamp;
};

struct bpf_sock {
	__u32 bound_dev_if;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 mark;
	__u32 priority;
	__u32 src_ip4;
	__u32 src_ip6[4];
	__u32 src_port;
	__be16 dst_port;
	__u16 : 16;
	__u32 dst_ip4;
	__u32 dst_ip6[4];
	__u32 state;
	__s32 rx_queue_mapping;
};

/* struct bpf_sk_lookup is the context of BPF_PROG_TYPE_SK_LOOKUP programs
 * (ingress_ifindex since Linux 5.17). Fields are read with loads of at most
 * 4 bytes. */
struct bpf_sk_lookup {
	union {
		__bpf_md_ptr(struct bpf_sock *, sk); /* selected socket */
		__u64 cookie; /* non-zero if a socket was selected in BPF_PROG_TEST_RUN */
	};
	__u32 family;
	__u32 protocol;
	__u32 remote_ip4;    /* network byte order */
	__u32 remote_ip6[4]; /* network byte order */
	__be16 remote_port;  /* network byte order */
	__u16 : 16;
	__u32 local_ip4;    /* network byte order */
	__u32 local_ip6[4]; /* network byte order */
	__u32 local_port;   /* host byte order */
	__u32 ingress_ifindex;
};

struct bpf_sock_tuple {
	union {
		struct {
			__be32 saddr;
			__be32 daddr;
			__be16 sport;
			__be16 dport;
		} ipv4;
		struct {
			__be32 saddr[4];
			__be32 daddr[4];
			__be16 sport;
			__be16 dport;
		} ipv6;
	};
};

/* ---- helpers (numbers from enum bpf_func_id) ---- */

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, __u64 flags) = (void *)2;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)3;
static long (*bpf_sk_release)(void *sock) = (void *)86;
static struct bpf_sock *(*bpf_skc_lookup_tcp)(void *ctx, struct bpf_sock_tuple *tuple, __u32 tuple_size,
					      __u64 netns, __u64 flags) = (void *)99;
static long (*bpf_skb_load_bytes)(const void *skb, __u32 offset, void *to, __u32 len) = (void *)26;
static long (*bpf_skb_pull_data)(void *skb, __u32 len) = (void *)39;
/* In tc programs ctx is the skb; in sk_lookup programs it is the lookup
 * context (then sk must be a listening TCP socket for TCP lookups). */
static long (*bpf_sk_assign)(void *ctx, void *sk, __u64 flags) = (void *)124;

/* ---- sk_lookup verdicts (enum sk_action) ---- */

#define SK_DROP 0
#define SK_PASS 1

/* ---- linux/pkt_cls.h (tc and TCX verdicts) ---- */

#define TC_ACT_UNSPEC (-1) /* TCX_NEXT: let the next program decide */
#define TC_ACT_OK 0        /* TCX_PASS */
#define TC_ACT_SHOT 2      /* TCX_DROP */

/* ---- linux/if_ether.h, linux/in.h ---- */

#define ETH_ALEN 6
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

/* IPv6 extension headers (linux/in6.h) that may precede TCP. */
#define IPPROTO_HOPOPTS 0
#define IPPROTO_ROUTING 43
#define IPPROTO_FRAGMENT 44
#define IPPROTO_AH 51
#define IPPROTO_DSTOPTS 60
#define AF_INET 2
#define AF_INET6 10

struct ethhdr {
	unsigned char h_dest[ETH_ALEN];
	unsigned char h_source[ETH_ALEN];
	__be16 h_proto;
} __attribute__((packed));

/* ---- linux/ip.h ---- */

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

struct iphdr {
	__u8 ihl : 4, version : 4;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__u16 check;
	__be32 saddr;
	__be32 daddr;
};

/* ---- linux/ipv6.h ---- */

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be16 u6_addr16[8];
		__be32 u6_addr32[4];
	} in6_u;
};

struct ipv6hdr {
	__u8 priority : 4, version : 4;
	__u8 flow_lbl[3];
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	struct in6_addr saddr;
	struct in6_addr daddr;
};

/* frag_hdr is the IPv6 Fragment header (net/ipv6.h). */
struct frag_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset (13 bits) << 3 | M flag */
	__be32 identification;
};

#define IP6_OFFSET 0xfff8
#define IP6_MF 0x0001

/* ---- linux/tcp.h ---- */

struct tcphdr {
	__be16 source;
	__be16 dest;
	__be32 seq;
	__be32 ack_seq;
	__u16 res1 : 4, doff : 4, fin : 1, syn : 1, rst : 1, psh : 1, ack : 1, urg : 1, ece : 1, cwr : 1;
	__be16 window;
	__u16 check;
	__be16 urg_ptr;
};

/* ---- linux/udp.h ---- */

struct udphdr {
	__be16 source;
	__be16 dest;
	__be16 len;
	__u16 check;
};

#endif /* AMBIT_BPF_MIN_H */
