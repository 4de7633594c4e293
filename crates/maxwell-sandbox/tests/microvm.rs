//! MicroVM agents end to end: real guests under QEMU (KVM where hardware virtualization works,
//! else TCG), the guest init relaying the agent protocol over vhost-user vsock, and hostile
//! guests. Needs root, QEMU, vhost-device-vsock, a guest kernel and the static guest programs
//! (`.ci/microvm-deps` installs and builds them all); without them each test prints a skip line
//! and returns, unless `MAXWELL_REQUIRE_MICROVM_TESTS=1`, when it fails.
//!
//! After every test no process of the VM may be alive and no cgroup or home directory left.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use maxwell_sandbox::microvm::{
    MicrovmAgent, MicrovmConfig, MicrovmSandbox, PauseVia, SpawnMode, guest_bin_dir,
};
use maxwell_sandbox::process::testing::alive;
use maxwell_sandbox::{Agent, AgentSpec, ExitReason, Limits, Message, Program, Status};

static LOCK: Mutex<()> = Mutex::new(());

fn required() -> bool {
    std::env::var("MAXWELL_REQUIRE_MICROVM_TESTS").as_deref() == Ok("1")
}

fn setup() -> Option<(MutexGuard<'static, ()>, MicrovmSandbox, PathBuf)> {
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let made = MicrovmConfig::discover().and_then(MicrovmSandbox::new);
    let bins = guest_bin_dir().filter(|d| d.join("hostile").is_file());
    match (made, bins) {
        (Ok(s), Some(b)) => {
            eprintln!("microvm: {}", s.describe());
            Some((guard, s, b))
        }
        (r, b) => {
            let why = match (r, b) {
                (Err(e), _) => e.to_string(),
                (_, None) => {
                    "the static guest programs are missing (run scripts/build-guest)".to_string()
                }
                _ => unreachable!(),
            };
            assert!(
                !required(),
                "MAXWELL_REQUIRE_MICROVM_TESTS=1 but microVMs cannot run here: {why}"
            );
            eprintln!("SKIP: microVM agents cannot run here: {why}");
            None
        }
    }
}

fn spec(bins: &std::path::Path, name: &str, program: &str, args: &[&str]) -> AgentSpec {
    AgentSpec {
        name: name.into(),
        program: Program::Native {
            path: bins.join(program),
            args: args.iter().map(|s| s.to_string()).collect(),
        },
        limits: Limits::default(),
    }
}

/// What must be gone once the VM is.
struct Left {
    pids: Vec<i32>,
    dirs: Vec<PathBuf>,
}

fn watch(a: &MicrovmAgent) -> Left {
    let mut dirs = a.cgroups();
    dirs.push(a.home().to_path_buf());
    let mut pids = a.pids();
    pids.push(a.vmm_pid() as i32);
    Left { pids, dirs }
}

fn check(left: &Left) {
    for &p in &left.pids {
        assert!(!alive(p), "process {p} of the VM is still alive");
    }
    for d in &left.dirs {
        assert!(!d.exists(), "{} was left behind", d.display());
    }
    assert!(
        left.pids.len() >= 2,
        "the VMM and its vsock device: {:?}",
        left.pids
    );
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    f()
}

fn pct(v: &mut [Duration], p: usize) -> Duration {
    v.sort();
    v[(v.len() * p / 100).min(v.len() - 1)]
}

