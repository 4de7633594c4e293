//! `maxwell experiment` runs its three arms and reports what the issue asks for. The figures of
//! a one-second debug run mean nothing; the keys and the bookkeeping do.

use serde_json::Value;

use crate::{maxwell, stderr, stdout};

#[test]
fn a_short_experiment_reports_every_arm_and_writes_its_report() {
    let out = std::env::temp_dir().join(format!("maxwell-it-experiment-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let o = maxwell(
        &[
            "experiment",
            "--duration",
            "1s",
            "--scientists",
            "1",
            "--leeches",
            "1",
            "--out",
            out.to_str().unwrap(),
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
    for arm in ["baseline", "maxwell", "oracle"] {
        assert!(v["efficiency"][arm].as_f64().unwrap() > 0.0, "{arm}: {v}");
    }
    assert!(v["ratio_vs_baseline"].is_number() && v["ratio_vs_oracle"].is_number());
    assert!(v["leech_deaths_s"].is_array());
    assert!(v["energy_modelled"].is_boolean() && v["energy_source"].is_string());
    assert!(v["arms"][0]["claims_refuted"] == 0);
    assert!(out.join("report.md").exists() && out.join("summary.json").exists());
    let r = maxwell(
        &[
            "ledger",
            "verify",
            "--db",
            out.join("ledger.db").to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(r.status.code(), Some(0), "{}", stdout(&r));
    let _ = std::fs::remove_dir_all(&out);
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
    assert!(text.contains(&reports[0].join("report.md").display().to_string()));
    let _ = std::fs::remove_dir_all(&data);
}
