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

#[cfg(test)]
mod tests {
    use super::*;

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