#[test]
fn a_scientist_in_a_guest_claims_work_pauses_and_leaves_nothing() {
    let Some((_g, sb, bins)) = setup() else {
        return;
    };
    let mut a = sb
        .spawn_vm(&spec(&bins, "vm-sci", "scientist", &[]))
        .unwrap();
    eprintln!("boot: {:?}", a.boot_time());
    let left = watch(&a);
    assert_eq!(a.status(), Status::Paused);
    a.mailbox()
        .give_work((0..64u64).map(|i| (i * 10_000, (i + 1) * 10_000)));
    a.inform(maxwell_core::Tokens(1_000_000), maxwell_core::Tokens(10));
    a.usage().unwrap();
    a.resume().unwrap();
    let mut claims = 0;
    assert!(
        wait_until(Duration::from_secs(30), || {
            claims += a
                .drain()
                .iter()
                .filter(|m| matches!(m, Message::Claim(_)))
                .count();
            claims >= 3
        }),
        "the guest's scientist made {claims} claims"
    );
    let running = a.usage().unwrap();
    assert!(
        running.cpu.0 > 10_000_000,
        "vCPU time while running: {running:?}"
    );
    assert!(
        running.resident.0 > 1 << 20,
        "guest RAM touched: {running:?}"
    );

    // Paused, the guest's vCPU does not run.
    a.pause().unwrap();
    a.usage().unwrap();
    thread::sleep(Duration::from_millis(500));
    let paused = a.usage().unwrap();
    assert!(
        paused.cpu.0 < 5_000_000,
        "vCPU time while paused: {paused:?}"
    );
    a.drain();
    thread::sleep(Duration::from_millis(200));
    assert!(
        a.drain().iter().all(|m| !matches!(m, Message::Claim(_))),
        "a paused guest made claims"
    );

    let (mut p, mut r) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let t = Instant::now();
        a.resume().unwrap();
        r.push(t.elapsed());
        thread::sleep(Duration::from_millis(2));
        let t = Instant::now();
        a.pause().unwrap();
        p.push(t.elapsed());
    }
    eprintln!(
        "pause (freezer) p50 {:?} p99 {:?}; resume p50 {:?} p99 {:?}",
        pct(&mut p, 50),
        pct(&mut p, 99),
        pct(&mut r, 50),
        pct(&mut r, 99)
    );
    let e = a.kill("test over");
    assert_eq!(e.reason, ExitReason::Killed);
    drop(a);
    check(&left);
}

/// A hostile guest, booted (vsock) or restored from a template (virtio-serial): the hostile
/// tests run on both channels.
fn hostile(
    sb: &MicrovmSandbox,
    bins: &std::path::Path,
    mode: &str,
    restored: bool,
) -> (MicrovmAgent, Left) {
    let s = spec(bins, &format!("vm-{mode}"), "hostile", &["--mode", mode]);
    let how = if restored {
        SpawnMode::Snapshot
    } else {
        SpawnMode::Boot
    };
    let a = sb.with_spawn(how).spawn_agent(&s).unwrap();
    let left = watch(&a);
    (a, left)
}

const BOTH: [bool; 2] = [false, true];

#[test]
fn a_guest_that_sends_garbage_is_reported_and_its_host_keeps_serving() {
    let Some((_g, sb, bins)) = setup() else {
        return;
    };
    for restored in BOTH {
        let (mut a, left) = hostile(&sb, &bins, "garbage", restored);
        a.resume().unwrap();
        let mut violations = 0;
        assert!(
            wait_until(Duration::from_secs(20), || {
                violations += a
                    .drain()
                    .iter()
                    .filter(|m| matches!(m, Message::Violation(_)))
                    .count();
                violations >= 3
            }),
            "restored {restored}: {violations} violations"
        );
        assert!(matches!(a.status(), Status::Running));
        a.pause().unwrap();
        a.kill("violations");
        drop(a);
        check_restored(&left);
    }
}

#[test]
fn a_guest_that_floods_the_vsock_fills_only_its_own_bounded_mailbox() {
    let Some((_g, sb, bins)) = setup() else {
        return;
    };
    for restored in BOTH {
        let (mut a, left) = hostile(&sb, &bins, "flood", restored);
        a.resume().unwrap();
        thread::sleep(Duration::from_secs(3));
        // Pausing still works while the guest writes as fast as it can.
        let t = Instant::now();
        a.pause().unwrap();
        let took = t.elapsed();
        let got = a.drain();
        assert!(
            got.len() <= maxwell_sandbox::MAX_PENDING + 2,
            "{} messages",
            got.len()
        );
        assert!(
            took < Duration::from_millis(500),
            "pause under a flood took {took:?}"
        );
        a.kill("flood");
        drop(a);
        check_restored(&left);
    }
}

