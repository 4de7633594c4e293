//! Wallet rules: what holding memory, erasing it, doing useful work and lying about it cost or
//! earn. Each function is pure and states its rounding: charges round up, payouts round down.

use crate::units::{Bytes, GridPrice, MicroJoules, MilliCelsius, MilliWatts, Nanos, Tokens};

/// Boltzmann's constant, joules per kelvin (exact in the 2019 SI).
pub const BOLTZMANN_J_PER_K: f64 = 1.380_649e-23;

/// Parts per million: the unit of probabilities in the core (10_000 is 1%).
pub const PPM: u32 = 1_000_000;

/// Memory rent for one quantum: resident memory is charged as the power `rent_per_gib` per GiB
/// drawn for the quantum, priced at the grid price. Rounded up (energy, then money).
pub fn memory_rent(
    resident: Bytes,
    rent_per_gib: MilliWatts,
    quantum: Nanos,
    grid: GridPrice,
) -> Tokens {
    if resident.0 == 0 || rent_per_gib.0 == 0 {
        return Tokens::ZERO;
    }
    // One rounding to the microjoule: bytes * mW/GiB * ns / (GiB * 1e6) uJ.
    let num = u128::from(resident.0) * u128::from(rent_per_gib.0) * u128::from(quantum.0);
    let energy = num.div_ceil(u128::from(1u64 << 30) * 1_000_000);
    grid.cost(MicroJoules(u64::try_from(energy).unwrap_or(u64::MAX)))
}

/// Landauer's bound for erasing `erased` bytes at `temp`, times `inefficiency` (how far real
/// hardware is from the bound; the seed uses 1e12): `bits * k_B * T * ln 2 * inefficiency`,
/// rounded up to the microjoule.
pub fn landauer_energy(erased: Bytes, temp: MilliCelsius, inefficiency: f64) -> MicroJoules {
    let bits = erased.bits() as f64;
    let kelvin = temp.as_kelvin_f64().max(0.0);
    MicroJoules::from_joules_ceil(
        bits * BOLTZMANN_J_PER_K * kelvin * std::f64::consts::LN_2 * inefficiency,
    )
}

/// The Landauer tax in tokens: [`landauer_energy`] at the grid price, rounded up.
pub fn landauer_tax(
    erased: Bytes,
    temp: MilliCelsius,
    inefficiency: f64,
    grid: GridPrice,
) -> Tokens {
    if erased.0 == 0 {
        return Tokens::ZERO;
    }
    grid.cost(landauer_energy(erased, temp, inefficiency))
}

/// The bounty for `units` of verified work, before the pool's limit: `units * per_unit`
/// (saturating).
pub fn bounty(units: u64, per_unit: Tokens) -> Tokens {
    per_unit.saturating_mul(units)
}

/// The fine for a claim that failed its audit: `bounty / q`, rounded up, so that a claim
/// audited with probability `q` has an expected net bounty of zero or less for a liar.
/// `audit_ppm` is `q` in parts per million and must be non-zero.
pub fn audit_fine(bounty: Tokens, audit_ppm: u32) -> Tokens {
    bounty.mul_div_ceil(u64::from(PPM), u64::from(audit_ppm.max(1)))
}

