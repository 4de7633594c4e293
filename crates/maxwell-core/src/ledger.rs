//! Double-entry books: accounts, transfers, the tick's batch, and the conservation invariant.
//!
//! Every movement of money is a [`Transfer`] between two [`Account`]s. `mint` is where funding
//! comes from and the only account that may go negative; we track it as the total ever minted.
//! The invariant, checked after every tick in release builds too:
//! `minted = sum of agent balances + bounty pool + house accounts`, and no balance but mint's is
//! negative (balances are unsigned and debits are checked, so this holds by construction and
//! the sum is recounted to prove it).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::book::AgentId;
use crate::units::Tokens;

/// An account in the books.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Account {
    /// Source of all funding; its balance is minus the total minted.
    Mint,
    /// Slot payments: the energy agents bought.
    HouseEnergy,
    /// Memory rent.
    HouseRent,
    /// Landauer tax on erasure.
    HouseLandauer,
    /// Fines for claims that failed an audit.
    HouseSlash,
    /// Funds for bounties: paid in by sponsors, and the house's takings recycled.
    BountyPool,
    /// An agent's wallet.
    Agent(AgentId),
}

impl fmt::Display for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Account::Mint => f.write_str("mint"),
            Account::HouseEnergy => f.write_str("house:energy"),
            Account::HouseRent => f.write_str("house:rent"),
            Account::HouseLandauer => f.write_str("house:landauer"),
            Account::HouseSlash => f.write_str("house:slash"),
            Account::BountyPool => f.write_str("bounty-pool"),
            Account::Agent(a) => write!(f, "agent:{}", a.0),
        }
    }
}

/// What a transfer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransferKind {
    /// Mint to an agent's wallet.
    Funding,
    /// Mint to the bounty pool.
    PoolFunding,
    /// A winner pays the clearing price for its slot.
    SlotPayment,
    /// Memory rent.
    Rent,
    /// Landauer tax.
    LandauerTax,
    /// Bounty for claimed useful work.
    Bounty,
    /// Fine for a claim that failed its audit.
    Fine,
    /// A house account's takings returned to the bounty pool
    /// ([`crate::MarketConfig::recycle_income`]).
    Recycling,
}

impl TransferKind {
    /// A short lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            TransferKind::Funding => "funding",
            TransferKind::PoolFunding => "pool funding",
            TransferKind::SlotPayment => "slot payment",
            TransferKind::Rent => "rent",
            TransferKind::LandauerTax => "Landauer tax",
            TransferKind::Bounty => "bounty",
            TransferKind::Fine => "fine",
            TransferKind::Recycling => "recycling",
        }
    }

    /// The house account that receives a charge of this kind.
    pub fn house(self) -> Option<Account> {
        match self {
            TransferKind::SlotPayment => Some(Account::HouseEnergy),
            TransferKind::Rent => Some(Account::HouseRent),
            TransferKind::LandauerTax => Some(Account::HouseLandauer),
            TransferKind::Fine => Some(Account::HouseSlash),
            _ => None,
        }
    }
}

/// One movement of money.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// Debited account.
    pub from: Account,
    /// Credited account.
    pub to: Account,
    /// How much.
    pub amount: Tokens,
    /// What for.
    pub kind: TransferKind,
}

/// Why an agent died (or is dying).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Cause {
    /// Could not pay a charge in full: paid what it had.
    Insolvent {
        /// The charge it could not cover.
        charge: TransferKind,
        /// What it owed.
        owed: Tokens,
        /// What it paid (its whole balance).
        paid: Tokens,
    },
    /// Killed by its owner through the API.
    Owner,
    /// Broke a hard containment limit of its spec (memory, pids), as reported by the sandbox.
    Limit {
        /// Which limit, in words.
        what: String,
    },
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Insolvent { charge, owed, paid } => {
                write!(f, "insolvent: owed {owed} of {}, had {paid}", charge.name())
            }
            Cause::Owner => f.write_str("killed by its owner"),
            Cause::Limit { what } => write!(f, "broke a containment limit: {what}"),
        }
    }
}

/// A death recorded in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Death {
    /// Who.
    pub agent: AgentId,
    /// Why.
    pub cause: Cause,
}

/// Everything one tick wrote to the books: committed together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerBatch {
    /// The tick.
    pub tick: u64,
    /// Transfers in the order they were applied.
    pub transfers: Vec<Transfer>,
    /// Agents whose grace period ended this tick.
    pub deaths: Vec<Death>,
}

/// The most money that may ever exist: the durable ledger stores amounts and balances in
/// signed 64-bit columns, so the minted total (which bounds every balance and every amount) is
/// held to `i64::MAX` micro-JOULE (about 9.2 million million JOULE). Minting past it is
/// refused, so every balance is stored exactly.
pub const MAX_SUPPLY: Tokens = Tokens(i64::MAX as u64);

/// Why a transfer could not be applied (a bug in the caller: the market only moves money an
/// account has).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// The debited account lacks the funds.
    #[error("{account} holds {balance}, cannot pay {amount}")]
    Insufficient {
        /// Debited account.
        account: Account,
        /// Its balance.
        balance: Tokens,
        /// The amount.
        amount: Tokens,
    },
    /// A balance or the minted total would overflow.
    #[error("{0} would overflow")]
    Overflow(Account),
    /// Mint is never credited, and an agent account must exist.
    #[error("{0} cannot take part in this transfer")]
    BadAccount(Account),
}

/// The conservation invariant failed: a bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conservation violated: minted {minted} but accounts hold {held} micro-tokens")]
pub struct ConservationError {
    /// Total minted.
    pub minted: u128,
    /// Sum of all non-mint balances.
    pub held: u128,
}

