//! Admin use cases for API keys: create, list, show, update, rotate, revoke, import.
//!
//! Each change is durable in the store before it returns, invalidates the lookup cache (so it
//! takes effect on the next request), and is audited (durably) with who made it. Raw keys are
//! returned exactly once, from `create`, `rotate` and never again.

use std::net::IpAddr;
use std::sync::Arc;

use portcullis_core::api_key::{self, Prefix};
use portcullis_core::crypto::{self, Sha256Digest};
use portcullis_core::secret::Secret;
use portcullis_core::{ScopeSet, Timestamp};
use portcullis_store::{ApiKeyRecord, ApiKeys, KeyPatch, QuotaSpec, RateLimitSpec, StoreError};
use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::audit::{AuditEvent, Auditor};
use crate::authn::api_key::KeyCache;
use crate::clock::Clock;
use crate::random_bytes;
use crate::usage::UsageTracker;

/// Why an admin request was refused. `Store` details are logged, never returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The request conflicts with the current state (already rotated, duplicate import).
    #[error("{0}")]
    Conflict(String),
    /// The request is invalid; the text says what to fix and contains no secret.
    #[error("{0}")]
    Invalid(String),
    /// No such key.
    #[error("not found")]
    NotFound,
    /// The store failed.
    #[error("store: {0}")]
    Store(StoreError),
    /// The audit trail is not storing events: a change it could not record is not made.
    #[error("the audit trail is not storing events")]
    AuditUnavailable,
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => AdminError::NotFound,
            StoreError::Conflict(what) => AdminError::Conflict(what.to_string()),
            other => AdminError::Store(other),
        }
    }
}

/// Limits on what a key may carry.
pub mod limits {
    /// Longest name / owner.
    pub const MAX_NAME: usize = 128;
    /// Most scopes per key.
    pub const MAX_SCOPES: usize = 64;
    /// Most named rate limits per key.
    pub const MAX_RATE_LIMITS: usize = 8;
    /// Largest metadata object, serialised.
    pub const MAX_METADATA_BYTES: usize = 4096;
    /// Most keys in one import.
    pub const MAX_IMPORT: usize = 100_000;
}

/// A request to create a key (also the fields of an import item).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Human name (required).
    pub name: String,
    /// Owner / client id.
    #[serde(default)]
    pub owner: Option<String>,
    /// Scopes.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Absolute expiry, Unix milliseconds.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
    /// Expiry relative to now, in seconds (alternative to `expires_at`).
    #[serde(default)]
    pub expires_in: Option<u64>,
    /// Free-form JSON object.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// Named rate limits overriding the route's.
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSpec>,
    /// Usage quota with periodic refill.
    #[serde(default)]
    pub quota: Option<QuotaSpec>,
}

/// One key to import: exactly one of `key` (raw) or `hash` (SHA-256, hex or base64).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportKey {
    /// The raw key as the customer holds it.
    #[serde(default)]
    pub key: Option<Secret>,
    /// SHA-256 of the raw key, 64 hex characters or standard base64.
    #[serde(default)]
    pub hash: Option<String>,
    /// The key's properties.
    #[serde(flatten)]
    pub fields: NewKey,
}

/// A change to a key's properties (`PATCH`): a field left out stays as it is; a field given
/// replaces the stored value whole (the scopes, the metadata object, the list of rate
/// limits). `null` removes the owner, the expiry or the quota, and empties the metadata and
/// the rate limits; `name`, `scopes` and `expires_in` cannot be `null`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyUpdate {
    /// New name.
    #[serde(default, deserialize_with = "present")]
    pub name: Option<Option<String>>,
    /// New owner, or `null` for none.
    #[serde(default, deserialize_with = "present")]
    pub owner: Option<Option<String>>,
    /// New scopes (all of them).
    #[serde(default, deserialize_with = "present")]
    pub scopes: Option<Option<Vec<String>>>,
    /// New absolute expiry, Unix milliseconds, or `null` for none.
    #[serde(default, deserialize_with = "present")]
    pub expires_at: Option<Option<Timestamp>>,
    /// New expiry relative to now, in seconds (alternative to `expires_at`).
    #[serde(default, deserialize_with = "present")]
    pub expires_in: Option<Option<u64>>,
    /// New metadata object (`null`: empty).
    #[serde(default, deserialize_with = "present")]
    pub metadata: Option<Option<serde_json::Value>>,
    /// New named rate limits (`null` or `[]`: the route's apply).
    #[serde(default, deserialize_with = "present")]
    pub rate_limits: Option<Option<Vec<RateLimitSpec>>>,
    /// New quota, or `null` for none.
    #[serde(default, deserialize_with = "present")]
    pub quota: Option<Option<QuotaSpec>>,
}

