//! Portcullis's own events delivered as signed webhooks ([Standard Webhooks]): endpoints
//! registered through the admin API, an outbox of deliveries fed from the audit stream, and
//! a retry loop with exponential backoff.
//!
//! - **Events.** [`WebhookTap`] taps the audit writer ([`crate::audit::AuditTap`]): every
//!   stored audit event of a deliverable kind ([`EVENTS`]) becomes one delivery per enabled
//!   endpoint subscribed to it, enqueued durably before the event's emitter is told it is
//!   stored. The emitters stay where they are (one place decides what happened).
//! - **Payload.** `{"type": kind, "timestamp": RFC 3339, "data": {…}}`, the shape the spec
//!   recommends; `data` holds the audit fields (credential id, client address, route, actor,
//!   reason, detail), never a secret ([`payload`]).
//! - **Signing.** `webhook-id` (the delivery id, the same on every attempt: the receiver's
//!   idempotency key), `webhook-timestamp` and `webhook-signature` from
//!   `portcullis_core::hmac::webhook::sign`, with the endpoint's current secret and, for
//!   [`ROTATION_GRACE`] after a rotation, the previous one too.
//! - **Delivery.** [`Deliverer`] claims due deliveries (a lease in the store, so two workers
//!   or two instances never send the same attempt at once), POSTs them through a [`Sender`]
//!   (the HTTP client lives in the binary) with a per-attempt timeout and bounded
//!   concurrency. 2xx: delivered. 410 Gone: the endpoint is disabled. Anything else: retried
//!   after [`backoff`] (5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 2 h, 4 h, ±10 % jitter), then
//!   failed.
//!
//! Secrets are sealed at rest (AES-256-GCM under the master key, associated data
//! `webhook-secret:<id>`), like the HMAC credentials' (`crate::hmac`).
//!
//! [Standard Webhooks]: https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::crypto::seal::SealKey;
use portcullis_core::hmac::webhook::{self, Style, WebhookSecret};
use portcullis_core::secret::Secret;
use portcullis_core::Timestamp;
use portcullis_store::{
    Attempt, AttemptNext, DeliveryStatus, StoreError, WebhookDeliveryRecord, WebhookEndpointRecord,
    Webhooks,
};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::Notify;

use crate::admin::{with_ip, Actor, AdminError};
use crate::audit::{AuditEvent, AuditTap, Auditor};
use crate::clock::Clock;
use crate::random_bytes;

/// The audit kinds delivered as webhooks, to endpoints that subscribed to them (or to `*`).
pub const EVENTS: &[&str] = &["api_key.new_ip", "api_key.revoked", "auth.failure_burst"];
/// The event [`WebhookAdmin::test`] sends to one endpoint, whatever it subscribed to.
pub const TEST_EVENT: &str = "webhook.test";
/// Subscribes to every kind in [`EVENTS`], and to those added later.
pub const ALL_EVENTS: &str = "*";
/// How long the replaced secret still signs after a rotation (Standard Webhooks headers
/// carry several signatures, so receivers can switch secrets without a refused delivery).
pub const ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Longest endpoint URL.
pub const MAX_URL_LEN: usize = 2048;
/// Longest description.
pub const MAX_DESCRIPTION: usize = 256;
/// The retry delays before the second, third … attempt with the default first delay: after
/// the last one fails, the delivery is given up. Later delays scale with the first
/// ([`WebhookSettings::first_retry`]).
pub const DEFAULT_SCHEDULE: &[Duration] = &[
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(2 * 60),
    Duration::from_secs(10 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(3600),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(4 * 3600),
];
/// Most text kept of why an attempt failed.
const MAX_ERROR_LEN: usize = 200;

/// How endpoints are checked and deliveries made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    /// Accept `http://` endpoint URLs on any host (default: only loopback ones).
    pub allow_http: bool,
    /// Attempts before a delivery is given up (1 to 9; default 9: the first and 8 retries).
    pub max_attempts: u32,
    /// The delay before the first retry (default 5 s); later ones keep the default
    /// schedule's ratios (×6, ×24, ×120 …).
    pub first_retry: Duration,
    /// How long one attempt may take, connection included.
    pub timeout: Duration,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// How long finished deliveries stay in the delivery log.
    pub retention: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            allow_http: false,
            max_attempts: DEFAULT_SCHEDULE.len() as u32 + 1,
            first_retry: DEFAULT_SCHEDULE[0],
            timeout: Duration::from_secs(10),
            concurrency: 8,
            retention: Duration::from_secs(30 * 86_400),
        }
    }
}

impl WebhookSettings {
    /// How long a claim holds a delivery: longer than an attempt can take, so that only a
    /// claimer that died lets it go early.
    fn lease(&self) -> Duration {
        self.timeout + Duration::from_secs(2)
    }

