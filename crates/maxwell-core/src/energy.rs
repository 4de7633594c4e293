//! Attribution of measured energy to agents (the Scaphandre/Kepler method): the active part of a
//! tick's energy is split among agents in proportion to their CPU time; the idle part belongs to
//! the house. The split is exact: shares are rounded down and the remainder goes, one
//! microjoule each, to the largest fractional parts (ties to the earlier entry), so the shares
//! always add up to the active energy.

use crate::book::AgentId;
use crate::units::{MicroJoules, Nanos};

/// Splits `active` by CPU time. Entries with zero CPU time get zero. If nobody used the CPU,
/// everything is returned as zero shares and the caller books the energy to the house.
pub fn attribute(active: MicroJoules, cpu: &[(AgentId, Nanos)]) -> Vec<(AgentId, MicroJoules)> {
    let weights: Vec<(AgentId, u64)> = cpu.iter().map(|(a, t)| (*a, t.0)).collect();
    split(active.0, &weights)
        .into_iter()
        .map(|(a, e)| (a, MicroJoules(e)))
        .collect()
}

/// Splits `total` exactly in proportion to `weights` (largest remainders get the leftover
/// units, ties to the earlier entry). If every weight is zero, every share is zero.
pub fn split(total: u64, weights: &[(AgentId, u64)]) -> Vec<(AgentId, u64)> {
    let sum: u128 = weights.iter().map(|(_, w)| u128::from(*w)).sum();
    if sum == 0 {
        return weights.iter().map(|(a, _)| (*a, 0)).collect();
    }
    let e = u128::from(total);
    let mut shares: Vec<(AgentId, u64, u128)> = weights
        .iter()
        .map(|(a, w)| {
            let num = e * u128::from(*w);
            // Each share is at most `total`, which fits in u64.
            let share = u64::try_from(num / sum).unwrap_or(u64::MAX);
            (*a, share, num % sum)
        })
        .collect();
    let given: u64 = shares.iter().map(|s| s.1).sum();
    let mut left = total - given;
    if left > 0 {
        let mut order: Vec<usize> = (0..shares.len()).collect();
        order.sort_by(|&i, &j| shares[j].2.cmp(&shares[i].2).then(i.cmp(&j)));
        for i in order {
            if left == 0 {
                break;
            }
            if shares[i].2 > 0 {
                shares[i].1 += 1;
                left -= 1;
            }
        }
    }
    shares.into_iter().map(|(a, s, _)| (a, s)).collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn splits_by_cpu_share() {
        let got = attribute(
            MicroJoules(100),
            &[
                (AgentId(0), Nanos(1)),
                (AgentId(1), Nanos(1)),
                (AgentId(2), Nanos(1)),
            ],
        );
        let sums: Vec<u64> = got.iter().map(|(_, e)| e.0).collect();
        assert_eq!(sums, vec![34, 33, 33]);
        let idle = attribute(MicroJoules(100), &[(AgentId(0), Nanos(0))]);
        assert_eq!(idle, vec![(AgentId(0), MicroJoules(0))]);
    }

    proptest! {
        #[test]
        fn shares_sum_exactly(active in 0u64..u64::MAX / 4, cpu in prop::collection::vec(0u64..1_000_000_000, 1..50)) {
            let cpu: Vec<(AgentId, Nanos)> = cpu.into_iter().enumerate().map(|(i, t)| (AgentId(i as u32), Nanos(t))).collect();
            let got = attribute(MicroJoules(active), &cpu);
            let total: u64 = got.iter().map(|(_, e)| e.0).sum();
            if cpu.iter().any(|(_, t)| t.0 > 0) {
                prop_assert_eq!(total, active);
            } else {
                prop_assert_eq!(total, 0);
            }
            for ((_, t), (_, e)) in cpu.iter().zip(&got) {
                if t.0 == 0 { prop_assert_eq!(e.0, 0); }
            }
        }
    }
}
