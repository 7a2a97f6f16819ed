//! The audit trail: one structured event per authentication decision and per admin change.
//!
//! Events go through a bounded channel to one writer task ([`AuditWriter`]), which numbers
//! them, chains their hashes (`portcullis_core::audit`), appends them to the store in batches
//! and writes them as JSON lines to the configured sink. Nothing secret is ever in an event:
//! credential *ids* only. When the channel is full, emitters wait (an audit trail that drops
//! events under load is not one).

use std::io::Write;
use std::net::IpAddr;
use std::sync::Arc;

use portcullis_core::audit::{chain_hash, ChainError, ChainVerifier, GENESIS};
use portcullis_core::crypto::{hex, Sha256Digest};
use portcullis_core::Timestamp;
use portcullis_store::{AuditLog, StoreError, StoredEvent};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// One audit event. Build with [`AuditEvent::new`] and the setters.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// RFC 3339 time (filled in from `at`).
    time: String,
    #[serde(skip)]
    at: Timestamp,
    /// `auth.decision`, `api_key.created`, `api_key.revoked`, `api_key.new_ip` …
    pub kind: &'static str,
    /// `allow`, `deny`, `ok`, `notice` …
    pub outcome: &'static str,
    /// Request id (gateway and admin requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<Arc<str>>,
    /// Route name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Arc<str>>,
    /// Scheme(s) that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// Documented reason code (the wire `error` code for denials).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// Credential id (never the secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<Arc<str>>,
    /// Client address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    /// Who made an admin change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Admin-change details (ids, names, scopes; never secrets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl AuditEvent {
    /// An event of `kind` with `outcome` at `at`.
    pub fn new(at: Timestamp, kind: &'static str, outcome: &'static str) -> Self {
        Self {
            time: String::new(),
            at,
            kind,
            outcome,
            request_id: None,
            route: None,
            scheme: None,
            reason: None,
            credential_id: None,
            client_ip: None,
            actor: None,
            detail: None,
        }
    }
    /// Sets the request id.
    pub fn request_id(mut self, v: Arc<str>) -> Self {
        self.request_id = Some(v);
        self
    }
    /// Sets the route.
    pub fn route(mut self, v: Arc<str>) -> Self {
        self.route = Some(v);
        self
    }
    /// Sets the scheme.
    pub fn scheme(mut self, v: String) -> Self {
        self.scheme = Some(v);
        self
    }
    /// Sets the reason code.
    pub fn reason(mut self, v: &'static str) -> Self {
        self.reason = Some(v);
        self
    }
    /// Sets the credential id.
    pub fn credential(mut self, v: Arc<str>) -> Self {
        self.credential_id = Some(v);
        self
    }
    /// Sets the client address.
    pub fn client_ip(mut self, v: IpAddr) -> Self {
        self.client_ip = Some(v);
        self
    }
    /// Sets the actor of an admin change.
    pub fn actor(mut self, v: impl Into<String>) -> Self {
        self.actor = Some(v.into());
        self
    }
    /// Sets admin-change details.
    pub fn detail(mut self, v: serde_json::Value) -> Self {
        self.detail = Some(v);
        self
    }
}

enum Msg {
    Event(Box<AuditEvent>),
    Durable(Box<AuditEvent>, oneshot::Sender<()>),
    Flush(oneshot::Sender<()>),
}

/// The emitting side, cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
}

impl Auditor {
    /// Queues an event (waits only if the queue is full).
    pub async fn emit(&self, e: AuditEvent) {
        if self.tx.send(Msg::Event(Box::new(e))).await.is_err() {
            tracing::error!("audit writer has stopped; event lost");
        }
    }

    /// Queues an event and waits until it is stored (admin changes use this).
    pub async fn emit_durable(&self, e: AuditEvent) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Durable(Box::new(e), tx)).await.is_err() || rx.await.is_err() {
            tracing::error!("audit writer has stopped; event lost");
        }
    }

    /// Waits until every event queued before this call is stored.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The writing side: run [`AuditWriter::run`] on a task.
pub struct AuditWriter {
    rx: mpsc::Receiver<Msg>,
    store: Arc<dyn AuditLog>,
    sink: Option<Box<dyn Write + Send>>,
    seq: i64,
    head: Sha256Digest,
}

/// Largest batch written in one transaction.
const BATCH: usize = 1024;
/// Longest an event waits for company before its batch is written.
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// Creates the channel and the writer, continuing the chain stored in `store`.
pub async fn channel(
    store: Arc<dyn AuditLog>,
    sink: Option<Box<dyn Write + Send>>,
    capacity: usize,
) -> Result<(Auditor, AuditWriter), StoreError> {
    let (seq, head) = store.head().await?.unwrap_or((0, GENESIS));
    let (tx, rx) = mpsc::channel(capacity.max(1));
    Ok((
        Auditor { tx },
        AuditWriter {
            rx,
            store,
            sink,
            seq,
            head,
        },
    ))
}

