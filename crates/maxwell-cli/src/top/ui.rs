//! Drawing the dashboard. Each panel is its own function of the state, so each can be
//! rendered alone (the snapshot tests do).

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Gauge, Paragraph, Row, Sparkline, Table, Wrap,
};

use super::state::{Link, Mode, State};

/// The smallest terminal the dashboard draws in.
pub const MIN_WIDTH: u16 = 80;
/// See [`MIN_WIDTH`].
pub const MIN_HEIGHT: u16 = 24;

fn joules(micro: u64) -> String {
    format!("{:.3} J", micro as f64 / 1e6)
}

fn block(title: &str) -> Block<'_> {
    Block::default().borders(Borders::ALL).title(Span::styled(
        title,
        Style::default().add_modifier(Modifier::BOLD),
    ))
}

fn state_color(state: &str) -> Color {
    match state {
        "running" => Color::Green,
        "frozen" => Color::Blue,
        "dying" => Color::Yellow,
        _ => Color::Red,
    }
}

/// Everything, or a notice when the terminal is too small.
pub fn draw(f: &mut Frame<'_>, s: &State) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let p = Paragraph::new(vec![
            Line::from("maxwell top: the terminal is too small"),
            Line::from(format!(
                "it is {}x{}; the dashboard needs {MIN_WIDTH}x{MIN_HEIGHT}",
                area.width, area.height
            )),
            Line::from("enlarge it, or press q to quit"),
        ])
        .wrap(Wrap { trim: true });
        f.render_widget(p, area);
        return;
    }
    if let Some(summary) = &s.summary {
        summary_panel(f, area, summary);
        return;
    }
    let [top, middle, bottom, footer] = Layout::vertical([
        Constraint::Length(9),
        Constraint::Min(8),
        Constraint::Length(8),
        Constraint::Length(1),
    ])
    .areas(area);
    let [market_area, spark_area] =
        Layout::horizontal([Constraint::Length(44), Constraint::Min(30)]).areas(top);
    let [agents_area, wallets_area] =
        Layout::horizontal([Constraint::Min(44), Constraint::Length(36)]).areas(middle);
    market_panel(f, market_area, s);
    sparklines_panel(f, spark_area, s);
    agents_panel(f, agents_area, s);
    wallets_panel(f, wallets_area, s);
    events_panel(f, bottom, s);
    footer_line(f, footer, s);
    match &s.mode {
        Mode::Help => help_popup(f, area),
        Mode::ConfirmKill(name) => popup(
            f,
            area,
            "kill",
            &[
                format!("Kill {name}? Its wallet is lost."),
                "y: kill   any other key: cancel".into(),
            ],
        ),
        Mode::Fund(name, amount) => popup(
            f,
            area,
            "fund",
            &[
                format!("Fund {name} with: {amount}_"),
                "type an amount (e.g. 5 JOULE), Enter: sign and send, Esc: cancel".into(),
            ],
        ),
        Mode::Normal => {}
    }
}

/// Price, supply, reserve, the top of the book.
pub fn market_panel(f: &mut Frame<'_>, area: Rect, s: &State) {
    let lines = match &s.market {
        None => vec![Line::from("waiting for the daemon...")],
        Some(m) => {
            let mut v = vec![
                Line::from(vec![
                    Span::raw("price "),
                    Span::styled(
                        joules(m.price.0),
                        Style::default().add_modifier(Modifier::BOLD),
                    ),
                    Span::raw(format!("  supply {}/{}", m.supply, m.slots_max)),
                ]),
                Line::from(format!(
                    "reserve {}  bids {}  tick {}",
                    joules(m.reserve.0),
                    m.depth,
                    m.tick
                )),
                Line::from(format!(
                    "alive {}  bounty pool {:.0} J",
                    m.alive,
                    m.bounty_pool.0 as f64 / 1e6
                )),
                Line::from("top of the book:"),
            ];
            for b in m.top.iter().take(3) {
                v.push(Line::from(format!(
                    "  {:<18} {}",
                    b.agent,
                    joules(b.price.0)
                )));
            }
            v
        }
    };
    f.render_widget(Paragraph::new(lines).block(block("market")), area);
}

