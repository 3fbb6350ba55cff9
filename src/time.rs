//! Wall-clock formats without a date crate: RFC 3339 (audit records, OCI timestamps) and
//! the HTTP date of RFC 9110 (the signed `date` header of OCI requests).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn unix(t: SystemTime) -> (i64, u32) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_millis())
}

/// Civil (year, month, day) from days since 1970-01-01 (H. Hinnant's algorithm).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// Days since 1970-01-01 of a civil date (inverse of [`civil`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Now, as RFC 3339 UTC with milliseconds.
pub(crate) fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

/// `t` as RFC 3339 UTC with milliseconds, e.g. `2018-04-03T21:10:29.600Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let (secs, millis) = unix(t);
    let (year, month, day) = civil(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    if (0..=9999).contains(&year) {
        // Digit by digit: every audit record carries one (BENCHMARKS.md, "The daemon's own
        // CPU per call").
        let mut s = String::with_capacity(24);
        let mut put = |n: i64, width: u32, then: char| {
            for k in (0..width).rev() {
                s.push(char::from(b'0' + (n / 10_i64.pow(k) % 10) as u8));
            }
            s.push(then);
        };
        put(year, 4, '-');
        put(month, 2, '-');
        put(day, 2, 'T');
        put(rem / 3600, 2, ':');
        put(rem % 3600 / 60, 2, ':');
        put(rem % 60, 2, '.');
        put(i64::from(millis), 3, 'Z');
        return s;
    }
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `t` as an HTTP date, e.g. `Thu, 05 Jan 2014 21:31:40 GMT`.
pub fn http_date(t: SystemTime) -> String {
    let (secs, _) = unix(t);
    let days = secs.div_euclid(86_400);
    let (year, month, day) = civil(days);
    let rem = secs.rem_euclid(86_400);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses an HTTP date (`IMF-fixdate` only, the form every OCI SDK sends). The weekday is
/// not checked against the date, as OCI's own signing example has a wrong one.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let (_weekday, rest) = s.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, hms, "GMT"] = parts[..] else {
        return None;
    };
    let day: i64 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let year: i64 = year.parse().ok().filter(|y| (1970..=9999).contains(y))?;
    let hms: Vec<i64> = hms
        .split(':')
        .map(|p| if p.len() == 2 { p.parse().ok() } else { None })
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else { return None };
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

/// The date `YYYY-MM-DD` of `days` since 1970 (what [`parse_date`] reads).
pub fn date(days: i64) -> String {
    let (year, month, day) = civil(days);
    format!("{year:04}-{month:02}-{day:02}")
}

/// 00:00 UTC of the date `YYYY-MM-DD`, in seconds since 1970; `None` for anything else
/// (a day the month does not have included).
pub(crate) fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let p = &s[r];
        p.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| p.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || day < 1 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    // a day past the month's end comes back as another date
    (civil(days) == (year, month, day)).then_some(days * 86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_date("1970-01-02"), Some(86_400));
        assert_eq!(parse_date("2027-03-01"), Some(1_803_859_200));
        for bad in [
            "2027-02-29",
            "2027-13-01",
            "2027-1-01",
            "x027-01-01",
            "2027-01-01T",
            "",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
        assert!(parse_date("2028-02-29").is_some());
        for days in [0, 59, 20_000, 21_000] {
            assert_eq!(parse_date(&date(days)), Some(days * 86_400));
        }
    }

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(secs * 1000 + millis)
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_798_761_599, 999)), "2026-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(at(1_389_000_000, 0)), "2014-01-06T09:20:00.000Z");
        assert_eq!(
            rfc3339(at(253_402_300_799, 999)),
            "9999-12-31T23:59:59.999Z"
        );
        // Past the four-digit years: the general path.
        assert_eq!(rfc3339(at(253_402_300_800, 0)), "10000-01-01T00:00:00.000Z");
        // The digit-by-digit text is the formatted one, across days, hours and milliseconds.
        for k in 0..20_000u64 {
            let (secs, millis) = (k * 7_919_993 % 4_102_444_800, k * 37 % 1000);
            let (y, mo, d) = civil((secs / 86_400) as i64);
            let r = secs % 86_400;
            let formatted = format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
                r / 3600,
                r % 3600 / 60,
                r % 60
            );
            assert_eq!(rfc3339(at(secs, millis)), formatted);
        }
    }

    #[test]
    fn http_dates_round_trip() {
        // OCI's signing example date, with its correct weekday.
        let t = parse_http_date("Thu, 05 Jan 2014 21:31:40 GMT").unwrap();
        assert_eq!(http_date(t), "Sun, 05 Jan 2014 21:31:40 GMT");
        assert_eq!(http_date(at(0, 0)), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(
            http_date(at(951_782_400, 0)),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
        for secs in [0u64, 951_782_400, 1_798_761_599, 4_102_444_800] {
            assert_eq!(parse_http_date(&http_date(at(secs, 0))), Some(at(secs, 0)));
        }
        for bad in [
            "",
            "05 Jan 2014 21:31:40 GMT",
            "Sun, 05 Jan 2014 21:31:40 UTC",
            "Sun, 32 Jan 2014 21:31:40 GMT",
            "Sun, 05 Foo 2014 21:31:40 GMT",
            "Sun, 05 Jan 2014 24:31:40 GMT",
            "Sun, 05 Jan 2014 2:31:40 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{bad:?}");
        }
    }
}
