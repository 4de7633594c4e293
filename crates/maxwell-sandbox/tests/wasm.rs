//! The wasm backend against hostile modules: each is contained and reported, and an honest
//! agent running beside it is unaffected.

#![allow(clippy::unwrap_used)] // test helpers: a failure should panic

use std::time::{Duration, Instant};

use maxwell_core::{Bytes, Tokens};
use maxwell_sandbox::wasm::{WasmConfig, WasmSandbox};
use maxwell_sandbox::{
    Agent, AgentSpec, ExitReason, Limits, Message, Program, Sandbox, SandboxError, Status,
};

fn spec(name: &str, wat: &str) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        program: Program::Wasm {
            module: wat.as_bytes().to_vec(),
        },
        limits: Limits {
            memory_max: Bytes(16 << 20),
            pids_max: 1,
            ..Limits::default()
        },
    }
}

/// Counts to ever larger numbers, storing its progress at byte 0, and calls the host.
const COUNTER: &str = r#"(module
  (import "maxwell" "bid" (func $bid (param i64)))
  (memory (export "memory") 1)
  (func (export "run") (local $n i64)
    (loop $l
      (local.set $n (i64.add (local.get $n) (i64.const 1)))
      (i64.store (i32.const 0) (local.get $n))
      (if (i64.eqz (i64.rem_u (local.get $n) (i64.const 1000000)))
        (then (call $bid (i64.const 7))))
      (br $l))))"#;

fn run_for(agent: &mut Box<dyn Agent>, d: Duration) {
    agent.resume().unwrap();
    std::thread::sleep(d);
    agent.pause().unwrap();
}

fn wait_exit(agent: &mut Box<dyn Agent>) -> maxwell_sandbox::Exit {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Status::Exited(e) = agent.status() {
            return e;
        }
        assert!(Instant::now() < deadline, "agent did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// An honest agent beside the hostile one keeps running and being paused normally.
fn neighbour(sb: &WasmSandbox) -> Box<dyn Agent> {
    let mut n = sb.spawn(&spec("neighbour", COUNTER)).unwrap();
    n.resume().unwrap();
    n
}

fn neighbour_is_fine(mut n: Box<dyn Agent>) {
    // It bids every million iterations: give it time for a few, however loaded the machine.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut said = Vec::new();
    while !said.contains(&Message::Bid { price: Tokens(7) }) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        said.extend(n.drain());
    }
    n.pause().unwrap();
    assert_eq!(n.status(), Status::Paused);
    assert!(n.usage().unwrap().cpu.0 > 0);
    assert!(said.contains(&Message::Bid { price: Tokens(7) }));
    let exit = n.kill("test over");
    assert_eq!(exit.reason, ExitReason::Killed);
}

#[test]
fn an_infinite_loop_is_preempted_and_frozen() {
    let sb = WasmSandbox::new().unwrap();
    let n = neighbour(&sb);
    let mut a = sb
        .spawn(&spec(
            "spin",
            r#"(module (func (export "run") (loop $l (br $l))))"#,
        ))
        .unwrap();
    run_for(&mut a, Duration::from_millis(50));
    let ran = a.usage().unwrap().cpu;
    assert!(ran.0 > 5_000_000, "ran {ran:?}");
    // Paused: no CPU at all.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(a.usage().unwrap().cpu.0, 0);
    assert_eq!(a.status(), Status::Paused);
    let exit = a.kill("insolvent");
    assert_eq!(exit.reason, ExitReason::Killed);
    assert_eq!(exit.detail, "killed: insolvent");
    assert!(matches!(a.status(), Status::Exited(e) if e.detail == "killed: insolvent"));
    neighbour_is_fine(n);
}

#[test]
fn a_memory_bomb_is_capped_and_reported() {
    let sb = WasmSandbox::new().unwrap();
    let n = neighbour(&sb);
    let mut a = sb
        .spawn(&spec(
            "bomb",
            r#"(module (memory (export "memory") 1)
                 (func (export "run") (loop $l (drop (memory.grow (i32.const 16))) (br $l))))"#,
        ))
        .unwrap();
    a.resume().unwrap();
    let exit = wait_exit(&mut a);
    assert_eq!(exit.reason, ExitReason::MemoryLimit, "{exit:?}");
    assert!(exit.detail.contains("16MiB allowed"), "{}", exit.detail);
    assert!(a.usage().unwrap().resident.0 <= 16 << 20);
    neighbour_is_fine(n);
}