    /// How often the worker looks for due deliveries when nothing wakes it.
    fn poll(&self) -> Duration {
        self.first_retry
            .clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// The delay before attempt `attempt + 1`, after `attempt` (1-based) failed: the default
/// schedule scaled to `first_retry`, times a jitter factor of 0.9 to 1.1 from `random`
/// (0 to 65535). `None`: no attempt is left (`attempt >= max_attempts`).
pub fn backoff(
    attempt: u32,
    max_attempts: u32,
    first_retry: Duration,
    random: u16,
) -> Option<Duration> {
    if attempt == 0 || attempt >= max_attempts {
        return None;
    }
    let base = DEFAULT_SCHEDULE.get(attempt as usize - 1)?;
    let scale = first_retry.as_secs_f64() / DEFAULT_SCHEDULE[0].as_secs_f64();
    let jitter = 0.9 + 0.2 * f64::from(random) / f64::from(u16::MAX);
    Some(base.mul_f64(scale * jitter))
}

/// The body of a delivery: `{"type", "timestamp", "data"}` (Standard Webhooks' recommended
/// shape). `data` carries the audit event's fields that are set: `credential` (an id, never
/// a secret), `client_ip`, `route`, `actor`, `reason`, `request_id` and `detail` (as JSON).
pub fn payload(e: &AuditEvent) -> String {
    let mut data = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            data.insert(k.to_owned(), v);
        }
    };
    put("credential", e.credential_id.as_deref().map(Value::from));
    put(
        "client_ip",
        e.client_ip.map(|ip| Value::from(ip.to_string())),
    );
    put("route", e.route.as_deref().map(Value::from));
    put("actor", e.actor.as_deref().map(Value::from));
    put("reason", e.reason.map(Value::from));
    put(
        "request_id",
        e.request_id.as_ref().map(|r| Value::from(r.as_str())),
    );
    put(
        "detail",
        e.detail
            .as_deref()
            .and_then(|d| serde_json::from_str::<Value>(d).ok()),
    );
    body(e.kind, e.fields().time_ms, Value::Object(data))
}

fn body(kind: &str, time_ms: i64, data: Value) -> String {
    let mut timestamp = String::new();
    portcullis_core::audit::push_time(&mut timestamp, time_ms);
    json!({ "type": kind, "timestamp": timestamp, "data": data }).to_string()
}

/// Whether an endpoint that subscribed to `events` gets events of `kind`.
pub fn subscribed(events: &[String], kind: &str) -> bool {
    events
        .iter()
        .any(|e| e == kind || e == ALL_EVENTS && EVENTS.contains(&kind))
}

/// The endpoint URL, checked: absolute `https://`, or `http://` when the host is a loopback
/// address (`localhost`, `127.0.0.0/8`, `[::1]`) or `allow_http` is set; a host, no user
/// information, no fragment, no whitespace or control characters, at most [`MAX_URL_LEN`].
pub fn checked_url(url: &str, allow_http: bool) -> Result<String, AdminError> {
    let bad = |why: &str| Err(AdminError::Invalid(format!("`url` {why}")));
    let url = url.trim();
    if url.is_empty() || url.len() > MAX_URL_LEN {
        return bad("must be 1-2048 characters");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) || url.contains('#') {
        return bad("must have no spaces, control characters or fragment");
    }
    let (https, rest) = if let Some(r) = strip_prefix_ignore_case(url, "https://") {
        (true, r)
    } else if let Some(r) = strip_prefix_ignore_case(url, "http://") {
        (false, r)
    } else {
        return bad("must be an absolute http:// or https:// URL");
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    if authority.contains('@') {
        return bad("must not carry user information");
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => return bad("has an unclosed IPv6 address"),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return bad("must name a host");
    }
    if port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return bad("has a bad port");
    }
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !https && !loopback && !allow_http {
        return bad(
            "must be https:// (http:// only to a loopback address, or with webhooks.allow_http)",
        );
    }
    Ok(url.to_owned())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len()
        && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes()))
    .then(|| &s[prefix.len()..])
}

