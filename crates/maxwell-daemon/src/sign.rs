//! Owners sign funding requests with Ed25519. The signed message names the node (its ledger
//! key), the wallet, the amount and a nonce, so a signature can be replayed neither on another
//! node, nor for another wallet or amount, nor twice.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use maxwell_core::Tokens;

use crate::api::FundRequest;

/// The exact bytes an owner signs to fund `agent` on `node`.
pub fn fund_message(node: &str, agent: &str, amount: Tokens, nonce: u64) -> Vec<u8> {
    format!(
        "maxwell-fund-v1\nnode {node}\nagent {agent}\namount {}\nnonce {nonce}\n",
        amount.0
    )
    .into_bytes()
}

/// The exact bytes a sponsor signs to put `amount` into `node`'s bounty pool (a message of its
/// own, so that no wallet funding can be replayed on the pool nor the other way round).
pub fn pool_fund_message(node: &str, amount: Tokens, nonce: u64) -> Vec<u8> {
    format!(
        "maxwell-fund-bounty-pool-v1\nnode {node}\namount {}\nnonce {nonce}\n",
        amount.0
    )
    .into_bytes()
}

/// A signed top-up of the bounty pool.
pub fn sign_pool_fund(key: &SigningKey, node: &str, amount: Tokens, nonce: u64) -> FundRequest {
    let sig = key.sign(&pool_fund_message(node, amount, nonce));
    FundRequest {
        amount,
        nonce,
        owner: hex(key.verifying_key().as_bytes()),
        signature: hex(&sig.to_bytes()),
    }
}

