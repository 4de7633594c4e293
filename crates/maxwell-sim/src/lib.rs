//! # maxwell-sim: the deterministic simulator
//!
//! Proves the economy before any real agent runs. A [`Scenario`] (TOML) describes a machine (idle
//! power, power per busy slot, an RC thermal model), the market's rules and groups of agents with
//! profiles: `scientist` (counts primes for real, bids its expected bounty, claims honestly),
//! `leech` (bids greedily, burns cycles, churns memory), `squatter` (idles holding memory) and
//! `liar` (claims ranges it never computed). [`run`] drives [`maxwell_core::Market`] on a virtual
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
