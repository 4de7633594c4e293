//! Measured erasure and the syscall audit of native agents (the eBPF probes of the process
//! backend). Needs root, cgroups and a kernel that loads the probes: without them each test
//! prints a skip line and returns, unless `MAXWELL_REQUIRE_ROOT_TESTS=1`, when it fails.
//!
//! The agents are the `hostile` binary in its `free`, `tcp` and `churn` modes, which free
//! memory in known patterns. After every test no process of the test may be alive and no
//! cgroup directory may be left.

#![allow(clippy::unwrap_used)]

use std::sync::MutexGuard;
use std::thread;
use std::time::{Duration, Instant};

use maxwell_sandbox::process::testing::{Leaks, required, sandbox_or_skip};
use maxwell_sandbox::process::{ProcessAgent, ProcessConfig, ProcessSandbox};
use maxwell_sandbox::{Agent, AgentSpec, ExitReason, Limits, Program, Status, SyscallSet};

/// What glibc maps for a 40 MiB block: the block, its header, rounded to pages.
const CHUNK: u64 = (40 << 20) + 4096;
/// What an agent frees besides its pattern (the trampoline, setpriv and the dynamic loader
/// unmap a little at start): the tolerance above the pattern.
const SLACK: u64 = 8 << 20;

fn sandbox_with_probes() -> Option<(MutexGuard<'static, ()>, ProcessSandbox)> {
    let (g, s) = sandbox_or_skip(ProcessConfig::default())?;
    if !s.probes_loaded() {
        assert!(
            !required(),
            "MAXWELL_REQUIRE_ROOT_TESTS=1 but the eBPF probes did not load: {}",
            s.erasure_source()
        );
        eprintln!("SKIP: {}", s.erasure_source());
        return None;
    }
    Some((g, s))
}

fn hostile(name: &str, args: &[&str], deny: SyscallSet) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        program: Program::Native {
            path: env!("CARGO_BIN_EXE_hostile").into(),
            args: args.iter().map(|s| s.to_string()).collect(),
        },
        limits: Limits {
            memory_max: maxwell_core::Bytes(512 << 20),
            deny,
            ..Limits::default()
        },
    }
}

