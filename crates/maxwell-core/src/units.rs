//! Unit newtypes. Every quantity that crosses a crate boundary has its own type, and each type
//! implements only the operations that make physical or economic sense: energy divided by time
//! is power, power times time is energy, and money never mixes with joules except through
//! [`GridPrice::cost`], the one function that turns energy into tokens.
//!
//! Every division says how it rounds. Charges (prices, taxes, rent) round up so that they are
//! never under-collected; payouts round down so that the house never pays out more than it has.
//!
//! All types parse from strings with units (`"10ms"`, `"15W"`, `"80C"`, `"64MiB"`,
//! `"1.5 JOULE"`), so configuration files and command lines read like physics.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Money: the $JOULE token in micro-units. `Tokens(1_000_000)` is one JOULE.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Tokens(pub u64);

/// Energy in microjoules.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MicroJoules(pub u64);

/// Power in milliwatts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MilliWatts(pub u64);

/// Temperature in thousandths of a degree Celsius (the unit of Linux's thermal sysfs).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct MilliCelsius(pub i32);

/// A duration or an instant on a virtual clock, in nanoseconds.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Nanos(pub u64);

/// An amount of memory.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(pub u64);

/// The grid price: how many [`Tokens`] one joule of energy costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GridPrice(pub Tokens);

/// Micro-units in one JOULE.
pub const TOKENS_PER_JOULE: u64 = 1_000_000;
const NANOS_PER_SEC: u64 = 1_000_000_000;
const GIB: u64 = 1 << 30;

/// Divides rounding up. `den` must be non-zero.
fn div_ceil_u128(num: u128, den: u128) -> u128 {
    num.div_ceil(den)
}

/// Saturates a `u128` into a `u64`.
fn sat_u64(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

impl Tokens {
    /// No money.
    pub const ZERO: Tokens = Tokens(0);

    /// Whole JOULEs.
    pub const fn joules(n: u64) -> Tokens {
        Tokens(n * TOKENS_PER_JOULE)
    }
    /// `self + rhs`, or `None` on overflow.
    pub fn checked_add(self, rhs: Tokens) -> Option<Tokens> {
        self.0.checked_add(rhs.0).map(Tokens)
    }
    /// `self - rhs`, or `None` if `rhs` is larger.
    pub fn checked_sub(self, rhs: Tokens) -> Option<Tokens> {
        self.0.checked_sub(rhs.0).map(Tokens)
    }
    /// `self - rhs`, clamped at zero.
    pub fn saturating_sub(self, rhs: Tokens) -> Tokens {
        Tokens(self.0.saturating_sub(rhs.0))
    }
    /// `self + rhs`, clamped at the maximum.
    pub fn saturating_add(self, rhs: Tokens) -> Tokens {
        Tokens(self.0.saturating_add(rhs.0))
    }
    /// `self * n`, clamped at the maximum.
    pub fn saturating_mul(self, n: u64) -> Tokens {
        Tokens(self.0.saturating_mul(n))
    }
    /// `self * num / den`, rounded up (for charges). Saturates; `den` must be non-zero.
    pub fn mul_div_ceil(self, num: u64, den: u64) -> Tokens {
        Tokens(sat_u64(div_ceil_u128(
            u128::from(self.0) * u128::from(num),
            u128::from(den),
        )))
    }
    /// `self * num / den`, rounded down (for payouts). Saturates; `den` must be non-zero.
    pub fn mul_div_floor(self, num: u64, den: u64) -> Tokens {
        Tokens(sat_u64(
            u128::from(self.0) * u128::from(num) / u128::from(den),
        ))
    }
    /// The amount as a float number of JOULEs, for display only.
    pub fn as_joule_f64(self) -> f64 {
        self.0 as f64 / TOKENS_PER_JOULE as f64
    }
}

impl fmt::Display for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / TOKENS_PER_JOULE;
        let frac = self.0 % TOKENS_PER_JOULE;
        if frac == 0 {
            write!(f, "{whole} JOULE")
        } else {
            let digits = format!("{frac:06}");
            write!(f, "{whole}.{} JOULE", digits.trim_end_matches('0'))
        }
    }
}