/// A field that is present, whether `null` (`Some(None)`) or a value; an absent field is
/// `None` through `#[serde(default)]`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Who makes an admin change: the credential used and the address it came from.
#[derive(Debug, Clone, Copy)]
pub struct Actor {
    /// The admin credential (`admin-token`).
    pub name: &'static str,
    /// The client address of the admin request.
    pub ip: Option<IpAddr>,
}

/// The admin use cases for keys.
pub struct KeyAdmin {
    store: Arc<dyn ApiKeys>,
    cache: Arc<KeyCache>,
    usage: Arc<UsageTracker>,
    auditor: Auditor,
    clock: Arc<dyn Clock>,
    prefix: Prefix,
    allow_foreign: bool,
}

impl KeyAdmin {
    /// The use cases over `store`, issuing keys with `prefix`.
    pub fn new(
        store: Arc<dyn ApiKeys>,
        cache: Arc<KeyCache>,
        usage: Arc<UsageTracker>,
        auditor: Auditor,
        clock: Arc<dyn Clock>,
        prefix: Prefix,
        allow_foreign: bool,
    ) -> Self {
        Self {
            store,
            cache,
            usage,
            auditor,
            clock,
            prefix,
            allow_foreign,
        }
    }

    /// Creates a key; returns the record and the raw key (show it once).
    pub async fn create(
        &self,
        actor: Actor,
        req: NewKey,
    ) -> Result<(ApiKeyRecord, Secret), AdminError> {
        self.ensure_auditable()?;
        let now = self.clock.now();
        let g = api_key::generate(&self.prefix, &random_bytes::<32>());
        let record = self.build(req, g.hash, g.display_prefix, "native", now)?;
        self.store.insert(&record).await?;
        self.cache.invalidate(&record.hash);
        self.audit(actor, "api_key.created", &record, now).await;
        Ok((record, g.key))
    }

