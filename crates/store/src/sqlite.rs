//! The SQLite durable store: API keys and the audit chain in one database file.
//!
//! - WAL journal with `synchronous=FULL`: a write is acknowledged only after its commit record
//!   is fsync'd, so it survives `kill -9` and power loss.
//! - One writer connection (all writes, transactions opened with `BEGIN IMMEDIATE` so a second
//!   process cannot deadlock us on a read-to-write upgrade) and a small pool of readers (WAL lets
//!   them run alongside the writer).
//! - The schema lives in `migrations/sqlite` and is embedded with `sqlx::migrate!`.
//! - Batches (`insert_many`, `append`, `record_usage`) are multi-row statements inside one
//!   transaction, chunked to stay under SQLite's bound-variable limit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use portcullis_core::crypto::Sha256Digest;
use portcullis_core::Timestamp;
use serde::de::DeserializeOwned;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, Transaction};

use crate::{
    ApiKeyRecord, ApiKeys, AuditLog, AuditQuery, KeyUsage, QuotaState, StoreError, StoredEvent,
};

/// The embedded schema migrations.
static MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");

/// How long a statement waits for another process's lock before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reader connections (WAL readers do not block the writer or each other).
const READERS: u32 = 4;
/// Writer page cache (negative = KiB): big imports touch many index pages.
const WRITER_CACHE_KIB: &str = "-32768";
/// Rows per multi-row statement. SQLite allows 32766 bound variables per statement; the widest
/// row (an API key) binds 17, so 1000 rows stay well below the limit.
const ROWS_PER_STATEMENT: usize = 1000;
/// Statement sizes (rows) for audit appends, largest first; the last must be 1.
const APPEND_CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];
/// `AuditQuery::limit` is clamped to this.
const MAX_QUERY_LIMIT: u32 = 1000;

/// The columns of an API key record, in the order `bind_key` pushes them.
macro_rules! key_cols {
    () => {
        "id, name, owner, hash, display_prefix, scopes, metadata, rate_limits, quota, \
         created_at, expires_at, revoked_at, rotated_from, rotated_to, last_used_at, \
         last_used_ip, origin"
    };
}

/// The columns of an audit event, in the order `append` pushes them.
macro_rules! event_cols {
    () => {
        "seq, time, kind, outcome, credential_id, body, prev_hash, hash"
    };
}

/// API keys and the audit trail in SQLite.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// One connection: every write goes through it.
    writer: SqlitePool,
    /// Reads. For in-memory databases this is the writer pool itself.
    reader: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating it if missing, with mode 0600 on unix) the database at `path`, sets
    /// WAL + `synchronous=FULL` + foreign keys + a busy timeout, and runs the migrations.
    pub async fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let path = sqlite_safe_path(path);
        let created = create_private_file(&path)?;

        let base = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);

        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(base.clone().pragma("cache_size", WRITER_CACHE_KIB))
            .await
            .map_err(sql_err)?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(|e| StoreError::Unavailable(format!("sqlite migration failed: {e}")))?;

        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(base)
            .await
            .map_err(sql_err)?;

        if created {
            // SQLite gives the -wal and -shm files the main file's mode already; make sure.
            restrict_sidecars(&path);
        }
        Ok(SqliteStore { writer, reader })
    }

    /// A private in-memory database (one connection, gone when the store is dropped).
    pub async fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::new()
            .in_memory(true)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options)
            .await
            .map_err(sql_err)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Unavailable(format!("sqlite migration failed: {e}")))?;
        Ok(SqliteStore {
            writer: pool.clone(),
            reader: pool,
        })
    }

    /// Closes every connection (the last one checkpoints the WAL). Later calls fail.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    /// A write transaction that holds the write lock from its first statement.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql_err)
    }
}

/// The one place sqlx errors become store errors. Messages are for logs: SQLite's texts name
/// tables and columns, never bound values.
fn sql_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            let m = db.message();
            StoreError::Conflict(if m.contains("api_keys.hash") {
                "api key hash exists"
            } else if m.contains("api_keys.id") {
                "api key id exists"
            } else if m.contains("audit_events.seq") {
                "audit seq exists"
            } else {
                "unique constraint violated"
            })
        }
        sqlx::Error::ColumnDecode { index, source } => {
            StoreError::Corrupt(format!("column {index}: {source}"))
        }
        sqlx::Error::Decode(source) => StoreError::Corrupt(format!("decode: {source}")),
        sqlx::Error::ColumnNotFound(c) => StoreError::Corrupt(format!("missing column {c}")),
        e @ sqlx::Error::ColumnIndexOutOfBounds { .. } => StoreError::Corrupt(e.to_string()),
        e => StoreError::Unavailable(e.to_string()),
    }
}

