//! `maxwell experiment` runs its three arms and reports what the issue asks for. The figures of
//! a one-second debug run mean nothing; the keys, the files and the bookkeeping do.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::{maxwell, stderr, stdout};

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("maxwell-it-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `maxwell experiment` with one-second arms, `args` and `--json`; asserts it finished
/// (targets met or not) and returns the summary.
fn experiment(args: &[&str]) -> Value {
    let mut all = vec!["experiment", "--duration", "1s", "--json"];
    all.extend_from_slice(args);
    let o = maxwell(&all, "");
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}",
        stderr(&o)
    );
    serde_json::from_str(&stdout(&o)).unwrap()
}

#[test]
fn a_short_experiment_reports_every_arm_and_writes_its_report() {
    let out = scratch("experiment");
    let v = experiment(&[
        "--scientists",
        "1",
        "--leeches",
        "1",
        "--out",
        out.to_str().unwrap(),
    ]);
    for arm in ["baseline", "maxwell", "oracle"] {
        assert!(v["efficiency"][arm].as_f64().unwrap() > 0.0, "{arm}: {v}");
    }
    assert!(v["ratio_vs_baseline"].is_number() && v["ratio_vs_oracle"].is_number());
    // One run gives no interval.
    assert!(v["ratio_vs_baseline_ci95"].is_null() && v["ratio_vs_oracle_ci95"].is_null());
    assert!(v["leech_deaths_s"].is_array());
    assert!(v["energy_modelled"].is_boolean() && v["energy_source"].is_string());
    assert!(v["arms"][0]["claims_refuted"] == 0);
    assert!(v["targets"]["met"].is_boolean() && v["leeches_alive_at_end"].is_number());
    assert!(out.join("report.md").exists() && out.join("summary.json").exists());
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("One run gives no interval"), "{report}");

    // metrics.csv: a row per second of every arm, agent columns filled in the maxwell arm only.
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    for col in [
        "arm",
        "run",
        "t_s",
        "temperature_c",
        "power_w",
        "price_joule",
        "supply",
        "work_rate_claimed",
        "balance_leech-0",
        "state_leech-0",
        "balance_scientist-0",
        "state_scientist-0",
    ] {
        assert!(header.contains(&col), "{col} missing from {header:?}");
    }
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    for arm in ["baseline", "maxwell", "oracle"] {
        let of: Vec<_> = rows.iter().filter(|r| r[0] == arm).collect();
        assert!(!of.is_empty(), "no {arm} rows in\n{csv}");
        for r in of {
            assert_eq!(r.len(), header.len(), "{r:?}");
            let price = r[5];
            let state = r[header.len() - 1];
            if arm == "maxwell" {
                assert!(price.parse::<f64>().is_ok(), "{r:?}");
                assert!(
                    ["running", "frozen", "dying", "dead"].contains(&state),
                    "{r:?}"
                );
            } else if arm == "oracle" {
                // The same node, without the market's agents' states.
                assert!(price.parse::<f64>().is_ok() && state.is_empty(), "{r:?}");
            } else {
                assert!(price.is_empty() && state.is_empty(), "{r:?}");
            }
        }
    }

    for svg in [
        "temperature.svg",
        "price.svg",
        "balances.svg",
        "work_rate.svg",
    ] {
        let text = std::fs::read_to_string(out.join(svg)).unwrap();
        assert!(
            text.starts_with("<svg"),
            "{svg}: {}",
            &text[..text.len().min(80)]
        );
        assert!(
            report.contains(&format!("]({svg})")),
            "report.md does not link {svg}"
        );
    }

    crate::assert_ledger_verifies(&out.join("ledger.db"));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn two_runs_give_each_ratio_a_95_percent_interval() {
    let v = experiment(&["--scientists", "1", "--leeches", "1", "--runs", "2"]);
    for key in ["ratio_vs_baseline_ci95", "ratio_vs_oracle_ci95"] {
        let ci = v[key].as_array().unwrap_or_else(|| panic!("{key}: {v}"));
        assert_eq!(ci.len(), 2, "{key}: {v}");
        let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
        assert!(lo <= hi, "{key}: {v}");
    }
    assert_eq!(v["runs"], 2);
    assert_eq!(v["arms"].as_array().unwrap().len(), 6);
    assert_eq!(v["per_run"].as_array().unwrap().len(), 2);
}