    /// Lists keys (no secrets, no hashes).
    pub async fn list(
        &self,
        owner: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ApiKeyRecord>, AdminError> {
        Ok(self.store.list(owner, after, limit.clamp(1, 1000)).await?)
    }

    /// One key.
    pub async fn show(&self, id: &str) -> Result<ApiKeyRecord, AdminError> {
        self.store.find(id).await?.ok_or(AdminError::NotFound)
    }

    /// Changes a key's properties (see [`KeyUpdate`]); effective on the next request. A revoked
    /// key cannot change, nor can the expiry of a key replaced by rotation (its grace end).
    pub async fn update(
        &self,
        actor: Actor,
        id: &str,
        req: KeyUpdate,
    ) -> Result<ApiKeyRecord, AdminError> {
        self.ensure_auditable()?;
        let now = self.clock.now();
        let patch = patch_of(req, now)?;
        if patch.is_empty() {
            return Err(AdminError::Invalid(
                "give at least one of `name`, `owner`, `scopes`, `expires_at`, `expires_in`, `metadata`, `rate_limits`, `quota`".into(),
            ));
        }
        use portcullis_store::error::conflict;
        let record = self.store.update(id, &patch).await.map_err(|e| match e {
            StoreError::Conflict(conflict::KEY_REVOKED) => {
                AdminError::Conflict("the key is revoked; a revoked key cannot change".into())
            }
            StoreError::Conflict(conflict::KEY_ROTATED) => AdminError::Conflict(
                "the key was replaced by rotation; its expiry is the end of its grace period"
                    .into(),
            ),
            e => e.into(),
        })?;
        // The cached record goes; the key's quota count stays (a new refill period starts a
        // new window by itself).
        self.cache.invalidate(&record.hash);
        self.audit_with(
            actor,
            "api_key.updated",
            &record,
            now,
            json!({"changed": patch.fields()}),
        )
        .await;
        Ok(record)
    }

    /// Revokes a key; effective on the next request.
    pub async fn revoke(&self, actor: Actor, id: &str) -> Result<ApiKeyRecord, AdminError> {
        self.ensure_auditable()?;
        let now = self.clock.now();
        let record = self.store.revoke(id, now).await?;
        self.cache.invalidate(&record.hash);
        self.usage.forget(id);
        self.audit(actor, "api_key.revoked", &record, now).await;
        Ok(record)
    }

    /// Rotates a key: issues a new key with the same properties; the old one stays valid for
    /// `grace_secs` (0: stops now). Returns (new record, raw new key, old record).
    pub async fn rotate(
        &self,
        actor: Actor,
        id: &str,
        grace_secs: u64,
    ) -> Result<(ApiKeyRecord, Secret, ApiKeyRecord), AdminError> {
        self.ensure_auditable()?;
        let now = self.clock.now();
        let old = self.store.find(id).await?.ok_or(AdminError::NotFound)?;
        let g = api_key::generate(&self.prefix, &random_bytes::<32>());
        let mut new = ApiKeyRecord {
            id: new_id(),
            hash: g.hash,
            display_prefix: g.display_prefix,
            created_at: now,
            revoked_at: None,
            rotated_from: Some(old.id.clone()),
            rotated_to: None,
            last_used_at: None,
            last_used_ip: None,
            origin: "native".into(),
            ..old.clone()
        };
        // A key rotated in its grace period keeps its original expiry, not the grace end.
        new.expires_at = old.expires_at.filter(|_| old.rotated_to.is_none());
        let grace_ms = i64::try_from(grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let old = self
            .store
            .rotate(id, &new, now.plus_millis(grace_ms))
            .await?;
        self.cache.invalidate(&old.hash);
        self.cache.invalidate(&new.hash);
        self.usage.forget(id);
        self.audit_with(
            actor,
            "api_key.rotated",
            &new,
            now,
            json!({"rotated_from": old.id, "grace_secs": grace_secs}),
        )
        .await;
        Ok((new, g.key, old))
    }

    /// Imports keys from another system, all or nothing. Returns the new records.
    pub async fn import(
        &self,
        actor: Actor,
        items: Vec<ImportKey>,
    ) -> Result<Vec<ApiKeyRecord>, AdminError> {
        self.ensure_auditable()?;
        if items.len() > limits::MAX_IMPORT {
            return Err(AdminError::Invalid(format!(
                "at most {} keys per import",
                limits::MAX_IMPORT
            )));
        }
        let now = self.clock.now();
        let mut records = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let at = |m: String| AdminError::Invalid(format!("item {i}: {m}"));
            let (hash, display, origin) = match (&item.key, &item.hash) {
                (Some(raw), None) => {
                    let parsed = api_key::parse(raw.expose(), true).map_err(|_| {
                        at("`key` is not a usable key (16-256 visible ASCII characters)".into())
                    })?;
                    if parsed.kind == api_key::Kind::Foreign && !self.allow_foreign {
                        return Err(at("`key` is not in Portcullis format; set `api_keys.accept_foreign_keys = true` to accept imported formats".into()));
                    }
                    let display = if parsed.kind == api_key::Kind::Native {
                        display_of(raw.expose())
                    } else {
                        String::new()
                    };
                    (parsed.hash, display, "imported_raw")
                }
                (None, Some(h)) => (
                    parse_hash(h).ok_or_else(|| {
                        at("`hash` must be a SHA-256 as 64 hex characters or base64".into())
                    })?,
                    String::new(),
                    "imported_hash",
                ),
                _ => return Err(at("give exactly one of `key` or `hash`".into())),
            };
            records.push(
                self.build(item.fields, hash, display, origin, now)
                    .map_err(|e| at(e.to_string()))?,
            );
        }
        self.store.insert_many(&records).await?;
        for r in &records {
            self.cache.invalidate(&r.hash);
        }
        self.auditor
            .emit_durable(with_ip(AuditEvent::new(now, "api_key.imported", "ok").actor(actor.name), actor).detail(json!({"count": records.len(), "ids": records.iter().map(|r| r.id.as_str()).take(100).collect::<Vec<_>>()})))
            .await;
        Ok(records)
    }

    fn build(
        &self,
        req: NewKey,
        hash: Sha256Digest,
        display_prefix: String,
        origin: &str,
        now: Timestamp,
    ) -> Result<ApiKeyRecord, AdminError> {
        let name = checked_name(&req.name)?;
        let owner = req.owner.map(checked_owner).transpose()?;
        let scopes = checked_scopes(&req.scopes)?;
        let expires_at = expiry(req.expires_at, req.expires_in, now)?;
        let metadata = checked_metadata(req.metadata.unwrap_or_else(|| json!({})))?;
        checked_rate_limits(&req.rate_limits)?;
        checked_quota(req.quota.as_ref())?;
        Ok(ApiKeyRecord {
            id: new_id(),
            name,
            owner,
            hash,
            display_prefix,
            scopes,
            metadata,
            rate_limits: req.rate_limits,
            quota: req.quota,
            created_at: now,
            expires_at,
            revoked_at: None,
            rotated_from: None,
            rotated_to: None,
            last_used_at: None,
            last_used_ip: None,
            origin: origin.into(),
        })
    }

    fn ensure_auditable(&self) -> Result<(), AdminError> {
        ensure_auditable(&self.auditor)
    }

    async fn audit(&self, actor: Actor, kind: &'static str, r: &ApiKeyRecord, now: Timestamp) {
        self.audit_with(actor, kind, r, now, json!({})).await;
    }

    async fn audit_with(
        &self,
        actor: Actor,
        kind: &'static str,
        r: &ApiKeyRecord,
        now: Timestamp,
        mut extra: serde_json::Value,
    ) {
        if let Some(o) = extra.as_object_mut() {
            o.insert("name".into(), json!(r.name));
            o.insert("owner".into(), json!(r.owner));
            o.insert("scopes".into(), json!(r.scopes));
        }
        self.auditor
            .emit_durable(
                with_ip(AuditEvent::new(now, kind, "ok").actor(actor.name), actor)
                    .credential(r.id.as_str().into())
                    .detail(extra),
            )
            .await;
    }
}

/// The store's patch for `req`, every given value checked as on create.
fn patch_of(req: KeyUpdate, now: Timestamp) -> Result<KeyPatch, AdminError> {
    let not_null = |field: &str| AdminError::Invalid(format!("`{field}` cannot be null"));
    let expires_at = match (req.expires_at, req.expires_in) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            return Err(AdminError::Invalid(
                "give `expires_at` or `expires_in`, not both".into(),
            ))
        }
        (Some(None), None) => Some(None),
        (Some(Some(at)), None) => Some(expiry(Some(at), None, now)?),
        (None, Some(s)) => Some(expiry(
            None,
            Some(s.ok_or_else(|| not_null("expires_in"))?),
            now,
        )?),
    };
    Ok(KeyPatch {
        name: req
            .name
            .map(|n| checked_name(&n.ok_or_else(|| not_null("name"))?))
            .transpose()?,
        owner: req
            .owner
            .map(|o| o.map(checked_owner).transpose())
            .transpose()?,
        scopes: req
            .scopes
            .map(|s| checked_scopes(&s.ok_or_else(|| not_null("scopes"))?))
            .transpose()?,
        metadata: req
            .metadata
            .map(|m| checked_metadata(m.unwrap_or_else(|| json!({}))))
            .transpose()?,
        rate_limits: req
            .rate_limits
            .map(|l| {
                let l = l.unwrap_or_default();
                checked_rate_limits(&l).map(|()| l)
            })
            .transpose()?,
        quota: req
            .quota
            .map(|q| checked_quota(q.as_ref()).map(|()| q))
            .transpose()?,
        expires_at,
    })
}

