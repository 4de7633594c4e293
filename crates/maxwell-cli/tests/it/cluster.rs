//! Three real daemons in one cluster on loopback: each sees the others' signed reports through
//! `maxwell cluster status --json`, a node killed with SIGKILL is declared dead, a daemon that
//! is not in a cluster says how to join one, and a bad allow-list is refused with the fix.

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::daemon::Daemon;
use crate::{fresh_dir, maxwell, stderr};

/// This node's public key, from the error a config without it gets (the fix it names).
fn key_of(dir: &Path, node: &str) -> String {
    let cfg = dir.join("probe.toml");
    std::fs::write(
        &cfg,
        format!("[cluster]\nnode = \"{node}\"\ncluster_id = \"lab\"\nlisten = \"127.0.0.1:0\"\n[cluster.peers]\n"),
    )
    .unwrap();
    let o = maxwell(
        &[
            "daemon",
            "--data-dir",
            dir.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
        "",
    );
    assert_ne!(o.status.code(), Some(0));
    let e = stderr(&o);
    let at = e
        .find(&format!("add {node} = \""))
        .unwrap_or_else(|| panic!("{e}"));
    e[at..].split('"').nth(1).unwrap().to_owned()
}

fn status(d: &Daemon) -> Value {
    let o = d.cli(&["cluster", "status", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn until(d: &Daemon, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = status(d);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: never; last {v:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["nodes"].as_array()?.iter().find(|n| n["node"] == name)
}

#[test]
fn three_daemons_see_each_other_and_a_killed_one_dies() {
    let root = fresh_dir("cluster");
    let names = ["a", "b", "c"];
    let ports: Vec<u16> = names
        .iter()
        .map(|_| {
            UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let mut peers = String::new();
    for n in names {
        std::fs::create_dir_all(root.join(n)).unwrap();
        peers.push_str(&format!("{n} = \"{}\"\n", key_of(&root.join(n), n)));
    }
    let mut daemons = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let cfg = root.join(format!("{n}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[cluster]\nnode = \"{n}\"\ncluster_id = \"lab\"\nlisten = \"127.0.0.1:{}\"\n\
                 seeds = [\"127.0.0.1:{}\"]\ngossip_interval_ms = 100\n[cluster.peers]\n{peers}",
                ports[i], ports[0]
            ),
        )
        .unwrap();
        daemons.push(Daemon::start_with(
            &root.join(n),
            &["--config", cfg.to_str().unwrap()],
        ));
    }
    for d in &daemons {
        let v = until(d, "all three alive with reports", |v| {
            names.iter().all(|n| {
                node(v, n)
                    .is_some_and(|p| p["live"] == true && p["report"]["temperature_c"].is_f64())
            })
        });
        assert_eq!(v["refused_reports"], 0, "{v:#}");
        // Each report is the node's own: its reserve is a price, its physics labelled.
        let c = node(&v, "c").unwrap();
        assert!(c["report"]["reserve"].as_u64().unwrap() > 0, "{v:#}");
        assert!(
            c["report"]["physics"]
                .as_str()
                .unwrap()
                .contains("modelled"),
            "{v:#}"
        );
    }
    let text = daemons[0].cli(&["cluster", "status"]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("3 of 3 nodes alive"), "{text}");

    // c is killed outright: a and b declare it dead within 5 s.
    let mut c = daemons.pop().unwrap();
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    let t = Instant::now();
    for d in &daemons {
        until(d, "c dead", |v| {
            node(v, "c").is_some_and(|p| p["live"] == false)
        });
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "declared dead after {:?}",
        t.elapsed()
    );
    for d in daemons {
        let (code, log) = d.stop();
        assert_eq!(code, 0, "{log}");
    }
}

#[test]
fn a_daemon_outside_a_cluster_says_how_to_join_and_a_bad_allow_list_is_refused() {
    let dir = fresh_dir("cluster-none");
    let d = Daemon::start(&dir);
    let o = d.cli(&["cluster", "status"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains("add a [cluster] section"),
        "{}",
        stderr(&o)
    );
    let (code, _) = d.stop();
    assert_eq!(code, 0);

    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        "[cluster]\nnode = \"a\"\ncluster_id = \"lab\"\nlisten = \"127.0.0.1:0\"\n[cluster.peers]\na = \"zz\"\n",
    )
    .unwrap();
    let o = maxwell(
        &[
            "daemon",
            "--data-dir",
            dir.to_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
        ],
        "",
    );
    assert_ne!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("64 hex digits"), "{}", stderr(&o));
}
