// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * Erasure per agent: the bytes an agent's processes give back to the kernel through
 * munmap, madvise (DONTNEED, DONTNEED_LOCKED, FREE, REMOVE), a lower brk and a shrinking
 * mremap, summed in kernel maps keyed by the cgroup2 id of the calling task. The daemon inserts
 * an entry per agent; a task whose cgroup has none costs one hash lookup and is not counted.
 * Nothing wakes the daemon: it reads the sums once per tick.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "maxwell.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAXWELL_MAX_AGENTS);
	__type(key, __u64);
	__type(value, __u64[ER_LEN]);
} erasure SEC(".maps");

/* The heap top (brk) each agent process last had, by thread-group id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAXWELL_MAX_HEAPS);
	__type(key, __u32);
	__type(value, __u64);
} heap_top SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64[LOSS_LEN]);
} losses SEC(".maps");

static __always_inline __u64 pages(__u64 len)
{
	return (len + MAXWELL_PAGE - 1) & ~(MAXWELL_PAGE - 1);
}

static __always_inline __u64 *agent(void)
{
	__u64 cg = bpf_get_current_cgroup_id();
	return bpf_map_lookup_elem(&erasure, &cg);
}

static __always_inline void freed(__u64 *e, int what, __u64 bytes)
{
	if (bytes == 0)
		return;
	__sync_fetch_and_add(&e[what], bytes);
	__sync_fetch_and_add(&e[ER_CALLS], 1);
}

SEC("tracepoint/syscalls/sys_enter_munmap")
int maxwell_munmap(struct enter_munmap *ctx)
{
	__u64 *e = agent();
	if (e)
		freed(e, ER_UNMAPPED, pages(ctx->len));
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_madvise")
int maxwell_madvise(struct enter_madvise *ctx)
{
	/* MADV_DONTNEED 4, MADV_FREE 8, MADV_REMOVE 9, MADV_DONTNEED_LOCKED 24 */
	__s64 b = ctx->behavior;
	if (b != 4 && b != 8 && b != 9 && b != 24)
		return 0;
	__u64 *e = agent();
	if (e)
		freed(e, ER_MADVISED, pages(ctx->len));
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_mremap")
int maxwell_mremap(struct enter_mremap *ctx)
{
	__u64 old_len = pages(ctx->old_len), new_len = pages(ctx->new_len);
	if (new_len >= old_len)
		return 0;
	__u64 *e = agent();
	if (e)
		freed(e, ER_REMAPPED, old_len - new_len);
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_brk")
int maxwell_brk(struct exit_brk *ctx)
{
	__u64 *e = agent();
	if (!e || ctx->ret <= 0)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u64 top = pages((__u64)ctx->ret);
	__u64 *last = bpf_map_lookup_elem(&heap_top, &tgid);
	if (last) {
		if (top < *last)
			freed(e, ER_HEAP, *last - top);
		*last = top;
	} else if (bpf_map_update_elem(&heap_top, &tgid, &top, BPF_NOEXIST) != 0) {
		__u32 zero = 0;
		__u64 *l = bpf_map_lookup_elem(&losses, &zero);
		if (l)
			__sync_fetch_and_add(&l[LOSS_HEAP_FULL], 1);
	}
	return 0;
}

/* A new program image has a new heap: forget the old top (else it would look like a shrink). */
SEC("tracepoint/sched/sched_process_exec")
int maxwell_exec(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_delete_elem(&heap_top, &tgid);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int maxwell_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;
	if ((__u32)id == tgid)
		bpf_map_delete_elem(&heap_top, &tgid);
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
