/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * What the BPF programs and the daemon share: map sizes, the layout of each map's value, and
 * the tracepoint records the programs read. The records are written out from the kernel's
 * tracefs `format` files (a stable ABI), so the programs need no vmlinux.h and no CO-RE
 * relocations: the committed objects load on any kernel with these tracepoints.
 *
 * Every value is a plain array of __u64 so that the Rust side reads it as `[u64; N]`.
 */
#ifndef MAXWELL_BPF_H
#define MAXWELL_BPF_H

#include <linux/types.h>

/* Agents the maps can hold at once (entries are allocated on insert, not up front). */
#define MAXWELL_MAX_AGENTS 16384
/* Processes whose heap top is remembered at once. */
#define MAXWELL_MAX_HEAPS 65536
/* Syscall numbers counted one by one; larger numbers (x32, unknown) land in the last bucket. */
#define MAXWELL_SYSCALLS 512

/* The `erasure` map's value, indexed by these. Bytes are whole pages (rounded up). */
#define ER_UNMAPPED 0 /* munmap */
#define ER_MADVISED 1 /* madvise DONTNEED, DONTNEED_LOCKED, FREE, REMOVE */
#define ER_HEAP 2     /* brk lowering the heap top */
#define ER_REMAPPED 3 /* mremap shrinking a mapping */
#define ER_CALLS 4    /* calls that freed memory */
#define ER_LEN 8

/* The `losses` array (one entry): what the programs could not record, by cause. */
#define LOSS_HEAP_FULL 0 /* a process's heap top not remembered: the heap map was full */
#define LOSS_LEN 4

/* The `calls` map's value: a count per syscall number, then these. */
#define CALL_DENIED_FIRST (MAXWELL_SYSCALLS + 0) /* 1 + the first forbidden syscall, 0 if none */
#define CALL_DENIED_HITS (MAXWELL_SYSCALLS + 1)  /* forbidden calls seen */
#define CALL_ARMED (MAXWELL_SYSCALLS + 2)        /* 1 once the agent's own program runs */
#define CALL_LEN (MAXWELL_SYSCALLS + 3)

/* The `deny` map's value: one bit per syscall number. */
#define DENY_WORDS (MAXWELL_SYSCALLS / 64)

#define MAXWELL_PAGE 4096ULL

/* tracefs events/syscalls/sys_enter_munmap/format */
struct enter_munmap {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 addr;
	__u64 len;
};

/* events/syscalls/sys_enter_madvise/format */
struct enter_madvise {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 start;
	__u64 len;
	__s64 behavior;
};

/* events/syscalls/sys_enter_mremap/format */
struct enter_mremap {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__u64 addr;
	__u64 old_len;
	__u64 new_len;
	__u64 flags;
	__u64 new_addr;
};

/* events/syscalls/sys_exit_brk/format */
struct exit_brk {
	__u64 common;
	__s32 nr;
	__u32 pad;
	__s64 ret;
};

/* events/raw_syscalls/sys_enter/format */
struct raw_enter {
	__u64 common;
	__s64 id;
	__u64 args[6];
};

#endif
