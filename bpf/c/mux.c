// SPDX-License-Identifier: (MIT OR GPL-2.0)
//
// XDP data path of an Ananta Mux: the in-kernel twin of the Go engine in
// package mux (the reference model). It forwards TCP and UDP packets to a
// VIP, IPv4 without options and IPv6 without extension headers,
// unfragmented, and hands everything else to the kernel (XDP_PASS), counted
// by reason. See ../doc.go for the map layout and the differences.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_VIPS 4096
#define MAX_ENDPOINTS 16384
#define MAX_BACKENDS 65536
#define MAX_SNAT 65536
#define DEFAULT_FLOWS 65536
#define DEFAULT_RING 65537

// Counter indices (the Go side names them).
enum counter {
	CNT_TX = 0,		// forwarded (XDP_TX)
	CNT_TX_BYTES,		// inner bytes forwarded
	CNT_TX_SNAT,		// forwarded by the SNAT return map
	CNT_NEW_FLOWS,		// flows inserted or re-pinned
	CNT_PASS_NOT_IP,	// not IPv4 or IPv6 (ARP, ...)
	CNT_PASS_NO_VIP,	// destination is not a VIP
	CNT_PASS_OPTIONS,	// IPv4 options or IPv6 extension headers
	CNT_PASS_FRAGMENT,	// IP fragment
	CNT_PASS_PROTO,		// not TCP or UDP (ICMP, ICMP errors, ...)
	CNT_PASS_MALFORMED,	// truncated or inconsistent headers
	CNT_PASS_TOO_BIG,	// too big once encapsulated (ICMP answer)
	CNT_DROP_NO_ENDPOINT,	// VIP has no endpoint for the port
	CNT_DROP_NO_BACKEND,	// endpoint has no usable backend
	CNT_DROP_ERROR,		// a helper failed (adjust head/tail)
	CNT_MAX,
};

enum backend_state {
	BE_ACTIVE = 0,
	BE_DRAINING = 1,
	BE_DOWN = 2,
	BE_FREE = 3, // slot not in use
};

// config is the single entry of the config map.
struct mux_config {
	__u64 seed;		// flow hash seed
	__u64 src6_lo;		// outer IPv6 source, bytes 8-15 (host order)
	__u64 src6_mask;	// host bits taken from the flow hash
	__u8 src6_hi[8];	// outer IPv6 source, bytes 0-7
	__u32 src4;		// outer IPv4 source (host order)
	__u32 src4_mask;	// host bits taken from the flow hash
	__u32 ring_size;	// Maglev table size M
	__u16 mtu;
	__u8 ttl;
	__u8 down_keep;		// DownKeep: flows of a down backend stay
	__u8 gw_mac[6];		// next hop of forwarded packets
	__u8 pad[2];
};

// flow_key is the mux's flowKey: five 64-bit words, the addresses as
// 16 bytes (IPv4 mapped), w4 = sport | dport<<16 | proto<<32.
struct flow_key {
	__u64 w[5];
};

struct flow {
	__u32 backend;
	__u16 gen;
	__u8 valid;
	__u8 pad;
};

struct vip {
	__u32 flags;
};
#define VIP_HAS_SNAT 1

struct endpoint_key {
	__u64 addr[2];
	__u16 port;
	__u8 proto;
	__u8 pad[5];
};

struct endpoint {
	__u32 ring; // index in rings
};

struct backend {
	__u8 addr[16]; // host: IPv4 in the first 4 bytes
	__u16 gen;
	__u8 v4;
	__u8 state;
};

struct snat_key {
	__u32 prefixlen; // 128 + bits of the port prefix
	__u8 addr[16];
	__u8 port[2]; // big-endian
	__u8 pad[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mux_config);
} config_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, DEFAULT_FLOWS);
	__type(key, struct flow_key);
	__type(value, struct flow);
} flow_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VIPS);
	__type(key, __u64[2]);
	__type(value, struct vip);
} vip_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint);
} endpoint_map SEC(".maps");

struct ring {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DEFAULT_RING);
	__type(key, __u32);
	__type(value, __u32);
};

// rings: one Maglev table per endpoint (entry = backend index). The Go
// side builds a new inner map and swaps it in whole.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, MAX_ENDPOINTS);
	__type(key, __u32);
	__array(values, struct ring);
} ring_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} backend_map SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, MAX_SNAT);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct snat_key);
	__type(value, struct backend);
} snat_map SEC(".maps");

