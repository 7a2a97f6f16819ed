//! The live single-use values in memory, as the embedded backends keep them: a 16-byte digest
//! of each key and its expiry (ms), spread by digest over [`SHARDS`] maps each behind its own
//! lock, so that concurrent claims seldom meet and pruning holds up one map at a time. The
//! SQLite store adds a log file to it (`sqlite::nonce_log`); the memory store uses it alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use portcullis_core::crypto;

use crate::StoreError;

/// At most this many live keys are kept (about half a gigabyte); beyond, claims fail closed.
pub(crate) const MAX_LIVE: usize = 16_000_000;
/// Maps the live keys are spread over.
const SHARDS: usize = 64;

/// What a key is known by: the first 16 bytes of its SHA-256.
pub(crate) type Digest = [u8; 16];

pub(crate) fn digest(key: &str) -> Digest {
    let full = crypto::sha256(key.as_bytes());
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

/// What [`NonceMap::claim`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The key was free and is now spent; what it held before (an expired claim), for
    /// [`NonceMap::undo`].
    Won(Option<i64>),
    /// The key is spent until a later time.
    Spent,
}

pub(crate) struct NonceMap {
    shards: Box<[Mutex<HashMap<Digest, i64>>]>,
    live: AtomicUsize,
}

impl std::fmt::Debug for NonceMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceMap")
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Default for NonceMap {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            live: AtomicUsize::new(0),
        }
    }
}

impl NonceMap {
    fn shard(&self, d: &Digest) -> MutexGuard<'_, HashMap<Digest, i64>> {
        // Each step under the lock is one insert or one removal: the data is whole even
        // after a panic elsewhere while it was held.
        self.shards[usize::from(d[15]) % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Spends `d` until `expires_at` if it is free at `now`; `Unavailable` when full.
    pub(crate) fn claim(&self, d: &Digest, expires_at: i64, now: i64) -> Result<Claim, StoreError> {
        let mut map = self.shard(d);
        let previous = map.get(d).copied();
        match previous {
            Some(e) if e > now => return Ok(Claim::Spent),
            Some(_) => {}
            None if self.live.load(Ordering::Relaxed) >= MAX_LIVE => {
                return Err(StoreError::Unavailable(
                    "too many live nonces: refused until some expire".into(),
                ))
            }
            None => {
                self.live.fetch_add(1, Ordering::Relaxed);
            }
        }
        map.insert(*d, expires_at);
        Ok(Claim::Won(previous))
    }

    /// Takes back a claim of `d` until `expires_at` that could not be kept (`previous` as
    /// [`Claim::Won`] said), unless another claim has taken the key since.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))] // the log's, and tests'
    pub(crate) fn undo(&self, d: &Digest, expires_at: i64, previous: Option<i64>) {
        let mut map = self.shard(d);
        if map.get(d) != Some(&expires_at) {
            return;
        }
        match previous {
            Some(p) => {
                map.insert(*d, p);
            }
            None => {
                map.remove(d);
                self.live.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Adds `d` as spent until `expires_at` (or later, if it is already): loading.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn insert(&self, d: Digest, expires_at: i64) {
        let mut map = self.shard(&d);
        let e = map.entry(d).or_insert_with(|| {
            self.live.fetch_add(1, Ordering::Relaxed);
            expires_at
        });
        *e = (*e).max(expires_at);
    }

    /// Forgets the keys expired at `now`, one map at a time; how many went.
    pub(crate) fn delete_expired(&self, now: i64) -> u64 {
        let mut gone = 0;
        for shard in self.shards.iter() {
            let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = map.len();
            map.retain(|_, e| *e > now);
            let n = before - map.len();
            self.live.fetch_sub(n, Ordering::Relaxed);
            gone += n as u64;
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_undo_and_expiry() {
        let m = NonceMap::default();
        let (a, b) = (digest("a"), digest("b"));
        assert_eq!(m.claim(&a, 100, 10).unwrap(), Claim::Won(None));
        assert_eq!(m.claim(&a, 200, 99).unwrap(), Claim::Spent);
        assert_eq!(m.claim(&a, 300, 100).unwrap(), Claim::Won(Some(100)));
        // Undone: back to the expired claim, which a later one may take again.
        m.undo(&a, 300, Some(100));
        assert_eq!(m.claim(&a, 400, 150).unwrap(), Claim::Won(Some(100)));
        // An undo that comes after another claim took the key leaves that one.
        m.undo(&a, 300, Some(100));
        assert_eq!(m.claim(&a, 500, 399).unwrap(), Claim::Spent);
        assert_eq!(m.claim(&b, 50, 10).unwrap(), Claim::Won(None));
        m.undo(&b, 50, None);
        assert_eq!(m.live.load(Ordering::Relaxed), 1);
        m.insert(b, 60);
        m.insert(b, 40);
        assert_eq!(
            m.claim(&b, 70, 59).unwrap(),
            Claim::Spent,
            "loading keeps the later"
        );
        assert_eq!(m.delete_expired(60), 1);
        assert_eq!(m.live.load(Ordering::Relaxed), 1);
    }
}
