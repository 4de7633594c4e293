use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use serde_json::Value;

use crate::{maxwell, stderr};

fn fixture(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("maxwell-it-sensors-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let zone = dir.join("sys/class/powercap/intel-rapl:0");
    std::fs::create_dir_all(&zone).unwrap();
    std::fs::write(zone.join("name"), "package-0\n").unwrap();
    std::fs::write(zone.join("energy_uj"), "1000\n").unwrap();
    std::fs::write(zone.join("max_energy_range_uj"), "262143328850\n").unwrap();
    std::fs::create_dir_all(dir.join("proc")).unwrap();
    std::fs::write(
        dir.join("proc/stat"),
        "cpu  1 0 0 1 0 0 0 0\ncpu0 1 0 0 1\n",
    )
    .unwrap();
    dir
}

fn sensors_json(root: &str) -> Value {
    let o = maxwell(
        &["sensors", "--json", "--interval", "10ms", "--root", root],
        "",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn this_machine_reports_the_model_and_why_not_the_rest() {
    // Whatever this host has, every candidate carries a reason and the choice is labelled.
    let v = sensors_json("/");
    for c in v["candidates"].as_array().unwrap() {
        assert!(c["name"].is_string() && c["available"].is_boolean());
        assert!(!c["reason"].as_str().unwrap().is_empty(), "{c}");
    }
    let energy = v["energy"]["source"].as_str().unwrap();
    assert_eq!(v["energy"]["modelled"], energy == "model");
    if energy == "model" {
        assert!(
            v["energy"]["detail"]
                .as_str()
                .unwrap()
                .contains("per busy core")
        );
        let powercap = v["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "powercap")
            .unwrap();
        assert_eq!(powercap["available"], false);
    }
}

#[test]
fn a_fixture_with_rapl_uses_it() {
    let dir = fixture("rapl");
    let v = sensors_json(dir.to_str().unwrap());
    assert_eq!(v["energy"]["source"], "powercap");
    assert_eq!(v["energy"]["modelled"], false);
    assert_eq!(v["temperature"]["modelled"], true);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn energy_uj_readable_only_by_root_is_reported_as_such() {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"));
    if !is_root || Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("skipped: needs root and setpriv to run the reader as another user");
        return;
    }
    let dir = fixture("perm");
    let energy = dir.join("sys/class/powercap/intel-rapl:0/energy_uj");
    std::fs::set_permissions(&energy, std::fs::Permissions::from_mode(0o400)).unwrap();
    // The binary and the fixture must be reachable by the unprivileged user.
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            env!("CARGO_BIN_EXE_maxwell"),
        ])
        .args([
            "sensors",
            "--json",
            "--interval",
            "10ms",
            "--root",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    if !o.status.success() {
        eprintln!(
            "skipped: the unprivileged user cannot run the binary here: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        return;
    }
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let powercap = v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "powercap")
        .unwrap();
    let reason = powercap["reason"].as_str().unwrap();
    assert_eq!(powercap["available"], false);
    assert!(
        reason.contains("permission denied") && reason.contains("Linux 5.10"),
        "{reason}"
    );
    assert_eq!(v["energy"]["source"], "model");
}

#[test]
fn bench_sensors_prints_the_overhead() {
    let o = maxwell(&["bench", "sensors", "--json", "--samples", "200"], "");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        v["overhead_pct_of_one_core"]
            .as_f64()
            .is_some_and(|x| x > 0.0)
    );
    assert!(v["per_sample_us"].as_f64().is_some_and(|x| x > 0.0));
}
