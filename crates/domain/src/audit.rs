//! The audit trail: one structured event per authentication decision and per admin change.
//!
//! Events go through a bounded channel to one writer task ([`AuditWriter`]), which numbers
//! them, chains their hashes (`portcullis_core::audit`), appends them to the store in batches
//! and writes them as JSON lines to the configured sink. Nothing secret is ever in an event:
//! credential *ids* only. When the channel is full, emitters wait (an audit trail that drops
//! events under load is not one).

use std::borrow::Cow;
use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use portcullis_core::audit::{chain_hash, ChainError, ChainVerifier, Fields, JsonWriter, GENESIS};
use portcullis_core::crypto::{hex, push_hex, Sha256Digest};
use portcullis_core::identity::SchemeSet;
use portcullis_core::text::{push_decimal, CompactText};
use portcullis_core::Timestamp;
use portcullis_store::{AuditLog, Sealed, StoreError};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};

/// One audit event. Build with [`AuditEvent::new`] and the setters.
///
/// Its canonical JSON (what the chain hash covers) is `portcullis_core::audit::write_json`
/// of [`AuditEvent::fields`]: written by hand, field by field, absent fields left out (the
/// writer serialises one event per audited request, and a generic serializer costs more
/// than the rest of the decision).
#[derive(Debug, Clone)]
pub struct AuditEvent {
    at: Timestamp,
    /// `auth.decision`, `api_key.created`, `api_key.revoked`, `api_key.new_ip` …
    pub kind: &'static str,
    /// `allow`, `deny`, `ok`, `notice` …
    pub outcome: &'static str,
    /// Request id (gateway and admin requests); inline, as the gateway's ids (at most 29
    /// bytes) fit: no allocation for it per audited request.
    pub request_id: Option<CompactText<40>>,
    /// Route name.
    pub route: Option<Arc<str>>,
    /// Scheme(s) that decided, as written (`api_key`, `mtls,jwt`).
    pub scheme: Option<Cow<'static, str>>,
    /// Documented reason code (the wire `error` code for denials).
    pub reason: Option<&'static str>,
    /// Credential id (never the secret).
    pub credential_id: Option<Arc<str>>,
    /// Client address.
    pub client_ip: Option<IpAddr>,
    /// Who made an admin change.
    pub actor: Option<String>,
    /// Admin-change details (ids, names, scopes; never secrets), as JSON text.
    pub detail: Option<String>,
}

impl AuditEvent {
    /// An event of `kind` with `outcome` at `at`.
    pub fn new(at: Timestamp, kind: &'static str, outcome: &'static str) -> Self {
        Self {
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
    pub fn request_id(mut self, v: &str) -> Self {
        self.request_id = Some(CompactText::new(v));
        self
    }
    /// Sets the route.
    pub fn route(mut self, v: Arc<str>) -> Self {
        self.route = Some(v);
        self
    }
    /// Sets the scheme(s).
    pub fn scheme(mut self, v: SchemeSet) -> Self {
        self.set_scheme(v);
        self
    }
    /// Sets the scheme(s) in place (the gate fills its event field by field: each builder
    /// call above moves the whole event).
    pub fn set_scheme(&mut self, v: SchemeSet) {
        // One scheme (nearly every decision): its constant name, no allocation.
        self.scheme = Some(match v.single() {
            Some(one) => Cow::Borrowed(one.name()),
            None => Cow::Owned(v.to_string()),
        });
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
        // A `Value` always serialises; "null" keeps the event well-formed regardless.
        self.detail = Some(serde_json::to_string(&v).unwrap_or_else(|_| String::from("null")));
        self
    }

    /// The fields its canonical JSON is made of.
    pub fn fields(&self) -> Fields<'_> {
        Fields {
            time_ms: self.at.as_millis(),
            kind: self.kind,
            outcome: self.outcome,
            request_id: self.request_id.as_ref().map(CompactText::as_str),
            route: self.route.as_deref(),
            scheme: self.scheme.as_deref(),
            reason: self.reason,
            credential_id: self.credential_id.as_deref(),
            client_ip: self.client_ip,
            actor: self.actor.as_deref(),
            detail: self.detail.as_deref(),
        }
    }
}

/// One message to the writer: an event, an acknowledgement wanted once everything before it
/// is stored, or both (a durable emit). The event travels inline in the channel's block (no
/// allocation per audited request).
struct Msg {
    event: Option<AuditEvent>,
    ack: Option<oneshot::Sender<()>>,
}

/// The emitting side, cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
    /// Whether the writer's last append reached the store (shared with the writer).
    storing: Arc<AtomicBool>,
    /// Ends the writer's linger early (see [`AuditWriter::run`]).
    wake: Arc<Notify>,
}

