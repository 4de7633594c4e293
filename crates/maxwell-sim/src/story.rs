//! The demo's story, read off the trace of a run (never scripted): the leeches outbid the
//! scientists, the price climbs with the temperature, the leeches go insolvent and die, the
//! heat stays within the budget, and the scientists have the machine, at the price their own measured
//! value sets. A phase that did not happen is reported as absent.

use std::fmt::Write as _;

use serde::Serialize;

use crate::scenario::Profile;
use crate::sim::{DeathEvent, Summary, Trace};

/// Phase 1: a leech wins while a scientist with a standing bid loses.
#[derive(Debug, Clone, Serialize)]
pub struct Outbid {
    /// First tick it happened.
    pub tick: u64,
    /// A winning leech.
    pub leech: String,
    /// A losing scientist.
    pub scientist: String,
    /// The clearing price that tick, micro-JOULE.
    pub price: u64,
}

/// Phase 2: the machine heats while the leeches live.
#[derive(Debug, Clone, Serialize)]
pub struct Heating {
    /// Temperature at the first tick, C.
    pub start_c: f64,
    /// Hottest while a leech lived, C.
    pub peak_c: f64,
    /// Tick of the peak.
    pub peak_tick: u64,
    /// Fewest slots offered while a leech lived.
    pub supply_min: u32,
    /// Highest reserve while a leech lived, micro-JOULE.
    pub reserve_peak: u64,
    /// Highest clearing price while a leech lived, micro-JOULE.
    pub price_peak: u64,
}

/// Phase 4: the machine runs cooler once the leeches are gone.
#[derive(Debug, Clone, Serialize)]
pub struct Cooling {
    /// Hottest while a leech lived, C.
    pub leech_era_peak_c: f64,
    /// Mean temperature from the last leech's death to the end, C.
    pub after_mean_c: f64,
    /// Hottest from the last leech's death to the end, C.
    pub after_max_c: f64,
}

/// Phase 5: a scientist wins again after the last leech died.
#[derive(Debug, Clone, Serialize)]
pub struct Resume {
    /// First tick a scientist won after the last leech's death.
    pub tick: u64,
    /// Who.
    pub scientist: String,
    /// The price then, micro-JOULE.
    pub price: u64,
    /// Mean clearing price while the leeches lived (ticks with winners), micro-JOULE.
    pub leech_era_mean_price: u64,
    /// Mean clearing price from the resumption to the end (ticks with winners), micro-JOULE.
    pub after_mean_price: u64,
}

/// The phases of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Phases {
    /// 1. The leeches outbid the scientists.
    pub leech_outbids: Option<Outbid>,
    /// 2. The price climbs with the temperature.
    pub heating: Option<Heating>,
    /// 3. Deaths, in order (leeches and everyone else).
    pub deaths: Vec<DeathEvent>,
    /// Tick the last leech died, if all did.
    pub last_leech_death_tick: Option<u64>,
    /// 4. The heat stays within the budget (useful work now spends it).
    pub cooling: Option<Cooling>,
    /// 5. The scientists have the machine, at the price their measured value sets.
    pub scientist_resumes: Option<Resume>,
}

fn mean(prices: impl Iterator<Item = u64>) -> u64 {
    let (sum, n) = prices.fold((0u128, 0u128), |(s, n), p| (s + u128::from(p), n + 1));
    sum.checked_div(n).map_or(0, |m| m as u64)
}

