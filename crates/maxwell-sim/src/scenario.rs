//! Scenarios: TOML descriptions of a simulated machine, its market and its agents.
//!
//! Every quantity carries its unit (`"15W"`, `"10ms"`, `"0.5 JOULE"`, `"64MiB"`); unknown keys
//! are refused, and every error names the file, the line and what to write instead.

use serde::{Deserialize, Serialize};

use maxwell_core::defaults;
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
    /// Market rules (every key defaults to the daemon's).
    #[serde(default)]
    pub market: MarketSection,
    /// The simulated machine (every key defaults to the daemon's modelled machine).
    #[serde(default)]
    pub machine: MachineSection,
    /// The useful work on offer.
    #[serde(default)]
    pub work: WorkSection,
    /// Groups of agents.
    pub agents: Vec<AgentGroup>,
}

/// `[market]`. Every key defaults to what `maxwell daemon` uses
/// ([`MarketConfig::default`] and [`maxwell_core::defaults`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
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
    /// Bill the machine's idle energy to the living agents by resident memory (default false,
    /// as the daemon: idle energy is the house's).
    pub idle_rent: bool,
    /// Price granularity of the book.
    #[serde(with = "serde_str")]
    pub bid_tick: Tokens,
    /// Landauer inefficiency factor.
    pub landauer_inefficiency: f64,
    /// The most a verified unit of work earns (1,024 numbers sieved near 1e9).
    #[serde(with = "serde_str")]
    pub bounty_per_unit: Tokens,
    /// The house's income goes back to the bounty pool.
    pub recycle_income: bool,
    /// The operator's grant to useful work, as power.
    #[serde(with = "serde_str")]
    pub bounty_grant: MilliWatts,
    /// The pool pays out at most its income plus its balance over this horizon.
    #[serde(with = "serde_str")]
    pub bounty_horizon: Nanos,
    /// Probability that a claim is audited.
    pub audit_probability: f64,
    /// Grace between insolvency and death.
    #[serde(with = "serde_str")]
    pub grace: Nanos,
    /// Money the user puts in the bounty pool at the start.
    #[serde(with = "serde_str")]
    pub bounty_pool: Tokens,
    /// What the owner bids for each new agent until it bids for itself.
    #[serde(with = "serde_str")]
    pub opening_bid: Tokens,
    /// The owner's cap on every agent's bid (a group's `max_bid` overrides it).
    #[serde(with = "serde_str")]
    pub max_bid: Tokens,
}

impl Default for MarketSection {
    fn default() -> Self {
        let c = MarketConfig::default();
        MarketSection {
            tick: c.quantum,
            slots: c.slots_max,
            slot_power: c.slot_power,
            grid_price: c.grid_price.0,
            switch_on: c.pid.temp_switch_on,
            control: c.pid.temp_control,
            rent_per_gib: c.rent_per_gib,
            idle_rent: c.idle_rent,
            bid_tick: c.bid_tick,
            landauer_inefficiency: c.landauer_inefficiency,
            bounty_per_unit: c.bounty_per_unit,
            recycle_income: c.recycle_income,
            bounty_grant: c.bounty_grant,
            bounty_horizon: Nanos(c.quantum.0.saturating_mul(c.bounty_horizon_ticks)),
            audit_probability: f64::from(c.audit_ppm) / f64::from(PPM),
            grace: Nanos(c.quantum.0 * u64::from(c.grace_ticks)),
            bounty_pool: defaults::BOUNTY_POOL,
            opening_bid: defaults::OPENING_BID,
            max_bid: defaults::MAX_BID,
        }
    }
}

/// `[machine]`. Every key defaults to the daemon's modelled machine (`maxwell-physics`'s
/// `ModelParams::default`: 10 W idle, 1.5 K/W, 1 s, 25 C; a test checks they agree).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MachineSection {
    /// Power with every core idle.
    #[serde(with = "serde_str")]
    pub idle_power: MilliWatts,
    /// Ambient temperature.
    #[serde(with = "serde_str")]
    pub ambient: MilliCelsius,
    /// Die temperature at the start (default: the idle machine's steady state, as the daemon's
    /// model starts).
    #[serde(default, with = "opt_str")]
    pub initial: Option<MilliCelsius>,
    /// Die-to-ambient thermal resistance, K/W.
    pub thermal_resistance_k_per_w: f64,
    /// Thermal time constant.
    #[serde(with = "serde_str")]
    pub time_constant: Nanos,
    /// At this temperature the hardware halves its clock (PROCHOT), market or not.
    #[serde(with = "serde_str")]
    pub tj_max: MilliCelsius,
}

impl Default for MachineSection {
    fn default() -> Self {
        MachineSection {
            idle_power: MilliWatts(10_000),
            ambient: MilliCelsius(25_000),
            initial: None,
            thermal_resistance_k_per_w: 1.5,
            time_constant: Nanos::from_millis(1_000),
            tj_max: MilliCelsius(100_000),
        }
    }
}