/// Balances of every account.
#[derive(Debug, Clone, Default)]
pub struct Books {
    agents: Vec<Tokens>,
    house_energy: Tokens,
    house_rent: Tokens,
    house_landauer: Tokens,
    house_slash: Tokens,
    bounty_pool: Tokens,
    minted: Tokens,
}

impl Books {
    /// Opens a zero-balance wallet for the next agent id and returns it.
    pub fn open_agent(&mut self) -> AgentId {
        let id = AgentId(u32::try_from(self.agents.len()).unwrap_or(u32::MAX));
        self.agents.push(Tokens::ZERO);
        id
    }

    /// Number of agent wallets.
    pub fn n_agents(&self) -> usize {
        self.agents.len()
    }

    /// Total ever minted (minus mint's balance).
    pub fn minted(&self) -> Tokens {
        self.minted
    }

    /// Balance of an account; `None` for mint (negative) and unknown agents.
    pub fn balance(&self, account: Account) -> Option<Tokens> {
        Some(match account {
            Account::Mint => return None,
            Account::HouseEnergy => self.house_energy,
            Account::HouseRent => self.house_rent,
            Account::HouseLandauer => self.house_landauer,
            Account::HouseSlash => self.house_slash,
            Account::BountyPool => self.bounty_pool,
            Account::Agent(a) => *self.agents.get(a.0 as usize)?,
        })
    }

    fn slot(&mut self, account: Account) -> Result<&mut Tokens, TransferError> {
        Ok(match account {
            Account::Mint => return Err(TransferError::BadAccount(account)),
            Account::HouseEnergy => &mut self.house_energy,
            Account::HouseRent => &mut self.house_rent,
            Account::HouseLandauer => &mut self.house_landauer,
            Account::HouseSlash => &mut self.house_slash,
            Account::BountyPool => &mut self.bounty_pool,
            Account::Agent(a) => self
                .agents
                .get_mut(a.0 as usize)
                .ok_or(TransferError::BadAccount(account))?,
        })
    }

    /// Applies a transfer atomically: either both sides move or neither does.
    pub fn apply(&mut self, t: &Transfer) -> Result<(), TransferError> {
        if t.from == t.to {
            return Err(TransferError::BadAccount(t.to));
        }
        // Check the credit side first so that a failure leaves nothing half-done.
        let credited = self
            .balance(t.to)
            .ok_or(TransferError::BadAccount(t.to))?
            .checked_add(t.amount)
            .ok_or(TransferError::Overflow(t.to))?;
        if t.from == Account::Mint {
            self.minted = self
                .minted
                .checked_add(t.amount)
                .filter(|m| *m <= MAX_SUPPLY)
                .ok_or(TransferError::Overflow(Account::Mint))?;
        } else {
            let from = self.slot(t.from)?;
            *from = from
                .checked_sub(t.amount)
                .ok_or(TransferError::Insufficient {
                    account: t.from,
                    balance: *from,
                    amount: t.amount,
                })?;
        }
        *self.slot(t.to)? = credited;
        Ok(())
    }

    /// Recounts every balance and checks `minted = held`.
    pub fn check_conservation(&self) -> Result<(), ConservationError> {
        let held: u128 = self.agents.iter().map(|t| u128::from(t.0)).sum::<u128>()
            + [
                self.house_energy,
                self.house_rent,
                self.house_landauer,
                self.house_slash,
                self.bounty_pool,
            ]
            .iter()
            .map(|t| u128::from(t.0))
            .sum::<u128>();
        let minted = u128::from(self.minted.0);
        if held == minted {
            Ok(())
        } else {
            Err(ConservationError { minted, held })
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn t(from: Account, to: Account, amount: u64) -> Transfer {
        Transfer {
            from,
            to,
            amount: Tokens(amount),
            kind: TransferKind::Funding,
        }
    }

    #[test]
    fn failed_transfers_change_nothing() {
        let mut b = Books::default();
        let a = b.open_agent();
        b.apply(&t(Account::Mint, Account::Agent(a), 10)).unwrap();
        let err = b
            .apply(&t(Account::Agent(a), Account::HouseRent, 11))
            .unwrap_err();
        assert!(matches!(err, TransferError::Insufficient { .. }));
        assert_eq!(b.balance(Account::Agent(a)), Some(Tokens(10)));
        assert!(b.apply(&t(Account::Agent(a), Account::Mint, 1)).is_err());
        assert!(
            b.apply(&t(Account::Mint, Account::Agent(AgentId(9)), 1))
                .is_err()
        );
        assert_eq!(b.minted(), Tokens(10));
        b.check_conservation().unwrap();
    }

    proptest! {
        /// Conservation after any sequence of transfers, including ones that fail.
        #[test]
        fn any_sequence_conserves(ops in prop::collection::vec((0usize..10, 0usize..10, 0u64..1_000), 0..300)) {
            let mut b = Books::default();
            let agents: Vec<AgentId> = (0..4).map(|_| b.open_agent()).collect();
            let account = |i: usize| match i {
                0 => Account::Mint,
                1 => Account::HouseEnergy,
                2 => Account::HouseRent,
                3 => Account::HouseLandauer,
                4 => Account::HouseSlash,
                5 => Account::BountyPool,
                n => Account::Agent(agents[n - 6]),
            };
            for (from, to, amount) in ops {
                let before: Vec<Option<Tokens>> = (0..10).map(|i| b.balance(account(i))).collect();
                let minted = b.minted();
                if b.apply(&t(account(from), account(to), amount)).is_err() {
                    let after: Vec<Option<Tokens>> = (0..10).map(|i| b.balance(account(i))).collect();
                    prop_assert_eq!(before, after);
                    prop_assert_eq!(minted, b.minted());
                }
                prop_assert!(b.check_conservation().is_ok());
            }
        }
    }
}
