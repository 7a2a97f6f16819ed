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

mod nonce_log;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use portcullis_core::crypto::{unhex, Sha256Digest};
use portcullis_core::Timestamp;
use serde::de::DeserializeOwned;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool, Transaction};

use crate::{
    audit_block, check_next_seq, check_run, ApiKeyRecord, ApiKeys, AuditLog, AuditQuery,
    ClientRecord, KeyPatch, KeyUsage, OAuthClients, Pruned, QuotaState, Retirement, Sealed,
    SigningKeyRecord, SigningKeys, StoreError, StoredEvent,
};
use crate::{hmac_invalid, HmacCredentialRecord, HmacCredentials, Nonces, RevokedTokens};
use crate::{
    Attempt, AttemptNext, DeliveryStatus, WebhookDeliveryRecord, WebhookEndpointRecord, Webhooks,
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

/// API keys and the audit trail in SQLite.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    /// One connection: every write goes through it.
    writer: SqlitePool,
    /// Reads. For in-memory databases this is the writer pool itself.
    reader: SqlitePool,
    /// Nonce claims, in memory and appended to a log file beside the database.
    nonces: nonce_log::NonceLog,
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
        // Spent nonces are not in the database: see `nonce_log`.
        let nonces = nonce_log::NonceLog::open(&path, &writer).await?;
        Ok(SqliteStore {
            writer,
            reader,
            nonces,
        })
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
            nonces: nonce_log::NonceLog::in_memory(),
            writer: pool.clone(),
            reader: pool,
        })
    }

    /// Closes every connection (the last one checkpoints the WAL). Later calls fail.
    pub async fn close(&self) {
        self.nonces.close();
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Runs `sql` (a `DELETE … WHERE expires_at <= ?1`) at `now`; how many rows went.
    async fn delete_expired(&self, sql: &'static str, now: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query(sql)
            .bind(now.as_millis())
            .execute(&self.writer)
            .await
            .map_err(sql_err)?;
        Ok(done.rows_affected())
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
            } else if m.contains("audit_blocks.first_seq") {
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
    // Make the new directory entry durable too.
    sync_dir(&dir_of(path));
    Ok(true)
}

/// The directory `path` is in (`.` for a bare file name).
fn dir_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Makes `dir`'s entries durable (best effort: not every platform opens a directory for
/// syncing).
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
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

    async fn update(&self, id: &str, patch: &KeyPatch) -> Result<ApiKeyRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let (revoked, rotated): (i64, i64) = sqlx::query_as(
            "SELECT revoked_at IS NOT NULL, rotated_to IS NOT NULL FROM api_keys WHERE id = ?1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql_err)?
        .ok_or(StoreError::NotFound)?;
        if revoked != 0 {
            return Err(StoreError::Conflict(crate::error::conflict::KEY_REVOKED));
        }
        if rotated != 0 && patch.expires_at.is_some() {
            return Err(StoreError::Conflict(crate::error::conflict::KEY_ROTATED));
        }
        // Only the columns the patch names are written: a concurrent patch of others stays.
        let mut qb = QueryBuilder::<Sqlite>::new("UPDATE api_keys SET id = id");
        if let Some(v) = &patch.name {
            qb.push(", name = ").push_bind(v.as_str());
        }
        if let Some(v) = &patch.owner {
            qb.push(", owner = ").push_bind(v.as_deref());
        }
        if let Some(v) = &patch.scopes {
            qb.push(", scopes = ").push_bind(to_json(v)?);
        }
        if let Some(v) = &patch.metadata {
            qb.push(", metadata = ").push_bind(to_json(v)?);
        }
        if let Some(v) = &patch.rate_limits {
            qb.push(", rate_limits = ").push_bind(to_json(v)?);
        }
        if let Some(v) = &patch.quota {
            qb.push(", quota = ")
                .push_bind(v.as_ref().map(to_json).transpose()?);
        }
        if let Some(v) = patch.expires_at {
            qb.push(", expires_at = ")
                .push_bind(v.map(Timestamp::as_millis));
        }
        qb.push(" WHERE id = ")
            .push_bind(id)
            .push(concat!(" RETURNING ", key_cols!()));
        let row = qb.build().fetch_one(&mut *tx).await.map_err(sql_err)?;
        let key = key_from_row(&row)?;
        tx.commit().await.map_err(sql_err)?;
        Ok(key)
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
            // SET expressions see the row as it was: an older report keeps the newer use.
            "UPDATE api_keys SET \
             last_used_ip = CASE WHEN last_used_at IS NULL OR last_used_at <= u.column2 \
                            THEN u.column3 ELSE last_used_ip END, \
             last_used_at = max(coalesce(last_used_at, u.column2), u.column2), \
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

/// The columns of a client record.
macro_rules! client_cols {
    () => {
        "id, name, confidential, grant_types, scopes, audiences, redirect_uris, auth_method, \
         token_lifetime_s, secret_hash, created_at, secret_set_at, jwks"
    };
}

fn client_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<ClientRecord, StoreError> {
    let list = |c: &str| -> Result<Vec<String>, StoreError> {
        let text: String = r.try_get(c).map_err(sql_err)?;
        serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("client {c}: {e}")))
    };
    let hash: Option<Vec<u8>> = r.try_get("secret_hash").map_err(sql_err)?;
    let secret_hash = match hash {
        None => None,
        Some(h) => Some(
            <Sha256Digest>::try_from(h.as_slice())
                .map_err(|_| StoreError::Corrupt("client secret hash".into()))?,
        ),
    };
    let lifetime: Option<i64> = r.try_get("token_lifetime_s").map_err(sql_err)?;
    Ok(ClientRecord {
        id: r.try_get("id").map_err(sql_err)?,
        name: r.try_get("name").map_err(sql_err)?,
        confidential: r.try_get::<i64, _>("confidential").map_err(sql_err)? != 0,
        grant_types: list("grant_types")?,
        scopes: list("scopes")?,
        audiences: list("audiences")?,
        redirect_uris: list("redirect_uris")?,
        auth_method: r.try_get("auth_method").map_err(sql_err)?,
        token_lifetime_secs: lifetime.and_then(|l| u64::try_from(l).ok()),
        secret_hash,
        created_at: Timestamp::from_millis(r.try_get("created_at").map_err(sql_err)?),
        secret_set_at: r
            .try_get::<Option<i64>, _>("secret_set_at")
            .map_err(sql_err)?
            .map(Timestamp::from_millis),
        jwks: r.try_get("jwks").map_err(sql_err)?,
    })
}

fn json_list(v: &[String]) -> String {
    serde_json::Value::from(v.to_vec()).to_string()
}

