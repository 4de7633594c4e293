//! Choosing the best source for energy and the best for temperature, independently, and saying
//! why every other candidate was not used. A source that fails mid-run is dropped for the model,
//! with the reason recorded: the daemon keeps going.

use std::path::{Path, PathBuf};

use serde::Serialize;

use maxwell_core::{MicroJoules, MilliCelsius, MilliWatts, Nanos};

use crate::fs::SensorReadError;
use crate::gpu::{GpuReading, Gpus};
use crate::model::{Model, ModelParams};
use crate::msr::Msr;
use crate::rapl::Powercap;
use crate::temp::{TempFile, find_hwmon, find_thermal_zone};

enum EnergyReader {
    Powercap(Powercap),
    Msr(Msr),
    Model,
}

enum TempReader {
    File(TempFile),
    Msr(Msr),
    Model,
}

/// One candidate source and why it is or is not used.
#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    /// Source name: `powercap`, `msr`, `hwmon`, `thermal_zone`, `nvml`, `model`.
    pub name: &'static str,
    /// `energy`, `temperature` or `gpu`.
    pub quantity: &'static str,
    /// Whether it could be read.
    pub available: bool,
    /// What was found, or why it cannot be used.
    pub reason: String,
}

/// The source chosen for one quantity.
#[derive(Debug, Clone, Serialize)]
pub struct Chosen {
    /// Source name.
    pub source: &'static str,
    /// True when the value comes from the model, not from hardware.
    pub modelled: bool,
    /// What exactly is read.
    pub detail: String,
}

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Reading {
    /// Energy since the previous sample.
    pub energy: MicroJoules,
    /// Average power over the interval.
    pub power: MilliWatts,
    /// Die temperature now.
    pub temperature: MilliCelsius,
    /// Energy came from the model.
    pub energy_modelled: bool,
    /// Temperature came from the model.
    pub temperature_modelled: bool,
    /// NVIDIA GPUs, reported beside the CPU (not included in `energy`), when NVML is in use.
    pub gpu: Option<GpuReading>,
}

/// The machine's physics, from the best sources available.
pub struct Physics {
    energy: EnergyReader,
    temp: TempReader,
    model: Model,
    candidates: Vec<Candidate>,
    energy_chosen: Chosen,
    temp_chosen: Chosen,
    gpus: Option<Gpus>,
    /// Sources dropped mid-run, and why.
    pub fallbacks: Vec<String>,
}

fn unavailable(name: &'static str, quantity: &'static str, e: &SensorReadError) -> Candidate {
    let hint = match (e, name) {
        (SensorReadError::Absent(_), "powercap") => {
            "; no RAPL driver here (VMs hide it; on bare metal `modprobe intel_rapl_msr`)"
        }
        (SensorReadError::Absent(_), "msr") => {
            "; no MSR device (as root `modprobe msr`; hypervisors do not pass MSRs through)"
        }
        (SensorReadError::Absent(_), "hwmon") => "; no hwmon CPU driver (coretemp, k10temp) here",
        (SensorReadError::Absent(_), "thermal_zone") => "; no thermal zone driver here",
        _ => "",
    };
    Candidate {
        name,
        quantity,
        available: false,
        reason: format!("{e}{hint}"),
    }
}

impl Physics {
    /// Probes every source under `root` (`/` on a real host; a fixture tree in tests). Never
    /// fails: where nothing real exists the model is used, and says so.
    pub fn open(root: &Path, params: ModelParams) -> Physics {
        let mut candidates = Vec::new();
        let model = Model::open(root, params).unwrap_or_else(|e| {
            candidates.push(unavailable("model utilisation", "energy", &e));
            // Without /proc/stat the model still runs, at idle power.
            Model::open(Path::new("/"), params).unwrap_or_else(|_| Model::idle_only(params))
        });

        let mut energy = None;
        match Powercap::open(root) {
            Ok(p) => {
                candidates.push(Candidate {
                    name: "powercap",
                    quantity: "energy",
                    available: true,
                    reason: format!("zones: {}", p.found.join(", ")),
                });
                let detail = format!("powercap RAPL, sum of {}", p.zone_names().join(" + "));
                energy = Some((
                    EnergyReader::Powercap(p),
                    Chosen {
                        source: "powercap",
                        modelled: false,
                        detail,
                    },
                ));
            }
            Err(e) => candidates.push(unavailable("powercap", "energy", &e)),
        }
        match Msr::open(root) {
            Ok(m) => {
                candidates.push(Candidate {
                    name: "msr",
                    quantity: "energy",
                    available: true,
                    reason: format!("{:?} package energy MSR", m.vendor()),
                });
                if energy.is_none() {
                    let detail = format!("{:?} package energy MSR on cpu 0", m.vendor());
                    energy = Some((
                        EnergyReader::Msr(m),
                        Chosen {
                            source: "msr",
                            modelled: false,
                            detail,
                        },
                    ));
                }
            }
            Err(e) => candidates.push(unavailable("msr", "energy", &e)),
        }

        let mut temp = None;
        for (name, found) in [
            ("hwmon", find_hwmon(root)),
            ("thermal_zone", find_thermal_zone(root)),
        ] {
            match found {
                Ok(f) => {
                    candidates.push(Candidate {
                        name,
                        quantity: "temperature",
                        available: true,
                        reason: f.label.clone(),
                    });
                    if temp.is_none() {
                        let detail = format!("{} ({})", f.label, f.path.display());
                        temp = Some((
                            TempReader::File(f),
                            Chosen {
                                source: name,
                                modelled: false,
                                detail,
                            },
                        ));
                    }
                }
                Err(e) => candidates.push(unavailable(name, "temperature", &e)),
            }
        }
        if temp.is_none() {
            match Msr::open(root).and_then(|m| m.temperature().map(|_| m)) {
                Ok(m) => {
                    candidates.push(Candidate {
                        name: "msr",
                        quantity: "temperature",
                        available: true,
                        reason: "IA32_THERM_STATUS".into(),
                    });
                    temp = Some((
                        TempReader::Msr(m),
                        Chosen {
                            source: "msr",
                            modelled: false,
                            detail: "IA32_THERM_STATUS and TjMax on cpu 0".into(),
                        },
                    ));
                }
                Err(e) => candidates.push(unavailable("msr", "temperature", &e)),
            }
        }

        let gpus = match Gpus::open() {
            Ok(g) => {
                candidates.push(Candidate {
                    name: "nvml",
                    quantity: "gpu",
                    available: true,
                    reason: format!("GPUs: {}", g.names.join(", ")),
                });
                Some(g)
            }
            Err(reason) => {
                candidates.push(Candidate {
                    name: "nvml",
                    quantity: "gpu",
                    available: false,
                    reason,
                });
                None
            }
        };

        let p = model.params();
        let model_detail = format!(
            "modelled: {} idle + {} per busy core; RC model R = {} K/W, tau = {} s, ambient {}",
            p.idle, p.active_per_core, p.rc.r_k_per_w, p.rc.tau_s, p.rc.ambient
        );
        let modelled = || Chosen {
            source: "model",
            modelled: true,
            detail: model_detail.clone(),
        };
        let (energy, energy_chosen) = energy.unwrap_or_else(|| (EnergyReader::Model, modelled()));
        let (temp, temp_chosen) = temp.unwrap_or_else(|| (TempReader::Model, modelled()));
        candidates.push(Candidate {
            name: "model",
            quantity: "energy",
            available: true,
            reason: model_detail.clone(),
        });
        candidates.push(Candidate {
            name: "model",
            quantity: "temperature",
            available: true,
            reason: model_detail.clone(),
        });
        Physics {
            energy,
            temp,
            model,
            candidates,
            energy_chosen,
            temp_chosen,
            gpus,
            fallbacks: Vec::new(),
        }
    }

