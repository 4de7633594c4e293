//! The daemon's TOML configuration. [`DEFAULT_CONFIG`] is the documented default file that
//! `maxwell daemon --print-config` prints; a test holds it equal to the `Default` values.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use maxwell_core::{MarketConfig, MilliWatts, Nanos, Tokens};

/// The default configuration, with a comment on every key.
pub const DEFAULT_CONFIG: &str = r#"# Maxwell daemon configuration. Every key is optional; these are the defaults.

# Length of one tick (one auction, one quantum).
tick = "10ms"
# Where the API listens (HTTP/JSON). Default: maxwell.sock in the data directory.
# socket = "/run/maxwell/maxwell.sock"
# Also listen on TCP; every request must then carry "Authorization: Bearer <token>", with the
# token read from token_file (created with a random token, mode 0600, if absent).
# tcp = "127.0.0.1:7117"
# token_file = "/etc/maxwell/token"
# Agents' sandbox: "wasm" (no root needed), "process" (cgroups; root) or "microvm" (a guest
# kernel per agent under QEMU or Firecracker; root; see docs/microvm.md).
backend = "wasm"

[market]
# CPU slots sold each tick (at most the cores Maxwell owns).
slots = 2
# Power one busy slot adds to the machine's draw.
slot_power = "15W"
# Resident memory pays this much power per GiB, at the grid price of 1 JOULE per joule.
rent_per_gib = "1W"
# Bill the machine's idle power to the living agents by resident memory (off: agents pay for
# their own energy only, and waiting costs only the memory held).
idle_rent = false
# Price granularity: bids are rounded down to a multiple of this, and equal bids take turns
# (least recently served first).
bid_tick = "0.015 JOULE"
# Landauer tax: how far real erasure is from the bound.
landauer_inefficiency = 1e12
# The most a verified unit of useful work earns (1,024 numbers sieved near 1e9, for the
# scientist). A unit earns less when the pool cannot sustain this (see bounty_horizon).
bounty_per_unit = "0.000128 JOULE"
# Return what the house takes in (slot payments, rent, Landauer tax, fines) to the bounty pool,
# to be paid out again as bounties: money moves from agents that do no verified work to those
# that do, and the pool never empties for good.
recycle_income = true
# The operator pays for this much power of useful work, while work is claimed: minted into the
# pool and paid out at once. It is what makes verified work worth more than its energy when
# nobody else sponsors it ("0W": the pool lives on recycled income and top-ups only).
bounty_grant = "15W"
# Per tick the pool pays out at most its recent income plus its balance over this horizon,
# shared by the work claimed: sponsors' money (the opening pool, top-ups) lasts about this long.
bounty_horizon = "30min"
# Share of claims audited by recomputation; a failed audit costs bounty / probability.
audit_probability = 0.02
# Time between insolvency and death.
grace = "500ms"
# Minted into the bounty pool when the ledger is new (top it up with `maxwell bounty fund`).
bounty_pool = "100000 JOULE"

[agents]
# Memory cap of every agent (a hard limit; exceeding it kills the agent).
memory_max = "64MiB"
# Processes per agent (process backend).
pids_max = 64
# Bid placed for a new agent until it bids itself (it can only bid while it runs).
opening_bid = "0.2 JOULE"
# The most an agent may bid per slot.
max_bid = "5 JOULE"

# A cluster (absent: this node is alone). Nodes gossip their temperature, headroom, power,
# prices, free slots and agents, each report signed by the node's key (see docs/cluster.md).
# [cluster]
# node = "a"                          # this node's name, unique in the cluster
# cluster_id = "lab"                  # nodes of other clusters are ignored
# listen = "127.0.0.1:7200"           # UDP gossip address
# advertise = "10.0.0.5:7200"         # what peers dial (default: listen)
# seeds = ["127.0.0.1:7201"]          # some other nodes to join through
# gossip_interval_ms = 100
# [cluster.peers]                     # the allow-list: node name = its public key (hex), this
# a = "<64 hex digits>"               # node included; `maxwell ledger show` prints a node's key
"#;