impl GridPrice {
    /// The one function that turns energy into money: `energy * price`, rounded up to the next
    /// micro-token so that energy is never sold below cost.
    pub fn cost(self, energy: MicroJoules) -> Tokens {
        Tokens(sat_u64(div_ceil_u128(
            u128::from(energy.0) * u128::from((self.0).0),
            u128::from(TOKENS_PER_JOULE),
        )))
    }
}

impl MicroJoules {
    /// `self + rhs`, clamped at the maximum.
    pub fn saturating_add(self, rhs: MicroJoules) -> MicroJoules {
        MicroJoules(self.0.saturating_add(rhs.0))
    }
    /// `self - rhs`, clamped at zero.
    pub fn saturating_sub(self, rhs: MicroJoules) -> MicroJoules {
        MicroJoules(self.0.saturating_sub(rhs.0))
    }
    /// From a float number of joules, rounded up (used for taxes computed in physics units).
    /// Negative and NaN inputs give zero; huge inputs saturate.
    pub fn from_joules_ceil(joules: f64) -> MicroJoules {
        let micro = (joules * 1e6).ceil();
        if micro.is_nan() || micro <= 0.0 {
            MicroJoules(0)
        } else if micro >= u64::MAX as f64 {
            MicroJoules(u64::MAX)
        } else {
            MicroJoules(micro as u64)
        }
    }
    /// Joules as a float, for display and physics.
    pub fn as_joules_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
    /// Average power over `dt`, rounded down. Zero when `dt` is zero.
    pub fn per(self, dt: Nanos) -> MilliWatts {
        if dt.0 == 0 {
            return MilliWatts(0);
        }
        // uJ / ns = 1e-6 J / 1e-9 s = 1e3 W = 1e6 mW.
        MilliWatts(sat_u64(u128::from(self.0) * 1_000_000 / u128::from(dt.0)))
    }
}

impl MilliWatts {
    /// Energy drawn at this power for `dt`, rounded up.
    pub fn over(self, dt: Nanos) -> MicroJoules {
        // mW * ns = 1e-3 W * 1e-9 s = 1e-12 J = 1e-6 uJ.
        MicroJoules(sat_u64(div_ceil_u128(
            u128::from(self.0) * u128::from(dt.0),
            1_000_000,
        )))
    }
    /// Watts as a float, for display and physics.
    pub fn as_watts_f64(self) -> f64 {
        self.0 as f64 / 1e3
    }
    /// From float watts, rounded to the nearest milliwatt; negative gives zero.
    pub fn from_watts_f64(watts: f64) -> MilliWatts {
        let mw = (watts * 1e3).round();
        if mw.is_nan() || mw <= 0.0 {
            MilliWatts(0)
        } else if mw >= u64::MAX as f64 {
            MilliWatts(u64::MAX)
        } else {
            MilliWatts(mw as u64)
        }
    }
}

impl MilliCelsius {
    /// Degrees Celsius as a float.
    pub fn as_celsius_f64(self) -> f64 {
        f64::from(self.0) / 1e3
    }
    /// Kelvin as a float (for Landauer's k_B T ln 2).
    pub fn as_kelvin_f64(self) -> f64 {
        f64::from(self.0) / 1e3 + 273.15
    }
    /// From float degrees Celsius, rounded to the nearest millidegree and clamped to the type.
    pub fn from_celsius_f64(c: f64) -> MilliCelsius {
        let m = (c * 1e3).round();
        if m.is_nan() {
            MilliCelsius(0)
        } else {
            MilliCelsius(m.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32)
        }
    }
}

