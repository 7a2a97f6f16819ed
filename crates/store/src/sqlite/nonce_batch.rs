//! Group commit for nonce claims: every signed request spends its nonce before it is let
//! through. One task takes the claims waiting at that moment and commits them in one
//! statement, so concurrent requests share a commit instead of queueing for one each; a lone
//! request still gets its answer after exactly one commit. Each claim is answered only after
//! the commit that holds it returned, written to the WAL with `synchronous=NORMAL`: an
//! accepted request's nonce survives a crash of the process (kill -9) at once, and a power
//! loss once the next full commit or checkpoint has flushed the WAL.

use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::sql_err;
use crate::StoreError;

/// At most this many claims in one transaction.
const MAX_BATCH: usize = 512;
/// Claims waiting for the task, at most (callers wait for room beyond it).
const QUEUE: usize = 4096;

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
    /// Starts the task over `writer` (it ends when the last handle is dropped).
    pub(super) fn start(writer: SqlitePool) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(writer, rx));
        Self { tx }
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

async fn run(writer: SqlitePool, mut rx: mpsc::Receiver<Claim>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        match commit(&writer, &batch).await {
            Ok(results) => {
                for (claim, won) in batch.drain(..).zip(results) {
                    let _ = claim.reply.send(Ok(won));
                }
            }
            Err(e) => {
                // Nothing of the batch was committed: every claim in it failed alike.
                let why = e.to_string();
                for claim in batch.drain(..) {
                    let _ = claim.reply.send(Err(StoreError::Unavailable(why.clone())));
                }
            }
        }
    }
}

/// One statement (so one commit) for `batch`: of two claims of one key, the first wins.
async fn commit(writer: &SqlitePool, batch: &[Claim]) -> Result<Vec<bool>, StoreError> {
    // A new key is inserted; a key whose use has expired is taken over; a live one stays as
    // it is. RETURNING names the keys inserted or taken over. The earliest `now` decides what
    // has expired (the claims of a batch are a few milliseconds apart at most).
    let now = batch.iter().map(|c| c.now).min().unwrap_or(0);
    let mut q = QueryBuilder::<Sqlite>::new("INSERT INTO used_nonces (key, expires_at) ");
    q.push_values(batch, |mut row, c| {
        row.push_bind(&c.key).push_bind(c.expires_at);
    });
    q.push(
        " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at \
         WHERE used_nonces.expires_at <= ",
    );
    q.push_bind(now);
    q.push(" RETURNING key");
    // The batch's commit is written to the WAL (so it survives a crash of the process, kill -9
    // included) without waiting for the disk: with `synchronous=NORMAL` a WAL commit is
    // flushed at the next full commit or checkpoint. Power loss may forget the last moments'
    // nonces (README, "Replay"); everything else the store writes keeps `synchronous=FULL`.
    let mut conn = writer.acquire().await.map_err(sql_err)?;
    sqlx::query("PRAGMA synchronous = NORMAL")
        .execute(&mut *conn)
        .await
        .map_err(sql_err)?;
    let rows = q.build().fetch_all(&mut *conn).await;
    let restored = sqlx::query("PRAGMA synchronous = FULL")
        .execute(&mut *conn)
        .await;
    if restored.is_err() {
        // The connection must not go on writing other records without FULL: drop it.
        conn.detach();
    }
    let rows = rows.map_err(sql_err)?;
    restored.map_err(sql_err)?;
    let mut claimed: std::collections::HashSet<String> = rows
        .iter()
        .filter_map(|r| r.try_get::<String, _>(0).ok())
        .collect();
    // A key claimed twice in the batch appears once: the first claim has it.
    Ok(batch.iter().map(|c| claimed.remove(&c.key)).collect())
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
        assert!(again
            .claim_nonce("same", Timestamp::from_secs(3_000), until)
            .await
            .unwrap());
        again.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