#[test]
fn traps_and_stack_overflows_are_crashes() {
    let sb = WasmSandbox::new().unwrap();
    let n = neighbour(&sb);
    for (name, wat, needle) in [
        (
            "trap",
            r#"(module (func (export "run") unreachable))"#,
            "unreachable",
        ),
        (
            "divzero",
            r#"(module (func (export "run") (drop (i32.div_u (i32.const 1) (i32.const 0)))))"#,
            "divide by zero",
        ),
        (
            "recurse",
            r#"(module (func $f (export "run") (call $f)))"#,
            "stack",
        ),
    ] {
        let mut a = sb.spawn(&spec(name, wat)).unwrap();
        a.resume().unwrap();
        let exit = wait_exit(&mut a);
        assert_eq!(exit.reason, ExitReason::Crashed, "{name}: {exit:?}");
        assert!(exit.detail.contains(needle), "{name}: {}", exit.detail);
        assert!(matches!(a.resume(), Err(SandboxError::Exited { .. })));
    }
    neighbour_is_fine(n);
}

#[test]
fn abi_violations_are_reported() {
    let sb = WasmSandbox::new().unwrap();
    for (name, wat, needle) in [
        (
            "badlog",
            r#"(module (import "maxwell" "log" (func $log (param i32 i32)))
                 (memory (export "memory") 1)
                 (func (export "run") (call $log (i32.const 65530) (i32.const 100))))"#,
            "outside linear memory",
        ),
        (
            "negbid",
            r#"(module (import "maxwell" "bid" (func $bid (param i64)))
                 (func (export "run") (call $bid (i64.const -5))))"#,
            "negative",
        ),
    ] {
        let mut a = sb.spawn(&spec(name, wat)).unwrap();
        a.resume().unwrap();
        let exit = wait_exit(&mut a);
        assert_eq!(exit.reason, ExitReason::Violation, "{name}: {exit:?}");
        assert!(exit.detail.contains(needle), "{name}: {}", exit.detail);
    }
}

#[test]
fn garbage_modules_are_refused_at_spawn_with_the_reason() {
    let sb = WasmSandbox::new().unwrap();
    for (wat, needle) in [
        ("\0asm garbage", "not a valid WASM module"),
        ("(module)", "export a function `run`"),
        (
            r#"(module (import "env" "system" (func)) (func (export "run")))"#,
            "module `maxwell`",
        ),
    ] {
        let err = sb.spawn(&spec("bad", wat)).err().unwrap().to_string();
        assert!(err.contains(needle), "{err}");
    }
    let err = sb
        .spawn(&spec("../escape", COUNTER))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("agent name"), "{err}");
}

#[test]
fn a_flood_of_bids_keeps_only_the_last() {
    let sb = WasmSandbox::new().unwrap();
    let mut a = sb
        .spawn(&spec(
            "flood",
            r#"(module (import "maxwell" "bid" (func $bid (param i64)))
                 (func (export "run") (local $i i64)
                   (loop $l
                     (local.set $i (i64.add (local.get $i) (i64.const 1)))
                     (call $bid (local.get $i))
                     (br_if $l (i64.lt_u (local.get $i) (i64.const 1000000))))))"#,
        ))
        .unwrap();
    a.resume().unwrap();
    let exit = wait_exit(&mut a);
    assert_eq!(exit.reason, ExitReason::Finished);
    assert_eq!(
        a.drain(),
        vec![Message::Bid {
            price: Tokens(1_000_000)
        }]
    );
}

