//! `maxwell top` end to end: the real dashboard in a tmux pane against a live daemon.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux").args(args).output().unwrap()
}

fn capture(session: &str) -> String {
    String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", session]).stdout).into_owned()
}

fn wait_screen(session: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let screen = capture(session);
        if ok(&screen) {
            return screen;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; screen:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether tmux runs here; without it the test skips, except where tests must not skip (CI).
fn have_tmux() -> bool {
    if Command::new("tmux").arg("-V").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("MAXWELL_REQUIRE_ROOT_TESTS").is_none(),
        "tmux is required here (.ci/run installs it)"
    );
    eprintln!("skipped: tmux is not installed (apt install tmux)");
    false
}

/// Runs `cmd` in a new detached 120x40 tmux session.
fn open(session: &str, cmd: &str) {
    let o = tmux(&[
        "new-session",
        "-d",
        "-s",
        session,
        "-x",
        "120",
        "-y",
        "40",
        cmd,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Presses q and waits for the session to end.
fn quit(session: &str) {
    tmux(&["send-keys", "-t", session, "q"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while tmux(&["has-session", "-t", session]).status.success() {
        assert!(Instant::now() < deadline, "q did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn top_shows_the_market_and_a_leech_s_death_and_survives_a_daemon_restart() {
    if !have_tmux() {
        return;
    }
    let dir = crate::fresh_dir("top");
    let d = Daemon::start(&dir);
    d.spawn_scientist_and_leech();
    let session = format!("maxwell-top-{}", std::process::id());
    let cmd = format!(
        "{} top --data-dir {}",
        env!("CARGO_BIN_EXE_maxwell"),
        dir.display()
    );
    open(&session, &cmd);

    let screen = wait_screen(&session, "the panels and the leech's death", |s| {
        s.contains("market")
            && s.contains("last 60 s")
            && s.contains("wallets")
            && s.contains("events")
            && s.contains("(modelled)")
            && s.contains("death")
            && s.lines().any(|l| l.contains("leech") && l.contains("dead"))
    });
    assert!(screen.contains("sci"), "{screen}");

    // Too small: it says so; resized back: it draws again.
    tmux(&["resize-window", "-t", &session, "-x", "60", "-y", "15"]);
    wait_screen(&session, "the too-small notice", |s| {
        s.contains("too small")
    });
    tmux(&["resize-window", "-t", &session, "-x", "120", "-y", "40"]);
    wait_screen(&session, "the redraw", |s| s.contains("wallets"));

    // The daemon goes away and comes back: top says so and reconnects.
    let dir2 = d.dir.clone();
    let (code, log) = d.stop();
    assert_eq!(code, 0, "{log}");
    wait_screen(&session, "the unreachable notice", |s| {
        s.contains("unreachable")
    });
    let d = Daemon::start(&dir2);
    wait_screen(&session, "the reconnection", |s| s.contains("reconnected"));

    quit(&session);
    let (code, _) = d.stop();
    assert_eq!(code, 0);
    let _ = std::fs::remove_dir_all(&dir2);
}

#[test]
fn demo_tui_ends_on_the_summary_with_the_leeches_dead() {
    if !have_tmux() {
        return;
    }
    let dir = crate::fresh_dir("demo-tui");
    let session = format!("maxwell-demo-tui-{}", std::process::id());
    let cmd = format!(
        "{} demo --tui --duration 8s --data-dir {}",
        env!("CARGO_BIN_EXE_maxwell"),
        dir.display()
    );
    open(&session, &cmd);
    wait_screen(&session, "the live dashboard", |s| {
        s.contains("agents") && s.contains("scientist-0") && s.contains("leech-3")
    });
    let screen = wait_screen(&session, "the summary screen", |s| {
        s.contains("summary (q to quit)")
    });
    assert!(screen.contains("leeches dead: 4 of 4"), "{screen}");
    // Every scientist is alive (running or frozen between turns; this is the debug build,
    // whose tick loop is slow, so which of them holds a slot at the last frame is not the point).
    let scientists: Vec<&str> = screen
        .lines()
        .filter(|l| l.contains("scientist-"))
        .collect();
    assert_eq!(scientists.len(), 4, "{screen}");
    assert!(
        scientists
            .iter()
            .all(|l| l.contains("running") || l.contains("frozen")),
        "{screen}"
    );
    quit(&session);
    // The demo's daemon stopped with it and its ledger verifies.
    let reports: Vec<_> = std::fs::read_dir(dir.join("reports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(reports.len(), 1);
    assert!(!reports[0].join("maxwell.sock").exists());
    crate::assert_ledger_verifies(&reports[0].join("ledger.db"));
    let _ = std::fs::remove_dir_all(&dir);
}