#[async_trait]
impl RevokedTokens for SqliteStore {
    async fn revoke_token(&self, jti: &str, expires_at: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO revoked_tokens (jti, expires_at) VALUES (?1, ?2) \
             ON CONFLICT (jti) DO UPDATE SET expires_at = max(expires_at, excluded.expires_at)",
        )
        .bind(jti)
        .bind(expires_at.as_millis())
        .execute(&self.writer)
        .await
        .map_err(sql_err)?;
        Ok(())
    }

    async fn revoked_tokens(&self, now: Timestamp) -> Result<Vec<(String, Timestamp)>, StoreError> {
        let rows = sqlx::query(
            "SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > ?1 ORDER BY jti",
        )
        .bind(now.as_millis())
        .fetch_all(&self.reader)
        .await
        .map_err(sql_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("jti").map_err(sql_err)?,
                    Timestamp::from_millis(r.try_get("expires_at").map_err(sql_err)?),
                ))
            })
            .collect()
    }

    async fn delete_expired_revocations(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.delete_expired("DELETE FROM revoked_tokens WHERE expires_at <= ?1", now)
            .await
    }
}

#[async_trait]
impl Nonces for SqliteStore {
    async fn claim_nonce(
        &self,
        key: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        // In memory, and one `write` to the log (`nonce_log`): no commit, no hand-off.
        self.nonces
            .claim(key, expires_at.as_millis(), now.as_millis())
    }

    async fn delete_expired_nonces(&self, now: Timestamp) -> Result<u64, StoreError> {
        // A pass over every live key: not on a runtime thread.
        let nonces = self.nonces.clone();
        tokio::task::spawn_blocking(move || nonces.delete_expired(now.as_millis()))
            .await
            .map_err(|e| StoreError::Unavailable(format!("nonce log: {e}")))?
    }
}

#[async_trait]
impl OAuthClients for SqliteStore {
    async fn insert_client(&self, c: &ClientRecord) -> Result<(), StoreError> {
        sqlx::query(concat!(
            "INSERT INTO oauth_clients (",
            client_cols!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
        ))
        .bind(&c.id)
        .bind(&c.name)
        .bind(i64::from(c.confidential))
        .bind(json_list(&c.grant_types))
        .bind(json_list(&c.scopes))
        .bind(json_list(&c.audiences))
        .bind(json_list(&c.redirect_uris))
        .bind(&c.auth_method)
        .bind(
            c.token_lifetime_secs
                .map(|l| i64::try_from(l).unwrap_or(i64::MAX)),
        )
        .bind(c.secret_hash.as_ref().map(|h| h.to_vec()))
        .bind(c.created_at.as_millis())
        .bind(c.secret_set_at.map(Timestamp::as_millis))
        .bind(c.jwks.as_deref())
        .execute(&self.writer)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict("client exists")
            }
            _ => sql_err(e),
        })?;
        Ok(())
    }

    async fn find_client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            client_cols!(),
            " FROM oauth_clients WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await
        .map_err(sql_err)?
        .as_ref()
        .map(client_from_row)
        .transpose()
    }

    async fn list_clients(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ClientRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            client_cols!(),
            " FROM oauth_clients WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2"
        ))
        .bind(after)
        .bind(i64::from(limit.min(MAX_QUERY_LIMIT)))
        .fetch_all(&self.reader)
        .await
        .map_err(sql_err)?
        .iter()
        .map(client_from_row)
        .collect()
    }

    async fn set_client_secret(
        &self,
        id: &str,
        hash: &Sha256Digest,
        at: Timestamp,
    ) -> Result<ClientRecord, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE oauth_clients SET secret_hash = ?2, secret_set_at = ?3 WHERE id = ?1 \
             RETURNING ",
            client_cols!()
        ))
        .bind(id)
        .bind(&hash[..])
        .bind(at.as_millis())
        .fetch_optional(&self.writer)
        .await
        .map_err(sql_err)?
        .ok_or(StoreError::NotFound)?;
        client_from_row(&row)
    }

    async fn set_client_jwks(&self, id: &str, jwks: &str) -> Result<ClientRecord, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE oauth_clients SET jwks = ?2 WHERE id = ?1 RETURNING ",
            client_cols!()
        ))
        .bind(id)
        .bind(jwks)
        .fetch_optional(&self.writer)
        .await
        .map_err(sql_err)?
        .ok_or(StoreError::NotFound)?;
        client_from_row(&row)
    }

    async fn delete_client(&self, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM oauth_clients WHERE id = ?1")
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(sql_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }
}

/// The columns of an HMAC credential record.
macro_rules! hmac_cols {
    () => {
        "key_id, name, scopes, secret, previous_secret, previous_expires_at, public_key, \
         public_key_alg, created_at, rotated_at, revoked_at"
    };
}

fn hmac_from_row(r: &SqliteRow) -> Result<HmacCredentialRecord, StoreError> {
    Ok(HmacCredentialRecord {
        key_id: r.try_get("key_id").map_err(sql_err)?,
        name: r.try_get("name").map_err(sql_err)?,
        scopes: from_json(r, "scopes")?,
        secret: r.try_get("secret").map_err(sql_err)?,
        previous_secret: r.try_get("previous_secret").map_err(sql_err)?,
        previous_expires_at: opt_time(r, "previous_expires_at")?,
        public_key: r.try_get("public_key").map_err(sql_err)?,
        public_key_alg: r.try_get("public_key_alg").map_err(sql_err)?,
        created_at: Timestamp::from_millis(r.try_get("created_at").map_err(sql_err)?),
        rotated_at: opt_time(r, "rotated_at")?,
        revoked_at: opt_time(r, "revoked_at")?,
    })
}

