//! Snapshot tests: each panel rendered alone, from a fixed state, into ratatui's TestBackend,
//! and compared with `snapshots/<panel>.txt` (text only; colours are not compared). Set
//! `UPDATE_SNAPSHOTS=1` to rewrite them after an intended change, and review the diff.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::layout::Rect;

use maxwell_core::Tokens;
use maxwell_daemon::api::{AgentView, BookEntry, Event, MarketView};

use super::state::{Mode, State};
use super::ui;

fn agent(id: u32, name: &str, state: &str, balance: u64, cpu: f64, work: u64) -> AgentView {
    AgentView {
        syscalls: None,
        id,
        name: name.into(),
        backend: "wasm".into(),
        state: state.into(),
        cause: (state == "dead").then(|| "insolvent".into()),
        balance: Tokens(balance),
        bid: None,
        cpu_s: cpu,
        energy_j: cpu * 15.0,
        work,
        bounties: Tokens(0),
        quanta: 0,
        owner: "ab".repeat(32),
    }
}

fn market(tick: u64, price: u64, temp: f64) -> MarketView {
    MarketView {
        tick,
        price: Tokens(price),
        supply: 2,
        reserve: Tokens(150_000),
        slots_max: 2,
        depth: 3,
        top: vec![
            BookEntry {
                agent: "sci-0".into(),
                price: Tokens(650_000),
            },
            BookEntry {
                agent: "sci-1".into(),
                price: Tokens(600_000),
            },
        ],
        temperature_c: temp,
        power_w: 36.5,
        energy_j: 1234.5,
        modelled: true,
        energy_source: "model".into(),
        bounty_pool: Tokens(99_990_000_000),
        bounty_rate_milli: 128_000,
        alive: 3,
    }
}

/// A state after 20 s of a run: prices and heat rising, the leech burning, then dead.
fn state() -> State {
    let mut s = State::new("/run/maxwell.sock".into());
    for i in 0..=80u64 {
        let t = i as f64 * 0.25;
        let leech_state = if i < 60 { "running" } else { "dead" };
        s.update(
            t,
            market(i * 25, 150_000 + i * 5_000, 60.0 + t),
            vec![
                agent(
                    0,
                    "sci-0",
                    "running",
                    10_000_000 + i * 200_000,
                    t * 0.9,
                    i * 1000,
                ),
                agent(
                    1,
                    "sci-1",
                    "frozen",
                    10_000_000 - i * 10_000,
                    t * 0.1,
                    i * 10,
                ),
                agent(
                    2,
                    "leech-0",
                    leech_state,
                    if i < 60 { 10_000_000 - i * 160_000 } else { 0 },
                    t,
                    0,
                ),
            ],
        );
    }
    s.event(Event {
        tick: 1500,
        kind: "death".into(),
        agent: Some("leech-0".into()),
        detail: "insolvent: owed 0.11 JOULE of Landauer tax, had 0.09 JOULE".into(),
    });
    s.event(Event {
        tick: 1600,
        kind: "audit".into(),
        agent: None,
        detail: "1 claims passed their audit".into(),
    });
    s
}

fn render(w: u16, h: u16, f: impl Fn(&mut ratatui::Frame<'_>, Rect)) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|frame| {
        let a = frame.area();
        f(frame, a)
    })
    .unwrap();
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let line: String = (0..buf.area.width)
            .map(|x| buf[(x, y)].symbol().to_string())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn check(name: &str, got: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/top/snapshots")
        .join(format!("{name}.txt"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_SNAPSHOTS=1 to create it",
            path.display()
        )
    });
    assert_eq!(got, want, "{name} changed; got:\n{got}");
}

#[test]
fn market_panel() {
    let s = state();
    let got = render(44, 9, |f, a| ui::market_panel(f, a, &s));
    assert!(
        got.contains("price 0.550 J") && got.contains("sci-0"),
        "{got}"
    );
    check("market", &got);
}

#[test]
fn sparklines_panel_marks_modelled_physics() {
    let s = state();
    let got = render(60, 8, |f, a| ui::sparklines_panel(f, a, &s));
    assert!(got.contains("temperature 80.0 C (modelled)"), "{got}");
    assert!(got.contains("power 36.5 W (modelled)"), "{got}");
    check("sparklines", &got);
}

