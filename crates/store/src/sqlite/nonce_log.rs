//! Nonce claims: every signed request (and every DPoP proof, every client assertion) spends a
//! single-use value before it is let through, so this is on the path of each of them.
//!
//! The live keys are kept in memory (`crate::nonce_map`: a 16-byte digest of the key and its
//! expiry, in maps each behind its own lock) — one process owns the data directory (its
//! lock) — so a replay is refused without touching the disk. A claim
//! that wins is appended to a log file beside the store's database (`<name>-nonces.<n>.log`,
//! 24 bytes a key: the digest, the expiry in ms big-endian) by one `write` from the request's
//! own task, and answered only once that returned: the value is then in the kernel's page
//! cache, so it survives a crash of the process (kill -9) at once, and a power loss once the
//! file has been flushed to the disk, which a background thread does each second after new
//! claims. (No thread hand-off, no commit: a claim costs a map insert and one small `write`,
//! as an access log line does.)
//!
//! The log is cut into segments: a new one is started each [`SEGMENT_MS`] of claim time (or
//! after [`SEGMENT_BYTES`]), and a segment is deleted once every key in it has expired. At
//! open the segments are read back into the maps (a torn last record, which only a power loss
//! leaves, is cut off), and the spent values older versions kept — in the store's
//! `used_nonces` table, then in a `<name>-nonces.db` SQLite file — are moved into the log
//! once.
//!
//! Memory: about 30 bytes a live key with the maps' overhead; at most
//! [`crate::nonce_map::MAX_LIVE`] live keys, beyond which claims fail closed (`Unavailable`)
//! until some expire.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use sqlx::{Row, SqlitePool};

use super::{sql_err, sync_dir};
use crate::nonce_map::{digest, Claim, Digest, NonceMap};
use crate::StoreError;
/// A new segment is started after this much claim time (ms)…
const SEGMENT_MS: i64 = 60_000;
/// …or after this many bytes (a million keys).
const SEGMENT_BYTES: u64 = 24 * 1_000_000;
/// How often the claims made since are flushed to the disk.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Bytes a key takes in the log.
const ENTRY: usize = 24;

fn entry(d: &Digest, expires_at: i64) -> [u8; ENTRY] {
    let mut e = [0u8; ENTRY];
    e[..16].copy_from_slice(d);
    e[16..].copy_from_slice(&expires_at.to_be_bytes());
    e
}

/// The keys of a run of entries (a trailing partial entry is left out).
fn decode(entries: &[u8]) -> impl Iterator<Item = (Digest, i64)> + '_ {
    entries.chunks_exact(ENTRY).map(|e| {
        let mut d = [0u8; 16];
        d.copy_from_slice(&e[..16]);
        let mut x = [0u8; 8];
        x.copy_from_slice(&e[16..]);
        (d, i64::from_be_bytes(x))
    })
}

fn io_err(what: &str) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Unavailable(format!("nonce log: {what}: {e}"))
}

/// The store's handle on the claims (shared by its clones).
#[derive(Clone)]
pub(super) struct NonceLog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NonceLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonceLog")
            .field("map", &self.inner.map)
            .finish_non_exhaustive()
    }
}

struct Inner {
    map: NonceMap,
    /// `None` for an in-memory store.
    log: Option<Mutex<Segments>>,
    /// Claims were written since the last flush.
    dirty: AtomicBool,
    closed: AtomicBool,
}

