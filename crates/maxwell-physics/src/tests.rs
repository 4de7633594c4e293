//! Fixture trees for every reader: normal readings, wraparound, missing files, permission
//! denied, garbage, a zone vanishing mid-run.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use maxwell_core::{MicroJoules, MilliCelsius, MilliWatts, Nanos};

use super::*;

/// A temporary fixture root, removed on drop.
struct Fixture(PathBuf);

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!(
            "maxwell-physics-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Fixture(dir)
    }
    fn write(&self, rel: &str, content: &str) -> &Fixture {
        let p = self.0.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
        self
    }
    fn root(&self) -> &Path {
        &self.0
    }
    fn with_proc_stat(&self, busy: u64, idle: u64) -> &Fixture {
        self.write(
            "proc/stat",
            &format!("cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 0 0 0 0\ncpu1 0 0 0 0\n"),
        )
    }
    fn rapl_zone(&self, dir: &str, name: &str, energy: u64, max: u64) -> &Fixture {
        self.write(
            &format!("sys/class/powercap/{dir}/name"),
            &format!("{name}\n"),
        )
        .write(
            &format!("sys/class/powercap/{dir}/energy_uj"),
            &format!("{energy}\n"),
        )
        .write(
            &format!("sys/class/powercap/{dir}/max_energy_range_uj"),
            &format!("{max}\n"),
        )
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn candidate<'a>(p: &'a Physics, name: &str, quantity: &str) -> &'a Candidate {
    p.candidates()
        .iter()
        .find(|c| c.name == name && c.quantity == quantity)
        .unwrap()
}

const TICK: Nanos = Nanos(10_000_000);

#[test]
fn an_empty_machine_is_modelled_and_says_why() {
    let f = Fixture::new("empty");
    f.with_proc_stat(0, 100);
    let p = Physics::open(f.root(), ModelParams::default());
    assert_eq!(p.energy_source().source, "model");
    assert!(p.energy_source().modelled && p.temperature_source().modelled);
    for (name, q) in [
        ("powercap", "energy"),
        ("msr", "energy"),
        ("hwmon", "temperature"),
        ("thermal_zone", "temperature"),
    ] {
        let c = candidate(&p, name, q);
        assert!(!c.available, "{name}");
        assert!(c.reason.contains("does not exist"), "{name}: {}", c.reason);
    }
}

#[test]
fn powercap_sums_packages_and_corrects_wraparound() {
    let f = Fixture::new("rapl");
    f.with_proc_stat(0, 100)
        .rapl_zone("intel-rapl:0", "package-0", 999_000, 1_000_000)
        .rapl_zone("intel-rapl:0:0", "core", 5, 1_000_000)
        .rapl_zone("intel-rapl:0:1", "dram", 5, 1_000_000)
        .rapl_zone("intel-rapl:1", "package-1", 10, 1_000_000);
    let mut p = Physics::open(f.root(), ModelParams::default());
    assert_eq!(p.energy_source().source, "powercap");
    assert!(!p.energy_source().modelled);
    assert!(p.energy_source().detail.contains("package-0 + package-1"));
    // package-0 wraps: 1_000 to the top, then 500; package-1 moves by 2_000.
    f.write("sys/class/powercap/intel-rapl:0/energy_uj", "500\n")
        .write("sys/class/powercap/intel-rapl:1/energy_uj", "2010\n");
    let r = p.sample(TICK);
    assert_eq!(r.energy, MicroJoules(1_500 + 2_000));
    assert_eq!(r.power, MilliWatts(350));
    assert!(!r.energy_modelled);
}

#[test]
fn powercap_prefers_psys() {
    let f = Fixture::new("psys");
    f.with_proc_stat(0, 100)
        .rapl_zone("intel-rapl:0", "package-0", 0, 1_000)
        .rapl_zone("intel-rapl:1", "psys", 0, 1_000);
    let p = Physics::open(f.root(), ModelParams::default());
    assert!(
        p.energy_source().detail.contains("psys"),
        "{}",
        p.energy_source().detail
    );
}