#[test]
fn a_guest_that_crashes_its_kernel_or_exits_ends_only_that_agent() {
    let Some((_g, sb, bins)) = setup() else {
        return;
    };
    let (mut quiet, quiet_left) = hostile(&sb, &bins, "silent", false);
    for (mode, detail, restored) in [
        ("crash-kernel", "without the guest's init", false),
        ("exit", "code 3", false),
        ("crash-kernel", "without the guest's init", true),
        ("exit", "code 3", true),
    ] {
        let (mut a, left) = hostile(&sb, &bins, mode, restored);
        a.resume().unwrap();
        assert!(
            wait_until(Duration::from_secs(30), || matches!(
                a.status(),
                Status::Exited(_)
            )),
            "{mode}: the guest is still up"
        );
        let Status::Exited(e) = a.status() else {
            unreachable!()
        };
        assert_eq!(e.reason, ExitReason::Crashed, "{mode}: {e:?}");
        assert!(e.detail.contains(detail), "{mode}: {e:?}");
        assert!(a.resume().is_err());
        drop(a);
        check_restored(&left);
    }
    // The silent one, which never said a word, is still there and still pauses.
    quiet.resume().unwrap();
    quiet.pause().unwrap();
    assert_eq!(quiet.status(), Status::Paused);
    drop(quiet);
    check(&quiet_left);
}

/// Work done in 10 ms quanta (pause and resume each) against running straight through, in one
/// run, paused by the freezer (the default) and by QMP: what slicing a guest into quanta costs.
#[test]
fn a_guest_sliced_into_quanta_keeps_most_of_its_throughput() {
    let Some((_g, sb, bins)) = setup() else {
        return;
    };
    let mut a = sb
        .spawn_vm(&spec(&bins, "vm-slice", "scientist", &[]))
        .unwrap();
    a.mailbox()
        .give_work((0..100_000u64).map(|i| (i * 10_000, (i + 1) * 10_000)));
    let claims = |a: &mut MicrovmAgent| {
        a.drain()
            .iter()
            .filter(|m| matches!(m, Message::Claim(_)))
            .count()
    };
    // Warm up (TCG translates the guest's code once).
    a.resume().unwrap();
    thread::sleep(Duration::from_secs(2));
    a.pause().unwrap();
    claims(&mut a);
    // Drained every 10 ms, as the daemon does: the mailbox holds at most MAX_PENDING.
    let span = Duration::from_secs(4);
    a.resume().unwrap();
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < span {
        thread::sleep(Duration::from_millis(10));
        n += claims(&mut a);
    }
    a.pause().unwrap();
    let straight = (n + claims(&mut a)) as f64 / t.elapsed().as_secs_f64();
    let sliced = |a: &mut MicrovmAgent| {
        let t = Instant::now();
        let mut ran = Duration::ZERO;
        let mut n = 0;
        while t.elapsed() < span * 2 {
            let r = Instant::now();
            a.resume().unwrap();
            thread::sleep(Duration::from_millis(10));
            a.pause().unwrap();
            ran += r.elapsed();
            n += claims(a);
            thread::sleep(Duration::from_millis(10));
        }
        n as f64 / ran.as_secs_f64()
    };
    let freezer = sliced(&mut a);
    a.set_pause_via(PauseVia::Vmm).unwrap();
    let qmp = sliced(&mut a);
    eprintln!(
        "claims per second of running time: straight {straight:.1}; in 10 ms quanta paused by \
         the freezer {freezer:.1}, by QMP stop/cont {qmp:.1}"
    );
    assert!(
        freezer >= 0.4 * straight,
        "the freezer's quanta kept {freezer:.1} of {straight:.1} claims/s"
    );
    drop(a);
}

