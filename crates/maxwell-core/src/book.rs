//! The order book of standing bids and the uniform-price auction that clears it.
//!
//! Agents hold *standing* bids: a price per slot for one quantum, with unit demand (an agent
//! wants at most one slot per quantum). A bid stays until the agent changes or cancels it, so
//! nobody has to bid every tick. The book keeps bids ranked in a B-tree, so placing, changing
//! and cancelling cost O(log n), and clearing `k` slots reads only the first `k + 1` bids:
//! O(k + log n), whatever the number of bidders.
//!
//! Ranking: higher price first; among equal prices the older bid (smaller `placed_at`) first;
//! then the smaller agent id. Clearing with supply `k` and reserve `r`: the top
//! `min(k, #bids >= r)` bids win, and every winner pays the same price
//! `p = max(r, highest losing bid)`. For unit demand this uniform (k+1)-price rule is truthful:
//! bidding your value is a dominant strategy, and no winner pays more than its bid.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::units::Tokens;

/// An agent's identity inside one market: a dense index assigned at admission.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct AgentId(pub u32);

impl AgentId {
    fn index(self) -> usize {
        self.0 as usize
    }
}

/// One standing bid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bid {
    /// Who bids.
    pub agent: AgentId,
    /// Price offered for one slot for one quantum.
    pub price: Tokens,
    /// When the bid was placed (any monotone counter); older bids win ties.
    pub placed_at: u64,
}

/// Why a bid could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BidError {
    /// `placed_at` is reserved.
    #[error("placed_at {0} is reserved; use a smaller counter value")]
    ReservedTimestamp(u64),
}

/// The result of clearing one round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clearing {
    /// Winners in rank order (at most `supply`).
    pub winners: Vec<AgentId>,
    /// The uniform price every winner pays: `max(reserve, highest losing bid)`. With no
    /// winners this is the reserve, and nobody pays it.
    pub price: Tokens,
}

/// Ranking key in the B-tree. Field order matters only through the `Ord` impl below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rank {
    price: u64,
    placed_at: u64,
    agent: u32,
}

impl Ord for Rank {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .price
            .cmp(&self.price)
            .then(self.placed_at.cmp(&other.placed_at))
            .then(self.agent.cmp(&other.agent))
    }
}

impl PartialOrd for Rank {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Per-agent slot of the dense index. `placed_at == VACANT` marks "no bid", which saves the
/// eight bytes an `Option` would cost per agent.
#[derive(Debug, Clone, Copy)]
struct Entry {
    price: u64,
    placed_at: u64,
}

const VACANT: u64 = u64::MAX;

/// Standing bids, ranked. See the module documentation for the rules.
#[derive(Debug, Default, Clone)]
pub struct OrderBook {
    ranked: BTreeSet<Rank>,
    by_agent: Vec<Entry>,
}

impl OrderBook {
    /// An empty book.
    pub fn new() -> OrderBook {
        OrderBook::default()
    }

    /// An empty book with room for agent ids below `n_agents` without reallocating.
    pub fn with_capacity(n_agents: usize) -> OrderBook {
        OrderBook {
            ranked: BTreeSet::new(),
            by_agent: Vec::with_capacity(n_agents),
        }
    }

    /// Number of standing bids.
    pub fn len(&self) -> usize {
        self.ranked.len()
    }

    /// True when no bid stands.
    pub fn is_empty(&self) -> bool {
        self.ranked.is_empty()
    }

    /// The agent's standing bid, if any.
    pub fn get(&self, agent: AgentId) -> Option<Bid> {
        let e = self.by_agent.get(agent.index())?;
        (e.placed_at != VACANT).then_some(Bid {
            agent,
            price: Tokens(e.price),
            placed_at: e.placed_at,
        })
    }

    /// Places or replaces the agent's bid in O(log n). Returns the bid it replaced.
    pub fn place(&mut self, bid: Bid) -> Result<Option<Bid>, BidError> {
        if bid.placed_at == VACANT {
            return Err(BidError::ReservedTimestamp(bid.placed_at));
        }
        let old = self.cancel(bid.agent);
        let idx = bid.agent.index();
        if idx >= self.by_agent.len() {
            self.by_agent.resize(
                idx + 1,
                Entry {
                    price: 0,
                    placed_at: VACANT,
                },
            );
        }
        self.by_agent[idx] = Entry {
            price: bid.price.0,
            placed_at: bid.placed_at,
        };
        let inserted = self.ranked.insert(Rank {
            price: bid.price.0,
            placed_at: bid.placed_at,
            agent: bid.agent.0,
        });
        debug_assert!(inserted, "an agent has at most one rank entry");
        Ok(old)
    }