/// The event names, checked: 1 to 16 of [`EVENTS`], [`TEST_EVENT`] or [`ALL_EVENTS`],
/// without repeats.
pub fn checked_events(events: &[String]) -> Result<Vec<String>, AdminError> {
    if events.is_empty() || events.len() > 16 {
        return Err(AdminError::Invalid(
            "`events` must name 1 to 16 event types".into(),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(events.len());
    for e in events {
        let e = e.trim();
        if !(EVENTS.contains(&e) || e == TEST_EVENT || e == ALL_EVENTS) {
            return Err(AdminError::Invalid(format!(
                "unknown event type `{}`: use {}, {TEST_EVENT} or {ALL_EVENTS}",
                e.chars().take(64).collect::<String>(),
                EVENTS.join(", ")
            )));
        }
        if !out.iter().any(|o| o == e) {
            out.push(e.to_owned());
        }
    }
    Ok(out)
}

/// The associated data a secret is sealed under: its kind and endpoint id.
fn aad(id: &str) -> Vec<u8> {
    let mut a = b"webhook-secret:".to_vec();
    a.extend_from_slice(id.as_bytes());
    a
}

fn new_secret() -> Secret {
    Secret::new(webhook::new_secret::<32>(&random_bytes()))
}

fn new_delivery_id() -> String {
    format!("msg_{}", bs58::encode(random_bytes::<16>()).into_string())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A new pending delivery of `body` to `endpoint_id`, due at `now`.
fn pending(endpoint_id: &str, kind: &str, body: String, now: Timestamp) -> WebhookDeliveryRecord {
    WebhookDeliveryRecord {
        id: new_delivery_id(),
        endpoint_id: endpoint_id.to_owned(),
        event_type: kind.to_owned(),
        payload: body,
        status: DeliveryStatus::Pending,
        attempts: 0,
        next_attempt_at: now,
        last_attempt_at: None,
        last_status: None,
        last_error: None,
        created_at: now,
        delivered_at: None,
    }
}

/// The host of an endpoint URL, for audit details (the path or query may carry a token).
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or("")
}

/// What `create` takes (the admin API's JSON body).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where deliveries are POSTed.
    pub url: String,
    /// The event types it receives.
    pub events: Vec<String>,
    /// A note for people.
    #[serde(default)]
    pub description: Option<String>,
}

/// The admin use cases for webhook endpoints; each change durable and audited.
pub struct WebhookAdmin {
    store: Arc<dyn Webhooks>,
    seal: Arc<SealKey>,
    auditor: Auditor,
    clock: Arc<dyn Clock>,
    settings: WebhookSettings,
    wake: Arc<Notify>,
}

impl WebhookAdmin {
    /// The use cases over `store`; `wake` is the [`Deliverer`]'s (a test delivery is sent at
    /// once).
    pub fn new(
        store: Arc<dyn Webhooks>,
        seal: Arc<SealKey>,
        auditor: Auditor,
        clock: Arc<dyn Clock>,
        settings: WebhookSettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            seal,
            auditor,
            clock,
            settings,
            wake,
        }
    }

    async fn audit(&self, actor: Actor, kind: &'static str, e: &WebhookEndpointRecord) {
        let ev = with_ip(
            AuditEvent::new(self.clock.now(), kind, "ok").actor(actor.name),
            actor,
        )
        .credential(e.id.as_str().into())
        .detail(json!({ "host": host_of(&e.url), "events": e.events }));
        self.auditor.emit_durable(ev).await;
    }

    /// Registers an endpoint; its secret (`whsec_` + 32 random bytes, base64) is returned
    /// here only, and stored sealed.
    pub async fn create(
        &self,
        actor: Actor,
        req: NewWebhook,
    ) -> Result<(WebhookEndpointRecord, Secret), AdminError> {
        crate::admin::ensure_auditable(&self.auditor)?;
        let url = checked_url(&req.url, self.settings.allow_http)?;
        let events = checked_events(&req.events)?;
        let description = req.description.unwrap_or_default().trim().to_owned();
        if description.len() > MAX_DESCRIPTION || description.chars().any(char::is_control) {
            return Err(AdminError::Invalid(
                "`description` must be at most 256 characters without control characters".into(),
            ));
        }
        let id = format!("wh_{}", bs58::encode(random_bytes::<16>()).into_string());
        let secret = new_secret();
        let record = WebhookEndpointRecord {
            secret: self
                .seal
                .seal(random_bytes(), &aad(&id), secret.expose().as_bytes()),
            id,
            url,
            description,
            events,
            previous_secret: None,
            previous_expires_at: None,
            created_at: self.clock.now(),
            rotated_at: None,
            disabled_at: None,
            disabled_reason: None,
        };
        self.store.insert_webhook(&record).await?;
        self.audit(actor, "webhook.created", &record).await;
        Ok((record, secret))
    }

    /// Endpoints ordered by id.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookEndpointRecord>, AdminError> {
        Ok(self
            .store
            .list_webhooks(after, limit.clamp(1, 1000))
            .await?)
    }

    /// One endpoint.
    pub async fn show(&self, id: &str) -> Result<WebhookEndpointRecord, AdminError> {
        self.store
            .find_webhook(id)
            .await?
            .ok_or(AdminError::NotFound)
    }

    /// Deletes an endpoint and its delivery log: nothing more is sent to it.
    pub async fn delete(&self, actor: Actor, id: &str) -> Result<(), AdminError> {
        crate::admin::ensure_auditable(&self.auditor)?;
        let e = self.show(id).await?;
        self.store.delete_webhook(id).await?;
        self.audit(actor, "webhook.deleted", &e).await;
        Ok(())
    }

    /// A new secret, returned here only; the current one goes on signing beside it for
    /// [`ROTATION_GRACE`].
    pub async fn rotate_secret(
        &self,
        actor: Actor,
        id: &str,
    ) -> Result<(WebhookEndpointRecord, Secret), AdminError> {
        crate::admin::ensure_auditable(&self.auditor)?;
        let now = self.clock.now();
        let secret = new_secret();
        let sealed = self
            .seal
            .seal(random_bytes(), &aad(id), secret.expose().as_bytes());
        let until = now.plus_millis(millis(ROTATION_GRACE));
        let e = self
            .store
            .rotate_webhook_secret(id, &sealed, until, now)
            .await?;
        self.audit(actor, "webhook.secret_rotated", &e).await;
        Ok((e, secret))
    }

    /// Enqueues a [`TEST_EVENT`] delivery to this endpoint (whatever it subscribed to) and
    /// wakes the worker; returns the delivery, to follow in the log.
    pub async fn test(&self, actor: Actor, id: &str) -> Result<WebhookDeliveryRecord, AdminError> {
        crate::admin::ensure_auditable(&self.auditor)?;
        let e = self.show(id).await?;
        if e.disabled_at.is_some() {
            return Err(AdminError::Conflict(
                "the endpoint is disabled (it answered 410 Gone); register it again".into(),
            ));
        }
        let now = self.clock.now();
        let data = json!({ "endpoint": e.id, "message": "a test delivery from Portcullis" });
        let d = pending(
            &e.id,
            TEST_EVENT,
            body(TEST_EVENT, now.as_millis(), data),
            now,
        );
        if self
            .store
            .enqueue_deliveries(std::slice::from_ref(&d))
            .await?
            == 0
        {
            return Err(AdminError::NotFound);
        }
        self.audit(actor, "webhook.tested", &e).await;
        self.wake.notify_one();
        Ok(d)
    }

    /// An endpoint's delivery log, newest first, after the delivery `after`.
    pub async fn deliveries(
        &self,
        id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookDeliveryRecord>, AdminError> {
        self.show(id).await?;
        Ok(self
            .store
            .list_deliveries(id, after, limit.clamp(1, 1000))
            .await?)
    }
}

/// The outbox's entrance: turns stored audit events of a deliverable kind into deliveries
/// (see [`AuditTap`]).
pub struct WebhookTap {
    store: Arc<dyn Webhooks>,
    wake: Arc<Notify>,
}

impl WebhookTap {
    /// A tap enqueuing into `store`, waking `wake` (the [`Deliverer`]'s) when it did.
    pub fn new(store: Arc<dyn Webhooks>, wake: Arc<Notify>) -> Self {
        Self { store, wake }
    }

    /// Every enabled endpoint.
    async fn endpoints(&self) -> Result<Vec<WebhookEndpointRecord>, StoreError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list_webhooks(after.as_deref(), 1000).await?;
            let full = page.len() >= 1000;
            after = page.last().map(|e| e.id.clone());
            all.extend(page.into_iter().filter(|e| e.disabled_at.is_none()));
            if !full {
                return Ok(all);
            }
        }
    }

    async fn try_enqueue(&self, events: &[&AuditEvent]) -> Result<u64, StoreError> {
        let endpoints = self.endpoints().await?;
        let mut batch = Vec::new();
        for e in events {
            let mut body = None;
            for ep in endpoints.iter().filter(|ep| subscribed(&ep.events, e.kind)) {
                let b = body.get_or_insert_with(|| payload(e)).clone();
                let at = Timestamp::from_millis(e.fields().time_ms);
                batch.push(pending(&ep.id, e.kind, b, at));
            }
        }
        if batch.is_empty() {
            return Ok(0);
        }
        self.store.enqueue_deliveries(&batch).await
    }
}

