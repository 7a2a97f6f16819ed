//! Nonce claims: every signed request (and every DPoP proof, every client assertion) spends a
//! single-use value before it is let through.
//!
//! One task owns the claims. It knows which keys are live from memory — one process owns the
//! database (the data directory's lock), and the map is loaded from the `nonce_log` table
//! when the store opens — so a replay is refused without touching the disk. The claims that
//! win are appended to `nonce_log`, those waiting at that moment in one statement (group
//! commit: concurrent requests share a commit; a lone request gets its answer after exactly
//! one). Each winning claim is answered only after the commit that holds it returned, written
//! to the WAL with `synchronous=NORMAL`: an accepted request's nonce survives a crash of the
//! process (kill -9) at once, and a power loss once the next full commit or checkpoint has
//! flushed the WAL.
//!
//! Memory: 24 bytes of map entry per live key (a 16-byte digest of the key and its expiry),
//! pruned as keys expire; at most [`MAX_LIVE`] live keys, beyond which claims fail closed
//! (`Unavailable`) until some expire.

use std::collections::HashMap;

use portcullis_core::crypto;
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::sql_err;
use crate::StoreError;

/// At most this many claims in one statement.
const MAX_BATCH: usize = 512;
/// Claims waiting for the task, at most (callers wait for room beyond it).
const QUEUE: usize = 4096;
/// At most this many live keys are kept (about 400 MB of map).
pub(super) const MAX_LIVE: usize = 16_000_000;
/// How often (in claim time, ms) expired keys are dropped from the map.
const PRUNE_EVERY_MS: i64 = 10_000;

type Digest = [u8; 16];

fn digest(key: &str) -> Digest {
    let full = crypto::sha256(key.as_bytes());
    let mut d = [0u8; 16];
    d.copy_from_slice(&full[..16]);
    d
}

struct Claim {
    key: String,
    expires_at: i64,
    now: i64,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

/// The handle the store keeps; cloning it shares the one task.
#[derive(Clone, Debug)]
pub(super) struct NonceBatcher {
    tx: mpsc::Sender<Claim>,
}

impl NonceBatcher {
    /// Loads the live keys from `writer`'s database and starts the task (it ends when the
    /// last handle is dropped).
    pub(super) async fn start(writer: SqlitePool) -> Result<Self, StoreError> {
        let mut live: HashMap<Digest, i64> = HashMap::new();
        let rows = sqlx::query("SELECT key, expires_at FROM nonce_log")
            .fetch_all(&writer)
            .await
            .map_err(sql_err)?;
        for r in rows {
            let (key, expires_at): (String, i64) = (
                r.try_get(0).map_err(sql_err)?,
                r.try_get(1).map_err(sql_err)?,
            );
            let e = live.entry(digest(&key)).or_insert(expires_at);
            *e = (*e).max(expires_at);
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(writer, rx, live));
        Ok(Self { tx })
    }