    /// Changes the price of a standing bid but keeps its age (used when a wallet cap moves the
    /// effective price; the agent did not re-bid, so it keeps its place among equals).
    /// Returns false when the agent has no bid.
    pub fn reprice(&mut self, agent: AgentId, price: Tokens) -> bool {
        let Some(bid) = self.get(agent) else {
            return false;
        };
        if bid.price == price {
            return true;
        }
        self.ranked.remove(&Rank {
            price: bid.price.0,
            placed_at: bid.placed_at,
            agent: agent.0,
        });
        self.ranked.insert(Rank {
            price: price.0,
            placed_at: bid.placed_at,
            agent: agent.0,
        });
        self.by_agent[agent.index()].price = price.0;
        true
    }

    /// Cancels the agent's bid in O(log n). Returns it, if there was one.
    pub fn cancel(&mut self, agent: AgentId) -> Option<Bid> {
        let bid = self.get(agent)?;
        let removed = self.ranked.remove(&Rank {
            price: bid.price.0,
            placed_at: bid.placed_at,
            agent: agent.0,
        });
        debug_assert!(removed, "dense index and ranking agree");
        self.by_agent[agent.index()].placed_at = VACANT;
        Some(bid)
    }

    /// Bids from the highest ranked down.
    pub fn iter(&self) -> impl Iterator<Item = Bid> + '_ {
        self.ranked.iter().map(|r| Bid {
            agent: AgentId(r.agent),
            price: Tokens(r.price),
            placed_at: r.placed_at,
        })
    }

    /// Clears `supply` slots at `reserve`, reading only the first `supply + 1` bids.
    /// The book is not changed: bids stand until their owners change them.
    pub fn clear(&self, supply: u32, reserve: Tokens) -> Clearing {
        clear_ranked(self.iter(), supply, reserve)
    }
}

/// Applies the uniform (k+1)-price rule to bids already in rank order.
fn clear_ranked(ranked: impl Iterator<Item = Bid>, supply: u32, reserve: Tokens) -> Clearing {
    let k = supply as usize;
    let mut winners = Vec::with_capacity(k.min(1024));
    let mut highest_losing = Tokens::ZERO;
    for bid in ranked {
        if winners.len() < k && bid.price >= reserve {
            winners.push(bid.agent);
        } else {
            // Either the supply is sold out or this and every later bid is under the reserve.
            highest_losing = bid.price;
            break;
        }
    }
    let price = reserve.max(highest_losing);
    debug_assert!(winners.len() <= k);
    Clearing { winners, price }
}