/// The log's files: the one being written and the older ones, with the latest expiry in each.
struct Segments {
    dir: PathBuf,
    stem: String,
    current: Arc<File>,
    seq: u64,
    /// Claim time (ms) the current segment was started at (`None`: before its first claim).
    started: Option<i64>,
    len: u64,
    latest: i64,
    older: Vec<(u64, i64)>,
    /// Files written to that the flusher has not synced since (a segment just left), and
    /// whether the directory gained a file.
    unsynced: Vec<Arc<File>>,
    dir_changed: bool,
    /// A failed write may have left part of an entry that could not be cut off: the next
    /// append starts a new segment first (entries stay aligned; a trailing part is cut off
    /// when the segment is read back).
    torn: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding it leaves consistent data (each step is one write): go on.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Segments {
    fn path(dir: &Path, stem: &str, seq: u64) -> PathBuf {
        dir.join(format!("{stem}-nonces.{seq}.log"))
    }

    /// Starts segment `seq` (a new, private file).
    fn create(dir: &Path, stem: &str, seq: u64) -> Result<File, StoreError> {
        let mut options = std::fs::OpenOptions::new();
        options.append(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(Self::path(dir, stem, seq))
            .map_err(io_err("cannot create a segment"))
    }

    /// Moves on to a new segment if the current one is old or large enough (and not empty).
    fn rotate_if_due(&mut self, now: i64) -> Result<(), StoreError> {
        let started = *self.started.get_or_insert(now);
        if self.len == 0 || (now.saturating_sub(started) < SEGMENT_MS && self.len < SEGMENT_BYTES) {
            return Ok(());
        }
        self.rotate(Some(now))
    }

    /// Leaves the current segment for a new one, started at `started` (claim time, ms).
    fn rotate(&mut self, started: Option<i64>) -> Result<(), StoreError> {
        let next = Self::create(&self.dir, &self.stem, self.seq + 1)?;
        let old = std::mem::replace(&mut self.current, Arc::new(next));
        self.unsynced.push(old);
        self.older.push((self.seq, self.latest));
        self.seq += 1;
        self.started = started;
        self.len = 0;
        self.latest = i64::MIN;
        self.dir_changed = true;
        Ok(())
    }

    /// Appends the entries `bytes` of claims made at `now` (the latest expiring at `latest`).
    fn append(&mut self, bytes: &[u8], latest: i64, now: i64) -> Result<(), StoreError> {
        self.rotate_if_due(now)?;
        self.write(bytes, latest)
    }

    fn write(&mut self, bytes: &[u8], latest: i64) -> Result<(), StoreError> {
        if self.torn {
            self.rotate(self.started)?;
            self.torn = false;
        }
        if let Err(e) = (&*self.current).write_all(bytes) {
            // Part of it may be in the file (a full disk): cut it off, or leave the file.
            self.torn = self.current.set_len(self.len).is_err();
            return Err(io_err("cannot write")(e));
        }
        self.len += bytes.len() as u64;
        self.latest = self.latest.max(latest);
        Ok(())
    }
}

impl NonceLog {
    /// Opens the log beside the store's database `db` (reading its segments back and moving
    /// in what older versions kept, from `main`'s `used_nonces` and from `<name>-nonces.db`),
    /// and starts its flusher (a thread that ends with the last handle).
    pub(super) async fn open(db: &Path, main: &SqlitePool) -> Result<Self, StoreError> {
        let dir = super::dir_of(db);
        let stem = db
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "portcullis".into());
        let (loaded, last) = {
            let dir = dir.clone();
            let stem = stem.clone();
            tokio::task::spawn_blocking(move || read_segments(&dir, &stem))
                .await
                .map_err(|e| StoreError::Unavailable(format!("nonce log: {e}")))??
        };
        let seq = last + 1;
        let current = Segments::create(&dir, &stem, seq)?;
        let log = Segments {
            dir: dir.clone(),
            stem: stem.clone(),
            current: Arc::new(current),
            seq,
            started: None,
            len: 0,
            latest: i64::MIN,
            older: loaded.older,
            unsynced: Vec::new(),
            dir_changed: true,
            torn: false,
        };
        let this = Self::with(loaded.keys, Some(log));
        this.import(&dir, &stem, main).await?;
        this.flush()?;
        let weak = Arc::downgrade(&this.inner);
        std::thread::Builder::new()
            .name("portcullis-nonce-flush".into())
            .spawn(move || flusher(weak))
            .map_err(io_err("cannot start the flusher"))?;
        Ok(this)
    }

    /// Claims kept in memory only (an in-memory store).
    pub(super) fn in_memory() -> Self {
        Self::with(Vec::new(), None)
    }

    fn with(loaded: Vec<(Digest, i64)>, log: Option<Segments>) -> Self {
        let map = NonceMap::default();
        for (d, expires_at) in loaded {
            map.insert(d, expires_at);
        }
        Self {
            inner: Arc::new(Inner {
                map,
                log: log.map(Mutex::new),
                dirty: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Claims `key` until `expires_at` (ms) at `now` (ms): `true` if it was free, answered
    /// once the claim is in the log.
    pub(super) fn claim(&self, key: &str, expires_at: i64, now: i64) -> Result<bool, StoreError> {
        let inner = &*self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("the nonce log is closed".into()));
        }
        let d = digest(key);
        let Claim::Won(previous) = inner.map.claim(&d, expires_at, now)? else {
            return Ok(false);
        };
        let Some(log) = &inner.log else {
            return Ok(true);
        };
        let written = lock(log).append(&entry(&d, expires_at), expires_at, now);
        match written {
            Ok(()) => {
                inner.dirty.store(true, Ordering::Release);
                Ok(true)
            }
            Err(e) => {
                // Not in the log: not spent.
                inner.map.undo(&d, expires_at, previous);
                Err(e)
            }
        }
    }

    /// Forgets the keys expired at `now` (ms), a map at a time, and deletes the segments whose
    /// every key has; how many keys went.
    pub(super) fn delete_expired(&self, now: i64) -> Result<u64, StoreError> {
        let inner = &*self.inner;
        let gone = inner.map.delete_expired(now);
        if let Some(log) = &inner.log {
            let (dir, stem, expired) = {
                let mut s = lock(log);
                // An idle current segment is left once its keys have expired too.
                if s.len > 0 && s.latest <= now {
                    s.rotate(None)?;
                }
                let (expired, kept): (Vec<_>, Vec<_>) =
                    s.older.iter().partition(|(_, latest)| *latest <= now);
                s.older = kept;
                (s.dir.clone(), s.stem.clone(), expired)
            };
            for (seq, _) in expired {
                match std::fs::remove_file(Segments::path(&dir, &stem, seq)) {
                    Ok(()) => {}
                    // Removed by hand already: what was wanted.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("cannot delete an expired segment")(e)),
                }
            }
        }
        Ok(gone)
    }

    /// Flushes what was written to the disk (the files, and the directory if it gained one).
    fn flush(&self) -> Result<(), StoreError> {
        let Some(log) = &self.inner.log else {
            return Ok(());
        };
        self.inner.dirty.store(false, Ordering::Release);
        let (current, unsynced, dir) = {
            let mut s = lock(log);
            let dir = std::mem::take(&mut s.dir_changed).then(|| s.dir.clone());
            (s.current.clone(), std::mem::take(&mut s.unsynced), dir)
        };
        // Outside the lock: claims go on while the disk catches up.
        let result = (|| {
            for f in unsynced.iter().chain([&current]) {
                f.sync_data().map_err(io_err("cannot flush"))?;
            }
            if let Some(dir) = &dir {
                sync_dir(dir);
            }
            Ok(())
        })();
        if result.is_err() {
            // Try again on the next round.
            self.inner.dirty.store(true, Ordering::Release);
            let mut s = lock(log);
            s.unsynced.extend(unsynced);
            s.dir_changed |= dir.is_some();
        }
        result
    }

    /// Flushes, and refuses claims from then on.
    pub(super) fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        if let Err(e) = self.flush() {
            tracing::warn!(error = %e, "flushing the nonce log at close failed");
        }
    }

    /// Moves into the log the spent values older versions kept: the store's `used_nonces`
    /// table, then the `<stem>-nonces.db` file; each source is emptied only once its values
    /// are on the disk.
    async fn import(&self, dir: &Path, stem: &str, main: &SqlitePool) -> Result<(), StoreError> {
        let rows = sqlx::query("SELECT key, expires_at FROM used_nonces")
            .fetch_all(main)
            .await
            .map_err(sql_err)?;
        if !rows.is_empty() {
            let mut entries = Vec::with_capacity(rows.len());
            for r in &rows {
                let key: String = r.try_get(0).map_err(sql_err)?;
                entries.push((digest(&key), r.try_get::<i64, _>(1).map_err(sql_err)?));
            }
            self.load(entries)?;
            sqlx::query("DELETE FROM used_nonces")
                .execute(main)
                .await
                .map_err(sql_err)?;
        }
        let old = dir.join(format!("{stem}-nonces.db"));
        if !old.exists() {
            return Ok(());
        }
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&old)
                    .create_if_missing(false),
            )
            .await
            .map_err(sql_err)?;
        let has_table: bool = sqlx::query_scalar(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'spent'",
        )
        .fetch_one(&pool)
        .await
        .map_err(sql_err)?;
        let mut entries = Vec::new();
        if has_table {
            for r in sqlx::query("SELECT entries FROM spent")
                .fetch_all(&pool)
                .await
                .map_err(sql_err)?
            {
                let blob: Vec<u8> = r.try_get(0).map_err(sql_err)?;
                entries.extend(decode(&blob));
            }
        }
        pool.close().await;
        self.load(entries)?;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = old.as_os_str().to_owned();
            p.push(suffix);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("cannot remove the old nonce file")(e)),
            }
        }
        Ok(())
    }

    /// Adds `entries` to the maps and the log, and flushes.
    fn load(&self, entries: Vec<(Digest, i64)>) -> Result<(), StoreError> {
        let Some(log) = &self.inner.log else {
            return Ok(());
        };
        let mut bytes = Vec::with_capacity(entries.len() * ENTRY);
        let mut latest = i64::MIN;
        for (d, expires_at) in entries {
            bytes.extend_from_slice(&entry(&d, expires_at));
            latest = latest.max(expires_at);
            self.inner.map.insert(d, expires_at);
        }
        if !bytes.is_empty() {
            lock(log).write(&bytes, latest)?;
        }
        self.flush()
    }
}

