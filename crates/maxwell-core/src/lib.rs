//! # maxwell-core: the sans-IO market
//!
//! Maxwell schedules untrusted agents by price and physics. This crate is the market every other
//! part drives: it does no I/O, reads no clock and draws randomness only from a seeded RNG, so
//! the daemon and the deterministic simulator run exactly the same rules, and a recorded run
//! replays bit for bit.
//!
//! - [`units`]: integer newtypes for money, energy, power, temperature, time and memory, and the
//!   one function that turns energy into money ([`units::GridPrice::cost`]).
//! - [`book`]: the order book of standing bids and the uniform (k+1)-price auction.
//! - [`pricing`]: the power-allocator PID controller, supply and reserve price.
//! - [`thermal`]: the lumped RC thermal model.
//! - [`rules`]: memory rent, the Landauer tax, bounties and audit fines.
//! - [`energy`]: exact attribution of energy to agents by CPU time.
//! - [`work`]: prime counting, the useful work agents claim and auditors recompute.
//! - [`ledger`]: double-entry accounts, transfers, tick batches and the conservation check.
//! - [`market`]: [`Market::tick`], which ties it all together.
//!
//! This crate has no Cargo features.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod book;
pub mod defaults;
pub mod dense;
pub mod energy;
pub mod ledger;
pub mod market;
pub mod pricing;
pub mod rules;
pub mod thermal;
pub mod units;
pub mod work;

pub use book::{AgentId, Bid, Clearing, OrderBook};
pub use ledger::{Account, Cause, LedgerBatch, Transfer, TransferKind};
pub use market::{
    AgentSpec, AgentStats, AuditRequest, Claim, ClaimId, Command, Life, Market, MarketConfig,
    TickInput, TickOutcome, Usage, Verdict,
};
pub use units::{Bytes, GridPrice, MicroJoules, MilliCelsius, MilliWatts, Nanos, Tokens};
