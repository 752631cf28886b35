//! Event time, IST calendar rules and financial years (contract section 6).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeZone};

/// Event time: milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// India Standard Time is UTC+05:30, all year.
pub const IST_OFFSET_SECS: i32 = 5 * 3600 + 30 * 60;
const IST_OFFSET_MS: i64 = IST_OFFSET_SECS as i64 * 1000;
const DAY_MS: i64 = 86_400_000;

pub fn ist() -> FixedOffset {
    FixedOffset::east_opt(IST_OFFSET_SECS).expect("05:30 is a valid offset")
}

/// Parses an RFC 3339 timestamp with an offset into epoch milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

/// Formats epoch milliseconds as RFC 3339 in IST, e.g. `2026-01-15T00:00:00+05:30`.
pub fn format_ist(ms: Millis) -> String {
    match ist().timestamp_millis_opt(ms).single() {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
        None => ms.to_string(),
    }
}

/// An Indian financial year, 1 April 00:00 IST to the next 1 April 00:00 IST,
/// named by its first calendar year (`Fy(2025)` is `2025-26`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Fy(pub i32);

impl Fy {
    /// The financial year that contains the instant `ms`.
    pub fn of(ms: Millis) -> Fy {
        Month::of(ms).fy()
    }

    /// First instant of the year (inclusive), epoch ms.
    pub fn start(self) -> Millis {
        april_first_ist(self.0)
    }

    /// First instant after the year (exclusive), epoch ms.
    pub fn end(self) -> Millis {
        april_first_ist(self.0 + 1)
    }

    /// The share of the year elapsed at `now`, clamped to 0..=1.
    pub fn elapsed_fraction(self, now: Millis) -> f64 {
        let (start, end) = (self.start(), self.end());
        ((now - start) as f64 / (end - start) as f64).clamp(0.0, 1.0)
    }
}

/// An IST calendar day, as days since 1 January 1970 (IST). Windows
/// (contract section 13) count whole IST days back from `today`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Day(pub i32);

impl Day {
    /// The IST day that contains the instant `ms`.
    pub fn of(ms: Millis) -> Day {
        Day((ms + IST_OFFSET_MS).div_euclid(DAY_MS) as i32)
    }
}

/// An IST calendar month, as `year * 12 + month - 1` (`2025-04` is
/// `2025 * 12 + 3`): the monthly series of contract section 13.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Month(pub i32);

impl Month {
    /// The IST month that contains the instant `ms`.
    pub fn of(ms: Millis) -> Month {
        let (year, month) = civil_year_month(Day::of(ms).0);
        Month(year * 12 + month as i32 - 1)
    }

    /// The financial year the month belongs to.
    pub fn fy(self) -> Fy {
        Fy((self.0 - 3).div_euclid(12))
    }
}

impl Fy {
    /// The twelve months of the year, April first.
    pub fn months(self) -> impl Iterator<Item = Month> {
        (0..12).map(move |i| Month(self.0 * 12 + 3 + i))
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:02}", self.0.div_euclid(12), self.0.rem_euclid(12) + 1)
    }
}

/// The (year, month 1..=12) of a day counted from 1970-01-01: integer
/// arithmetic only (H. Hinnant's `civil_from_days`), as this runs for
/// every course of a user on every event.
fn civil_year_month(days: i32) -> (i32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i32::from(month <= 2);
    (year, month)
}

const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

fn april_first_ist(year: i32) -> Millis {
    let date = NaiveDate::from_ymd_opt(year, 4, 1).unwrap_or(NaiveDate::MIN);
    let days = i64::from(date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE);
    days * DAY_MS - IST_OFFSET_MS
}

impl fmt::Display for Fy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:02}", self.0, (self.0 + 1).rem_euclid(100))
    }
}

/// Error for a financial-year name that is not like `2025-26`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a financial year like `2025-26`")]
pub struct BadFy(pub String);

impl FromStr for Fy {
    type Err = BadFy;

    fn from_str(s: &str) -> Result<Fy, BadFy> {
        let bad = || BadFy(s.to_owned());
        let (first, second) = s.split_once('-').ok_or_else(bad)?;
        if first.len() != 4 || second.len() != 2 || !first.bytes().chain(second.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let year: i32 = first.parse().map_err(|_| bad())?;
        let next: i32 = second.parse().map_err(|_| bad())?;
        if (year + 1).rem_euclid(100) != next {
            return Err(bad());
        }
        Ok(Fy(year))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fy_boundary_is_midnight_ist() {
        // 1 April 2025 00:00 IST is 31 March 2025 18:30 UTC.
        let boundary = parse_rfc3339("2025-03-31T18:30:00Z").unwrap();
        assert_eq!(Fy(2025).start(), boundary);
        assert_eq!(Fy::of(boundary), Fy(2025));
        assert_eq!(Fy::of(boundary - 1), Fy(2024));
        assert_eq!(Fy(2024).end(), boundary);
    }

    #[test]
    fn fy_names_round_trip() {
        for name in ["2025-26", "1999-00", "2099-00"] {
            let fy: Fy = name.parse().unwrap();
            assert_eq!(fy.to_string(), name);
        }
        for bad in ["2025-27", "2025", "25-26", "2025-2a", "２０２５-26"] {
            assert!(bad.parse::<Fy>().is_err(), "{bad}");
        }
    }

    #[test]
    fn elapsed_fraction_is_linear_and_clamped() {
        let fy = Fy(2025);
        assert_eq!(fy.elapsed_fraction(fy.start() - 1), 0.0);
        assert_eq!(fy.elapsed_fraction(fy.end() + 1), 1.0);
        let mid = fy.start() + (fy.end() - fy.start()) / 2;
        assert!((fy.elapsed_fraction(mid) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn days_and_months_are_ist() {
        // 1 April 2025 00:00 IST is 31 March 2025 18:30 UTC.
        let boundary = parse_rfc3339("2025-03-31T18:30:00Z").unwrap();
        assert_eq!(Day::of(boundary + DAY_MS - 1), Day::of(boundary));
        assert_eq!(Day::of(boundary - 1), Day(Day::of(boundary).0 - 1));
        assert_eq!(Month::of(boundary).to_string(), "2025-04");
        assert_eq!(Month::of(boundary - 1).to_string(), "2025-03");
        assert_eq!(Month::of(boundary - 1).fy(), Fy(2024));
        assert_eq!(Month::of(boundary).fy(), Fy(2025));
        let months: Vec<String> = Fy(2025).months().map(|m| m.to_string()).collect();
        assert_eq!((months[0].as_str(), months[11].as_str(), months.len()), ("2025-04", "2026-03", 12));
        // Every day of four centuries agrees with chrono.
        for day in -40_000..110_000 {
            let date = NaiveDate::from_num_days_from_ce_opt(day + UNIX_EPOCH_DAYS_FROM_CE).unwrap();
            assert_eq!(civil_year_month(day), (date.year(), date.month()), "day {day}");
        }
    }

    #[test]
    fn formats_in_ist() {
        let t = parse_rfc3339("2026-01-14T18:30:00Z").unwrap();
        assert_eq!(format_ist(t), "2026-01-15T00:00:00+05:30");
    }
}
