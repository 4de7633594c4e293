use std::process::{Command, Stdio};

use serde_json::Value;

use crate::{maxwell, stderr, stdout};

#[test]
fn simulate_json_is_deterministic_and_kills_every_parasite() {
    let a = maxwell(&["simulate", "--seed", "1", "--json"], "");
    assert!(a.status.success(), "{}", stderr(&a));
    let b = maxwell(&["simulate", "--seed", "1", "--json"], "");
    assert_eq!(a.stdout, b.stdout, "same seed, different bytes");
    let v: Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(v["conservation_ok"], true);
    assert_eq!(v["simulated"], true);
    assert!(v["final_temperature_c"].is_f64());
    assert_eq!(v["ledger_digest"].as_str().unwrap().len(), 64);
    let agents = v["agents"].as_array().unwrap();
    assert_eq!(agents.len(), 10);
    for a in agents {
        for key in [
            "name",
            "profile",
            "alive",
            "died_at_tick",
            "cause",
            "work",
            "spent",
        ] {
            assert!(a.get(key).is_some(), "agent lacks {key}: {a}");
        }
        for key in ["slots", "rent", "landauer", "fines"] {
            assert!(a["spent"][key].is_u64(), "spent lacks {key}");
        }
        let alive = a["alive"].as_bool().unwrap();
        if a["profile"] == "scientist" {
            assert!(alive, "{a}");
        } else {
            assert!(
                !alive && a["died_at_tick"].is_u64() && a["cause"].is_string(),
                "{a}"
            );
        }
    }
}

#[test]
fn simulate_tells_the_story_and_demo_says_it_is_a_simulation() {
    let o = maxwell(&["simulate", "--seed", "1"], "");
    assert!(o.status.success());
    let text = stdout(&o);
    for phase in [
        "1. The leeches outbid",
        "2. The price climbs",
        "3. The leeches go insolvent",
        "4. The heat stays within the budget",
        "5. The scientists have the machine",
    ] {
        assert!(text.contains(phase), "missing {phase:?} in\n{text}");
    }
    assert!(!text.contains("Did not happen"), "{text}");
}

#[test]
fn a_bad_scenario_is_refused_with_file_line_and_fix() {
    let dir = std::env::temp_dir().join(format!("maxwell-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    let text = format!(
        "{}\n[market]\nslot_power = \"15 parsecs\"\n",
        maxwell_sim::DEFAULT_SCENARIO
    );
    std::fs::write(&path, text).unwrap();
    let o = maxwell(&["simulate", "--scenario", path.to_str().unwrap()], "");
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("bad.toml") && err.contains("line") && err.contains("15W"),
        "{err}"
    );
    let missing = maxwell(&["simulate", "--scenario", "/nonexistent/x.toml"], "");
    assert_eq!(missing.status.code(), Some(1));
    assert!(stderr(&missing).contains("--print-scenario"));
    // The printed scenario is the one that runs.
    let printed = maxwell(&["simulate", "--print-scenario"], "");
    std::fs::write(&path, &printed.stdout).unwrap();
    let o = maxwell(
        &["simulate", "--scenario", path.to_str().unwrap(), "--json"],
        "",
    );
    assert_eq!(o.stdout, maxwell(&["simulate", "--json"], "").stdout);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_maxwell"))
        .args(["simulate", "--seed", "1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the simulation finishes, so the write meets a closed pipe.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bench_auction_reports_every_key() {
    let o = maxwell(&["bench", "auction", "--sizes", "1000,2000", "--json"], "");
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let sizes = v["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 2);
    for s in sizes {
        for key in [
            "clear_us",
            "naive_clear_us",
            "update_us",
            "bytes_per_bid",
            "speedup",
        ] {
            assert!(s[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {s}");
        }
    }
    // Without the 1M size the targets are not judged.
    assert!(v["targets"]["met"].is_null());
}