#[test]
fn balance_and_price_are_what_the_host_says() {
    let sb = WasmSandbox::new().unwrap();
    let mut a = sb
        .spawn(&spec(
            "echo",
            r#"(module (import "maxwell" "bid" (func $bid (param i64)))
                 (import "maxwell" "balance" (func $balance (result i64)))
                 (import "maxwell" "price" (func $price (result i64)))
                 (func (export "run") (call $bid (i64.add (call $balance) (call $price)))))"#,
        ))
        .unwrap();
    a.inform(Tokens(1_000), Tokens(234));
    a.resume().unwrap();
    wait_exit(&mut a);
    assert_eq!(
        a.drain(),
        vec![Message::Bid {
            price: Tokens(1_234)
        }]
    );
}

#[test]
fn pause_stops_progress_and_resume_continues_it() {
    let sb = WasmSandbox::new().unwrap();
    let mut a = sb.spawn(&spec("counter", COUNTER)).unwrap();
    // Spawned paused: nothing runs until resumed.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(a.usage().unwrap().cpu.0, 0);
    assert_eq!(a.status(), Status::Paused);
    for _ in 0..20 {
        run_for(&mut a, Duration::from_millis(5));
        let used = a.usage().unwrap().cpu;
        assert!(used.0 > 0);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(a.usage().unwrap().cpu.0, 0, "ran while paused");
    }
}

#[test]
fn fuel_mode_pauses_too() {
    let sb = WasmSandbox::with_config(WasmConfig {
        epoch: false,
        fuel_yield_interval: Some(100_000),
    })
    .unwrap();
    let mut a = sb.spawn(&spec("counter", COUNTER)).unwrap();
    run_for(&mut a, Duration::from_millis(20));
    assert!(a.usage().unwrap().cpu.0 > 0);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(a.usage().unwrap().cpu.0, 0);
    assert_eq!(a.kill("done").reason, ExitReason::Killed);
}

/// Fills 4 MiB with data, then overwrites the same quarter of it whenever the price it is told
/// changes: one known erasure of 1 MiB per quantum.
const OVERWRITE_QUARTER: &str = r#"(module
  (import "maxwell" "price" (func $price (result i64)))
  (memory (export "memory") 64)
  (func $fill (param $from i32) (param $to i32) (param $v i64)
    (block $d (loop $l
      (br_if $d (i32.ge_u (local.get $from) (local.get $to)))
      (i64.store (local.get $from) (local.get $v))
      (i64.store offset=8 (local.get $from) (local.get $v))
      (local.set $from (i32.add (local.get $from) (i32.const 16)))
      (br $l))))
  (func (export "run") (local $last i64) (local $p i64)
    (call $fill (i32.const 0) (i32.const 4194304) (i64.const -1))
    (loop $l
      (local.set $p (call $price))
      (if (i64.ne (local.get $p) (local.get $last))
        (then
          (local.set $last (local.get $p))
          (call $fill (i32.const 0) (i32.const 1048576) (local.get $p))))
      (br $l))))"#;

#[test]
fn the_erasure_estimate_is_unbiased_on_a_known_fraction() {
    let sb = WasmSandbox::new().unwrap();
    let mut a = sb.spawn(&spec("eraser", OVERWRITE_QUARTER)).unwrap();
    // Let it fill memory, then discard what was counted so far.
    run_for(&mut a, Duration::from_millis(50));
    a.usage().unwrap();
    let quanta = 100u64;
    for q in 1..=quanta {
        a.inform(Tokens(0), Tokens(q));
        run_for(&mut a, Duration::from_millis(5));
    }
    let u = a.usage().unwrap();
    assert_eq!(u.resident, Bytes(4 << 20));
    // Exactly 1 MiB is overwritten per quantum, whatever the number of observations.
    let per_quantum = u.erased.0 as f64 / quanta as f64;
    let truth = (1 << 20) as f64;
    assert!(
        (per_quantum / truth - 1.0).abs() < 0.12,
        "estimated {per_quantum} bytes per quantum against {truth}"
    );
    a.kill("done");
}

#[test]
fn an_agent_that_never_ran_is_charged_for_the_memory_its_module_declares() {
    let sb = WasmSandbox::new().unwrap();
    let mut a = sb.spawn(&spec("waiting", COUNTER)).unwrap();
    let u = a.usage().unwrap();
    assert_eq!(u.resident, Bytes(65_536));
    assert_eq!(u.cpu.0, 0);
    a.kill("test over");
}