/// Runs the agents until `done` holds or `timeout`, summing each one's erased bytes.
fn run(
    agents: &mut [&mut ProcessAgent],
    timeout: Duration,
    mut done: impl FnMut(&[u64]) -> bool,
) -> Vec<u64> {
    let mut erased = vec![0u64; agents.len()];
    for a in agents.iter_mut() {
        a.resume().unwrap();
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && !done(&erased) {
        thread::sleep(Duration::from_millis(20));
        for (i, a) in agents.iter_mut().enumerate() {
            if let Ok(u) = a.usage() {
                erased[i] += u.erased.0;
            }
        }
    }
    // A last look, after the pattern: what it freed after the condition held counts too.
    thread::sleep(Duration::from_millis(200));
    for (i, a) in agents.iter_mut().enumerate() {
        if let Ok(u) = a.usage() {
            erased[i] += u.erased.0;
        }
    }
    erased
}

#[test]
fn an_agent_is_taxed_for_what_it_frees_and_only_it() {
    let Some((_g, s)) = sandbox_with_probes() else {
        return;
    };
    eprintln!("erasure: {}", s.erasure_source());
    let mut leaks = Leaks::default();
    leaks.parents(&s);
    let rounds = 5;
    let mut freer = s
        .spawn_process(&hostile(
            "ebpf-freer",
            &["--mode", "free", "--rounds", &rounds.to_string()],
            SyscallSet::EMPTY,
        ))
        .unwrap();
    let mut idle = s
        .spawn_process(&hostile(
            "ebpf-idle",
            &["--mode", "free", "--rounds", "0"],
            SyscallSet::EMPTY,
        ))
        .unwrap();
    leaks.watch(&freer);
    leaks.watch(&idle);
    let expected = rounds * CHUNK;
    let erased = run(&mut [&mut freer, &mut idle], Duration::from_secs(30), |e| {
        e[0] >= expected
    });
    eprintln!(
        "freer erased {} bytes (pattern {expected}), idle {}",
        erased[0], erased[1]
    );
    assert!(
        erased[0] >= expected && erased[0] <= expected + SLACK,
        "the freer was taxed for {} bytes, its pattern frees {expected} (+ at most {SLACK})",
        erased[0]
    );
    assert!(
        erased[1] <= SLACK,
        "the idle agent was charged {} bytes: someone else's frees",
        erased[1]
    );
    let calls = freer.syscalls().unwrap().unwrap();
    assert!(
        calls.counts[11] >= rounds,
        "munmap calls counted: {}",
        calls.counts[11]
    );
    assert!(calls.total() > calls.counts[11]);
    assert_eq!(s.probe_losses().unwrap().unwrap(), 0);
    drop(freer);
    drop(idle);
    drop(s);
    leaks.check();
}

#[test]
fn an_agent_is_taxed_for_what_its_children_free() {
    let Some((_g, s)) = sandbox_with_probes() else {
        return;
    };
    let mut leaks = Leaks::default();
    leaks.parents(&s);
    let (children, rounds) = (3u64, 2u64);
    let mut a = s
        .spawn_process(&hostile(
            "ebpf-parent",
            &[
                "--mode",
                "free",
                "--rounds",
                &rounds.to_string(),
                "--children",
                &children.to_string(),
            ],
            SyscallSet::EMPTY,
        ))
        .unwrap();
    leaks.watch(&a);
    let expected = (children + 1) * rounds * CHUNK;
    let erased = run(&mut [&mut a], Duration::from_secs(30), |e| e[0] >= expected);
    eprintln!(
        "parent and children erased {} bytes (pattern {expected})",
        erased[0]
    );
    // Each child also gives back what it holds when it exits (a few MiB at most).
    assert!(
        erased[0] >= expected && erased[0] <= expected + (children + 1) * SLACK,
        "taxed for {} bytes, the pattern of the agent and its {children} children frees {expected}",
        erased[0]
    );
    drop(a);
    drop(s);
    leaks.check();
}

#[test]
fn a_forbidden_syscall_kills_the_agent_and_names_the_call() {
    let Some((_g, s)) = sandbox_with_probes() else {
        return;
    };
    let mut leaks = Leaks::default();
    leaks.parents(&s);
    let deny = SyscallSet::parse(&["socket", "ptrace"]).unwrap();
    let mut bad = s
        .spawn_process(&hostile("ebpf-tcp", &["--mode", "tcp"], deny))
        .unwrap();
    // The same list on an agent that never makes those calls: it lives (and starts, though
    // the launcher before it may make calls on the list).
    let everything_the_launcher_does =
        SyscallSet::parse(&["socket", "setresuid", "capset", "prctl"]).unwrap();
    let mut good = s
        .spawn_process(&hostile(
            "ebpf-good",
            &["--mode", "free", "--rounds", "1"],
            everything_the_launcher_does,
        ))
        .unwrap();
    leaks.watch(&bad);
    leaks.watch(&good);
    bad.resume().unwrap();
    good.resume().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Status::Exited(e) = bad.status() {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "the agent lived past its forbidden call"
        );
        thread::sleep(Duration::from_millis(20));
    };
    eprintln!("exit: {exit:?}");
    assert_eq!(exit.reason, ExitReason::Violation);
    assert!(
        exit.detail.contains("forbidden syscall socket"),
        "{}",
        exit.detail
    );
    thread::sleep(Duration::from_millis(300));
    assert!(
        matches!(good.status(), Status::Running),
        "the agent that made no forbidden call died: {:?}",
        good.status()
    );
    let calls = good.syscalls().unwrap().unwrap();
    assert_eq!(calls.denied, None);
    drop(bad);
    drop(good);
    drop(s);
    leaks.check();
}