/// SQLite is built with URI filenames on: keep a relative `file:…` path from being parsed as one.
fn sqlite_safe_path(path: &Path) -> PathBuf {
    if path.is_relative() && path.as_os_str().as_encoded_bytes().starts_with(b"file:") {
        Path::new(".").join(path)
    } else {
        path.to_owned()
    }
}

/// Creates an empty database file readable by the owner only. `Ok(false)` if it existed.
fn create_private_file(path: &Path) -> Result<bool, StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = match options.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => {
            return Err(StoreError::Unavailable(format!(
                "cannot create database file: {e}"
            )))
        }
    };
    let io = |e: std::io::Error| StoreError::Unavailable(format!("database file: {e}"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.sync_all().map_err(io)?;
    // Make the new directory entry durable too (best effort: not every platform allows it).
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(true)
}

/// Best effort: mode 0600 on the `-wal` and `-shm` files next to `path`.
fn restrict_sidecars(path: &Path) {
    #[cfg(unix)]
    for suffix in ["-wal", "-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|_| StoreError::Corrupt("value not encodable as JSON".into()))
}

fn from_json<T: DeserializeOwned>(row: &SqliteRow, col: &str) -> Result<T, StoreError> {
    let text: &str = row.try_get(col).map_err(sql_err)?;
    serde_json::from_str(text)
        .map_err(|_| StoreError::Corrupt(format!("invalid JSON in column {col}")))
}

fn digest(row: &SqliteRow, col: &str) -> Result<Sha256Digest, StoreError> {
    let bytes: &[u8] = row.try_get(col).map_err(sql_err)?;
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("column {col} is not a SHA-256 digest")))
}

fn opt_time(row: &SqliteRow, col: &str) -> Result<Option<Timestamp>, StoreError> {
    Ok(row
        .try_get::<Option<i64>, _>(col)
        .map_err(sql_err)?
        .map(Timestamp::from_millis))
}

fn key_from_row(row: &SqliteRow) -> Result<ApiKeyRecord, StoreError> {
    let get = |col: &str| row.try_get::<String, _>(col).map_err(sql_err);
    let get_opt = |col: &str| row.try_get::<Option<String>, _>(col).map_err(sql_err);
    Ok(ApiKeyRecord {
        id: get("id")?,
        name: get("name")?,
        owner: get_opt("owner")?,
        hash: digest(row, "hash")?,
        display_prefix: get("display_prefix")?,
        scopes: from_json(row, "scopes")?,
        metadata: from_json(row, "metadata")?,
        rate_limits: from_json(row, "rate_limits")?,
        quota: match row.try_get::<Option<&str>, _>("quota").map_err(sql_err)? {
            None => None,
            Some(_) => from_json(row, "quota")?,
        },
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(sql_err)?),
        expires_at: opt_time(row, "expires_at")?,
        revoked_at: opt_time(row, "revoked_at")?,
        rotated_from: get_opt("rotated_from")?,
        rotated_to: get_opt("rotated_to")?,
        last_used_at: opt_time(row, "last_used_at")?,
        last_used_ip: get_opt("last_used_ip")?,
        origin: get("origin")?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        seq: row.try_get("seq").map_err(sql_err)?,
        time: Timestamp::from_millis(row.try_get("time").map_err(sql_err)?),
        kind: row.try_get("kind").map_err(sql_err)?,
        outcome: row.try_get("outcome").map_err(sql_err)?,
        credential_id: row.try_get("credential_id").map_err(sql_err)?,
        body: row.try_get("body").map_err(sql_err)?,
        prev_hash: digest(row, "prev_hash")?,
        hash: digest(row, "hash")?,
    })
}

/// A key's JSON columns, encoded before binding (the builder's closures cannot fail).
struct KeyJson {
    scopes: String,
    metadata: String,
    rate_limits: String,
    quota: Option<String>,
}

impl KeyJson {
    fn encode(k: &ApiKeyRecord) -> Result<Self, StoreError> {
        Ok(KeyJson {
            scopes: to_json(&k.scopes)?,
            metadata: to_json(&k.metadata)?,
            rate_limits: to_json(&k.rate_limits)?,
            quota: k.quota.as_ref().map(to_json).transpose()?,
        })
    }
}