#[test]
fn a_malformed_manifest_is_refused_with_its_file_line_and_field() {
    let dir = scratch("manifest-bad");
    let path = dir.join("agents.toml");
    std::fs::write(
        &path,
        "[[agent]]\nname = \"scientist-0\"\nwsam = \"scientist.wat\"\nuseful = true\n",
    )
    .unwrap();
    let o = maxwell(
        &[
            "experiment",
            "--duration",
            "1s",
            "--manifest",
            path.to_str().unwrap(),
        ],
        "",
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(path.to_str().unwrap()), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("wsam") && err.contains("wasm"), "{err}");
    // Refused before anything started: no arm ran.
    assert!(!err.contains("energy:") && stdout(&o).is_empty(), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_manifest_with_a_builtin_scientist_and_leech_runs() {
    let dir = scratch("manifest-ok");
    let path = dir.join("agents.toml");
    std::fs::write(
        &path,
        "[[agent]]\nname = \"hungry\"\nuseful = false\nbuiltin = \"leech\"\n\n\
         [[agent]]\nname = \"curie\"\nuseful = true\nbuiltin = \"scientist\"\nfunds = \"10 JOULE\"\n",
    )
    .unwrap();
    let v = experiment(&["--manifest", path.to_str().unwrap()]);
    assert_eq!(v["scientists"], 1);
    assert_eq!(v["leeches"], 1);
    for arm in ["baseline", "maxwell", "oracle"] {
        assert!(v["efficiency"][arm].as_f64().unwrap() > 0.0, "{arm}: {v}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The native agent programs next to the `maxwell` binary under test (`cargo test --workspace`
/// builds every workspace binary into the same directory).
fn native_agents() -> Option<(PathBuf, PathBuf)> {
    let dir = Path::new(env!("CARGO_BIN_EXE_maxwell")).parent()?;
    let (s, l) = (dir.join("scientist"), dir.join("leech"));
    (s.is_file() && l.is_file()).then_some((s, l))
}

/// True when `MAXWELL_REQUIRE_ROOT_TESTS=1`: a skip is then a failure.
fn required() -> bool {
    std::env::var("MAXWELL_REQUIRE_ROOT_TESTS").as_deref() == Ok("1")
}

/// Prints a skip line (past the harness's capture) or, when required, fails.
fn skip(why: &str) {
    assert!(
        !required(),
        "MAXWELL_REQUIRE_ROOT_TESTS=1 but the process-backend experiment cannot run: {why}"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIP: process-backend experiment: {why}");
}

#[test]
fn the_process_backend_runs_native_agents_whose_claims_verify() {
    if !nix::unistd::geteuid().is_root() {
        return skip("needs root (cgroups)");
    }
    let Some((scientist, leech)) = native_agents() else {
        return skip(
            "the native agents are not built next to maxwell; run cargo test --workspace or \
             cargo build -p maxwell-agents",
        );
    };
    let dir = scratch("process");
    let path = dir.join("agents.toml");
    std::fs::write(
        &path,
        format!(
            "[[agent]]\nname = \"leech-p\"\nuseful = false\nnative = {:?}\n\n\
             [[agent]]\nname = \"scientist-p\"\nuseful = true\nnative = {:?}\n\
             args = [\"--width\", \"262144\", \"--start\", \"4000\"]\n",
            leech.display().to_string(),
            scientist.display().to_string()
        ),
    )
    .unwrap();
    let o = maxwell(
        &[
            "experiment",
            "--duration",
            "1s",
            "--backend",
            "process",
            "--manifest",
            path.to_str().unwrap(),
            "--json",
        ],
        "",
    );
    let err = stderr(&o);
    if o.status.code() == Some(1) && err.contains("use the wasm backend") {
        let _ = std::fs::remove_dir_all(&dir);
        return skip(err.trim());
    }
    assert!(matches!(o.status.code(), Some(0) | Some(3)), "{err}");
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["backend"], "process");
    for arm in v["arms"].as_array().unwrap() {
        assert!(arm["claims_verified"].as_u64().unwrap() > 0, "{arm}");
        assert_eq!(arm["claims_refuted"], 0, "{arm}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_demo_writes_its_report_into_the_data_directory() {
    let data = std::env::temp_dir().join(format!("maxwell-it-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let o = maxwell(
        &[
            "demo",
            "--duration",
            "1s",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        "",
    );
    assert!(
        matches!(o.status.code(), Some(0) | Some(3)),
        "{}",
        stderr(&o)
    );
    let text = stdout(&o);
    assert!(text.contains("maxwell / baseline"), "{text}");
    let reports: Vec<_> = std::fs::read_dir(data.join("reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].join("summary.json").exists());
    assert!(reports[0].join("metrics.csv").exists());
    assert!(text.contains(&reports[0].join("report.md").display().to_string()));
    let _ = std::fs::remove_dir_all(&data);
}