/// What the segments on the disk hold.
struct Loaded {
    keys: Vec<(Digest, i64)>,
    older: Vec<(u64, i64)>,
}

/// Reads every segment of `stem` in `dir` (cutting off a torn last entry); the highest
/// segment number seen (0 for none).
fn read_segments(dir: &Path, stem: &str) -> Result<(Loaded, u64), StoreError> {
    let prefix = format!("{stem}-nonces.");
    let mut loaded = Loaded {
        keys: Vec::new(),
        older: Vec::new(),
    };
    let mut max_seq = 0;
    for e in std::fs::read_dir(dir).map_err(io_err("cannot list the data directory"))? {
        let e = e.map_err(io_err("cannot list the data directory"))?;
        let name = e.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        max_seq = max_seq.max(seq);
        let mut bytes = Vec::new();
        File::open(e.path())
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err("cannot read a segment"))?;
        let whole = bytes.len() - bytes.len() % ENTRY;
        if whole != bytes.len() {
            // Only a power loss in the middle of a write leaves this: cut it off.
            std::fs::OpenOptions::new()
                .write(true)
                .open(e.path())
                .and_then(|f| f.set_len(whole as u64))
                .map_err(io_err("cannot repair a segment"))?;
        }
        let mut latest = i64::MIN;
        for (d, expires_at) in decode(&bytes[..whole]) {
            latest = latest.max(expires_at);
            loaded.keys.push((d, expires_at));
        }
        loaded.older.push((seq, latest));
    }
    Ok((loaded, max_seq))
}

