//! The syscall audit's time series: per agent, the calls of each class in every sampling
//! interval (one second), the most recent [`SAMPLES_KEPT`] intervals, for the API (`GET
//! /v1/agents/{name}/syscalls`), `/metrics` and the verification work that fingerprints what an
//! agent really does. Sampling reads each live agent's kernel map once per interval on the
//! tick thread; the views are built from the samples, never from the kernel.

use std::collections::{BTreeMap, VecDeque};

use maxwell_sandbox::{CallCounts, SyscallClass};
use serde::{Deserialize, Serialize};

/// Ticks between two samples (one second at the default 10 ms tick).
pub const SAMPLE_TICKS: u64 = 100;
/// Samples kept per agent (ten minutes at one a second).
pub const SAMPLES_KEPT: usize = 600;
/// Syscalls named in an agent's summary, most frequent first.
const TOP: usize = 10;

/// An agent's syscalls so far, in `GET /v1/agents` and `/v1/agents/{name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallSummary {
    /// Every call since the agent started.
    pub total: u64,
    /// Calls per class (memory, file, network, process, sync, time, privileged, other).
    pub by_class: BTreeMap<String, u64>,
    /// The most frequent syscalls: (name, calls).
    pub top: Vec<(String, u64)>,
    /// The syscalls on its deny list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// The forbidden syscall it made, if it made one (it was killed for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<String>,
    /// The tick of the last sample.
    pub sampled_tick: u64,
}

/// One interval of `GET /v1/agents/{name}/syscalls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// The tick that ended the interval.
    pub tick: u64,
    /// Calls per class in the interval (classes without calls are left out).
    pub calls: BTreeMap<String, u64>,
}

/// `GET /v1/agents/{name}/syscalls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesView {
    /// The agent.
    pub name: String,
    /// Ticks per sample.
    pub sample_ticks: u64,
    /// Totals so far.
    pub summary: SyscallSummary,
    /// The most recent intervals, oldest first.
    pub samples: Vec<Sample>,
}

/// One agent's series.
#[derive(Debug, Default)]
pub struct Series {
    last: [u64; 8],
    samples: VecDeque<(u64, [u64; 8])>,
    summary: SyscallSummary,
}

fn labelled(counts: &[u64; 8], skip_zero: bool) -> BTreeMap<String, u64> {
    SyscallClass::ALL
        .iter()
        .zip(counts)
        .filter(|(_, n)| !skip_zero || **n > 0)
        .map(|(c, n)| (c.label().to_string(), *n))
        .collect()
}

impl Series {
    /// Adds the counts read at `tick` (cumulative since the agent started).
    pub fn push(&mut self, tick: u64, counts: &CallCounts, deny: &[String]) {
        let now = counts.by_class().map(|(_, n)| n);
        let mut delta = [0u64; 8];
        for (d, (n, l)) in delta.iter_mut().zip(now.iter().zip(&self.last)) {
            *d = n.saturating_sub(*l);
        }
        self.last = now;
        if self.samples.len() >= SAMPLES_KEPT {
            self.samples.pop_front();
        }
        self.samples.push_back((tick, delta));
        self.summary = SyscallSummary {
            total: counts.total(),
            by_class: labelled(&now, false),
            top: counts.top(TOP),
            deny: deny.to_vec(),
            denied: counts.denied.map(maxwell_ebpf_name),
            sampled_tick: tick,
        };
    }

    /// The totals.
    pub fn summary(&self) -> &SyscallSummary {
        &self.summary
    }

    /// The view for the API.
    pub fn view(&self, name: &str) -> SeriesView {
        SeriesView {
            name: name.to_string(),
            sample_ticks: SAMPLE_TICKS,
            summary: self.summary.clone(),
            samples: self
                .samples
                .iter()
                .map(|(tick, d)| Sample {
                    tick: *tick,
                    calls: labelled(d, true),
                })
                .collect(),
        }
    }
}

fn maxwell_ebpf_name(nr: usize) -> String {
    maxwell_sandbox::syscall_name(nr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_deltas_and_bounded() {
        let mut s = Series::default();
        let mut c = CallCounts::default();
        for i in 0..(SAMPLES_KEPT as u64 + 5) {
            c.counts[11] += 3; // munmap: memory
            c.counts[0] += 1; // read: file
            s.push(i * SAMPLE_TICKS, &c, &[]);
        }
        let v = s.view("a");
        assert_eq!(v.samples.len(), SAMPLES_KEPT);
        assert_eq!(v.samples[0].tick, 5 * SAMPLE_TICKS);
        assert_eq!(v.samples[3].calls["memory"], 3);
        assert_eq!(v.samples[3].calls["file"], 1);
        assert!(!v.samples[3].calls.contains_key("network"));
        assert_eq!(v.summary.by_class["memory"], 3 * (SAMPLES_KEPT as u64 + 5));
        assert_eq!(v.summary.top[0].0, "munmap");
    }
}