/// Inserts `keys` with multi-row statements on `conn` (the caller provides the transaction).
async fn insert_keys(conn: &mut SqliteConnection, keys: &[ApiKeyRecord]) -> Result<(), StoreError> {
    let mut qb = QueryBuilder::<Sqlite>::new(concat!("INSERT INTO api_keys (", key_cols!(), ") "));
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let json = chunk
            .iter()
            .map(KeyJson::encode)
            .collect::<Result<Vec<_>, _>>()?;
        qb.reset();
        qb.push_values(chunk.iter().zip(json), |mut b, (k, j)| {
            b.push_bind(k.id.as_str())
                .push_bind(k.name.as_str())
                .push_bind(k.owner.as_deref())
                .push_bind(&k.hash[..])
                .push_bind(k.display_prefix.as_str())
                .push_bind(j.scopes)
                .push_bind(j.metadata)
                .push_bind(j.rate_limits)
                .push_bind(j.quota)
                .push_bind(k.created_at.as_millis())
                .push_bind(k.expires_at.map(Timestamp::as_millis))
                .push_bind(k.revoked_at.map(Timestamp::as_millis))
                .push_bind(k.rotated_from.as_deref())
                .push_bind(k.rotated_to.as_deref())
                .push_bind(k.last_used_at.map(Timestamp::as_millis))
                .push_bind(k.last_used_ip.as_deref())
                .push_bind(k.origin.as_str());
        });
        qb.build().execute(&mut *conn).await.map_err(sql_err)?;
    }
    Ok(())
}

#[async_trait]
impl ApiKeys for SqliteStore {
    async fn insert(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut conn = self.writer.acquire().await.map_err(sql_err)?;
        insert_keys(&mut conn, std::slice::from_ref(key)).await
    }

    async fn insert_many(&self, keys: &[ApiKeyRecord]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        insert_keys(&mut tx, keys).await?;
        tx.commit().await.map_err(sql_err)
    }

