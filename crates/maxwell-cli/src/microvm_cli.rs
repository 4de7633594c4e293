//! `maxwell microvm check`, `maxwell microvm image` and `maxwell bench spawn`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde::Serialize;

use maxwell_sandbox::microvm::image::{GUEST_MODULES, ImageSpec, build};
use maxwell_sandbox::microvm::{MicrovmConfig, MicrovmSandbox, guest_bin_dir, probe, which};
use maxwell_sandbox::{Agent, AgentSpec, Limits, Program};

use crate::{Exit, write_out};

/// `maxwell microvm ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum MicrovmCommand {
    /// Whether microVM agents can run here: hardware virtualization (probed), the VMM and
    /// accelerator chosen and why, and every part found or missing with how to get it.
    Check(CheckArgs),
    /// Builds a guest initramfs (reproducibly) from the guest init and a statically linked
    /// agent program, and prints its size and SHA-256.
    Image(ImageArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CheckArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ImageArgs {
    /// The agent program (linked statically).
    #[arg(long)]
    agent: PathBuf,
    /// Where to write the image.
    #[arg(long, short)]
    out: PathBuf,
    /// The agent's arguments.
    #[arg(last = true)]
    args: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Part {
    part: &'static str,
    found: Option<String>,
    fix: &'static str,
}

#[derive(Debug, Serialize)]
struct CheckReport {
    accel: &'static str,
    accel_reason: String,
    vmm: &'static str,
    parts: Vec<Part>,
    ready: bool,
    error: Option<String>,
}

fn shown(p: Option<PathBuf>) -> Option<String> {
    p.map(|p| p.display().to_string())
}

pub(crate) fn run(c: &MicrovmCommand) -> anyhow::Result<Exit> {
    match c {
        MicrovmCommand::Check(a) => check(a),
        MicrovmCommand::Image(a) => image(a),
    }
}

fn check(a: &CheckArgs) -> anyhow::Result<Exit> {
    let p = probe::probe();
    let cfg = MicrovmConfig::discover();
    let bins = guest_bin_dir();
    let parts = vec![
        Part {
            part: "qemu-system-x86_64",
            found: shown(which("qemu-system-x86_64")),
            fix: "apt-get install qemu-system-x86",
        },
        Part {
            part: "vhost-device-vsock",
            found: shown(which("vhost-device-vsock")),
            fix: "cargo install vhost-device-vsock --version 0.3.0",
        },
        Part {
            part: "guest kernel",
            found: cfg.as_ref().ok().map(|c| c.kernel.display().to_string()),
            fix: ".ci/microvm-deps (Debian's linux-image-cloud-amd64, unpacked into target/guest), \
                  or MAXWELL_GUEST_DIR",
        },
        Part {
            part: "guest init (static)",
            found: shown(
                bins.as_ref()
                    .map(|d| d.join("maxwell-guest-init"))
                    .filter(|p| p.is_file()),
            ),
            fix: "scripts/build-guest, or MAXWELL_GUEST_BIN",
        },
        Part {
            part: "built-in agents (static)",
            found: shown(bins.filter(|d| d.join("scientist").is_file())),
            fix: "scripts/build-guest",
        },
        Part {
            part: "firecracker + jailer",
            found: cfg
                .as_ref()
                .ok()
                .and_then(|c| c.firecracker.as_ref())
                .map(|(f, _)| f.display().to_string()),
            fix: "Firecracker's release binaries (or MAXWELL_FIRECRACKER, MAXWELL_JAILER); used \
                  where hardware virtualization works",
        },
        Part {
            part: "vmlinux (for Firecracker)",
            found: cfg
                .as_ref()
                .ok()
                .and_then(|c| c.vmlinux.as_ref())
                .map(|v| v.display().to_string()),
            fix: ".ci/microvm-deps (extracts it from the vmlinuz)",
        },
    ];
    let vmm = match cfg.as_ref().map(|c| c.vmm) {
        Ok(maxwell_sandbox::microvm::VmmChoice::Firecracker) => "firecracker",
        _ => "qemu",
    };
    let (error, described) = match cfg.and_then(MicrovmSandbox::new) {
        Ok(s) if vmm == "firecracker" && p.accel != probe::Accel::Kvm => (
            Some(
                "Firecracker is chosen (MAXWELL_MICROVM_VMM) but hardware virtualization is \
                 missing, so its guests cannot boot; unset MAXWELL_MICROVM_VMM to use QEMU"
                    .to_string(),
            ),
            s.describe(),
        ),
        Ok(s) => (None, s.describe()),
        Err(e) => (Some(e.to_string()), String::new()),
    };
    let r = CheckReport {
        accel: p.accel.name(),
        accel_reason: p.reason.clone(),
        vmm,
        ready: error.is_none(),
        parts,
        error,
    };
    if a.json {
        write_out(&(serde_json::to_string_pretty(&r)? + "\n"))?;
    } else {
        let mut s = format!(
            "hardware virtualization: {} ({})\nVMM: {}\n",
            if r.accel == "kvm" { "yes" } else { "no" },
            r.accel_reason,
            if described.is_empty() {
                format!("{} (accel {})", r.vmm, r.accel)
            } else {
                described
            }
        );
        for part in &r.parts {
            s += &match &part.found {
                Some(f) => format!("  ok       {:<26} {f}\n", part.part),
                None => format!("  missing  {:<26} get it with: {}\n", part.part, part.fix),
            };
        }
        s += &match &r.error {
            None => "microVM agents can run here\n".to_string(),
            Some(e) => format!("microVM agents cannot run here: {e}\n"),
        };
        write_out(&s)?;
    }
    Ok(if r.ready { Exit::Success } else { Exit::Failed })
}

fn image(a: &ImageArgs) -> anyhow::Result<Exit> {
    maxwell_sandbox::microvm::check_guest_program(&a.agent)?;
    let cfg = MicrovmConfig::discover()?;
    let bytes = build(&ImageSpec {
        init: cfg.init.clone(),
        agent: a.agent.clone(),
        args: a.args.clone(),
        modules: cfg
            .modules
            .clone()
            .map(|m| (m, GUEST_MODULES.iter().map(|s| s.to_string()).collect())),
    })?;
    std::fs::write(&a.out, &bytes)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", a.out.display()))?;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    write_out(&format!(
        "{}: {} bytes, sha256 {hex}\n",
        a.out.display(),
        bytes.len()
    ))?;
    Ok(Exit::Success)
}