/// Price, temperature and power over the last 60 s.
pub fn sparklines_panel(f: &mut Frame<'_>, area: Rect, s: &State) {
    let modelled = s.market.as_ref().is_some_and(|m| m.modelled);
    let tag = if modelled { " (modelled)" } else { "" };
    let outer = block("last 60 s");
    let inner = outer.inner(area);
    f.render_widget(outer, area);
    let rows = Layout::vertical([Constraint::Length(2); 3]).split(inner);
    let width = inner.width.saturating_sub(0) as usize;
    let take = |g: &dyn Fn(&super::state::Sample) -> u64| -> Vec<u64> {
        let n = s.history.len();
        s.history
            .iter()
            .skip(n.saturating_sub(width))
            .map(g)
            .collect()
    };
    let last = s.history.back();
    let specs: [(String, Vec<u64>, Color); 3] = [
        (
            format!("price {}", last.map_or("-".into(), |x| joules(x.price))),
            take(&|x| x.price),
            Color::Yellow,
        ),
        (
            format!(
                "temperature {}{tag}",
                last.map_or("-".into(), |x| format!("{:.1} C", x.temperature_c))
            ),
            take(&|x| (x.temperature_c * 10.0).max(0.0) as u64),
            Color::Red,
        ),
        (
            format!(
                "power {}{tag}",
                last.map_or("-".into(), |x| format!("{:.1} W", x.power_w))
            ),
            take(&|x| (x.power_w * 10.0).max(0.0) as u64),
            Color::Cyan,
        ),
    ];
    for ((label, data, color), row) in specs.into_iter().zip(rows.iter()) {
        let [l, g] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(*row);
        f.render_widget(Paragraph::new(label), l);
        f.render_widget(
            Sparkline::default()
                .data(&data)
                .style(Style::default().fg(color)),
            g,
        );
    }
}