fn invalid<T>(m: &str) -> Result<T, AdminError> {
    Err(AdminError::Invalid(m.into()))
}

fn checked_name(name: &str) -> Result<String, AdminError> {
    let name = name.trim();
    if name.is_empty() || name.len() > limits::MAX_NAME || name.chars().any(char::is_control) {
        return invalid("`name` must be 1-128 characters without control characters");
    }
    Ok(name.to_owned())
}

fn checked_owner(owner: String) -> Result<String, AdminError> {
    if owner.is_empty()
        || owner.len() > limits::MAX_NAME
        || owner.chars().any(|c| c.is_control() || c == ',')
    {
        return invalid("`owner` must be 1-128 characters without control characters or commas");
    }
    Ok(owner)
}

/// The scopes, parsed and put in the canonical order.
fn checked_scopes(scopes: &[String]) -> Result<Vec<String>, AdminError> {
    if scopes.len() > limits::MAX_SCOPES {
        return invalid("at most 64 scopes");
    }
    let scopes = ScopeSet::parse(scopes).map_err(|e| AdminError::Invalid(e.to_string()))?;
    Ok(scopes.iter().map(Into::into).collect())
}

fn expiry(
    at: Option<Timestamp>,
    in_secs: Option<u64>,
    now: Timestamp,
) -> Result<Option<Timestamp>, AdminError> {
    match (at, in_secs) {
        (Some(_), Some(_)) => invalid("give `expires_at` or `expires_in`, not both"),
        (Some(t), None) => Ok(Some(t)),
        (None, Some(s)) => Ok(Some(
            now.plus_millis(i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)),
        )),
        (None, None) => Ok(None),
    }
}

