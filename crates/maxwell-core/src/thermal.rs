//! A lumped RC thermal model, `C dT/dt = P - (T - T_ambient) / R`.
//!
//! One thermal resistance `R` (kelvin per watt, die to ambient) and one heat capacity `C`
//! (joules per kelvin); the time constant is `tau = R * C` (0.3 to 3.5 s by hardware class). The
//! simulator uses it as its physics, and the modelled sensor (on machines that hide their
//! temperature) uses it to estimate the die temperature from power. Each step integrates
//! exactly for a constant power over the step, so the result does not depend on the step size.

use serde::{Deserialize, Serialize};

use crate::units::{MilliCelsius, MilliWatts, Nanos};

/// Parameters of the RC model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RcParams {
    /// Thermal resistance die-to-ambient, kelvin per watt.
    pub r_k_per_w: f64,
    /// Time constant `R * C`, seconds.
    pub tau_s: f64,
    /// Ambient temperature.
    pub ambient: MilliCelsius,
}

impl RcParams {
    /// The steady-state temperature at constant `power`: `T_ambient + P * R`.
    pub fn steady_state(&self, power: MilliWatts) -> MilliCelsius {
        MilliCelsius::from_celsius_f64(
            self.ambient.as_celsius_f64() + power.as_watts_f64() * self.r_k_per_w,
        )
    }

    /// The largest power that keeps the steady state at or below `temp`.
    pub fn sustainable_power(&self, temp: MilliCelsius) -> MilliWatts {
        let headroom = temp.as_celsius_f64() - self.ambient.as_celsius_f64();
        MilliWatts::from_watts_f64(headroom / self.r_k_per_w)
    }

    /// Heat capacity `C = tau / R`, joules per kelvin.
    pub fn heat_capacity_j_per_k(&self) -> f64 {
        self.tau_s / self.r_k_per_w
    }
}

/// The state of the model: the die temperature.
#[derive(Debug, Clone, Copy)]
pub struct ThermalRc {
    params: RcParams,
    temp_c: f64,
}

impl ThermalRc {
    /// A model starting at `initial`.
    pub fn new(params: RcParams, initial: MilliCelsius) -> ThermalRc {
        ThermalRc {
            params,
            temp_c: initial.as_celsius_f64(),
        }
    }

    /// The parameters.
    pub fn params(&self) -> &RcParams {
        &self.params
    }

    /// Current temperature.
    pub fn temperature(&self) -> MilliCelsius {
        MilliCelsius::from_celsius_f64(self.temp_c)
    }

    /// Advances by `dt` at constant `power`: `T <- T_ss + (T - T_ss) * exp(-dt / tau)`.
    pub fn step(&mut self, power: MilliWatts, dt: Nanos) -> MilliCelsius {
        let p = &self.params;
        let t_ss = p.ambient.as_celsius_f64() + power.as_watts_f64() * p.r_k_per_w;
        let decay = if p.tau_s > 0.0 {
            (-dt.as_secs_f64() / p.tau_s).exp()
        } else {
            0.0
        };
        self.temp_c = t_ss + (self.temp_c - t_ss) * decay;
        self.temperature()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> RcParams {
        RcParams {
            r_k_per_w: 0.7,
            tau_s: 1.0,
            ambient: MilliCelsius(25_000),
        }
    }

    #[test]
    fn converges_to_the_rc_steady_state() {
        let mut m = ThermalRc::new(params(), MilliCelsius(25_000));
        for _ in 0..2_000 {
            m.step(MilliWatts(50_000), Nanos::from_millis(10));
        }
        // 25 C + 50 W * 0.7 K/W = 60 C.
        assert_eq!(m.temperature(), MilliCelsius(60_000));
        assert_eq!(
            params().steady_state(MilliWatts(50_000)),
            MilliCelsius(60_000)
        );
    }

    #[test]
    fn one_time_constant_covers_63_percent() {
        let mut m = ThermalRc::new(params(), MilliCelsius(25_000));
        for _ in 0..100 {
            m.step(MilliWatts(50_000), Nanos::from_millis(10));
        }
        let frac = (m.temperature().as_celsius_f64() - 25.0) / 35.0;
        assert!((frac - (1.0 - (-1.0f64).exp())).abs() < 1e-4, "{frac}");
        // The exact integration makes the step size irrelevant.
        let mut coarse = ThermalRc::new(params(), MilliCelsius(25_000));
        coarse.step(MilliWatts(50_000), Nanos::from_secs(1));
        assert_eq!(coarse.temperature(), m.temperature());
    }

    #[test]
    fn sustainable_power_inverts_steady_state() {
        let p = params();
        let s = p.sustainable_power(MilliCelsius(80_000));
        assert_eq!(p.steady_state(s), MilliCelsius(80_000));
    }
}