#[async_trait::async_trait]
impl AuditTap for WebhookTap {
    fn wants(&self, kind: &str) -> bool {
        EVENTS.contains(&kind)
    }

    async fn stored(&self, events: &[&AuditEvent]) {
        // The same store just took the audit batch: a failure here is brief. Retried for a
        // while (the audit writer, and so the emitters, wait meanwhile), then given up with
        // an error in the log rather than holding the whole trail.
        let mut delay = Duration::from_millis(50);
        for _ in 0..10 {
            match self.try_enqueue(events).await {
                Ok(0) => return,
                Ok(_) => {
                    self.wake.notify_one();
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "enqueueing webhook deliveries failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        tracing::error!(
            events = events.len(),
            "webhook deliveries of these audit events were not enqueued"
        );
    }
}

/// Why an attempt got no HTTP answer. The text is kept in the delivery log: never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The URL could not be used.
    #[error("bad URL")]
    BadUrl,
    /// No answer within the attempt's timeout.
    #[error("timed out")]
    Timeout,
    /// The connection failed (refused, reset, TLS, DNS …).
    #[error("{0}")]
    Unreachable(String),
}

/// Sends one signed POST (the HTTP client lives in the binary).
#[async_trait::async_trait]
pub trait Sender: Send + Sync {
    /// POSTs `body` (JSON) to `url` with `headers`; the answer's status code.
    async fn send(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: &str,
    ) -> Result<u16, SendError>;
}

/// The retry loop: claims due deliveries, signs and sends them, records each attempt.
pub struct Deliverer {
    store: Arc<dyn Webhooks>,
    seal: Arc<SealKey>,
    sender: Arc<dyn Sender>,
    auditor: Auditor,
    clock: Arc<dyn Clock>,
    settings: WebhookSettings,
    wake: Arc<Notify>,
}

impl Deliverer {
    /// A worker over `store`, woken by `wake` (share it with [`WebhookTap`] and
    /// [`WebhookAdmin`]).
    pub fn new(
        store: Arc<dyn Webhooks>,
        seal: Arc<SealKey>,
        sender: Arc<dyn Sender>,
        auditor: Auditor,
        clock: Arc<dyn Clock>,
        settings: WebhookSettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            store,
            seal,
            sender,
            auditor,
            clock,
            settings,
            wake,
        }
    }