fn checked_metadata(metadata: serde_json::Value) -> Result<serde_json::Value, AdminError> {
    if !metadata.is_object() || metadata.to_string().len() > limits::MAX_METADATA_BYTES {
        return invalid("`metadata` must be a JSON object of at most 4096 bytes");
    }
    Ok(metadata)
}

fn checked_rate_limits(limits: &[RateLimitSpec]) -> Result<(), AdminError> {
    if limits.len() > limits::MAX_RATE_LIMITS {
        return invalid("at most 8 rate limits per key");
    }
    let mut names = std::collections::HashSet::new();
    for l in limits {
        let name_ok = !l.name.is_empty()
            && l.name.len() <= 64
            && l.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok || !names.insert(l.name.as_str()) {
            return invalid("rate limit names must be unique, 1-64 characters of [A-Za-z0-9_-]");
        }
        if portcullis_core::ratelimit::Algorithm::from_name(&l.algorithm).is_none()
            || l.limit == 0
            || l.period_ms == 0
            || l.burst == Some(0)
        {
            return invalid(
                "rate limits need algorithm gcra|token_bucket, limit >= 1, period_ms >= 1, burst >= 1",
            );
        }
    }
    Ok(())
}

fn checked_quota(quota: Option<&QuotaSpec>) -> Result<(), AdminError> {
    if quota.is_some_and(|q| q.limit == 0 || q.refill_ms < 1000) {
        return invalid("quota needs limit >= 1 and refill_ms >= 1000");
    }
    Ok(())
}

/// Every admin change is audited before the API answers; while the trail cannot store
/// events, changes are refused up front (nothing is changed) rather than made and left
/// waiting.
pub(crate) fn ensure_auditable(auditor: &Auditor) -> Result<(), AdminError> {
    if auditor.is_storing() {
        Ok(())
    } else {
        Err(AdminError::AuditUnavailable)
    }
}

pub(crate) fn with_ip(e: AuditEvent, actor: Actor) -> AuditEvent {
    match actor.ip {
        Some(ip) => e.client_ip(ip),
        None => e,
    }
}

fn new_id() -> String {
    // 16 random bytes: ids must never collide, and need not be secret.
    format!("key_{}", bs58::encode(random_bytes::<16>()).into_string())
}

fn display_of(raw: &str) -> String {
    let prefix_len = raw.rfind('_').unwrap_or(0);
    raw.chars()
        .take(prefix_len + 1 + api_key::DISPLAY_BODY_CHARS)
        .collect()
}