/// Checks a top-up of the bounty pool on `node` by the sponsor `req.owner`, whose last nonce
/// was `last_nonce` (0 for a new sponsor). Anyone may sponsor; the signature only proves who
/// paid and stops replays.
pub fn check_pool_fund(req: &FundRequest, node: &str, last_nonce: u64) -> Result<(), String> {
    let key = parse_public_key(&req.owner)?;
    let sig = Signature::from_bytes(&unhex::<64>(&req.signature, "the signature")?);
    key.verify(&pool_fund_message(node, req.amount, req.nonce), &sig)
        .map_err(|_| {
            "the signature does not match this node, amount and nonce (forged, signed for \
             another node, or a wallet funding sent to the pool)"
                .to_string()
        })?;
    if req.nonce <= last_nonce {
        return Err(format!(
            "nonce {} was already used by this sponsor (the last was {last_nonce}); sign again \
             with a larger one",
            req.nonce
        ));
    }
    if req.amount == Tokens::ZERO {
        return Err("amount must be above zero".into());
    }
    Ok(())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str, what: &str) -> Result<[u8; N], String> {
    let bad = || format!("{what} must be {} hex digits", 2 * N);
    if s.len() != 2 * N || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Parses an owner's public key.
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, String> {
    let bytes = unhex::<32>(s, "an owner key")?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// A signed funding request.
pub fn sign_fund(
    key: &SigningKey,
    node: &str,
    agent: &str,
    amount: Tokens,
    nonce: u64,
) -> FundRequest {
    let sig = key.sign(&fund_message(node, agent, amount, nonce));
    FundRequest {
        amount,
        nonce,
        owner: hex(key.verifying_key().as_bytes()),
        signature: hex(&sig.to_bytes()),
    }
}

/// Checks a funding request for `agent`, owned by `owner`, on `node`, whose last nonce was
/// `last_nonce`. The error says what is wrong. [`verify_fund_signature`] and
/// [`check_fund_terms`] are its two halves, for callers that verify the (costly) signature on
/// another thread than the one that knows the owner and the nonce.
pub fn check_fund(
    req: &FundRequest,
    node: &str,
    agent: &str,
    owner: &str,
    last_nonce: u64,
) -> Result<(), String> {
    check_owner(req, agent, owner)?;
    verify_fund_signature(req, node, agent)?;
    check_fund_terms(req, agent, owner, last_nonce)
}

fn check_owner(req: &FundRequest, agent: &str, owner: &str) -> Result<(), String> {
    if req.owner != owner {
        return Err(format!(
            "wallet {agent} belongs to owner {owner}, not {}; sign with the owner's key",
            req.owner
        ));
    }
    Ok(())
}

/// Whether `req` is signed by the key it names (`req.owner`) for `agent` on `node`: the costly
/// half of [`check_fund`] (an Ed25519 verification, some 50 us), which needs neither the
/// wallet's owner nor its last nonce.
pub fn verify_fund_signature(req: &FundRequest, node: &str, agent: &str) -> Result<(), String> {
    let key = parse_public_key(&req.owner)?;
    let sig = Signature::from_bytes(&unhex::<64>(&req.signature, "the signature")?);
    key.verify(&fund_message(node, agent, req.amount, req.nonce), &sig)
        .map_err(|_| {
            "the signature does not match this node, wallet, amount and nonce (forged, or signed \
             for another node)"
                .to_string()
        })
}

/// The cheap half of [`check_fund`], for a request whose signature
/// [`verify_fund_signature`] accepted: the key that signed is the wallet's owner, the nonce is
/// fresh, the amount is above zero.
pub fn check_fund_terms(
    req: &FundRequest,
    agent: &str,
    owner: &str,
    last_nonce: u64,
) -> Result<(), String> {
    check_owner(req, agent, owner)?;
    if req.nonce <= last_nonce {
        return Err(format!(
            "nonce {} was already used (the last was {last_nonce}); sign again with a larger one",
            req.nonce
        ));
    }
    if req.amount == Tokens::ZERO {
        return Err("amount must be above zero".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_pool_top_up_needs_a_fresh_signature_for_this_node_and_amount() {
        let sponsor = SigningKey::from_bytes(&[9; 32]);
        let req = sign_pool_fund(&sponsor, "node-a", Tokens(5), 3);
        check_pool_fund(&req, "node-a", 2).unwrap();
        assert!(
            check_pool_fund(&req, "node-a", 3)
                .unwrap_err()
                .contains("nonce")
        );
        assert!(check_pool_fund(&req, "node-b", 0).is_err());
        let mut more = req.clone();
        more.amount = Tokens(500);
        assert!(check_pool_fund(&more, "node-a", 0).is_err());
        // A wallet funding cannot be replayed on the pool, nor a top-up on a wallet.
        let wallet = sign_fund(&sponsor, "node-a", "bounty-pool", Tokens(5), 4);
        assert!(check_pool_fund(&wallet, "node-a", 0).is_err());
        let o = hex(sponsor.verifying_key().as_bytes());
        assert!(check_fund(&req, "node-a", "bounty-pool", &o, 0).is_err());
        let zero = sign_pool_fund(&sponsor, "node-a", Tokens(0), 5);
        assert!(check_pool_fund(&zero, "node-a", 0).is_err());
    }

    #[test]
    fn only_the_owner_s_fresh_signature_for_this_node_wallet_and_amount_passes() {
        let owner = SigningKey::from_bytes(&[7; 32]);
        let thief = SigningKey::from_bytes(&[8; 32]);
        let o = hex(owner.verifying_key().as_bytes());
        let req = sign_fund(&owner, "node-a", "sci", Tokens(5), 3);
        check_fund(&req, "node-a", "sci", &o, 2).unwrap();
        assert!(
            check_fund(&req, "node-a", "sci", &o, 3)
                .unwrap_err()
                .contains("nonce")
        );
        assert!(check_fund(&req, "node-b", "sci", &o, 0).is_err());
        assert!(check_fund(&req, "node-a", "leech", &o, 0).is_err());
        let mut more = req.clone();
        more.amount = Tokens(500);
        assert!(check_fund(&more, "node-a", "sci", &o, 0).is_err());
        let forged = sign_fund(&thief, "node-a", "sci", Tokens(5), 3);
        assert!(
            check_fund(&forged, "node-a", "sci", &o, 0)
                .unwrap_err()
                .contains("belongs")
        );
        let mut spoofed = forged.clone();
        spoofed.owner = o.clone();
        assert!(
            check_fund(&spoofed, "node-a", "sci", &o, 0)
                .unwrap_err()
                .contains("signature")
        );
        let mut garbage = req.clone();
        garbage.signature = "zz".into();
        assert!(
            check_fund(&garbage, "node-a", "sci", &o, 0)
                .unwrap_err()
                .contains("hex")
        );
    }
}