    /// Delivers until `stop` is notified: at most [`WebhookSettings::concurrency`] attempts
    /// at once, woken by new deliveries or every poll interval (for retries that came due).
    /// Attempts in flight when it stops are dropped; their lease runs out and the next start
    /// makes them again. Prunes the delivery log hourly.
    pub async fn run(self: Arc<Self>, stop: Arc<Notify>) {
        let mut inflight = tokio::task::JoinSet::new();
        let mut pruned_at: Option<Timestamp> = None;
        let stopped = stop.notified();
        let mut stopped = std::pin::pin!(stopped);
        loop {
            let now = self.clock.now();
            if pruned_at.is_none_or(|t| now.as_millis() - t.as_millis() >= 3_600_000) {
                pruned_at = Some(now);
                self.prune(now).await;
            }
            let room = self.settings.concurrency.max(1)
                - inflight.len().min(self.settings.concurrency.max(1));
            let mut claimed = 0;
            if room > 0 {
                match self.claim(room).await {
                    Ok(due) => {
                        claimed = due.len();
                        for d in due {
                            let me = self.clone();
                            inflight.spawn(async move { me.attempt(d).await });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming webhook deliveries failed"),
                }
            }
            if claimed > 0 && claimed == room {
                // Perhaps more is due: look again as soon as a slot frees.
                tokio::select! {
                    _ = inflight.join_next() => {}
                    () = &mut stopped => break,
                }
                continue;
            }
            tokio::select! {
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll()) => {}
                () = &mut stopped => break,
            }
        }
        inflight.abort_all();
    }

    /// Claims and makes every due attempt it can (at most `concurrency`), waiting for them:
    /// one step of [`Deliverer::run`], for tests and tools. Returns how many were made.
    pub async fn deliver_due(self: &Arc<Self>) -> Result<usize, StoreError> {
        let due = self.claim(self.settings.concurrency.max(1)).await?;
        let n = due.len();
        let mut set = tokio::task::JoinSet::new();
        for d in due {
            let me = self.clone();
            set.spawn(async move { me.attempt(d).await });
        }
        while set.join_next().await.is_some() {}
        Ok(n)
    }

    async fn claim(&self, n: usize) -> Result<Vec<WebhookDeliveryRecord>, StoreError> {
        let now = self.clock.now();
        let lease_until = now.plus_millis(millis(self.settings.lease()));
        self.store
            .claim_deliveries(now, lease_until, u32::try_from(n).unwrap_or(u32::MAX))
            .await
    }

    async fn prune(&self, now: Timestamp) {
        let before = now.plus_millis(-millis(self.settings.retention));
        loop {
            match self.store.prune_deliveries(before).await {
                Ok(0) => return,
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => {
                    tracing::warn!(error = %e, "pruning the webhook delivery log failed");
                    return;
                }
            }
        }
    }

    /// The secrets that sign at `now`: the current one, and the previous one in its grace.
    fn secrets(&self, e: &WebhookEndpointRecord, now: Timestamp) -> Option<Vec<WebhookSecret>> {
        let open = |sealed: &[u8]| {
            let text = self.seal.open(&aad(&e.id), sealed).ok()?;
            let text = std::str::from_utf8(&text).ok()?;
            webhook::parse_secret(Style::StandardWebhooks, text).ok()
        };
        let mut v = vec![open(&e.secret)?];
        if let (Some(p), Some(until)) = (&e.previous_secret, e.previous_expires_at) {
            if now < until {
                v.extend(open(p));
            }
        }
        Some(v)
    }

    /// One attempt of `d`, recorded.
    async fn attempt(&self, d: WebhookDeliveryRecord) {
        let endpoint = match self.store.find_webhook(&d.endpoint_id).await {
            Ok(Some(e)) => e,
            // Deleted meanwhile: its deliveries went with it.
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, delivery = %d.id, "reading a webhook endpoint failed");
                return;
            }
        };
        let now = self.clock.now();
        let (status_code, error) = if endpoint.disabled_at.is_some() {
            (None, Some("endpoint disabled".to_owned()))
        } else {
            match self.secrets(&endpoint, now) {
                None => (
                    None,
                    Some("the endpoint's secret does not open under this master key".to_owned()),
                ),
                Some(secrets) => self.send(&endpoint, &d, &secrets, now).await,
            }
        };
        let at = self.clock.now();
        let attempts = d.attempts.saturating_add(1);
        let gone = status_code == Some(410);
        let next = match status_code {
            Some(200..=299) => AttemptNext::Delivered,
            _ if gone || endpoint.disabled_at.is_some() => AttemptNext::Failed,
            _ => {
                let r = u16::from_be_bytes(random_bytes());
                match backoff(
                    attempts,
                    self.settings.max_attempts,
                    self.settings.first_retry,
                    r,
                ) {
                    Some(delay) => AttemptNext::RetryAt(at.plus_millis(millis(delay))),
                    None => AttemptNext::Failed,
                }
            }
        };
        let error = match (next, status_code) {
            (AttemptNext::Delivered, _) => None,
            (_, Some(code)) => Some(format!("HTTP {code}")),
            (_, None) => error,
        };
        let attempt = Attempt {
            at,
            status_code,
            error,
            next,
        };
        if let Err(e) = self.store.record_attempt(&d.id, &attempt).await {
            tracing::warn!(error = %e, delivery = %d.id, "recording a webhook attempt failed");
        }
        if gone {
            self.disable(&endpoint, at).await;
        }
    }

    /// Signs and POSTs `d`: the status code, or why there was none.
    async fn send(
        &self,
        e: &WebhookEndpointRecord,
        d: &WebhookDeliveryRecord,
        secrets: &[WebhookSecret],
        now: Timestamp,
    ) -> (Option<u16>, Option<String>) {
        let headers = match webhook::sign(
            Style::StandardWebhooks,
            secrets,
            &d.id,
            d.payload.as_bytes(),
            now,
        ) {
            Ok(h) => h,
            Err(err) => return (None, Some(format!("cannot sign: {err}"))),
        };
        let sent = tokio::time::timeout(
            self.settings.timeout,
            self.sender.send(&e.url, &headers, &d.payload),
        )
        .await
        .unwrap_or(Err(SendError::Timeout));
        match sent {
            Ok(code) => (Some(code), None),
            Err(err) => {
                let mut text = err.to_string();
                if text.len() > MAX_ERROR_LEN {
                    let mut cut = MAX_ERROR_LEN;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                (None, Some(text))
            }
        }
    }

    /// The receiver answered 410 Gone: no more deliveries to it (audited).
    async fn disable(&self, e: &WebhookEndpointRecord, at: Timestamp) {
        let reason = "the receiver answered 410 Gone";
        match self.store.disable_webhook(&e.id, at, reason).await {
            Ok(e) => {
                let ev = AuditEvent::new(at, "webhook.disabled", "notice")
                    .actor("system:webhooks")
                    .credential(e.id.as_str().into())
                    .detail(json!({ "host": host_of(&e.url), "reason": reason }));
                self.auditor.emit_durable(ev).await;
            }
            Err(err) => {
                tracing::warn!(error = %err, endpoint = %e.id, "disabling a webhook endpoint failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::clock::ManualClock;
    use portcullis_core::hmac::webhook::Tolerance;
    use portcullis_store::memory::MemoryStore;
    use portcullis_store::AuditLog as _;

    const ACTOR: Actor = Actor {
        name: "admin-token",
        ip: None,
    };

    /// A receiver that answers from a script (then 200), recording what it got.
    #[derive(Default)]
    struct FakeSender {
        answers: Mutex<Vec<Result<u16, SendError>>>,
        got: Mutex<Vec<(String, http::HeaderMap, String)>>,
    }

    #[async_trait::async_trait]
    impl Sender for FakeSender {
        async fn send(
            &self,
            url: &str,
            headers: &[(&'static str, String)],
            body: &str,
        ) -> Result<u16, SendError> {
            let mut h = http::HeaderMap::new();
            for (n, v) in headers {
                h.insert(*n, v.parse().unwrap());
            }
            self.got
                .lock()
                .unwrap()
                .push((url.to_owned(), h, body.to_owned()));
            let mut a = self.answers.lock().unwrap();
            if a.is_empty() {
                Ok(200)
            } else {
                a.remove(0)
            }
        }
    }

    struct Setup {
        store: Arc<MemoryStore>,
        clock: Arc<ManualClock>,
        admin: WebhookAdmin,
        deliverer: Arc<Deliverer>,
        sender: Arc<FakeSender>,
        auditor: Auditor,
    }

    async fn setup(answers: Vec<Result<u16, SendError>>) -> Setup {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_714_000_000)));
        let seal = Arc::new(SealKey::new(&[7; 32]));
        let wake = Arc::new(Notify::new());
        let tap = Arc::new(WebhookTap::new(store.clone(), wake.clone()));
        let (auditor, writer) = crate::audit::channel(store.clone(), None, 1024)
            .await
            .unwrap();
        tokio::spawn(writer.tap(tap).run());
        let settings = WebhookSettings {
            max_attempts: 3,
            ..WebhookSettings::default()
        };
        let sender = Arc::new(FakeSender {
            answers: Mutex::new(answers),
            ..FakeSender::default()
        });
        let admin = WebhookAdmin::new(
            store.clone(),
            seal.clone(),
            auditor.clone(),
            clock.clone(),
            settings.clone(),
            wake.clone(),
        );
        let deliverer = Arc::new(Deliverer::new(
            store.clone(),
            seal,
            sender.clone(),
            auditor.clone(),
            clock.clone(),
            settings,
            wake,
        ));
        Setup {
            store,
            clock,
            admin,
            deliverer,
            sender,
            auditor,
        }
    }

    fn new_webhook(url: &str, events: &[&str]) -> NewWebhook {
        NewWebhook {
            url: url.into(),
            events: events.iter().map(|e| (*e).to_owned()).collect(),
            description: Some("ops".into()),
        }
    }

    fn verify(h: &http::HeaderMap, body: &str, secret: &str, now: Timestamp) -> bool {
        let s = webhook::parse_secret(Style::StandardWebhooks, secret).unwrap();
        webhook::verify(
            Style::StandardWebhooks,
            h,
            body.as_bytes(),
            &[s],
            Tolerance::default(),
            now,
        )
        .is_ok()
    }

    #[test]
    fn the_backoff_schedule_scales_and_jitters_within_ten_percent() {
        let five = Duration::from_secs(5);
        let mid = u16::MAX / 2;
        let secs = |n| backoff(n, 9, five, mid).map(|d| d.as_secs_f64().round() as u64);
        let schedule: Vec<_> = (1..=8).map(|n| secs(n).unwrap()).collect();
        assert_eq!(schedule, [5, 30, 120, 600, 1800, 3600, 7200, 14400]);
        assert_eq!(backoff(9, 9, five, mid), None, "nine attempts, then failed");
        assert_eq!(backoff(0, 9, five, mid), None);
        assert_eq!(backoff(3, 3, five, mid), None);
        assert!(backoff(1, 9, five, 0).unwrap() >= Duration::from_millis(4_500));
        assert!(backoff(1, 9, five, u16::MAX).unwrap() <= Duration::from_millis(5_500));
        // Scaled down for tests: the ratios stay.
        let fast = backoff(2, 9, Duration::from_millis(50), mid).unwrap();
        assert_eq!(fast.as_millis().div_ceil(10) * 10, 300);
    }

    #[test]
    fn urls_must_be_https_except_to_loopback_or_when_allowed() {
        for ok in [
            "https://hooks.example/x?y=1",
            "HTTPS://hooks.example:8443",
            "http://127.0.0.1:9000/hook",
            "http://localhost/hook",
            "http://[::1]:80/",
        ] {
            assert!(checked_url(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "hooks.example/x",
            "ftp://hooks.example",
            "http://hooks.example/x",
            "http://10.0.0.1/x",
            "https://",
            "https:///path",
            "https://user:pw@hooks.example/",
            "https://hooks.example/a b",
            "https://hooks.example/#frag",
            "https://hooks.example:99999/",
            "https://[::1/",
        ] {
            assert!(checked_url(bad, false).is_err(), "{bad}");
        }
        assert!(checked_url("http://hooks.example/x", true).is_ok());
        assert!(checked_url(&format!("https://h/{}", "a".repeat(MAX_URL_LEN)), false).is_err());
    }

    #[test]
    fn event_names_are_checked_and_star_means_the_deliverable_kinds() {
        assert_eq!(
            checked_events(&["api_key.revoked".into(), "api_key.revoked".into()]).unwrap(),
            ["api_key.revoked"]
        );
        assert!(checked_events(&[]).is_err());
        assert!(checked_events(&["api_key.created".into()]).is_err());
        assert!(checked_events(&["webhook.test".into(), "*".into()]).is_ok());
        let star = vec!["*".to_owned()];
        assert!(EVENTS.iter().all(|k| subscribed(&star, k)));
        assert!(!subscribed(&star, "auth.decision"));
        assert!(!subscribed(&["api_key.revoked".into()], "api_key.new_ip"));
    }

    #[test]
    fn the_payload_has_the_recommended_shape_and_the_audit_fields() {
        let e = AuditEvent::new(
            Timestamp::from_millis(1_764_000_000_123),
            "api_key.revoked",
            "ok",
        )
        .credential("key_1".into())
        .client_ip("10.1.2.3".parse().unwrap())
        .actor("admin-token")
        .detail(json!({"name": "k", "scopes": ["a"]}));
        let v: Value = serde_json::from_str(&payload(&e)).unwrap();
        assert_eq!(v["type"], "api_key.revoked");
        assert_eq!(v["timestamp"], "2025-11-24T16:00:00.123Z");
        assert_eq!(v["data"]["credential"], "key_1");
        assert_eq!(v["data"]["client_ip"], "10.1.2.3");
        assert_eq!(v["data"]["actor"], "admin-token");
        assert_eq!(v["data"]["detail"]["scopes"][0], "a");
        assert!(
            v["data"].get("route").is_none(),
            "unset fields are left out"
        );
        assert_eq!(v.as_object().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn secrets_are_sealed_shown_once_and_rotation_signs_with_both_for_a_while() {
        let s = setup(vec![]).await;
        let (e, secret) = s
            .admin
            .create(ACTOR, new_webhook("https://hooks.example/a", &["*"]))
            .await
            .unwrap();
        assert!(e.id.starts_with("wh_") && secret.expose().starts_with("whsec_"));
        assert!(webhook::parse_secret(Style::StandardWebhooks, secret.expose()).is_ok());
        let stored = s.store.find_webhook(&e.id).await.unwrap().unwrap();
        assert!(!stored
            .secret
            .windows(secret.expose().len())
            .any(|w| w == secret.expose().as_bytes()));
        // Sealed for this id only.
        let seal = SealKey::new(&[7; 32]);
        assert!(seal.open(&aad(&e.id), &stored.secret).is_ok());
        assert!(seal.open(&aad("wh_other"), &stored.secret).is_err());

        let (_, new) = s.admin.rotate_secret(ACTOR, &e.id).await.unwrap();
        let d = s.admin.test(ACTOR, &e.id).await.unwrap();
        assert_eq!(s.deliverer.deliver_due().await.unwrap(), 1);
        let now = s.clock.now();
        {
            let got = s.sender.got.lock().unwrap();
            let (url, h, body) = &got[0];
            assert_eq!(url, "https://hooks.example/a");
            assert_eq!(h["webhook-id"], d.id.as_str());
            assert!(
                verify(h, body, new.expose(), now),
                "the new secret verifies"
            );
            assert!(verify(h, body, secret.expose(), now), "so does the old one");
            let v: Value = serde_json::from_str(body).unwrap();
            assert_eq!(v["type"], "webhook.test");
            assert!(!body.contains("whsec_"));
        }
        // After the grace, only the new secret signs.
        s.clock.advance(millis(ROTATION_GRACE) + 1);
        s.admin.test(ACTOR, &e.id).await.unwrap();
        s.deliverer.deliver_due().await.unwrap();
        let got = s.sender.got.lock().unwrap();
        let (_, h, body) = &got[1];
        let now = s.clock.now();
        assert!(verify(h, body, new.expose(), now));
        assert!(!verify(h, body, secret.expose(), now));
        assert_eq!(
            h["webhook-signature"]
                .to_str()
                .unwrap()
                .matches("v1,")
                .count(),
            1
        );
    }

    #[tokio::test]
    async fn audit_events_become_deliveries_retried_with_backoff_until_delivered() {
        let s = setup(vec![Ok(500), Err(SendError::Unreachable("refused".into()))]).await;
        let (revoked, secret) = s
            .admin
            .create(
                ACTOR,
                new_webhook("https://a.example/", &["api_key.revoked"]),
            )
            .await
            .unwrap();
        let (other, _) = s
            .admin
            .create(
                ACTOR,
                new_webhook("https://b.example/", &["api_key.new_ip"]),
            )
            .await
            .unwrap();
        let at = s.clock.now();
        s.auditor
            .emit_durable(
                AuditEvent::new(at, "api_key.revoked", "ok")
                    .credential("key_9".into())
                    .actor("admin-token"),
            )
            .await;
        s.auditor
            .emit_durable(AuditEvent::new(at, "auth.decision", "allow"))
            .await;
        // Durable emit returned: the delivery is enqueued, for the subscriber only.
        let log = s.admin.deliveries(&revoked.id, None, 10).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].event_type, "api_key.revoked");
        assert!(s
            .admin
            .deliveries(&other.id, None, 10)
            .await
            .unwrap()
            .is_empty());

        // 500: retried about 5 s later, not before.
        assert_eq!(s.deliverer.deliver_due().await.unwrap(), 1);
        let d = &s.admin.deliveries(&revoked.id, None, 10).await.unwrap()[0];
        assert_eq!((d.attempts, d.last_status), (1, Some(500)));
        assert_eq!(d.last_error.as_deref(), Some("HTTP 500"));
        let wait = d.next_attempt_at.as_millis() - s.clock.now().as_millis();
        assert!((4_500..=5_500).contains(&wait), "{wait}");
        s.clock.advance(4_000);
        assert_eq!(s.deliverer.deliver_due().await.unwrap(), 0);
        s.clock.advance(1_600);
        // Unreachable: retried about 30 s later.
        assert_eq!(s.deliverer.deliver_due().await.unwrap(), 1);
        let d = &s.admin.deliveries(&revoked.id, None, 10).await.unwrap()[0];
        assert_eq!((d.attempts, d.last_status), (2, None));
        assert_eq!(d.last_error.as_deref(), Some("refused"));
        s.clock.advance(33_001);
        assert_eq!(s.deliverer.deliver_due().await.unwrap(), 1);
        let d = &s.admin.deliveries(&revoked.id, None, 10).await.unwrap()[0];
        assert_eq!(d.status, DeliveryStatus::Delivered);
        assert_eq!(
            (d.attempts, d.last_status, &d.last_error),
            (3, Some(200), &None)
        );

        // The same id and body every time, signed, never a secret inside.
        let got = s.sender.got.lock().unwrap();
        assert_eq!(got.len(), 3);
        assert!(got
            .iter()
            .all(|(_, h, b)| h["webhook-id"] == d.id.as_str() && *b == d.payload));
        let (_, h, body) = &got[2];
        assert!(verify(h, body, secret.expose(), s.clock.now()));
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["data"]["credential"], "key_9");
    }

    #[tokio::test]
    async fn attempts_run_out_and_gone_disables_the_endpoint() {
        let s = setup(vec![Ok(503), Ok(503), Ok(503), Ok(410)]).await;
        let (e, _) = s
            .admin
            .create(ACTOR, new_webhook("https://a.example/", &["*"]))
            .await
            .unwrap();
        let d = s.admin.test(ACTOR, &e.id).await.unwrap();
        for _ in 0..3 {
            assert_eq!(s.deliverer.deliver_due().await.unwrap(), 1);
            s.clock.advance(40_000);
        }
        let log = s.admin.deliveries(&e.id, None, 10).await.unwrap();
        assert_eq!(log[0].id, d.id);
        assert_eq!(
            (log[0].status, log[0].attempts),
            (DeliveryStatus::Failed, 3),
            "max_attempts = 3"
        );
        assert_eq!(s.deliverer.deliver_due().await.unwrap(), 0);

        // 410: disabled, what is pending fails, nothing more is enqueued for it.
        s.admin.test(ACTOR, &e.id).await.unwrap();
        s.deliverer.deliver_due().await.unwrap();
        let e = s.admin.show(&e.id).await.unwrap();
        assert!(e.disabled_at.is_some());
        assert!(matches!(
            s.admin.test(ACTOR, &e.id).await,
            Err(AdminError::Conflict(_))
        ));
        s.auditor
            .emit_durable(AuditEvent::new(s.clock.now(), "api_key.revoked", "ok"))
            .await;
        assert_eq!(s.admin.deliveries(&e.id, None, 10).await.unwrap().len(), 2);
        let trail = s
            .store
            .query(&portcullis_store::AuditQuery {
                kind: Some("webhook.disabled".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(trail.len(), 1);
    }

    #[tokio::test]
    async fn admin_changes_are_checked_and_audited() {
        let s = setup(vec![]).await;
        for bad in [
            new_webhook("http://hooks.example/", &["*"]),
            new_webhook("https://hooks.example/", &["nope"]),
            new_webhook("https://hooks.example/", &[]),
            NewWebhook {
                description: Some("x".repeat(MAX_DESCRIPTION + 1)),
                ..new_webhook("https://hooks.example/", &["*"])
            },
        ] {
            assert!(matches!(
                s.admin.create(ACTOR, bad).await,
                Err(AdminError::Invalid(_))
            ));
        }
        let (e, _) = s
            .admin
            .create(
                ACTOR,
                new_webhook("https://hooks.example/p?token=t0ken", &["*"]),
            )
            .await
            .unwrap();
        s.admin.delete(ACTOR, &e.id).await.unwrap();
        assert!(matches!(
            s.admin.delete(ACTOR, &e.id).await,
            Err(AdminError::NotFound)
        ));
        assert!(matches!(
            s.admin.rotate_secret(ACTOR, &e.id).await,
            Err(AdminError::NotFound)
        ));
        assert!(matches!(
            s.admin.deliveries(&e.id, None, 10).await,
            Err(AdminError::NotFound)
        ));
        let trail = s
            .store
            .query(&portcullis_store::AuditQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        let kinds: Vec<_> = trail.iter().map(|e| e.kind.as_ref()).collect();
        assert_eq!(kinds, ["webhook.deleted", "webhook.created"]);
        assert!(
            trail.iter().all(|e| !e.body.contains("t0ken")),
            "no URL token"
        );
    }
}