/// The audit trail could not take an event in time: the writer is stuck behind a store that
/// refuses appends and its queue is full. A decision that cannot be audited is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the audit trail is not accepting events")]
pub struct AuditUnavailable;

/// Longest a request waits for room in a full audit queue before it is refused.
pub const EMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Auditor {
    /// Queues an event for a decision that must not go unaudited: waits at most
    /// [`EMIT_WAIT`] for room, then refuses (the request fails closed instead of hanging
    /// while the store is down).
    pub async fn emit_bounded(&self, e: AuditEvent) -> Result<(), AuditUnavailable> {
        let msg = Msg {
            event: Some(e),
            ack: None,
        };
        // With room in the queue (nearly always) no timer is set up (nor the clock read).
        let msg = match self.tx.try_send(msg) {
            Ok(()) => {
                self.wake_if_a_batch_waits();
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Full(msg)) => msg,
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(AuditUnavailable),
        };
        self.wake.notify_one();
        self.tx
            .send_timeout(msg, EMIT_WAIT)
            .await
            .map_err(|_| AuditUnavailable)
    }

    /// Ends the writer's linger once a whole batch is queued (or the queue, if smaller, is
    /// full): those events need no company. One atomic load per event otherwise.
    fn wake_if_a_batch_waits(&self) {
        let queued = self.tx.max_capacity() - self.tx.capacity();
        if queued >= BATCH.min(self.tx.max_capacity()) {
            self.wake.notify_one();
        }
    }

    /// Whether the trail is storing: false from a failed append until one succeeds again
    /// (readiness reports it).
    pub fn is_storing(&self) -> bool {
        self.storing.load(Ordering::Relaxed)
    }

    /// Queues an event (waits only if the queue is full).
    pub async fn emit(&self, e: AuditEvent) {
        let msg = Msg {
            event: Some(e),
            ack: None,
        };
        if self.tx.send(msg).await.is_err() {
            tracing::error!("audit writer has stopped; event lost");
        }
        self.wake_if_a_batch_waits();
    }

    /// Queues an event and waits until it is stored (admin changes use this).
    pub async fn emit_durable(&self, e: AuditEvent) {
        let (tx, rx) = oneshot::channel();
        let msg = Msg {
            event: Some(e),
            ack: Some(tx),
        };
        if self.tx.send(msg).await.is_err() || self.woken(rx).await.is_err() {
            tracing::error!("audit writer has stopped; event lost");
        }
    }

    /// Waits until every event queued before this call is stored.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        let msg = Msg {
            event: None,
            ack: Some(tx),
        };
        if self.tx.send(msg).await.is_ok() {
            let _ = self.woken(rx).await;
        }
    }

    /// Ends the writer's linger (someone waits for what is queued), then waits for `rx`.
    async fn woken(&self, rx: oneshot::Receiver<()>) -> Result<(), oneshot::error::RecvError> {
        self.wake.notify_one();
        rx.await
    }
}

/// A subscriber to the stored audit stream (the webhook outbox,
/// `crate::webhooks::WebhookTap`): the writer hands it, after each batch is stored and
/// before anyone waiting for the batch is told, the events whose kind it wants. So an event
/// emitted durably ([`Auditor::emit_durable`]) has reached the tap when the emit returns.
#[async_trait::async_trait]
pub trait AuditTap: Send + Sync {
    /// Whether events of `kind` interest the tap. Asked for every stored event: keep it
    /// cheap (a comparison with a few constants).
    fn wants(&self, kind: &str) -> bool;

