//! MicroVM agents through the user's commands: `maxwell microvm check`, `maxwell experiment
//! --backend microvm` and `maxwell daemon` with `backend = "microvm"`. Needs root and what
//! `.ci/microvm-deps` installs; without it each test prints a skip line, unless
//! `MAXWELL_REQUIRE_MICROVM_TESTS=1`, when it fails.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::Daemon;
use crate::{fresh_dir, maxwell, stderr, stdout};

/// Whether microVM agents can run here, by the product's own check; prints a skip line (or
/// fails, when required) if not.
fn ready() -> bool {
    let o = maxwell(&["microvm", "check", "--json"], "");
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(!v["accel_reason"].as_str().unwrap().is_empty(), "{v}");
    if o.status.success() && nix::unistd::geteuid().is_root() {
        return true;
    }
    let why = v["error"].as_str().unwrap_or("needs root").to_string();
    assert!(
        std::env::var("MAXWELL_REQUIRE_MICROVM_TESTS").as_deref() != Ok("1"),
        "MAXWELL_REQUIRE_MICROVM_TESTS=1 but microVMs cannot run here: {why}"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP: microVM agents: {why}");
    false
}

#[test]
fn the_check_says_which_accelerator_and_why() {
    let o = maxwell(&["microvm", "check"], "");
    let text = stdout(&o);
    assert!(text.contains("hardware virtualization:"), "{text}");
    assert!(text.contains("VMM: "), "{text}");
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_experiment_of_microvm_agents_verifies_their_claims() {
    if !ready() {
        return;
    }
    let o = maxwell(
        &[
            "experiment",
            "--duration",
            "3s",
            "--backend",
            "microvm",
            "--scientists",
            "1",
            "--leeches",
            "1",
            "--json",
        ],
        "",
    );
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}",
        stderr(&o)
    );
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["backend"], "microvm");
    for arm in v["arms"].as_array().unwrap() {
        assert!(arm["claims_verified"].as_u64().unwrap() > 0, "{arm}");
        assert_eq!(arm["claims_refuted"], 0, "{arm}");
    }
    assert_eq!(v["leeches_alive_at_end"], 0, "{v}");
}

#[test]
fn a_daemon_with_the_microvm_backend_runs_a_guest_scientist_and_removes_it() {
    if !ready() {
        return;
    }
    let dir = fresh_dir("microvm-daemon");
    let config = dir.join("maxwell.toml");
    std::fs::write(&config, "backend = \"microvm\"\n").unwrap();
    let d = Daemon::start_with(&dir, &["--config", config.to_str().unwrap()]);
    d.spawn("sci", "scientist", "1000 JOULE");
    let deadline = Instant::now() + Duration::from_secs(60);
    let sci = loop {
        let list = d.agents();
        let sci = list.iter().find(|a| a["name"] == "sci").unwrap().clone();
        assert_eq!(sci["backend"], "microvm", "{sci}");
        if sci["work"].as_u64().unwrap_or(0) > 0 || Instant::now() > deadline {
            break sci;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(sci["work"].as_u64().unwrap() > 0, "no verified work: {sci}");
    assert!(sci["quanta"].as_u64().unwrap() > 0, "{sci}");
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("microvm backend"), "{log}");
    // Nothing of the guest is left: no VMM, no vsock device.
    let ps = std::process::Command::new("pgrep")
        .args(["-f", "maxwell.agent=sci "])
        .output()
        .unwrap();
    assert!(
        stdout(&ps).trim().is_empty(),
        "left running: {}",
        stdout(&ps)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