/// The brute-force reference clearing: sort every bid and apply the rule. O(n log n); used by
/// tests and `maxwell auction clear --check` as the oracle the order book must agree with.
/// Duplicate agents are a caller error; the first occurrence in rank order counts.
pub fn reference_clear(bids: &[Bid], supply: u32, reserve: Tokens) -> Clearing {
    let mut sorted = bids.to_vec();
    sorted.sort_by(|a, b| {
        b.price
            .cmp(&a.price)
            .then(a.placed_at.cmp(&b.placed_at))
            .then(a.agent.cmp(&b.agent))
    });
    // Apply the definition literally rather than through `clear_ranked`, so that the oracle
    // does not share code with what it checks.
    let eligible: Vec<&Bid> = sorted.iter().filter(|b| b.price >= reserve).collect();
    let n_win = eligible.len().min(supply as usize);
    let winners: Vec<AgentId> = eligible[..n_win].iter().map(|b| b.agent).collect();
    let losing_max = sorted.get(n_win).map_or(Tokens::ZERO, |b| b.price);
    let price = if losing_max > reserve {
        losing_max
    } else {
        reserve
    };
    Clearing { winners, price }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn bid(agent: u32, price: u64, placed_at: u64) -> Bid {
        Bid {
            agent: AgentId(agent),
            price: Tokens(price),
            placed_at,
        }
    }

    #[track_caller]
    fn check(bids: &[Bid], supply: u32, reserve: u64, winners: &[u32], price: u64) {
        let mut book = OrderBook::new();
        for b in bids {
            book.place(*b).unwrap();
        }
        let got = book.clear(supply, Tokens(reserve));
        let want = Clearing {
            winners: winners.iter().map(|a| AgentId(*a)).collect(),
            price: Tokens(price),
        };
        assert_eq!(got, want, "book");
        assert_eq!(
            reference_clear(bids, supply, Tokens(reserve)),
            want,
            "reference"
        );
    }

    #[test]
    fn uniform_price_is_the_highest_losing_bid() {
        let bids = [bid(0, 50, 0), bid(1, 40, 1), bid(2, 30, 2), bid(3, 20, 3)];
        check(&bids, 2, 10, &[0, 1], 30);
        check(&bids, 1, 10, &[0], 40);
    }

    #[test]
    fn reserve_binds_when_losers_bid_less() {
        let bids = [bid(0, 50, 0), bid(1, 40, 1), bid(2, 5, 2)];
        check(&bids, 5, 10, &[0, 1], 10);
        // Nobody reaches the reserve: no winners, price reported as the reserve.
        check(&bids, 5, 60, &[], 60);
        // Supply zero sells nothing.
        check(&bids, 0, 1, &[], 50);
    }

    #[test]
    fn ties_go_to_the_older_bid_then_the_smaller_agent() {
        let bids = [bid(7, 30, 5), bid(3, 30, 2), bid(4, 30, 2)];
        check(&bids, 1, 1, &[3], 30);
        check(&bids, 2, 1, &[3, 4], 30);
    }

    #[test]
    fn place_replaces_and_cancel_removes() {
        let mut book = OrderBook::new();
        book.place(bid(1, 10, 0)).unwrap();
        let old = book.place(bid(1, 20, 1)).unwrap();
        assert_eq!(old, Some(bid(1, 10, 0)));
        assert_eq!(book.len(), 1);
        assert!(book.reprice(AgentId(1), Tokens(5)));
        assert_eq!(
            book.get(AgentId(1)),
            Some(bid(1, 5, 1)),
            "reprice keeps age"
        );
        assert_eq!(book.cancel(AgentId(1)), Some(bid(1, 5, 1)));
        assert!(book.is_empty());
        assert_eq!(book.cancel(AgentId(1)), None);
        assert!(!book.reprice(AgentId(9), Tokens(5)));
        assert!(book.place(bid(2, 1, u64::MAX)).is_err());
    }

    fn bids_strategy() -> impl Strategy<Value = Vec<Bid>> {
        prop::collection::vec((0u64..60, 0u64..8), 0..40).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (price, placed_at))| bid(i as u32, price, placed_at))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn book_agrees_with_reference(bids in bids_strategy(), supply in 0u32..12, reserve in 0u64..40) {
            let mut book = OrderBook::new();
            for b in &bids { book.place(*b).unwrap(); }
            prop_assert_eq!(book.clear(supply, Tokens(reserve)), reference_clear(&bids, supply, Tokens(reserve)));
        }

        #[test]
        fn winners_pay_at_most_their_bid_and_at_most_k_win(
            bids in bids_strategy(), supply in 0u32..12, reserve in 0u64..40,
        ) {
            let mut book = OrderBook::new();
            for b in &bids { book.place(*b).unwrap(); }
            let c = book.clear(supply, Tokens(reserve));
            prop_assert!(c.winners.len() <= supply as usize);
            prop_assert!(c.price >= Tokens(reserve));
            let mut seen = std::collections::BTreeSet::new();
            for w in &c.winners {
                prop_assert!(seen.insert(*w), "slot sold twice to {:?}", w);
                let b = book.get(*w).unwrap();
                prop_assert!(b.price >= c.price, "winner {:?} bid {:?} pays {:?}", w, b.price, c.price);
            }
            // Every loser with a bid above the price would have been a winner.
            for b in book.iter() {
                if !c.winners.contains(&b.agent) {
                    prop_assert!(b.price <= c.price);
                }
            }
        }

        /// Truthfulness: for any bids of the others and any value of agent 0, bidding the value
        /// gives agent 0 at least the utility of any other bid (utility: value - price if it
        /// wins, else 0). Agent 0 keeps its age; only its price changes.
        #[test]
        fn bidding_your_value_is_dominant(
            others in bids_strategy(), supply in 0u32..8, reserve in 0u64..40,
            value in 0u64..80, placed_at in 0u64..8, alternatives in prop::collection::vec(0u64..100, 1..12),
        ) {
            let utility = |price: u64| -> i128 {
                let mut bids: Vec<Bid> = others.iter().map(|b| bid(b.agent.0 + 1, b.price.0, b.placed_at)).collect();
                bids.push(bid(0, price, placed_at));
                let c = reference_clear(&bids, supply, Tokens(reserve));
                let mut book = OrderBook::new();
                for b in &bids { book.place(*b).unwrap(); }
                assert_eq!(book.clear(supply, Tokens(reserve)), c);
                if c.winners.contains(&AgentId(0)) { i128::from(value) - i128::from(c.price.0) } else { 0 }
            };
            let truthful = utility(value);
            let mut candidates = alternatives;
            candidates.extend([0, value.saturating_sub(1), value + 1, reserve, u64::from(supply)]);
            for b in candidates {
                prop_assert!(utility(b) <= truthful, "bidding {} beats bidding value {}", b, value);
            }
        }

        /// Random place/change/cancel sequences keep the dense index and the ranking in step.
        #[test]
        fn random_operations_keep_book_consistent(ops in prop::collection::vec((0u32..16, 0u64..50, any::<bool>()), 0..200)) {
            let mut book = OrderBook::new();
            let mut model = std::collections::BTreeMap::new();
            for (i, (agent, price, cancel)) in ops.into_iter().enumerate() {
                if cancel {
                    prop_assert_eq!(book.cancel(AgentId(agent)), model.remove(&agent));
                } else {
                    let b = bid(agent, price, i as u64);
                    prop_assert_eq!(book.place(b).unwrap(), model.insert(agent, b));
                }
                prop_assert_eq!(book.len(), model.len());
            }
            let all: Vec<Bid> = model.values().copied().collect();
            prop_assert_eq!(book.clear(5, Tokens(10)), reference_clear(&all, 5, Tokens(10)));
        }
    }
}