    /// Takes the stored events it wants (at least one), in chain order. The writer waits
    /// for it: what the tap must not lose, it stores before returning.
    async fn stored(&self, events: &[&AuditEvent]);
}

/// The writing side: run [`AuditWriter::run`] on a task.
pub struct AuditWriter {
    rx: mpsc::Receiver<Msg>,
    store: Arc<dyn AuditLog>,
    sink: Option<Box<dyn Write + Send>>,
    seq: i64,
    head: Sha256Digest,
    /// Each event's canonical JSON is rendered here, then finished as its sink line (a full
    /// batch is about 1.3 MiB); kept between batches.
    line_buf: String,
    /// Renders the JSON, remembering what consecutive events share.
    json: JsonWriter,
    /// See [`Auditor::is_storing`].
    storing: Arc<AtomicBool>,
    /// Notified by emitters when the linger should end at once.
    wake: Arc<Notify>,
    /// Longest an event waits for company before its batch is written.
    linger: std::time::Duration,
    /// The last batch's sealed events, emptied: its allocation (a full batch is about a
    /// megabyte) is used again, instead of being returned to the allocator, which gives
    /// pages that large back to the kernel and takes them back zeroed on the next batch.
    spare: Vec<Sealed<'static>>,
    /// Sees the stored events it wants ([`AuditWriter::tap`]).
    tap: Option<Arc<dyn AuditTap>>,
}

/// Largest batch written in one transaction.
const BATCH: usize = 4096;
/// [`AuditWriter::linger`] unless set.
pub const DEFAULT_LINGER: std::time::Duration = std::time::Duration::from_millis(200);
/// Longest [`AuditWriter::linger`] accepted by the configuration.
pub const MAX_LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// Creates the channel and the writer, continuing the chain stored in `store`.
pub async fn channel(
    store: Arc<dyn AuditLog>,
    sink: Option<Box<dyn Write + Send>>,
    capacity: usize,
) -> Result<(Auditor, AuditWriter), StoreError> {
    let (seq, head) = store.head().await?.unwrap_or((0, GENESIS));
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let storing = Arc::new(AtomicBool::new(true));
    let wake = Arc::new(Notify::new());
    Ok((
        Auditor {
            tx,
            storing: storing.clone(),
            wake: wake.clone(),
        },
        AuditWriter {
            rx,
            store,
            sink,
            seq,
            head,
            line_buf: String::new(),
            json: JsonWriter::default(),
            storing,
            wake,
            linger: DEFAULT_LINGER,
            spare: Vec::new(),
            tap: None,
        },
    ))
}

