//! The four native agents under the process backend. Needs root and cgroups: without them each
//! test prints a skip line and returns, unless `MAXWELL_REQUIRE_ROOT_TESTS=1`, when it fails.
//! After every test no process of the test may be alive and no cgroup directory may be left.

#![allow(clippy::unwrap_used)]

use std::sync::MutexGuard;
use std::thread;
use std::time::{Duration, Instant};

use maxwell_core::Tokens;
use maxwell_core::work::{PrimeClaim, sieve, verify};
use maxwell_sandbox::process::testing::{Leaks, sandbox_or_skip};
use maxwell_sandbox::process::{ProcessConfig, ProcessSandbox};
use maxwell_sandbox::{Agent, AgentSpec, ExitReason, Limits, Message, Program, Status};

fn sandbox() -> Option<(MutexGuard<'static, ()>, ProcessSandbox)> {
    sandbox_or_skip(ProcessConfig::default())
}

fn spec(name: &str, exe: &str, args: &[&str]) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        program: Program::Native {
            path: exe.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
        },
        limits: Limits::default(),
    }
}

fn claims(msgs: &[Message]) -> Vec<PrimeClaim> {
    msgs.iter()
        .filter_map(|m| match m {
            Message::Claim(c) => Some(*c),
            _ => None,
        })
        .collect()
}

fn last_bid(msgs: &[Message]) -> Option<Tokens> {
    msgs.iter().rev().find_map(|m| match m {
        Message::Bid { price } => Some(*price),
        _ => None,
    })
}

#[test]
fn the_four_agents_say_what_they_are() {
    let Some((_g, s)) = sandbox() else { return };
    let mut leaks = Leaks::default();
    leaks.dirs.extend(s.parent_cgroups());
    let balance = Tokens(1_000_000);
    let mut agents = [
        s.spawn_process(&spec("scientist", env!("CARGO_BIN_EXE_scientist"), &[]))
            .unwrap(),
        s.spawn_process(&spec("liar", env!("CARGO_BIN_EXE_liar"), &[]))
            .unwrap(),
        s.spawn_process(&spec("leech", env!("CARGO_BIN_EXE_leech"), &[]))
            .unwrap(),
        s.spawn_process(&spec(
            "squatter",
            env!("CARGO_BIN_EXE_squatter"),
            &["--mib", "64"],
        ))
        .unwrap(),
    ];
    let mut work = maxwell_core::work::Dispenser::default();
    let leased: Vec<(u64, u64)> = (0..400).map(|_| work.lease(0)).collect();
    agents[0].mailbox().give_work(leased.iter().copied());
    agents[0].mailbox().inform_income(Tokens(100_000), 1);
    for a in &mut agents {
        leaks.watch(a);
        a.inform(balance, Tokens(10));
        assert_eq!(a.status(), Status::Paused);
        a.usage().unwrap();
        a.resume().unwrap();
    }
    // Run them together for a while, draining as a daemon would.
    let mut said: [Vec<Message>; 4] = Default::default();
    let mut resident = [0u64; 4];
    let mut cpu = [0u64; 4];
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        for (i, a) in agents.iter_mut().enumerate() {
            said[i].extend(a.drain());
            let u = a.usage().unwrap();
            cpu[i] += u.cpu.0;
            resident[i] = resident[i].max(u.resident.0);
            leaks.watch(a);
        }
        thread::sleep(Duration::from_millis(20));
    }
    for a in &mut agents {
        assert_eq!(a.status(), Status::Running, "{}", a.name());
    }
    let [sci, liar, leech, squat] = &said;

    let sci_claims = claims(sci);
    assert!(sci_claims.len() >= 3, "{sci:?}");
    for (c, l) in sci_claims.iter().zip(&leased) {
        assert_eq!(
            (c.start, c.end),
            *l,
            "it sieves the ranges leased to it, in order"
        );
    }
    // An audit of a sample (recomputing thousands of claims would dominate the test).
    for c in sci_claims.iter().step_by(sci_claims.len().div_ceil(10)) {
        assert_eq!(*c, sieve(c.start, c.end));
        assert!(verify(c));
    }
    // Its value: net income per quantum over its meter's window (none yet: the host told it
    // one quantum, the window's origin).
    assert_eq!(last_bid(sci), None);
    assert!(
        sci.iter()
            .any(|m| matches!(m, Message::Log(l) if l.starts_with("scientist:")))
    );

    let lies = claims(liar);
    assert!(lies.len() >= 3, "{liar:?}");
    assert!(lies.iter().take(10).all(|c| !verify(c)), "a lie verified");

    assert!(claims(leech).is_empty());
    let greedy = last_bid(leech).unwrap();
    assert_eq!(greedy, Tokens(950_000));
    assert!(cpu[2] > 100_000_000, "the leech burns CPU: {}", cpu[2]);

    assert!(resident[3] >= 64 << 20, "squatter resident {}", resident[3]);
    assert_eq!(last_bid(squat), Some(Tokens(1)));
    assert!(claims(squat).is_empty());
    assert!(cpu[3] < cpu[2] / 4, "the squatter idles: {cpu:?}");

    // None of them broke the protocol.
    for (i, s) in said.iter().enumerate() {
        assert!(
            !s.iter().any(|m| matches!(m, Message::Violation(_))),
            "agent {i}: {s:?}"
        );
    }

    for a in &mut agents {
        let e = a.kill("experiment over");
        assert_eq!(e.reason, ExitReason::Killed, "{e:?}");
    }
    drop(agents);
    drop(s);
    leaks.check();
}

#[test]
fn a_scientist_with_a_quota_finishes_cleanly() {
    let Some((_g, s)) = sandbox() else { return };
    let mut leaks = Leaks::default();
    leaks.dirs.extend(s.parent_cgroups());
    let mut a = s
        .spawn_process(&spec(
            "scientist-3",
            env!("CARGO_BIN_EXE_scientist"),
            &["--ranges", "3"],
        ))
        .unwrap();
    a.mailbox()
        .give_work([(5000, 6000), (6000, 7000), (7000, 8000), (8000, 9000)]);
    leaks.watch(&a);
    a.resume().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut said = Vec::new();
    while !matches!(a.status(), Status::Exited(_)) && Instant::now() < deadline {
        said.extend(a.drain());
        thread::sleep(Duration::from_millis(10));
    }
    said.extend(a.drain());
    let Status::Exited(e) = a.status() else {
        panic!("still running")
    };
    assert_eq!(e.reason, ExitReason::Finished);
    assert_eq!(e.detail, "exited with code 0");
    let c = claims(&said);
    assert_eq!(
        c.iter().map(|c| c.start).collect::<Vec<_>>(),
        [5000, 6000, 7000]
    );
    assert!(c.iter().all(verify));
    drop(a);
    drop(s);
    leaks.check();
}

#[test]
fn agents_outside_maxwell_say_what_is_missing() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_scientist"))
        .env_remove("MAXWELL_SOCKET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("MAXWELL_SOCKET is not set"));
}
