//! The syscall audit and measured erasure through the daemon: `backend = "process"`, a native
//! agent with a deny list killed for its forbidden call (the cause in the ledger, still there
//! after a restart), another one's syscalls in `/v1/agents/{name}`, its series and `/metrics`.
//! Needs root and a kernel that loads the probes; without them it prints a skip line, unless
//! `MAXWELL_REQUIRE_ROOT_TESTS=1`, when it fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::Daemon;
use crate::{fresh_dir, maxwell, stdout};

fn hostile() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_maxwell"))
        .parent()?
        .join("hostile");
    p.is_file().then_some(p)
}

/// Whether the probes load here, by `maxwell sensors --json`; prints a skip line (or fails,
/// when required) if not.
fn ready() -> Option<PathBuf> {
    let o = maxwell(&["sensors", "--json", "--interval", "10ms"], "");
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let detail = v["erasure"]["detail"].as_str().unwrap().to_string();
    let why = if v["erasure"]["probes"] != true {
        detail
    } else if let Some(h) = hostile() {
        return Some(h);
    } else {
        "the hostile agent is not built (cargo test --workspace builds it)".into()
    };
    assert!(
        std::env::var("MAXWELL_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"),
        "MAXWELL_REQUIRE_ROOT_TESTS=1 but: {why}"
    );
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIP: eBPF audit through the daemon: {why}"
    );
    None
}

fn agent(d: &Daemon, name: &str) -> Value {
    d.agents()
        .into_iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no agent {name}"))
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_daemon_kills_on_a_forbidden_syscall_records_why_and_reports_syscalls() {
    let Some(hostile) = ready() else { return };
    let hostile = hostile.to_str().unwrap();
    let dir = fresh_dir("ebpf-daemon");
    let config = dir.join("maxwell.toml");
    std::fs::write(&config, "backend = \"process\"\n").unwrap();
    let d = Daemon::start_with(&dir, &["--config", config.to_str().unwrap()]);
    for (name, deny, mode) in [("tcp", "socket", "tcp"), ("freer", "ptrace", "free")] {
        // The data directory before `--`: what follows is the program's.
        let o = maxwell(
            &[
                "agents",
                "spawn",
                name,
                "--native",
                hostile,
                "--fund",
                "100 JOULE",
                "--deny",
                deny,
                "--data-dir",
                dir.to_str().unwrap(),
                "--",
                "--mode",
                mode,
                "--rounds",
                "3",
            ],
            "",
        );
        assert!(o.status.success(), "{}", crate::stderr(&o));
    }
    // A bad name is refused with the fix.
    let o = d.cli(&[
        "agents",
        "spawn",
        "bad",
        "--native",
        hostile,
        "--fund",
        "100 JOULE",
        "--deny",
        "sockett",
    ]);
    assert!(!o.status.success());
    assert!(
        crate::stderr(&o).contains("unknown syscall \"sockett\""),
        "{}",
        crate::stderr(&o)
    );

    wait_for("the tcp agent's death", Duration::from_secs(60), || {
        agent(&d, "tcp")["state"] == "dead"
    });
    let tcp = agent(&d, "tcp");
    let cause = tcp["cause"].as_str().unwrap();
    assert!(cause.contains("forbidden syscall socket"), "{tcp}");
    assert_eq!(tcp["syscalls"]["denied"], "socket", "{tcp}");

    wait_for("the freer's syscalls", Duration::from_secs(30), || {
        agent(&d, "freer")["syscalls"]["by_class"]["memory"]
            .as_u64()
            .unwrap_or(0)
            > 3
    });
    let freer = agent(&d, "freer");
    assert_ne!(freer["state"], "dead", "{freer}");
    let (code, one) = d.http("GET", "/v1/agents/freer", "");
    assert_eq!(code, 200, "{one}");
    let one: Value = serde_json::from_str(&one).unwrap();
    assert!(
        one["syscalls"]["top"].as_array().unwrap().len() > 3,
        "{one}"
    );
    let (code, series) = d.http("GET", "/v1/agents/freer/syscalls", "");
    assert_eq!(code, 200, "{series}");
    let series: Value = serde_json::from_str(&series).unwrap();
    assert!(
        !series["samples"].as_array().unwrap().is_empty(),
        "{series}"
    );
    let (code, metrics) = d.http("GET", "/metrics", "");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("maxwell_agent_syscalls_total{agent=\"freer\",class=\"memory\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("maxwell_ebpf_lost_events_total 0"),
        "{metrics}"
    );
    let (code, body) = d.http("GET", "/v1/agents/nobody", "");
    assert_eq!(code, 404, "{body}");

    // The cause is in the ledger: a restarted daemon still says why the agent died.
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    crate::assert_ledger_verifies(&dir.join("ledger.db"));
    let d = Daemon::start_with(&dir, &["--config", config.to_str().unwrap()]);
    let tcp = agent(&d, "tcp");
    assert!(
        tcp["cause"]
            .as_str()
            .unwrap()
            .contains("forbidden syscall socket"),
        "{tcp}"
    );
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_benchmark_counts_every_call_and_reports_its_figures() {
    if ready().is_none() {
        return;
    }
    // A short run: the figures' values are for the benchmark to report, not for a test to
    // time; what must hold is that the kernel counted every call the worker made.
    let o = maxwell(
        &["bench", "ebpf", "--seconds", "0.2", "--runs", "1", "--json"],
        "",
    );
    assert!(o.status.success(), "{}", crate::stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["probe_losses"], 0, "{v}");
    assert_eq!(v["workloads"].as_array().unwrap().len(), 3, "{v}");
    assert!(v["event_rate"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["event_ns_agent"].as_f64().is_some(), "{v}");
}
