//! Metrics at 1 Hz: one row per second of every arm of every run, written to `metrics.csv`.

use std::fmt::Write as _;
use std::time::Duration;

use maxwell_core::Tokens;

/// Where an agent of the maxwell arm is at the end of a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// It won a slot for the coming quantum.
    Running,
    /// Alive but frozen: it lost the auction.
    Frozen,
    /// Insolvent or killed, in its grace period.
    Dying,
    /// Gone.
    Dead,
}

impl State {
    /// The word in the CSV.
    fn word(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Frozen => "frozen",
            State::Dying => "dying",
            State::Dead => "dead",
        }
    }
}

/// One second of one arm.
#[derive(Debug, Clone)]
pub(super) struct Row {
    /// `baseline`, `maxwell` or `oracle`.
    pub arm: &'static str,
    /// Run number, from 1.
    pub run: u32,
    /// The end of the second this row covers, in seconds since the arm started (the last row of
    /// an arm whose duration is not whole seconds covers less).
    pub t_s: u64,
    /// Temperature at the end of the second.
    pub temperature_c: f64,
    /// Mean power over the second.
    pub power_w: f64,
    /// Clearing price at the last tick of the second (maxwell arm).
    pub price: Option<Tokens>,
    /// Slots sold at the last tick of the second (maxwell arm).
    pub supply: Option<u32>,
    /// Numbers covered by the claims accepted in the second, per second (claimed, not yet
    /// verified).
    pub work_rate_claimed: f64,
    /// Each agent's balance and state at the end of the second, in roster order (maxwell arm).
    pub agents: Option<Vec<(Tokens, State)>>,
}

/// What one second accumulates until it closes.
#[derive(Debug)]
pub(super) struct Second {
    end: Duration,
    began: Duration,
    energy_uj: u64,
    numbers: u64,
    samples: u32,
}

/// What a closed second measured.
#[derive(Debug, Clone, Copy)]
pub(super) struct Closed {
    /// See [`Row::t_s`].
    pub t_s: u64,
    /// See [`Row::power_w`].
    pub power_w: f64,
    /// See [`Row::work_rate_claimed`].
    pub work_rate_claimed: f64,
}

impl Second {
    /// The first second of an arm.
    pub(super) fn new() -> Second {
        Second {
            end: Duration::from_secs(1),
            began: Duration::ZERO,
            energy_uj: 0,
            numbers: 0,
            samples: 0,
        }
    }

    /// Adds one quantum's energy and claimed numbers.
    pub(super) fn add(&mut self, energy_uj: u64, numbers: u64) {
        self.energy_uj += energy_uj;
        self.numbers += numbers;
        self.samples += 1;
    }

    /// Closes the second if `elapsed` (since the arm started) has passed its end, or, when `last`,
    /// whatever it holds; then starts the next.
    pub(super) fn close(&mut self, elapsed: Duration, last: bool) -> Option<Closed> {
        let due = elapsed >= self.end;
        if !(due || (last && self.samples > 0)) {
            return None;
        }
        let t_s = if due {
            while self.end <= elapsed {
                self.end += Duration::from_secs(1);
            }
            self.end.as_secs() - 1
        } else {
            elapsed.as_secs_f64().ceil() as u64
        };
        let secs = elapsed.saturating_sub(self.began).as_secs_f64().max(1e-9);
        let closed = Closed {
            t_s,
            power_w: self.energy_uj as f64 / 1e6 / secs,
            work_rate_claimed: self.numbers as f64 / secs,
        };
        self.began = elapsed;
        self.energy_uj = 0;
        self.numbers = 0;
        self.samples = 0;
        Some(closed)
    }
}

/// Money in JOULE with every micro-JOULE digit (exact; no float).
pub(super) fn joules(t: Tokens) -> String {
    format!("{}.{:06}", t.0 / 1_000_000, t.0 % 1_000_000)
}

/// The CSV: a header, then the rows in order. `names` are the agents of the full roster.
pub(super) fn csv(rows: &[Row], names: &[String]) -> String {
    let mut s =
        String::from("arm,run,t_s,temperature_c,power_w,price_joule,supply,work_rate_claimed");
    for n in names {
        let _ = write!(s, ",balance_{n},state_{n}");
    }
    s.push('\n');
    for r in rows {
        let _ = write!(
            s,
            "{},{},{},{:.3},{:.3},{},{},{:.0}",
            r.arm,
            r.run,
            r.t_s,
            r.temperature_c,
            r.power_w,
            r.price.map(joules).unwrap_or_default(),
            r.supply.map(|k| k.to_string()).unwrap_or_default(),
            r.work_rate_claimed
        );
        for i in 0..names.len() {
            match r.agents.as_ref().and_then(|a| a.get(i)) {
                Some((balance, state)) => {
                    let _ = write!(s, ",{},{}", joules(*balance), state.word());
                }
                None => s.push_str(",,"),
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn seconds_close_on_their_boundary_and_the_rest_at_the_end() {
        let mut s = Second::new();
        s.add(500_000, 10);
        assert!(s.close(Duration::from_millis(500), false).is_none());
        s.add(500_000, 10);
        let c = s.close(Duration::from_millis(1000), false).unwrap();
        assert_eq!(c.t_s, 1);
        assert!((c.power_w - 1.0).abs() < 1e-9 && (c.work_rate_claimed - 20.0).abs() < 1e-9);
        assert!(s.close(Duration::from_millis(1000), true).is_none());
        s.add(1_000_000, 0);
        let c = s.close(Duration::from_millis(1500), true).unwrap();
        assert_eq!(c.t_s, 2);
        assert!((c.power_w - 2.0).abs() < 1e-9);
    }

    #[test]
    fn the_csv_has_a_column_pair_per_agent() {
        let names = vec!["a".to_string(), "b".to_string()];
        let row = |arm, agents| Row {
            arm,
            run: 1,
            t_s: 1,
            temperature_c: 50.0,
            power_w: 10.0,
            price: None,
            supply: None,
            work_rate_claimed: 0.0,
            agents,
        };
        let text = csv(
            &[
                row("baseline", None),
                row(
                    "maxwell",
                    Some(vec![
                        (Tokens(1_500_000), State::Running),
                        (Tokens(0), State::Dead),
                    ]),
                ),
            ],
            &names,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].ends_with("work_rate_claimed,balance_a,state_a,balance_b,state_b"));
        assert!(lines[1].ends_with(",,,,"));
        assert!(lines[2].ends_with(",1.500000,running,0.000000,dead"));
        assert!(lines.iter().all(|l| l.split(',').count() == 12));
    }
}
