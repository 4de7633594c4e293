//! `maxwell sensors` and `maxwell bench sensors`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use maxwell_core::Nanos;
use maxwell_physics::gpu::GpuReading;
use maxwell_physics::{Candidate, Chosen, ModelParams, Physics};

use crate::{Exit, write_out};

/// Arguments of `maxwell sensors`.
#[derive(Debug, Args)]
pub(crate) struct SensorsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Keep printing power and temperature every interval (Ctrl-C stops).
    #[arg(long)]
    watch: bool,
    /// Time between samples.
    #[arg(long, default_value = "1s", value_parser = parse_nanos)]
    interval: Nanos,
    /// Root of the filesystem to read sensors from (a fixture tree in tests).
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

fn parse_nanos(s: &str) -> Result<Nanos, String> {
    let n: Nanos = s.parse().map_err(|e| format!("{e}"))?;
    if n.0 == 0 {
        return Err("the interval must be longer than zero (e.g. 1s)".into());
    }
    Ok(n)
}

#[derive(Serialize)]
struct Report<'a> {
    energy: &'a Chosen,
    temperature: &'a Chosen,
    candidates: &'a [Candidate],
    model: &'a ModelParams,
    power_w: f64,
    temperature_c: f64,
    interval_s: f64,
    fallbacks: &'a [String],
    /// NVIDIA GPUs, when read (feature `nvml`); not included in `power_w`.
    gpu: Option<GpuReading>,
    /// How native agents' erasure is measured here.
    erasure: Erasure,
}

/// Whether the eBPF probes load (native agents' erasure measured, syscalls audited).
#[derive(Serialize)]
struct Erasure {
    probes: bool,
    detail: String,
}

fn erasure() -> Erasure {
    match maxwell_ebpf::check() {
        Ok(()) => Erasure {
            probes: true,
            detail: "eBPF tracepoints (munmap, madvise, brk, mremap; raw_syscalls for the audit) load and attach: native agents' erasure is measured, their syscalls counted and deny lists enforced".into(),
        },
        Err(e) => Erasure {
            probes: false,
            detail: format!("{e}; native agents' erasure falls back to the drop in resident memory, and syscall deny lists are refused"),
        },
    }
}

fn sample(p: &mut Physics, interval: Nanos) -> (f64, f64, Option<GpuReading>) {
    std::thread::sleep(Duration::from_nanos(interval.0));
    let r = p.sample(interval);
    (
        r.power.as_watts_f64(),
        r.temperature.as_celsius_f64(),
        r.gpu,
    )
}

fn gpu_text(g: Option<GpuReading>) -> String {
    g.map_or_else(String::new, |g| {
        format!(
            ", GPUs ({}): {:.1} W, hottest {:.1} C",
            g.devices,
            g.power.as_watts_f64(),
            g.temperature.as_celsius_f64()
        )
    })
}

fn label(c: &Chosen) -> &'static str {
    if c.modelled { " (modelled)" } else { "" }
}

/// Reports what was found and live readings.
pub(crate) fn sensors(a: &SensorsArgs) -> anyhow::Result<Exit> {
    let mut p = Physics::open(&a.root, ModelParams::default());
    let (power_w, temperature_c, gpu) = sample(&mut p, a.interval);
    if a.json {
        let report = Report {
            energy: p.energy_source(),
            temperature: p.temperature_source(),
            candidates: p.candidates(),
            model: p.model_params(),
            power_w,
            temperature_c,
            interval_s: a.interval.as_secs_f64(),
            fallbacks: &p.fallbacks,
            gpu,
            erasure: erasure(),
        };
        let mut text = serde_json::to_string_pretty(&report)?;
        text.push('\n');
        write_out(&text)?;
    } else {
        let mut text = String::from("Candidates:\n");
        for c in p.candidates() {
            text.push_str(&format!(
                "  {:<12} {:<11} {:<13} {}\n",
                c.name,
                c.quantity,
                if c.available {
                    "available"
                } else {
                    "not available"
                },
                c.reason
            ));
        }
        let er = erasure();
        text.push_str(&format!(
            "\nEnergy:      {}{}: {}\nTemperature: {}{}: {}\nErasure:     {}: {}\n\nNow: {:.1} W, {:.1} C{}\n",
            p.energy_source().source,
            label(p.energy_source()),
            p.energy_source().detail,
            p.temperature_source().source,
            label(p.temperature_source()),
            p.temperature_source().detail,
            if er.probes { "ebpf" } else { "estimate" },
            er.detail,
            power_w,
            temperature_c,
            gpu_text(gpu)
        ));
        write_out(&text)?;
    }
    if !a.watch {
        return Ok(Exit::Success);
    }
    loop {
        let (w, c, gpu) = sample(&mut p, a.interval);
        let line = if a.json {
            format!(
                "{{\"power_w\":{w:.3},\"temperature_c\":{c:.3},\"energy_modelled\":{},\"temperature_modelled\":{}}}\n",
                p.energy_source().modelled,
                p.temperature_source().modelled
            )
        } else {
            format!(
                "{w:>8.1} W {}{:>8.1} C {}{}\n",
                label(p.energy_source()),
                c,
                label(p.temperature_source()),
                gpu_text(gpu)
            )
        };
        write_out(&line)?;
    }
}

/// Arguments of `maxwell bench sensors`.
#[derive(Debug, Args)]
pub(crate) struct SensorsBenchArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Samples to time.
    #[arg(long, default_value_t = 5_000)]
    samples: u32,
    /// Root of the filesystem to read sensors from.
    #[arg(long, default_value = "/")]
    root: PathBuf,
}

#[derive(Serialize)]
struct BenchReport {
    energy_source: &'static str,
    temperature_source: &'static str,
    samples: u32,
    per_sample_us: f64,
    rate_hz: u32,
    overhead_pct_of_one_core: f64,
    target_pct: f64,
    met: bool,
}

/// Times sampling every chosen source and reports the cost at 100 Hz.
pub(crate) fn bench(a: &SensorsBenchArgs) -> anyhow::Result<Exit> {
    let mut p = Physics::open(&a.root, ModelParams::default());
    let n = a.samples.max(1);
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(p.sample(Nanos::from_millis(10)));
    }
    let per_sample_s = start.elapsed().as_secs_f64() / f64::from(n);
    let overhead = per_sample_s * 100.0 * 100.0;
    let report = BenchReport {
        energy_source: p.energy_source().source,
        temperature_source: p.temperature_source().source,
        samples: n,
        per_sample_us: per_sample_s * 1e6,
        rate_hz: 100,
        overhead_pct_of_one_core: overhead,
        target_pct: 0.5,
        met: overhead <= 0.5,
    };
    let text = if a.json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        format!(
            "Sampling energy ({}) and temperature ({}): {:.1} us per sample; at 100 Hz that is {:.3}% of one core (target <= 0.5%: {}).\n",
            report.energy_source,
            report.temperature_source,
            report.per_sample_us,
            report.overhead_pct_of_one_core,
            if report.met { "met" } else { "NOT MET" }
        )
    };
    write_out(&text)?;
    Ok(if report.met {
        Exit::Success
    } else {
        Exit::Failed
    })
}
