//! Pricing: a PID controller on thermal headroom that yields a power budget, and the supply and
//! reserve price that follow from it.
//!
//! The controller is modelled on Linux's `power_allocator` thermal governor (IPA): below the
//! switch-on temperature it resets and the full budget applies; above it,
//! `budget = sustainable + k_p * e + k_i * sum(e * dt) + k_d * de/dt` with
//! `e = control - temperature`, a proportional gain `k_po` when over the control temperature
//! and a larger `k_pu` when under it, an integral that accumulates only while `e` is below
//! `integral_cutoff` and only while its term stays within `±sustainable` (anti-windup), and the
//! derivative off by default. The budget is clamped to `[0, power_max]`.
//!
//! From the budget: supply `k = clamp(floor(budget / slot_power), 0, slots_max)` and reserve
//! `r = grid_price * E_slot * max(1, sustainable / budget)`: the energy cost of a slot times its
//! scarcity.

use serde::{Deserialize, Serialize};

use crate::units::{GridPrice, MilliCelsius, MilliWatts, Nanos, Tokens};

/// Tuning of the power-allocator PID controller. Gains are in milliwatts per millidegree
/// (proportional), per millidegree-second (integral) and per millidegree-per-second
/// (derivative).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PidConfig {
    /// Below this temperature the controller resets and grants `power_max`.
    pub temp_switch_on: MilliCelsius,
    /// The temperature the controller steers to.
    pub temp_control: MilliCelsius,
    /// Power the machine can dissipate indefinitely at the control temperature (the budget at
    /// zero error). Like Linux's `sustainable-power`.
    pub power_sustainable: MilliWatts,
    /// The largest budget ever granted (all slots busy).
    pub power_max: MilliWatts,
    /// Proportional gain when over the control temperature.
    pub k_po: f64,
    /// Proportional gain when under the control temperature.
    pub k_pu: f64,
    /// Integral gain, per second of accumulated error.
    pub k_i: f64,
    /// Derivative gain (0: off, the default as in Linux).
    pub k_d: f64,
    /// The integral accumulates only while the error is below this (Linux's default 0: only
    /// while over the control temperature).
    pub integral_cutoff: MilliCelsius,
}

impl PidConfig {
    /// Gains estimated the way Linux's `estimate_pid_constants` does:
    /// `k_po = sustainable / (control - switch_on)`, `k_pu = 2 * k_po`, and an integral gain
    /// that moves the budget by `k_po * e` per ten seconds of error `e`.
    pub fn estimated(
        temp_switch_on: MilliCelsius,
        temp_control: MilliCelsius,
        power_sustainable: MilliWatts,
        power_max: MilliWatts,
    ) -> PidConfig {
        let threshold = f64::from(temp_control.0.saturating_sub(temp_switch_on.0).max(1));
        let k_po = power_sustainable.0 as f64 / threshold;
        PidConfig {
            temp_switch_on,
            temp_control,
            power_sustainable,
            power_max,
            k_po,
            k_pu: 2.0 * k_po,
            k_i: k_po / 10.0,
            k_d: 0.0,
            integral_cutoff: MilliCelsius(0),
        }
    }

    /// Checks the parameters make a controller.
    pub fn validate(&self) -> Result<(), PidConfigError> {
        if self.temp_control <= self.temp_switch_on {
            return Err(PidConfigError::Temperatures);
        }
        if self.power_sustainable > self.power_max || self.power_max.0 == 0 {
            return Err(PidConfigError::Powers);
        }
        for (name, g) in [
            ("k_po", self.k_po),
            ("k_pu", self.k_pu),
            ("k_i", self.k_i),
            ("k_d", self.k_d),
        ] {
            if !g.is_finite() || g < 0.0 {
                return Err(PidConfigError::Gain(name));
            }
        }
        Ok(())
    }
}

/// Why a PID configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PidConfigError {
    /// Switch-on must be below control.
    #[error(
        "temp_switch_on must be below temp_control (e.g. switch_on = \"60C\", control = \"80C\")"
    )]
    Temperatures,
    /// Sustainable above max, or zero max.
    #[error("power_sustainable must be at most power_max, and power_max above zero")]
    Powers,
    /// A gain is negative or not finite.
    #[error("gain {0} must be a finite number >= 0")]
    Gain(&'static str),
}

/// The controller state. Reads no clock: the caller passes the elapsed time.
#[derive(Debug, Clone)]
pub struct PowerAllocator {
    config: PidConfig,
    /// Accumulated error, in millidegree-seconds.
    err_integral: f64,
    prev_err: Option<f64>,
}

