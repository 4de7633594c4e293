//! `maxwell auction clear`: clear one auction from JSON on standard input.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use maxwell_core::Tokens;
use maxwell_core::book::{AgentId, Bid, OrderBook, reference_clear};

use crate::{Exit, write_out};

/// An agent as the user names it: a string or a number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
enum AgentKey {
    Number(u64),
    Name(String),
}

/// Money as an integer of micro-JOULE or a string with a unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Amount {
    Micro(u64),
    Text(String),
}

impl Amount {
    fn tokens(&self, what: &str) -> anyhow::Result<Tokens> {
        match self {
            Amount::Micro(n) => Ok(Tokens(*n)),
            Amount::Text(s) => s.parse().with_context(|| what.to_string()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputBid {
    agent: AgentKey,
    price: Amount,
    #[serde(default)]
    placed_at: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    supply: u32,
    reserve: Amount,
    bids: Vec<InputBid>,
}

#[derive(Debug, Serialize)]
struct Output {
    winners: Vec<AgentKey>,
    /// Micro-JOULE.
    price: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reference_agrees: Option<bool>,
}

const EXAMPLE: &str =
    r#"{"supply": 2, "reserve": 100, "bids": [{"agent": "a", "price": 300, "placed_at": 0}]}"#;

/// Reads, clears, prints.
pub(crate) fn clear(check: bool) -> anyhow::Result<Exit> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read standard input")?;
    let input: Input = serde_json::from_str(&text)
        .with_context(|| format!("standard input is not an auction; write it like {EXAMPLE}"))?;
    let reserve = input.reserve.tokens("reserve")?;
    // Dense ids in the order of the agents' own keys, so that "then agent id" in the tie-break
    // means the agent's name or number.
    let mut ids: BTreeMap<AgentKey, AgentId> = BTreeMap::new();
    for b in &input.bids {
        if ids.insert(b.agent.clone(), AgentId(0)).is_some() {
            bail!(
                "agent {:?} bids twice; a standing bid is one per agent, so keep one",
                b.agent
            );
        }
    }
    if ids.len() > u32::MAX as usize {
        bail!("too many agents");
    }
    let keys: Vec<AgentKey> = ids.keys().cloned().collect();
    for (i, v) in ids.values_mut().enumerate() {
        *v = AgentId(i as u32);
    }
    let mut bids = Vec::with_capacity(input.bids.len());
    let mut book = OrderBook::with_capacity(ids.len());
    for (n, b) in input.bids.iter().enumerate() {
        let bid = Bid {
            agent: ids[&b.agent],
            price: b.price.tokens(&format!("bids[{n}].price"))?,
            placed_at: b.placed_at,
        };
        book.place(bid)
            .with_context(|| format!("bids[{n}].placed_at"))?;
        bids.push(bid);
    }
    let clearing = book.clear(input.supply, reserve);
    let reference_agrees = check.then(|| reference_clear(&bids, input.supply, reserve) == clearing);
    let out = Output {
        winners: clearing
            .winners
            .iter()
            .map(|a| keys[a.0 as usize].clone())
            .collect(),
        price: clearing.price.0,
        reference_agrees,
    };
    let mut text = serde_json::to_string(&out)?;
    text.push('\n');
    write_out(&text)?;
    Ok(if reference_agrees == Some(false) {
        Exit::Failed
    } else {
        Exit::Success
    })
}