impl Nanos {
    /// From milliseconds.
    pub const fn from_millis(ms: u64) -> Nanos {
        Nanos(ms * 1_000_000)
    }
    /// From whole seconds.
    pub const fn from_secs(s: u64) -> Nanos {
        Nanos(s * NANOS_PER_SEC)
    }
    /// Seconds as a float.
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / NANOS_PER_SEC as f64
    }
    /// `self - earlier`, clamped at zero.
    pub fn saturating_sub(self, earlier: Nanos) -> Nanos {
        Nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Bytes {
    /// Mebibytes.
    pub const fn mib(n: u64) -> Bytes {
        Bytes(n << 20)
    }
    /// Gibibytes.
    pub const fn gib(n: u64) -> Bytes {
        Bytes(n << 30)
    }
    /// Number of bits, saturating.
    pub fn bits(self) -> u64 {
        self.0.saturating_mul(8)
    }
    /// `self * num / GiB`, rounded up: the per-GiB rate helper used by memory rent.
    pub fn per_gib_ceil(self, per_gib: u64) -> u64 {
        sat_u64(div_ceil_u128(
            u128::from(self.0) * u128::from(per_gib),
            u128::from(GIB),
        ))
    }
}

/// Why a quantity string did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read {input:?} as {what}: {why}; write it like {example:?}")]
pub struct ParseQuantityError {
    input: String,
    what: &'static str,
    why: &'static str,
    example: &'static str,
}

/// Parses a non-negative decimal number exactly into an integer count of `10^-scale` units.
/// `"1.5"` with scale 6 gives 1_500_000. More fractional digits than `scale` is an error, not a
/// silent rounding.
fn parse_fixed(num: &str, scale: u32) -> Result<u64, &'static str> {
    let num = num.trim();
    if num.is_empty() {
        return Err("no number");
    }
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int_part.is_empty() && frac_part.is_empty() {
        return Err("no number");
    }
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    if !all_digits(int_part) || !all_digits(frac_part) {
        return Err("not a non-negative decimal number");
    }
    let frac_part: String = frac_part.chars().filter(|c| *c != '_').collect();
    let frac_part = frac_part.trim_end_matches('0');
    if frac_part.len() > scale as usize {
        return Err("more decimal places than the unit can hold");
    }
    let mut value: u64 = 0;
    for b in int_part.bytes().filter(|b| *b != b'_') {
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or("too large")?;
    }
    let pow = 10u64.checked_pow(scale).ok_or("too large")?;
    value = value.checked_mul(pow).ok_or("too large")?;
    let mut frac_value: u64 = 0;
    for b in frac_part.bytes() {
        frac_value = frac_value * 10 + u64::from(b - b'0');
    }
    let frac_scale = 10u64.pow(scale - frac_part.len() as u32);
    value
        .checked_add(frac_value * frac_scale)
        .ok_or("too large")
}

/// Splits `"15 W"` / `"15W"` into the number and the unit.
fn split_unit(s: &str) -> (&str, &str) {
    let s = s.trim();
    let idx = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_' || c == '-'))
        .unwrap_or(s.len());
    (s[..idx].trim(), s[idx..].trim())
}

/// Parses a quantity with one of the given units, each with its scale relative to the base
/// unit as a power of ten (`(unit, decimal_places_of_base)`) or a multiplier.
fn parse_with_units(
    s: &str,
    what: &'static str,
    example: &'static str,
    units: &[(&str, u32, u64)],
) -> Result<u64, ParseQuantityError> {
    let err = |why| ParseQuantityError {
        input: s.to_owned(),
        what,
        why,
        example,
    };
    let (num, unit) = split_unit(s);
    if unit.is_empty() {
        return Err(err("the unit is missing"));
    }
    for (name, places, mult) in units {
        // Exact case: `MW` is not `mW`, and a typo must not be off by 10^9.
        if unit == *name {
            let fixed = parse_fixed(num, *places).map_err(err)?;
            return fixed.checked_mul(*mult).ok_or_else(|| err("too large"));
        }
    }
    Err(err("unknown unit"))
}

