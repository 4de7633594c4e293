//! The defaults every driver of the market shares (the daemon's configuration, the experiment's
//! maxwell and oracle arms, and the simulator's scenarios), so that a measured or simulated run
//! uses what a user's daemon uses. The market's own rules default in
//! [`MarketConfig::default`](crate::MarketConfig).

use crate::Tokens;

/// The owner's opening bid: what a new agent bids until it has measured its own value (it can
/// bid only while it runs). 0.2 JOULE, above the reserve of a cool machine (0.15 JOULE).
pub const OPENING_BID: Tokens = Tokens(200_000);

/// The most an agent may bid per slot, whatever it asks: 5 JOULE.
pub const MAX_BID: Tokens = Tokens(5_000_000);

/// Minted into the bounty pool when a ledger is new: 100,000 JOULE.
pub const BOUNTY_POOL: Tokens = Tokens(100_000_000_000);
