//! # maxwell-physics: what the machine's physics is, wherever the hardware tells
//!
//! Readers for energy and die temperature, each taking its root directory as a parameter (`/` on
//! a host, a fixture tree in tests) and answering "not available: why" instead of failing:
//!
//! - [`rapl`]: powercap RAPL zones, with counter wraparound corrected ([`rapl::RaplCounter`]);
//! - [`msr`]: `/dev/cpu/N/msr` (Intel and AMD energy registers, Intel die temperature);
//! - [`temp`]: hwmon chips (coretemp, k10temp, zenpower, ...) and thermal zones;
//! - [`model`]: power from CPU utilisation and temperature from the RC model, for machines that
//!   hide their physics; always labelled `modelled`;
//! - [`select`]: [`Physics`], which picks the best energy and the best temperature source
//!   independently, reports every candidate with its reason, and falls back to the model if a
//!   source fails mid-run.
//!
//! Energy is attributed to agents by CPU time with [`maxwell_core::energy::attribute`]. Agents
//! never see raw readings (the PLATYPUS side channel); they see prices.
//!
//! - [`gpu`]: NVIDIA GPUs through NVML, behind the cargo feature `nvml` (loaded at run time).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod fs;
pub mod gpu;
pub mod model;
pub mod msr;
pub mod rapl;
pub mod select;
pub mod temp;

pub use fs::SensorReadError;
pub use model::ModelParams;
pub use select::{Candidate, Chosen, Physics, Reading};

#[cfg(test)]
mod tests;