/// `maxwell bench spawn`.
#[derive(Debug, Args)]
pub(crate) struct SpawnBenchArgs {
    /// Guests to boot, and then to restore from a snapshot, one after another (each is killed
    /// once it is up).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..))]
    count: u32,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct SpawnReport {
    vmm: &'static str,
    accel: &'static str,
    count: u32,
    boot_p50_ms: f64,
    boot_p99_ms: f64,
    boot_max_ms: f64,
    template_save_ms: f64,
    restore_p50_ms: f64,
    restore_p99_ms: f64,
    restore_max_ms: f64,
    kill_p50_ms: f64,
    kill_max_ms: f64,
    targets: SpawnTargets,
}

#[derive(Debug, Serialize)]
struct SpawnTargets {
    restore_p99_ms_max: f64,
    met: bool,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn spawn_bench(a: &SpawnBenchArgs) -> anyhow::Result<Exit> {
    let cfg = MicrovmConfig::discover()?;
    let accel = cfg.accel.name();
    let sb = MicrovmSandbox::new(cfg)?;
    if !a.json {
        eprintln!("microvm: {}", sb.describe());
    }
    let sci = guest_bin_dir()
        .map(|d| d.join("scientist"))
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!("the static scientist is not built: run scripts/build-guest")
        })?;
    let spec = |name: String| AgentSpec {
        name,
        program: Program::Native {
            path: sci.clone(),
            args: Vec::new(),
        },
        limits: Limits {
            memory_max: maxwell_sandbox::microvm::DEFAULT_GUEST_MEMORY,
            pids_max: 64,
            ..Limits::default()
        },
    };
    let (mut boots, mut restores, mut kills) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..a.count {
        let t = Instant::now();
        let mut vm = sb.spawn_vm(&spec(format!("bench-boot-{i}")))?;
        boots.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        vm.kill("benchmark");
        kills.push(t.elapsed().as_secs_f64() * 1e3);
        if !a.json {
            eprint!("\rbooted {} / {} guests", i + 1, a.count);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = std::env::temp_dir().join(format!("maxwell-bench-spawn-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let state = dir.join("scientist.state");
    let saved = sb.make_template(&spec("bench".into()), &state)?;
    for i in 0..a.count {
        let t = Instant::now();
        let mut vm = sb.spawn_restored(&spec(format!("bench-restore-{i}")), &state)?;
        restores.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        vm.kill("benchmark");
        kills.push(t.elapsed().as_secs_f64() * 1e3);
        if !a.json {
            eprint!(
                "\rbooted {0} / {0}, restored {1} / {0} guests",
                a.count,
                i + 1
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::remove_dir_all(&dir)?;
    if !a.json {
        eprintln!();
    }
    boots.sort_by(f64::total_cmp);
    restores.sort_by(f64::total_cmp);
    kills.sort_by(f64::total_cmp);
    let restore_p99 = pct(&restores, 0.99);
    let r = SpawnReport {
        vmm: "qemu",
        accel,
        count: a.count,
        boot_p50_ms: pct(&boots, 0.5),
        boot_p99_ms: pct(&boots, 0.99),
        boot_max_ms: boots.last().copied().unwrap_or(0.0),
        template_save_ms: saved.as_secs_f64() * 1e3,
        restore_p50_ms: pct(&restores, 0.5),
        restore_p99_ms: restore_p99,
        restore_max_ms: restores.last().copied().unwrap_or(0.0),
        kill_p50_ms: pct(&kills, 0.5),
        kill_max_ms: kills.last().copied().unwrap_or(0.0),
        targets: SpawnTargets {
            restore_p99_ms_max: 300.0,
            met: restore_p99 <= 300.0,
        },
    };
    if a.json {
        write_out(&(serde_json::to_string_pretty(&r)? + "\n"))?;
    } else {
        write_out(&format!(
            "{} guests each way under {} ({}), spawn to a paused agent:\n\
             boot (to the init's vsock connection): p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms\n\
             restore from a snapshot (saved in {:.0} ms): p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms\n\
             kill (everything removed): p50 {:.0} ms  max {:.0} ms\n\
             target: restore p99 <= {} ms: {}\n",
            r.count,
            r.vmm,
            r.accel,
            r.boot_p50_ms,
            r.boot_p99_ms,
            r.boot_max_ms,
            r.template_save_ms,
            r.restore_p50_ms,
            r.restore_p99_ms,
            r.restore_max_ms,
            r.kill_p50_ms,
            r.kill_max_ms,
            r.targets.restore_p99_ms_max,
            if r.targets.met { "met" } else { "NOT MET" }
        ))?;
    }
    Ok(if r.targets.met {
        Exit::Success
    } else {
        Exit::Failed
    })
}