#[test]
fn garbage_and_missing_files_are_named() {
    let f = Fixture::new("garbage");
    f.with_proc_stat(0, 100)
        .rapl_zone("intel-rapl:0", "package-0", 0, 1_000);
    f.write("sys/class/powercap/intel-rapl:0/energy_uj", "lots\n");
    let p = Physics::open(f.root(), ModelParams::default());
    let c = candidate(&p, "powercap", "energy");
    assert!(!c.available);
    assert!(
        c.reason.contains("\"lots\"") && c.reason.contains("microjoules"),
        "{}",
        c.reason
    );

    let f = Fixture::new("missing");
    f.with_proc_stat(0, 100)
        .rapl_zone("intel-rapl:0", "package-0", 0, 1_000);
    fs::remove_file(
        f.root()
            .join("sys/class/powercap/intel-rapl:0/max_energy_range_uj"),
    )
    .unwrap();
    let p = Physics::open(f.root(), ModelParams::default());
    let c = candidate(&p, "powercap", "energy");
    assert!(
        c.reason.contains("max_energy_range_uj does not exist"),
        "{}",
        c.reason
    );

    let f = Fixture::new("hot");
    f.with_proc_stat(0, 100)
        .write("sys/class/hwmon/hwmon0/name", "k10temp\n")
        .write("sys/class/hwmon/hwmon0/temp1_input", "999999\n");
    let p = Physics::open(f.root(), ModelParams::default());
    let c = candidate(&p, "hwmon", "temperature");
    assert!(
        !c.available && c.reason.contains("between -40 C and 150 C"),
        "{}",
        c.reason
    );
}

#[test]
fn permission_denied_says_what_to_do() {
    let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
    let err = crate::fs::classify(Path::new("/sys/x/energy_uj"), &e, "run as root");
    assert!(matches!(err, SensorReadError::PermissionDenied { .. }));
    assert!(
        err.to_string().contains("permission denied") && err.to_string().contains("run as root")
    );
}

#[test]
fn a_zone_vanishing_mid_run_falls_back_to_the_model() {
    let f = Fixture::new("vanish");
    f.with_proc_stat(0, 100)
        .rapl_zone("intel-rapl:0", "package-0", 0, 1_000_000)
        .write("sys/class/thermal/thermal_zone0/type", "x86_pkg_temp\n")
        .write("sys/class/thermal/thermal_zone0/temp", "55000\n");
    let mut p = Physics::open(f.root(), ModelParams::default());
    assert_eq!(p.temperature_source().source, "thermal_zone");
    assert_eq!(p.sample(TICK).temperature, MilliCelsius(55_000));
    fs::remove_dir_all(f.root().join("sys/class/powercap/intel-rapl:0")).unwrap();
    fs::remove_dir_all(f.root().join("sys/class/thermal/thermal_zone0")).unwrap();
    let r = p.sample(TICK);
    assert!(r.energy_modelled && r.temperature_modelled);
    assert_eq!(p.energy_source().source, "model");
    assert_eq!(p.fallbacks.len(), 2, "{:?}", p.fallbacks);
    assert!(p.fallbacks[0].contains("does not exist"));
    // And it keeps going.
    assert!(p.sample(TICK).power > MilliWatts(0));
}