    async fn find_by_hash(&self, hash: &Sha256Digest) -> Result<Option<ApiKeyRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE hash = ?1"
        ))
        .bind(&hash[..])
        .fetch_optional(&self.reader)
        .await
        .map_err(sql_err)?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn find(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await
        .map_err(sql_err)?
        .as_ref()
        .map(key_from_row)
        .transpose()
    }

    async fn list(
        &self,
        owner: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT ",
            key_cols!(),
            " FROM api_keys WHERE 1 = 1"
        ));
        if let Some(o) = owner {
            qb.push(" AND owner = ").push_bind(o);
        }
        if let Some(a) = after {
            qb.push(" AND id > ").push_bind(a);
        }
        qb.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
        qb.build()
            .fetch_all(&self.reader)
            .await
            .map_err(sql_err)?
            .iter()
            .map(key_from_row)
            .collect()
    }

    async fn revoke(&self, id: &str, at: Timestamp) -> Result<ApiKeyRecord, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET revoked_at = min(coalesce(revoked_at, ?2), ?2) WHERE id = ?1 \
             RETURNING ",
            key_cols!()
        ))
        .bind(id)
        .bind(at.as_millis())
        .fetch_optional(&self.writer)
        .await
        .map_err(sql_err)?
        .ok_or(StoreError::NotFound)?;
        key_from_row(&row)
    }

    async fn rotate(
        &self,
        old_id: &str,
        new: &ApiKeyRecord,
        old_expires_at: Timestamp,
    ) -> Result<ApiKeyRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let closed: i64 = sqlx::query_scalar(
            "SELECT rotated_to IS NOT NULL OR revoked_at IS NOT NULL FROM api_keys WHERE id = ?1",
        )
        .bind(old_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql_err)?
        .ok_or(StoreError::NotFound)?;
        if closed != 0 {
            return Err(StoreError::Conflict("api key already rotated or revoked"));
        }
        insert_keys(&mut tx, std::slice::from_ref(new)).await?;
        let row = sqlx::query(concat!(
            "UPDATE api_keys SET rotated_to = ?2, expires_at = min(coalesce(expires_at, ?3), ?3) \
             WHERE id = ?1 RETURNING ",
            key_cols!()
        ))
        .bind(old_id)
        .bind(new.id.as_str())
        .bind(old_expires_at.as_millis())
        .fetch_one(&mut *tx)
        .await
        .map_err(sql_err)?;
        let old = key_from_row(&row)?;
        tx.commit().await.map_err(sql_err)?;
        Ok(old)
    }

    async fn record_usage(&self, usage: &[KeyUsage]) -> Result<(), StoreError> {
        if usage.is_empty() {
            return Ok(());
        }
        // The last entry per key wins (an UPDATE … FROM with duplicate matches would pick
        // an arbitrary one).
        let mut latest: HashMap<&str, &KeyUsage> = HashMap::with_capacity(usage.len());
        for u in usage {
            latest.insert(u.key_id.as_str(), u);
        }
        let latest: Vec<&KeyUsage> = latest.into_values().collect();

        let mut tx = self.begin_write().await?;
        let mut qb = QueryBuilder::<Sqlite>::new(
            "UPDATE api_keys SET last_used_at = u.column2, last_used_ip = u.column3, \
             quota_window = u.column4, quota_used = u.column5 FROM (",
        );
        for chunk in latest.chunks(ROWS_PER_STATEMENT) {
            qb.reset();
            qb.push_values(chunk, |mut b, u| {
                b.push_bind(u.key_id.as_str())
                    .push_bind(u.last_used_at.as_millis())
                    .push_bind(u.last_used_ip.as_str())
                    .push_bind(u.quota_window)
                    .push_bind(i64::try_from(u.quota_used).unwrap_or(i64::MAX));
            });
            qb.push(") AS u WHERE api_keys.id = u.column1");
            qb.build().execute(&mut *tx).await.map_err(sql_err)?;
        }
        tx.commit().await.map_err(sql_err)
    }

    async fn quota_state(&self, id: &str) -> Result<QuotaState, StoreError> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT quota_window, quota_used FROM api_keys WHERE id = ?1")
                .bind(id)
                .fetch_optional(&self.reader)
                .await
                .map_err(sql_err)?;
        match row {
            None => Ok(QuotaState::default()),
            Some((window, used)) => Ok(QuotaState {
                window,
                used: u64::try_from(used)
                    .map_err(|_| StoreError::Corrupt("negative quota_used".into()))?,
            }),
        }
    }

    async fn remember_ip(&self, key_id: &str, ip: &str, at: Timestamp) -> Result<bool, StoreError> {
        // The common case (a known address) is a read; only new pairs take the write lock.
        let known = sqlx::query("SELECT 1 FROM api_key_ips WHERE key_id = ?1 AND ip = ?2")
            .bind(key_id)
            .bind(ip)
            .fetch_optional(&self.reader)
            .await
            .map_err(sql_err)?
            .is_some();
        if known {
            return Ok(false);
        }
        // Unknown key ids insert nothing (and report `false`) rather than break the foreign key.
        let done = sqlx::query(
            "INSERT OR IGNORE INTO api_key_ips (key_id, ip, first_seen) \
             SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM api_keys WHERE id = ?1)",
        )
        .bind(key_id)
        .bind(ip)
        .bind(at.as_millis())
        .execute(&self.writer)
        .await
        .map_err(sql_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM api_keys")
            .fetch_one(&self.reader)
            .await
            .map_err(sql_err)?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt("negative count".into()))
    }
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn append(&self, events: &[StoredEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        // Like the memory store: every seq must be above the stored head and increasing.
        let head: Option<i64> = sqlx::query_scalar("SELECT max(seq) FROM audit_events")
            .fetch_one(&mut *tx)
            .await
            .map_err(sql_err)?;
        let mut next = head.map_or(1, |h| h.saturating_add(1));
        for e in events {
            if e.seq < next {
                return Err(StoreError::Conflict("audit seq exists"));
            }
            next = e.seq.saturating_add(1);
        }
        let mut qb =
            QueryBuilder::<Sqlite>::new(concat!("INSERT INTO audit_events (", event_cols!(), ") "));
        // Appends run at request rate with batches of every size; statements of a few fixed
        // sizes stay in the prepared-statement cache instead of being parsed anew each time.
        let mut rest = events;
        while !rest.is_empty() {
            let n = APPEND_CHUNKS
                .iter()
                .copied()
                .find(|&c| c <= rest.len())
                .unwrap_or(1);
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            qb.reset();
            qb.push_values(chunk, |mut b, e| {
                b.push_bind(e.seq)
                    .push_bind(e.time.as_millis())
                    .push_bind(e.kind.as_str())
                    .push_bind(e.outcome.as_str())
                    .push_bind(e.credential_id.as_deref())
                    .push_bind(e.body.as_str())
                    .push_bind(&e.prev_hash[..])
                    .push_bind(&e.hash[..]);
            });
            qb.build().execute(&mut *tx).await.map_err(sql_err)?;
        }
        tx.commit().await.map_err(sql_err)
    }

    async fn head(&self) -> Result<Option<(i64, Sha256Digest)>, StoreError> {
        sqlx::query("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.reader)
            .await
            .map_err(sql_err)?
            .map(|row| Ok((row.try_get("seq").map_err(sql_err)?, digest(&row, "hash")?)))
            .transpose()
    }

    async fn query(&self, q: &AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(concat!(
            "SELECT ",
            event_cols!(),
            " FROM audit_events WHERE 1 = 1"
        ));
        if let Some(b) = q.before_seq {
            qb.push(" AND seq < ").push_bind(b);
        }
        if let Some(k) = &q.kind {
            qb.push(" AND kind = ").push_bind(k.as_str());
        }
        if let Some(o) = &q.outcome {
            qb.push(" AND outcome = ").push_bind(o.as_str());
        }
        if let Some(c) = &q.credential_id {
            qb.push(" AND credential_id = ").push_bind(c.as_str());
        }
        if let Some(s) = q.since {
            qb.push(" AND time >= ").push_bind(s.as_millis());
        }
        qb.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(i64::from(q.limit.clamp(1, MAX_QUERY_LIMIT)));
        qb.build()
            .fetch_all(&self.reader)
            .await
            .map_err(sql_err)?
            .iter()
            .map(event_from_row)
            .collect()
    }

    async fn scan(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            event_cols!(),
            " FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await
        .map_err(sql_err)?
        .iter()
        .map(event_from_row)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use portcullis_core::audit::GENESIS;

    use super::*;
    use crate::conformance::{sample_event, sample_key};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            loop {
                let dir = std::env::temp_dir().join(format!(
                    "portcullis-sqlite-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                // `create_dir` fails on a leftover from an earlier run: take the next name.
                match std::fs::create_dir(&dir) {
                    Ok(()) => return TempDir(dir),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => panic!("temp dir: {e}"),
                }
            }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn sqlite_file_store_passes_the_conformance_suite() {
        let dir = TempDir::new();
        let n = AtomicUsize::new(0);
        crate::conformance::durable_suite(|| {
            let path = dir
                .0
                .join(format!("db{}.sqlite", n.fetch_add(1, Ordering::Relaxed)));
            async move { SqliteStore::open(&path).await.unwrap() }
        })
        .await;
    }

    #[tokio::test]
    async fn sqlite_memory_store_passes_the_conformance_suite() {
        crate::conformance::durable_suite(|| async {
            SqliteStore::open_in_memory().await.unwrap()
        })
        .await;
    }

    #[tokio::test]
    async fn writes_survive_a_reopen() {
        let dir = TempDir::new();
        let path = dir.0.join("db.sqlite");
        let e1 = sample_event(1, GENESIS, "api_key.created", "ok", Some("key_001"));
        {
            let s = SqliteStore::open(&path).await.unwrap();
            s.insert(&sample_key(1)).await.unwrap();
            s.revoke("key_001", Timestamp::from_secs(5)).await.unwrap();
            s.append(std::slice::from_ref(&e1)).await.unwrap();
            assert!(s
                .remember_ip("key_001", "10.0.0.1", Timestamp::from_secs(6))
                .await
                .unwrap());
            s.close().await;
        }
        {
            // Dropped without close: the data is in the WAL, which the reopen replays.
            let s = SqliteStore::open(&path).await.unwrap();
            s.insert(&sample_key(2)).await.unwrap();
        }
        let s = SqliteStore::open(&path).await.unwrap();
        let k = s.find("key_001").await.unwrap().unwrap();
        assert_eq!(k.revoked_at, Some(Timestamp::from_secs(5)));
        assert!(s.find("key_002").await.unwrap().is_some());
        assert_eq!(s.count().await.unwrap(), 2);
        assert_eq!(s.head().await.unwrap(), Some((1, e1.hash)));
        assert!(!s
            .remember_ip("key_001", "10.0.0.1", Timestamp::from_secs(7))
            .await
            .unwrap());
        let e2 = sample_event(2, e1.hash, "auth.decision", "allow", None);
        s.append(&[e2]).await.unwrap();
        assert_eq!(s.scan(0, 10).await.unwrap().len(), 2);
    }

    const KILL9_DB: &str = "PORTCULLIS_SQLITE_KILL9_DB";

    /// The child half of `acknowledged_writes_survive_kill_9`: writes, reports, then waits to
    /// be killed. Does nothing unless the parent set the database path.
    #[tokio::test]
    #[ignore = "run by acknowledged_writes_survive_kill_9"]
    async fn kill9_child() {
        let Some(path) = std::env::var_os(KILL9_DB) else {
            return;
        };
        let s = SqliteStore::open(Path::new(&path)).await.unwrap();
        s.insert(&sample_key(1)).await.unwrap();
        s.append(&[sample_event(1, GENESIS, "k", "ok", None)])
            .await
            .unwrap();
        s.record_usage(&[KeyUsage {
            key_id: "key_001".into(),
            last_used_at: Timestamp::from_secs(9),
            last_used_ip: "10.0.0.9".into(),
            quota_window: 4,
            quota_used: 5,
        }])
        .await
        .unwrap();
        println!("WRITTEN");
        std::thread::sleep(Duration::from_secs(60));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn acknowledged_writes_survive_kill_9() {
        use std::io::BufRead;
        let dir = TempDir::new();
        let path = dir.0.join("db.sqlite");
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sqlite::tests::kill9_child",
                "--ignored",
                "--nocapture",
            ])
            .env(KILL9_DB, &path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let written = std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("WRITTEN"));
        child.kill().unwrap(); // SIGKILL: no destructors, no checkpoint
        child.wait().unwrap();
        assert!(written, "the child acknowledged its writes");

        let s = SqliteStore::open(&path).await.unwrap();
        let k = s.find("key_001").await.unwrap().unwrap();
        assert_eq!(k.last_used_ip.as_deref(), Some("10.0.0.9"));
        assert_eq!(s.quota_state("key_001").await.unwrap().used, 5);
        assert_eq!(s.head().await.unwrap().map(|h| h.0), Some(1));
    }

    #[tokio::test]
    async fn pragmas_are_in_effect_on_every_connection() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.0.join("db.sqlite")).await.unwrap();
        for pool in [&s.writer, &s.reader] {
            let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(sync, 2, "synchronous=FULL");
            let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(fk, 1);
            let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(busy, 5000);
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn database_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new();
        let path = dir.0.join("db.sqlite");
        let s = SqliteStore::open(&path).await.unwrap();
        s.insert(&sample_key(1)).await.unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{suffix}");
        }
    }

    #[tokio::test]
    async fn batches_larger_than_one_statement() {
        let s = SqliteStore::open_in_memory().await.unwrap();
        let keys: Vec<ApiKeyRecord> = (0..2500u32)
            .map(|i| {
                let mut k = sample_key(0);
                k.id = format!("key_{i:06}");
                k.hash[..4].copy_from_slice(&i.to_be_bytes());
                k
            })
            .collect();
        s.insert_many(&keys).await.unwrap();
        assert_eq!(s.count().await.unwrap(), 2500);

        // A clash in the last chunk rolls back the earlier chunks.
        let mut clash: Vec<ApiKeyRecord> = keys
            .iter()
            .map(|k| {
                let mut k = k.clone();
                k.id.push('x');
                k.hash[31] = 1;
                k
            })
            .collect();
        clash[2400].hash = keys[0].hash;
        assert!(matches!(
            s.insert_many(&clash).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.count().await.unwrap(), 2500);

        let usage: Vec<KeyUsage> = (0..2500u32)
            .map(|i| KeyUsage {
                key_id: format!("key_{i:06}"),
                last_used_at: Timestamp::from_secs(i64::from(i)),
                last_used_ip: "10.0.0.1".into(),
                quota_window: 1,
                quota_used: u64::from(i),
            })
            .chain(std::iter::once(KeyUsage {
                key_id: "key_000007".into(),
                last_used_at: Timestamp::from_secs(99_999),
                last_used_ip: "10.0.0.2".into(),
                quota_window: 2,
                quota_used: 1,
            }))
            .collect();
        s.record_usage(&usage).await.unwrap();
        assert_eq!(s.quota_state("key_002000").await.unwrap().used, 2000);
        let k7 = s.find("key_000007").await.unwrap().unwrap();
        assert_eq!(
            k7.last_used_ip.as_deref(),
            Some("10.0.0.2"),
            "last entry wins"
        );
        assert_eq!(
            s.quota_state("key_000007").await.unwrap(),
            QuotaState { window: 2, used: 1 }
        );

        let mut prev = GENESIS;
        let events: Vec<StoredEvent> = (1..=2500)
            .map(|seq| {
                let e = sample_event(seq, prev, "auth.decision", "allow", None);
                prev = e.hash;
                e
            })
            .collect();
        s.append(&events).await.unwrap();
        assert_eq!(s.head().await.unwrap(), Some((2500, prev)));
        let newest = s
            .query(&AuditQuery {
                limit: 5000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(newest.len(), 1000, "query limit is capped");
        assert_eq!(newest[0].seq, 2500);
        let zero = s.query(&AuditQuery::default()).await.unwrap();
        assert_eq!(zero.len(), 1, "limit 0 reads as 1");
    }

    #[tokio::test]
    async fn append_refuses_seq_at_or_below_the_head() {
        let s = SqliteStore::open_in_memory().await.unwrap();
        let e1 = sample_event(1, GENESIS, "k", "ok", None);
        let e3 = sample_event(3, e1.hash, "k", "ok", None);
        s.append(&[e1.clone(), e3.clone()]).await.unwrap();
        let e2 = sample_event(2, e1.hash, "k", "ok", None);
        assert!(matches!(
            s.append(&[e2]).await,
            Err(StoreError::Conflict(_))
        ));
        let e4 = sample_event(4, e3.hash, "k", "ok", None);
        assert!(
            matches!(
                s.append(&[e4.clone(), e4]).await,
                Err(StoreError::Conflict(_))
            ),
            "a batch must increase"
        );
        assert_eq!(s.head().await.unwrap(), Some((3, e3.hash)));
    }

    #[tokio::test]
    async fn unique_violations_name_the_clash() {
        let s = SqliteStore::open_in_memory().await.unwrap();
        let k = sample_key(1);
        s.insert(&k).await.unwrap();
        let same_id = ApiKeyRecord {
            hash: [7; 32],
            ..k.clone()
        };
        assert!(matches!(
            s.insert(&same_id).await,
            Err(StoreError::Conflict("api key id exists"))
        ));
        let same_hash = ApiKeyRecord {
            id: "key_x".into(),
            ..k.clone()
        };
        assert!(matches!(
            s.insert(&same_hash).await,
            Err(StoreError::Conflict("api key hash exists"))
        ));
        // `remember_ip` for a key that does not exist stores nothing.
        assert!(!s
            .remember_ip("key_nope", "10.0.0.1", Timestamp::EPOCH)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn corrupt_rows_are_reported_as_corrupt() {
        let s = SqliteStore::open_in_memory().await.unwrap();
        s.insert(&sample_key(1)).await.unwrap();
        sqlx::query("UPDATE api_keys SET scopes = 'not json' WHERE id = 'key_001'")
            .execute(&s.writer)
            .await
            .unwrap();
        assert!(matches!(
            s.find("key_001").await,
            Err(StoreError::Corrupt(_))
        ));
    }

    /// Loads 1,000,000 keys in one `insert_many` (run with `--ignored --nocapture`).
    #[tokio::test]
    #[ignore = "slow: a million-key import"]
    async fn million_key_import() {
        let dir = TempDir::new();
        let s = SqliteStore::open(&dir.0.join("db.sqlite")).await.unwrap();
        let keys: Vec<ApiKeyRecord> = (0..1_000_000u32)
            .map(|i| {
                let mut k = sample_key(0);
                k.id = format!("key_{i:08}");
                k.hash = portcullis_core::crypto::sha256(&i.to_be_bytes());
                k
            })
            .collect();
        let t = std::time::Instant::now();
        s.insert_many(&keys).await.unwrap();
        eprintln!("insert_many(1M): {:?}", t.elapsed());
        assert_eq!(s.count().await.unwrap(), 1_000_000);
        let t = std::time::Instant::now();
        for k in keys.iter().step_by(1000) {
            assert!(s.find_by_hash(&k.hash).await.unwrap().is_some());
        }
        eprintln!("1000 find_by_hash: {:?}", t.elapsed());
    }
}
