//! Limit values: parsed once from the configuration's text, carried as the exact numbers
//! systemd takes on the bus, and shown back in the form systemd's own unit files use.

use std::fmt;
use std::str::FromStr;

/// systemd's "no limit" on the bus for every property we manage.
pub const BUS_INFINITY: u64 = u64::MAX;
/// CPUQuotaPerSecUSec is microseconds of CPU time per second: 1% is 10,000 µs.
const USEC_PER_PERCENT: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("{0:?} is not a number with a unit (write e.g. \"96G\", \"512M\" or plain bytes)")]
    NotANumber(String),
    #[error("{0:?} has unknown unit {1:?}: use K, M, G, T, P or E (base 1024, upper case, as systemd reads them) or plain bytes")]
    UnknownSuffix(String, String),
    #[error("{0:?} is a percentage of RAM; write an absolute size such as \"96G\" (ds01-slices always sends absolute numbers)")]
    PercentMemory(String),
    #[error("{0:?} is not a number of tasks: write a whole number such as 12288, or \"infinity\"")]
    NotATaskCount(String),
    #[error("{0:?} is a percentage; write an absolute number of tasks or \"infinity\"")]
    PercentTasks(String),
    #[error("{0:?} must be a percentage of one CPU such as \"9600%\" (100% = one CPU)")]
    CpuWithoutPercent(String),
    #[error("{0:?} is not a percentage of one CPU: write a whole or decimal number of percent, such as \"9600%\" or \"150.5%\" (100% = one CPU; no exponents or signs)")]
    NotAPercent(String),
    #[error("{0:?} is zero: a zero limit would stop every process; remove the key or set \"infinity\" for no limit")]
    Zero(String),
    #[error("{0:?} is negative")]
    Negative(String),
    #[error("{0:?} is too large to represent")]
    Overflow(String),
}

/// A CPU quota in whole percent of one CPU, or no quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuQuota {
    Percent(u64),
    Infinity,
}

/// A parsed CPU quota plus whether a fractional percent had to be rounded up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParsedCpuQuota {
    pub quota: CpuQuota,
    pub rounded_up_from: Option<f64>,
}

impl CpuQuota {
    /// Parses `"9600%"`, `"150.5%"` (rounded up to whole percent: older systemd truncates
    /// fractions at the next reload, which would silently lower the limit) or `"infinity"`.
    pub fn parse(text: &str) -> Result<ParsedCpuQuota, ValueError> {
        let t = text.trim();
        if t == "infinity" {
            return Ok(ParsedCpuQuota {
                quota: CpuQuota::Infinity,
                rounded_up_from: None,
            });
        }
        let number = t
            .strip_suffix('%')
            .ok_or_else(|| ValueError::CpuWithoutPercent(text.to_owned()))?
            .trim();
        // The generic message would suggest a memory size ("96G").
        let (whole, fraction) = parse_decimal(number, text).map_err(|e| match e {
            ValueError::NotANumber(t) => ValueError::NotAPercent(t),
            other => other,
        })?;
        let rounded = if fraction.is_some() {
            whole.checked_add(1)
        } else {
            Some(whole)
        }
        .ok_or_else(|| ValueError::Overflow(text.to_owned()))?;
        if rounded == 0 {
            return Err(ValueError::Zero(text.to_owned()));
        }
        if rounded
            .checked_mul(USEC_PER_PERCENT)
            .is_none_or(|us| us == BUS_INFINITY)
        {
            return Err(ValueError::Overflow(text.to_owned()));
        }
        Ok(ParsedCpuQuota {
            quota: CpuQuota::Percent(rounded),
            rounded_up_from: fraction.map(|_| number.parse::<f64>().unwrap_or(rounded as f64)),
        })
    }

    /// The `CPUQuotaPerSecUSec` value on the bus.
    pub fn to_bus(self) -> u64 {
        match self {
            // `parse` guarantees the product fits; saturating keeps this total anyway.
            CpuQuota::Percent(p) => p.saturating_mul(USEC_PER_PERCENT),
            CpuQuota::Infinity => BUS_INFINITY,
        }
    }

    /// Reads a live bus value back. systemd may hold quotas that are not whole percent
    /// (set by someone else); those are kept exact in microseconds for display.
    pub fn from_bus(usec: u64) -> BusCpuQuota {
        BusCpuQuota(usec)
    }
}

impl fmt::Display for CpuQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CpuQuota::Percent(p) => write!(f, "{p}%"),
            CpuQuota::Infinity => f.write_str("infinity"),
        }
    }
}

/// A `CPUQuotaPerSecUSec` value as read from systemd, shown as systemd shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusCpuQuota(pub u64);

