//! Points in time, passed into every check. There is deliberately no `now()` here.

use std::fmt;

/// A point in time as milliseconds since the Unix epoch (UTC).
///
/// The core never reads the clock; callers pass a `Timestamp` in, so tests can pin time.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Self = Self(0);

    /// A timestamp from milliseconds since the Unix epoch.
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis)
    }

    /// A timestamp from whole seconds since the Unix epoch (saturating).
    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(1000))
    }

    /// Milliseconds since the Unix epoch.
    pub const fn as_millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the Unix epoch (rounded down).
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }

    /// This timestamp plus `millis` (saturating).
    pub const fn plus_millis(self, millis: i64) -> Self {
        Self(self.0.saturating_add(millis))
    }

    /// Milliseconds from `earlier` to `self` (negative when `earlier` is later).
    pub const fn millis_since(self, earlier: Self) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({}ms)", self.0)
    }
}

/// IMF-fixdate (RFC 9110 §5.6.7): `Sun, 06 Nov 1994 08:49:37 GMT`.
const HTTP_DATE: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

impl Timestamp {
    /// The whole second as an IMF-fixdate (RFC 9110 §5.6.7), `Sun, 06 Nov 1994 08:49:37
    /// GMT`: the `Date` field, and the dates other gateways' signing formats sign. `None`
    /// outside the years 1000–9999.
    pub fn to_http_date(self) -> Option<String> {
        let t = time::OffsetDateTime::from_unix_timestamp(self.as_secs()).ok()?;
        if !(1000..=9999).contains(&t.year()) {
            return None;
        }
        t.format(HTTP_DATE).ok()
    }

    /// An IMF-fixdate, strictly: the weekday must be the date's, no other HTTP date form
    /// (RFC 850, asctime) is read.
    pub fn parse_http_date(s: &str) -> Option<Self> {
        if s.len() != 29 {
            return None;
        }
        let t = time::PrimitiveDateTime::parse(s, HTTP_DATE).ok()?;
        let at = Self::from_secs(t.assume_utc().unix_timestamp());
        // The parser does not tie the weekday to the date: writing it again does.
        (at.to_http_date().as_deref() == Some(s)).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_round_trip_and_bad_ones_are_refused() {
        let t = Timestamp::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.as_secs(), 784_111_777);
        assert_eq!(t.to_http_date().unwrap(), "Sun, 06 Nov 1994 08:49:37 GMT");
        for bad in [
            "Mon, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "",
        ] {
            assert_eq!(Timestamp::parse_http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn seconds_round_down_even_before_the_epoch() {
        assert_eq!(Timestamp::from_millis(1999).as_secs(), 1);
        assert_eq!(Timestamp::from_millis(-1).as_secs(), -1);
        assert_eq!(Timestamp::from_secs(i64::MAX).as_millis(), i64::MAX);
    }

    #[test]
    fn arithmetic_saturates() {
        let t = Timestamp::from_millis(i64::MAX - 1);
        assert_eq!(t.plus_millis(10).as_millis(), i64::MAX);
        assert_eq!(
            Timestamp::from_millis(5).millis_since(Timestamp::from_millis(8)),
            -3
        );
    }
}