fn rfc3339(t: Timestamp) -> String {
    let nanos = i128::from(t.as_millis()) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl AuditWriter {
    /// Writes events until every [`Auditor`] is dropped.
    pub async fn run(mut self) {
        let mut msgs = Vec::with_capacity(BATCH);
        while self.rx.recv_many(&mut msgs, BATCH).await > 0 {
            // Under load, gather a fuller batch first: one transaction (and one fsync) per
            // LINGER instead of one per wake-up. Nobody waits for these events, except a
            // durable emit or a flush, which end the wait at once.
            let deadline = tokio::time::Instant::now() + LINGER;
            while msgs.len() < BATCH && !msgs.iter().any(|m| !matches!(m, Msg::Event(_))) {
                let room = BATCH - msgs.len();
                match tokio::time::timeout_at(deadline, self.rx.recv_many(&mut msgs, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let mut rows = Vec::with_capacity(msgs.len());
            let mut acks = Vec::new();
            for m in msgs.drain(..) {
                match m {
                    Msg::Event(e) => rows.push(self.seal(*e)),
                    Msg::Durable(e, ack) => {
                        rows.push(self.seal(*e));
                        acks.push(ack);
                    }
                    Msg::Flush(ack) => acks.push(ack),
                }
            }
            store_rows(self.store.as_ref(), &rows).await;
            self.write_sink(&rows);
            for a in acks {
                let _ = a.send(());
            }
        }
    }

    fn seal(&mut self, mut e: AuditEvent) -> StoredEvent {
        e.time = rfc3339(e.at);
        self.seq += 1;
        let body = serde_json::to_string(&e).unwrap_or_else(|_| String::from("{}"));
        let hash = chain_hash(&self.head, self.seq, body.as_bytes());
        let row = StoredEvent {
            seq: self.seq,
            time: e.at,
            kind: e.kind.into(),
            outcome: e.outcome.into(),
            credential_id: e.credential_id.as_deref().map(Into::into),
            body,
            prev_hash: self.head,
            hash,
        };
        self.head = hash;
        row
    }

    fn write_sink(&mut self, rows: &[StoredEvent]) {
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        let mut buf = String::with_capacity(rows.len() * 320);
        for r in rows {
            // The line is the hashed body plus its place in the chain.
            let body = r.body.strip_suffix('}').unwrap_or(&r.body);
            let sep = if body.len() > 1 { "," } else { "" };
            buf.push_str(body);
            buf.push_str(&format!(
                "{sep}\"seq\":{},\"hash\":\"{}\"}}\n",
                r.seq,
                hex(&r.hash)
            ));
        }
        if let Err(e) = sink.write_all(buf.as_bytes()).and_then(|()| sink.flush()) {
            tracing::error!(error = %e, "writing the audit sink failed");
        }
    }
}

/// Appends `rows`, retrying with backoff until the store accepts them: events are never
/// dropped; while the store is down, emitters slow down behind the bounded channel.
async fn store_rows(store: &dyn AuditLog, rows: &[StoredEvent]) {
    if rows.is_empty() {
        return;
    }
    let mut delay = std::time::Duration::from_millis(50);
    loop {
        match store.append(rows).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, events = rows.len(), "storing audit events failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
        }
    }
}

/// Result of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Whether the whole chain is intact.
    pub ok: bool,
    /// Events checked before stopping.
    pub checked: i64,
    /// Hex hash of the last event checked (keep it elsewhere to detect truncation later).
    pub head: String,
    /// What was found broken, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Checks the stored chain from the first event.
pub async fn verify(store: &dyn AuditLog) -> Result<VerifyReport, StoreError> {
    let mut v = ChainVerifier::default();
    let mut after = 0;
    loop {
        let page = store.scan(after, 1000).await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            if let Err(err) = v.check(e.seq, e.body.as_bytes(), &e.prev_hash, &e.hash) {
                return Ok(report(&v, Some(err)));
            }
            after = e.seq;
        }
    }
    Ok(report(&v, None))
}

fn report(v: &ChainVerifier, err: Option<ChainError>) -> VerifyReport {
    VerifyReport {
        ok: err.is_none(),
        checked: v.checked(),
        head: hex(&v.head()),
        error: err.map(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_store::memory::MemoryStore;
    use portcullis_store::AuditQuery;

    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn events_are_chained_stored_and_written() {
        let store = Arc::new(MemoryStore::new());
        let sink = Buf::default();
        let (auditor, writer) = channel(store.clone(), Some(Box::new(sink.clone())), 16)
            .await
            .unwrap();
        let task = tokio::spawn(writer.run());
        auditor
            .emit(
                AuditEvent::new(Timestamp::from_secs(1), "auth.decision", "allow")
                    .credential("key_1".into()),
            )
            .await;
        auditor
            .emit_durable(
                AuditEvent::new(Timestamp::from_secs(2), "api_key.revoked", "ok").actor("admin"),
            )
            .await;
        let stored = store
            .query(&AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            stored.len(),
            2,
            "durable emit waits for everything before it"
        );
        let report = verify(store.as_ref()).await.unwrap();
        assert!(report.ok && report.checked == 2, "{report:?}");
        let lines = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let first: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
        assert_eq!(first["seq"], 1);
        assert_eq!(first["credential_id"], "key_1");
        assert_eq!(first["time"], "1970-01-01T00:00:01Z");
        drop(auditor);
        task.await.unwrap();

        // A new writer continues the chain.
        let (auditor, writer) = channel(store.clone(), None, 4).await.unwrap();
        let task = tokio::spawn(writer.run());
        auditor
            .emit_durable(AuditEvent::new(Timestamp::from_secs(3), "x", "ok"))
            .await;
        drop(auditor);
        task.await.unwrap();
        assert_eq!(verify(store.as_ref()).await.unwrap().checked, 3);
    }
}