#[async_trait]
impl HmacCredentials for SqliteStore {
    async fn insert_hmac(&self, c: &HmacCredentialRecord) -> Result<(), StoreError> {
        c.check()?;
        sqlx::query(concat!(
            "INSERT INTO hmac_credentials (",
            hmac_cols!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ))
        .bind(&c.key_id)
        .bind(&c.name)
        .bind(json_list(&c.scopes))
        .bind(c.secret.as_deref())
        .bind(c.previous_secret.as_deref())
        .bind(c.previous_expires_at.map(Timestamp::as_millis))
        .bind(c.public_key.as_deref())
        .bind(c.public_key_alg.as_deref())
        .bind(c.created_at.as_millis())
        .bind(c.rotated_at.map(Timestamp::as_millis))
        .bind(c.revoked_at.map(Timestamp::as_millis))
        .execute(&self.writer)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict("hmac credential exists")
            }
            _ => sql_err(e),
        })?;
        Ok(())
    }

    async fn find_hmac(&self, key_id: &str) -> Result<Option<HmacCredentialRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            hmac_cols!(),
            " FROM hmac_credentials WHERE key_id = ?1"
        ))
        .bind(key_id)
        .fetch_optional(&self.reader)
        .await
        .map_err(sql_err)?
        .as_ref()
        .map(hmac_from_row)
        .transpose()
    }

    async fn list_hmac(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<HmacCredentialRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            hmac_cols!(),
            " FROM hmac_credentials WHERE ?1 IS NULL OR key_id > ?1 ORDER BY key_id LIMIT ?2"
        ))
        .bind(after)
        .bind(i64::from(limit.min(MAX_QUERY_LIMIT)))
        .fetch_all(&self.reader)
        .await
        .map_err(sql_err)?
        .iter()
        .map(hmac_from_row)
        .collect()
    }

    async fn rotate_hmac(
        &self,
        key_id: &str,
        secret: &[u8],
        previous_expires_at: Timestamp,
        at: Timestamp,
    ) -> Result<HmacCredentialRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        // One statement moves the secrets: SET expressions read the row as it was, so the
        // secret a concurrent rotation just set becomes the previous one, never lost.
        let row = sqlx::query(concat!(
            "UPDATE hmac_credentials SET previous_secret = secret, previous_expires_at = ?3, \
             secret = ?2, rotated_at = ?4 \
             WHERE key_id = ?1 AND revoked_at IS NULL AND secret IS NOT NULL RETURNING ",
            hmac_cols!()
        ))
        .bind(key_id)
        .bind(secret)
        .bind(previous_expires_at.as_millis())
        .bind(at.as_millis())
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql_err)?;
        if let Some(row) = row {
            let c = hmac_from_row(&row)?;
            tx.commit().await.map_err(sql_err)?;
            return Ok(c);
        }
        // Nothing changed: why, read under the same write lock (dropping `tx` rolls back).
        let (revoked, no_secret): (i64, i64) = sqlx::query_as(
            "SELECT revoked_at IS NOT NULL, secret IS NULL FROM hmac_credentials \
             WHERE key_id = ?1",
        )
        .bind(key_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql_err)?
        .ok_or(StoreError::NotFound)?;
        Err(if revoked != 0 {
            StoreError::Invalid(hmac_invalid::REVOKED)
        } else if no_secret != 0 {
            StoreError::Invalid(hmac_invalid::NO_SECRET)
        } else {
            // The WHERE clause refused a row neither revoked nor without a secret: cannot be.
            StoreError::Corrupt("hmac credential refused rotation for no reason".into())
        })
    }

    async fn revoke_hmac(
        &self,
        key_id: &str,
        at: Timestamp,
    ) -> Result<HmacCredentialRecord, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE hmac_credentials SET revoked_at = coalesce(revoked_at, ?2) WHERE key_id = ?1 \
             RETURNING ",
            hmac_cols!()
        ))
        .bind(key_id)
        .bind(at.as_millis())
        .fetch_optional(&self.writer)
        .await
        .map_err(sql_err)?
        .ok_or(StoreError::NotFound)?;
        hmac_from_row(&row)
    }
}

/// The columns of a webhook endpoint record.
macro_rules! webhook_cols {
    () => {
        "id, url, description, events, secret, previous_secret, previous_expires_at, \
         created_at, rotated_at, disabled_at, disabled_reason"
    };
}

/// The columns of a webhook delivery record.
macro_rules! delivery_cols {
    () => {
        "id, endpoint_id, event_type, payload, status, attempts, next_attempt_at, \
         last_attempt_at, last_status, last_error, created_at, delivered_at"
    };
}

fn webhook_from_row(r: &SqliteRow) -> Result<WebhookEndpointRecord, StoreError> {
    Ok(WebhookEndpointRecord {
        id: r.try_get("id").map_err(sql_err)?,
        url: r.try_get("url").map_err(sql_err)?,
        description: r.try_get("description").map_err(sql_err)?,
        events: from_json(r, "events")?,
        secret: r.try_get("secret").map_err(sql_err)?,
        previous_secret: r.try_get("previous_secret").map_err(sql_err)?,
        previous_expires_at: opt_time(r, "previous_expires_at")?,
        created_at: Timestamp::from_millis(r.try_get("created_at").map_err(sql_err)?),
        rotated_at: opt_time(r, "rotated_at")?,
        disabled_at: opt_time(r, "disabled_at")?,
        disabled_reason: r.try_get("disabled_reason").map_err(sql_err)?,
    })
}

