//! The economy's guarantees on real agents, for a minute, in the daemon's own loop (its pacer
//! and defaults) on the machine's physics (modelled on a VM): four equal WASM scientists on two
//! slots, one of them funded ten times the others, beside two leeches. Every scientist lives and
//! earns, each gets a quarter of the slot-time once the leeches are gone, the leeches die within
//! ten seconds, and the ledger verifies.

#![allow(clippy::unwrap_used)] // test helpers: a failure should panic

use std::path::Path;
use std::time::Duration;

use maxwell_agents::{LEECH_WAT, SCIENTIST_WAT};
use maxwell_core::{Bytes, Life, MarketConfig, Tokens};
use maxwell_ledger::Ledger;
use maxwell_node::pacer::Pacer;
use maxwell_node::{Node, defaults};
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
fn equal_scientists_share_live_and_earn_while_leeches_die() {
    let dir = std::env::temp_dir().join(format!("maxwell-economy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ledger = Ledger::open(&dir.join("ledger.db"), &dir.join("node.key")).unwrap();
    let physics = Physics::open(Path::new("/"), ModelParams::default());
    let config = maxwell_node::tuned_for(MarketConfig::default(), &physics);
    let mut node = Node::new(
        config,
        physics,
        Box::new(WasmSandbox::new().unwrap()),
        Some(ledger),
    )
    .unwrap();
    let mut leeches = Vec::new();
    let mut scientists = Vec::new();
    for i in 0..4 {
        if i < 2 {
            let l = node
                .spawn(
                    &spec(&format!("leech-{i}"), LEECH_WAT),
                    Tokens::joules(10),
                    defaults::MAX_BID,
                    defaults::OPENING_BID,
                )
                .unwrap();
            leeches.push(l);
        }
        let funds = Tokens::joules(if i == 0 { 100 } else { 10 });
        let s = node
            .spawn(
                &spec(&format!("scientist-{i}"), SCIENTIST_WAT),
                funds,
                defaults::MAX_BID,
                defaults::OPENING_BID,
            )
            .unwrap();
        scientists.push(s);
    }
    node.fund_bounty_pool(defaults::BOUNTY_POOL);

    let mut pacer = Pacer::new(Duration::from_millis(10));
    node.tick(pacer.now()).unwrap();
    let mut leech_deaths = Vec::new();
    // Quanta won by each scientist after the last leech died.
    let mut won = [0u64; 4];
    while pacer.elapsed() < Duration::from_secs(60) {
        let due = pacer.wait();
        let r = node.tick(due.now).unwrap();
        for d in &r.deaths {
            assert!(!scientists.contains(&d.agent), "a scientist died: {d:?}");
            leech_deaths.push(pacer.elapsed());
        }
        if leech_deaths.len() == leeches.len() && pacer.elapsed() > Duration::from_secs(15) {
            for w in &r.winners {
                if let Some(i) = scientists.iter().position(|s| s == w) {
                    won[i] += 1;
                }
            }
        }
    }
    let m = node.market();
    assert_eq!(leech_deaths.len(), 2, "leeches alive after a minute");
    assert!(
        leech_deaths.iter().all(|t| *t < Duration::from_secs(10)),
        "{leech_deaths:?}"
    );
    let total: u64 = won.iter().sum();
    assert!(total > 3_000, "slots sold to scientists: {total}");
    for (i, &s) in scientists.iter().enumerate() {
        assert!(matches!(m.life(s), Some(Life::Alive)), "scientist-{i} died");
        let share = won[i] as f64 / total as f64;
        assert!(
            (0.20..=0.30).contains(&share),
            "scientist-{i} got {share:.3} of the slot-time: {won:?}"
        );
        let funded = if i == 0 { 100 } else { 10 };
        let balance = m.balance(s).unwrap();
        assert!(
            balance > Tokens::joules(funded),
            "scientist-{i} did not earn: {balance} from {funded} JOULE"
        );
    }
    assert!(node.freeze_all().is_empty());
    drop(node);
    let r = maxwell_ledger::verify(&dir.join("ledger.db")).unwrap();
    assert!(r.ok(), "{:?}", r.first_bad);
    let _ = std::fs::remove_dir_all(&dir);
}
