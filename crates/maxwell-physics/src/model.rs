//! The model for machines that hide their physics (VMs, locked-down laptops): power from CPU
//! utilisation, `idle + active_per_core * busy_cores`, and die temperature from the RC thermal
//! model driven by that power. Every output built on it says `modelled` and shows these
//! parameters.

use std::path::{Path, PathBuf};

use serde::Serialize;

use maxwell_core::thermal::{RcParams, ThermalRc};
use maxwell_core::{MicroJoules, MilliCelsius, MilliWatts, Nanos};

use crate::fs::{SensorReadError, read_text};

/// Parameters of the model. Defaults describe a small server core: 10 W idle, 15 W per busy
/// core, 1.5 K/W to a 25 C ambient with a 1 s time constant.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModelParams {
    /// Power with every core idle.
    pub idle: MilliWatts,
    /// Power each fully busy core adds.
    pub active_per_core: MilliWatts,
    /// The thermal circuit.
    pub rc: RcParams,
}

impl Default for ModelParams {
    fn default() -> Self {
        ModelParams {
            idle: MilliWatts(10_000),
            active_per_core: MilliWatts(15_000),
            rc: RcParams {
                r_k_per_w: 1.5,
                tau_s: 1.0,
                ambient: MilliCelsius(25_000),
            },
        }
    }
}

/// CPU time counters from `/proc/stat`, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes {
    /// Busy ticks (user, nice, system, irq, softirq, steal).
    pub busy: u64,
    /// All ticks.
    pub total: u64,
    /// Number of CPUs.
    pub n_cpus: u32,
}

/// Reads the aggregate `cpu` line of `root/proc/stat`.
pub fn read_cpu_times(root: &Path) -> Result<CpuTimes, SensorReadError> {
    let path = root.join("proc/stat");
    let text = read_text(&path, "run as root")?;
    let garbage = |content: &str| SensorReadError::Garbage {
        path: path.clone(),
        content: content.chars().take(40).collect(),
        expected: "a `cpu` line of numbers",
    };
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| garbage(&text))?;
    let nums: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| garbage(line))?;
    if nums.len() < 4 {
        return Err(garbage(line));
    }
    let total: u64 = nums.iter().take(8).sum();
    let idle = nums[3] + nums.get(4).copied().unwrap_or(0);
    let n_cpus = text
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count() as u32;
    Ok(CpuTimes {
        busy: total.saturating_sub(idle),
        total,
        n_cpus: n_cpus.max(1),
    })
}

/// The modelled machine: reads utilisation, integrates power into energy and temperature.
#[derive(Debug, Clone)]
pub struct Model {
    root: PathBuf,
    params: ModelParams,
    thermal: ThermalRc,
    last: CpuTimes,
    last_power: MilliWatts,
    /// Busy cores at the last read of `/proc/stat`.
    last_busy: f64,
    /// Time since `/proc/stat` was last read.
    since_read: Nanos,
}

/// `/proc/stat` counts in clock ticks (usually 100 Hz), so reading it every 10 ms tick sees
/// mostly zeros and ones; the model reads it at most this often and holds the power in between
/// (a lag far below the thermal time constant).
pub const READ_EVERY: Nanos = Nanos(50_000_000);

impl Model {
    /// Starts the model at the steady state of the current utilisation's idle power.
    pub fn open(root: &Path, params: ModelParams) -> Result<Model, SensorReadError> {
        let last = read_cpu_times(root)?;
        Ok(Model {
            root: root.to_owned(),
            params,
            thermal: ThermalRc::new(params.rc, params.rc.steady_state(params.idle)),
            last,
            last_power: params.idle,
            last_busy: 0.0,
            since_read: Nanos(0),
        })
    }

    /// The parameters.
    pub fn params(&self) -> &ModelParams {
        &self.params
    }

    /// Power for a utilisation: `idle + active_per_core * busy_cores`.
    pub fn power_for(&self, busy_cores: f64) -> MilliWatts {
        MilliWatts(
            self.params.idle.0
                + (self.params.active_per_core.0 as f64 * busy_cores.max(0.0)).round() as u64,
        )
    }

    /// Advances by `dt`: reads utilisation since the last step and returns the modelled energy
    /// over `dt`. Updates the modelled temperature.
    pub fn step(&mut self, dt: Nanos) -> Result<MicroJoules, SensorReadError> {
        self.since_read = Nanos(self.since_read.0.saturating_add(dt.0));
        if self.since_read < READ_EVERY {
            let power = self.last_power;
            self.thermal.step(power, dt);
            return Ok(power.over(dt));
        }
        self.since_read = Nanos(0);
        let now = read_cpu_times(&self.root)?;
        let total = now.total.saturating_sub(self.last.total);
        let busy = now.busy.saturating_sub(self.last.busy);
        let busy_cores = if total == 0 {
            0.0
        } else {
            busy as f64 / total as f64 * f64::from(now.n_cpus)
        };
        self.last = now;
        self.last_busy = busy_cores;
        let power = self.power_for(busy_cores);
        self.last_power = power;
        self.thermal.step(power, dt);
        Ok(power.over(dt))
    }

    /// The modelled die temperature.
    pub fn temperature(&self) -> MilliCelsius {
        self.thermal.temperature()
    }

    /// How many cores the whole machine kept busy at the last read of `/proc/stat` (every
    /// process, not only agents).
    pub fn busy_cores(&self) -> f64 {
        self.last_busy
    }

    /// The last modelled power.
    pub fn power(&self) -> MilliWatts {
        self.last_power
    }
}

impl Model {
    /// A model with no utilisation source: it stays at idle power.
    pub fn idle_only(params: ModelParams) -> Model {
        Model {
            root: PathBuf::from("/nonexistent"),
            params,
            thermal: ThermalRc::new(params.rc, params.rc.steady_state(params.idle)),
            last: CpuTimes::default(),
            last_power: params.idle,
            last_busy: 0.0,
            since_read: Nanos(0),
        }
    }
}
