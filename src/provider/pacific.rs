//! When a Google per-day quota resets: midnight in US Pacific time, with its daylight-saving
//! rule (second Sunday of March to first Sunday of November, 02:00 local), computed from the
//! calendar alone so the message can say the hour and how long until it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year of a day since 1970-01-01.
fn year_of(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(m <= 2)
}

/// The `n`th Sunday (1-based) of month `m` in year `y`, as days since the epoch.
fn nth_sunday(y: i64, m: i64, n: i64) -> i64 {
    let first = days_from_civil(y, m, 1);
    // 1970-01-01 was a Thursday: weekday 0 = Sunday.
    let weekday = (first + 4).rem_euclid(7);
    first + (7 - weekday) % 7 + 7 * (n - 1)
}

/// The offset from UTC of Pacific time at the UTC instant `t` (seconds): -7 h or -8 h.
fn offset(t: i64) -> i64 {
    let y = year_of(t.div_euclid(DAY));
    // 02:00 PST = 10:00 UTC; 02:00 PDT = 09:00 UTC.
    let start = nth_sunday(y, 3, 2) * DAY + 10 * 3600;
    let end = nth_sunday(y, 11, 1) * DAY + 9 * 3600;
    if (start..end).contains(&t) {
        -7 * 3600
    } else {
        -8 * 3600
    }
}

/// The next midnight in Pacific time after the UTC instant `t` (seconds since the epoch).
fn next_midnight(t: i64) -> i64 {
    let local = t + offset(t);
    let midnight_local = (local.div_euclid(DAY) + 1) * DAY;
    // The offset in force at that midnight (a change happens at 02:00, never across it).
    let guess = midnight_local - offset(t);
    midnight_local - offset(guess - 1)
}

/// "00:00 Pacific time (08:00 UTC, in 7 h 12 min)" for the reset after `now`.
pub fn describe_reset(now: SystemTime) -> String {
    let t = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs() as i64;
    let at = next_midnight(t);
    let utc = at.rem_euclid(DAY);
    let left = (at - t).max(0);
    format!(
        "00:00 Pacific time ({:02}:{:02} UTC, in {} h {} min)",
        utc / 3600,
        utc % 3600 / 60,
        left / 3600,
        left % 3600 / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(y: i64, m: i64, d: i64, h: i64, min: i64) -> i64 {
        days_from_civil(y, m, d) * DAY + h * 3600 + min * 60
    }

    #[test]
    fn calendar_round_trips() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for d in [-800_000, -1, 0, 59, 10_000, 20_454, 60_000] {
            let y = year_of(d);
            assert!(days_from_civil(y, 1, 1) <= d && d < days_from_civil(y + 1, 1, 1));
        }
        // 2026: DST from 8 March to 1 November.
        assert_eq!(nth_sunday(2026, 3, 2), days_from_civil(2026, 3, 8));
        assert_eq!(nth_sunday(2026, 11, 1), days_from_civil(2026, 11, 1));
    }

    #[test]
    fn midnight_pacific_in_winter_and_summer() {
        // Winter (PST, UTC-8): 2026-11-23 00:37 UTC is 16:37 on the 22nd; midnight is 08:00 UTC.
        assert_eq!(
            next_midnight(utc(2026, 11, 23, 0, 37)),
            utc(2026, 11, 23, 8, 0)
        );
        // Summer (PDT, UTC-7): midnight is 07:00 UTC.
        assert_eq!(next_midnight(utc(2026, 7, 1, 12, 0)), utc(2026, 7, 2, 7, 0));
        // The evening before DST starts: that midnight is still PST.
        assert_eq!(next_midnight(utc(2026, 3, 7, 20, 0)), utc(2026, 3, 8, 8, 0));
        // The evening before DST ends: that midnight is still PDT.
        assert_eq!(
            next_midnight(utc(2026, 10, 31, 20, 0)),
            utc(2026, 11, 1, 7, 0)
        );
        // The day DST ends, after 02:00 PDT: the next midnight is PST.
        assert_eq!(
            next_midnight(utc(2026, 11, 1, 12, 0)),
            utc(2026, 11, 2, 8, 0)
        );
        assert_eq!(
            describe_reset(UNIX_EPOCH + Duration::from_secs(utc(2026, 11, 23, 0, 37) as u64)),
            "00:00 Pacific time (08:00 UTC, in 7 h 23 min)"
        );
    }
}