pub(crate) fn phases(trace: &Trace) -> Phases {
    let profile = |i: usize| trace.agents[i].profile;
    let is = |p: Profile| move |i: &usize| trace.agents[*i].profile == p;
    let n_leeches = trace
        .agents
        .iter()
        .filter(|a| a.profile == Profile::Leech)
        .count();
    let leech_deaths: Vec<&DeathEvent> = trace
        .deaths
        .iter()
        .filter(|d| d.profile == Profile::Leech.name())
        .collect();
    let last_leech_death_tick = (n_leeches > 0 && leech_deaths.len() == n_leeches)
        .then(|| leech_deaths.iter().map(|d| d.tick).max().unwrap_or(0));
    let leech_era_end = last_leech_death_tick.unwrap_or(u64::MAX);

    let leech_outbids = trace.records.iter().find_map(|r| {
        let leech = r.winners.iter().copied().find(is(Profile::Leech))?;
        let scientist = (0..trace.agents.len())
            .filter(is(Profile::Scientist))
            .find(|i| !r.winners.contains(i) && r.tick < leech_era_end)?;
        Some(Outbid {
            tick: r.tick,
            leech: trace.agents[leech].name.clone(),
            scientist: trace.agents[scientist].name.clone(),
            price: r.price.0,
        })
    });

    let era: Vec<_> = trace
        .records
        .iter()
        .filter(|r| r.tick <= leech_era_end)
        .collect();
    let heating = (n_leeches > 0 && !era.is_empty()).then(|| {
        let peak = era
            .iter()
            .max_by_key(|r| (r.temperature, std::cmp::Reverse(r.tick)))
            .copied();
        Heating {
            start_c: era[0].temperature.as_celsius_f64(),
            peak_c: peak.map_or(0.0, |r| r.temperature.as_celsius_f64()),
            peak_tick: peak.map_or(0, |r| r.tick),
            supply_min: era.iter().map(|r| r.supply).min().unwrap_or(0),
            reserve_peak: era.iter().map(|r| r.reserve.0).max().unwrap_or(0),
            price_peak: era
                .iter()
                .filter(|r| !r.winners.is_empty())
                .map(|r| r.price.0)
                .max()
                .unwrap_or(0),
        }
    });

    let after: Vec<_> = trace
        .records
        .iter()
        .filter(|r| last_leech_death_tick.is_some_and(|t| r.tick >= t))
        .collect();
    let cooling = (!after.is_empty()).then(|| {
        let temps = || after.iter().map(|r| r.temperature.as_celsius_f64());
        Cooling {
            leech_era_peak_c: heating.as_ref().map_or(0.0, |h| h.peak_c),
            after_mean_c: temps().sum::<f64>() / after.len() as f64,
            after_max_c: temps().fold(f64::MIN, f64::max),
        }
    });

    let scientist_resumes = after.iter().find_map(|r| {
        let s = r
            .winners
            .iter()
            .copied()
            .find(|&i| profile(i) == Profile::Scientist)?;
        Some(Resume {
            tick: r.tick,
            scientist: trace.agents[s].name.clone(),
            price: r.price.0,
            leech_era_mean_price: mean(
                era.iter()
                    .filter(|r| !r.winners.is_empty())
                    .map(|r| r.price.0),
            ),
            after_mean_price: mean(
                after
                    .iter()
                    .filter(|x| x.tick >= r.tick && !x.winners.is_empty())
                    .map(|x| x.price.0),
            ),
        })
    });

    Phases {
        leech_outbids,
        heating,
        deaths: trace.deaths.clone(),
        last_leech_death_tick,
        cooling,
        scientist_resumes,
    }
}

fn joule(micro: u64) -> String {
    maxwell_core::Tokens(micro).to_string()
}

