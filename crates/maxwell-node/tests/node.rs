//! The node with real WASM agents, the machine's physics (modelled on a VM) and a durable
//! ledger: the leech dies, the scientist earns, the ledger verifies.

#![allow(clippy::unwrap_used)] // test helpers: a failure should panic

use std::path::Path;
use std::time::{Duration, Instant};

use maxwell_agents::{LEECH_WAT, SCIENTIST_WAT};
use maxwell_core::{Bytes, MarketConfig, Nanos, Tokens};
use maxwell_ledger::Ledger;
use maxwell_node::Node;
use maxwell_physics::{ModelParams, Physics};
use maxwell_sandbox::wasm::WasmSandbox;
use maxwell_sandbox::{AgentSpec, Limits, Program};

fn spec(name: &str, wat: &str) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        program: Program::Wasm {
            module: wat.as_bytes().to_vec(),
        },
        limits: Limits {
            memory_max: Bytes(64 << 20),
            pids_max: 1,
        },
    }
}

#[test]
fn the_leech_dies_the_scientist_earns_and_the_ledger_verifies() {
    let dir = std::env::temp_dir().join(format!("maxwell-node-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ledger = Ledger::open(&dir.join("ledger.db"), &dir.join("node.key")).unwrap();
    // Audits at 10% so that a 30 s run sees several; a claim of one lease (256 units at the
    // default bounty) then risks a 0.33 JOULE fine, well within a fresh wallet.
    let config = MarketConfig {
        audit_ppm: 100_000,
        ..MarketConfig::default()
    };
    let mut node = Node::new(
        config,
        Physics::open(Path::new("/"), ModelParams::default()),
        Box::new(WasmSandbox::new().unwrap()),
        Some(ledger),
    )
    .unwrap();
    let sci = node
        .spawn(
            &spec("scientist", SCIENTIST_WAT),
            Tokens::joules(10),
            Tokens::joules(5),
            Tokens(200_000),
        )
        .unwrap();
    let leech = node
        .spawn(
            &spec("leech", LEECH_WAT),
            Tokens::joules(10),
            Tokens::joules(5),
            Tokens(200_000),
        )
        .unwrap();
    node.fund_bounty_pool(Tokens::joules(100_000));

    let start = Instant::now();
    let quantum = Duration::from_millis(10);
    let mut leech_ran = false;
    let mut tick = 0u32;
    let mut audits_passed = 0;
    while start.elapsed() < Duration::from_secs(30) {
        tick += 1;
        let due = start + quantum * tick;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let r = node.tick(Nanos(start.elapsed().as_nanos() as u64)).unwrap();
        leech_ran |= r.winners.contains(&leech);
        audits_passed += r.audits.0;
        assert_eq!(r.audits.1, 0, "an honest scientist failed an audit");
        assert!(r.refused.is_empty(), "tick {tick}: {:?}", r.refused);
        if node.deaths().iter().any(|d| d.agent == leech) && tick > 200 {
            break;
        }
    }
    assert!(leech_ran, "the leech never won a slot");
    assert!(audits_passed > 0, "no claim was audited");
    let death = node
        .deaths()
        .iter()
        .find(|d| d.agent == leech)
        .unwrap_or_else(|| panic!("the leech survived {tick} ticks"));
    assert!(death.cause.contains("insolvent"), "{death:?}");
    assert!(
        node.deaths().iter().all(|d| d.agent != sci),
        "{:?}",
        node.deaths()
    );
    let sci_stats = *node.market().stats(sci).unwrap();
    assert!(
        node.market().balance(sci).unwrap() > Tokens::joules(10),
        "the scientist did not earn: {:?} {sci_stats:?}",
        node.market().balance(sci)
    );
    assert!(node.freeze_all().is_empty());
    let last = node.ledger().unwrap().last_tick().unwrap();
    drop(node);
    let r = maxwell_ledger::verify(&dir.join("ledger.db")).unwrap();
    assert!(r.ok(), "{:?}", r.first_bad);
    assert_eq!(r.ticks, last);
    let _ = std::fs::remove_dir_all(&dir);
}
