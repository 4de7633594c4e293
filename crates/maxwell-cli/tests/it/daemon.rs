//! The daemon end to end: the real binary on a temporary data directory, driven through its
//! CLI clients and raw HTTP on its Unix socket.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{maxwell, stderr, stdout};

pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
}

impl Daemon {
    pub fn start(dir: &Path) -> Daemon {
        Daemon::start_with(dir, &[])
    }

    /// [`Daemon::start`] with more arguments (`--config FILE`).
    pub fn start_with(dir: &Path, extra: &[&str]) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_maxwell"))
            .args(["daemon", "--data-dir", dir.to_str().unwrap()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let sock = dir.join("maxwell.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "the daemon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Daemon {
            child,
            dir: dir.to_owned(),
        }
    }

    /// SIGTERM, and the exit status and log.
    pub fn stop(mut self) -> (i32, String) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        let mut log = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        (status.code().unwrap_or(-1), log)
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut v: Vec<&str> = args.to_vec();
        v.extend(["--data-dir", self.dir.to_str().unwrap()]);
        maxwell(&v, "")
    }

    /// A raw HTTP/1.0 request on the socket: status and body.
    pub fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = UnixStream::connect(self.dir.join("maxwell.sock")).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").map_or("", |x| x.1).to_owned();
        (status, body)
    }

    /// A well-funded scientist `sci` (enough to outlive a hot machine: the modelled die heats
    /// with every process on it, test builds included, and alone it pays all 10 W of idle
    /// rent) and a `leech` with 10 JOULE.
    pub fn spawn_scientist_and_leech(&self) {
        self.spawn("sci", "scientist", "1000 JOULE");
        self.spawn("leech", "leech", "10 JOULE");
    }