/// The audit rate of a claim worth `bounty` from a wallet of `balance`: the base rate, or the
/// lowest rate above it at which the fine (`bounty / q`) fits the wallet; every claim is
/// audited (`q = 1`) when even the bounty does not. So a liar's expected fine is its bounty
/// whatever its wealth, and a poor honest agent may claim: it is only checked more often (a
/// wallet-sized stake used to shut every wallet below `bounty / q` out of all work).
pub fn covered_audit_ppm(bounty: Tokens, balance: Tokens, base_ppm: u32) -> u32 {
    if balance.0 == 0 {
        return PPM;
    }
    let needed = u128::from(bounty.0) * u128::from(PPM);
    let needed = needed.div_ceil(u128::from(balance.0));
    u32::try_from(needed)
        .unwrap_or(PPM)
        .clamp(base_ppm.clamp(1, PPM), PPM)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRID: GridPrice = GridPrice(Tokens(1_000_000));

    #[test]
    fn a_small_wallet_is_audited_more_often_so_that_its_fine_fits() {
        // 0.4 JOULE of bounty at q = 1% risks a 40 JOULE fine.
        assert_eq!(
            covered_audit_ppm(Tokens(400_000), Tokens(40_000_000), 10_000),
            10_000
        );
        // From a wallet of 1 JOULE: audited 40% of the time, the fine is then 1 JOULE.
        let q = covered_audit_ppm(Tokens(400_000), Tokens(1_000_000), 10_000);
        assert_eq!(q, 400_000);
        assert_eq!(audit_fine(Tokens(400_000), q), Tokens(1_000_000));
        // Below the bounty itself, or empty: every claim is audited.
        assert_eq!(
            covered_audit_ppm(Tokens(400_000), Tokens(300_000), 10_000),
            PPM
        );
        assert_eq!(covered_audit_ppm(Tokens(400_000), Tokens(0), 10_000), PPM);
        // Never below the base rate.
        assert_eq!(
            covered_audit_ppm(Tokens(1), Tokens(u64::MAX), 10_000),
            10_000
        );
    }

    #[test]
    fn landauer_one_gib_at_300_kelvin() {
        // 8 * 2^30 bits * k_B * 300 K * ln 2 * 1e12 = 24.66 J.
        let e = landauer_energy(Bytes::gib(1), MilliCelsius(26_850), 1e12);
        assert!((e.as_joules_f64() - 24.66).abs() < 0.01, "{e:?}");
        assert_eq!(
            landauer_tax(Bytes::gib(1), MilliCelsius(26_850), 1e12, GRID),
            Tokens(e.0)
        );
        // Hotter erasure costs more.
        assert!(landauer_energy(Bytes::gib(1), MilliCelsius(90_000), 1e12) > e);
    }

    #[test]
    fn landauer_tax_rounds_up() {
        // One byte is far below a microjoule and still costs one micro-token.
        assert_eq!(
            landauer_tax(Bytes(1), MilliCelsius(26_850), 1e12, GRID),
            Tokens(1)
        );
        assert_eq!(
            landauer_tax(Bytes(0), MilliCelsius(26_850), 1e12, GRID),
            Tokens(0)
        );
    }

    #[test]
    fn rent_is_power_per_gib_over_the_quantum() {
        // 1 GiB at 1 W/GiB for 10 ms is 10 mJ, 10_000 micro-tokens at 1 JOULE/J.
        let r = memory_rent(
            Bytes::gib(1),
            MilliWatts(1_000),
            Nanos::from_millis(10),
            GRID,
        );
        assert_eq!(r, Tokens(10_000));
        // 1.1 MiB is charged for 1.1 MiB, not rounded up to a whole milliwatt first.
        let r = memory_rent(
            Bytes(1_153_434),
            MilliWatts(1_000),
            Nanos::from_millis(10),
            GRID,
        );
        assert_eq!(r, Tokens(11));
        // Any resident byte pays at least one micro-token.
        assert_eq!(
            memory_rent(Bytes(1), MilliWatts(1), Nanos(1), GRID),
            Tokens(1)
        );
        assert_eq!(
            memory_rent(Bytes(0), MilliWatts(1_000), Nanos(1), GRID),
            Tokens(0)
        );
    }

    #[test]
    fn fine_is_bounty_over_q_rounded_up() {
        assert_eq!(audit_fine(Tokens(3), 10_000), Tokens(300));
        assert_eq!(audit_fine(Tokens(1), 30_000), Tokens(34));
        assert_eq!(bounty(3, Tokens(u64::MAX)), Tokens(u64::MAX));
    }
}
