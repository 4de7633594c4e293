//! Does hardware virtualization work here? A short probe, cached for the process.
//!
//! KVM guests need `/dev/kvm` backed by a hardware-virtualization module (`kvm_intel` or
//! `kvm_amd`). A `/dev/kvm` served by KVM-PVM (`kvm_pvm`, the paravirtualized KVM of nested
//! cloud VMs) opens and answers the whole API, but a stock guest kernel never reaches init under
//! it (every guest instruction goes through KVM's emulator, which stops at `lock cmpxchg16b`),
//! so it counts as no hardware virtualization. Without it, guests run under QEMU's TCG
//! (emulation: slower to boot, the same API).
//!
//! `MAXWELL_MICROVM_ACCEL=kvm|tcg` overrides the probe (for a host the probe misjudges).

use std::fs;
use std::path::Path;
use std::sync::OnceLock;

use serde::Serialize;

/// How guests are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// QEMU's emulator.
    Tcg,
}

impl Accel {
    /// `kvm` or `tcg`.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    /// The accelerator guests can use.
    pub accel: Accel,
    /// Why, in words.
    pub reason: String,
}

/// Probes the machine under `root` (`/` in production; a fixture tree in tests).
pub fn probe_at(root: &Path, forced: Option<&str>) -> Probe {
    match forced {
        Some("kvm") => {
            return Probe {
                accel: Accel::Kvm,
                reason: "forced by MAXWELL_MICROVM_ACCEL=kvm".into(),
            };
        }
        Some("tcg") => {
            return Probe {
                accel: Accel::Tcg,
                reason: "forced by MAXWELL_MICROVM_ACCEL=tcg".into(),
            };
        }
        _ => {}
    }
    let tcg = |reason: String| Probe {
        accel: Accel::Tcg,
        reason,
    };
    let kvm = root.join("dev/kvm");
    if !kvm.exists() {
        return tcg("no /dev/kvm (KVM is not loaded, or not exposed to this machine)".into());
    }
    let module = |m: &str| root.join("sys/module").join(m).exists();
    let hardware: Vec<&str> = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .filter(|m| module(m))
        .collect();
    if hardware.is_empty() {
        if module("kvm_pvm") {
            return tcg(
                "/dev/kvm is KVM-PVM (kvm_pvm loaded, neither kvm_intel nor kvm_amd): stock \
                 guest kernels cannot boot under it (every guest instruction is emulated and \
                 the guest dies at `lock cmpxchg16b`)"
                    .into(),
            );
        }
        return tcg(
            "/dev/kvm exists but neither kvm_intel nor kvm_amd is loaded (no hardware \
             virtualization)"
                .into(),
        );
    }
    if root == Path::new("/")
        && let Err(e) = fs::OpenOptions::new().read(true).write(true).open(&kvm)
    {
        return tcg(format!("cannot open /dev/kvm: {e}"));
    }
    Probe {
        accel: Accel::Kvm,
        reason: format!("/dev/kvm backed by {}", hardware.join(" and ")),
    }
}

/// The probe of this machine, run once per process.
pub fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| {
        let forced = std::env::var("MAXWELL_MICROVM_ACCEL").ok();
        probe_at(Path::new("/"), forced.as_deref())
    })
}

/// The host's TSC frequency in kHz, from `/proc/cpuinfo` (`cpu MHz` is the TSC's on hosts
/// with `tsc_known_freq`): QEMU's microvm guests need `tsc_early_khz=` or hang calibrating it.
pub fn tsc_khz(cpuinfo: &str) -> Option<u64> {
    let line = cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    (mhz > 0.0).then(|| (mhz * 1000.0).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(modules: &[&str], kvm: bool) -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("maxwell-probe-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("dev")).unwrap();
        for m in modules {
            fs::create_dir_all(root.join("sys/module").join(m)).unwrap();
        }
        if kvm {
            fs::write(root.join("dev/kvm"), "").unwrap();
        }
        root
    }

    #[test]
    fn pvm_is_not_hardware_virtualization() {
        let cases = [
            (vec!["kvm", "kvm_pvm"], true, Accel::Tcg, "KVM-PVM"),
            (vec!["kvm", "kvm_intel"], true, Accel::Kvm, "kvm_intel"),
            (vec!["kvm", "kvm_amd"], true, Accel::Kvm, "kvm_amd"),
            (vec!["kvm_intel"], false, Accel::Tcg, "no /dev/kvm"),
            (vec!["kvm"], true, Accel::Tcg, "neither"),
        ];
        for (mods, kvm, accel, why) in cases {
            let root = tree(&mods, kvm);
            let p = probe_at(&root, None);
            assert_eq!(p.accel, accel, "{mods:?}: {p:?}");
            assert!(p.reason.contains(why), "{p:?}");
            fs::remove_dir_all(&root).unwrap();
        }
        let root = tree(&["kvm_pvm"], true);
        assert_eq!(probe_at(&root, Some("kvm")).accel, Accel::Kvm);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_tsc_frequency_is_read_from_cpuinfo() {
        let info = "processor\t: 0\ncpu MHz\t\t: 2596.144\ncache size : 1 KB\n";
        assert_eq!(tsc_khz(info), Some(2_596_144));
        assert_eq!(tsc_khz("nothing"), None);
    }
}