#[test]
fn agents_panel() {
    let s = state();
    let got = render(90, 8, |f, a| ui::agents_panel(f, a, &s));
    assert!(
        got.contains("leech-0") && got.contains("dead") && got.contains("running"),
        "{got}"
    );
    check("agents", &got);
}

#[test]
fn wallets_panel_shows_burn_and_time_to_insolvency() {
    let mut s = state();
    // Only the living have wallets worth watching; a burning one gets its time to insolvency.
    s.update(
        20.5,
        market(2050, 550_000, 80.0),
        vec![
            agent(0, "sci-0", "running", 26_000_000, 18.0, 80_000),
            agent(1, "sci-1", "frozen", 9_000_000, 2.0, 800),
        ],
    );
    let got = render(44, 8, |f, a| ui::wallets_panel(f, a, &s));
    assert!(got.contains("sci-1") && got.contains("dead in"), "{got}");
    check("wallets", &got);
}

#[test]
fn events_panel() {
    let s = state();
    let got = render(80, 6, |f, a| ui::events_panel(f, a, &s));
    assert!(
        got.contains("death") && got.contains("leech-0: insolvent"),
        "{got}"
    );
    check("events", &got);
}

#[test]
fn the_whole_dashboard_and_its_dialogs() {
    let mut s = state();
    let got = render(100, 30, |f, _| ui::draw(f, &s));
    for title in [
        "market",
        "last 60 s",
        "agents",
        "wallets",
        "events",
        "q quit",
    ] {
        assert!(got.contains(title), "missing {title}:\n{got}");
    }
    check("dashboard", &got);
    s.mode = Mode::ConfirmKill("leech-0".into());
    let got = render(100, 30, |f, _| ui::draw(f, &s));
    assert!(got.contains("Kill leech-0?"), "{got}");
    s.mode = Mode::Help;
    let got = render(100, 30, |f, _| ui::draw(f, &s));
    assert!(got.contains("fund the selected agent"), "{got}");
}

#[test]
fn a_terminal_too_small_says_so() {
    let s = state();
    let got = render(50, 10, |f, _| ui::draw(f, &s));
    assert!(got.contains("too small") && got.contains("50x10"), "{got}");
}

#[test]
fn keys_select_confirm_kills_and_type_amounts() {
    let mut s = state();
    use crossterm::event::KeyCode;
    assert_eq!(s.selected, 0);
    super::key(&mut s, KeyCode::Down);
    super::key(&mut s, KeyCode::Down);
    super::key(&mut s, KeyCode::Down);
    assert_eq!(s.selected, 2, "stops at the last agent");
    super::key(&mut s, KeyCode::Char('k'));
    assert_eq!(s.mode, Mode::ConfirmKill("leech-0".into()));
    let (a, quit) = super::key(&mut s, KeyCode::Char('n'));
    assert!(a.is_none() && !quit && s.mode == Mode::Normal);
    super::key(&mut s, KeyCode::Char('k'));
    let (a, _) = super::key(&mut s, KeyCode::Char('y'));
    assert!(matches!(a, Some(super::Action::Kill(n)) if n == "leech-0"));
    super::key(&mut s, KeyCode::Up);
    super::key(&mut s, KeyCode::Char('f'));
    for c in "2 JOULEx".chars() {
        super::key(&mut s, KeyCode::Char(c));
    }
    super::key(&mut s, KeyCode::Backspace);
    let (a, _) = super::key(&mut s, KeyCode::Enter);
    assert!(
        matches!(&a, Some(super::Action::Fund(n, t)) if n == "sci-1" && *t == Tokens(2_000_000)),
        "{:?}",
        s.message
    );
    super::key(&mut s, KeyCode::Char('f'));
    super::key(&mut s, KeyCode::Char('z'));
    let (a, _) = super::key(&mut s, KeyCode::Enter);
    assert!(a.is_none() && s.message.as_deref().unwrap_or("").contains("not an amount"));
    let (_, quit) = super::key(&mut s, KeyCode::Char('q'));
    assert!(quit);
}
