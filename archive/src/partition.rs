//! Where an event lands in the archive: its hour partition and its object's key.
//!
//! Keys are `{prefix}{dataset}/dt=YYYY-MM-DD/hour=HH/<first-id>-<last-id>.parquet`
//! (`events/…`, `plans/…`), where
//! the ids are the first and last Redis stream ids of the flush that wrote the object.
//! A flush that is retried (S3 was down, or the archiver restarted before it acknowledged
//! the entries) has the same entries, hence the same ids and keys: it overwrites its own
//! objects rather than adding duplicate rows. Partitions follow the event time in UTC,
//! like the Glue table's partition projection.

use std::fmt;
use std::str::FromStr;

use crate::ArchiveError;

/// A Redis stream entry id, `<ms>-<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl FromStr for StreamId {
    type Err = ArchiveError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ArchiveError::Argument(format!("not a stream id: {s:?}"));
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self { ms: ms.parse().map_err(|_| bad())?, seq: seq.parse().map_err(|_| bad())? })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// A calendar day (UTC), e.g. a report's `--from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day {
    pub year: i32,
    pub month: u8,
    pub day: u8,
}

impl Day {
    /// The UTC day of a unix time in milliseconds.
    pub fn of_unix_ms(ms: u64) -> Self {
        let days = (ms / 86_400_000) as i64;
        let (year, month, day) = civil_from_days(days);
        Self { year, month, day }
    }
}

impl FromStr for Day {
    type Err = ArchiveError;

    /// Strictly `YYYY-MM-DD`, a real calendar date.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ArchiveError::Argument(format!("not a date (YYYY-MM-DD): {s:?}"));
        let b = s.as_bytes();
        if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
            return Err(bad());
        }
        let digits = |r: std::ops::Range<usize>| -> Result<u32, ArchiveError> {
            let part = &s[r];
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            part.parse().map_err(|_| bad())
        };
        let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year as i32, month as u8) as u32 {
            return Err(bad());
        }
        Ok(Self { year: year as i32, month: month as u8, day: day as u8 })
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// An hour partition, `dt=YYYY-MM-DD/hour=HH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition {
    pub day: Day,
    pub hour: u8,
}

impl Partition {
    pub fn of_unix_ms(ms: u64) -> Self {
        Self { day: Day::of_unix_ms(ms), hour: ((ms / 3_600_000) % 24) as u8 }
    }

    /// `{prefix}{dataset}/dt=…/hour=…/<first>-<last>.parquet`.
    pub fn object_key(&self, prefix: &str, dataset: &str, first: StreamId, last: StreamId) -> String {
        format!("{prefix}{dataset}/{self}/{first}-{last}.parquet")
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dt={}/hour={:02}", self.day, self.hour)
    }
}

fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i32, m: u8) -> u8 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_follow_utc_event_time() {
        // 2024-02-29T23:59:59.999Z and the next millisecond.
        let p = Partition::of_unix_ms(1_709_251_199_999);
        assert_eq!(p.to_string(), "dt=2024-02-29/hour=23");
        assert_eq!(Partition::of_unix_ms(1_709_251_200_000).to_string(), "dt=2024-03-01/hour=00");
        assert_eq!(Partition::of_unix_ms(0).to_string(), "dt=1970-01-01/hour=00");
        let (a, b) = ("1709251199999-0".parse().unwrap(), "1709251200001-12".parse().unwrap());
        assert_eq!(
            p.object_key("prod/", "events", a, b),
            "prod/events/dt=2024-02-29/hour=23/1709251199999-0-1709251200001-12.parquet"
        );
    }

    #[test]
    fn civil_dates_match_a_day_by_day_walk() {
        let (mut y, mut m, mut d) = (1970, 1u8, 1u8);
        for days in 0..200_000i64 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            d += 1;
            if d > days_in_month(y, m) {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }

    #[test]
    fn days_parse_strictly() {
        assert_eq!("2024-02-29".parse::<Day>().unwrap().to_string(), "2024-02-29");
        for bad in ["2023-02-29", "2024-13-01", "2024-1-01", "24-01-01", "2024-01-01'", "2024-01-00", "x"] {
            assert!(bad.parse::<Day>().is_err(), "{bad}");
        }
        assert!("1-2".parse::<StreamId>().is_ok());
        assert!("12".parse::<StreamId>().is_err());
        assert!("1-x".parse::<StreamId>().is_err());
    }
}