fn delivery_from_row(r: &SqliteRow) -> Result<WebhookDeliveryRecord, StoreError> {
    let status: &str = r.try_get("status").map_err(sql_err)?;
    let attempts: i64 = r.try_get("attempts").map_err(sql_err)?;
    let last_status: Option<i64> = r.try_get("last_status").map_err(sql_err)?;
    Ok(WebhookDeliveryRecord {
        id: r.try_get("id").map_err(sql_err)?,
        endpoint_id: r.try_get("endpoint_id").map_err(sql_err)?,
        event_type: r.try_get("event_type").map_err(sql_err)?,
        payload: r.try_get("payload").map_err(sql_err)?,
        status: DeliveryStatus::parse(status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown delivery status {status}")))?,
        attempts: u32::try_from(attempts)
            .map_err(|_| StoreError::Corrupt("delivery attempts out of range".into()))?,
        next_attempt_at: Timestamp::from_millis(r.try_get("next_attempt_at").map_err(sql_err)?),
        last_attempt_at: opt_time(r, "last_attempt_at")?,
        last_status: last_status
            .map(u16::try_from)
            .transpose()
            .map_err(|_| StoreError::Corrupt("delivery last_status out of range".into()))?,
        last_error: r.try_get("last_error").map_err(sql_err)?,
        created_at: Timestamp::from_millis(r.try_get("created_at").map_err(sql_err)?),
        delivered_at: opt_time(r, "delivered_at")?,
    })
}

#[async_trait]
impl Webhooks for SqliteStore {
    async fn insert_webhook(&self, e: &WebhookEndpointRecord) -> Result<(), StoreError> {
        e.check()?;
        sqlx::query(concat!(
            "INSERT INTO webhook_endpoints (",
            webhook_cols!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ))
        .bind(&e.id)
        .bind(&e.url)
        .bind(&e.description)
        .bind(json_list(&e.events))
        .bind(&e.secret[..])
        .bind(e.previous_secret.as_deref())
        .bind(e.previous_expires_at.map(Timestamp::as_millis))
        .bind(e.created_at.as_millis())
        .bind(e.rotated_at.map(Timestamp::as_millis))
        .bind(e.disabled_at.map(Timestamp::as_millis))
        .bind(e.disabled_reason.as_deref())
        .execute(&self.writer)
        .await
        .map_err(|err| match &err {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict("webhook endpoint exists")
            }
            _ => sql_err(err),
        })?;
        Ok(())
    }

    async fn find_webhook(&self, id: &str) -> Result<Option<WebhookEndpointRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            webhook_cols!(),
            " FROM webhook_endpoints WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await
        .map_err(sql_err)?
        .as_ref()
        .map(webhook_from_row)
        .transpose()
    }

    async fn list_webhooks(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookEndpointRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            webhook_cols!(),
            " FROM webhook_endpoints WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2"
        ))
        .bind(after)
        .bind(i64::from(limit.min(MAX_QUERY_LIMIT)))
        .fetch_all(&self.reader)
        .await
        .map_err(sql_err)?
        .iter()
        .map(webhook_from_row)
        .collect()
    }

    async fn rotate_webhook_secret(
        &self,
        id: &str,
        secret: &[u8],
        previous_expires_at: Timestamp,
        at: Timestamp,
    ) -> Result<WebhookEndpointRecord, StoreError> {
        // One statement: SET expressions read the row as it was, so a secret set by a
        // concurrent rotation becomes the previous one, never lost.
        let row = sqlx::query(concat!(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_expires_at = ?3, \
             secret = ?2, rotated_at = ?4 WHERE id = ?1 RETURNING ",
            webhook_cols!()
        ))
        .bind(id)
        .bind(secret)
        .bind(previous_expires_at.as_millis())
        .bind(at.as_millis())
        .fetch_optional(&self.writer)
        .await
        .map_err(sql_err)?
        .ok_or(StoreError::NotFound)?;
        webhook_from_row(&row)
    }

    async fn disable_webhook(
        &self,
        id: &str,
        at: Timestamp,
        reason: &str,
    ) -> Result<WebhookEndpointRecord, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(concat!(
            "UPDATE webhook_endpoints SET disabled_reason = CASE WHEN disabled_at IS NULL \
             THEN ?3 ELSE disabled_reason END, disabled_at = coalesce(disabled_at, ?2) \
             WHERE id = ?1 RETURNING ",
            webhook_cols!()
        ))
        .bind(id)
        .bind(at.as_millis())
        .bind(reason)
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql_err)?
        .ok_or(StoreError::NotFound)?;
        let e = webhook_from_row(&row)?;
        sqlx::query(
            "UPDATE webhook_deliveries SET status = 'failed', last_error = ?2 \
             WHERE endpoint_id = ?1 AND status = 'pending'",
        )
        .bind(id)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
        tx.commit().await.map_err(sql_err)?;
        Ok(e)
    }

    async fn delete_webhook(&self, id: &str) -> Result<(), StoreError> {
        // The deliveries go with it (ON DELETE CASCADE; foreign keys are on).
        let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = ?1")
            .bind(id)
            .execute(&self.writer)
            .await
            .map_err(sql_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn enqueue_deliveries(&self, d: &[WebhookDeliveryRecord]) -> Result<u64, StoreError> {
        if d.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let mut n = 0;
        for x in d {
            let done = sqlx::query(concat!(
                "INSERT INTO webhook_deliveries (",
                delivery_cols!(),
                ") SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12 \
                 WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = ?2)"
            ))
            .bind(&x.id)
            .bind(&x.endpoint_id)
            .bind(&x.event_type)
            .bind(&x.payload)
            .bind(x.status.as_str())
            .bind(i64::from(x.attempts))
            .bind(x.next_attempt_at.as_millis())
            .bind(x.last_attempt_at.map(Timestamp::as_millis))
            .bind(x.last_status.map(i64::from))
            .bind(x.last_error.as_deref())
            .bind(x.created_at.as_millis())
            .bind(x.delivered_at.map(Timestamp::as_millis))
            .execute(&mut *tx)
            .await
            .map_err(|err| match &err {
                sqlx::Error::Database(db) if db.is_unique_violation() => {
                    StoreError::Conflict("webhook delivery exists")
                }
                _ => sql_err(err),
            })?;
            n += done.rows_affected();
        }
        tx.commit().await.map_err(sql_err)?;
        Ok(n)
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDeliveryRecord>, StoreError> {
        // One statement: the claim and the lease are one atomic write.
        let mut v = sqlx::query(concat!(
            "UPDATE webhook_deliveries SET next_attempt_at = ?2 WHERE id IN (\
             SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ?1 \
             ORDER BY next_attempt_at, id LIMIT ?3) RETURNING ",
            delivery_cols!()
        ))
        .bind(now.as_millis())
        .bind(lease_until.as_millis())
        .bind(i64::from(limit.min(MAX_QUERY_LIMIT)))
        .fetch_all(&self.writer)
        .await
        .map_err(sql_err)?
        .iter()
        .map(delivery_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        // RETURNING gives no order; the lease erased the due time, so oldest enqueued first.
        v.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(v)
    }

    async fn record_attempt(&self, id: &str, a: &Attempt) -> Result<(), StoreError> {
        let (status, next, delivered) = match a.next {
            AttemptNext::Delivered => (DeliveryStatus::Delivered, None, Some(a.at)),
            AttemptNext::Failed => (DeliveryStatus::Failed, None, None),
            AttemptNext::RetryAt(t) => (DeliveryStatus::Pending, Some(t), None),
        };
        let done = sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = ?2, \
             last_status = ?3, last_error = ?4, status = ?5, \
             next_attempt_at = coalesce(?6, next_attempt_at), delivered_at = ?7 \
             WHERE id = ?1 AND status = 'pending'",
        )
        .bind(id)
        .bind(a.at.as_millis())
        .bind(a.status_code.map(i64::from))
        .bind(a.error.as_deref())
        .bind(status.as_str())
        .bind(next.map(Timestamp::as_millis))
        .bind(delivered.map(Timestamp::as_millis))
        .execute(&self.writer)
        .await
        .map_err(sql_err)?;
        if done.rows_affected() == 0 {
            let exists: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM webhook_deliveries WHERE id = ?1")
                    .bind(id)
                    .fetch_optional(&self.reader)
                    .await
                    .map_err(sql_err)?;
            if exists.is_none() {
                return Err(StoreError::NotFound);
            }
        }
        Ok(())
    }

    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookDeliveryRecord>, StoreError> {
        sqlx::query(concat!(
            "SELECT ",
            delivery_cols!(),
            " FROM webhook_deliveries WHERE endpoint_id = ?1 AND (?2 IS NULL OR \
             (created_at, id) < (SELECT created_at, id FROM webhook_deliveries WHERE id = ?2)) \
             ORDER BY created_at DESC, id DESC LIMIT ?3"
        ))
        .bind(endpoint_id)
        .bind(after)
        .bind(i64::from(limit.min(MAX_QUERY_LIMIT)))
        .fetch_all(&self.reader)
        .await
        .map_err(sql_err)?
        .iter()
        .map(delivery_from_row)
        .collect()
    }

    async fn prune_deliveries(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries \
             WHERE status <> 'pending' AND created_at < ?1 LIMIT ?2)",
        )
        .bind(before.as_millis())
        .bind(crate::memory::PRUNE_DELIVERIES_STEP as i64)
        .execute(&self.writer)
        .await
        .map_err(sql_err)?;
        Ok(done.rows_affected())
    }
}

