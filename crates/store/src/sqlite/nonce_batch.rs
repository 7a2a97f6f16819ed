//! Nonce claims: every signed request (and every DPoP proof, every client assertion) spends a
//! single-use value before it is let through.
//!
//! They are kept in a database file of their own beside the store's (`<name>-nonces.db`), so
//! that their commits neither wait for the store's other writes (the audit trail's, with
//! `synchronous=FULL`, many a second under load) nor hold them up.
//!
//! One task owns the claims. It knows which keys are live from memory — one process owns the
//! database (the data directory's lock), and the map is loaded from the `spent` table when
//! the store opens — so a replay is refused without touching the disk. The claims that win,
//! those waiting at that moment, are appended to `spent` as one row (group commit: concurrent
//! requests share a commit; a lone request gets its answer after exactly one): the row holds
//! each key's 16-byte digest and expiry, 24 bytes a key, so a batch costs one small insert
//! and a page or two of WAL, not one b-tree insert (and one random page) per key. Each winning claim is answered only after the commit
//! that holds it returned, written to the WAL with `synchronous=NORMAL`: an accepted
//! request's nonce survives a crash of the process (kill -9) at once, and a power loss once
//! the next checkpoint has flushed the WAL — the task checkpoints each second after commits.
//!
//! Memory: a 16-byte digest of the key and its expiry per live key (about 30 bytes with the
//! map's overhead),
//! pruned as keys expire; at most [`MAX_LIVE`] live keys, beyond which claims fail closed
//! (`Unavailable`) until some expire.

use std::collections::HashMap;

use portcullis_core::crypto;
use sqlx::{Row, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::sql_err;
use crate::StoreError;

/// At most this many claims in one statement.
const MAX_BATCH: usize = 512;
/// Claims waiting for the task, at most (callers wait for room beyond it).
const QUEUE: usize = 4096;
/// At most this many live keys are kept (about half a gigabyte of map).
pub(super) const MAX_LIVE: usize = 16_000_000;
/// How often the commits made since are checkpointed to the disk.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
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
    pool: SqlitePool,
}

impl NonceBatcher {
    /// Prepares `writer`'s database (the nonce file: its table, and once the spent values an
    /// older version kept in the store's `used_nonces`, moved over from `main`), loads the
    /// live keys and starts the task (it ends when the last handle is dropped).
    pub(super) async fn start(writer: SqlitePool, main: &SqlitePool) -> Result<Self, StoreError> {
        prepare(&writer, main).await?;
        let mut live: HashMap<Digest, i64> = HashMap::new();
        let rows = sqlx::query("SELECT entries FROM spent")
            .fetch_all(&writer)
            .await
            .map_err(sql_err)?;
        for r in rows {
            let entries: Vec<u8> = r.try_get(0).map_err(sql_err)?;
            for (d, expires_at) in decode(&entries)? {
                let e = live.entry(d).or_insert(expires_at);
                *e = (*e).max(expires_at);
            }
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(writer.clone(), rx, live));
        Ok(Self { tx, pool: writer })
    }

    /// Closes its connection (claims fail from then on).
    pub(super) async fn close(&self) {
        self.pool.close().await;
    }

    /// Removes the batches whose every key expired at `now` (ms); how many batches went. (The
    /// task drops expired keys from its map by itself.)
    pub(super) async fn delete_expired(&self, now: i64) -> Result<u64, StoreError> {
        sqlx::query("DELETE FROM spent WHERE expires_at <= ?1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map(|d| d.rows_affected())
            .map_err(sql_err)
    }
}

/// The nonce file beside the store's database `path`: `portcullis.db` →
/// `portcullis-nonces.db`.
pub(super) fn path_beside(path: &std::path::Path) -> std::path::PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "portcullis".into());
    path.with_file_name(format!("{stem}-nonces.db"))
}