/// The human-readable report of a run.
pub fn render(summary: &Summary, tick_ms: f64) -> String {
    let at = |tick: u64| format!("tick {tick} ({:.2} s)", tick as f64 * tick_ms / 1e3);
    let mut o = String::new();
    let p = &summary.phases;
    let _ = writeln!(
        o,
        "Maxwell simulation: scenario {:?}, seed {}, {} ticks of {} ms.",
        summary.scenario, summary.seed, summary.ticks, summary.tick_ms
    );
    let _ = writeln!(
        o,
        "SIMULATED: no agent really runs; the machine is a model ({}).\n",
        summary.energy_source
    );

    let _ = write!(o, "1. The leeches outbid the scientists. ");
    match &p.leech_outbids {
        Some(x) => {
            let _ = writeln!(
                o,
                "From {}: {} wins a slot while {} waits; clearing price {}.",
                at(x.tick),
                x.leech,
                x.scientist,
                joule(x.price)
            );
        }
        None => {
            let _ = writeln!(o, "Did not happen in this run.");
        }
    }
    let _ = write!(o, "2. The price climbs with the temperature. ");
    match &p.heating {
        Some(h) => {
            let _ = writeln!(
                o,
                "The die went from {:.1} C to {:.1} C at {}; supply fell to {} slot(s), the \
                 reserve rose to {} and the clearing price peaked at {}.",
                h.start_c,
                h.peak_c,
                at(h.peak_tick),
                h.supply_min,
                joule(h.reserve_peak),
                joule(h.price_peak)
            );
        }
        None => {
            let _ = writeln!(o, "No leeches in this scenario.");
        }
    }
    let _ = writeln!(o, "3. The leeches go insolvent and die.");
    let leech_deaths: Vec<_> = p.deaths.iter().filter(|d| d.profile == "leech").collect();
    if leech_deaths.is_empty() {
        let _ = writeln!(o, "   No leech died in this run.");
    }
    for d in &leech_deaths {
        let _ = writeln!(
            o,
            "   {} died at {} (insolvent from tick {}): {}.",
            d.agent,
            at(d.tick),
            d.dying_since_tick,
            d.cause
        );
    }
    let _ = write!(
        o,
        "4. The heat stays within the budget, now spent on useful work. "
    );
    match &p.cooling {
        Some(c) => {
            let _ = writeln!(
                o,
                "The die peaked at {:.1} C while leeches lived; after the last one died it \
                 averaged {:.1} C and never passed {:.1} C.",
                c.leech_era_peak_c, c.after_mean_c, c.after_max_c
            );
        }
        None => {
            let _ = writeln!(o, "Not every leech died, so there is no after.");
        }
    }
    let _ = write!(
        o,
        "5. The scientists have the machine, at the price their own measured value sets. "
    );
    match &p.scientist_resumes {
        Some(r) => {
            let _ = writeln!(
                o,
                "{} runs again at {} for {}; the mean clearing price was {} while the leeches \
                 lived and {} afterwards.",
                r.scientist,
                at(r.tick),
                joule(r.price),
                joule(r.leech_era_mean_price),
                joule(r.after_mean_price)
            );
        }
        None => {
            let _ = writeln!(o, "No scientist won a slot after the last leech died.");
        }
    }
    let others: Vec<_> = p.deaths.iter().filter(|d| d.profile != "leech").collect();
    if !others.is_empty() {
        let _ = writeln!(o, "Other deaths:");
        for d in others {
            let _ = writeln!(
                o,
                "   {} ({}) died at {}: {}.",
                d.agent,
                d.profile,
                at(d.tick),
                d.cause
            );
        }
    }

    let _ = writeln!(
        o,
        "\n{:<12} {:<9} {:<6} {:>7} {:>8} {:>7} {:>12} {:>12} {:>11} {:>11} {:>11}",
        "agent",
        "profile",
        "state",
        "died",
        "work",
        "claimed",
        "balance",
        "slots",
        "rent",
        "landauer",
        "fines"
    );
    for a in &summary.agents {
        let _ = writeln!(
            o,
            "{:<12} {:<9} {:<6} {:>7} {:>8} {:>7} {:>12.3} {:>12.3} {:>11.3} {:>11.3} {:>11.3}",
            a.name,
            a.profile,
            if a.alive { "alive" } else { "dead" },
            a.died_at_tick.map_or("-".to_owned(), |t| t.to_string()),
            a.work,
            a.claimed,
            a.balance as f64 / 1e6,
            a.spent.slots as f64 / 1e6,
            a.spent.rent as f64 / 1e6,
            a.spent.landauer as f64 / 1e6,
            a.spent.fines as f64 / 1e6,
        );
    }
    let _ = writeln!(o, "(money in JOULE; work in units of 1,024 numbers sieved)");
    let _ = writeln!(
        o,
        "\nUseful work per joule: maxwell {:.0} units/J, fair-share baseline {:.0} units/J: \
         {:.2}x. (Simulated; `maxwell experiment` measures real agents.)",
        summary.maxwell.efficiency, summary.baseline.efficiency, summary.ratio_vs_baseline
    );
    let _ = writeln!(
        o,
        "Temperature: maxwell peaked at {:.1} C and ended at {:.1} C; the baseline peaked at {:.1} C.",
        summary.maxwell.max_temperature_c,
        summary.maxwell.final_temperature_c,
        summary.baseline.max_temperature_c
    );
    let _ = writeln!(
        o,
        "Books: {} minted, {} transfers, conservation {}; ledger digest {}.",
        joule(summary.books.minted),
        summary.books.transfers,
        if summary.conservation_ok {
            "held after every tick"
        } else {
            "VIOLATED"
        },
        summary.ledger_digest
    );
    for v in &summary.violations {
        let _ = writeln!(o, "VIOLATION: {v}");
    }
    o
}