#[async_trait]
impl SigningKeys for SqliteStore {
    async fn insert_signing_key(
        &self,
        key: &SigningKeyRecord,
        retire: Option<Retirement>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(r) = retire {
            sqlx::query(
                "UPDATE signing_keys SET retires_at = ?1, expires_at = ?2 \
                 WHERE retires_at IS NULL",
            )
            .bind(r.retires_at.as_millis())
            .bind(r.expires_at.as_millis())
            .execute(&mut *tx)
            .await
            .map_err(sql_err)?;
        }
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, private_sealed, public_jwk, created_at, \
             activates_at, retires_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(&key.kid)
        .bind(&key.alg)
        .bind(&key.private_sealed)
        .bind(&key.public_jwk)
        .bind(key.created_at.as_millis())
        .bind(key.activates_at.as_millis())
        .bind(key.retires_at.map(Timestamp::as_millis))
        .bind(key.expires_at.map(Timestamp::as_millis))
        .execute(&mut *tx)
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(d) if d.is_unique_violation() => {
                StoreError::Conflict("signing key exists")
            }
            _ => sql_err(e),
        })?;
        tx.commit().await.map_err(sql_err)
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT kid, alg, private_sealed, public_jwk, created_at, activates_at, retires_at, \
             expires_at FROM signing_keys ORDER BY activates_at, kid",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(sql_err)?;
        rows.iter()
            .map(|r| {
                let opt = |c: &str| -> Result<Option<Timestamp>, StoreError> {
                    Ok(r.try_get::<Option<i64>, _>(c)
                        .map_err(sql_err)?
                        .map(Timestamp::from_millis))
                };
                Ok(SigningKeyRecord {
                    kid: r.try_get("kid").map_err(sql_err)?,
                    alg: r.try_get("alg").map_err(sql_err)?,
                    private_sealed: r.try_get("private_sealed").map_err(sql_err)?,
                    public_jwk: r.try_get("public_jwk").map_err(sql_err)?,
                    created_at: Timestamp::from_millis(r.try_get("created_at").map_err(sql_err)?),
                    activates_at: Timestamp::from_millis(
                        r.try_get("activates_at").map_err(sql_err)?,
                    ),
                    retires_at: opt("retires_at")?,
                    expires_at: opt("expires_at")?,
                })
            })
            .collect()
    }

    async fn delete_expired_signing_keys(&self, now: Timestamp) -> Result<u64, StoreError> {
        self.delete_expired("DELETE FROM signing_keys WHERE expires_at <= ?1", now)
            .await
    }
}

