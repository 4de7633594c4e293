//! Die temperature from hwmon (`/sys/class/hwmon/hwmon*`) and thermal zones
//! (`/sys/class/thermal/thermal_zone*`).

use std::path::{Path, PathBuf};

use maxwell_core::MilliCelsius;

use crate::fs::{SensorReadError, entries, read_int, read_text};

/// hwmon chips that measure a CPU die, and the labels of their die sensor, best first.
const CPU_CHIPS: &[(&str, &[&str])] = &[
    ("coretemp", &["Package id 0", "Physical id 0"]),
    ("k10temp", &["Tctl", "Tdie"]),
    ("zenpower", &["Tdie", "Tctl"]),
    ("cpu_thermal", &[]),
    ("soc_thermal", &[]),
];

/// Thermal zone types that measure a CPU die, best first.
const CPU_ZONES: &[&str] = &[
    "x86_pkg_temp",
    "cpu-thermal",
    "cpu_thermal",
    "soc-thermal",
    "acpitz",
];

/// A file holding a temperature in millidegrees.
#[derive(Debug, Clone)]
pub struct TempFile {
    /// The file.
    pub path: PathBuf,
    /// Where it came from, in words (`k10temp Tctl`).
    pub label: String,
}

impl TempFile {
    /// Reads it.
    pub fn read(&self) -> Result<MilliCelsius, SensorReadError> {
        let v: i64 = read_int(&self.path, "run as root", "a temperature in millidegrees")?;
        // Plausibility: a die between -40 C and 150 C; anything else is a broken sensor.
        if !(-40_000..=150_000).contains(&v) {
            return Err(SensorReadError::Garbage {
                path: self.path.clone(),
                content: v.to_string(),
                expected: "a die temperature between -40 C and 150 C",
            });
        }
        Ok(MilliCelsius(v as i32))
    }
}

/// Finds the best CPU die sensor among hwmon chips under `root`.
pub fn find_hwmon(root: &Path) -> Result<TempFile, SensorReadError> {
    let base = root.join("sys/class/hwmon");
    let chips = entries(&base, "hwmon")?;
    let mut best: Option<(usize, usize, TempFile)> = None;
    let mut seen = Vec::new();
    for chip in chips {
        let Ok(name) = read_text(&chip.join("name"), "run as root") else {
            continue;
        };
        seen.push(name.clone());
        let Some(rank) = CPU_CHIPS.iter().position(|(n, _)| *n == name) else {
            continue;
        };
        let labels = CPU_CHIPS[rank].1;
        for input in entries(&chip, "temp")? {
            let file = input
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let Some(idx) = file.strip_suffix("_input") else {
                continue;
            };
            let label =
                read_text(&chip.join(format!("{idx}_label")), "run as root").unwrap_or_default();
            let label_rank = labels
                .iter()
                .position(|l| *l == label)
                .unwrap_or(labels.len());
            let candidate = TempFile {
                path: input.clone(),
                label: format!("{name} {}", if label.is_empty() { idx } else { &label }),
            };
            if best
                .as_ref()
                .is_none_or(|(r, lr, _)| (rank, label_rank) < (*r, *lr))
            {
                best = Some((rank, label_rank, candidate));
            }
        }
    }
    match best {
        Some((_, _, f)) => {
            f.read()?;
            Ok(f)
        }
        None if seen.is_empty() => Err(SensorReadError::Absent(base.join("hwmon*"))),
        None => Err(SensorReadError::Absent(base.join(format!(
            "hwmon* with a CPU chip (found only: {})",
            seen.join(", ")
        )))),
    }
}

/// Finds the best CPU thermal zone under `root`.
pub fn find_thermal_zone(root: &Path) -> Result<TempFile, SensorReadError> {
    let base = root.join("sys/class/thermal");
    let zones = entries(&base, "thermal_zone")?;
    let mut best: Option<(usize, TempFile)> = None;
    let mut seen = Vec::new();
    for z in zones {
        let Ok(kind) = read_text(&z.join("type"), "run as root") else {
            continue;
        };
        seen.push(kind.clone());
        let Some(rank) = CPU_ZONES.iter().position(|t| *t == kind) else {
            continue;
        };
        if best.as_ref().is_none_or(|(r, _)| rank < *r) {
            best = Some((
                rank,
                TempFile {
                    path: z.join("temp"),
                    label: format!(
                        "{} ({})",
                        kind,
                        z.file_name().unwrap_or_default().to_string_lossy()
                    ),
                },
            ));
        }
    }
    match best {
        Some((_, f)) => {
            f.read()?;
            Ok(f)
        }
        None if seen.is_empty() => Err(SensorReadError::Absent(base.join("thermal_zone*"))),
        None => Err(SensorReadError::Absent(base.join(format!(
            "thermal_zone* of a CPU type (found only: {})",
            seen.join(", ")
        )))),
    }
}