impl fmt::Display for BusCpuQuota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        if us == BUS_INFINITY {
            f.write_str("infinity")
        } else if us.is_multiple_of(USEC_PER_PERCENT) {
            write!(f, "{}%", us / USEC_PER_PERCENT)
        } else {
            write!(
                f,
                "{}.{:02}%",
                us / USEC_PER_PERCENT,
                (us % USEC_PER_PERCENT) / 100
            )
        }
    }
}

/// A memory limit in bytes, or no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemoryLimit {
    Bytes(u64),
    Infinity,
}

pub const SIZE_SUFFIXES: [(char, u32); 6] = [
    ('K', 10),
    ('M', 20),
    ('G', 30),
    ('T', 40),
    ('P', 50),
    ('E', 60),
];

impl MemoryLimit {
    /// Parses sizes as systemd's `parse_size` does for memory properties: plain bytes, or
    /// a number (decimals allowed) with one of K, M, G, T, P, E in base 1024, or
    /// `"infinity"`. Fractions of a byte are dropped, as systemd does.
    pub fn parse(text: &str) -> Result<MemoryLimit, ValueError> {
        let t = text.trim();
        if t == "infinity" {
            return Ok(MemoryLimit::Infinity);
        }
        if t.ends_with('%') {
            return Err(ValueError::PercentMemory(text.to_owned()));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
            .unwrap_or(t.len());
        let (number, suffix) = t.split_at(split);
        if number.is_empty() {
            return Err(ValueError::NotANumber(text.to_owned()));
        }
        let suffix = suffix.trim();
        let shift = match suffix {
            "" | "B" => 0,
            s => {
                let mut chars = s.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => SIZE_SUFFIXES
                        .iter()
                        .find(|(k, _)| *k == c)
                        .map(|(_, shift)| *shift)
                        .ok_or_else(|| ValueError::UnknownSuffix(text.to_owned(), s.to_owned()))?,
                    _ => return Err(ValueError::UnknownSuffix(text.to_owned(), s.to_owned())),
                }
            }
        };
        let (whole, fraction) = parse_decimal(number, text)?;
        let overflow = || ValueError::Overflow(text.to_owned());
        let mut bytes = whole.checked_mul(1u64 << shift).ok_or_else(overflow)?;
        if let Some(digits) = fraction {
            bytes = bytes
                .checked_add(fraction_of(&digits, shift))
                .ok_or_else(overflow)?;
        }
        if bytes == 0 {
            return Err(ValueError::Zero(text.to_owned()));
        }
        if bytes == BUS_INFINITY {
            return Err(overflow());
        }
        Ok(MemoryLimit::Bytes(bytes))
    }

    /// Reads a YAML integer (plain bytes).
    pub fn from_integer(n: i128, text: &str) -> Result<MemoryLimit, ValueError> {
        match n {
            n if n < 0 => Err(ValueError::Negative(text.to_owned())),
            0 => Err(ValueError::Zero(text.to_owned())),
            n if n >= BUS_INFINITY as i128 => Err(ValueError::Overflow(text.to_owned())),
            n => Ok(MemoryLimit::Bytes(n as u64)),
        }
    }

    pub fn to_bus(self) -> u64 {
        match self {
            MemoryLimit::Bytes(b) => b,
            MemoryLimit::Infinity => BUS_INFINITY,
        }
    }

    pub fn from_bus(value: u64) -> MemoryLimit {
        if value == BUS_INFINITY {
            MemoryLimit::Infinity
        } else {
            MemoryLimit::Bytes(value)
        }
    }
}

impl fmt::Display for MemoryLimit {
    /// The largest base-1024 unit that represents the value exactly, so that what is shown
    /// parses back to the same number of bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MemoryLimit::Infinity => f.write_str("infinity"),
            MemoryLimit::Bytes(b) => {
                for (suffix, shift) in SIZE_SUFFIXES.iter().rev() {
                    if b >> shift > 0 && b % (1u64 << shift) == 0 {
                        return write!(f, "{}{suffix}", b >> shift);
                    }
                }
                write!(f, "{b}")
            }
        }
    }
}

/// A TasksMax value: a number of tasks, or no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TasksLimit {
    Count(u64),
    Infinity,
}

impl TasksLimit {
    pub fn parse(text: &str) -> Result<TasksLimit, ValueError> {
        let t = text.trim();
        if t == "infinity" {
            return Ok(TasksLimit::Infinity);
        }
        if t.ends_with('%') {
            return Err(ValueError::PercentTasks(text.to_owned()));
        }
        if t.starts_with('-') && t[1..].chars().all(|c| c.is_ascii_digit()) && t.len() > 1 {
            return Err(ValueError::Negative(text.to_owned()));
        }
        if t.is_empty() || !t.chars().all(|c| c.is_ascii_digit()) {
            return Err(ValueError::NotATaskCount(text.to_owned()));
        }
        let n = t
            .parse::<u64>()
            .map_err(|_| ValueError::Overflow(text.to_owned()))?;
        Self::from_integer(n as i128, text)
    }