    /// Claims `key` until `expires_at` (ms) at `now` (ms): `true` if it was free.
    pub(super) async fn claim(
        &self,
        key: &str,
        expires_at: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let (reply, answer) = oneshot::channel();
        let claim = Claim {
            key: key.to_owned(),
            expires_at,
            now,
            reply,
        };
        let gone = || StoreError::Unavailable("the nonce writer has stopped".into());
        self.tx.send(claim).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn run(writer: SqlitePool, mut rx: mpsc::Receiver<Claim>, mut live: HashMap<Digest, i64>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut pruned_at = i64::MIN;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let now = batch.iter().map(|c| c.now).min().unwrap_or(0);
        if now.saturating_sub(pruned_at) >= PRUNE_EVERY_MS {
            live.retain(|_, expires| *expires > now);
            pruned_at = now;
        }
        // Decide each claim in order from memory: of two claims of one key, the first wins.
        let mut winners: Vec<(Claim, Digest, Option<i64>)> = Vec::with_capacity(batch.len());
        for c in batch.drain(..) {
            let d = digest(&c.key);
            let previous = live.get(&d).copied();
            if previous.is_some_and(|e| e > c.now) {
                let _ = c.reply.send(Ok(false));
            } else if previous.is_none() && live.len() >= MAX_LIVE {
                let _ = c.reply.send(Err(StoreError::Unavailable(
                    "too many live nonces: refused until some expire".into(),
                )));
            } else {
                live.insert(d, c.expires_at);
                winners.push((c, d, previous));
            }
        }
        if winners.is_empty() {
            continue;
        }
        match append(&writer, &winners).await {
            Ok(()) => {
                for (c, _, _) in winners {
                    let _ = c.reply.send(Ok(true));
                }
            }
            Err(e) => {
                // Nothing of the batch was written: undo it in memory, and every claim in it
                // fails alike.
                let why = e.to_string();
                for (c, d, previous) in winners.into_iter().rev() {
                    match previous {
                        Some(p) => live.insert(d, p),
                        None => live.remove(&d),
                    };
                    let _ = c.reply.send(Err(StoreError::Unavailable(why.clone())));
                }
            }
        }
    }
}

/// Appends the winning claims in one statement (one commit).
async fn append(
    writer: &SqlitePool,
    winners: &[(Claim, Digest, Option<i64>)],
) -> Result<(), StoreError> {
    let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO nonce_log (key, expires_at) ");
    q.push_values(winners, |mut row, (c, _, _)| {
        row.push_bind(&c.key).push_bind(c.expires_at);
    });
    // Written to the WAL (so it survives a crash of the process, kill -9 included) without
    // waiting for the disk: with `synchronous=NORMAL` a WAL commit is flushed at the next full
    // commit or checkpoint. Power loss may forget the last moments' nonces (README, "Replay");
    // everything else the store writes keeps `synchronous=FULL`.
    let mut conn = writer.acquire().await.map_err(sql_err)?;
    sqlx::query("PRAGMA synchronous = NORMAL")
        .execute(&mut *conn)
        .await
        .map_err(sql_err)?;
    let done = q.build().execute(&mut *conn).await;
    let restored = sqlx::query("PRAGMA synchronous = FULL")
        .execute(&mut *conn)
        .await;
    if restored.is_err() {
        // The connection must not go on writing other records without FULL: drop it.
        conn.detach();
    }
    done.map_err(sql_err)?;
    restored.map_err(sql_err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::sqlite::SqliteStore;
    use crate::Nonces;
    use portcullis_core::Timestamp;

    #[tokio::test]
    async fn concurrent_claims_are_grouped_and_each_key_is_won_once() {
        let dir = std::env::temp_dir().join(format!("portcullis-nonces-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("n.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let now = Timestamp::from_secs(1_000);
        let until = Timestamp::from_secs(2_000);
        let mut tasks = Vec::new();
        // 40 claims of one key and 200 of distinct keys, all at once.
        for i in 0..240 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let key = if i < 40 {
                    "same".to_owned()
                } else {
                    format!("k{i}")
                };
                (i, s.claim_nonce(&key, until, now).await.unwrap())
            }));
        }
        let mut same_won = 0;
        for t in tasks {
            let (i, won) = t.await.unwrap();
            if i < 40 {
                same_won += usize::from(won);
            } else {
                assert!(won, "distinct key {i}");
            }
        }
        assert_eq!(same_won, 1);
        // Spent until it expires, then free again; and it survives reopening the file.
        assert!(!store.claim_nonce("k45", until, now).await.unwrap());
        store.close().await;
        let again = SqliteStore::open(&path).await.unwrap();
        assert!(!again.claim_nonce("k45", until, now).await.unwrap());
        assert!(!again.claim_nonce("same", until, now).await.unwrap());
        let later = Timestamp::from_secs(3_000);
        assert!(again.claim_nonce("same", later, until).await.unwrap());
        // Taken over after it expired: the newer expiry is the one that counts after a reopen.
        again.close().await;
        let third = SqliteStore::open(&path).await.unwrap();
        assert!(!third
            .claim_nonce("same", later, Timestamp::from_secs(2_500))
            .await
            .unwrap());
        // Pruning the log does not forget live keys.
        assert!(third.delete_expired_nonces(until).await.unwrap() >= 200);
        third.close().await;
        let fourth = SqliteStore::open(&path).await.unwrap();
        assert!(!fourth
            .claim_nonce("same", later, Timestamp::from_secs(2_500))
            .await
            .unwrap());
        fourth.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
