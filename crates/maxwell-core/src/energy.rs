//! Attribution of measured energy to agents (the Kepler method): the active part of a tick's
//! energy is split in proportion to CPU time over everything the machine ran, the agents and
//! every other process alike; the agents' shares are theirs, the rest (other processes, the
//! daemon itself) and the idle part belong to the house. So agents never pay for a build
//! running beside them. The split is exact: shares are rounded down and the remainder goes, one
//! microjoule each, to the largest fractional parts (ties to the earlier entry), so the shares
//! always add up to the active energy.

use crate::book::AgentId;
use crate::units::{MicroJoules, Nanos};

/// Splits `active` by CPU time, where `machine_busy` is the CPU time the whole machine was busy
/// over the same interval (zero when unknown: then the agents are all there is). The agents get
/// `active * sum(cpu) / max(sum(cpu), machine_busy)` between them, in proportion to their CPU
/// time; entries with zero CPU time get zero. If nobody used the CPU, every share is zero and
/// the caller books the energy to the house.
pub fn attribute(
    active: MicroJoules,
    cpu: &[(AgentId, Nanos)],
    machine_busy: Nanos,
) -> Vec<(AgentId, MicroJoules)> {
    let weights: Vec<(AgentId, u64)> = cpu.iter().map(|(a, t)| (*a, t.0)).collect();
    let agents: u128 = weights.iter().map(|(_, w)| u128::from(*w)).sum();
    let whole = agents.max(u128::from(machine_busy.0));
    // At most `active`, so it fits in u64.
    let theirs = match whole {
        0 => 0,
        w => u64::try_from(u128::from(active.0) * agents / w).unwrap_or(active.0),
    };
    split(theirs, &weights)
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
        let three = [
            (AgentId(0), Nanos(1)),
            (AgentId(1), Nanos(1)),
            (AgentId(2), Nanos(1)),
        ];
        let got = attribute(MicroJoules(100), &three, Nanos(0));
        let sums: Vec<u64> = got.iter().map(|(_, e)| e.0).collect();
        assert_eq!(sums, vec![34, 33, 33]);
        let idle = attribute(MicroJoules(100), &[(AgentId(0), Nanos(0))], Nanos(0));
        assert_eq!(idle, vec![(AgentId(0), MicroJoules(0))]);
        // The machine was busy for longer than the agents: they pay only their part.
        let got = attribute(MicroJoules(100), &three, Nanos(6));
        let sums: Vec<u64> = got.iter().map(|(_, e)| e.0).collect();
        assert_eq!(sums, vec![17, 17, 16]);
        // A machine figure below the agents' own (it is sampled more coarsely) changes nothing.
        assert_eq!(
            attribute(MicroJoules(100), &three, Nanos(2)),
            attribute(MicroJoules(100), &three, Nanos(0))
        );
    }

    proptest! {
        #[test]
        fn shares_sum_exactly(active in 0u64..u64::MAX / 4, cpu in prop::collection::vec(0u64..1_000_000_000, 1..50)) {
            let cpu: Vec<(AgentId, Nanos)> = cpu.into_iter().enumerate().map(|(i, t)| (AgentId(i as u32), Nanos(t))).collect();
            let got = attribute(MicroJoules(active), &cpu, Nanos(0));
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
