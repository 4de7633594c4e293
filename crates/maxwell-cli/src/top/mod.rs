//! `maxwell top`: the live dashboard, a ratatui + crossterm client of the daemon's API.
//!
//! A background thread (a small tokio runtime) polls `/v1/market` and `/v1/agents` four times a
//! second, follows `/v1/events`, and runs the actions asked for (kill, fund); it reports over a
//! channel, and keeps retrying while the daemon is down. The UI thread owns the terminal, the
//! [`state::State`] and the keys.

pub(crate) mod state;
pub(crate) mod ui;

#[cfg(test)]
mod tests;

use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::time::{Duration, Instant};

use clap::Args;
use crossterm::event::{self, Event as TermEvent, KeyCode, KeyEventKind};

use maxwell_core::Tokens;
use maxwell_daemon::api::{AgentView, Event, MarketView};
use maxwell_daemon::client::Client;

use crate::Exit;
use crate::daemon_cli::ClientArgs;
use state::{Mode, State};

#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    #[command(flatten)]
    client: ClientArgs,
}

/// What the poller tells the UI.
pub(crate) enum Update {
    /// A fresh market and agent list.
    Snapshot(MarketView, Vec<AgentView>),
    /// An event from the stream.
    Event(Event),
    /// The daemon did not answer.
    Down(String),
    /// The result of an action.
    Message(String),
}

/// What the UI asks of the poller.
pub(crate) enum Action {
    /// Kill an agent.
    Kill(String),
    /// Fund an agent.
    Fund(String, Tokens),
}

/// Starts the poller thread.
pub(crate) fn poller(
    client: Client,
    key: Option<ed25519_dalek::SigningKey>,
) -> anyhow::Result<(Receiver<Update>, Sender<Action>)> {
    let (tx, rx) = channel();
    let (atx, arx) = channel::<Action>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("maxwell-top-poll".into())
        .spawn(move || rt.block_on(poll(client, key, tx, arx)))?;
    Ok((rx, atx))
}