/// The nonce file's schema, and the spent values of `used_nonces` (migration 0006, written by
/// earlier versions) moved over from the store's database.
async fn prepare(nonces: &SqlitePool, main: &SqlitePool) -> Result<(), StoreError> {
    // One row a batch: the latest expiry in it (to prune by), and 24 bytes a key (its
    // 16-byte digest, its expiry in ms big-endian).
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS spent (\
             seq INTEGER PRIMARY KEY, expires_at INTEGER NOT NULL, entries BLOB NOT NULL) STRICT",
    )
    .execute(nonces)
    .await
    .map_err(sql_err)?;
    sqlx::query("CREATE INDEX IF NOT EXISTS spent_expires ON spent (expires_at)")
        .execute(nonces)
        .await
        .map_err(sql_err)?;
    let old = sqlx::query("SELECT key, expires_at FROM used_nonces")
        .fetch_all(main)
        .await
        .map_err(sql_err)?;
    if old.is_empty() {
        return Ok(());
    }
    let mut entries = Vec::with_capacity(old.len() * ENTRY);
    let mut latest = i64::MIN;
    for r in &old {
        let key: String = r.try_get(0).map_err(sql_err)?;
        let expires_at: i64 = r.try_get(1).map_err(sql_err)?;
        entries.extend_from_slice(&digest(&key));
        entries.extend_from_slice(&expires_at.to_be_bytes());
        latest = latest.max(expires_at);
    }
    insert(nonces, latest, &entries).await?;
    // Only once they are in the nonce file are they removed from the old table.
    sqlx::query("DELETE FROM used_nonces")
        .execute(main)
        .await
        .map_err(sql_err)?;
    Ok(())
}

impl NonceBatcher {
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
    // Commits not yet on the disk (`synchronous=NORMAL`): a checkpoint each second puts them
    // there, so a power loss forgets at most about a second of spent values, however light
    // the load (SQLite alone would wait for 1000 pages of WAL).
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut unflushed = false;
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
            }
            _ = flush.tick(), if unflushed => {
                // PASSIVE: syncs the WAL, then copies what it can; a failure is retried on
                // the next tick (the commits stay durable against a crash of the process).
                unflushed = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
                    .execute(&writer)
                    .await
                    .is_err();
                continue;
            }
        }
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
                unflushed = true;
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

/// Bytes a key takes in a batch's `entries`.
const ENTRY: usize = 24;

/// The keys of a batch's `entries`.
fn decode(entries: &[u8]) -> Result<Vec<(Digest, i64)>, StoreError> {
    if !entries.len().is_multiple_of(ENTRY) {
        return Err(StoreError::Corrupt(
            "a spent-nonce batch is not whole".into(),
        ));
    }
    Ok(entries
        .chunks_exact(ENTRY)
        .map(|e| {
            let mut d = [0u8; 16];
            d.copy_from_slice(&e[..16]);
            let mut x = [0u8; 8];
            x.copy_from_slice(&e[16..]);
            (d, i64::from_be_bytes(x))
        })
        .collect())
}

/// Appends the winning claims as one row (one commit).
async fn append(
    writer: &SqlitePool,
    winners: &[(Claim, Digest, Option<i64>)],
) -> Result<(), StoreError> {
    let mut entries = Vec::with_capacity(winners.len() * ENTRY);
    let mut latest = i64::MIN;
    for (c, d, _) in winners {
        entries.extend_from_slice(d);
        entries.extend_from_slice(&c.expires_at.to_be_bytes());
        latest = latest.max(c.expires_at);
    }
    insert(writer, latest, &entries).await
}

async fn insert(writer: &SqlitePool, latest: i64, entries: &[u8]) -> Result<(), StoreError> {
    // Written to the WAL (so it survives a crash of the process, kill -9 included) without
    // waiting for the disk: the file has `synchronous=NORMAL`, so a WAL commit is flushed at
    // the next checkpoint. Power loss may forget the last moments' nonces (README, "Replay").
    sqlx::query("INSERT INTO spent (expires_at, entries) VALUES (?1, ?2)")
        .bind(latest)
        .bind(entries)
        .execute(writer)
        .await
        .map_err(sql_err)?;
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
        assert!(third.delete_expired_nonces(until).await.unwrap() >= 1);
        third.close().await;
        let fourth = SqliteStore::open(&path).await.unwrap();
        assert!(!fourth
            .claim_nonce("same", later, Timestamp::from_secs(2_500))
            .await
            .unwrap());
        fourth.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn values_spent_under_an_older_version_move_to_the_nonce_file() {
        let dir =
            std::env::temp_dir().join(format!("portcullis-nonces-old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("portcullis.db");
        let store = SqliteStore::open(&path).await.unwrap();
        sqlx::query("INSERT INTO used_nonces (key, expires_at) VALUES ('old', 9000000)")
            .execute(&store.writer)
            .await
            .unwrap();
        store.close().await;
        let again = SqliteStore::open(&path).await.unwrap();
        assert!(dir.join("portcullis-nonces.db").exists());
        let now = Timestamp::from_secs(1);
        assert!(!again
            .claim_nonce("old", Timestamp::from_secs(2), now)
            .await
            .unwrap());
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM used_nonces")
            .fetch_one(&again.writer)
            .await
            .unwrap();
        assert_eq!(left, 0);
        again.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
