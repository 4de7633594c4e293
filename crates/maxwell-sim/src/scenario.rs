//! Scenarios: TOML descriptions of a simulated machine, its market and its agents.
//!
//! Every quantity carries its unit (`"15W"`, `"10ms"`, `"0.5 JOULE"`, `"64MiB"`); unknown keys
//! are refused, and every error names the file, the line and what to write instead.

use serde::{Deserialize, Serialize};

use maxwell_core::market::MarketConfig;
use maxwell_core::pricing::PidConfig;
use maxwell_core::rules::PPM;
use maxwell_core::thermal::RcParams;
use maxwell_core::units::serde_str;
use maxwell_core::{Bytes, GridPrice, MilliCelsius, MilliWatts, Nanos, Tokens};

/// The scenario `maxwell simulate` and `maxwell demo` run when given none.
pub const DEFAULT_SCENARIO: &str = include_str!("../scenarios/default.toml");

/// A whole scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name.
    pub name: String,
    /// One line on what it shows.
    #[serde(default)]
    pub description: String,
    /// Simulated time to run.
    #[serde(with = "serde_str")]
    pub duration: Nanos,
    /// Market rules.
    pub market: MarketSection,
    /// The simulated machine.
    pub machine: MachineSection,
    /// The useful work on offer.
    #[serde(default)]
    pub work: WorkSection,
    /// Groups of agents.
    pub agents: Vec<AgentGroup>,
}

/// `[market]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarketSection {
    /// Tick (quantum) length.
    #[serde(with = "serde_str")]
    pub tick: Nanos,
    /// CPU slots for sale.
    pub slots: u32,
    /// Power one busy slot adds.
    #[serde(with = "serde_str")]
    pub slot_power: MilliWatts,
    /// Tokens per joule.
    #[serde(with = "serde_str")]
    pub grid_price: Tokens,
    /// PID switch-on temperature.
    #[serde(with = "serde_str")]
    pub switch_on: MilliCelsius,
    /// PID control temperature.
    #[serde(with = "serde_str")]
    pub control: MilliCelsius,
    /// Memory rent as power per GiB.
    #[serde(with = "serde_str")]
    pub rent_per_gib: MilliWatts,
    /// Bill the machine's idle energy to the living agents by resident memory (default true).
    #[serde(default = "yes")]
    pub idle_rent: bool,
    /// Price granularity of the book (default: the market's, 0.015 JOULE).
    #[serde(with = "serde_str", default = "default_bid_tick")]
    pub bid_tick: Tokens,
    /// Landauer inefficiency factor.
    pub landauer_inefficiency: f64,
    /// Bounty per verified prime.
    #[serde(with = "serde_str")]
    pub bounty_per_prime: Tokens,
    /// Probability that a claim is audited.
    pub audit_probability: f64,
    /// Grace between insolvency and death.
    #[serde(with = "serde_str")]
    pub grace: Nanos,
    /// Money the user puts in the bounty pool at the start.
    #[serde(with = "serde_str")]
    pub bounty_pool: Tokens,
}

/// `[machine]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineSection {
    /// Power with every core idle.
    #[serde(with = "serde_str")]
    pub idle_power: MilliWatts,
    /// Ambient temperature.
    #[serde(with = "serde_str")]
    pub ambient: MilliCelsius,
    /// Die temperature at the start.
    #[serde(with = "serde_str")]
    pub initial: MilliCelsius,
    /// Die-to-ambient thermal resistance, K/W.
    pub thermal_resistance_k_per_w: f64,
    /// Thermal time constant.
    #[serde(with = "serde_str")]
    pub time_constant: Nanos,
    /// At this temperature the hardware halves its clock (PROCHOT), market or not.
    #[serde(with = "serde_str", default = "default_tj_max")]
    pub tj_max: MilliCelsius,
}

fn default_bid_tick() -> Tokens {
    MarketConfig::default().bid_tick
}

fn default_tj_max() -> MilliCelsius {
    MilliCelsius(100_000)
}

/// `[work]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkSection {
    /// First number of the shared work queue.
    pub first: u64,
    /// Numbers per segment at speed 1.0.
    pub segment: u64,
}

impl Default for WorkSection {
    fn default() -> Self {
        WorkSection {
            first: 1_000_000,
            segment: 1024,
        }
    }
}

/// How a simulated agent behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Does useful work (counts primes), bids its value, claims honestly.
    Scientist,
    /// Bids greedily, burns cycles, churns memory, does nothing useful.
    Leech,
    /// Idles holding a lot of memory.
    Squatter,
    /// Claims work it never did.
    Liar,
}

