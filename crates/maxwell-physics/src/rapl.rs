//! Powercap RAPL: `/sys/class/powercap/intel-rapl:*` zones and subzones (Intel, and AMD on recent
//! kernels, which exposes its RAPL through the same driver and names).
//!
//! Each zone has `name` (`package-0`, `core`, `uncore`, `dram`, `psys`), `energy_uj` (a counter
//! that wraps at `max_energy_range_uj`) and subzones `intel-rapl:N:M`. Machine energy is the sum
//! of the package zones, or `psys` (the whole platform) where the firmware offers it.

use std::path::{Path, PathBuf};

use maxwell_core::MicroJoules;

use crate::fs::{SensorReadError, entries, read_int, read_text};

const ENERGY_HINT: &str =
    "energy_uj is readable only by root since Linux 5.10 (CVE-2020-8694): run as root";

/// Turns raw readings of a wrapping counter into monotonic deltas.
///
/// The counter counts up to `max_range` and wraps to zero. Between two readings at most one wrap
/// is assumed (at 10 ms ticks a wrap takes minutes to hours), so a smaller reading means a wrap:
/// `delta = max_range - last + raw`. A reading above the range is refused as garbage.
#[derive(Debug, Clone)]
pub struct RaplCounter {
    max_range: u64,
    last: Option<u64>,
}

impl RaplCounter {
    /// A counter that wraps at `max_range` (from `max_energy_range_uj`).
    pub fn new(max_range: u64) -> RaplCounter {
        RaplCounter {
            max_range,
            last: None,
        }
    }

    /// Feeds a raw reading; returns the energy since the previous one (zero for the first).
    /// `None` if the reading exceeds the range (garbage; the previous reading is kept).
    pub fn update(&mut self, raw: u64) -> Option<MicroJoules> {
        if self.max_range > 0 && raw > self.max_range {
            return None;
        }
        let delta = match self.last {
            None => 0,
            Some(last) if raw >= last => raw - last,
            Some(last) => self.max_range.saturating_sub(last).saturating_add(raw),
        };
        self.last = Some(raw);
        Some(MicroJoules(delta))
    }
}

/// One powercap zone.
#[derive(Debug, Clone)]
pub struct RaplZone {
    /// Directory of the zone.
    pub path: PathBuf,
    /// Its `name` (`package-0`, `dram`, ...).
    pub name: String,
    counter: RaplCounter,
}

impl RaplZone {
    fn open(path: &Path) -> Result<RaplZone, SensorReadError> {
        let name = read_text(&path.join("name"), "run as root")?;
        let max = read_int::<u64>(
            &path.join("max_energy_range_uj"),
            ENERGY_HINT,
            "a number of microjoules",
        )?;
        Ok(RaplZone {
            path: path.to_owned(),
            name,
            counter: RaplCounter::new(max),
        })
    }

    /// Reads `energy_uj` and returns the energy since the last read.
    pub fn read_delta(&mut self) -> Result<MicroJoules, SensorReadError> {
        let file = self.path.join("energy_uj");
        let raw = read_int::<u64>(&file, ENERGY_HINT, "a number of microjoules")?;
        self.counter
            .update(raw)
            .ok_or_else(|| SensorReadError::Garbage {
                path: file,
                content: raw.to_string(),
                expected: "a value within max_energy_range_uj",
            })
    }
}

/// Machine energy from powercap: psys if present, else the sum of the package zones.
#[derive(Debug, Clone)]
pub struct Powercap {
    zones: Vec<RaplZone>,
    /// Every zone and subzone found, as `name (dir)`, for reports.
    pub found: Vec<String>,
}

impl Powercap {
    /// Finds the zones under `root/sys/class/powercap` and takes a first reading of each.
    pub fn open(root: &Path) -> Result<Powercap, SensorReadError> {
        let base = root.join("sys/class/powercap");
        let top = entries(&base, "intel-rapl:")?;
        if top.is_empty() {
            return Err(SensorReadError::Absent(base.join("intel-rapl:*")));
        }
        let mut all = Vec::new();
        for dir in &top {
            all.push(RaplZone::open(dir)?);
        }
        let found = all
            .iter()
            .map(|z| {
                format!(
                    "{} ({})",
                    z.name,
                    z.path.file_name().unwrap_or_default().to_string_lossy()
                )
            })
            .collect();
        // Top-level zones are `intel-rapl:N`; subzones `intel-rapl:N:M` have two colons.
        let is_top = |z: &RaplZone| {
            z.path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().matches(':').count() == 1)
        };
        let psys: Vec<RaplZone> = all
            .iter()
            .filter(|z| is_top(z) && z.name == "psys")
            .cloned()
            .collect();
        let zones = if psys.is_empty() {
            all.into_iter()
                .filter(|z| is_top(z) && z.name.starts_with("package"))
                .collect::<Vec<_>>()
        } else {
            psys
        };
        if zones.is_empty() {
            return Err(SensorReadError::Absent(
                base.join("intel-rapl:*/name = package-*"),
            ));
        }
        let mut p = Powercap { zones, found };
        p.read_delta()?;
        Ok(p)
    }

    /// Energy of the chosen zones since the last read.
    pub fn read_delta(&mut self) -> Result<MicroJoules, SensorReadError> {
        let mut sum = MicroJoules(0);
        for z in &mut self.zones {
            sum = sum.saturating_add(z.read_delta()?);
        }
        Ok(sum)
    }

    /// Names of the zones summed.
    pub fn zone_names(&self) -> Vec<String> {
        self.zones.iter().map(|z| z.name.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn wraparound_is_corrected() {
        let mut c = RaplCounter::new(1_000);
        assert_eq!(c.update(900), Some(MicroJoules(0)));
        assert_eq!(c.update(950), Some(MicroJoules(50)));
        assert_eq!(
            c.update(20),
            Some(MicroJoules(70)),
            "wrapped: 50 to the top, 20 after"
        );
        assert_eq!(c.update(1_001), None, "above the range is garbage");
        assert_eq!(
            c.update(30),
            Some(MicroJoules(10)),
            "the garbage did not move the counter"
        );
    }

    proptest! {
        /// Any sequence of increments below the range sums exactly through wraps.
        #[test]
        fn deltas_sum_to_the_true_energy(start in 0u64..1_000, steps in prop::collection::vec(0u64..999, 0..100)) {
            let range = 1_000u64;
            let mut c = RaplCounter::new(range);
            let mut raw = start;
            c.update(raw);
            let (mut total, mut truth) = (0u64, 0u64);
            for s in steps {
                raw = (raw + s) % range;
                truth += s;
                total += c.update(raw).unwrap().0;
            }
            prop_assert_eq!(total, truth);
        }
    }
}