    pub fn from_integer(n: i128, text: &str) -> Result<TasksLimit, ValueError> {
        match n {
            n if n < 0 => Err(ValueError::Negative(text.to_owned())),
            0 => Err(ValueError::Zero(text.to_owned())),
            n if n >= BUS_INFINITY as i128 => Err(ValueError::Overflow(text.to_owned())),
            n => Ok(TasksLimit::Count(n as u64)),
        }
    }

    pub fn to_bus(self) -> u64 {
        match self {
            TasksLimit::Count(n) => n,
            TasksLimit::Infinity => BUS_INFINITY,
        }
    }

    pub fn from_bus(value: u64) -> TasksLimit {
        if value == BUS_INFINITY {
            TasksLimit::Infinity
        } else {
            TasksLimit::Count(value)
        }
    }
}

impl fmt::Display for TasksLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TasksLimit::Count(n) => write!(f, "{n}"),
            TasksLimit::Infinity => f.write_str("infinity"),
        }
    }
}

impl FromStr for MemoryLimit {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        MemoryLimit::parse(s)
    }
}

impl FromStr for TasksLimit {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TasksLimit::parse(s)
    }
}

/// Splits `"12.5"` into 12 and the fraction digits "5"; rejects signs, empty parts and
/// anything else that is not a plain decimal.
fn parse_decimal(number: &str, original: &str) -> Result<(u64, Option<String>), ValueError> {
    if number.starts_with('-') {
        return Err(ValueError::Negative(original.to_owned()));
    }
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (number, None),
    };
    let digits_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    if !digits_ok(whole) || fraction.is_some_and(|f| !digits_ok(f)) {
        return Err(ValueError::NotANumber(original.to_owned()));
    }
    let whole = whole
        .parse::<u64>()
        .map_err(|_| ValueError::Overflow(original.to_owned()))?;
    let fraction = fraction
        .map(|f| f.trim_end_matches('0').to_owned())
        .filter(|f| !f.is_empty());
    Ok((whole, fraction))
}