    /// A built-in agent with opening funds.
    pub fn spawn(&self, name: &str, builtin: &str, funds: &str) {
        let o = self.cli(&[
            "agents",
            "spawn",
            name,
            "--builtin",
            builtin,
            "--fund",
            funds,
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }

    pub fn agents(&self) -> Vec<Value> {
        let o = self.cli(&["agents", "list", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(&stdout(&o)).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent<'a>(list: &'a [Value], name: &str) -> &'a Value {
    list.iter()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list:?}"))
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_daemon_hosts_agents_refuses_unsigned_money_and_resumes_after_sigterm() {
    let dir = crate::fresh_dir("daemon");
    let d = Daemon::start(&dir);

    // Events are followed from the start, in the background.
    let events_dir = dir.clone();
    let events = std::thread::spawn(move || {
        maxwell(
            &[
                "events",
                "--kinds",
                "death",
                "--count",
                "1",
                "--data-dir",
                events_dir.to_str().unwrap(),
            ],
            "",
        )
    });
    std::thread::sleep(Duration::from_millis(300));

    d.spawn_scientist_and_leech();
    // A duplicate name and an unknown builtin are 4xx with a message.
    let o = d.cli(&["agents", "spawn", "sci", "--builtin", "scientist"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("409") && stderr(&o).contains("exists"),
        "{}",
        stderr(&o)
    );
    let o = d.cli(&["agents", "spawn", "x", "--builtin", "wizard"]);
    assert!(
        stderr(&o).contains("422") && stderr(&o).contains("scientist"),
        "{}",
        stderr(&o)
    );

    // Unsigned, forged and garbage funding is refused.
    let (status, body) = d.http("POST", "/v1/wallets/sci/fund", r#"{"amount": 5000000}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("signed"), "{body}");
    let owner = agent(&d.agents(), "sci")["owner"]
        .as_str()
        .unwrap()
        .to_owned();
    let forged = format!(
        r#"{{"amount": 5000000, "nonce": 99999999999999999, "owner": "{owner}", "signature": "{}"}}"#,
        "ab".repeat(64)
    );
    let (status, body) = d.http("POST", "/v1/wallets/sci/fund", &forged);
    assert_eq!(status, 403, "{body}");
    let (status, _) = d.http("POST", "/v1/wallets/sci/fund", "{{{garbage");
    assert_eq!(status, 400);
    let (status, body) = d.http("GET", "/v1/nothing", "");
    assert_eq!(status, 404, "{body}");

    // A signed funding with the owner's key works, and its answer means it is credited.
    let wallet = |d: &Daemon| -> Value {
        let (status, body) = d.http("GET", "/v1/wallets/sci", "");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let funded = wallet(&d)["funded"].as_u64().unwrap();
    let o = d.cli(&["wallet", "fund", "sci", "1 JOULE"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(wallet(&d)["funded"].as_u64().unwrap(), funded + 1_000_000);

    // Money the books cannot hold exactly, and nothing at all, are refused with the limit
    // before anything is queued; nothing is credited and the daemon goes on.
    for (amount, status, want) in [
        (
            "9300000000000 JOULE",
            "400",
            "more than the books can still mint",
        ),
        ("0 JOULE", "403", "above zero"),
    ] {
        let o = d.cli(&["wallet", "fund", "sci", amount]);
        assert_eq!(o.status.code(), Some(1), "{amount}");
        assert!(
            stderr(&o).contains(status) && stderr(&o).contains(want),
            "{amount}: {}",
            stderr(&o)
        );
    }
    assert_eq!(wallet(&d)["funded"].as_u64().unwrap(), funded + 1_000_000);

    // The bounty pool: any sponsor tops it up with a signed request, answered once credited;
    // unsigned, forged and empty top-ups are refused and nothing moves.
    let pool = |d: &Daemon| -> Value {
        let o = d.cli(&["bounty", "show", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_str(&stdout(&o)).unwrap()
    };
    let before = pool(&d);
    // The opening pool of a new ledger is its first sponsorship.
    let sponsored = before["sponsored"].as_u64().unwrap();
    assert_eq!(sponsored, 100_000_000_000, "{before}");
    assert_eq!(before["cap_per_unit"], 128, "{before}");
    assert!(
        before["rate_milli_per_unit"].as_u64().unwrap() <= 128_000,
        "{before}"
    );
    let (status, body) = d.http("POST", "/v1/bounty-pool/fund", r#"{"amount": 5000000}"#);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("sponsor"), "{body}");
    let forged = format!(
        r#"{{"amount": 5000000, "nonce": 7, "owner": "{owner}", "signature": "{}"}}"#,
        "ab".repeat(64)
    );
    let (status, body) = d.http("POST", "/v1/bounty-pool/fund", &forged);
    assert_eq!(status, 403, "{body}");
    let o = d.cli(&["bounty", "fund", "0 JOULE"]);
    assert!(stderr(&o).contains("above zero"), "{}", stderr(&o));
    let o = d.cli(&["bounty", "fund", "500 JOULE"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("credited and committed"),
        "{}",
        stdout(&o)
    );
    let after = pool(&d);
    assert_eq!(after["sponsored"], sponsored + 500_000_000, "{after}");
    // A second top-up signs a larger nonce by itself.
    let o = d.cli(&["bounty", "fund", "1 JOULE"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(pool(&d)["sponsored"], sponsored + 501_000_000);
    assert!(d.dir.join("sponsors.json").exists());

    // An agent that could not pay for one slot is refused at spawn.
    let o = d.cli(&["agents", "spawn", "poor", "--builtin", "scientist"]);
    assert!(
        stderr(&o).contains("422") && stderr(&o).contains("one slot's energy"),
        "{}",
        stderr(&o)
    );

    // The leech dies (apoptosis) and the event stream reports it; the scientist works.
    wait_for("the leech's death", || {
        agent(&d.agents(), "leech")["state"] == "dead"
    });
    let ev = events.join().unwrap();
    assert!(
        stdout(&ev).contains("\"kind\":\"death\""),
        "{}",
        stdout(&ev)
    );
    assert!(stdout(&ev).contains("leech"), "{}", stdout(&ev));
    wait_for("the scientist's work", || {
        agent(&d.agents(), "sci")["work"].as_u64().unwrap() > 0
    });
    // Its log line is kept, as the protocol says.
    let (status, body) = d.http("GET", "/v1/agents/sci/logs", "");
    assert_eq!(status, 200, "{body}");
    let logs: Value = serde_json::from_str(&body).unwrap();
    assert!(
        logs["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["line"].as_str().unwrap().contains("scientist")),
        "{logs}"
    );

    // Market state and per-agent metrics.
    let o = d.cli(&["market", "--json"]);
    let m: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(
        m["tick"].as_u64().unwrap() > 0 && m["slots_max"] == 2,
        "{m}"
    );
    let (status, metrics) = d.http("GET", "/metrics", "");
    assert_eq!(status, 200);
    for needle in [
        "maxwell_price_joules",
        "maxwell_temperature_celsius",
        "maxwell_agent_balance_joules{agent=\"sci\"}",
        "maxwell_agent_state{agent=\"leech\",state=\"dead\"} 1",
        "maxwell_agent_work_units{agent=\"sci\"}",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }

    // SIGTERM: agents frozen, last tick committed, clean exit.
    let before = agent(&d.agents(), "sci")["balance"].as_u64().unwrap();
    let dir2 = d.dir.clone();
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("SIGTERM") && log.contains("ledger committed"),
        "{log}"
    );
    assert!(!dir2.join("maxwell.sock").exists());
    crate::assert_ledger_verifies(&dir2.join("ledger.db"));

    // A restart resumes wallets, their history and deaths from the ledger.
    let funded_before = funded + 1_000_000;
    let d = Daemon::start(&dir2);
    let list = d.agents();
    assert_eq!(agent(&list, "leech")["state"], "dead");
    let w = wallet(&d);
    assert_eq!(w["funded"].as_u64().unwrap(), funded_before, "{w}");
    assert!(w["bounties"].as_u64().unwrap() > 0, "{w}");
    assert!(w["spent"]["slots"].as_u64().unwrap() > 0, "{w}");
    let after = agent(&list, "sci")["balance"].as_u64().unwrap();
    // The scientist traded between our reading and the stop; it cannot have been created or
    // destroyed money: the balance at restart is within what a few ticks can move.
    assert!(after > 0, "{after} {list:?}");
    assert!(
        after.abs_diff(before) < before / 2 + 10_000_000,
        "{before} -> {after}"
    );
    wait_for("the resumed scientist's new work", || {
        agent(&d.agents(), "sci")["bounties"].as_u64().unwrap() > 0
    });
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("resumed from the ledger"), "{log}");
    crate::assert_ledger_verifies(&dir2.join("ledger.db"));
    let _ = std::fs::remove_dir_all(&dir2);
}

#[test]
fn a_malformed_config_is_refused_before_anything_starts() {
    let dir = crate::fresh_dir("daemon-cfg");
    let cfg = dir.join("bad.toml");
    std::fs::write(&cfg, "tick = \"10ms\"\n\n[market]\nslotz = 3\n").unwrap();
    let o = maxwell(
        &[
            "daemon",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            dir.join("data").to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("bad.toml") && e.contains("line 4") && e.contains("slotz"),
        "{e}"
    );
    assert!(e.contains("--print-config"), "{e}");
    assert!(!dir.join("data").exists(), "nothing may start: {e}");
    let p = maxwell(&["daemon", "--print-config"], "");
    assert!(stdout(&p).contains("[market]"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigkill_at_random_moments_never_breaks_the_ledger_and_a_restart_resumes() {
    let dir = crate::fresh_dir("daemon-kill");
    let d = Daemon::start(&dir);
    for (name, builtin) in [
        ("sci", "scientist"),
        ("sci2", "scientist"),
        ("leech", "leech"),
    ] {
        d.spawn(name, builtin, "1000 JOULE");
    }
    let mut d = Some(d);
    // A xorshift over the pid: different moments on every run, no extra dependency.
    let mut x = u64::from(std::process::id()) | 1;
    for round in 0..6 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        std::thread::sleep(Duration::from_millis(150 + x % 700));
        let mut daemon = d.take().unwrap();
        daemon.child.kill().unwrap();
        daemon.child.wait().unwrap();
        drop(daemon);
        crate::assert_ledger_verifies(&dir.join("ledger.db"));
        // The stale socket of a killed daemon does not stop the next one.
        let next = Daemon::start(&dir);
        let list = next.agents();
        assert_eq!(list.len(), 3, "round {round}: {list:?}");
        d = Some(next);
    }
    let (code, log) = d.take().unwrap().stop();
    assert_eq!(code, 0, "{log}");
    crate::assert_ledger_verifies(&dir.join("ledger.db"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tcp_needs_the_bearer_token() {
    let dir = crate::fresh_dir("daemon-tcp");
    let port = 20_000 + std::process::id() % 20_000;
    let cfg = dir.join("tcp.toml");
    std::fs::write(&cfg, format!("tcp = \"127.0.0.1:{port}\"\n")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_maxwell"))
        .args(["daemon", "--config", cfg.to_str().unwrap(), "--data-dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        dir: dir.clone(),
    };
    let get = |auth: Option<&str>| -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port as u16)).ok()?;
        let header = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(s, "GET /v1/market HTTP/1.0\r\nHost: x\r\n{header}\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        Some((out[9..12].parse().unwrap(), out))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        if let Some(r) = get(None) {
            break r;
        }
        assert!(Instant::now() < deadline, "no TCP listener");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(refused.0, 401, "{}", refused.1);
    assert!(refused.1.contains("Bearer"), "{}", refused.1);
    assert_eq!(get(Some("wrong")).unwrap().0, 401);
    let token = std::fs::read_to_string(dir.join("token")).unwrap();
    let (status, body) = get(Some(token.trim())).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"tick\""), "{body}");
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The roster's journal: spawns and fundings survive a SIGKILL (the journal is not folded into
/// agents.json then), a torn last line is ignored, cut off and logged, and a clean stop folds
/// the journal into agents.json.
#[test]
fn spawns_and_nonces_survive_a_sigkill_and_a_torn_journal_line() {
    let dir = crate::fresh_dir("daemon-journal");
    let d = Daemon::start(&dir);
    for name in ["idle-a", "idle-b", "idle-c"] {
        let o = d.cli(&[
            "agents",
            "spawn",
            name,
            "--builtin",
            "idle",
            "--fund",
            "100 JOULE",
            "--opening-bid",
            "0 JOULE",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let nonce = |d: &Daemon, name: &str| -> u64 {
        let (status, body) = d.http("GET", &format!("/v1/wallets/{name}"), "");
        assert_eq!(status, 200, "{body}");
        let w: Value = serde_json::from_str(&body).unwrap();
        w["nonce"].as_u64().unwrap()
    };
    for _ in 0..2 {
        let o = d.cli(&["wallet", "fund", "idle-b", "1 JOULE"]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let funded = nonce(&d, "idle-b");
    assert!(funded > 1, "{funded}");
    // SIGKILL: what was acknowledged is in the journal only.
    let mut d = d;
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    drop(d);
    let journal = dir.join("agents.journal");
    let text = std::fs::read_to_string(&journal).unwrap();
    assert_eq!(text.lines().count(), 5, "{text}");
    // A crash while a line was written leaves it torn.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap();
    write!(f, "{{\"nonce\":{{\"id\":1,\"non").unwrap();
    drop(f);
    let d = Daemon::start(&dir);
    let list = d.agents();
    assert_eq!(list.len(), 3, "{list:?}");
    assert_eq!(nonce(&d, "idle-b"), funded);
    assert_eq!(
        std::fs::metadata(&journal).unwrap().len(),
        0,
        "folded in at start"
    );
    let roster: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("agents.json")).unwrap()).unwrap();
    assert_eq!(roster.as_array().unwrap().len(), 3, "{roster}");
    assert_eq!(roster[1]["nonce"].as_u64().unwrap(), funded, "{roster}");
    // New spawns and fundings after the restart, then a clean stop folds them in.
    d.spawn("idle-d", "idle", "100 JOULE");
    let o = d.cli(&["wallet", "fund", "idle-a", "1 JOULE"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let funded_a = nonce(&d, "idle-a");
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    assert!(log.contains("torn"), "{log}");
    assert_eq!(std::fs::metadata(&journal).unwrap().len(), 0, "{log}");
    let d = Daemon::start(&dir);
    let list = d.agents();
    assert_eq!(list.len(), 4, "{list:?}");
    assert_eq!(agent(&list, "idle-d")["id"], 3, "{list:?}");
    assert_eq!(nonce(&d, "idle-a"), funded_a);
    assert_eq!(nonce(&d, "idle-b"), funded);
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    crate::assert_ledger_verifies(&dir.join("ledger.db"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_daemon_prints_a_row_per_size() {
    let o = maxwell(
        &[
            "bench",
            "daemon",
            "--agents",
            "4,8",
            "--running",
            "1",
            "--seconds",
            "1",
            "--json",
        ],
        "",
    );
    // The targets are for 10,000 agents: met or not, the rows are printed.
    assert!(matches!(o.status.code(), Some(0 | 3)), "{}", stderr(&o));
    let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    assert_eq!(rows[1]["agents"], 8, "{v}");
    assert_eq!(rows[1]["running"], 1, "{v}");
    for key in [
        "spawn_s",
        "spawns_per_s",
        "daemon_cpu_pct",
        "tick_late_p99_us",
        "tick_work_p99_us",
        "rss_per_agent_bytes",
        "cpu_pct_per_agent",
        "agents_cpu_pct",
    ] {
        assert!(rows[0][key].is_number(), "{key}: {v}");
    }
    assert_eq!(v["targets"]["agents"], 8, "{v}");
}