impl FromStr for Tokens {
    type Err = ParseQuantityError;
    /// `"1.5 JOULE"`, `"1.5J"`, `"250 mJOULE"`, `"7 uJOULE"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_with_units(
            s,
            "money",
            "1.5 JOULE",
            &[
                ("JOULE", 6, 1),
                ("J", 6, 1),
                ("mJOULE", 3, 1),
                ("uJOULE", 0, 1),
            ],
        )
        .map(Tokens)
    }
}

impl FromStr for MilliWatts {
    type Err = ParseQuantityError;
    /// `"15W"`, `"2.5 W"`, `"800mW"`, `"1kW"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_with_units(
            s,
            "power",
            "15W",
            &[("W", 3, 1), ("mW", 0, 1), ("kW", 0, 1_000_000)],
        )
        .map(MilliWatts)
    }
}

impl FromStr for MicroJoules {
    type Err = ParseQuantityError;
    /// `"0.15J"`, `"150mJ"`, `"150000uJ"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_with_units(
            s,
            "energy",
            "0.15J",
            &[("J", 6, 1), ("mJ", 3, 1), ("uJ", 0, 1)],
        )
        .map(MicroJoules)
    }
}

impl FromStr for Nanos {
    type Err = ParseQuantityError;
    /// `"10ms"`, `"1.5s"`, `"250us"`, `"100ns"`, `"2min"` or `"2m"`, `"1h"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_with_units(
            s,
            "a duration",
            "10ms",
            &[
                ("s", 9, 1),
                ("ms", 6, 1),
                ("us", 3, 1),
                ("ns", 0, 1),
                ("min", 9, 60),
                ("m", 9, 60),
                ("h", 9, 3600),
            ],
        )
        .map(Nanos)
    }
}

impl FromStr for Bytes {
    type Err = ParseQuantityError;
    /// `"64MiB"`, `"8GiB"`, `"4096B"`, `"4KiB"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_with_units(
            s,
            "memory",
            "64MiB",
            &[
                ("B", 0, 1),
                ("KiB", 0, 1 << 10),
                ("MiB", 0, 1 << 20),
                ("GiB", 0, 1 << 30),
            ],
        )
        .map(Bytes)
    }
}

impl FromStr for MilliCelsius {
    type Err = ParseQuantityError;
    /// `"80C"`, `"-5.5C"`, `"80000mC"`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (neg, rest) = match s.trim().strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, s),
        };
        let v = parse_with_units(rest, "a temperature", "80C", &[("C", 3, 1), ("mC", 0, 1)])?;
        let v = i64::try_from(v).unwrap_or(i64::MAX);
        let v = if neg { -v } else { v };
        i32::try_from(v)
            .map(MilliCelsius)
            .map_err(|_| ParseQuantityError {
                input: s.to_owned(),
                what: "a temperature",
                why: "out of range",
                example: "80C",
            })
    }
}

impl fmt::Display for MilliWatts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3} W", self.as_watts_f64())
    }
}

impl fmt::Display for MilliCelsius {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} C", self.as_celsius_f64())
    }
}

impl fmt::Display for Nanos {
    /// The largest unit that shows the value exactly: `10ms`, `1500ms`, `40s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n != 0 && n.is_multiple_of(NANOS_PER_SEC) {
            write!(f, "{}s", n / NANOS_PER_SEC)
        } else if n.is_multiple_of(1_000_000) {
            write!(f, "{}ms", n / 1_000_000)
        } else if n.is_multiple_of(1_000) {
            write!(f, "{}us", n / 1_000)
        } else {
            write!(f, "{n}ns")
        }
    }
}

impl fmt::Display for Bytes {
    /// The largest binary unit that shows the value exactly: `64MiB`, `8GiB`, `100B`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
            if n != 0 && n.is_multiple_of(1 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}B")
    }
}

