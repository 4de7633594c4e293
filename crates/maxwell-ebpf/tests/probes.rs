//! The probes against the running kernel. Needs root: without it each test prints a skip line
//! and returns, unless `MAXWELL_REQUIRE_ROOT_TESTS=1`, when it fails.
//!
//! The measured process is this test binary, re-run as the ignored `helper_free` test inside a
//! cgroup2 cgroup the test creates; it frees memory in a known pattern and says `done`.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use maxwell_ebpf::{Probes, SyscallSet, cgroup_id};

const CHUNK: usize = 40 << 20;
const ROUNDS: usize = 5;

fn required() -> bool {
    std::env::var("MAXWELL_REQUIRE_ROOT_TESTS").as_deref() == Ok("1")
}

fn probes_or_skip() -> Option<Probes> {
    match Probes::load() {
        Ok(p) => Some(p),
        Err(e) if !required() => {
            eprintln!("SKIP: {e}");
            None
        }
        Err(e) => panic!("MAXWELL_REQUIRE_ROOT_TESTS=1 but {e}"),
    }
}

struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> TestCgroup {
        let d = maxwell_ebpf::cgroup2_mount()
            .unwrap()
            .join(format!("maxwell-ebpf-test-{}-{name}", std::process::id()));
        std::fs::create_dir(&d).unwrap();
        TestCgroup(d)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        std::fs::remove_dir(&self.0).unwrap();
    }
}

#[test]
#[ignore = "run by the other tests inside a cgroup"]
fn helper_free() {
    let Ok(cg) = std::env::var("HELPER_CGROUP") else {
        return;
    };
    std::fs::write(format!("{cg}/cgroup.procs"), std::process::id().to_string()).unwrap();
    let rounds: usize = std::env::var("HELPER_ROUNDS").unwrap().parse().unwrap();
    for _ in 0..rounds {
        // Above glibc's largest mmap threshold (32 MiB): mapped on its own and unmapped on drop.
        let mut v = vec![0u8; CHUNK];
        for page in v.chunks_mut(4096) {
            page[0] = 1;
        }
        std::hint::black_box(&v);
    }
    for _ in 0..1000 {
        std::hint::black_box(std::process::id());
    }
    // On its own line: with one test thread the harness has printed "test helper_free ... "
    // without a newline before the test runs.
    println!("\nhelper-done");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
}

/// Starts the ignored test `helper` of this binary with `env`, its stdin and stdout piped.
fn spawn_helper(
    helper: &str,
    env: &[(&str, String)],
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([helper, "--exact", "--ignored", "--nocapture"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    (child, out)
}

/// Reads the helper's lines until `f` takes one (the markers are on lines of their own).
fn read_until<T>(
    out: &mut BufReader<std::process::ChildStdout>,
    mut f: impl FnMut(&str) -> Option<T>,
) -> T {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "the helper ended before its marker"
        );
        if let Some(t) = f(line.trim()) {
            return t;
        }
    }
}

/// Runs the helper in `cg` until it says `done`; returns it to be ended by dropping stdin.
fn run_helper(
    cg: &TestCgroup,
    rounds: usize,
) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let (child, mut out) = spawn_helper(
        "helper_free",
        &[
            ("HELPER_CGROUP", cg.0.display().to_string()),
            ("HELPER_ROUNDS", rounds.to_string()),
        ],
    );
    read_until(&mut out, |l| (l == "helper-done").then_some(()));
    (child, out)
}

#[test]
fn frees_are_counted_per_cgroup_and_only_there() {
    let Some(mut probes) = probes_or_skip() else {
        return;
    };
    let freer = TestCgroup::new("freer");
    let idle = TestCgroup::new("idle");
    let (a, b) = (cgroup_id(&freer.0).unwrap(), cgroup_id(&idle.0).unwrap());
    probes.watch(a, &SyscallSet::EMPTY).unwrap();
    probes.watch(b, &SyscallSet::EMPTY).unwrap();

    let (mut child, mut out) = run_helper(&freer, ROUNDS);
    let e = probes.erasure(a).unwrap();
    let calls = probes.calls(a).unwrap();
    drop(child.stdin.take());
    std::io::Read::read_to_end(&mut out, &mut Vec::new()).unwrap();
    child.wait().unwrap();

    let expected = (ROUNDS * (CHUNK + 4096)) as u64;
    // The test harness itself frees a little (its own buffers, thread stacks): at most 2 MiB.
    assert!(
        e.unmapped >= expected && e.unmapped <= expected + (2 << 20),
        "unmapped {} bytes, expected {expected} to {expected} + 2 MiB: {e:?}",
        e.unmapped
    );
    assert!(
        calls.counts[39] >= 1000,
        "getpid calls: {}",
        calls.counts[39]
    );
    assert!(
        calls.counts[11] >= ROUNDS as u64,
        "munmap calls: {}",
        calls.counts[11]
    );
    assert_eq!(
        probes.erasure(b).unwrap().total(),
        0,
        "the idle cgroup was charged"
    );
    assert_eq!(probes.calls(b).unwrap().total(), 0);
    assert_eq!(probes.losses().unwrap(), 0);
    probes.unwatch(a);
    probes.unwatch(b);
    assert!(
        probes.erasure(a).is_err(),
        "an unwatched cgroup still has an entry"
    );
}

#[test]
#[ignore = "run by probes_are_gone_when_their_process_stops_or_dies"]
fn helper_hold() {
    if std::env::var("HELPER_HOLD").is_err() {
        return;
    }
    let p = Probes::load().unwrap();
    let (progs, maps) = p.kernel_ids().unwrap();
    let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    println!("\nids {} {}", list(&progs), list(&maps));
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    if line.trim() == "stop" {
        drop(p);
        println!("\nhelper-stopped");
        std::io::stdin().read_line(&mut line).unwrap();
    }
}

#[test]
fn probes_are_gone_when_their_process_stops_or_dies() {
    if probes_or_skip().is_none() {
        return;
    }
    for how in ["stop", "sigkill"] {
        let (mut child, mut out) = spawn_helper("helper_hold", &[("HELPER_HOLD", "1".into())]);
        let ids = read_until(&mut out, |l| l.strip_prefix("ids ").map(str::to_string));
        let parse = |s: &str| -> Vec<u32> { s.split(',').map(|x| x.parse().unwrap()).collect() };
        let (progs, maps) = ids.split_once(' ').unwrap();
        let (progs, maps) = (parse(progs), parse(maps));
        assert_eq!(progs.len(), 8);
        assert!(maps.len() >= 5, "maps: {maps:?}");
        let (lp, lm) = maxwell_ebpf::loaded_ids();
        assert!(progs.iter().all(|p| lp.contains(p)) && maps.iter().all(|m| lm.contains(m)));
        if how == "stop" {
            writeln!(child.stdin.as_mut().unwrap(), "stop").unwrap();
            read_until(&mut out, |l| (l == "helper-stopped").then_some(()));
        } else {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        // The kernel frees programs and maps once their last reference goes (asynchronously,
        // after an RCU grace period).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (lp, lm) = maxwell_ebpf::loaded_ids();
            let left: Vec<u32> = progs.iter().filter(|p| lp.contains(p)).copied().collect();
            let left_maps: Vec<u32> = maps.iter().filter(|m| lm.contains(m)).copied().collect();
            if left.is_empty() && left_maps.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "after {how}: programs {left:?} and maps {left_maps:?} are still loaded"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        drop(child.stdin.take());
        let _ = child.wait();
    }
}