async fn poll(
    client: Client,
    key: Option<ed25519_dalek::SigningKey>,
    tx: Sender<Update>,
    actions: Receiver<Action>,
) {
    // The event stream, reconnected whenever it ends.
    let events_client = client.clone();
    let etx = tx.clone();
    tokio::spawn(async move {
        loop {
            let t = etx.clone();
            let _ = events_client
                .events(|data| match serde_json::from_str::<Event>(data) {
                    Ok(e) => t.send(Update::Event(e)).is_ok(),
                    Err(_) => true,
                })
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    loop {
        loop {
            match actions.try_recv() {
                Ok(Action::Kill(name)) => {
                    let r: Result<AgentView, _> = client
                        .call("DELETE", &format!("/v1/agents/{name}"), None::<&()>)
                        .await;
                    let msg = match r {
                        Ok(_) => format!("{name}: killed"),
                        Err(e) => format!("kill {name}: {e}"),
                    };
                    let _ = tx.send(Update::Message(msg));
                }
                Ok(Action::Fund(name, amount)) => {
                    let msg = match &key {
                        None => "no owner key: pass --key".to_string(),
                        Some(k) => match crate::daemon_cli::fund(&client, k, &name, amount).await {
                            Ok(w) => {
                                format!("{name}: funded, balance {:.3} J", w.balance.0 as f64 / 1e6)
                            }
                            Err(e) => format!("fund {name}: {e}"),
                        },
                    };
                    let _ = tx.send(Update::Message(msg));
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let snap = async {
            let m: MarketView = client.call("GET", "/v1/market", None::<&()>).await?;
            let a: Vec<AgentView> = client.call("GET", "/v1/agents", None::<&()>).await?;
            Ok::<_, maxwell_daemon::client::ClientError>((m, a))
        }
        .await;
        let sent = match snap {
            Ok((m, a)) => tx.send(Update::Snapshot(m, a)),
            Err(e) => tx.send(Update::Down(short(&e.to_string()))),
        };
        if sent.is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn short(s: &str) -> String {
    let s = s.split(';').next().unwrap_or(s);
    s.chars().take(60).collect()
}

/// Applies a key to the state; returns the action to run, and whether to quit.
pub(crate) fn key(s: &mut State, code: KeyCode) -> (Option<Action>, bool) {
    match std::mem::replace(&mut s.mode, Mode::Normal) {
        Mode::Help => {}
        Mode::ConfirmKill(name) => {
            if code == KeyCode::Char('y') {
                s.message = Some(format!("killing {name}..."));
                return (Some(Action::Kill(name)), false);
            }
            s.message = Some("kill cancelled".into());
        }
        Mode::Fund(name, mut amount) => match code {
            KeyCode::Enter => match amount.trim().parse::<Tokens>() {
                Ok(t) if t > Tokens::ZERO => {
                    s.message = Some(format!("funding {name}..."));
                    return (Some(Action::Fund(name, t)), false);
                }
                _ => s.message = Some(format!("{amount:?} is not an amount; write e.g. 5 JOULE")),
            },
            KeyCode::Esc => s.message = Some("funding cancelled".into()),
            KeyCode::Backspace => {
                amount.pop();
                s.mode = Mode::Fund(name, amount);
            }
            KeyCode::Char(c) => {
                amount.push(c);
                s.mode = Mode::Fund(name, amount);
            }
            _ => s.mode = Mode::Fund(name, amount),
        },
        Mode::Normal => match code {
            KeyCode::Char('q') | KeyCode::Esc => return (None, true),
            KeyCode::Up => s.selected = s.selected.saturating_sub(1),
            KeyCode::Down if s.selected + 1 < s.agents.len() => s.selected += 1,
            KeyCode::Char('?') => s.mode = Mode::Help,
            KeyCode::Char('k') => {
                if let Some(n) = s.selected_name() {
                    s.mode = Mode::ConfirmKill(n);
                }
            }
            KeyCode::Char('f') => {
                if let Some(n) = s.selected_name() {
                    s.mode = Mode::Fund(n, String::new());
                }
            }
            _ => {}
        },
    }
    (None, false)
}

/// Runs the dashboard until `q`, or until `until` returns true (then shows `summary` if the
/// caller sets one and waits for `q`).
pub(crate) fn run_ui(
    mut s: State,
    updates: Receiver<Update>,
    actions: Sender<Action>,
    mut tick: impl FnMut(&mut State) -> bool,
) -> anyhow::Result<State> {
    let mut terminal = ratatui::init();
    let start = Instant::now();
    let result = (|| -> anyhow::Result<()> {
        loop {
            loop {
                match updates.try_recv() {
                    Ok(Update::Snapshot(m, a)) => s.update(start.elapsed().as_secs_f64(), m, a),
                    Ok(Update::Event(e)) => s.event(e),
                    Ok(Update::Down(why)) => s.down(why),
                    Ok(Update::Message(m)) => s.message = Some(m),
                    Err(_) => break,
                }
            }
            if tick(&mut s) && s.summary.is_none() {
                return Ok(());
            }
            terminal.draw(|f| ui::draw(f, &s))?;
            if event::poll(Duration::from_millis(100))? {
                match event::read()? {
                    TermEvent::Key(k) if k.kind == KeyEventKind::Press => {
                        if s.summary.is_some() {
                            if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc | KeyCode::Enter)
                            {
                                return Ok(());
                            }
                            continue;
                        }
                        let (action, quit) = key(&mut s, k.code);
                        if let Some(a) = action {
                            let _ = actions.send(a);
                        }
                        if quit {
                            return Ok(());
                        }
                    }
                    // A resize is simply drawn again at the new size.
                    _ => {}
                }
            }
        }
    })();
    ratatui::restore();
    result.map(|()| s)
}

/// `maxwell top`.
pub(crate) fn top(a: &TopArgs) -> anyhow::Result<Exit> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!(
            "maxwell top draws a dashboard and needs a terminal; for scripts use `maxwell market --json`, `maxwell agents list --json` or `maxwell events`"
        );
    }
    let key = a.client.key().ok();
    let (rx, tx) = poller(a.client.client(), key)?;
    run_ui(
        State::new(a.client.socket().display().to_string()),
        rx,
        tx,
        |_| false,
    )?;
    Ok(Exit::Success)
}

/// `maxwell demo --tui`: a daemon on a fresh data directory hosts 4 scientists and 4 leeches
/// for `duration`, live in the dashboard; then a summary screen.
pub(crate) fn demo(duration: Duration, data: &std::path::Path) -> anyhow::Result<Exit> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        anyhow::bail!("maxwell demo --tui needs a terminal; run `maxwell demo` for the report");
    }
    let (dir, daemon, client, key) = crate::daemon_cli::fresh_daemon(data, "demo-tui", None)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let node = crate::daemon_cli::wait_ready(&client)
            .await
            .map_err(|e| anyhow::anyhow!("{e}; see {}", dir.join("daemon.log").display()))?;
        crate::daemon_cli::spawn_demo_cast(&client, &key, &node).await?;
        anyhow::Ok(())
    })?;
    drop(rt);
    let (rx, tx) = poller(client, Some(key))?;
    let start = Instant::now();
    let mut s = State::new(dir.join("maxwell.sock").display().to_string());
    s.message = Some(format!(
        "demo: 4 scientists and 4 leeches, {} s; watch the wallets",
        duration.as_secs()
    ));
    let s = run_ui(s, rx, tx, |s| {
        let left = duration.saturating_sub(start.elapsed());
        if left.is_zero() {
            if s.summary.is_none() {
                s.summary = Some(summary(s, start.elapsed(), &dir));
            }
            return true;
        }
        if s.mode == Mode::Normal && s.message.as_deref().is_none_or(|m| m.starts_with("demo:")) {
            s.message = Some(format!(
                "demo: {} s left; watch the wallets",
                left.as_secs()
            ));
        }
        false
    })?;
    drop(daemon);
    if let Some(lines) = &s.summary {
        crate::write_out(&(lines.join("\n") + "\n"))?;
    }
    Ok(Exit::Success)
}

/// The summary screen: who died when, who lives, work per joule of the live run.
fn summary(s: &State, elapsed: Duration, dir: &std::path::Path) -> Vec<String> {
    let mut lines = vec![
        format!(
            "Scientist vs Leech, live for {:.0} s on this machine (WASM agents)",
            elapsed.as_secs_f64()
        ),
        String::new(),
    ];
    let dead_leeches: Vec<String> = s
        .events
        .iter()
        .filter(|e| e.kind == "death" && e.agent.as_deref().is_some_and(|a| a.starts_with("leech")))
        .map(|e| {
            format!(
                "{} at {:.1} s",
                e.agent.clone().unwrap_or_default(),
                e.tick as f64 / 100.0
            )
        })
        .collect();
    let leeches = s
        .agents
        .iter()
        .filter(|a| a.name.starts_with("leech"))
        .count();
    lines.push(format!(
        "leeches dead: {} of {leeches}  ({})",
        dead_leeches.len(),
        dead_leeches.join(", ")
    ));
    for a in s.agents.iter().filter(|a| a.name.starts_with("scientist")) {
        lines.push(format!(
            "{:<12} {:<8} balance {:>10.3} J  work {:>12} primes  {:>6.1} CPU s{}",
            a.name,
            a.state,
            a.balance.0 as f64 / 1e6,
            a.work,
            a.cpu_s,
            a.cause
                .as_ref()
                .map_or(String::new(), |c| format!("  ({c})"))
        ));
    }
    if let Some(m) = &s.market {
        let work: u64 = s.agents.iter().map(|a| a.work).sum();
        lines.push(String::new());
        lines.push(format!(
            "energy {:.1} J{}; paid work {work} primes, {:.0} primes per joule",
            m.energy_j,
            if m.modelled { " (modelled)" } else { "" },
            if m.energy_j > 0.0 {
                work as f64 / m.energy_j
            } else {
                0.0
            }
        ));
        lines.push(format!(
            "last price {:.3} J per slot, die {:.1} C",
            m.price.0 as f64 / 1e6,
            m.temperature_c
        ));
    }
    lines.push(String::new());
    lines.push(format!(
        "ledger: {} (maxwell ledger verify --db ...)",
        dir.join("ledger.db").display()
    ));
    lines
        .push("the comparison with the plain Linux scheduler: maxwell demo (without --tui)".into());
    lines
}