#[test]
fn without_probes_erasure_is_estimated_and_deny_lists_are_refused() {
    let Some((_g, s)) = sandbox_or_skip(ProcessConfig {
        no_ebpf: true,
        ..ProcessConfig::default()
    }) else {
        return;
    };
    assert!(!s.probes_loaded());
    assert!(
        s.erasure_source().contains("drop in resident memory")
            && s.erasure_source().contains("off by configuration"),
        "{}",
        s.erasure_source()
    );
    let err = s
        .spawn_process(&hostile(
            "ebpf-refused",
            &["--mode", "tcp"],
            SyscallSet::parse(&["socket"]).unwrap(),
        ))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("deny list (socket) needs the eBPF probes"),
        "{err}"
    );
    let mut a = s
        .spawn_process(&hostile(
            "ebpf-noprobe",
            &["--mode", "free"],
            SyscallSet::EMPTY,
        ))
        .unwrap();
    assert!(a.syscalls().is_none(), "syscall counts without probes");
    drop(a);
}

/// A static x86-64 ELF that makes a 32-bit syscall (`int 0x80`: i386 getpid, number 20) and
/// exits with code 0 through the 32-bit exit. Written byte by byte: no compiler here makes one.
fn int80_program() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    let code: [u8; 16] = [
        0xb8, 0x14, 0, 0, 0, // mov eax, 20 (i386 getpid)
        0xcd, 0x80, // int 0x80
        0xb8, 0x01, 0, 0, 0, // mov eax, 1 (i386 exit)
        0x31, 0xdb, // xor ebx, ebx
        0xcd, 0x80, // int 0x80
    ];
    let total = (64 + 56 + code.len()) as u64;
    let mut e = Vec::new();
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(BASE + 64 + 56).to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // program headers
    e.extend_from_slice(&0u64.to_le_bytes()); // no sections
    e.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 1, 0, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R X
    for v in [0, BASE, BASE, total, total, 0x1000] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.extend_from_slice(&code);
    e
}

#[test]
fn a_32_bit_syscall_cannot_pass_a_deny_list_under_another_number() {
    let Some((_g, s)) = sandbox_with_probes() else {
        return;
    };
    let mut leaks = Leaks::default();
    leaks.parents(&s);
    let path = std::env::temp_dir().join(format!("maxwell-int80-{}", std::process::id()));
    std::fs::write(&path, int80_program()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spec = |name: &str, deny: SyscallSet| AgentSpec {
        name: name.into(),
        program: Program::Native {
            path: path.clone(),
            args: vec![],
        },
        limits: Limits {
            deny,
            ..Limits::default()
        },
    };
    // Without a list the program runs its 32-bit calls and exits 0 (counted as "other").
    let mut free = s
        .spawn_process(&spec("int80-free", SyscallSet::EMPTY))
        .unwrap();
    // With any list (here one that forbids only ptrace) its first 32-bit call kills it.
    let mut listed = s
        .spawn_process(&spec(
            "int80-listed",
            SyscallSet::parse(&["ptrace"]).unwrap(),
        ))
        .unwrap();
    leaks.watch(&free);
    leaks.watch(&listed);
    free.resume().unwrap();
    listed.resume().unwrap();
    let exit_of = |a: &mut ProcessAgent| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Status::Exited(e) = a.status() {
                return e;
            }
            assert!(Instant::now() < deadline, "the program did not end");
            thread::sleep(Duration::from_millis(20));
        }
    };
    let e = exit_of(&mut free);
    assert_eq!(e.reason, ExitReason::Finished, "{e:?}");
    assert!(e.detail.contains("exited with code 0"), "{e:?}");
    let c = free.syscalls().unwrap().unwrap();
    assert_eq!(
        c.counts[maxwell_ebpf_other()],
        2,
        "32-bit calls counted: {c:?}"
    );
    let e = exit_of(&mut listed);
    assert_eq!(e.reason, ExitReason::Violation, "{e:?}");
    assert!(e.detail.contains("32-bit"), "{e:?}");
    drop(free);
    drop(listed);
    drop(s);
    std::fs::remove_file(&path).unwrap();
    leaks.check();
}

fn maxwell_ebpf_other() -> usize {
    maxwell_sandbox::SYSCALLS_OTHER
}