#[test]
fn hwmon_picks_the_cpu_die_sensor() {
    let f = Fixture::new("hwmon");
    f.with_proc_stat(0, 100)
        .write("sys/class/hwmon/hwmon0/name", "nvme\n")
        .write("sys/class/hwmon/hwmon0/temp1_input", "40000\n")
        .write("sys/class/hwmon/hwmon1/name", "k10temp\n")
        .write("sys/class/hwmon/hwmon1/temp1_input", "61000\n")
        .write("sys/class/hwmon/hwmon1/temp1_label", "Tctl\n")
        .write("sys/class/hwmon/hwmon1/temp3_input", "50000\n")
        .write("sys/class/hwmon/hwmon1/temp3_label", "Tccd1\n")
        .write("sys/class/thermal/thermal_zone0/type", "acpitz\n")
        .write("sys/class/thermal/thermal_zone0/temp", "30000\n");
    let mut p = Physics::open(f.root(), ModelParams::default());
    assert_eq!(p.temperature_source().source, "hwmon");
    assert!(p.temperature_source().detail.contains("k10temp Tctl"));
    assert_eq!(p.sample(TICK).temperature, MilliCelsius(61_000));
    assert!(candidate(&p, "thermal_zone", "temperature").available);

    let g = Fixture::new("hwmon-other");
    g.with_proc_stat(0, 100)
        .write("sys/class/hwmon/hwmon0/name", "nvme\n")
        .write("sys/class/hwmon/hwmon0/temp1_input", "40000\n");
    let p = Physics::open(g.root(), ModelParams::default());
    let c = candidate(&p, "hwmon", "temperature");
    assert!(
        !c.available && c.reason.contains("found only: nvme"),
        "{}",
        c.reason
    );
}

fn write_msr(f: &Fixture, regs: &[(u64, u64)]) {
    write_cpu_msr(f, 0, regs);
}

fn write_cpu_msr(f: &Fixture, cpu: u32, regs: &[(u64, u64)]) {
    let path = f.root().join(format!("dev/cpu/{cpu}/msr"));
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    for (reg, value) in regs {
        file.write_all_at(&value.to_le_bytes(), *reg).unwrap();
    }
}

#[test]
fn msr_reads_intel_energy_and_temperature() {
    let f = Fixture::new("msr-intel");
    f.with_proc_stat(0, 100).write(
        "proc/cpuinfo",
        "processor\t: 0\nvendor_id\t: GenuineIntel\n",
    );
    // Energy unit 2^-14 J; counter near the 32-bit top; TjMax 100 C, 35 below it, valid bit.
    write_msr(
        &f,
        &[
            (0x606, 14 << 8),
            (0x611, 0xffff_c000),
            (0x1A2, 100 << 16),
            (0x19C, (1 << 31) | (35 << 16)),
        ],
    );
    let mut p = Physics::open(f.root(), ModelParams::default());
    assert_eq!(p.energy_source().source, "msr");
    assert_eq!(p.temperature_source().source, "msr");
    // Wrap: 0x4000 counts to the top, then 0x4000 more: 2 * 16384 counts of 2^-14 J = 2 J.
    write_msr(&f, &[(0x611, 0x4000)]);
    let r = p.sample(TICK);
    assert_eq!(r.energy, MicroJoules(2_000_000));
    assert_eq!(r.temperature, MilliCelsius(65_000));
}

#[test]
fn msr_on_amd_reads_energy_but_not_temperature() {
    let f = Fixture::new("msr-amd");
    f.with_proc_stat(0, 100)
        .write("proc/cpuinfo", "vendor_id\t: AuthenticAMD\n");
    write_msr(&f, &[(0xC001_0299, 16 << 8), (0xC001_029B, 0)]);
    let mut p = Physics::open(f.root(), ModelParams::default());
    assert_eq!(p.energy_source().source, "msr");
    assert!(p.temperature_source().modelled);
    write_msr(&f, &[(0xC001_029B, 65_536)]);
    assert_eq!(p.sample(TICK).energy, MicroJoules(1_000_000));
    assert!(candidate(&p, "msr", "temperature").reason.contains("AMD"));
}

