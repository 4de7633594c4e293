//! The four WASM agents under the wasm backend, doing what each is for.

#![allow(clippy::unwrap_used)] // test helpers: a failure should panic

use std::time::Duration;

use maxwell_agents::{LEECH_WAT, LIAR_WAT, SCIENTIST_WAT, SQUATTER_WAT};
use maxwell_core::work::verify;
use maxwell_core::{Bytes, Tokens};
use maxwell_sandbox::wasm::WasmSandbox;
use maxwell_sandbox::{Agent, AgentSpec, Limits, Message, Program, Sandbox, Status};

fn spawn(sb: &WasmSandbox, name: &str, wat: &str) -> Box<dyn Agent> {
    let a = sb
        .spawn(&AgentSpec {
            name: name.into(),
            program: Program::Wasm {
                module: wat.as_bytes().to_vec(),
            },
            limits: Limits {
                memory_max: Bytes(128 << 20),
                pids_max: 1,
                ..Limits::default()
            },
        })
        .unwrap();
    a.inform(Tokens(10_000_000), Tokens(100_000));
    a
}

fn run(a: &mut Box<dyn Agent>, quanta: u32) -> Vec<Message> {
    let mut out = Vec::new();
    for _ in 0..quanta {
        a.resume().unwrap();
        std::thread::sleep(Duration::from_millis(10));
        a.pause().unwrap();
        out.extend(a.drain());
    }
    assert_eq!(a.status(), Status::Paused, "{}", a.name());
    out
}

fn claims(ms: &[Message]) -> Vec<maxwell_core::work::PrimeClaim> {
    ms.iter()
        .filter_map(|m| match m {
            Message::Claim(c) => Some(*c),
            _ => None,
        })
        .collect()
}

#[test]
fn the_scientist_claims_ranges_that_audits_confirm() {
    let sb = WasmSandbox::new().unwrap();
    let mut a = spawn(&sb, "scientist", SCIENTIST_WAT);
    // Before its meter holds 24 quanta it leaves the owner's opening bid alone; then it bids its
    // value, net income per quantum won over the window (which starts after quantum 1).
    a.mailbox().inform_income(Tokens(100_000), 1);
    let mut work = maxwell_core::work::Dispenser::default();
    let leased: Vec<(u64, u64)> = (0..8).map(|_| work.lease(0)).collect();
    a.mailbox().give_work(leased.iter().copied());
    let ms = run(&mut a, 30);
    let cs = claims(&ms);
    assert_eq!(
        cs.len(),
        8,
        "it sieves what it was leased, and nothing else"
    );
    for (c, l) in cs.iter().zip(&leased) {
        assert_eq!((c.start, c.end), *l);
        assert!(verify(c), "{c:?}");
        assert!(c.count > 2_000);
    }
    assert!(
        !ms.iter().any(|m| matches!(m, Message::Bid { .. })),
        "{ms:?}"
    );
    a.mailbox().inform_income(Tokens(12_900_000), 129);
    a.mailbox().give_work([work.lease(0)]);
    let ms = run(&mut a, 10);
    assert_eq!(claims(&ms).len(), 1);
    assert!(ms.contains(&Message::Bid {
        price: Tokens(100_000)
    }));
    let ms = run(&mut a, 3);
    assert!(claims(&ms).is_empty(), "no work, no claims: {ms:?}");
    a.kill("done");
}

#[test]
fn the_liar_claims_what_audits_refute() {
    let sb = WasmSandbox::new().unwrap();
    let mut a = spawn(&sb, "liar", LIAR_WAT);
    let cs = claims(&run(&mut a, 20));
    assert!(!cs.is_empty());
    assert!(cs.iter().all(|c| !verify(c)));
    a.kill("done");
}

#[test]
fn the_leech_bids_greedily_claims_nothing_and_erases() {
    let sb = WasmSandbox::new().unwrap();
    let mut a = spawn(&sb, "leech", LEECH_WAT);
    let ms = run(&mut a, 20);
    assert!(claims(&ms).is_empty());
    assert!(ms.contains(&Message::Bid {
        price: Tokens(9_000_000)
    }));
    let u = a.usage().unwrap();
    assert!(u.cpu.0 > 20_000_000, "{u:?}");
    // It overwrites 4 MiB again and again: megabytes erased per quantum.
    assert!(u.erased.0 > 20 * (1 << 20), "{u:?}");
    a.kill("done");
}

#[test]
fn the_squatter_takes_memory_then_withdraws_and_idles() {
    let sb = WasmSandbox::new().unwrap();
    let mut a = spawn(&sb, "squatter", SQUATTER_WAT);
    // Taking 64 MiB takes a few quanta (more on a loaded machine); then it withdraws its bid.
    let mut ms = Vec::new();
    for _ in 0..200 {
        ms.extend(run(&mut a, 1));
        if ms.last() == Some(&Message::CancelBid) {
            break;
        }
    }
    assert_eq!(ms.last(), Some(&Message::CancelBid));
    let u = a.usage().unwrap();
    assert!(u.resident.0 >= 64 << 20, "{u:?}");
    a.kill("done");
}

#[test]
fn the_example_in_the_abi_document_runs_and_its_claim_verifies() {
    let doc = include_str!("../../docs/wasm-abi.md");
    let start = doc.find("```wat\n").unwrap() + "```wat\n".len();
    let wat = &doc[start..start + doc[start..].find("```").unwrap()];
    let sb = WasmSandbox::new().unwrap();
    let mut a = spawn(&sb, "example", wat);
    a.resume().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !matches!(a.status(), Status::Exited(_)) {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(2));
    }
    let ms = a.drain();
    let cs = claims(&ms);
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].count, 25);
    assert!(verify(&cs[0]));
    assert!(ms.contains(&Message::Log(
        "example: claimed the primes below 100".into()
    )));
    assert!(ms.contains(&Message::Bid {
        price: Tokens(1_000_000)
    }));
}