/// The daemon's configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Tick length.
    #[serde(with = "maxwell_core::units::serde_str")]
    pub tick: Nanos,
    /// API socket (default: in the data directory).
    pub socket: Option<PathBuf>,
    /// Optional TCP listener (needs a bearer token).
    pub tcp: Option<String>,
    /// Token file for TCP.
    pub token_file: Option<PathBuf>,
    /// Sandbox backend.
    pub backend: Backend,
    /// Market parameters.
    pub market: Market,
    /// Agent defaults.
    pub agents: Agents,
    /// Membership of a cluster (absent: a single node). See docs/cluster.md.
    pub cluster: Option<maxwell_cluster::ClusterConfig>,
}

/// Which sandbox hosts agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[derive(Default)]
pub enum Backend {
    #[default]
    /// wasmtime, in process.
    Wasm,
    /// Native processes in cgroups.
    Process,
    /// Native programs (linked statically) in microVMs: QEMU, or Firecracker on KVM hosts.
    Microvm,
}

/// `[market]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Market {
    /// Slots per tick.
    pub slots: u32,
    /// Power of a busy slot.
    #[serde(with = "maxwell_core::units::serde_str")]
    pub slot_power: MilliWatts,
    /// Rent per GiB.
    #[serde(with = "maxwell_core::units::serde_str")]
    pub rent_per_gib: MilliWatts,
    /// Idle power billed by memory.
    pub idle_rent: bool,
    /// Price granularity.
    #[serde(with = "maxwell_core::units::serde_str")]
    pub bid_tick: Tokens,
    /// Landauer inefficiency.
    pub landauer_inefficiency: f64,
    /// Bounty per unit, at most.
    #[serde(with = "maxwell_core::units::serde_str")]
    pub bounty_per_unit: Tokens,
    /// The house's income goes back to the pool.
    pub recycle_income: bool,
    /// The operator's grant to useful work.
    #[serde(with = "maxwell_core::units::serde_str")]
    pub bounty_grant: MilliWatts,
    /// The pool's payout horizon.
    #[serde(with = "maxwell_core::units::serde_str")]
    pub bounty_horizon: Nanos,
    /// Audit probability.
    pub audit_probability: f64,
    /// Grace period.
    #[serde(with = "maxwell_core::units::serde_str")]
    pub grace: Nanos,
    /// Initial bounty pool.
    #[serde(with = "maxwell_core::units::serde_str")]
    pub bounty_pool: Tokens,
}

/// `[agents]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Agents {
    /// Memory cap.
    #[serde(with = "maxwell_core::units::serde_str")]
    pub memory_max: maxwell_core::Bytes,
    /// Process cap.
    pub pids_max: u32,
    /// Opening bid.
    #[serde(with = "maxwell_core::units::serde_str")]
    pub opening_bid: Tokens,
    /// Bid cap.
    #[serde(with = "maxwell_core::units::serde_str")]
    pub max_bid: Tokens,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            tick: Nanos::from_millis(10),
            socket: None,
            tcp: None,
            token_file: None,
            backend: Backend::Wasm,
            market: Market::default(),
            agents: Agents::default(),
            cluster: None,
        }
    }
}

impl Default for Market {
    fn default() -> Market {
        let m = MarketConfig::default();
        Market {
            slots: m.slots_max,
            slot_power: m.slot_power,
            rent_per_gib: m.rent_per_gib,
            idle_rent: m.idle_rent,
            bid_tick: m.bid_tick,
            landauer_inefficiency: m.landauer_inefficiency,
            bounty_per_unit: m.bounty_per_unit,
            recycle_income: m.recycle_income,
            bounty_grant: m.bounty_grant,
            bounty_horizon: Nanos(m.quantum.0.saturating_mul(m.bounty_horizon_ticks)),
            audit_probability: f64::from(m.audit_ppm) / 1e6,
            grace: Nanos(m.quantum.0 * u64::from(m.grace_ticks)),
            bounty_pool: maxwell_node::defaults::BOUNTY_POOL,
        }
    }
}

impl Default for Agents {
    fn default() -> Agents {
        Agents {
            memory_max: maxwell_core::Bytes(64 << 20),
            pids_max: 64,
            opening_bid: maxwell_node::defaults::OPENING_BID,
            max_bid: maxwell_node::defaults::MAX_BID,
        }
    }
}

/// A configuration that cannot be used, with where and what to write instead.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct ConfigError {
    /// The file (or "built-in defaults").
    pub path: String,
    /// What is wrong, with the line and the fix.
    pub message: String,
}