/// Serde helpers that read quantities from strings with units (`"15W"`) in configuration files.
pub mod serde_str {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Deserializes a value through its `FromStr`.
    pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: Display,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }

    /// Serializes a value through its `Display`.
    pub fn serialize<S, T>(v: &T, s: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        T: Display,
    {
        s.collect_str(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check<T: FromStr<Err = ParseQuantityError> + PartialEq + fmt::Debug>(s: &str, want: T) {
        assert_eq!(s.parse::<T>().unwrap(), want);
    }

    #[test]
    fn parses_quantities_with_units() {
        check("1.5 JOULE", Tokens(1_500_000));
        check("1.5J", Tokens(1_500_000));
        check("250 mJOULE", Tokens(250_000));
        check("0.000001 JOULE", Tokens(1));
        check("15W", MilliWatts(15_000));
        check("800mW", MilliWatts(800));
        check("10ms", Nanos(10_000_000));
        check("1.5s", Nanos(1_500_000_000));
        check("2min", Nanos(120_000_000_000));
        check("10m", Nanos(600_000_000_000));
        check("1h", Nanos(3_600_000_000_000));
        check("64MiB", Bytes(64 << 20));
        check("80C", MilliCelsius(80_000));
        check("-5.5C", MilliCelsius(-5_500));
        check("0.15J", MicroJoules(150_000));
    }

    #[test]
    fn durations_and_sizes_display_as_they_parse() {
        for s in [
            "10ms", "40s", "250us", "7ns", "64MiB", "8GiB", "100B", "4KiB",
        ] {
            let shown = s
                .parse::<Nanos>()
                .map(|n| n.to_string())
                .or_else(|_| s.parse::<Bytes>().map(|b| b.to_string()))
                .unwrap();
            assert_eq!(shown, s);
        }
    }

    #[test]
    fn rejects_bad_quantities_with_a_hint() {
        for bad in [
            "",
            "15",
            "15 parsecs",
            "1.0000001 JOULE",
            "abc W",
            "-3W",
            "1.5.2W",
        ] {
            let e = bad
                .parse::<MilliWatts>()
                .map(|_| ())
                .or_else(|_| bad.parse::<Tokens>().map(|_| ()));
            assert!(e.is_err(), "{bad:?} parsed");
        }
        let msg = "15".parse::<MilliWatts>().unwrap_err().to_string();
        assert!(
            msg.contains("unit is missing") && msg.contains("15W"),
            "{msg}"
        );
    }

    #[test]
    fn energy_and_power_convert_with_stated_rounding() {
        // 15 W for 10 ms is 0.15 J.
        assert_eq!(
            MilliWatts(15_000).over(Nanos::from_millis(10)),
            MicroJoules(150_000)
        );
        assert_eq!(
            MicroJoules(150_000).per(Nanos::from_millis(10)),
            MilliWatts(15_000)
        );
        // 1 mW for 1 ns is 1e-6 uJ: rounds up to 1 uJ (a charge is never zero for work done).
        assert_eq!(MilliWatts(1).over(Nanos(1)), MicroJoules(1));
        // Energy to money rounds up.
        let grid = GridPrice(Tokens(3));
        assert_eq!(grid.cost(MicroJoules(1)), Tokens(1));
        assert_eq!(grid.cost(MicroJoules(1_000_000)), Tokens(3));
        // Payouts round down, charges round up.
        assert_eq!(Tokens(10).mul_div_floor(1, 3), Tokens(3));
        assert_eq!(Tokens(10).mul_div_ceil(1, 3), Tokens(4));
    }

    #[test]
    fn tokens_display_in_joule() {
        assert_eq!(Tokens(1_500_000).to_string(), "1.5 JOULE");
        assert_eq!(Tokens(2_000_000).to_string(), "2 JOULE");
        assert_eq!(Tokens(1).to_string(), "0.000001 JOULE");
    }
}
