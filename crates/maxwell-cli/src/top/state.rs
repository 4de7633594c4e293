//! What the dashboard knows: the last answers of the daemon, 60 s of history, the events, the
//! selection and the mode. Pure: fed by [`State::update`] and [`State::event`], drawn by `ui`.

use std::collections::{BTreeMap, VecDeque};

use maxwell_daemon::api::{AgentView, Event, MarketView};

/// Seconds of history kept for sparklines and burn rates.
pub const HISTORY_S: f64 = 60.0;

/// One sample of the market.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the dashboard started.
    pub t: f64,
    /// Clearing price, micro-JOULE.
    pub price: u64,
    /// Temperature, C.
    pub temperature_c: f64,
    /// Power, W.
    pub power_w: f64,
}

/// What a key press is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Browsing.
    Normal,
    /// `k` was pressed on this agent: y kills it, anything else cancels.
    ConfirmKill(String),
    /// `f` was pressed: the amount being typed for this agent.
    Fund(String, String),
    /// `?`.
    Help,
}

/// Connection to the daemon.
#[derive(Debug, Clone, PartialEq)]
pub enum Link {
    /// Answers are coming.
    Up,
    /// The last call failed (the daemon is down or restarting); retrying.
    Down(String),
}

/// The dashboard's state.
#[derive(Debug, Clone)]
pub struct State {
    /// Where the daemon is.
    pub socket: String,
    /// Connection.
    pub link: Link,
    /// Times the link came back after being down.
    pub reconnects: u32,
    /// Last market answer.
    pub market: Option<MarketView>,
    /// Last agent list.
    pub agents: Vec<AgentView>,
    /// Market history.
    pub history: VecDeque<Sample>,
    /// Per agent: (t, balance, cpu_s) samples for burn rate and CPU share.
    pub wallets: BTreeMap<String, VecDeque<(f64, u64, f64)>>,
    /// Recent events (not clearings), newest last.
    pub events: VecDeque<Event>,
    /// Selected row of the agent table.
    pub selected: usize,
    /// Key mode.
    pub mode: Mode,
    /// A one-line message (result of the last action).
    pub message: Option<String>,
    /// Summary shown instead of the dashboard (demo end), if any.
    pub summary: Option<Vec<String>>,
}

impl State {
    /// An empty state for the daemon at `socket`.
    pub fn new(socket: String) -> State {
        State {
            socket,
            link: Link::Down("connecting".into()),
            reconnects: 0,
            market: None,
            agents: Vec::new(),
            history: VecDeque::new(),
            wallets: BTreeMap::new(),
            events: VecDeque::new(),
            selected: 0,
            mode: Mode::Normal,
            message: None,
            summary: None,
        }
    }

    /// A fresh answer from the daemon at time `t`.
    pub fn update(&mut self, t: f64, market: MarketView, agents: Vec<AgentView>) {
        if matches!(self.link, Link::Down(_)) && self.market.is_some() {
            self.reconnects += 1;
            self.message = Some("reconnected to the daemon".into());
        }
        self.link = Link::Up;
        self.history.push_back(Sample {
            t,
            price: market.price.0,
            temperature_c: market.temperature_c,
            power_w: market.power_w,
        });
        while self.history.front().is_some_and(|s| t - s.t > HISTORY_S) {
            self.history.pop_front();
        }
        for a in &agents {
            let w = self.wallets.entry(a.name.clone()).or_default();
            w.push_back((t, a.balance.0, a.cpu_s));
            while w.front().is_some_and(|s| t - s.0 > 10.0) {
                w.pop_front();
            }
        }
        self.market = Some(market);
        self.agents = agents;
        if self.selected >= self.agents.len() {
            self.selected = self.agents.len().saturating_sub(1);
        }
    }

    /// The daemon could not be reached.
    pub fn down(&mut self, why: String) {
        self.link = Link::Down(why);
    }

    /// An event from the stream; clearings are not kept (the market panel shows them).
    pub fn event(&mut self, e: Event) {
        if e.kind == "clearing" {
            return;
        }
        self.events.push_back(e);
        while self.events.len() > 200 {
            self.events.pop_front();
        }
    }

    /// Net burn of an agent's wallet in micro-JOULE per second over the last 10 s (positive:
    /// spending more than it earns), if known.
    pub fn burn_rate(&self, name: &str) -> Option<f64> {
        let w = self.wallets.get(name)?;
        let (first, last) = (w.front()?, w.back()?);
        let dt = last.0 - first.0;
        if dt < 0.5 {
            return None;
        }
        Some((first.1 as f64 - last.1 as f64) / dt)
    }

    /// Seconds until the wallet is empty at the current burn rate.
    pub fn time_to_insolvency(&self, name: &str) -> Option<f64> {
        let burn = self.burn_rate(name)?;
        let balance = self.wallets.get(name)?.back()?.1 as f64;
        (burn > 0.0).then(|| balance / burn)
    }

    /// Share of one core an agent used over the last 10 s.
    pub fn cpu_share(&self, name: &str) -> Option<f64> {
        let w = self.wallets.get(name)?;
        let (first, last) = (w.front()?, w.back()?);
        let dt = last.0 - first.0;
        (dt >= 0.5).then(|| ((last.2 - first.2) / dt).max(0.0))
    }

    /// The selected agent's name.
    pub fn selected_name(&self) -> Option<String> {
        self.agents.get(self.selected).map(|a| a.name.clone())
    }
}