impl Profile {
    /// The profile's name as in scenario files.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Scientist => "scientist",
            Profile::Leech => "leech",
            Profile::Squatter => "squatter",
            Profile::Liar => "liar",
        }
    }
}

/// `[[agents]]`: `count` agents of one profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentGroup {
    /// Base name; with `count > 1` agents are named `name-1`, `name-2`, ...
    pub name: String,
    /// Behaviour.
    pub profile: Profile,
    /// How many.
    #[serde(default = "one")]
    pub count: u32,
    /// Starting funds of each.
    #[serde(with = "serde_str")]
    pub funds: Tokens,
    /// Resident memory.
    #[serde(with = "serde_str")]
    pub memory: Bytes,
    /// Fixed bid. Leeches bid it give or take 20% (drawn from the seed); others bid their value
    /// when this is absent.
    #[serde(default, with = "opt_str")]
    pub bid: Option<Tokens>,
    /// Owner's cap on the bid. Default: no cap.
    #[serde(default, with = "opt_str")]
    pub max_bid: Option<Tokens>,
    /// Bytes allocated and freed per quantum run (leech). Default: the profile's.
    #[serde(default, with = "opt_str")]
    pub churn: Option<Bytes>,
    /// Power drawn per busy slot relative to `slot_power`. Default: scientist 1.0, leech 1.4,
    /// liar 0.1 (it sleeps through its slots), squatter 0.
    #[serde(default)]
    pub activity: Option<f64>,
    /// Liar: claimed primes relative to what a scientist would find. Default 1.5.
    #[serde(default)]
    pub overclaim: Option<f64>,
    /// Scientist: speed relative to `work.segment`; default: drawn from 0.8..1.2 by the seed.
    #[serde(default)]
    pub speed: Option<f64>,
}

fn one() -> u32 {
    1
}

/// Serde for optional quantities with units.
mod opt_str {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        let s = String::deserialize(d)?;
        s.parse().map(Some).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S, T>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        T: Display,
    {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }
}

/// Why a scenario was refused.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// TOML syntax, a wrong key or a bad value (the message has the line and column).
    #[error("{origin}: {message}")]
    Parse {
        /// File name or "built-in scenario".
        origin: String,
        /// What toml said, with line and column.
        message: String,
    },
    /// A value parsed but makes no sense.
    #[error("{origin}: {message}")]
    Invalid {
        /// File name or "built-in scenario".
        origin: String,
        /// What is wrong and what to write instead.
        message: String,
    },
}

