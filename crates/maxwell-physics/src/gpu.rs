//! NVIDIA GPUs through NVML: energy counter, power and temperature.
//!
//! Behind the cargo feature `nvml`. The library (`libnvidia-ml.so.1`) is loaded at run time by
//! `nvml-wrapper`, so a binary built with the feature starts on any machine and, where there is
//! no NVIDIA driver, reports why the GPU source is not used instead of failing. Without the
//! feature the candidate is still listed, with the flag that enables it.
//!
//! GPU energy is reported beside the CPU's and not mixed into it: agents are attributed CPU
//! energy by CPU time, and a GPU's energy would need a GPU-time share that Maxwell does not yet
//! meter (see ARCHITECTURE.md).

use serde::Serialize;

use maxwell_core::{MicroJoules, MilliCelsius, MilliWatts, Nanos};

/// One sample summed over every GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GpuReading {
    /// Energy of all GPUs since the previous sample.
    pub energy: MicroJoules,
    /// Their summed average power over the interval.
    pub power: MilliWatts,
    /// The hottest GPU's die temperature.
    pub temperature: MilliCelsius,
    /// Number of GPUs read.
    pub devices: u32,
}

/// Turns NVML's cumulative per-device energy counter (millijoules since the driver loaded) into
/// deltas. The counter is 64-bit and does not wrap; it restarts from zero when the driver
/// reloads, which shows as a backwards step: that interval counts from zero.
#[derive(Debug, Clone, Default)]
pub struct GpuCounter {
    last_mj: Option<u64>,
}

impl GpuCounter {
    /// Energy since the previous call; zero on the first.
    pub fn delta(&mut self, now_mj: u64) -> MicroJoules {
        let d = match self.last_mj {
            None => 0,
            Some(last) if now_mj >= last => now_mj - last,
            Some(_) => now_mj,
        };
        self.last_mj = Some(now_mj);
        MicroJoules(d.saturating_mul(1000))
    }
}

/// Sums per-device samples: energies and powers add, the temperature is the hottest.
pub fn combine(samples: &[(MicroJoules, MilliCelsius)], dt: Nanos) -> GpuReading {
    let energy = MicroJoules(samples.iter().map(|s| s.0.0).sum());
    GpuReading {
        energy,
        power: energy.per(dt),
        temperature: samples.iter().map(|s| s.1).max().unwrap_or(MilliCelsius(0)),
        devices: samples.len() as u32,
    }
}

#[cfg(feature = "nvml")]
mod imp {
    use super::{GpuCounter, GpuReading, combine};
    use maxwell_core::{MilliCelsius, Nanos};
    use nvml_wrapper::Nvml;
    use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
    use nvml_wrapper::error::NvmlError;

    /// Every NVIDIA GPU that has an energy counter.
    pub struct Gpus {
        nvml: Nvml,
        devices: Vec<(u32, GpuCounter)>,
        /// Device names, for the report.
        pub names: Vec<String>,
    }

    fn explain(e: &NvmlError) -> String {
        match e {
            NvmlError::LibloadingError(le) => format!(
                "libnvidia-ml.so could not be loaded ({le}); install the NVIDIA driver to read GPUs"
            ),
            NvmlError::DriverNotLoaded => "the NVIDIA kernel driver is not loaded".into(),
            NvmlError::NoPermission => {
                "NVML refused access (permission denied); run as root or in the video group".into()
            }
            other => format!("NVML: {other}"),
        }
    }

    impl Gpus {
        /// Loads NVML and finds the GPUs with an energy counter (Volta and later).
        pub fn open() -> Result<Gpus, String> {
            let nvml = Nvml::init().map_err(|e| explain(&e))?;
            let count = nvml.device_count().map_err(|e| explain(&e))?;
            let mut devices = Vec::new();
            let mut names = Vec::new();
            let mut skipped = Vec::new();
            for i in 0..count {
                let dev = nvml.device_by_index(i).map_err(|e| explain(&e))?;
                let name = dev.name().unwrap_or_else(|_| format!("gpu{i}"));
                match dev.total_energy_consumption() {
                    Ok(mj) => {
                        let mut c = GpuCounter::default();
                        c.delta(mj);
                        devices.push((i, c));
                        names.push(name);
                    }
                    Err(e) => skipped.push(format!("{name}: {}", explain(&e))),
                }
            }
            if devices.is_empty() {
                return Err(if count == 0 {
                    "NVML loaded but found no GPU".into()
                } else {
                    format!("no GPU with an energy counter ({})", skipped.join("; "))
                });
            }
            Ok(Gpus {
                nvml,
                devices,
                names,
            })
        }

        /// Reads every GPU.
        pub fn sample(&mut self, dt: Nanos) -> Result<GpuReading, String> {
            let mut samples = Vec::with_capacity(self.devices.len());
            for (i, counter) in &mut self.devices {
                let dev = self.nvml.device_by_index(*i).map_err(|e| explain(&e))?;
                let mj = dev.total_energy_consumption().map_err(|e| explain(&e))?;
                let t = dev
                    .temperature(TemperatureSensor::Gpu)
                    .map_err(|e| explain(&e))?;
                samples.push((
                    counter.delta(mj),
                    MilliCelsius(
                        i32::try_from(t)
                            .unwrap_or(i32::MAX / 1000)
                            .saturating_mul(1000),
                    ),
                ));
            }
            Ok(combine(&samples, dt))
        }
    }
}

#[cfg(not(feature = "nvml"))]
mod imp {
    use super::GpuReading;
    use maxwell_core::Nanos;

    /// Stand-in when built without NVML: never opens.
    pub struct Gpus {
        /// Device names, for the report.
        pub names: Vec<String>,
    }

    impl Gpus {
        /// Always refuses, naming the feature that enables GPUs.
        pub fn open() -> Result<Gpus, String> {
            Err("not built with GPU support (build with `--features maxwell-physics/nvml`)".into())
        }

        /// Unreachable: `open` never succeeds.
        pub fn sample(&mut self, _dt: Nanos) -> Result<GpuReading, String> {
            Err("not built with GPU support".into())
        }
    }
}

pub use imp::Gpus;
