//! The defaults every driver of a node shares (the daemon's configuration and the experiment's
//! maxwell and oracle arms); they live in [`maxwell_core::defaults`] so that the simulator's
//! scenarios default to them too.

pub use maxwell_core::defaults::{BOUNTY_POOL, MAX_BID, OPENING_BID};