/// Every agent.
pub fn agents_panel(f: &mut Frame<'_>, area: Rect, s: &State) {
    let header = Row::new([
        "name", "state", "balance", "cpu", "energy J", "work", "backend",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = s.agents.iter().enumerate().map(|(i, a)| {
        let style = if i == s.selected {
            Style::default().add_modifier(Modifier::REVERSED)
        } else {
            Style::default()
        };
        let cpu = if a.state == "dead" {
            "-".into()
        } else {
            s.cpu_share(&a.name)
                .map_or("-".into(), |c| format!("{:.0}%", c * 100.0))
        };
        Row::new(vec![
            Cell::from(a.name.clone()),
            Cell::from(Span::styled(
                a.state.clone(),
                Style::default().fg(state_color(&a.state)),
            )),
            Cell::from(joules(a.balance.0)),
            Cell::from(cpu),
            Cell::from(format!("{:.1}", a.energy_j)),
            Cell::from(a.work.to_string()),
            Cell::from(a.backend.clone()),
        ])
        .style(style)
    });
    let t = Table::new(
        rows,
        [
            Constraint::Min(10),
            Constraint::Length(7),
            Constraint::Length(11),
            Constraint::Length(4),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(7),
        ],
    )
    .header(header)
    .block(block("agents"));
    f.render_widget(t, area);
}

/// Balance bars, burn rate and time to insolvency of the living.
pub fn wallets_panel(f: &mut Frame<'_>, area: Rect, s: &State) {
    let outer = block("wallets");
    let inner = outer.inner(area);
    f.render_widget(outer, area);
    let living: Vec<_> = s.agents.iter().filter(|a| a.state != "dead").collect();
    let max = living.iter().map(|a| a.balance.0).max().unwrap_or(1).max(1);
    for (i, a) in living.iter().enumerate() {
        let y = inner.y + 2 * i as u16;
        if y + 1 >= inner.y + inner.height {
            break;
        }
        let burn = s.burn_rate(&a.name);
        let tti = s.time_to_insolvency(&a.name);
        let label = format!(
            "{} {} {}",
            a.name,
            burn.map_or(String::new(), |b| format!("{:+.2} J/s", -b / 1e6)),
            tti.map_or(String::new(), |t| format!("dead in {t:.0}s"))
        );
        f.render_widget(Paragraph::new(label), Rect::new(inner.x, y, inner.width, 1));
        let g = Gauge::default()
            .ratio((a.balance.0 as f64 / max as f64).clamp(0.0, 1.0))
            .label(joules(a.balance.0))
            .gauge_style(Style::default().fg(if tti.is_some_and(|t| t < 10.0) {
                Color::Red
            } else {
                Color::Green
            }));
        f.render_widget(g, Rect::new(inner.x, y + 1, inner.width, 1));
    }
}

/// Apoptosis, audits, slashes, funding.
pub fn events_panel(f: &mut Frame<'_>, area: Rect, s: &State) {
    let n = area.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = s
        .events
        .iter()
        .rev()
        .take(n)
        .map(|e| {
            let color = match e.kind.as_str() {
                "death" => Color::Red,
                "slash" => Color::Magenta,
                "funding" | "spawn" => Color::Green,
                _ => Color::Gray,
            };
            Line::from(vec![
                Span::raw(format!("tick {:>7} ", e.tick)),
                Span::styled(format!("{:<8}", e.kind), Style::default().fg(color)),
                Span::raw(format!(
                    "{}{}",
                    e.agent.as_ref().map_or(String::new(), |a| format!("{a}: ")),
                    e.detail
                )),
            ])
        })
        .collect();
    f.render_widget(Paragraph::new(lines).block(block("events")), area);
}

/// Keys and the link.
pub fn footer_line(f: &mut Frame<'_>, area: Rect, s: &State) {
    let link = match &s.link {
        Link::Up => Span::styled("connected", Style::default().fg(Color::Green)),
        Link::Down(why) => Span::styled(
            format!(
                "daemon at {} unreachable ({why}); reconnecting...",
                s.socket
            ),
            Style::default().fg(Color::Red),
        ),
    };
    let mut spans = vec![
        Span::raw("q quit  arrows select  k kill  f fund  ? help   "),
        link,
    ];
    if let Some(m) = &s.message {
        spans.push(Span::raw(format!("   {m}")));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn popup(f: &mut Frame<'_>, area: Rect, title: &str, lines: &[String]) {
    let w = lines.iter().map(|l| l.len()).max().unwrap_or(10) as u16 + 4;
    let h = lines.len() as u16 + 2;
    let r = Rect::new(
        area.x + area.width.saturating_sub(w) / 2,
        area.y + area.height.saturating_sub(h) / 2,
        w.min(area.width),
        h.min(area.height),
    );
    f.render_widget(Clear, r);
    f.render_widget(Paragraph::new(text(lines)).block(block(title)), r);
}

fn text(lines: &[String]) -> Vec<Line<'_>> {
    lines.iter().map(|l| Line::from(l.as_str())).collect()
}

fn help_popup(f: &mut Frame<'_>, area: Rect) {
    popup(
        f,
        area,
        "help",
        &[
            "q        quit".into(),
            "up/down  select an agent".into(),
            "k        kill the selected agent (asks first)".into(),
            "f        fund the selected agent (signed with your owner key)".into(),
            "?        this help; any key closes it".into(),
            "Prices in JOULE per slot per quantum; `modelled` marks model physics.".into(),
        ],
    );
}

/// The end of `maxwell demo --tui`.
pub fn summary_panel(f: &mut Frame<'_>, area: Rect, lines: &[String]) {
    f.render_widget(
        Paragraph::new(text(lines))
            .block(block("summary (q to quit)"))
            .wrap(Wrap { trim: false }),
        area,
    );
}