/// `0.digits × 2^shift`, truncated to whole bytes, computed exactly with at most 18 digits
/// (more cannot change the result for any shift up to 60).
fn fraction_of(digits: &str, shift: u32) -> u64 {
    let digits = &digits[..digits.len().min(18)];
    let numerator: u128 = digits.parse().unwrap_or(0);
    let denominator = 10u128.pow(digits.len() as u32);
    ((numerator << shift) / denominator) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    #[test]
    fn cpu_quota_table() {
        let cases = [
            ("9600%", 96_000_000),
            ("24000%", 240_000_000),
            ("32000%", 320_000_000),
            ("50%", 500_000),
            ("1%", 10_000),
            (" 100% ", 1_000_000),
        ];
        for (text, bus) in cases {
            let parsed = CpuQuota::parse(text).unwrap();
            assert_eq!(parsed.quota.to_bus(), bus, "{text}");
            assert_eq!(parsed.rounded_up_from, None);
        }
        let frac = CpuQuota::parse("150.2%").unwrap();
        assert_eq!(frac.quota, CpuQuota::Percent(151));
        assert_eq!(frac.rounded_up_from, Some(150.2));
        assert_eq!(CpuQuota::parse("150.0%").unwrap().rounded_up_from, None);
        assert_eq!(
            CpuQuota::parse("infinity").unwrap().quota.to_bus(),
            u64::MAX
        );
        for bad in [
            "9600",
            "0%",
            "0.0%",
            "-5%",
            "%",
            "abc%",
            "1e3%",
            "99999999999999999999%",
        ] {
            assert!(CpuQuota::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_cpu_quota_that_is_no_number_is_told_in_cpu_terms() {
        for bad in ["1e3%", "abc%", "%", "1.2.3%"] {
            let message = CpuQuota::parse(bad).unwrap_err().to_string();
            assert!(
                message.contains("percentage of one CPU"),
                "{bad}: {message}"
            );
            assert!(!message.contains("96G"), "{bad}: {message}");
        }
    }

    #[test]
    fn memory_table() {
        let cases = [
            ("96G", 96 * (1u64 << 30)),
            ("86G", 86 * (1u64 << 30)),
            ("64M", 64 << 20),
            ("1K", 1024),
            ("1T", 1 << 40),
            ("2P", 2 << 50),
            ("1E", 1 << 60),
            ("1.5G", 3 << 29),
            ("4096", 4096),
            ("4096B", 4096),
            ("0.5K", 512),
        ];
        for (text, bytes) in cases {
            assert_eq!(
                MemoryLimit::parse(text).unwrap(),
                MemoryLimit::Bytes(bytes),
                "{text}"
            );
        }
        assert_eq!(
            MemoryLimit::parse("infinity").unwrap(),
            MemoryLimit::Infinity
        );
        assert!(matches!(
            MemoryLimit::parse("50%"),
            Err(ValueError::PercentMemory(_))
        ));
        assert!(matches!(
            MemoryLimit::parse("96g"),
            Err(ValueError::UnknownSuffix(..))
        ));
        assert!(matches!(
            MemoryLimit::parse("96GB"),
            Err(ValueError::UnknownSuffix(..))
        ));
        assert!(matches!(MemoryLimit::parse("0G"), Err(ValueError::Zero(_))));
        assert!(matches!(
            MemoryLimit::parse("-1G"),
            Err(ValueError::Negative(_))
        ));
        assert!(matches!(
            MemoryLimit::parse("16E"),
            Err(ValueError::Overflow(_))
        ));
        assert!(matches!(
            MemoryLimit::parse("G"),
            Err(ValueError::NotANumber(_))
        ));
        assert_eq!(MemoryLimit::Bytes(96 << 30).to_string(), "96G");
        assert_eq!(MemoryLimit::Bytes(1536 << 20).to_string(), "1536M");
        assert_eq!(MemoryLimit::Bytes(1000).to_string(), "1000");
    }

    #[test]
    fn tasks_table() {
        assert_eq!(
            TasksLimit::parse("12288").unwrap(),
            TasksLimit::Count(12288)
        );
        assert_eq!(TasksLimit::parse("infinity").unwrap().to_bus(), u64::MAX);
        assert!(matches!(
            TasksLimit::parse("10%"),
            Err(ValueError::PercentTasks(_))
        ));
        assert!(matches!(TasksLimit::parse("0"), Err(ValueError::Zero(_))));
        assert!(matches!(
            TasksLimit::parse("-3"),
            Err(ValueError::Negative(_))
        ));
        assert!(matches!(
            TasksLimit::parse("4k"),
            Err(ValueError::NotATaskCount(_))
        ));
        assert!(matches!(
            TasksLimit::from_integer(-1, "-1"),
            Err(ValueError::Negative(_))
        ));
    }

    #[test]
    fn bus_cpu_quota_shows_fractions_exactly() {
        assert_eq!(BusCpuQuota(96_000_000).to_string(), "9600%");
        assert_eq!(BusCpuQuota(1_505_000).to_string(), "150.50%");
        assert_eq!(BusCpuQuota(u64::MAX).to_string(), "infinity");
    }

    proptest! {
        #[test]
        fn memory_round_trips_through_display(bytes in 1u64..u64::MAX) {
            let m = MemoryLimit::Bytes(bytes);
            prop_assert_eq!(MemoryLimit::parse(&m.to_string()).unwrap(), m);
            prop_assert_eq!(MemoryLimit::from_bus(m.to_bus()), m);
        }

        #[test]
        fn memory_suffix_round_trip(n in 1u64..1024, s in 0usize..6) {
            let (c, shift) = SIZE_SUFFIXES[s];
            prop_assume!(((n as u128) << shift) < u64::MAX as u128);
            let text = format!("{n}{c}");
            let m = MemoryLimit::parse(&text).unwrap();
            prop_assert_eq!(m.to_bus(), n << shift);
            prop_assert_eq!(MemoryLimit::parse(&m.to_string()).unwrap(), m);
        }

        #[test]
        fn cpu_round_trips(p in 1u64..1_000_000_000) {
            let q = CpuQuota::Percent(p);
            prop_assert_eq!(CpuQuota::parse(&q.to_string()).unwrap().quota, q);
            prop_assert_eq!(BusCpuQuota(q.to_bus()).to_string(), q.to_string());
        }

        #[test]
        fn tasks_round_trip(n in 1u64..u64::MAX) {
            let t = TasksLimit::Count(n);
            prop_assert_eq!(TasksLimit::parse(&t.to_string()).unwrap(), t);
            prop_assert_eq!(TasksLimit::from_bus(t.to_bus()), t);
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,40}") {
            let _ = CpuQuota::parse(&s);
            let _ = MemoryLimit::parse(&s);
            let _ = TasksLimit::parse(&s);
        }

        #[test]
        fn fractional_cpu_rounds_up(whole in 0u64..100_000, frac in 1u32..99) {
            let text = format!("{whole}.{frac:02}%");
            let parsed = CpuQuota::parse(&text).unwrap();
            prop_assert_eq!(parsed.quota, CpuQuota::Percent(whole + 1));
        }
    }
}