impl AuditWriter {
    /// Sets how long an event that nobody waits for may wait for company before its batch
    /// is stored and written ([`DEFAULT_LINGER`] unless set): longer means fewer commits
    /// (each with an `fsync`) per event, and more of the decision trail lost by a crash.
    pub fn linger(mut self, linger: std::time::Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Hands the stored events that `tap` wants to it, after each batch is stored and before
    /// the batch's waiters are told (see [`AuditTap`]).
    pub fn tap(mut self, tap: Arc<dyn AuditTap>) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Writes events until every [`Auditor`] is dropped. Events that nobody waits for may
    /// linger for up to [`AuditWriter::linger`], also when the last `Auditor` is dropped
    /// meanwhile (the receiver cannot wait for that): [`Auditor::flush`] before dropping
    /// writes them at once, as the server does when it stops.
    pub async fn run(mut self) {
        let mut msgs = Vec::with_capacity(BATCH);
        while self.rx.recv_many(&mut msgs, BATCH).await > 0 {
            // Under load, gather a fuller batch first: one transaction (and one fsync) per
            // linger instead of one per wake-up. Nobody waits for these events, except a
            // durable emit or a flush, which end the wait at once, as a full batch does. The
            // writer sleeps through the linger instead of taking each event as it comes (a
            // wake-up, a timer set and cancelled, for every few events).
            if msgs.len() < BATCH && !waited_for(&msgs) {
                let linger = std::pin::pin!(tokio::time::sleep(self.linger));
                self.linger_over(&mut msgs, linger).await;
            }
            // The events stay where the channel put them (each is a few hundred bytes); the
            // batch borrows their fields.
            let mut sealed = recycle(std::mem::take(&mut self.spare));
            sealed.extend(
                msgs.iter()
                    .filter_map(|m| m.event.as_ref())
                    .map(|e| Sealed {
                        seq: 0,
                        fields: e.fields(),
                        prev_hash: GENESIS,
                        hash: GENESIS,
                    }),
            );
            self.seal(&mut sealed);
            store_rows(self.store.as_ref(), &sealed, &self.storing).await;
            self.spare = recycle(sealed);
            self.write_sink();
            if let Some(tap) = &self.tap {
                let wanted: Vec<&AuditEvent> = msgs
                    .iter()
                    .filter_map(|m| m.event.as_ref())
                    .filter(|e| tap.wants(e.kind))
                    .collect();
                if !wanted.is_empty() {
                    tap.stored(&wanted).await;
                }
            }
            for a in msgs.drain(..).filter_map(|m| m.ack) {
                let _ = a.send(());
            }
        }
    }

    /// Takes messages into `msgs` until `linger` ends, the batch is full, or a message that
    /// someone waits for is in it. Between emitters' wakes (`Auditor::wake`) it sleeps; a
    /// wake with nothing that ends the linger (a notification left from earlier) only costs
    /// a look at the queue.
    async fn linger_over(
        &mut self,
        msgs: &mut Vec<Msg>,
        mut linger: std::pin::Pin<&mut tokio::time::Sleep>,
    ) {
        loop {
            let timed_out = tokio::select! {
                biased;
                () = self.wake.notified() => false,
                () = &mut linger => true,
            };
            let seen = msgs.len();
            if !self.rx.is_empty() {
                self.rx.recv_many(msgs, BATCH - seen).await;
            }
            if timed_out || msgs.len() >= BATCH || waited_for(&msgs[seen..]) {
                return;
            }
        }
    }

    /// Numbers and chains `events`, and renders their sink lines into `line_buf`: the
    /// canonical JSON that was hashed, with its place in the chain (`seq`, `hash`) added
    /// before the closing brace.
    fn seal(&mut self, events: &mut [Sealed<'_>]) {
        self.line_buf.clear();
        for e in events {
            self.seq += 1;
            let start = self.line_buf.len();
            self.json.write(&e.fields, &mut self.line_buf);
            let hash = chain_hash(&self.head, self.seq, &self.line_buf.as_bytes()[start..]);
            (e.seq, e.prev_hash, e.hash) = (self.seq, self.head, hash);
            self.head = hash;
            if self.sink.is_none() {
                self.line_buf.truncate(start);
                continue;
            }
            // The body always holds "time": the added fields follow a comma.
            self.line_buf.pop();
            self.line_buf.push_str(",\"seq\":");
            push_decimal(&mut self.line_buf, self.seq);
            self.line_buf.push_str(",\"hash\":\"");
            push_hex(&mut self.line_buf, &hash);
            self.line_buf.push_str("\"}\n");
        }
    }

    fn write_sink(&mut self) {
        let Some(sink) = self.sink.as_mut() else {
            return;
        };
        if let Err(e) = sink
            .write_all(self.line_buf.as_bytes())
            .and_then(|()| sink.flush())
        {
            tracing::error!(error = %e, "writing the audit sink failed");
        }
    }
}

/// Whether someone waits for one of `msgs` to be stored (a durable emit, a flush).
fn waited_for(msgs: &[Msg]) -> bool {
    msgs.iter().any(|m| m.ack.is_some())
}

/// `v` emptied, as a vector of events that borrow for another lifetime, in the same
/// allocation: the element types differ only in a lifetime, so the standard library's
/// in-place collection keeps the buffer (no unsafe code; at worst, a fresh allocation).
fn recycle<'b>(mut v: Vec<Sealed<'_>>) -> Vec<Sealed<'b>> {
    v.clear();
    v.into_iter().map(|_| unreachable!("emptied")).collect()
}