#[test]
fn model_reaches_the_rc_steady_state() {
    let f = Fixture::new("model");
    f.with_proc_stat(0, 0);
    let mut p = Physics::open(f.root(), ModelParams::default());
    let (mut busy, mut idle) = (0u64, 0u64);
    let mut t = MilliCelsius(0);
    for i in 0..2_000 {
        // One of two CPUs busy: 10 W + 15 W = 25 W; steady state 25 C + 25 W * 1.5 K/W.
        busy += 1;
        idle += 1;
        f.with_proc_stat(busy, idle);
        let r = p.sample(TICK);
        // /proc/stat is read every 50 ms; until the first read the model holds idle power.
        let expect = if (i + 1) * TICK.0 < crate::model::READ_EVERY.0 {
            10_000
        } else {
            25_000
        };
        assert_eq!(r.power, MilliWatts(expect), "sample {i}");
        assert!(r.energy_modelled);
        t = r.temperature;
    }
    assert!((t.0 - 62_500).abs() <= 1, "{t:?}");
}

#[test]
fn amd_core_energy_per_cpu_with_wrap() {
    let f = Fixture::new("msr-amd-cores");
    f.write("proc/cpuinfo", "vendor_id\t: AuthenticAMD\n");
    // Two CPUs listed out of lexical order (10 before 2) to check numeric ordering. A fixture
    // file is flat, so the 8-byte registers at 0xC0010299 and 0xC001029A overlap: every counter
    // value here has 0x10 in its low byte, which is also the units register's ESU byte (2^-16 J).
    for (cpu, start) in [(2u32, 0xffff_0010u64), (10, 0x10)] {
        write_cpu_msr(&f, cpu, &[(0xC001_0299, 16 << 8), (0xC001_029A, start)]);
    }
    let mut cores = msr::AmdCoreEnergy::open(f.root()).unwrap();
    assert_eq!(cores.len(), 2);
    // cpu2 wraps: 0x10000 counts to the top plus 0x10000 = 2 J; cpu10 advances 65536 = 1 J.
    write_cpu_msr(&f, 2, &[(0xC001_029A, 0x1_0010)]);
    write_cpu_msr(&f, 10, &[(0xC001_029A, 0x1_0010)]);
    assert_eq!(
        cores.read_deltas().unwrap(),
        vec![MicroJoules(2_000_000), MicroJoules(1_000_000)]
    );
    // Intel machines have no per-core register; the error says so.
    f.write("proc/cpuinfo", "vendor_id\t: GenuineIntel\n");
    let e = msr::AmdCoreEnergy::open(f.root()).unwrap_err().to_string();
    assert!(e.contains("AMD"), "{e}");
}

#[test]
fn gpu_counter_deltas_and_driver_reload() {
    let mut c = gpu::GpuCounter::default();
    assert_eq!(c.delta(5_000), MicroJoules(0));
    assert_eq!(c.delta(5_250), MicroJoules(250_000));
    // The driver reloaded: the counter restarts from zero.
    assert_eq!(c.delta(40), MicroJoules(40_000));
    let r = gpu::combine(
        &[
            (MicroJoules(250_000), MilliCelsius(61_000)),
            (MicroJoules(150_000), MilliCelsius(70_000)),
        ],
        Nanos(10_000_000),
    );
    assert_eq!(r.energy, MicroJoules(400_000));
    assert_eq!(r.power, MilliWatts(40_000));
    assert_eq!(r.temperature, MilliCelsius(70_000));
    assert_eq!(r.devices, 2);
}

#[test]
fn gpu_candidate_always_listed_with_a_reason() {
    let f = Fixture::new("gpu");
    f.with_proc_stat(0, 100);
    let p = Physics::open(f.root(), ModelParams::default());
    let c = candidate(&p, "nvml", "gpu");
    if !c.available {
        // Without the feature the reason names it; with it, on a machine without the NVIDIA
        // driver (this VM, CI), the reason names the library or the driver.
        assert!(
            c.reason.contains("--features")
                || c.reason.contains("NVIDIA")
                || c.reason.contains("NVML"),
            "{}",
            c.reason
        );
        assert!(p.gpus().is_empty());
    }
}