/// Flushes the log each [`FLUSH_EVERY`] after new claims, until the store is gone.
fn flusher(inner: Weak<Inner>) {
    loop {
        std::thread::sleep(FLUSH_EVERY);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        if inner.dirty.load(Ordering::Acquire) {
            let log = NonceLog { inner };
            if let Err(e) = log.flush() {
                tracing::warn!(error = %e, "flushing the nonce log failed (retried)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ENTRY, SEGMENT_MS};
    use crate::sqlite::SqliteStore;
    use crate::Nonces;
    use portcullis_core::Timestamp;
    use std::path::{Path, PathBuf};

    fn fresh_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("portcullis-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    /// The segment files in `dir`, by number.
    fn segments(dir: &Path) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let e = e.unwrap();
                let name = e.file_name().into_string().unwrap();
                let seq = name.strip_prefix("n-nonces.")?.strip_suffix(".log")?;
                Some((seq.parse().unwrap(), e.metadata().unwrap().len()))
            })
            .collect();
        v.sort_unstable();
        v
    }

    #[tokio::test]
    async fn concurrent_claims_each_key_won_once_and_kept_across_reopens() {
        let dir = fresh_dir("nonces");
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
        // Every winner is in the log: 201 entries, whole.
        let total: u64 = segments(&dir).iter().map(|(_, len)| len).sum();
        assert_eq!(total, 201 * ENTRY as u64);
        // Spent until it expires, then free again; and it survives reopening.
        assert!(!store.claim_nonce("k45", until, now).await.unwrap());
        store.close().await;
        assert!(
            store.claim_nonce("k46x", until, now).await.is_err(),
            "a closed store claims nothing"
        );
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
        // Pruning forgets the expired keys (the 200 distinct ones), not the live one.
        assert_eq!(third.delete_expired_nonces(until).await.unwrap(), 200);
        third.close().await;
        let fourth = SqliteStore::open(&path).await.unwrap();
        assert!(!fourth
            .claim_nonce("same", later, Timestamp::from_secs(2_500))
            .await
            .unwrap());
        assert!(fourth
            .claim_nonce("k45", later, Timestamp::from_secs(2_500))
            .await
            .unwrap());
        fourth.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn segments_go_once_their_keys_expired_and_a_torn_entry_is_cut_off() {
        let dir = fresh_dir("nonce-segments");
        let path = dir.join("n.db");
        let ms = Timestamp::from_millis;
        let store = SqliteStore::open(&path).await.unwrap();
        assert!(store
            .claim_nonce("early", ms(100_000), ms(1_000))
            .await
            .unwrap());
        // A claim a segment's time later starts a new segment.
        let later = 1_000 + SEGMENT_MS;
        assert!(store
            .claim_nonce("late", ms(900_000), ms(later))
            .await
            .unwrap());
        let segs = segments(&dir);
        let written: Vec<u64> = segs.iter().filter(|s| s.1 > 0).map(|s| s.0).collect();
        assert_eq!(written.len(), 2, "{segs:?}");
        // Once `early` expired its segment goes; `late`'s stays.
        assert_eq!(store.delete_expired_nonces(ms(100_000)).await.unwrap(), 1);
        let left: Vec<u64> = segments(&dir).iter().map(|s| s.0).collect();
        assert!(
            !left.contains(&written[0]) && left.contains(&written[1]),
            "{left:?}"
        );
        store.close().await;

        // A power loss in the middle of a write leaves part of an entry: cut off at open.
        let torn = dir.join(format!("n-nonces.{}.log", written[1]));
        let mut bytes = std::fs::read(&torn).unwrap();
        bytes.extend_from_slice(&[7; 5]);
        std::fs::write(&torn, &bytes).unwrap();
        let again = SqliteStore::open(&path).await.unwrap();
        assert_eq!(std::fs::metadata(&torn).unwrap().len(), ENTRY as u64);
        assert!(!again
            .claim_nonce("late", ms(900_000), ms(later))
            .await
            .unwrap());
        assert!(again
            .claim_nonce("early", ms(900_000), ms(later))
            .await
            .unwrap());
        again.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn values_spent_under_older_versions_move_to_the_log() {
        let dir = fresh_dir("nonces-old");
        let path = dir.join("n.db");
        let store = SqliteStore::open(&path).await.unwrap();
        sqlx::query("INSERT INTO used_nonces (key, expires_at) VALUES ('old', 9000000)")
            .execute(&store.writer)
            .await
            .unwrap();
        store.close().await;
        // The file the previous version kept them in: one row a batch of 24-byte entries.
        let old_file = dir.join("n-nonces.db");
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&old_file)
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        sqlx::query(
            "CREATE TABLE spent (seq INTEGER PRIMARY KEY, expires_at INTEGER NOT NULL, \
             entries BLOB NOT NULL) STRICT",
        )
        .execute(&pool)
        .await
        .unwrap();
        let entry = super::entry(&super::digest("older"), 9_000_000);
        sqlx::query("INSERT INTO spent (expires_at, entries) VALUES (9000000, ?1)")
            .bind(&entry[..])
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;

        let again = SqliteStore::open(&path).await.unwrap();
        let now = Timestamp::from_secs(1);
        let until = Timestamp::from_secs(2);
        assert!(!again.claim_nonce("old", until, now).await.unwrap());
        assert!(!again.claim_nonce("older", until, now).await.unwrap());
        assert!(again.claim_nonce("new", until, now).await.unwrap());
        assert!(
            !old_file.exists(),
            "the old file is gone once its values moved"
        );
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM used_nonces")
            .fetch_one(&again.writer)
            .await
            .unwrap();
        assert_eq!(left, 0);
        again.close().await;
        // And they stay spent after another reopen, from the log alone.
        let third = SqliteStore::open(&path).await.unwrap();
        assert!(!third.claim_nonce("older", until, now).await.unwrap());
        assert!(!third.claim_nonce("old", until, now).await.unwrap());
        third.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
