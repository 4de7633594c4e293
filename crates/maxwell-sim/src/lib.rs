//! # maxwell-sim: the deterministic simulator
//!
//! Explores the economy before any real agent runs, calibrated to the real ones. A [`Scenario`]
//! (TOML) describes a machine (idle power, power per busy slot, an RC thermal model), the
//! market's rules (every key defaulting to the daemon's) and groups of agents with profiles that
//! behave as the built-in WASM agents do: `scientist` (does the measured units of work per
//! quantum won, bids its value per quantum with the real agents' `ValueMeter`, claims honestly),
//! `leech` (bids nine tenths of its balance, burns cycles, erases memory), `squatter` (holds
//! memory, bids nothing) and `liar` (claims its leases without doing them). [`run`] drives [`maxwell_core::Market`] on a virtual
//! clock with one seeded RNG, checks the invariants after every tick (an independent replay of
//! each ledger batch, the market's own recount, the auction's laws), runs a fair-share baseline
//! of the same machine for comparison, and returns a [`Summary`]. The same seed and scenario give
//! the same summary, byte for byte.
//!
//! This crate has no Cargo features.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod scenario;
mod sim;
pub mod story;

pub use scenario::{DEFAULT_SCENARIO, Profile, Scenario, ScenarioError};
pub use sim::{AgentSummary, ArmSummary, BooksSummary, DeathEvent, SpentSummary, Summary, run};
pub use story::render;

#[cfg(test)]
mod tests;
