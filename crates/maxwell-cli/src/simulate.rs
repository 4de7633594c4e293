//! `maxwell simulate`: a scenario on the simulator, optionally calibrated against the real
//! WASM scientist on this machine first.

use std::path::Path;
use std::time::Duration;

use maxwell_core::{Bytes, MarketConfig, Tokens};
use maxwell_node::pacer::Pacer;
use maxwell_node::{Node, defaults};
use maxwell_physics::{ModelParams, Physics};
use maxwell_sandbox::wasm::WasmSandbox;
use maxwell_sandbox::{AgentSpec, Limits, Program};
use maxwell_sim::{Scenario, Summary, render, run};

use crate::{Exit, write_out};

fn load(path: Option<&Path>) -> anyhow::Result<Scenario> {
    match path {
        None => Ok(Scenario::default_scenario()),
        Some(p) => {
            let text = maxwell_daemon::files::read_text(p, "scenario").map_err(|e| {
                anyhow::anyhow!("{e}; `maxwell simulate --print-scenario` shows one to start from")
            })?;
            Ok(Scenario::parse(&text, &p.display().to_string())?)
        }
    }
}

fn emit(summary: &Summary, json: bool) -> anyhow::Result<Exit> {
    if json {
        let mut text = serde_json::to_string_pretty(summary)?;
        text.push('\n');
        write_out(&text)?;
    } else {
        write_out(&render(summary, summary.tick_ms))?;
    }
    Ok(
        if summary.conservation_ok && summary.violations.is_empty() {
            Exit::Success
        } else {
            Exit::Failed
        },
    )
}

/// What one calibration measured.
pub(crate) struct Calibration {
    /// Units of work (1,024 numbers) per quantum won.
    pub units_per_quantum: u64,
    /// Quanta won over the measurement.
    pub quanta: u64,
}

/// Measures what the built-in WASM scientist does per quantum it wins on this machine: two of
/// them (one per slot of a two-core machine, as in the experiment) with wallets that never
/// bind, under the daemon's own node and pacer, for `duration`. Units claimed over quanta won.
pub(crate) fn calibrate(duration: Duration) -> anyhow::Result<Calibration> {
    let physics = Physics::open(Path::new("/"), ModelParams::default());
    let config = maxwell_node::tuned_for(MarketConfig::default(), &physics);
    let mut node = Node::new(config, physics, Box::new(WasmSandbox::new()?), None)?;
    let mut ids = Vec::new();
    for i in 0..2 {
        let spec = AgentSpec {
            name: format!("calibration-{i}"),
            program: Program::Wasm {
                module: maxwell_agents::SCIENTIST_WAT.as_bytes().to_vec(),
            },
            limits: Limits {
                memory_max: Bytes(64 << 20),
                pids_max: 1,
                ..Limits::default()
            },
        };
        ids.push(node.spawn(
            &spec,
            Tokens::joules(1_000_000),
            defaults::MAX_BID,
            defaults::OPENING_BID,
        )?);
    }
    node.fund_bounty_pool(defaults::BOUNTY_POOL);
    let mut pacer = Pacer::new(Duration::from_millis(10));
    node.tick(pacer.now())?;
    while pacer.elapsed() < duration {
        let due = pacer.wait();
        node.tick(due.now)?;
    }
    let (mut units, mut quanta) = (0u64, 0u64);
    for id in &ids {
        if let Some(s) = node.market().stats(*id) {
            units += s.work_claimed;
            quanta += s.quanta_won;
        }
    }
    let failures = node.freeze_all();
    if let Some((name, e)) = failures.first() {
        anyhow::bail!("calibration: freezing agent {name} failed: {e}");
    }
    anyhow::ensure!(
        quanta > 0,
        "calibration: the scientists won no quantum in {} s (is the machine overheating?)",
        duration.as_secs()
    );
    Ok(Calibration {
        units_per_quantum: (units / quanta).max(1),
        quanta,
    })
}

/// Runs a scenario and prints the story or the JSON summary. With `calibrate`, the scientists'
/// work per quantum is first measured on this machine (`calibrate`) and replaces the scenario's.
pub(crate) fn simulate(
    seed: u64,
    scenario: Option<&Path>,
    json: bool,
    calibrate_for: Option<Duration>,
) -> anyhow::Result<Exit> {
    let mut scenario = load(scenario)?;
    if let Some(d) = calibrate_for {
        eprintln!(
            "calibrating: two built-in WASM scientists under the daemon's node for {} s ...",
            d.as_secs()
        );
        let c = calibrate(d)?;
        eprintln!(
            "calibrated: {} units of work per quantum won (over {} quanta; the scenario said {}; \
             this is a {} build)",
            c.units_per_quantum,
            c.quanta,
            scenario.work.units_per_quantum,
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        scenario.work.units_per_quantum = c.units_per_quantum;
    }
    emit(&run(&scenario, seed), json)
}
