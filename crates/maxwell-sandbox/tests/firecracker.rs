//! The Firecracker driver against the real binary: every API call the microvm backend uses,
//! the jailer's containment, pause/resume and snapshot latency. Needs root, `/dev/kvm` and the
//! binaries (`MAXWELL_FIRECRACKER`, `MAXWELL_JAILER`, else `firecracker` and `jailer` in
//! `PATH`); without them each test prints a skip line, unless
//! `MAXWELL_REQUIRE_MICROVM_TESTS=1`, when it fails.
//!
//! The guest is a spin loop (`firecracker::spin_elf`), not a kernel: where hardware
//! virtualization is missing (KVM-PVM here) no real guest can boot under Firecracker, so what a
//! booted guest does is tested under QEMU (tests/microvm.rs), and under Firecracker wherever
//! the probe finds working KVM.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use maxwell_sandbox::microvm::firecracker::{Firecracker, Jail, spin_elf};
use maxwell_sandbox::microvm::{Vmm, vsock, which};
use maxwell_sandbox::process::testing::alive;

fn bin(env: &str, name: &str) -> Option<PathBuf> {
    std::env::var_os(env)
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| which(name))
}

fn setup() -> Option<(PathBuf, Option<PathBuf>, PathBuf)> {
    let fc = bin("MAXWELL_FIRECRACKER", "firecracker");
    let why = if !nix::unistd::geteuid().is_root() {
        Some("needs root".to_string())
    } else if !Path::new("/dev/kvm").exists() {
        Some("no /dev/kvm".to_string())
    } else if fc.is_none() {
        Some("no firecracker binary (set MAXWELL_FIRECRACKER)".to_string())
    } else {
        None
    };
    if let Some(why) = why {
        assert!(
            std::env::var("MAXWELL_REQUIRE_MICROVM_TESTS").as_deref() != Ok("1"),
            "MAXWELL_REQUIRE_MICROVM_TESTS=1 but Firecracker cannot run here: {why}"
        );
        eprintln!("SKIP: Firecracker: {why}");
        return None;
    }
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("maxwell-fc-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    Some((fc?, bin("MAXWELL_JAILER", "jailer"), dir))
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

fn boot(fc: &mut Firecracker) {
    std::fs::write(fc.root().join("spin.elf"), spin_elf()).unwrap();
    fc.configure(64, "spin.elf", None, "console=ttyS0", "vsock.sock")
        .unwrap();
    fc.start().unwrap();
}

#[test]
fn the_api_pauses_resumes_snapshots_and_restores_a_vm() {
    let Some((binary, _, dir)) = setup() else {
        return;
    };
    let t = Instant::now();
    let mut fc =
        Firecracker::launch(&binary, "fc-api", &dir, None, Duration::from_secs(2)).unwrap();
    eprintln!("process to API: {:?}", t.elapsed());
    // A bad request is refused with Firecracker's own message, and the VM is still usable.
    let (status, body) = fc
        .call(
            "PUT",
            "/machine-config",
            Some(&serde_json::json!({ "vcpu_count": 0, "mem_size_mib": 64 })),
        )
        .unwrap();
    assert_eq!(status, 400, "{body}");
    boot(&mut fc);
    let (mut p, mut r) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let t = Instant::now();
        fc.pause().unwrap();
        p.push(t.elapsed());
        let t = Instant::now();
        fc.resume().unwrap();
        r.push(t.elapsed());
    }
    eprintln!(
        "PATCH /vm Paused p50 {:?} p99 {:?}; Resumed p50 {:?} p99 {:?}",
        pct(&mut p, 50),
        pct(&mut p, 99),
        pct(&mut r, 50),
        pct(&mut r, 99)
    );
    // The host side of vsock: the guest has no driver, so a CONNECT is never accepted, and
    // the client gives up at its deadline instead of hanging.
    let t = Instant::now();
    let e = vsock::connect(
        &fc.root().join("vsock.sock"),
        1025,
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{e}");

    // The host reads the guest's RAM (for erasure sampling) from the VMM's mapping of it:
    // the spin "kernel" was loaded at 16 MiB, ELF header first.
    let ram = maxwell_sandbox::microvm::GuestRam::mapped(fc.pid(), 64 << 20)
        .expect("Firecracker's guest memory mapping");
    let mut page = vec![0u8; 4096];
    ram.read_page(16 << 20, &mut page).unwrap();
    assert_eq!(&page[..4], b"\x7fELF", "guest page at 16 MiB");
    assert!(ram.resident().unwrap() >= 4096);

    fc.pause().unwrap();
    let t = Instant::now();
    fc.snapshot_create("vm.state", "vm.mem").unwrap();
    eprintln!("snapshot create: {:?}", t.elapsed());
    assert!(dir.join("vm.mem").metadata().unwrap().len() >= 64 << 20);

    let restored = dir.join("restored");
    std::fs::create_dir_all(&restored).unwrap();
    for f in ["vm.state", "vm.mem"] {
        std::fs::hard_link(dir.join(f), restored.join(f)).unwrap();
    }
    let t = Instant::now();
    let mut fc2 = Firecracker::launch(
        &binary,
        "fc-restored",
        &restored,
        None,
        Duration::from_secs(2),
    )
    .unwrap();
    fc2.snapshot_load("vm.state", "vm.mem", false).unwrap();
    fc2.resume().unwrap();
    eprintln!(
        "snapshot restore into a fresh process, resumed: {:?}",
        t.elapsed()
    );
    fc2.pause().unwrap();
    let pids = [fc.pid() as i32, fc2.pid() as i32];
    drop(fc);
    drop(fc2);
    for pid in pids {
        assert!(!alive(pid), "firecracker {pid} is still alive");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn under_the_jailer_the_vmm_is_unprivileged_chrooted_and_limited() {
    let Some((binary, jailer, dir)) = setup() else {
        return;
    };
    let Some(jailer) = jailer else {
        assert!(
            std::env::var("MAXWELL_REQUIRE_MICROVM_TESTS").as_deref() != Ok("1"),
            "MAXWELL_REQUIRE_MICROVM_TESTS=1 but there is no jailer"
        );
        eprintln!("SKIP: no jailer binary (set MAXWELL_JAILER)");
        return;
    };
    let uid = 0xE100_0000u32 + std::process::id() % 4096;
    let jail = Jail {
        jailer,
        chroot_base: dir.join("jails"),
        uid,
        memory_max: 256 << 20,
        pids_max: 32,
    };
    let mut fc = Firecracker::launch(
        &binary,
        "fc-jailed",
        &dir,
        Some(&jail),
        Duration::from_secs(5),
    )
    .unwrap();
    let pid = fc.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uids.split_whitespace()
            .skip(1)
            .all(|u| u == uid.to_string()),
        "{uids}"
    );
    let caps = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(caps.ends_with("0000000000000000"), "{caps}");
    // Its own mount namespace whose root is the jail: the VMM's binary and /dev/kvm are
    // there, the host's files are not.
    assert_ne!(
        std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap()
    );
    let seen = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(seen.join("dev/kvm").exists() && seen.join("firecracker").exists());
    assert!(
        !seen.join("etc/passwd").exists(),
        "the host's files are visible"
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroup.contains(&format!(
            "maxwell-firecracker-{}/fc-jailed",
            std::process::id()
        )),
        "{cgroup}"
    );
    // The spin "kernel" goes into the jail, where the VMM can read it.
    std::fs::write(fc.root().join("spin.elf"), spin_elf()).unwrap();
    nix::unistd::chown(
        &fc.root().join("spin.elf"),
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
    )
    .unwrap();
    fc.configure(64, "spin.elf", None, "console=ttyS0", "vsock.sock")
        .unwrap();
    fc.start().unwrap();
    fc.pause().unwrap();
    fc.resume().unwrap();
    let jail_dir = dir.join("jails/firecracker/fc-jailed");
    assert!(jail_dir.exists());
    drop(fc);
    assert!(!alive(pid as i32));
    assert!(!jail_dir.exists(), "the jail was left behind");
    for line in cgroup.lines() {
        if let Some(path) = line.splitn(3, ':').nth(2)
            && path.contains("fc-jailed")
        {
            let ctl = line.split(':').nth(1).unwrap_or_default();
            let base = if ctl.is_empty() {
                "/sys/fs/cgroup/unified".to_string()
            } else {
                format!("/sys/fs/cgroup/{}", ctl.split(',').next().unwrap_or(ctl))
            };
            let p = Path::new(&base).join(path.trim_start_matches('/'));
            assert!(!p.exists(), "cgroup {} was left behind", p.display());
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The backend with Firecracker as its VMM: where hardware virtualization works a guest
/// scientist boots, claims work, pauses and leaves nothing; where it does not (KVM-PVM here)
/// the spawn fails at its boot timeout naming the reason, and leaves nothing either.
#[test]
fn the_backend_boots_guests_under_firecracker_where_kvm_works_and_says_why_not_elsewhere() {
    use maxwell_sandbox::microvm::{
        MicrovmConfig, MicrovmSandbox, VmmChoice, guest_bin_dir, probe::Accel,
    };
    use maxwell_sandbox::{Agent, AgentSpec, Limits, Message, Program};
    let Some((binary, jailer, dir)) = setup() else {
        return;
    };
    std::fs::remove_dir_all(&dir).unwrap();
    let (mut cfg, Some(jailer), Some(bins)) =
        (MicrovmConfig::discover().ok(), jailer, guest_bin_dir())
    else {
        assert!(
            std::env::var("MAXWELL_REQUIRE_MICROVM_TESTS").as_deref() != Ok("1"),
            "MAXWELL_REQUIRE_MICROVM_TESTS=1 but the microvm backend's parts are missing"
        );
        eprintln!("SKIP: the microvm backend's parts are missing (.ci/microvm-deps)");
        return;
    };
    let Some(c) = cfg.as_mut() else {
        unreachable!()
    };
    if c.vmlinux.is_none() {
        assert!(
            std::env::var("MAXWELL_REQUIRE_MICROVM_TESTS").as_deref() != Ok("1"),
            "MAXWELL_REQUIRE_MICROVM_TESTS=1 but there is no vmlinux beside the vmlinuz"
        );
        eprintln!("SKIP: no vmlinux (.ci/microvm-deps extracts it)");
        return;
    }
    c.vmm = VmmChoice::Firecracker;
    c.firecracker = Some((binary, jailer));
    let kvm = c.accel == Accel::Kvm;
    if !kvm {
        // Here the guest cannot boot: do not wait a minute to learn it.
        c.boot_timeout = Duration::from_secs(5);
    }
    let sb = MicrovmSandbox::new(cfg.unwrap()).unwrap();
    let spec = AgentSpec {
        name: "fc-sci".into(),
        program: Program::Native {
            path: bins.join("scientist"),
            args: Vec::new(),
        },
        limits: Limits {
            memory_max: maxwell_sandbox::microvm::DEFAULT_GUEST_MEMORY,
            pids_max: 64,
            ..Limits::default()
        },
    };
    let t = Instant::now();
    let fc_alive = || {
        std::process::Command::new("pgrep")
            .args(["-f", "firecracker --id fc-sci"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false)
    };
    match sb.spawn_agent(&spec) {
        Ok(mut a) => {
            assert!(
                kvm,
                "a guest booted under Firecracker without hardware virtualization?"
            );
            eprintln!("firecracker boot: {:?}", a.boot_time());
            a.mailbox()
                .give_work((0..64u64).map(|k| (k * 10_000, (k + 1) * 10_000)));
            a.resume().unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut claims = 0;
            while claims < 3 && Instant::now() < deadline {
                claims += a
                    .drain()
                    .iter()
                    .filter(|m| matches!(m, Message::Claim(_)))
                    .count();
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(claims >= 3, "{claims} claims");
            a.pause().unwrap();
            a.kill("test over");
        }
        Err(e) => {
            assert!(!kvm, "with working KVM the guest must boot: {e}");
            let e = e.to_string();
            assert!(
                e.contains("did not connect") && e.contains("hardware virtualization: no"),
                "{e}"
            );
            assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
            eprintln!("as expected here: {e}");
        }
    }
    assert!(!fc_alive(), "firecracker is still running");
}

/// What a daemon killed with SIGKILL leaves of Firecracker guests (its jails' cgroups with
/// their VMs, outside the process backend's watchdog) is killed and removed by the next one.
#[test]
fn a_dead_daemons_jails_are_reaped() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var("MAXWELL_REQUIRE_MICROVM_TESTS").as_deref() != Ok("1"),
            "MAXWELL_REQUIRE_MICROVM_TESTS=1 but not root"
        );
        eprintln!("SKIP: reaping jails needs root");
        return;
    }
    let root = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.procs").exists())
        .unwrap();
    // A pid that is gone: a child that has exited and been reaped.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let parent = root.join(format!("maxwell-firecracker-{dead}"));
    let vm = parent.join("orphan");
    std::fs::create_dir_all(&vm).unwrap();
    let mut orphan = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    std::fs::write(vm.join("cgroup.procs"), orphan.id().to_string()).unwrap();
    let reaped = maxwell_sandbox::microvm::firecracker::reap_jails();
    assert!(
        reaped
            .iter()
            .any(|r| r.contains("orphan") && r.contains("1 process")),
        "{reaped:?}"
    );
    let status = orphan.wait().unwrap();
    assert!(!status.success(), "the orphan was killed: {status}");
    assert!(!parent.exists(), "{} is left", parent.display());
}
