//! Rate limiting over the ephemeral store's cells.

use std::sync::Arc;

use portcullis_core::ratelimit::{Decision, Limit};
use portcullis_core::Timestamp;
use portcullis_store::RateCells;

/// Applies limits to cells, failing open (with a log line) if the cell store is unreachable:
/// a rate limiter must not turn a cache outage into an API outage.
#[derive(Clone)]
pub struct RateLimiter {
    cells: Arc<dyn RateCells>,
    /// [`RateCells::is_private`], asked once.
    private: bool,
}

impl RateLimiter {
    /// A limiter over `cells`.
    pub fn new(cells: Arc<dyn RateCells>) -> Self {
        let private = cells.is_private();
        Self { cells, private }
    }

    /// Whether only this process changes the cells ([`RateCells::is_private`]).
    pub fn is_private(&self) -> bool {
        self.private
    }

    /// Counts one request against `limit` for `key`. `None` when the store failed (allow).
    pub async fn check(&self, key: &str, limit: &Limit, now: Timestamp) -> Option<Decision> {
        self.decide(key, limit, now, true).await
    }

    /// Whether `key` is currently refused under `limit`, without counting a request.
    pub async fn is_blocked(&self, key: &str, limit: &Limit, now: Timestamp) -> Option<Decision> {
        self.decide(key, limit, now, false)
            .await
            .filter(|d| !d.allowed)
    }

    /// A check (`commit`) or a peek, in process when the store can answer there.
    async fn decide(
        &self,
        key: &str,
        limit: &Limit,
        now: Timestamp,
        commit: bool,
    ) -> Option<Decision> {
        let answer = match self.cells.check_in_process(key, limit, now, commit) {
            Some(d) => Ok(d),
            None if commit => self.cells.check(key, limit, now).await,
            None => self.cells.peek(key, limit, now).await,
        };
        match answer {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "rate-limit store failed; allowing");
                None
            }
        }
    }
}