impl Scenario {
    /// Parses and validates a scenario. `origin` names the file in error messages.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            origin: origin.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        scenario
            .validate()
            .map_err(|message| ScenarioError::Invalid {
                origin: origin.to_owned(),
                message,
            })?;
        Ok(scenario)
    }

    /// The built-in Scientist-vs-Leech scenario.
    pub fn default_scenario() -> Scenario {
        // The embedded file is checked by a test, so this cannot fail in a released build.
        Scenario::parse(DEFAULT_SCENARIO, "built-in scenario")
            .expect("the built-in scenario is valid (checked by tests)")
    }

    fn validate(&self) -> Result<(), String> {
        let m = &self.market;
        if self.duration.0 < m.tick.0 {
            return Err("duration must be at least one tick (e.g. duration = \"40s\")".into());
        }
        if self.duration.0 / m.tick.0.max(1) > 100_000_000 {
            return Err("duration / tick is over 100 million ticks; shorten the run".into());
        }
        if !(m.audit_probability > 0.0 && m.audit_probability <= 1.0) {
            return Err(format!(
                "market.audit_probability must be in (0, 1], got {} (0.01 is 1%)",
                m.audit_probability
            ));
        }
        let mc = &self.machine;
        if !(mc.thermal_resistance_k_per_w.is_finite() && mc.thermal_resistance_k_per_w > 0.0) {
            return Err("machine.thermal_resistance_k_per_w must be above zero (e.g. 1.2)".into());
        }
        if self.work.segment == 0 || self.work.segment > 1 << 20 {
            return Err("work.segment must be between 1 and 1048576 numbers".into());
        }
        if self.agents.is_empty() {
            return Err("no [[agents]]: add at least one group".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for g in &self.agents {
            if g.count == 0 || g.count > 100_000 {
                return Err(format!(
                    "agents {:?}: count must be between 1 and 100000",
                    g.name
                ));
            }
            for name in group_names(g) {
                if !names.insert(name.clone()) {
                    return Err(format!(
                        "two agents are named {name:?}; give each [[agents]] group its own name"
                    ));
                }
            }
            for (what, v) in [
                ("activity", g.activity),
                ("overclaim", g.overclaim),
                ("speed", g.speed),
            ] {
                if let Some(v) = v
                    && !(v.is_finite() && (0.0..=100.0).contains(&v))
                {
                    return Err(format!(
                        "agents {:?}: {what} must be between 0 and 100, got {v}",
                        g.name
                    ));
                }
            }
        }
        self.market_config(0)
            .validate()
            .map_err(|e| format!("market: {e}"))?;
        Ok(())
    }

    /// The core market configuration this scenario describes.
    pub fn market_config(&self, seed: u64) -> MarketConfig {
        let m = &self.market;
        let base = MarketConfig::default();
        let rc = self.rc_params();
        // The controller may sustain what keeps the die at the control temperature, less what
        // the idle machine already draws.
        let sustainable = MilliWatts(
            rc.sustainable_power(m.control)
                .0
                .saturating_sub(self.machine.idle_power.0),
        );
        let power_max = MilliWatts(m.slot_power.0.saturating_mul(u64::from(m.slots)));
        let sustainable = sustainable.min(power_max);
        MarketConfig {
            quantum: m.tick,
            slots_max: m.slots,
            slot_power: m.slot_power,
            grid_price: GridPrice(m.grid_price),
            pid: PidConfig::estimated(
                m.switch_on,
                m.control,
                sustainable,
                power_max.max(MilliWatts(1)),
            ),
            rent_per_gib: m.rent_per_gib,
            idle_rent: m.idle_rent,
            bid_tick: m.bid_tick,
            insolvent_below_reserve: true,
            trial_quanta: base.trial_quanta,
            turn_quanta: base.turn_quanta,
            band_pct: base.band_pct,
            retrial_ticks: base.retrial_ticks,
            landauer_inefficiency: m.landauer_inefficiency,
            bounty_per_unit: m.bounty_per_prime,
            audit_ppm: ((m.audit_probability * f64::from(PPM)).round() as u32).clamp(1, PPM),
            grace_ticks: u32::try_from(m.grace.0 / m.tick.0.max(1)).unwrap_or(u32::MAX),
            // The story is told tick by tick: rent is posted as it accrues.
            rent_settle_ticks: 1,
            max_pending_audits: 65_536,
            seed,
        }
    }

    /// The thermal model of the machine.
    pub fn rc_params(&self) -> RcParams {
        RcParams {
            r_k_per_w: self.machine.thermal_resistance_k_per_w,
            tau_s: self.machine.time_constant.as_secs_f64(),
            ambient: self.machine.ambient,
        }
    }
}

/// The agent names a group expands to.
pub fn group_names(g: &AgentGroup) -> Vec<String> {
    if g.count == 1 {
        vec![g.name.clone()]
    } else {
        (1..=g.count).map(|i| format!("{}-{i}", g.name)).collect()
    }
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_scenario_is_valid() {
        let s = Scenario::default_scenario();
        assert_eq!(s.agents.len(), 4);
        let cfg = s.market_config(1);
        cfg.validate().unwrap();
        assert_eq!(cfg.grace_ticks, 50);
        assert_eq!(cfg.audit_ppm, 10_000);
    }

    #[track_caller]
    fn check_error(edit: (&str, &str), want: &[&str]) {
        let text = DEFAULT_SCENARIO.replacen(edit.0, edit.1, 1);
        assert_ne!(text, DEFAULT_SCENARIO, "edit {edit:?} did not apply");
        let err = Scenario::parse(&text, "my.toml").unwrap_err().to_string();
        for w in want {
            assert!(err.contains(w), "{err:?} lacks {w:?}");
        }
    }

    #[test]
    fn bad_scenarios_say_where_and_what_to_write() {
        check_error(("slots = 2", "slotz = 2"), &["my.toml", "line", "slotz"]);
        check_error(
            ("slot_power = \"15W\"", "slot_power = \"15\""),
            &["unit is missing", "15W"],
        );
        check_error(
            ("audit_probability = 0.01", "audit_probability = 5"),
            &["0.01 is 1%"],
        );
        check_error(
            ("profile = \"leech\"", "profile = \"vampire\""),
            &["vampire", "scientist"],
        );
        check_error(
            ("name = \"leech\"", "name = \"scientist\""),
            &["scientist-1", "own name"],
        );
        check_error(("control = \"80C\"", "control = \"50C\""), &["switch_on"]);
    }
}