fn parse_hash(h: &str) -> Option<Sha256Digest> {
    let h = h.trim();
    if let Some(d) = crypto::unhex::<32>(h) {
        return Some(d);
    }
    base64_decode_32(h)
}

fn base64_decode_32(s: &str) -> Option<Sha256Digest> {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let s = s.trim_end_matches('=');
    if s.len() != 43 {
        return None;
    }
    let mut bits: u64 = 0;
    let mut nbits = 0;
    let mut out = Vec::with_capacity(33);
    for c in s.bytes() {
        let c = match c {
            b'-' => b'+',
            b'_' => b'/',
            c => c,
        };
        let v = A.iter().position(|&a| a == c)? as u64;
        bits = (bits << 6) | v;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    out.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_store::memory::MemoryStore;

    const ACTOR: Actor = Actor {
        name: "admin-token",
        ip: None,
    };

    /// The use cases over `keys`, at a fixed time.
    fn admin_over(keys: Arc<MemoryStore>, auditor: Auditor) -> KeyAdmin {
        KeyAdmin::new(
            keys.clone(),
            Arc::new(KeyCache::new(16)),
            Arc::new(UsageTracker::new(keys)),
            auditor,
            Arc::new(crate::ManualClock::new(Timestamp::from_secs(1_700_000_000))),
            Prefix::new("pk_test").unwrap(),
            false,
        )
    }

    #[test]
    fn hashes_parse_from_hex_and_base64() {
        let d = crypto::sha256(b"legacy-key");
        assert_eq!(parse_hash(&crypto::hex(&d)), Some(d));
        // base64 of sha256("legacy-key"), computed independently with Python's base64 module.
        let b64 = "lO63u+l53Q0vC7CFFyt2obyeYXiYOUgINKm8tar5xu8=";
        assert_eq!(parse_hash(b64), Some(d));
        assert_eq!(
            crypto::hex(&d),
            "94eeb7bbe979dd0d2f0bb085172b76a1bc9e61789839480834a9bcb5aaf9c6ef"
        );
        assert_eq!(parse_hash("nope"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn changes_are_refused_while_the_audit_trail_cannot_store_them() {
        use crate::audit::testing::Refusing;
        use std::sync::atomic::Ordering;

        let keys = Arc::new(MemoryStore::new());
        let trail = Arc::new(Refusing::default());
        trail.refuse.store(true, Ordering::Relaxed);
        let (auditor, writer) = crate::audit::channel(trail.clone(), None, 16)
            .await
            .unwrap();
        let writer = tokio::spawn(writer.run());
        let admin = admin_over(keys.clone(), auditor.clone());
        let actor = ACTOR;
        let new_key = || serde_json::from_value::<NewKey>(json!({"name": "k"})).unwrap();
        // A decision the writer cannot store makes the trail report it.
        auditor
            .emit_bounded(AuditEvent::new(
                Timestamp::from_secs(1),
                "auth.decision",
                "allow",
            ))
            .await
            .unwrap();
        while auditor.is_storing() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(matches!(
            admin.create(actor, new_key()).await,
            Err(AdminError::AuditUnavailable)
        ));
        assert_eq!(keys.count().await.unwrap(), 0, "nothing was changed");

        trail.refuse.store(false, Ordering::Relaxed);
        auditor.flush().await;
        let (record, _) = admin.create(actor, new_key()).await.unwrap();
        assert_eq!(keys.count().await.unwrap(), 1);
        admin.revoke(actor, &record.id).await.unwrap();
        drop((admin, auditor));
        writer.await.unwrap();
        let report = crate::audit::verify(trail.as_ref()).await.unwrap();
        assert!(report.ok && report.checked == 3, "{report:?}");
    }

    fn update_of(v: serde_json::Value) -> Result<KeyPatch, AdminError> {
        let req: KeyUpdate =
            serde_json::from_value(v).map_err(|e| AdminError::Invalid(e.to_string()))?;
        patch_of(req, Timestamp::from_secs(1_700_000_000))
    }

    #[test]
    fn an_update_tells_absent_from_null() {
        let p = update_of(json!({"owner": null, "quota": null, "expires_at": null, "metadata": null, "rate_limits": null})).unwrap();
        assert_eq!(
            p,
            KeyPatch {
                owner: Some(None),
                quota: Some(None),
                expires_at: Some(None),
                metadata: Some(json!({})),
                rate_limits: Some(vec![]),
                ..KeyPatch::default()
            }
        );
        assert_eq!(
            p.fields(),
            ["owner", "metadata", "rate_limits", "quota", "expires_at"]
        );
        let p =
            update_of(json!({"name": "  n  ", "scopes": ["b", "a"], "expires_in": 60})).unwrap();
        assert_eq!(p.name.as_deref(), Some("n"), "trimmed as on create");
        assert_eq!(
            p.scopes,
            Some(vec!["a".to_owned(), "b".to_owned()]),
            "canonical order as on create"
        );
        assert_eq!(
            p.expires_at,
            Some(Some(Timestamp::from_secs(1_700_000_060)))
        );
        assert!(update_of(json!({})).unwrap().is_empty());
    }

    #[test]
    fn an_update_is_checked_as_a_create_is() {
        for bad in [
            json!({"name": null}),
            json!({"name": ""}),
            json!({"scopes": null}),
            json!({"scopes": ["bad scope"]}),
            json!({"owner": "a,b"}),
            json!({"expires_in": null}),
            json!({"expires_at": 1, "expires_in": 1}),
            json!({"expires_at": null, "expires_in": 1}),
            json!({"metadata": [1]}),
            json!({"rate_limits": [{"name": "x", "algorithm": "fifo", "limit": 1, "period_ms": 1}]}),
            json!({"quota": {"limit": 0, "refill_ms": 1000}}),
            json!({"hash": "00"}),
            json!({"revoked_at": 1}),
        ] {
            assert!(
                matches!(update_of(bad.clone()), Err(AdminError::Invalid(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_update_is_stored_and_audited_with_what_changed() {
        use portcullis_store::AuditLog;

        let store = Arc::new(MemoryStore::new());
        let (auditor, writer) = crate::audit::channel(store.clone(), None, 16)
            .await
            .unwrap();
        let writer = tokio::spawn(writer.run());
        let admin = admin_over(store.clone(), auditor.clone());
        let actor = ACTOR;
        let new_key =
            serde_json::from_value::<NewKey>(json!({"name": "k", "scopes": ["a"]})).unwrap();
        let (record, _) = admin.create(actor, new_key).await.unwrap();
        let change = |v| serde_json::from_value::<KeyUpdate>(v).unwrap();
        let updated = admin
            .update(actor, &record.id, change(json!({"scopes": ["a", "b"]})))
            .await
            .unwrap();
        assert_eq!(updated.scopes, ["a", "b"]);
        assert_eq!(
            store.find(&record.id).await.unwrap().unwrap().scopes,
            ["a", "b"]
        );
        assert!(matches!(
            admin.update(actor, &record.id, change(json!({}))).await,
            Err(AdminError::Invalid(_))
        ));
        assert!(matches!(
            admin
                .update(actor, "key_nope", change(json!({"name": "x"})))
                .await,
            Err(AdminError::NotFound)
        ));
        admin.revoke(actor, &record.id).await.unwrap();
        assert!(matches!(
            admin.update(actor, &record.id, change(json!({"name": "x"}))).await,
            Err(AdminError::Conflict(m)) if m.contains("revoked")
        ));
        drop((admin, auditor));
        writer.await.unwrap();
        let events = store
            .query(&portcullis_store::AuditQuery {
                kind: Some("api_key.updated".into()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "only the change that was made is audited");
        let body: serde_json::Value = serde_json::from_str(&events[0].body).unwrap();
        assert_eq!(body["detail"]["changed"], json!(["scopes"]), "{body}");
        assert_eq!(body["detail"]["scopes"], json!(["a", "b"]), "{body}");
        assert_eq!(events[0].credential_id.as_deref(), Some(record.id.as_str()));
    }

    #[test]
    fn ids_are_fixed_length_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert!(a.starts_with("key_") && a.len() >= 4 + 20);
        assert_ne!(a, b);
    }
}