    /// Every candidate considered.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// The energy source in use.
    pub fn energy_source(&self) -> &Chosen {
        &self.energy_chosen
    }

    /// The temperature source in use.
    pub fn temperature_source(&self) -> &Chosen {
        &self.temp_chosen
    }

    /// Names of the GPUs read through NVML (empty without them).
    pub fn gpus(&self) -> &[String] {
        self.gpus.as_ref().map_or(&[], |g| &g.names)
    }

    /// The CPU time the whole machine was busy over `dt`, from `/proc/stat` (every process,
    /// averaged over the model's last read; zero where it cannot be read).
    pub fn machine_busy(&self, dt: Nanos) -> Nanos {
        Nanos((self.model.busy_cores() * dt.0 as f64) as u64)
    }

    /// The model's parameters.
    pub fn model_params(&self) -> &ModelParams {
        self.model.params()
    }

    fn fall_back(&mut self, quantity: &str, e: &SensorReadError) {
        self.fallbacks.push(format!(
            "{quantity}: {} failed ({e}); using the model",
            match quantity {
                "energy" => self.energy_chosen.source,
                _ => self.temp_chosen.source,
            }
        ));
        let p = self.model.params();
        let chosen = Chosen {
            source: "model",
            modelled: true,
            detail: format!(
                "modelled after a failure: {} idle + {} per busy core",
                p.idle, p.active_per_core
            ),
        };
        if quantity == "energy" {
            self.energy = EnergyReader::Model;
            self.energy_chosen = chosen;
        } else {
            self.temp = TempReader::Model;
            self.temp_chosen = chosen;
        }
    }

    /// Takes a sample `dt` after the previous one.
    pub fn sample(&mut self, dt: Nanos) -> Reading {
        // The model always advances, so that a fallback starts from a warm state.
        let modelled_energy = self
            .model
            .step(dt)
            .unwrap_or_else(|_| self.model.power().over(dt));
        let real = match &mut self.energy {
            EnergyReader::Powercap(p) => Some(p.read_delta()),
            EnergyReader::Msr(m) => Some(m.read_delta()),
            EnergyReader::Model => None,
        };
        let energy = match real {
            Some(Ok(e)) => e,
            Some(Err(e)) => {
                self.fall_back("energy", &e);
                modelled_energy
            }
            None => modelled_energy,
        };
        let real_temp = match &self.temp {
            TempReader::File(f) => Some(f.read()),
            TempReader::Msr(m) => Some(m.temperature()),
            TempReader::Model => None,
        };
        let temperature = match real_temp {
            Some(Ok(t)) => t,
            Some(Err(e)) => {
                self.fall_back("temperature", &e);
                self.model.temperature()
            }
            None => self.model.temperature(),
        };
        let gpu = match self.gpus.as_mut().map(|g| g.sample(dt)) {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                self.fallbacks
                    .push(format!("gpu: nvml failed ({e}); GPUs no longer read"));
                self.gpus = None;
                None
            }
            None => None,
        };
        Reading {
            energy,
            power: energy.per(dt),
            temperature,
            energy_modelled: self.energy_chosen.modelled,
            temperature_modelled: self.temp_chosen.modelled,
            gpu,
        }
    }
}

/// Where to look for sensors: `/` unless told otherwise.
pub fn default_root() -> PathBuf {
    PathBuf::from("/")
}
