//! `maxwell simulate` and, until the real experiment exists, `maxwell demo`.

use std::path::Path;

use anyhow::Context;

use maxwell_sim::{Scenario, Summary, render, run};

use crate::{Exit, write_out};

fn load(path: Option<&Path>) -> anyhow::Result<Scenario> {
    match path {
        None => Ok(Scenario::default_scenario()),
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| {
                format!(
                    "cannot read scenario {}; `maxwell simulate --print-scenario` shows one to start from",
                    p.display()
                )
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

/// Runs a scenario and prints the story or the JSON summary.
pub(crate) fn simulate(seed: u64, scenario: Option<&Path>, json: bool) -> anyhow::Result<Exit> {
    let scenario = load(scenario)?;
    emit(&run(&scenario, seed), json)
}