/// Appends `rows`, retrying with backoff until the store accepts them: events are never
/// dropped; while the store is down, emitters slow down behind the bounded channel.
async fn store_rows(store: &dyn AuditLog, rows: &[Sealed<'_>], storing: &AtomicBool) {
    if rows.is_empty() {
        return;
    }
    let mut delay = std::time::Duration::from_millis(50);
    loop {
        match store.append(rows).await {
            Ok(()) => {
                storing.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => {
                storing.store(false, Ordering::Relaxed);
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
    /// Events up to this `seq` were removed by retention ([`prune`]): the check starts from
    /// the stored anchor, the hash of that event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned_through: Option<i64>,
    /// Hex hash of the last event checked (keep it elsewhere to detect truncation later).
    pub head: String,
    /// What was found broken, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Checks the stored chain from the first event, or from the retention anchor when older
/// events were removed ([`prune`]).
pub async fn verify(store: &dyn AuditLog) -> Result<VerifyReport, StoreError> {
    let mut anchor = store.anchor().await?;
    let (mut after, head) = anchor.unwrap_or((0, GENESIS));
    let mut v = ChainVerifier::after(after, head);
    // Events checked before retention moved the anchor past them (see below).
    let mut earlier = 0;
    'pages: loop {
        let page = store.scan(after, 1000).await?;
        if page.is_empty() {
            break;
        }
        for e in &page {
            let Err(err) = v.check(e.seq, e.body.as_bytes(), &e.prev_hash, &e.hash) else {
                after = e.seq;
                continue;
            };
            // Retention runs beside verification and may have removed the very events this
            // check was to read next: then the stored anchor has moved to or past them, and
            // the trail goes on from there.
            if let ChainError::Gap { expected, .. } = err {
                let now = store.anchor().await?;
                if let Some((seq, hash)) = now.filter(|(seq, _)| *seq >= expected) {
                    earlier += v.checked();
                    v = ChainVerifier::after(seq, hash);
                    (after, anchor) = (seq, now);
                    continue 'pages;
                }
            }
            return Ok(report(&v, earlier, anchor, Some(err)));
        }
    }
    Ok(report(&v, earlier, anchor, None))
}

/// Retention: removes the stored events older than `before`, as far as the store can (whole
/// blocks, a run from the oldest, never the newest; see [`AuditLog::prune`]), a bounded step
/// at a time so that the writer is never held up for long, and records the removal as an
/// `audit.pruned` event in the chain itself, stored before this returns: the trail says what
/// was removed and where it now starts. Stops early, after a step, once `stop` is set (the
/// server is stopping), and records what it did. Returns the number of events removed.
pub async fn prune(
    store: &dyn AuditLog,
    auditor: &Auditor,
    before: Timestamp,
    now: Timestamp,
    stop: &AtomicBool,
) -> Result<u64, StoreError> {
    let mut events = 0;
    let mut anchor = None;
    let mut failed = None;
    while !stop.load(Ordering::Relaxed) {
        match store.prune(before).await {
            Ok(Some(p)) => {
                events += p.events;
                anchor = Some(p.anchor);
            }
            Ok(None) => break,
            // What was removed before the failure is still recorded.
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
        // Let the writer and everything else in between the steps.
        tokio::task::yield_now().await;
    }
    if let Some((seq, hash)) = anchor {
        let mut older_than = String::new();
        portcullis_core::audit::push_time(&mut older_than, before.as_millis());
        auditor
            .emit_durable(
                AuditEvent::new(now, "audit.pruned", "ok")
                    .actor("system:retention")
                    .detail(serde_json::json!({
                        "events": events,
                        "older_than": older_than,
                        "through_seq": seq,
                        "through_hash": hex(&hash),
                    })),
            )
            .await;
    }
    failed.map_or(Ok(events), Err)
}

fn report(
    v: &ChainVerifier,
    earlier: i64,
    anchor: Option<(i64, Sha256Digest)>,
    err: Option<ChainError>,
) -> VerifyReport {
    VerifyReport {
        ok: err.is_none(),
        checked: earlier + v.checked(),
        pruned_through: anchor.map(|(seq, _)| seq),
        head: hex(&v.head()),
        error: err.map(|e| e.to_string()),
    }
}

/// Test doubles shared by this crate's tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};

    use portcullis_core::crypto::Sha256Digest;
    use portcullis_core::Timestamp;
    use portcullis_store::memory::MemoryStore;
    use portcullis_store::{AuditLog, AuditQuery, Pruned, Sealed, StoreError, StoredEvent};

    /// A memory store whose appends fail while `refuse` is set, and whose first scan runs
    /// retention (older than `prune_on_first_scan`) just before it reads, as a retention
    /// task beside a verification would.
    #[derive(Default)]
    pub(crate) struct Refusing {
        pub(crate) inner: MemoryStore,
        pub(crate) refuse: AtomicBool,
        pub(crate) prune_on_first_scan: std::sync::Mutex<Option<Timestamp>>,
    }

    #[async_trait::async_trait]
    impl AuditLog for Refusing {
        async fn append(&self, events: &[Sealed<'_>]) -> Result<(), StoreError> {
            if self.refuse.load(Ordering::Relaxed) {
                return Err(StoreError::Unavailable("disk full".into()));
            }
            self.inner.append(events).await
        }
        async fn head(&self) -> Result<Option<(i64, Sha256Digest)>, StoreError> {
            self.inner.head().await
        }
        async fn query(&self, q: &AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
            self.inner.query(q).await
        }
        async fn scan(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
            let prune = self.prune_on_first_scan.lock().unwrap().take();
            if let Some(before) = prune {
                while self.inner.prune(before).await?.is_some() {}
            }
            self.inner.scan(after, limit).await
        }
        async fn prune(&self, before: Timestamp) -> Result<Option<Pruned>, StoreError> {
            self.inner.prune(before).await
        }
        async fn anchor(&self) -> Result<Option<(i64, Sha256Digest)>, StoreError> {
            self.inner.anchor().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::Refusing;
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

    #[test]
    fn recycling_a_batch_keeps_its_allocation() {
        let e = AuditEvent::new(Timestamp::from_millis(1), "auth.decision", "allow");
        let mut v: Vec<Sealed<'_>> = Vec::with_capacity(BATCH);
        v.push(Sealed {
            seq: 1,
            fields: e.fields(),
            prev_hash: GENESIS,
            hash: GENESIS,
        });
        let at = v.as_ptr() as usize;
        let r: Vec<Sealed<'static>> = recycle(v);
        assert!(r.is_empty());
        assert_eq!(r.capacity(), BATCH);
        assert_eq!(r.as_ptr() as usize, at, "the same buffer, not a new one");
    }

    fn json(e: &AuditEvent) -> String {
        let mut out = String::new();
        portcullis_core::audit::write_json(&e.fields(), &mut out);
        out
    }

    proptest::proptest! {
        /// Any text in any field still makes one line of valid JSON holding that text.
        #[test]
        fn canonical_json_holds_any_text(actor in ".{0,40}", route in ".{0,40}") {
            let e = AuditEvent::new(Timestamp::from_millis(0), "k", "o")
                .route(route.as_str().into())
                .actor(actor.clone());
            let out = json(&e);
            proptest::prop_assert!(!out.contains('\n'));
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            proptest::prop_assert_eq!(v["actor"].as_str(), Some(actor.as_str()));
            proptest::prop_assert_eq!(v["route"].as_str(), Some(route.as_str()));
        }
    }

    #[test]
    fn canonical_json_is_valid_and_escapes_what_needs_it() {
        let e = AuditEvent::new(
            Timestamp::from_millis(1_764_000_000_123),
            "api_key.revoked",
            "ok",
        )
        .request_id("req-1")
        .route("r".into())
        .scheme(SchemeSet::one(portcullis_core::Scheme::ApiKey))
        .reason("ok")
        .credential("key_1".into())
        .client_ip("::1".parse().unwrap())
        .actor("a \"quoted\"\nname\\ é")
        .detail(serde_json::json!({"ids": ["x"]}));
        let out = json(&e);
        assert!(!out.contains('\n'), "one line: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["time"], "2025-11-24T16:00:00.123Z");
        assert_eq!(v["kind"], "api_key.revoked");
        assert_eq!(v["scheme"], "api_key");
        assert_eq!(v["client_ip"], "::1");
        assert_eq!(v["actor"], "a \"quoted\"\nname\\ é");
        assert_eq!(v["detail"]["ids"][0], "x");
        for ip in ["0.0.0.0", "255.255.255.255", "10.20.3.100", "1.0.99.9"] {
            let line = json(
                &AuditEvent::new(Timestamp::from_millis(0), "k", "o")
                    .client_ip(ip.parse().unwrap())
                    .scheme(
                        SchemeSet::one(portcullis_core::Scheme::ApiKey)
                            .union(SchemeSet::one(portcullis_core::Scheme::Jwt)),
                    ),
            );
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["client_ip"], ip);
            assert_eq!(v["scheme"], "api_key,jwt");
        }
        assert_eq!(
            json(&AuditEvent::new(Timestamp::from_millis(0), "k", "o")),
            r#"{"time":"1970-01-01T00:00:00.000Z","kind":"k","outcome":"o"}"#
        );
    }

    /// (Paused clock: the waits below are virtual and exact.)
    #[tokio::test(start_paused = true)]
    async fn a_stuck_store_refuses_emitters_in_bounded_time_then_recovers() {
        let store = Arc::new(Refusing::default());
        store.refuse.store(true, Ordering::Relaxed);
        let (auditor, writer) = channel(store.clone(), None, 1).await.unwrap();
        let task = tokio::spawn(writer.run());
        let event = || AuditEvent::new(Timestamp::from_secs(1), "auth.decision", "allow");
        assert!(auditor.is_storing());

        // The writer takes the first event and fails to store it; it keeps retrying.
        auditor.emit_bounded(event()).await.unwrap();
        while auditor.is_storing() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // The queue (capacity 1) takes one more; the next waits EMIT_WAIT and is refused.
        auditor.emit_bounded(event()).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(auditor.emit_bounded(event()).await, Err(AuditUnavailable));
        assert_eq!(started.elapsed(), EMIT_WAIT);
        assert!(!auditor.is_storing());

        // The store comes back: both accepted events are stored, none lost.
        store.refuse.store(false, Ordering::Relaxed);
        auditor.flush().await;
        assert!(auditor.is_storing());
        let report = verify(store.as_ref()).await.unwrap();
        assert!(report.ok && report.checked == 2, "{report:?}");
        drop(auditor);
        task.await.unwrap();
    }

    /// (Paused clock: a writer that slept through its linger would let the runtime jump
    /// to the linger's end, which the elapsed times below would show.)
    #[tokio::test(start_paused = true)]
    async fn a_waiting_emitter_or_a_full_batch_ends_the_linger() {
        let store = Arc::new(MemoryStore::new());
        let (auditor, writer) = channel(store.clone(), None, 2 * BATCH).await.unwrap();
        let task = tokio::spawn(writer.linger(MAX_LINGER).run());
        let event = || AuditEvent::new(Timestamp::from_secs(1), "auth.decision", "allow");
        let stored = || async {
            let head = store.head().await.unwrap();
            head.map_or(0, |(seq, _)| seq)
        };

        // Nobody waits: the event lingers for the whole interval.
        let started = tokio::time::Instant::now();
        auditor.emit(event()).await;
        while stored().await < 1 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(started.elapsed() >= MAX_LINGER, "{:?}", started.elapsed());

        // Each case below starts with the writer lingering over one event.
        let lingering = || async {
            auditor.emit(event()).await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        };

        // A durable emit is stored with what came before it, at once.
        let started = tokio::time::Instant::now();
        lingering().await;
        auditor.emit_durable(event()).await;
        assert_eq!(stored().await, 3);
        assert!(started.elapsed() < MAX_LINGER, "{:?}", started.elapsed());

        // So is a flush.
        let started = tokio::time::Instant::now();
        lingering().await;
        auditor.flush().await;
        assert_eq!(stored().await, 4);
        assert!(started.elapsed() < MAX_LINGER, "{:?}", started.elapsed());

        // A durable emit taken while the writer was idle leaves a notification unused; it
        // does not cut the next event's linger short.
        auditor.emit_durable(event()).await;
        let started = tokio::time::Instant::now();
        auditor.emit(event()).await;
        while stored().await < 6 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(started.elapsed() >= MAX_LINGER, "{:?}", started.elapsed());

        // A full batch needs no company: the lingering event and the first BATCH - 1 of
        // these are stored at once (the last one starts the next batch).
        let started = tokio::time::Instant::now();
        lingering().await;
        for _ in 0..BATCH {
            auditor.emit_bounded(event()).await.unwrap();
        }
        while stored().await < 6 + BATCH as i64 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(started.elapsed() < MAX_LINGER, "{:?}", started.elapsed());
        drop(auditor);
        task.await.unwrap();
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
        assert_eq!(first["time"], "1970-01-01T00:00:01.000Z");
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

    #[tokio::test]
    async fn verification_beside_retention_goes_on_from_the_new_anchor() {
        let store = Arc::new(Refusing {
            prune_on_first_scan: Some(Timestamp::from_secs(25)).into(),
            ..Refusing::default()
        });
        let (auditor, writer) = channel(store.clone(), None, 16).await.unwrap();
        let task = tokio::spawn(writer.run());
        for secs in [10, 20, 30] {
            auditor
                .emit_durable(AuditEvent::new(Timestamp::from_secs(secs), "k", "ok"))
                .await;
        }
        drop(auditor);
        task.await.unwrap();
        let report = verify(store.as_ref()).await.unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!((report.checked, report.pruned_through), (1, Some(2)));
    }

    #[tokio::test]
    async fn retention_removes_old_events_audits_itself_and_keeps_a_verifiable_trail() {
        let store = Arc::new(MemoryStore::new());
        let (auditor, writer) = channel(store.clone(), None, 16).await.unwrap();
        let task = tokio::spawn(writer.run());
        for secs in [10, 20, 30, 40] {
            auditor
                .emit_durable(AuditEvent::new(
                    Timestamp::from_secs(secs),
                    "auth.decision",
                    "allow",
                ))
                .await;
        }
        let at = |s| Timestamp::from_secs(s);
        let (going, stopping) = (AtomicBool::new(false), AtomicBool::new(true));
        let prune_at = |before, stop| prune(store.as_ref(), &auditor, at(before), at(50), stop);
        // Nothing older than the oldest: nothing removed, nothing recorded.
        assert_eq!(prune_at(5, &going).await.unwrap(), 0);
        assert_eq!(store.head().await.unwrap().unwrap().0, 4);
        // A stopping server removes nothing more.
        assert_eq!(prune_at(35, &stopping).await.unwrap(), 0);
        assert_eq!(store.scan(0, 10).await.unwrap().len(), 4);

        let removed = prune_at(35, &going).await.unwrap();
        assert_eq!(removed, 3);
        let left = store.scan(0, 10).await.unwrap();
        assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
        // The removal is the newest event of the chain, stored before prune returned.
        let pruned: serde_json::Value = serde_json::from_str(&left[1].body).unwrap();
        assert_eq!(pruned["kind"], "audit.pruned");
        assert_eq!(pruned["actor"], "system:retention");
        assert_eq!(pruned["detail"]["events"], 3);
        assert_eq!(pruned["detail"]["through_seq"], 3);
        assert_eq!(pruned["detail"]["older_than"], "1970-01-01T00:00:35.000Z");
        assert_eq!(
            pruned["detail"]["through_hash"],
            hex(&store.anchor().await.unwrap().unwrap().1)
        );
        let report = verify(store.as_ref()).await.unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!((report.checked, report.pruned_through), (2, Some(3)));

        drop(auditor);
        task.await.unwrap();
    }
}
