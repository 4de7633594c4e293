//! The defaults every driver of the market shares (the daemon's configuration, the experiment's
//! maxwell and oracle arms, and the simulator's scenarios), so that a measured or simulated run
//! uses what a user's daemon uses. The market's own rules default in
//! [`MarketConfig::default`](crate::MarketConfig).

use crate::{Bytes, Tokens};

/// The owner's opening bid: what a new agent bids until it has measured its own value (it can
/// bid only while it runs). 0.2 JOULE, above the reserve of a cool machine (0.15 JOULE).
pub const OPENING_BID: Tokens = Tokens(200_000);

/// The most an agent may bid per slot, whatever it asks: 5 JOULE.
pub const MAX_BID: Tokens = Tokens(5_000_000);

/// Minted into the bounty pool when a ledger is new: 100,000 JOULE.
pub const BOUNTY_POOL: Tokens = Tokens(100_000_000_000);

/// The least memory an agent pays rent on, whatever it holds: 1 MiB (1 mW of rent at the
/// default 1 W per GiB, 10 JOULE in about three hours). Existing costs the host a thread or a
/// process, so no agent lives for free; an idle agent's wallet still lasts hours.
pub const RENT_FLOOR: Bytes = Bytes(1 << 20);