impl PowerAllocator {
    /// A reset controller.
    pub fn new(config: PidConfig) -> PowerAllocator {
        PowerAllocator {
            config,
            err_integral: 0.0,
            prev_err: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &PidConfig {
        &self.config
    }

    /// The integral term's current contribution, in milliwatts (for tests and dashboards).
    pub fn integral_mw(&self) -> f64 {
        self.config.k_i * self.err_integral
    }

    /// One controller step at `temp` after `dt`; returns the power budget.
    pub fn step(&mut self, temp: MilliCelsius, dt: Nanos) -> MilliWatts {
        let c = &self.config;
        if temp < c.temp_switch_on {
            self.err_integral = 0.0;
            self.prev_err = None;
            return c.power_max;
        }
        let dt_s = dt.as_secs_f64();
        let err = f64::from(c.temp_control.0) - f64::from(temp.0);
        let sustainable = c.power_sustainable.0 as f64;
        let k_p = if err < 0.0 { c.k_po } else { c.k_pu };
        let p = k_p * err;
        // Anti-windup: integrate only below the cutoff and only while the term stays bounded
        // by the sustainable power, as Linux does.
        if err < f64::from(c.integral_cutoff.0) && dt_s > 0.0 {
            let next = self.err_integral + err * dt_s;
            if (c.k_i * next).abs() < sustainable {
                self.err_integral = next;
            }
        }
        let i = c.k_i * self.err_integral;
        let d = match (self.prev_err, dt_s > 0.0) {
            (Some(prev), true) => c.k_d * (err - prev) / dt_s,
            _ => 0.0,
        };
        self.prev_err = Some(err);
        let budget = (sustainable + p + i + d).clamp(0.0, c.power_max.0 as f64);
        MilliWatts(budget as u64)
    }
}

/// Supply and reserve for one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    /// Power budget from the controller.
    pub budget: MilliWatts,
    /// Slots for sale: `clamp(floor(budget / slot_power), 0, slots_max)`.
    pub supply: u32,
    /// Reserve price per slot.
    pub reserve: Tokens,
}

/// Supply and reserve from a budget (DESIGN.md section 4, step 3). The reserve is the energy
/// cost of one slot for one quantum times the scarcity `max(1, sustainable / budget)`, rounded
/// up. `slot_power` must be non-zero.
pub fn offer(
    budget: MilliWatts,
    sustainable: MilliWatts,
    slot_power: MilliWatts,
    slots_max: u32,
    quantum: Nanos,
    grid: GridPrice,
) -> Offer {
    let supply = (budget.0 / slot_power.0.max(1)).min(u64::from(slots_max)) as u32;
    let base = grid.cost(slot_power.over(quantum));
    let reserve = if budget >= sustainable {
        base
    } else {
        base.mul_div_ceil(sustainable.0, budget.0.max(1))
    };
    Offer {
        budget,
        supply,
        reserve,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config() -> PidConfig {
        PidConfig::estimated(
            MilliCelsius(60_000),
            MilliCelsius(80_000),
            MilliWatts(45_000),
            MilliWatts(60_000),
        )
    }

    const TICK: Nanos = Nanos(10_000_000);

    #[test]
    fn below_switch_on_grants_everything_and_resets() {
        let mut pid = PowerAllocator::new(config());
        for _ in 0..500 {
            pid.step(MilliCelsius(95_000), TICK);
        }
        assert!(pid.integral_mw() < 0.0);
        assert_eq!(pid.step(MilliCelsius(50_000), TICK), MilliWatts(60_000));
        assert_eq!(pid.integral_mw(), 0.0);
    }

    #[test]
    fn hotter_means_smaller_budget() {
        let mut a = PowerAllocator::new(config());
        let mut b = PowerAllocator::new(config());
        assert!(a.step(MilliCelsius(85_000), TICK) < b.step(MilliCelsius(75_000), TICK));
        // At the control temperature with no history the budget is the sustainable power.
        let mut c = PowerAllocator::new(config());
        assert_eq!(c.step(MilliCelsius(80_000), TICK), MilliWatts(45_000));
    }

    #[test]
    fn integral_does_not_wind_up() {
        // An hour far over the control temperature, then back under it: the integral term is
        // bounded by the sustainable power, so the budget recovers within a few ticks instead of
        // staying pinned at zero for as long as it was hot.
        let mut pid = PowerAllocator::new(config());
        for _ in 0..360_000 {
            assert_eq!(pid.step(MilliCelsius(100_000), TICK), MilliWatts(0));
        }
        assert!(pid.integral_mw().abs() <= 45_000.0);
        let mut ticks_to_recover = 0;
        while pid.step(MilliCelsius(70_000), TICK) < MilliWatts(45_000) {
            ticks_to_recover += 1;
            assert!(ticks_to_recover < 10, "wound up");
        }
    }

    #[test]
    fn reserve_scales_with_scarcity() {
        let grid = GridPrice(Tokens(1_000_000));
        let full = offer(
            MilliWatts(60_000),
            MilliWatts(45_000),
            MilliWatts(15_000),
            4,
            TICK,
            grid,
        );
        assert_eq!(full.supply, 4);
        assert_eq!(full.reserve, Tokens(150_000), "15 W for 10 ms is 0.15 J");
        let tight = offer(
            MilliWatts(22_500),
            MilliWatts(45_000),
            MilliWatts(15_000),
            4,
            TICK,
            grid,
        );
        assert_eq!(tight.supply, 1);
        assert_eq!(tight.reserve, Tokens(300_000));
        let none = offer(
            MilliWatts(0),
            MilliWatts(45_000),
            MilliWatts(15_000),
            4,
            TICK,
            grid,
        );
        assert_eq!(none.supply, 0);
    }

    proptest! {
        #[test]
        fn budget_is_bounded(temps in prop::collection::vec(-20_000i32..150_000, 1..400)) {
            let mut pid = PowerAllocator::new(config());
            for t in temps {
                let b = pid.step(MilliCelsius(t), TICK);
                prop_assert!(b <= MilliWatts(60_000));
                prop_assert!(pid.integral_mw().abs() <= 45_000.0);
            }
        }

        #[test]
        fn budget_never_rises_with_temperature(t1 in 60_000i32..120_000, dt in 0i32..20_000) {
            let mut a = PowerAllocator::new(config());
            let mut b = PowerAllocator::new(config());
            prop_assert!(a.step(MilliCelsius(t1 + dt), TICK) <= b.step(MilliCelsius(t1), TICK));
        }
    }
}