#[test]
fn agents_restored_from_a_template_start_fast_and_work_under_their_own_names() {
    let Some((_g, sb, bins)) = setup() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("maxwell-tpl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("scientist.state");
    let saved = sb
        .make_template(&spec(&bins, "sci", "scientist", &[]), &state)
        .unwrap();
    eprintln!(
        "template saved in {saved:?}: {} bytes",
        state.metadata().unwrap().len()
    );
    let mut took = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        let mut a = sb
            .spawn_restored(&spec(&bins, &format!("vm-r{i}"), "scientist", &[]), &state)
            .unwrap();
        took.push(t.elapsed());
        let left = watch(&a);
        assert_eq!(a.status(), Status::Paused);
        a.mailbox()
            .give_work((0..64u64).map(|k| (k * 10_000, (k + 1) * 10_000)));
        a.resume().unwrap();
        let mut claims = 0;
        let mut hello = false;
        assert!(
            wait_until(Duration::from_secs(20), || {
                for m in a.drain() {
                    match m {
                        Message::Claim(_) => claims += 1,
                        // The guest's agent speaks under the name the host gave it.
                        Message::Violation(v) => panic!("restored guest: {v}"),
                        Message::Log(_) => hello = true,
                        _ => {}
                    }
                }
                claims >= 3
            }),
            "restored guest {i} made {claims} claims"
        );
        assert!(hello);
        a.kill("test over");
        drop(a);
        check_restored(&left);
    }
    eprintln!("restore to a paused agent: {took:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn check_restored(left: &Left) {
    for &p in &left.pids {
        assert!(!alive(p), "process {p} of the VM is still alive");
    }
    for d in &left.dirs {
        assert!(!d.exists(), "{} was left behind", d.display());
    }
}

#[test]
fn a_spinning_guest_stops_when_paused_and_its_erasure_is_measured_by_the_host() {
    let Some((_g, sb, bins)) = setup() else {
        return;
    };
    for restored in BOTH {
        // Spinning: paused, its vCPU does not run.
        let (mut a, left) = hostile(&sb, &bins, "spin", restored);
        a.resume().unwrap();
        thread::sleep(Duration::from_secs(1));
        let ran = a.usage().unwrap();
        assert!(ran.cpu.0 > 300_000_000, "restored {restored}: spun {ran:?}");
        let t = Instant::now();
        a.pause().unwrap();
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        a.usage().unwrap();
        thread::sleep(Duration::from_millis(500));
        let paused = a.usage().unwrap();
        assert!(
            paused.cpu.0 < 5_000_000,
            "restored {restored}: paused {paused:?}"
        );
        // Spinning in registers erases (almost) nothing.
        let idle_erasure = ran.erased.0;
        drop(a);
        check_restored(&left);

        // Overwriting 32 MiB again and again: the host's samples of the guest's RAM see it,
        // though the guest says nothing.
        let (mut a, left) = hostile(&sb, &bins, "erase", restored);
        a.resume().unwrap();
        let mut erased = 0u64;
        for _ in 0..20 {
            thread::sleep(Duration::from_millis(100));
            erased += a.usage().unwrap().erased.0;
        }
        eprintln!(
            "restored {restored}: erased {} MiB in 2 s by the eraser, {} KiB in 1 s by the spinner",
            erased >> 20,
            idle_erasure >> 10
        );
        assert!(
            erased > 16 << 20,
            "restored {restored}: erased {erased} bytes"
        );
        assert!(a.usage().unwrap().resident.0 > 32 << 20);
        drop(a);
        check_restored(&left);
    }
}

#[test]
fn a_dead_daemons_templates_are_removed_by_the_next_sandbox() {
    let Some((_g, _sb, _)) = setup() else {
        return;
    };
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id();
    gone.wait().unwrap();
    let left = std::env::temp_dir().join(format!("maxwell-templates-{dead}"));
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("0.state.ram"), b"old").unwrap();
    let sb = MicrovmSandbox::new(MicrovmConfig::discover().unwrap()).unwrap();
    assert!(
        sb.reaped()
            .iter()
            .any(|r| r.contains(&format!("maxwell-templates-{dead}"))),
        "{:?}",
        sb.reaped()
    );
    assert!(!left.exists());
}