#[async_trait]
impl AuditLog for SqliteStore {
    async fn append(&self, events: &[Sealed<'_>]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        // Encode first: a bad run of events fails the call before any lock is taken.
        let blocks = events
            .chunks(MAX_BLOCK_EVENTS)
            .map(audit_block::encode)
            .collect::<Result<Vec<_>, _>>()?;
        // The filter columns are tab-delimited sets: their values must not be empty or hold
        // a tab (checked once per distinct value, not per event).
        let field_ok = |v: &&str| !v.is_empty() && !v.contains('\t');
        if !blocks.iter().all(|b| {
            b.kinds.iter().all(field_ok)
                && b.outcomes.iter().all(field_ok)
                && b.credentials.iter().all(field_ok)
        }) {
            return Err(StoreError::Invalid(
                "audit kind, outcome and credential id must be non-empty without tabs",
            ));
        }
        // The whole run, across the blocks it is split into.
        check_run(events, events[0].seq)?;
        let mut tx = self.begin_write().await?;
        // Like the memory store: the run continues the stored head.
        let head: Option<i64> =
            sqlx::query_scalar("SELECT last_seq FROM audit_blocks ORDER BY first_seq DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql_err)?;
        check_next_seq(events[0].seq, head.map_or(1, |h| h.saturating_add(1)))?;
        for b in blocks {
            sqlx::query(
                "INSERT INTO audit_blocks (first_seq, last_seq, min_time, max_time, kinds, \
                 outcomes, credentials, events) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .bind(b.first_seq)
            .bind(b.last_seq)
            .bind(b.min_time)
            .bind(b.max_time)
            .bind(distinct_text(&b.kinds))
            .bind(distinct_text(&b.outcomes))
            .bind(distinct_text(&b.credentials))
            // By value: the statement takes the buffer instead of a copy of it.
            .bind(b.bytes)
            .execute(&mut *tx)
            .await
            .map_err(sql_err)?;
        }
        tx.commit().await.map_err(sql_err)
    }

    async fn head(&self) -> Result<Option<(i64, Sha256Digest)>, StoreError> {
        let events: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT events FROM audit_blocks ORDER BY first_seq DESC LIMIT 1")
                .fetch_optional(&self.reader)
                .await
                .map_err(sql_err)?;
        let Some(events) = events else {
            return Ok(None);
        };
        let last = decode_events(&events)?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("empty audit block".into()))?;
        Ok(Some((last.seq, last.hash)))
    }

    async fn query(&self, q: &AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let limit = q.limit.clamp(1, MAX_QUERY_LIMIT) as usize;
        let mut out = Vec::new();
        let mut below = q.before_seq.unwrap_or(i64::MAX);
        // Newest blocks first, a page at a time; the SQL filters only skip blocks that cannot
        // hold a match, the exact filter runs on the decoded events.
        loop {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "SELECT first_seq, events FROM audit_blocks WHERE first_seq < ",
            );
            qb.push_bind(below);
            for (col, v) in [
                ("kinds", &q.kind),
                ("outcomes", &q.outcome),
                ("credentials", &q.credential_id),
            ] {
                if let Some(v) = v {
                    qb.push(format_args!(" AND instr({col}, ")) // col is one of three literals
                        .push_bind(format!("\t{v}\t"))
                        .push(") > 0");
                }
            }
            if let Some(s) = q.since {
                qb.push(" AND max_time >= ").push_bind(s.as_millis());
            }
            qb.push(" ORDER BY first_seq DESC LIMIT ")
                .push_bind(BLOCKS_PER_PAGE);
            let rows = qb.build().fetch_all(&self.reader).await.map_err(sql_err)?;
            let Some(last) = rows.last() else {
                return Ok(out);
            };
            below = last.try_get("first_seq").map_err(sql_err)?;
            for row in &rows {
                let packed: &[u8] = row.try_get("events").map_err(sql_err)?;
                for e in decode_events(packed)?.into_iter().rev() {
                    if q.before_seq.is_none_or(|b| e.seq < b)
                        && q.kind.as_ref().is_none_or(|k| &e.kind == k)
                        && q.outcome.as_ref().is_none_or(|o| &e.outcome == o)
                        && q.credential_id
                            .as_ref()
                            .is_none_or(|c| e.credential_id.as_ref() == Some(c))
                        && q.since.is_none_or(|s| e.time >= s)
                    {
                        out.push(e);
                        if out.len() == limit {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    async fn scan(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let limit = limit as usize;
        let mut out = Vec::new();
        let mut from = after;
        while out.len() < limit {
            let rows = sqlx::query(
                "SELECT last_seq, events FROM audit_blocks WHERE last_seq > ?1 \
                 ORDER BY first_seq LIMIT ?2",
            )
            .bind(from)
            .bind(BLOCKS_PER_PAGE)
            .fetch_all(&self.reader)
            .await
            .map_err(sql_err)?;
            let Some(last) = rows.last() else {
                break;
            };
            from = last.try_get("last_seq").map_err(sql_err)?;
            for row in &rows {
                let packed: &[u8] = row.try_get("events").map_err(sql_err)?;
                out.extend(
                    decode_events(packed)?
                        .into_iter()
                        .filter(|e| e.seq > after)
                        .take(limit - out.len()),
                );
            }
        }
        Ok(out)
    }

    async fn prune(&self, before: Timestamp) -> Result<Option<Pruned>, StoreError> {
        let mut tx = self.begin_write().await?;
        // The oldest blocks, by seq (the primary key: no scan of the table), one more than a
        // call may remove, to see whether the last of them is the newest block.
        let rows = sqlx::query(
            "SELECT first_seq, last_seq, max_time FROM audit_blocks ORDER BY first_seq LIMIT ?1",
        )
        .bind(PRUNE_BLOCKS + 1)
        .fetch_all(&mut *tx)
        .await
        .map_err(sql_err)?;
        let mut removed: Option<(i64, i64)> = None;
        let mut events = 0u64;
        for (i, row) in rows.iter().enumerate() {
            let first: i64 = row.try_get("first_seq").map_err(sql_err)?;
            let last: i64 = row.try_get("last_seq").map_err(sql_err)?;
            let max_time: i64 = row.try_get("max_time").map_err(sql_err)?;
            // A block goes when all of it is older, never the one the head is in (the
            // newest: the last row when fewer than a call's limit plus one came back), and
            // only as part of a run from the oldest.
            let newest = i + 1 == rows.len() && (rows.len() as i64) <= PRUNE_BLOCKS;
            if i as i64 == PRUNE_BLOCKS || newest || max_time >= before.as_millis() {
                break;
            }
            removed = Some((first, last));
            events += u64::try_from(last - first + 1).unwrap_or(0);
        }
        let Some((first, last)) = removed else {
            return Ok(None);
        };
        // The anchor: the last removed event, read back from its block.
        let packed: Vec<u8> =
            sqlx::query_scalar("SELECT events FROM audit_blocks WHERE first_seq = ?1")
                .bind(first)
                .fetch_one(&mut *tx)
                .await
                .map_err(sql_err)?;
        let tail = decode_events(&packed)?
            .pop()
            .filter(|e| e.seq == last)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("audit block {first}: last seq is not {last}"))
            })?;
        sqlx::query("DELETE FROM audit_blocks WHERE first_seq <= ?1")
            .bind(first)
            .execute(&mut *tx)
            .await
            .map_err(sql_err)?;
        sqlx::query(
            "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?1, ?2) \
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        )
        .bind(tail.seq)
        .bind(&tail.hash[..])
        .execute(&mut *tx)
        .await
        .map_err(sql_err)?;
        tx.commit().await.map_err(sql_err)?;
        Ok(Some(Pruned {
            events,
            anchor: (tail.seq, tail.hash),
        }))
    }

    async fn anchor(&self) -> Result<Option<(i64, Sha256Digest)>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_anchor WHERE id = 1")
            .fetch_optional(&self.reader)
            .await
            .map_err(sql_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let seq: i64 = row.try_get("seq").map_err(sql_err)?;
        let hash: Vec<u8> = row.try_get("hash").map_err(sql_err)?;
        let hash = Sha256Digest::try_from(hash.as_slice())
            .map_err(|_| StoreError::Corrupt("audit anchor: hash is not 32 bytes".into()))?;
        Ok(Some((seq, hash)))
    }
}

/// Most blocks one [`AuditLog::prune`] call removes (each up to `MAX_BLOCK_EVENTS` events):
/// a short write transaction, so that the audit writer is never held up for long.
const PRUNE_BLOCKS: i64 = 64;

/// Events per stored block (one block per append call, split above this).
const MAX_BLOCK_EVENTS: usize = 4096;
/// Blocks read per query round trip.
const BLOCKS_PER_PAGE: i64 = 16;

/// A tab-delimited set (`"\ta\tb\t"`) for the `kinds`, `outcomes` and `credentials` columns,
/// which queries match with `instr(col, "\tvalue\t")` to skip blocks.
fn distinct_text(values: &[&str]) -> String {
    let mut text = String::with_capacity(1 + values.iter().map(|v| v.len() + 1).sum::<usize>());
    text.push('\t');
    for v in values {
        text.push_str(v);
        text.push('\t');
    }
    text
}

/// A stored block's events, in stored order: format 2 (`audit_block`, what is written
/// now) or format 1 (the earlier LZ4-compressed text lines, still read).
fn decode_events(stored: &[u8]) -> Result<Vec<StoredEvent>, StoreError> {
    if audit_block::is_block(stored) {
        audit_block::decode_stored(stored)
    } else {
        decode_block(&unpack_block_text(stored)?)
    }
}

/// Largest decompressed block accepted (a block of `MAX_BLOCK_EVENTS` admin events with big
/// details stays far below): a corrupt or forged length prefix cannot make us allocate more.
const MAX_BLOCK_TEXT: usize = 256 << 20;

/// The stored form of a block's event lines (the `events` column): their length as 4 bytes
/// little-endian, then an LZ4 block (`lz4_flex`). Public for forensic tools and tests.
pub fn pack_block_text(text: &str) -> Vec<u8> {
    let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(4 + text.len() / 3);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&lz4_flex::block::compress(text.as_bytes()));
    out
}

/// The inverse of [`pack_block_text`].
pub fn unpack_block_text(packed: &[u8]) -> Result<String, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("audit block: {what}"));
    let (len, data) = packed
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("too short"))?;
    let len = usize::try_from(u32::from_le_bytes(*len)).unwrap_or(usize::MAX);
    // LZ4 expands at most 255-fold: a larger claim is forged, and must not size an allocation.
    if len > MAX_BLOCK_TEXT || len > data.len().saturating_mul(255).saturating_add(16) {
        return Err(corrupt("length out of bounds"));
    }
    let bytes = lz4_flex::block::decompress(data, len).map_err(|_| corrupt("compression"))?;
    if bytes.len() != len {
        return Err(corrupt("length"));
    }
    String::from_utf8(bytes).map_err(|_| corrupt("not UTF-8"))
}

/// Decodes a block's `events` text, in stored order.
fn decode_block(text: &str) -> Result<Vec<StoredEvent>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("audit block: {what}"));
    let mut out: Vec<StoredEvent> = Vec::new();
    for line in text.split_terminator('\n') {
        let mut f = line.splitn(8, '\t');
        let mut next = |name: &str| f.next().ok_or_else(|| corrupt(name));
        let seq = next("seq")?.parse().map_err(|_| corrupt("seq"))?;
        let time = next("time")?.parse().map_err(|_| corrupt("time"))?;
        let kind = next("kind")?.to_owned().into();
        let outcome = next("outcome")?.to_owned().into();
        let credential_id = Some(next("credential_id")?)
            .filter(|c| !c.is_empty())
            .map(str::to_owned);
        let prev_hash = match (next("prev_hash")?, out.last()) {
            ("", Some(before)) => before.hash,
            (hex, _) => unhex(hex).ok_or_else(|| corrupt("prev_hash"))?,
        };
        let hash = unhex(next("hash")?).ok_or_else(|| corrupt("hash"))?;
        let body = next("body")?.to_owned();
        out.push(StoredEvent {
            seq,
            time: Timestamp::from_millis(time),
            kind,
            outcome,
            credential_id,
            body,
            prev_hash,
            hash,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use portcullis_core::audit::GENESIS;

    use super::*;
    use crate::audit_block::Record;
    use crate::conformance::{append, sample_event, sample_key};
    use portcullis_core::audit::chain_hash;
    use portcullis_core::crypto::hex;

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

    /// An append longer than a block is split; the blocks must meet like events do.
    #[tokio::test]
    async fn long_appends_split_into_blocks_that_follow_each_other() {
        let s = SqliteStore::open_in_memory().await.unwrap();
        let mut prev = GENESIS;
        let records: Vec<Record> = (1..=MAX_BLOCK_EVENTS as i64 + 10)
            .map(|seq| {
                let e = sample_event(seq, prev, "auth.decision", "allow", None);
                prev = e.hash;
                e
            })
            .collect();
        let mut broken = records.clone();
        broken[MAX_BLOCK_EVENTS].prev_hash = [9; 32];
        assert!(matches!(
            append(&s, &broken).await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(s.head().await.unwrap(), None, "nothing was stored");
        append(&s, &records).await.unwrap();
        assert_eq!(s.head().await.unwrap(), Some((records.len() as i64, prev)));
        let all = s.scan(0, 10_000).await.unwrap();
        assert_eq!(all.len(), records.len());
        let mut v = portcullis_core::audit::ChainVerifier::default();
        for e in &all {
            v.check(e.seq, e.body.as_bytes(), &e.prev_hash, &e.hash)
                .unwrap();
        }
    }

    /// A database written by an earlier version holds format-1 blocks: they are read, and the
    /// chain continues from them in format 2.
    #[tokio::test]
    async fn format_1_blocks_are_read_and_continued() {
        let s = SqliteStore::open_in_memory().await.unwrap();
        let mut text = String::new();
        let mut prev = GENESIS;
        for seq in 1..=2i64 {
            let body =
                format!(r#"{{"time":"t","kind":"api_key.created","outcome":"ok","n":{seq}}}"#);
            let hash = chain_hash(&prev, seq, body.as_bytes());
            let prev_hex = if seq == 1 { hex(&prev) } else { String::new() };
            text.push_str(&format!(
                "{seq}\t{}\tapi_key.created\tok\tkey_1\t{prev_hex}\t{}\t{body}\n",
                seq * 1000,
                hex(&hash)
            ));
            prev = hash;
        }
        sqlx::query(
            "INSERT INTO audit_blocks (first_seq, last_seq, min_time, max_time, kinds, \
             outcomes, credentials, events) VALUES (1, 2, 1000, 2000, ?1, ?2, ?3, ?4)",
        )
        .bind("\tapi_key.created\t")
        .bind("\tok\t")
        .bind("\tkey_1\t")
        .bind(pack_block_text(&text))
        .execute(&s.writer)
        .await
        .unwrap();
        assert_eq!(s.head().await.unwrap(), Some((2, prev)));
        let e3 = sample_event(3, prev, "auth.decision", "allow", Some("key_1"));
        append(&s, std::slice::from_ref(&e3)).await.unwrap();
        let all = s.scan(0, 10).await.unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[2], e3.sealed().to_stored());
        let mut v = portcullis_core::audit::ChainVerifier::default();
        for e in &all {
            v.check(e.seq, e.body.as_bytes(), &e.prev_hash, &e.hash)
                .unwrap();
        }
        let by_key = s
            .query(&AuditQuery {
                credential_id: Some("key_1".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(by_key.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 2, 1]);
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
            append(&s, std::slice::from_ref(&e1)).await.unwrap();
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
        append(&s, &[e2]).await.unwrap();
        assert_eq!(s.scan(0, 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn hmac_credentials_survive_a_reopen() {
        use crate::conformance::{sample_hmac, sample_sealed};
        let dir = TempDir::new();
        let path = dir.0.join("db.sqlite");
        let t = Timestamp::from_millis;
        let (rotated, revoked) = {
            let s = SqliteStore::open(&path).await.unwrap();
            s.insert_hmac(&sample_hmac("hk_a")).await.unwrap();
            s.insert_hmac(&sample_hmac("hk_b")).await.unwrap();
            let rotated = s
                .rotate_hmac("hk_a", &sample_sealed(2), t(60_000), t(10_000))
                .await
                .unwrap();
            let revoked = s.revoke_hmac("hk_b", t(5_000)).await.unwrap();
            s.close().await;
            (rotated, revoked)
        };
        {
            // Dropped without close: the data is in the WAL, which the reopen replays.
            let s = SqliteStore::open(&path).await.unwrap();
            s.insert_hmac(&sample_hmac("hk_c")).await.unwrap();
        }
        let s = SqliteStore::open(&path).await.unwrap();
        assert_eq!(s.find_hmac("hk_a").await.unwrap(), Some(rotated.clone()));
        assert_eq!(
            rotated.previous_secret,
            Some(sample_sealed(1)),
            "both sealed secrets, byte for byte"
        );
        assert_eq!(s.find_hmac("hk_b").await.unwrap(), Some(revoked));
        assert_eq!(
            s.find_hmac("hk_c").await.unwrap(),
            Some(sample_hmac("hk_c"))
        );
        assert_eq!(s.list_hmac(None, 10).await.unwrap().len(), 3);
    }

    /// The table's CHECKs hold even for a write that skips the store's own check.
    #[tokio::test]
    async fn hmac_table_refuses_both_or_neither_secret_and_public_key() {
        let s = SqliteStore::open_in_memory().await.unwrap();
        for (secret, public_key) in [(None, None), (Some(&b"s"[..]), Some("pem"))] {
            let done = sqlx::query(
                "INSERT INTO hmac_credentials (key_id, name, scopes, secret, public_key, \
                 public_key_alg, created_at) VALUES ('hk_x', 'x', '[]', ?1, ?2, ?3, 0)",
            )
            .bind(secret)
            .bind(public_key)
            .bind(public_key.map(|_| "ed25519"))
            .execute(&s.writer)
            .await;
            assert!(
                matches!(&done, Err(sqlx::Error::Database(d))
                    if d.kind() == sqlx::error::ErrorKind::CheckViolation),
                "{secret:?} {public_key:?}: {done:?}"
            );
        }
        assert_eq!(s.find_hmac("hk_x").await.unwrap(), None);
    }

    #[tokio::test]
    async fn corrupt_hmac_scopes_are_reported_as_corrupt() {
        let s = SqliteStore::open_in_memory().await.unwrap();
        s.insert_hmac(&crate::conformance::sample_hmac("hk_a"))
            .await
            .unwrap();
        sqlx::query("UPDATE hmac_credentials SET scopes = 'not json' WHERE key_id = 'hk_a'")
            .execute(&s.writer)
            .await
            .unwrap();
        assert!(matches!(
            s.find_hmac("hk_a").await,
            Err(StoreError::Corrupt(_))
        ));
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
        append(&s, &[sample_event(1, GENESIS, "k", "ok", None)])
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
        let events: Vec<Record> = (1..=2500)
            .map(|seq| {
                let e = sample_event(seq, prev, "auth.decision", "allow", None);
                prev = e.hash;
                e
            })
            .collect();
        append(&s, &events).await.unwrap();
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

    proptest::proptest! {
        /// Whatever the database holds (a damaged or forged block), reading it is an error at
        /// worst, never a panic.
        #[test]
        fn any_stored_block_decodes_or_errs(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            if let Ok(text) = unpack_block_text(&bytes) {
                let _ = decode_block(&text);
            }
            let _ = decode_block(&String::from_utf8_lossy(&bytes));
        }

        /// Format-1 lines (written by earlier versions) still read back exactly.
        #[test]
        fn format_1_lines_read_back(
            body in "[^\n]{0,64}",
            kind in "[a-z._]{1,16}",
            cred in proptest::option::of("[A-Za-z0-9_]{1,24}"),
            time in proptest::num::i64::ANY,
        ) {
            let (h1, h2) = ([3u8; 32], [4u8; 32]);
            let text = format!(
                "7\t{time}\t{kind}\tok\t{}\t{}\t{}\t{body}\n8\t{time}\t{kind}\tok\t\t\t{}\t{{}}\n",
                cred.as_deref().unwrap_or(""),
                hex(&[1; 32]),
                hex(&h1),
                hex(&h2),
            );
            let back = decode_events(&pack_block_text(&text)).unwrap();
            proptest::prop_assert_eq!(back.len(), 2);
            let e = &back[0];
            proptest::prop_assert_eq!((e.seq, e.time), (7, Timestamp::from_millis(time)));
            proptest::prop_assert_eq!((e.kind.as_ref(), e.outcome.as_ref()), (kind.as_str(), "ok"));
            proptest::prop_assert_eq!(e.credential_id.as_deref(), cred.as_deref());
            proptest::prop_assert_eq!(e.body.as_str(), body.as_str());
            proptest::prop_assert_eq!((e.prev_hash, e.hash), ([1; 32], h1));
            proptest::prop_assert_eq!((back[1].seq, back[1].prev_hash, back[1].hash), (8, h1, h2));
        }
    }

    #[test]
    fn packed_block_text_round_trips_and_refuses_corruption() {
        let text = "1\t2\tk\to\t\t\tab\t{}\n".repeat(100);
        let packed = pack_block_text(&text);
        assert!(packed.len() < text.len() / 4, "{} bytes", packed.len());
        assert_eq!(unpack_block_text(&packed).unwrap(), text);
        assert_eq!(unpack_block_text(&pack_block_text("")).unwrap(), "");
        let mut huge = packed.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut short = packed.clone();
        short[..4].copy_from_slice(&10u32.to_le_bytes());
        let truncated = &packed[..packed.len() / 2];
        for bad in [&b""[..], &b"\x01\x00"[..], &huge, &short, truncated] {
            assert!(matches!(
                unpack_block_text(bad),
                Err(StoreError::Corrupt(_))
            ));
        }
    }

    /// A prune call removes at most `PRUNE_BLOCKS` blocks; repeated calls go on to the
    /// newest block, which stays, and the anchor follows each step.
    #[tokio::test]
    async fn pruning_goes_a_bounded_step_at_a_time() {
        use crate::conformance::{append, sample_event};
        let s = SqliteStore::open_in_memory().await.unwrap();
        let blocks = PRUNE_BLOCKS + 6;
        let mut events = Vec::new();
        for seq in 1..=blocks {
            let prev = events.last().map_or(GENESIS, |e: &Record| e.hash);
            let e = sample_event(seq, prev, "auth.decision", "allow", None);
            append(&s, std::slice::from_ref(&e)).await.unwrap();
            events.push(e);
        }
        let later = Timestamp::from_millis(i64::MAX);
        let at = |seq: i64| (seq, events[seq as usize - 1].hash);
        let first = s.prune(later).await.unwrap().unwrap();
        assert_eq!(
            (first.events, first.anchor),
            (PRUNE_BLOCKS as u64, at(PRUNE_BLOCKS))
        );
        assert_eq!(s.anchor().await.unwrap(), Some(at(PRUNE_BLOCKS)));
        let second = s.prune(later).await.unwrap().unwrap();
        assert_eq!((second.events, second.anchor), (5, at(blocks - 1)));
        assert_eq!(
            s.prune(later).await.unwrap(),
            None,
            "the newest block stays"
        );
        let left = s.scan(0, 10).await.unwrap();
        assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), [blocks]);
    }

    #[tokio::test]
    async fn audit_blocks_page_filter_and_refuse_unstorable_events() {
        let s = SqliteStore::open_in_memory().await.unwrap();
        // 40 blocks of 1..=3 events: queries and scans cross many blocks and pages.
        let mut prev = GENESIS;
        let mut seq = 0;
        let mut all = Vec::new();
        for b in 0..40 {
            let batch: Vec<Record> = (0..=(b % 3))
                .map(|i| {
                    seq += 1;
                    let cred = (seq % 5 == 0).then_some("key_five");
                    let e = sample_event(
                        seq,
                        prev,
                        "auth.decision",
                        if i == 0 { "allow" } else { "deny" },
                        cred,
                    );
                    prev = e.hash;
                    e
                })
                .collect();
            append(&s, &batch).await.unwrap();
            all.extend(batch.iter().map(|r| r.sealed().to_stored()));
        }
        assert_eq!(s.head().await.unwrap(), Some((seq, prev)));
        assert_eq!(
            s.scan(0, 1000).await.unwrap(),
            all,
            "scan returns every event, in order"
        );
        assert_eq!(
            s.scan(7, 5).await.unwrap(),
            all[7..12].to_vec(),
            "scan pages inside blocks"
        );
        let fives = s
            .query(&AuditQuery {
                credential_id: Some("key_five".into()),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        let want: Vec<i64> = (1..=seq).rev().filter(|n| n % 5 == 0).collect();
        assert_eq!(fives.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
        let page = s
            .query(&AuditQuery {
                outcome: Some("deny".into()),
                before_seq: Some(seq - 3),
                limit: 7,
                ..Default::default()
            })
            .await
            .unwrap();
        let want: Vec<i64> = all
            .iter()
            .rev()
            .filter(|e| e.outcome == "deny" && e.seq < seq - 3)
            .take(7)
            .map(|e| e.seq)
            .collect();
        assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), want);
        assert!(s
            .query(&AuditQuery {
                kind: Some("nope".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap()
            .is_empty());

        // A block whose events do not chain keeps every prev_hash as given.
        // What the filter columns cannot hold is refused before anything is written.
        let bad = sample_event(seq + 1, prev, "a\tb", "allow", None);
        assert!(matches!(
            append(&s, &[bad]).await,
            Err(StoreError::Invalid(_))
        ));
        let bad = sample_event(seq + 1, prev, "k", "allow", Some(""));
        assert!(matches!(
            append(&s, &[bad]).await,
            Err(StoreError::Invalid(_))
        ));
        assert_eq!(s.head().await.unwrap(), Some((seq, prev)));
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
