// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * The syscall audit: a count per syscall number per agent (keyed by the cgroup2 id of the
 * calling task, so every thread and child of the agent counts and nothing else does), summed in
 * a kernel map that the daemon reads once per tick. An agent may have a deny list: on entry to
 * a forbidden syscall the program records which one and sends SIGKILL to the calling process
 * from the kernel; the daemon sees the record, kills the rest of the agent and writes the cause
 * in the ledger. A tracepoint cannot veto the call itself: the deny list ends the agent, it
 * does not make the one call fail (seccomp would, but cannot tell the daemon which call).
 *
 * The deny list is armed when the agent's own program starts: at an exec by a task of the
 * agent that is not root. Before that the launcher runs (the daemon's trampoline joins the
 * cgroups as root, then setpriv drops to the agent's uid and execs the program); its calls are
 * counted but cannot trip the list, so a list may forbid what the launcher needs (setresuid,
 * capset, prctl, execve) and still let the agent start.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "maxwell.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAXWELL_MAX_AGENTS);
	__type(key, __u64);
	__type(value, __u64[CALL_LEN]);
} calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, MAXWELL_MAX_AGENTS);
	__type(key, __u64);
	__type(value, __u64[DENY_WORDS]);
} deny SEC(".maps");

/*
 * A raw tracepoint, not the perf tracepoint raw_syscalls:sys_enter: the kernel then builds no
 * trace record of the call's six arguments for every syscall on the machine (measured here:
 * about 270 ns a call for any process with the perf tracepoint, see `maxwell bench ebpf`). The
 * raw tracepoint's arguments are (struct pt_regs *regs, long id); only the id is read.
 */
/*
 * Whether the current syscall is a 32-bit one (int 0x80 or sysenter from compat code): its
 * number is the i386 table's, not x86-64's, so it cannot be counted or judged by number.
 * TS_COMPAT is bit 1 of x86-64's thread_info.status; thread_info is the first member of
 * task_struct and status follows flags and syscall_work (byte 16, as the kernel's BTF says;
 * the layout has held since Linux 5.11, and a test makes a 32-bit call to check it).
 */
#define THREAD_INFO_STATUS 16
#define TS_COMPAT 0x0002

static __always_inline int compat_syscall(void)
{
	__u32 status = 0;
	char *task = (char *)bpf_get_current_task();
	if (bpf_probe_read_kernel(&status, sizeof(status), task + THREAD_INFO_STATUS) != 0)
		return 0;
	return (status & TS_COMPAT) != 0;
}

SEC("raw_tracepoint/sys_enter")
int maxwell_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u64 cg = bpf_get_current_cgroup_id();
	__u64 *c = bpf_map_lookup_elem(&calls, &cg);
	if (!c)
		return 0;
	__s64 id = (__s64)ctx->args[1];
	/* The last bucket: 32-bit calls and numbers beyond the table (x32's, with bit 30 set). */
	__u32 i = (id >= 0 && id < MAXWELL_SYSCALLS - 1 && !compat_syscall()) ? (__u32)id
									       : MAXWELL_SYSCALLS - 1;
	i &= MAXWELL_SYSCALLS - 1;
	__sync_fetch_and_add(&c[i], 1);
	if (!c[CALL_ARMED])
		return 0;
	__u64 *d = bpf_map_lookup_elem(&deny, &cg);
	/* With a deny list, what cannot be told apart by number is forbidden too: else a 32-bit
	 * socketcall or an x32 socket would pass a list that forbids socket. */
	if (d && (i == MAXWELL_SYSCALLS - 1 || (d[i / 64] >> (i % 64)) & 1)) {
		if (c[CALL_DENIED_FIRST] == 0)
			c[CALL_DENIED_FIRST] = (__u64)i + 1;
		__sync_fetch_and_add(&c[CALL_DENIED_HITS], 1);
		bpf_send_signal(9);
	}
	return 0;
}

SEC("tracepoint/sched/sched_process_exec")
int maxwell_arm(void *ctx)
{
	__u64 cg = bpf_get_current_cgroup_id();
	__u64 *c = bpf_map_lookup_elem(&calls, &cg);
	if (c && (__u32)bpf_get_current_uid_gid() != 0)
		c[CALL_ARMED] = 1;
	return 0;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