/// What the built-in WASM scientist sieves per quantum won, in units of 1,024 numbers, in a
/// release build on the 2-core VM this project is measured on: 16.23e9 numbers in 6,689 quanta
/// won over a 40 s `maxwell experiment` arm, 2,370 units. `maxwell simulate --calibrate`
/// measures it on the machine at hand instead.
pub const CALIBRATED_UNITS_PER_QUANTUM: u64 = 2_370;

/// `[work]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkSection {
    /// Units of work (1,024 numbers sieved) a scientist does per quantum it wins at speed 1.0.
    pub units_per_quantum: u64,
}

impl Default for WorkSection {
    fn default() -> Self {
        WorkSection {
            units_per_quantum: CALIBRATED_UNITS_PER_QUANTUM,
        }
    }
}

/// How a simulated agent behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Does useful work (sieves its leases), bids its value, claims honestly.
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
    /// Fixed bid, give or take 20% per agent (drawn from the seed). Without it each profile
    /// bids as the built-in agent does: the scientist its measured value per quantum (the real
    /// agents' `ValueMeter`), the leech nine tenths of its balance, the liar a tenth.
    #[serde(default, with = "opt_str")]
    pub bid: Option<Tokens>,
    /// Owner's cap on the bid. Default: the market's `max_bid`.
    #[serde(default, with = "opt_str")]
    pub max_bid: Option<Tokens>,
    /// Bytes erased per quantum run. Default: the profile's (leech 4 MiB, others none).
    #[serde(default, with = "opt_str")]
    pub churn: Option<Bytes>,
    /// Power drawn per busy slot relative to `slot_power`. Default: 1.0 for the scientist and
    /// the leech (the daemon's model counts CPU time only), 0.1 for the liar (it sleeps through
    /// its slots), 0 for the squatter.
    #[serde(default)]
    pub activity: Option<f64>,
    /// Scientist: speed relative to `work.units_per_quantum`. Default 1.0.
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
        if self.work.units_per_quantum == 0 || self.work.units_per_quantum > 1 << 30 {
            return Err(
                "work.units_per_quantum must be between 1 and 1073741824 (the built-in \
                 scientist does about 2370 in a release build)"
                    .into(),
            );
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
            for (what, v) in [("activity", g.activity), ("speed", g.speed)] {
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
        // As the daemon's node tunes it (`maxwell_node::tuned_for`) on a modelled machine.
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
            bounty_per_unit: m.bounty_per_unit,
            recycle_income: m.recycle_income,
            bounty_grant: m.bounty_grant,
            bounty_horizon_ticks: (m.bounty_horizon.0 / m.tick.0.max(1)).max(1),
            audit_ppm: ((m.audit_probability * f64::from(PPM)).round() as u32).clamp(1, PPM),
            grace_ticks: u32::try_from(m.grace.0 / m.tick.0.max(1)).unwrap_or(u32::MAX),
            rent_settle_ticks: base.rent_settle_ticks,
            rent_settle_spread: base.rent_settle_spread,
            max_pending_audits: base.max_pending_audits,
            seed,
        }
    }

    /// The die temperature at the start: the scenario's, else the idle machine's steady state.
    pub fn initial_temperature(&self) -> MilliCelsius {
        self.machine
            .initial
            .unwrap_or_else(|| self.rc_params().steady_state(self.machine.idle_power))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_scenario_is_valid() {
        let s = Scenario::default_scenario();
        assert_eq!(s.agents.len(), 4);
        let cfg = s.market_config(1);
        cfg.validate().unwrap();
        // The daemon's rules, which the scenario leaves out.
        let daemon = MarketConfig::default();
        assert_eq!(cfg.grace_ticks, daemon.grace_ticks);
        assert_eq!(cfg.audit_ppm, daemon.audit_ppm);
        assert_eq!(cfg.bounty_per_unit, daemon.bounty_per_unit);
        assert_eq!(cfg.idle_rent, daemon.idle_rent);
        assert_eq!(cfg.recycle_income, daemon.recycle_income);
        assert_eq!(cfg.bounty_grant, daemon.bounty_grant);
        assert_eq!(cfg.bounty_horizon_ticks, daemon.bounty_horizon_ticks);
        assert_eq!(cfg.rent_settle_ticks, daemon.rent_settle_ticks);
        assert_eq!(cfg.rent_settle_spread, daemon.rent_settle_spread);
        assert_eq!(s.market.opening_bid, defaults::OPENING_BID);
    }

    /// The built-in scenario with a `[market]` section spelled out, to edit.
    fn explicit() -> String {
        format!(
            "{DEFAULT_SCENARIO}\n[market]\nslots = 2\nslot_power = \"15W\"\n\
             audit_probability = 0.01\nswitch_on = \"60C\"\ncontrol = \"80C\"\n"
        )
    }

    #[track_caller]
    fn check_error(edit: (&str, &str), want: &[&str]) {
        let base = explicit();
        Scenario::parse(&base, "my.toml").unwrap();
        let text = base.replacen(edit.0, edit.1, 1);
        assert_ne!(text, base, "edit {edit:?} did not apply");
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
