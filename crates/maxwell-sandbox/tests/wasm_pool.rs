//! The wasm backend's executor pool: frozen agents hold no OS thread and little memory, running
//! agents each get a worker, and kills report the right reason whatever the agent's state.
//!
//! The tests count the process's threads and read its resident size, so they run one at a time
//! (`SERIAL`), each with its own sandbox.

#![allow(clippy::unwrap_used)] // test helpers: a failure should panic

use std::sync::Mutex;
use std::time::{Duration, Instant};

use maxwell_core::Bytes;
use maxwell_sandbox::wasm::WasmSandbox;
use maxwell_sandbox::{
    Agent, AgentSpec, ExitReason, Limits, Program, Sandbox, SandboxError, Status,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// An infinite loop with one page of memory.
const SPIN: &str =
    r#"(module (memory (export "memory") 1) (func (export "run") (loop $l (br $l))))"#;

fn spec(name: &str) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        program: Program::Wasm {
            module: SPIN.as_bytes().to_vec(),
        },
        limits: Limits {
            memory_max: Bytes(16 << 20),
            pids_max: 1,
            ..Limits::default()
        },
    }
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// The thread count once the workers of earlier tests' sandboxes have exited.
fn settled_threads() -> usize {
    let mut last = threads();
    for _ in 0..40 {
        std::thread::sleep(Duration::from_millis(50));
        let now = threads();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

fn spawn_many(sb: &WasmSandbox, prefix: &str, n: usize) -> Vec<Box<dyn Agent>> {
    (0..n)
        .map(|i| sb.spawn(&spec(&format!("{prefix}-{i}"))).unwrap())
        .collect()
}

/// Waits until each agent has used at least `min_ns` of CPU since the call, adding up its usage.
fn wait_for_cpu(agents: &mut [&mut Box<dyn Agent>], min_ns: u64) -> Vec<u64> {
    let mut used = vec![0u64; agents.len()];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (a, u) in agents.iter_mut().zip(used.iter_mut()) {
            *u += a.usage().unwrap().cpu.0;
        }
        if used.iter().all(|&u| u >= min_ns) {
            return used;
        }
        assert!(
            Instant::now() < deadline,
            "agents did not all run: cpu {used:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn assert_frozen(a: &mut Box<dyn Agent>) {
    assert_eq!(a.status(), Status::Paused);
    a.usage().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(a.usage().unwrap().cpu.0, 0, "{} ran while paused", a.name());
}

#[test]
fn two_thousand_frozen_agents_hold_few_threads() {
    let _serial = serial();
    let sb = WasmSandbox::new().unwrap();
    let before = settled_threads();
    let mut agents = spawn_many(&sb, "frozen", 2_000);
    let spawned = threads();
    assert!(
        spawned <= before + 16,
        "{} threads for 2000 frozen agents (from {before})",
        spawned
    );
    for round in 0..3 {
        let (a, rest) = agents[round * 7..].split_first_mut().unwrap();
        let b = &mut rest[3];
        a.resume().unwrap();
        b.resume().unwrap();
        wait_for_cpu(&mut [a, b], 2_000_000);
        a.pause().unwrap();
        b.pause().unwrap();
        assert_frozen(a);
        assert_frozen(b);
    }
    let after = threads();
    assert!(
        after <= before + 16,
        "{after} threads after running a few of 2000 agents (from {before})"
    );
    for a in &mut agents {
        assert_eq!(a.kill("test over").reason, ExitReason::Killed);
    }
}

#[test]
fn more_running_agents_than_spare_workers_all_run_and_pause() {
    let _serial = serial();
    let sb = WasmSandbox::new().unwrap();
    let before = settled_threads();
    let mut agents = spawn_many(&sb, "busy", 6);
    for a in &mut agents {
        a.resume().unwrap();
    }
    let used = wait_for_cpu(&mut agents.iter_mut().collect::<Vec<_>>(), 5_000_000);
    assert!(used.iter().all(|&u| u >= 5_000_000), "{used:?}");
    let running = threads();
    assert!(
        running >= before + 6 - 2,
        "6 running agents on {running} threads (from {before})"
    );
    for a in &mut agents {
        let t = Instant::now();
        a.pause().unwrap();
        assert!(t.elapsed() < Duration::from_secs(2));
    }
    for a in &mut agents {
        assert_frozen(a);
    }
    // They run again after being parked, on whichever workers are free.
    for a in &mut agents {
        a.resume().unwrap();
    }
    wait_for_cpu(&mut agents.iter_mut().collect::<Vec<_>>(), 2_000_000);
    for a in &mut agents {
        a.pause().unwrap();
        assert_eq!(a.kill("test over").reason, ExitReason::Killed);
    }
}

#[test]
fn kills_report_the_right_reason_in_every_state() {
    let _serial = serial();
    let sb = WasmSandbox::new().unwrap();

    let mut never = sb.spawn(&spec("never")).unwrap();
    let exit = never.kill("never ran");
    assert_eq!(exit.reason, ExitReason::Killed);
    assert_eq!(exit.detail, "killed: never ran");
    assert!(matches!(never.status(), Status::Exited(e) if e.detail == "killed: never ran"));
    assert!(matches!(never.resume(), Err(SandboxError::Exited { .. })));

    let mut paused = sb.spawn(&spec("paused")).unwrap();
    paused.resume().unwrap();
    wait_for_cpu(&mut [&mut paused], 1_000_000);
    paused.pause().unwrap();
    assert_frozen(&mut paused);
    let exit = paused.kill("was paused");
    assert_eq!(exit.reason, ExitReason::Killed);
    assert_eq!(exit.detail, "killed: was paused");

    let mut running = sb.spawn(&spec("running")).unwrap();
    running.resume().unwrap();
    wait_for_cpu(&mut [&mut running], 1_000_000);
    let exit = running.kill("was running");
    assert_eq!(exit.reason, ExitReason::Killed);
    assert_eq!(exit.detail, "killed: was running");
    assert!(matches!(running.status(), Status::Exited(e) if e.reason == ExitReason::Killed));

    // Resumed and killed before any worker polled it.
    let mut queued = sb.spawn(&spec("queued")).unwrap();
    queued.resume().unwrap();
    let exit = queued.kill("just resumed");
    assert_eq!(exit.reason, ExitReason::Killed);
    assert_eq!(exit.detail, "killed: just resumed");
}

/// Resident bytes per frozen agent, never run and run once; printed (`--nocapture`) and held
/// to generous bounds.
#[test]
fn frozen_agents_are_small() {
    let _serial = serial();
    const N: usize = 2_000;
    let sb = WasmSandbox::new().unwrap();
    // Warm up: compile the module and run one agent, so that one-time costs are not counted.
    let mut warm = sb.spawn(&spec("warm")).unwrap();
    warm.resume().unwrap();
    wait_for_cpu(&mut [&mut warm], 1_000_000);
    warm.pause().unwrap();

    let (base, maps) = (rss_bytes(), mappings());
    let mut agents = spawn_many(&sb, "small", N);
    let spawned = rss_bytes();
    // A few at a time: with many more running agents than cores, each waits long for its
    // worker to be scheduled.
    for batch in agents.chunks_mut(4) {
        for a in batch.iter_mut() {
            a.resume().unwrap();
        }
        let mut refs: Vec<&mut Box<dyn Agent>> = batch.iter_mut().collect();
        wait_for_cpu(&mut refs, 1);
        for a in batch.iter_mut() {
            a.pause().unwrap();
        }
    }
    let ran = rss_bytes();
    let never_run = spawned.saturating_sub(base) / N as u64;
    let has_run = ran.saturating_sub(base) / N as u64;
    eprintln!(
        "resident per frozen agent: never run {never_run} B, has run {has_run} B \
         (VmRSS {base} -> {spawned} -> {ran} B for {N} agents; {} threads; {} more mappings)",
        threads(),
        mappings().saturating_sub(maps)
    );
    // Measured: about 600 B and 12 KiB (a thread per agent and a module compiled per agent
    // took 32 KiB and 45 KiB).
    assert!(never_run < 4 << 10, "{never_run} B per never-run agent");
    assert!(has_run < 128 << 10, "{has_run} B per agent that ran");
    for a in &mut agents {
        assert_eq!(a.kill("test over").reason, ExitReason::Killed);
    }
    warm.kill("test over");
}

/// After a burst of running agents, the idle workers beyond the bound exit.
#[test]
fn idle_workers_beyond_the_bound_exit() {
    let _serial = serial();
    let sb = WasmSandbox::new().unwrap();
    let before = settled_threads();
    let mut agents = spawn_many(&sb, "burst", 14);
    for a in &mut agents {
        a.resume().unwrap();
    }
    wait_for_cpu(&mut agents.iter_mut().collect::<Vec<_>>(), 1);
    let burst = threads();
    assert!(
        burst >= before + 12,
        "14 running agents on {burst} threads (from {before})"
    );
    for a in &mut agents {
        a.pause().unwrap();
    }
    // The spares idle already: 14 idle workers and 2 spares settle to the bound.
    let bound =
        before - maxwell_sandbox::wasm::SPARE_WORKERS + maxwell_sandbox::wasm::MAX_IDLE_WORKERS;
    let deadline = Instant::now() + maxwell_sandbox::wasm::IDLE_EXIT * 3;
    while threads() > bound {
        assert!(
            Instant::now() < deadline,
            "{} threads long after the burst (from {before}, bound {bound})",
            threads()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // And the pool still serves.
    agents[0].resume().unwrap();
    wait_for_cpu(&mut [&mut agents[0]], 1_000_000);
    for a in &mut agents {
        assert_eq!(a.kill("test over").reason, ExitReason::Killed);
    }
}

/// Resumes and pauses in a pseudo-random order, often back to back (a resume landing while the
/// worker that just parked the agent is on its way back): every pause answers, and every agent
/// still runs at the end.
#[test]
fn random_resumes_and_pauses_never_lose_an_agent() {
    let _serial = serial();
    let sb = WasmSandbox::new().unwrap();
    let mut agents = spawn_many(&sb, "shuffle", 8);
    let mut running = [false; 8];
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..2_000 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = (rng % 8) as usize;
        if running[i] {
            agents[i].pause().unwrap();
            assert_eq!(agents[i].status(), Status::Paused);
        } else {
            agents[i].resume().unwrap();
            assert_eq!(agents[i].status(), Status::Running);
        }
        running[i] = !running[i];
        if rng.is_multiple_of(16) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for a in &mut agents {
        a.resume().unwrap();
    }
    wait_for_cpu(&mut agents.iter_mut().collect::<Vec<_>>(), 1_000_000);
    for a in &mut agents {
        a.pause().unwrap();
        assert_frozen(a);
        assert_eq!(a.kill("test over").reason, ExitReason::Killed);
    }
}
