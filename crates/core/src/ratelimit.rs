//! Rate-limit arithmetic: GCRA and token bucket over a small cell state. Pure; time passed in.
//!
//! The state of one limiter key is a single `i64` ([`Cell`]), so any store that can update a
//! number atomically (a mutex-guarded map, a Redis script) can hold it.

/// The algorithm a limit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Generic Cell Rate Algorithm: smooth spacing with a burst allowance.
    Gcra,
    /// Token bucket: `burst` tokens, refilled continuously at `limit` per `period`.
    TokenBucket,
}

impl Algorithm {
    /// The name the configuration and the stored limits use.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::TokenBucket => "token_bucket",
        }
    }

    /// The algorithm [`Algorithm::name`] names.
    pub fn from_name(name: &str) -> Option<Self> {
        [Algorithm::Gcra, Algorithm::TokenBucket]
            .into_iter()
            .find(|a| a.name() == name)
    }
}

/// A limit: `limit` requests per `period_ms`, with bursts of up to `burst` requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Requests allowed per period (≥ 1).
    pub limit: u32,
    /// The period in milliseconds (≥ 1).
    pub period_ms: u64,
    /// Requests allowed at once (≥ 1); defaults to `limit`.
    pub burst: u32,
}

/// The stored state of one limiter key: for GCRA the theoretical arrival time, for token
/// bucket the time at which the bucket would be full; both in nanoseconds since the epoch.
pub type Cell = i64;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The new cell state to store (unchanged when refused).
    pub cell: Cell,
    /// The `limit` of the limit, for `RateLimit-Limit`.
    pub limit: u32,
    /// Requests left right now, for `RateLimit-Remaining`.
    pub remaining: u32,
    /// Seconds until the limiter is fully reset, for `RateLimit-Reset` (rounded up).
    pub reset_secs: u64,
    /// Seconds until a refused request would be allowed, for `Retry-After` (rounded up).
    pub retry_after_secs: u64,
}

const NANOS_PER_MS: i128 = 1_000_000;

fn ceil_secs(nanos: i128) -> u64 {
    if nanos <= 0 {
        0
    } else {
        u64::try_from((nanos + 999_999_999) / 1_000_000_000).unwrap_or(u64::MAX)
    }
}

impl Limit {
    /// Nanoseconds between evenly spaced requests.
    fn interval(&self) -> i128 {
        (i128::from(self.period_ms.max(1)) * NANOS_PER_MS / i128::from(self.limit.max(1))).max(1)
    }

    /// Applies one request at `now_ms` to `cell` (`None`: never used, or expired).
    ///
    /// Both algorithms reduce to the same arithmetic on "the time the limiter is next
    /// empty" (`tat`): GCRA's theoretical arrival time equals the token bucket's time-to-full
    /// when the bucket holds `burst` tokens and refills one per interval. They differ only in
    /// what is reported as remaining (whole tokens) — kept as two names because operators
    /// search for both.
    pub fn check(&self, cell: Option<Cell>, now_ms: i64) -> Decision {
        let now = i128::from(now_ms) * NANOS_PER_MS;
        let t = self.interval();
        let burst = i128::from(self.burst.max(1));
        let tau = t * burst;
        let tat = cell.map_or(now, i128::from).max(now);
        let new_tat = tat + t;
        let clamp = |v: i128| i64::try_from(v).unwrap_or(i64::MAX);
        if new_tat - now > tau {
            let retry = new_tat - tau - now;
            Decision {
                allowed: false,
                cell: clamp(tat),
                limit: self.limit,
                remaining: 0,
                reset_secs: ceil_secs(tat - now),
                retry_after_secs: ceil_secs(retry).max(1),
            }
        } else {
            let remaining = match self.algorithm {
                Algorithm::Gcra | Algorithm::TokenBucket => (tau - (new_tat - now)) / t,
            };
            Decision {
                allowed: true,
                cell: clamp(new_tat),
                limit: self.limit,
                remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
                reset_secs: ceil_secs(new_tat - now),
                retry_after_secs: 0,
            }
        }
    }

    /// Milliseconds after which an untouched cell is back to its initial state (for TTLs).
    pub fn ttl_ms(&self) -> u64 {
        u64::try_from(self.interval() * i128::from(self.burst.max(1)) / NANOS_PER_MS + 1)
            .unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(limit: u32, period_ms: u64, burst: u32) -> Limit {
        Limit {
            algorithm: Algorithm::Gcra,
            limit,
            period_ms,
            burst,
        }
    }

    fn run(l: &Limit, times: &[i64]) -> Vec<bool> {
        let mut cell = None;
        times
            .iter()
            .map(|&t| {
                let d = l.check(cell, t);
                cell = Some(d.cell);
                d.allowed
            })
            .collect()
    }

    #[test]
    fn burst_then_refuse_then_refill() {
        let l = limit(3, 1000, 3);
        assert_eq!(run(&l, &[0, 0, 0, 0]), [true, true, true, false]);
        // One interval (333ms) later exactly one more is allowed.
        assert_eq!(
            run(&l, &[0, 0, 0, 334, 334]),
            [true, true, true, true, false]
        );
        // After a full period the burst is back.
        assert_eq!(
            run(&l, &[0, 0, 0, 1000, 1000, 1000, 1000]),
            [true, true, true, true, true, true, false]
        );
    }

    #[test]
    fn headers_values_are_consistent() {
        let l = limit(2, 10_000, 2);
        let d1 = l.check(None, 0);
        assert!(d1.allowed);
        assert_eq!(d1.remaining, 1);
        let d2 = l.check(Some(d1.cell), 0);
        assert_eq!(d2.remaining, 0);
        assert_eq!(d2.reset_secs, 10);
        let d3 = l.check(Some(d2.cell), 0);
        assert!(!d3.allowed);
        assert_eq!(d3.retry_after_secs, 5);
        assert_eq!(d3.cell, d2.cell, "a refused request does not consume");
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let l = limit(u32::MAX, u64::MAX, u32::MAX);
        let d = l.check(Some(i64::MAX), i64::MAX);
        assert!(d.retry_after_secs > 0 || d.allowed);
        let l = limit(0, 0, 0);
        let _ = l.check(Some(i64::MIN), i64::MIN);
        assert!(l.ttl_ms() >= 1);
    }
}
