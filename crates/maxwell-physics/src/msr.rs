//! Model-specific registers through `/dev/cpu/N/msr` (the `msr` kernel module; root).
//!
//! Intel: `0x606` RAPL units, `0x611` package energy, `0x19C` thermal status (degrees below
//! TjMax), `0x1A2` TjMax. AMD (family 17h and later): `0xC0010299` units, `0xC001029A` core
//! energy, `0xC001029B` package energy; AMD has no die temperature MSR (use k10temp).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use maxwell_core::{MicroJoules, MilliCelsius};

use crate::fs::{SensorReadError, classify, read_text};
use crate::rapl::RaplCounter;

const MSR_HINT: &str = "the msr device is root-only: run as root (and `modprobe msr`)";

/// The CPU vendor, from `/proc/cpuinfo`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD or HygonGenuine.
    Amd,
}

/// Registers by vendor.
#[derive(Debug, Clone, Copy)]
struct Registers {
    units: u64,
    package_energy: u64,
}

impl Vendor {
    fn registers(self) -> Registers {
        match self {
            Vendor::Intel => Registers {
                units: 0x606,
                package_energy: 0x611,
            },
            Vendor::Amd => Registers {
                units: 0xC001_0299,
                package_energy: 0xC001_029B,
            },
        }
    }
}

/// Reads the vendor from `root/proc/cpuinfo`.
pub fn vendor(root: &Path) -> Result<Vendor, SensorReadError> {
    let path = root.join("proc/cpuinfo");
    let text = read_text(&path, "run as root")?;
    let id = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("vendor_id")
                .map(|r| r.trim_start_matches([' ', '\t', ':']))
        })
        .unwrap_or_default();
    match id {
        "GenuineIntel" => Ok(Vendor::Intel),
        "AuthenticAMD" | "HygonGenuine" => Ok(Vendor::Amd),
        other => Err(SensorReadError::Garbage {
            path,
            content: other.chars().take(40).collect(),
            expected: "vendor_id GenuineIntel or AuthenticAMD",
        }),
    }
}

/// One CPU's MSR device.
#[derive(Debug)]
pub struct Msr {
    path: PathBuf,
    file: File,
    vendor: Vendor,
    /// Joules per count, as `1 / 2^esu`.
    energy_unit_exp: u32,
    counter: RaplCounter,
}

impl Msr {
    /// Opens `root/dev/cpu/0/msr` and reads the energy unit.
    pub fn open(root: &Path) -> Result<Msr, SensorReadError> {
        let mut msr = Msr::open_device(root.join("dev/cpu/0/msr"), vendor(root)?)?;
        msr.read_delta()?;
        Ok(msr)
    }

    /// Opens one CPU's device and reads its energy unit.
    fn open_device(path: PathBuf, vendor: Vendor) -> Result<Msr, SensorReadError> {
        let file = File::open(&path).map_err(|e| classify(&path, &e, MSR_HINT))?;
        let mut msr = Msr {
            path,
            file,
            vendor,
            energy_unit_exp: 0,
            // The registers' low 32 bits count modulo 2^32.
            counter: RaplCounter::new(1 << 32),
        };
        let units = msr.read(vendor.registers().units)?;
        // Bits 12:8: energy status units, 1 / 2^ESU joules.
        msr.energy_unit_exp = ((units >> 8) & 0x1f) as u32;
        Ok(msr)
    }

    /// The vendor.
    pub fn vendor(&self) -> Vendor {
        self.vendor
    }

    fn read(&self, register: u64) -> Result<u64, SensorReadError> {
        let mut buf = [0u8; 8];
        self.file
            .read_exact_at(&mut buf, register)
            .map_err(|e| classify(&self.path, &e, MSR_HINT))?;
        Ok(u64::from_le_bytes(buf))
    }

    /// Package energy since the last read (the 32-bit counter's wrap corrected).
    pub fn read_delta(&mut self) -> Result<MicroJoules, SensorReadError> {
        self.read_register_delta(self.vendor.registers().package_energy)
    }

    fn read_register_delta(&mut self, register: u64) -> Result<MicroJoules, SensorReadError> {
        let raw = self.read(register)? & 0xffff_ffff;
        let counts = self.counter.update(raw).map_or(0, |d| d.0);
        // counts / 2^esu joules, in microjoules, rounded down.
        let uj = (u128::from(counts) * 1_000_000) >> self.energy_unit_exp;
        Ok(MicroJoules(u64::try_from(uj).unwrap_or(u64::MAX)))
    }

    /// Intel die temperature: TjMax (`0x1A2` bits 23:16) minus the digital readout (`0x19C`
    /// bits 22:16). AMD has no such register.
    pub fn temperature(&self) -> Result<MilliCelsius, SensorReadError> {
        if self.vendor != Vendor::Intel {
            return Err(SensorReadError::Absent(
                self.path
                    .join("(no temperature MSR on AMD; k10temp reads it)"),
            ));
        }
        let status = self.read(0x19C)?;
        if status & (1 << 31) == 0 {
            return Err(SensorReadError::Garbage {
                path: self.path.clone(),
                content: format!("{status:#x}"),
                expected: "IA32_THERM_STATUS with the reading-valid bit set",
            });
        }
        let below = ((status >> 16) & 0x7f) as i32;
        let tj_max = ((self.read(0x1A2)? >> 16) & 0xff) as i32;
        Ok(MilliCelsius((tj_max - below) * 1000))
    }
}

/// AMD per-core energy (`0xC001029A` on each CPU's MSR device), for attributing energy to the
/// cores that spent it. Intel has no per-core energy register.
#[derive(Debug)]
pub struct AmdCoreEnergy {
    cpus: Vec<Msr>,
}

impl AmdCoreEnergy {
    /// Opens every `root/dev/cpu/N/msr` (N in numeric order) on an AMD machine.
    pub fn open(root: &Path) -> Result<AmdCoreEnergy, SensorReadError> {
        let vendor = vendor(root)?;
        if vendor != Vendor::Amd {
            return Err(SensorReadError::Absent(
                root.join("dev/cpu/0/msr (per-core energy is an AMD register)"),
            ));
        }
        let dir = root.join("dev/cpu");
        let mut numbered: Vec<(u32, PathBuf)> = crate::fs::entries(&dir, "")?
            .into_iter()
            .filter_map(|p| {
                let n = p.file_name()?.to_str()?.parse().ok()?;
                Some((n, p.join("msr")))
            })
            .collect();
        numbered.sort();
        let mut cpus = Vec::with_capacity(numbered.len());
        for (_, path) in numbered {
            let mut msr = Msr::open_device(path, vendor)?;
            msr.read_register_delta(0xC001_029A)?;
            cpus.push(msr);
        }
        if cpus.is_empty() {
            return Err(SensorReadError::Absent(dir.join("N/msr")));
        }
        Ok(AmdCoreEnergy { cpus })
    }

    /// Number of CPUs read.
    pub fn len(&self) -> usize {
        self.cpus.len()
    }

    /// Always false: `open` refuses an empty set.
    pub fn is_empty(&self) -> bool {
        self.cpus.is_empty()
    }

    /// Each CPU's core energy since the last read, in CPU order.
    pub fn read_deltas(&mut self) -> Result<Vec<MicroJoules>, SensorReadError> {
        self.cpus
            .iter_mut()
            .map(|m| m.read_register_delta(0xC001_029A))
            .collect()
    }
}