static __always_inline void count(__u32 i, __u64 n)
{
	__u64 *c = bpf_map_lookup_elem(&counters, &i);
	if (c)
		*c += n;
}

static __always_inline int pass(__u32 reason)
{
	count(reason, 1);
	return XDP_PASS;
}

// flow_hash is mux's flowKey.hash.
static __always_inline __u64 flow_hash(const struct flow_key *k, __u64 seed)
{
	const __u64 ma = 0xff51afd7ed558ccdULL, mb = 0xc4ceb9fe1a85ec53ULL;
	__u64 a = (seed ^ k->w[0]) * ma;
	__u64 b = (seed ^ k->w[1]) * mb;
	a = (a ^ (a >> 32) ^ k->w[2]) * ma;
	b = (b ^ (b >> 32) ^ k->w[3]) * mb;
	a = (a ^ (a >> 32) ^ k->w[4]) * ma;
	__u64 z = a ^ ((b >> 32) | (b << 32));
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

// ring_slot is the high word of h*m (hashring.Table.Lookup), m < 2^32.
static __always_inline __u32 ring_slot(__u64 h, __u32 m)
{
	__u64 lo = (h & 0xffffffffULL) * m;
	__u64 hi = (h >> 32) * m;
	return (__u32)((hi + (lo >> 32)) >> 32);
}

// pick returns the backend index Maglev assigns to h in the endpoint's
// ring, or -1.
static __always_inline __s64 pick(const struct endpoint *ep, __u64 h, __u32 m)
{
	void *ring = bpf_map_lookup_elem(&ring_map, &ep->ring);
	if (!ring)
		return -1;
	__u32 slot = ring_slot(h, m);
	__u32 *be = bpf_map_lookup_elem(ring, &slot);
	if (!be)
		return -1;
	return *be;
}

// find_endpoint: exact protocol and port, the protocol's all-ports
// endpoint, the all-protocols endpoint (vipEntry.endpointFor, not a
// fragment, TCP or UDP).
static __always_inline struct endpoint *find_endpoint(const struct flow_key *k, __u8 proto, __u16 dport)
{
	struct endpoint_key ek = {};
	ek.addr[0] = k->w[2];
	ek.addr[1] = k->w[3];
	ek.proto = proto;
	ek.port = dport;
	struct endpoint *ep = bpf_map_lookup_elem(&endpoint_map, &ek);
	if (ep)
		return ep;
	ek.port = 0;
	ep = bpf_map_lookup_elem(&endpoint_map, &ek);
	if (ep)
		return ep;
	ek.proto = 0;
	return bpf_map_lookup_elem(&endpoint_map, &ek);
}

static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

SEC("xdp")
int xdp_mux(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct mux_config *cfg = bpf_map_lookup_elem(&config_map, &zero);
	if (!cfg)
		return XDP_PASS;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return pass(CNT_PASS_NOT_IP);
	__u8 *ip = (__u8 *)(eth + 1);
	struct flow_key k = {};
	__u32 tot, l4;
	__u8 proto, tos, v4, df = 1;
	__u16 id = 0;

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		if (ip + 20 > (__u8 *)end)
			return pass(CNT_PASS_MALFORMED);
		if (ip[0] != 0x45)
			return pass((ip[0] >> 4) == 4 && (ip[0] & 15) > 5 ? CNT_PASS_OPTIONS : CNT_PASS_MALFORMED);
		tot = ((__u32)ip[2] << 8) | ip[3];
		if (tot < 20 || ip + tot > (__u8 *)end)
			return pass(CNT_PASS_MALFORMED);
		if (((ip[6] << 8) | ip[7]) & 0x3fff)
			return pass(CNT_PASS_FRAGMENT);
		df = (ip[6] & 0x40) != 0;
		if (!df)
			id = ((__u16)ip[4] << 8) | ip[5];
		v4 = 1;
		tos = ip[1];
		proto = ip[9];
		l4 = 20;
		k.w[1] = 0xffff0000ULL | ((__u64)(*(__u32 *)(ip + 12)) << 32);
		k.w[3] = 0xffff0000ULL | ((__u64)(*(__u32 *)(ip + 16)) << 32);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		if (ip + 40 > (__u8 *)end)
			return pass(CNT_PASS_MALFORMED);
		if ((ip[0] >> 4) != 6)
			return pass(CNT_PASS_MALFORMED);
		tot = 40 + (((__u32)ip[4] << 8) | ip[5]);
		if (ip + tot > (__u8 *)end)
			return pass(CNT_PASS_MALFORMED);
		v4 = 0;
		tos = (ip[0] << 4) | (ip[1] >> 4);
		proto = ip[6];
		l4 = 40;
		__builtin_memcpy(&k.w[0], ip + 8, 32);
		if ((k.w[0] == 0 && (__u32)k.w[1] == 0xffff0000) || (k.w[2] == 0 && (__u32)k.w[3] == 0xffff0000))
			return pass(CNT_PASS_MALFORMED); // IPv4-mapped: the mux drops it
		switch (proto) {
		case 0: case 43: case 60: case 51: case 50: case 135: case 139: case 140:
			return pass(CNT_PASS_OPTIONS);
		case 44:
			return pass(CNT_PASS_FRAGMENT);
		}
	} else {
		return pass(CNT_PASS_NOT_IP);
	}

	__u16 sport, dport;
	__u8 *l4h = ip + l4;
	if (proto == IPPROTO_TCP) {
		if (l4h + 20 > (__u8 *)end || l4 + 20 > tot)
			return pass(CNT_PASS_MALFORMED);
		__u32 doff = (l4h[12] >> 4) * 4;
		if (doff < 20 || l4 + doff > tot)
			return pass(CNT_PASS_MALFORMED);
	} else if (proto == IPPROTO_UDP) {
		if (l4h + 8 > (__u8 *)end || l4 + 8 > tot)
			return pass(CNT_PASS_MALFORMED);
		__u32 ulen = ((__u32)l4h[4] << 8) | l4h[5];
		if (ulen < 8 || l4 + ulen > tot)
			return pass(CNT_PASS_MALFORMED);
	} else {
		return pass(CNT_PASS_PROTO);
	}
	sport = ((__u16)l4h[0] << 8) | l4h[1];
	dport = ((__u16)l4h[2] << 8) | l4h[3];
	k.w[4] = (__u64)sport | ((__u64)dport << 16) | ((__u64)proto << 32);
	__u64 h = flow_hash(&k, cfg->seed);
	__u32 m = cfg->ring_size;

	struct backend *be = 0;
	struct flow *f = bpf_map_lookup_elem(&flow_map, &k);
	if (f && f->valid) {
		__u32 bi = f->backend;
		be = bpf_map_lookup_elem(&backend_map, &bi);
		if (be && be->state != BE_FREE && be->gen == f->gen &&
		    (be->state != BE_DOWN || cfg->down_keep))
			goto forward;
		// The backend went down or was removed: re-balance the flow.
		be = 0;
		if (!bpf_map_lookup_elem(&vip_map, &k.w[2])) {
			bpf_map_delete_elem(&flow_map, &k);
			return pass(CNT_PASS_NO_VIP);
		}
		struct endpoint *ep = find_endpoint(&k, proto, dport);
		if (!ep) {
			bpf_map_delete_elem(&flow_map, &k);
			count(CNT_DROP_NO_ENDPOINT, 1);
			return XDP_DROP;
		}
		__s64 nb = pick(ep, h, m);
		__u32 nbi = (__u32)nb;
		if (nb >= 0)
			be = bpf_map_lookup_elem(&backend_map, &nbi);
		if (!be) {
			bpf_map_delete_elem(&flow_map, &k);
			count(CNT_DROP_NO_BACKEND, 1);
			return XDP_DROP;
		}
		f->backend = nbi;
		f->gen = be->gen;
		count(CNT_NEW_FLOWS, 1);
		goto forward;
	}
	struct vip *vip = bpf_map_lookup_elem(&vip_map, &k.w[2]);
	if (!vip)
		return pass(CNT_PASS_NO_VIP);
	if (vip->flags & VIP_HAS_SNAT) {
		struct snat_key sk = {};
		sk.prefixlen = 144;
		__builtin_memcpy(sk.addr, &k.w[2], 16);
		sk.port[0] = dport >> 8;
		sk.port[1] = dport & 0xff;
		be = bpf_map_lookup_elem(&snat_map, &sk);
		if (be) {
			count(CNT_TX_SNAT, 1);
			goto forward;
		}
	}
	struct endpoint *ep = find_endpoint(&k, proto, dport);
	if (!ep) {
		count(CNT_DROP_NO_ENDPOINT, 1);
		return XDP_DROP;
	}
	__s64 bidx = pick(ep, h, m);
	__u32 bi = (__u32)bidx;
	if (bidx >= 0)
		be = bpf_map_lookup_elem(&backend_map, &bi);
	if (!be) {
		count(CNT_DROP_NO_BACKEND, 1);
		return XDP_DROP;
	}
	struct flow nf = {.backend = bi, .gen = be->gen, .valid = 1};
	bpf_map_update_elem(&flow_map, &k, &nf, BPF_ANY);
	count(CNT_NEW_FLOWS, 1);

forward:;
	// Copy what the outer header needs: be points into a map that may
	// change, and the packet moves.
	__u8 host[16];
	__builtin_memcpy(host, be->addr, 16);
	__u8 host4 = be->v4;
	__u32 ovh = host4 ? 20 : 40;
	if (tot + ovh > cfg->mtu)
		return pass(CNT_PASS_TOO_BIG);
	__u8 smac[6];
	__builtin_memcpy(smac, eth->h_dest, 6);

	// Bytes past the IP total length (Ethernet padding) are not sent.
	__s32 excess = (__s32)((long)end - (long)ip) - (__s32)tot;
	if (excess > 0 && bpf_xdp_adjust_tail(ctx, -excess)) {
		count(CNT_DROP_ERROR, 1);
		return XDP_DROP;
	}
	if (bpf_xdp_adjust_head(ctx, -(int)ovh)) {
		count(CNT_DROP_ERROR, 1);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	eth = data;
	__u8 *o = (__u8 *)(eth + 1);
	if (o + 40 > (__u8 *)end) {
		count(CNT_DROP_ERROR, 1);
		return XDP_DROP;
	}
	__builtin_memcpy(eth->h_dest, cfg->gw_mac, 6);
	__builtin_memcpy(eth->h_source, smac, 6);
	__u8 iproto = v4 ? IPPROTO_IPIP : IPPROTO_IPV6;
	if (host4) {
		eth->h_proto = bpf_htons(ETH_P_IP);
		__u32 host_bits = (__u32)h & cfg->src4_mask;
		if (cfg->src4_mask > 1 && (host_bits == 0 || host_bits == cfg->src4_mask))
			host_bits ^= 1;
		__u32 src = bpf_htonl(cfg->src4 | host_bits);
		__u32 n = tot + 20;
		o[0] = 0x45;
		o[1] = tos;
		o[2] = n >> 8;
		o[3] = n;
		o[4] = id >> 8;
		o[5] = id;
		o[6] = df ? 0x40 : 0;
		o[7] = 0;
		o[8] = cfg->ttl;
		o[9] = iproto;
		o[10] = 0;
		o[11] = 0;
		__builtin_memcpy(o + 12, &src, 4);
		__builtin_memcpy(o + 16, host, 4);
		__u32 s = 0;
		__u16 *w = (__u16 *)o;
#pragma unroll
		for (int i = 0; i < 10; i++)
			s += w[i];
		w[5] = csum_fold(s);
	} else {
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		__u32 label = (__u32)(h >> 32) & 0xfffff;
		if (!label)
			label = 1;
		__u32 w0 = bpf_htonl((6U << 28) | ((__u32)tos << 20) | label);
		__builtin_memcpy(o, &w0, 4);
		o[4] = tot >> 8;
		o[5] = tot;
		o[6] = iproto;
		o[7] = cfg->ttl;
		__u64 host_bits = h & cfg->src6_mask;
		if (cfg->src6_mask > 1 && (host_bits == 0 || host_bits == cfg->src6_mask))
			host_bits ^= 1;
		__u64 lo = bpf_cpu_to_be64(cfg->src6_lo | host_bits);
		__builtin_memcpy(o + 8, cfg->src6_hi, 8);
		__builtin_memcpy(o + 16, &lo, 8);
		__builtin_memcpy(o + 24, host, 16);
	}
	count(CNT_TX, 1);
	count(CNT_TX_BYTES, tot);
	return XDP_TX;
}

char __license[] SEC("license") = "Dual MIT/GPL";