impl Config {
    /// Reads a file; a key it leaves out keeps its default.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = crate::files::read_text(path, "configuration").map_err(|e| ConfigError {
            path: path.display().to_string(),
            message: format!("{e}; `maxwell daemon --print-config` prints one"),
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses `text` and checks it. Errors name the line and column (TOML's spans) and what
    /// to write instead.
    pub fn parse(text: &str, path: &str) -> Result<Config, ConfigError> {
        let err = |message: String| ConfigError {
            path: path.to_owned(),
            message,
        };
        let config: Config = toml::from_str(text).map_err(|e| {
            err(format!(
                "{}; `maxwell daemon --print-config` prints every key with its default",
                e.to_string().trim_end()
            ))
        })?;
        config
            .market_config()
            .validate()
            .map_err(|e| err(e.to_string()))?;
        if !(config.market.audit_probability > 0.0 && config.market.audit_probability <= 1.0) {
            return Err(err(format!(
                "[market] audit_probability = {} must be above 0 and at most 1 (write e.g. 0.02)",
                config.market.audit_probability
            )));
        }
        if config.tick.0 < 1_000_000 {
            return Err(err(
                "tick must be at least 1ms (write e.g. tick = \"10ms\")".into(),
            ));
        }
        Ok(config)
    }

    /// The market core's configuration.
    pub fn market_config(&self) -> MarketConfig {
        let m = &self.market;
        let base = MarketConfig::default();
        let slot_power = m.slot_power;
        MarketConfig {
            quantum: self.tick,
            slots_max: m.slots,
            slot_power,
            pid: maxwell_core::pricing::PidConfig::estimated(
                base.pid.temp_switch_on,
                base.pid.temp_control,
                MilliWatts(slot_power.0.saturating_mul(u64::from(m.slots)) * 3 / 4),
                MilliWatts(slot_power.0.saturating_mul(u64::from(m.slots)).max(1)),
            ),
            rent_per_gib: m.rent_per_gib,
            idle_rent: m.idle_rent,
            bid_tick: m.bid_tick,
            landauer_inefficiency: m.landauer_inefficiency,
            bounty_per_unit: m.bounty_per_unit,
            recycle_income: m.recycle_income,
            bounty_grant: m.bounty_grant,
            bounty_horizon_ticks: (m.bounty_horizon.0 / self.tick.0.max(1)).max(1),
            audit_ppm: ((m.audit_probability * 1e6).round() as u32).clamp(1, 1_000_000),
            grace_ticks: u32::try_from(m.grace.0 / self.tick.0.max(1)).unwrap_or(u32::MAX),
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn the_documented_defaults_are_the_defaults() {
        assert_eq!(
            Config::parse(DEFAULT_CONFIG, "x").unwrap(),
            Config::default()
        );
        let c = Config::default();
        assert_eq!(c.tick, Nanos::from_millis(10));
        assert_eq!(c.backend, Backend::Wasm);
        let m = c.market_config();
        assert_eq!(m.grace_ticks, 50);
        assert_eq!(m.audit_ppm, 20_000);
        assert_eq!(m.bounty_per_unit, Tokens(128));
        m.validate().unwrap();
    }

    #[test]
    fn a_partial_file_keeps_the_other_defaults() {
        let c = Config::parse("tick = \"20ms\"\n[market]\nslots = 1\n", "x.toml").unwrap();
        assert_eq!(c.tick, Nanos::from_millis(20));
        assert_eq!(c.market.slots, 1);
        assert_eq!(c.market.slot_power, MilliWatts(15_000));
    }

    #[test]
    fn mistakes_are_refused_with_the_file_the_line_and_the_fix() {
        let e = Config::parse("tick = \"10ms\"\n[market]\nslotz = 3\n", "my.toml").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("my.toml: "), "{s}");
        assert!(s.contains("slotz") && s.contains("line 3"), "{s}");
        assert!(s.contains("slots"), "names the keys it expects: {s}");
        let e = Config::parse("[market]\nslot_power = \"15 parsecs\"\n", "p.toml").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = Config::parse("tick = [\n", "s.toml").unwrap_err();
        assert!(e.to_string().contains("line"), "{e}");
        let e = Config::parse("backend = \"vm\"\n", "b.toml").unwrap_err();
        assert!(e.to_string().contains("wasm"), "{e}");
    }
}
