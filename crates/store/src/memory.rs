//! In-memory stores: the tests' default durable store, and the default ephemeral store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher as _;
use std::sync::Mutex;

use async_trait::async_trait;
use portcullis_core::crypto::Sha256Digest;
use portcullis_core::ratelimit::{Decision, Limit};
use portcullis_core::Timestamp;

use crate::{
    check_run, ApiKeyRecord, ApiKeys, AuditLog, AuditQuery, ClientRecord, KeyPatch, KeyUsage,
    OAuthClients, Pruned, QuotaState, RateCells, Retirement, Sealed, SigningKeyRecord, SigningKeys,
    StoreError, StoredEvent,
};
use crate::{hmac_invalid, HmacCredentialRecord, HmacCredentials, Nonces, RevokedTokens};
use crate::{
    Attempt, AttemptNext, DeliveryStatus, WebhookDeliveryRecord, WebhookEndpointRecord, Webhooks,
};

/// Durable aggregates kept in memory (lost on exit: for tests and demos only).
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    /// Spent single-use values, as the SQLite store keeps them in memory.
    nonces: crate::nonce_map::NonceMap,
}

#[derive(Default)]
struct Inner {
    keys: BTreeMap<String, ApiKeyRecord>,
    by_hash: HashMap<Sha256Digest, String>,
    quota: HashMap<String, QuotaState>,
    ips: HashSet<(String, String)>,
    events: Vec<StoredEvent>,
    anchor: Option<(i64, Sha256Digest)>,
    signing_keys: Vec<SigningKeyRecord>,
    clients: BTreeMap<String, ClientRecord>,
    revoked: HashMap<String, Timestamp>,
    hmac: BTreeMap<String, HmacCredentialRecord>,
    webhooks: BTreeMap<String, WebhookEndpointRecord>,
    deliveries: HashMap<String, WebhookDeliveryRecord>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means a panic mid-update elsewhere; the data is still consistent
        // for our simple maps, so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn check_new(&self, k: &ApiKeyRecord) -> Result<(), StoreError> {
        if self.keys.contains_key(&k.id) {
            return Err(StoreError::Conflict("api key id exists"));
        }
        if self.by_hash.contains_key(&k.hash) {
            return Err(StoreError::Conflict("api key hash exists"));
        }
        Ok(())
    }

    fn put(&mut self, k: &ApiKeyRecord) {
        self.by_hash.insert(k.hash, k.id.clone());
        self.keys.insert(k.id.clone(), k.clone());
    }
}

#[async_trait]
impl ApiKeys for MemoryStore {
    async fn insert(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.check_new(key)?;
        g.put(key);
        Ok(())
    }

    async fn insert_many(&self, keys: &[ApiKeyRecord]) -> Result<(), StoreError> {
        let mut g = self.lock();
        let mut ids = HashSet::new();
        let mut hashes = HashSet::new();
        for k in keys {
            g.check_new(k)?;
            if !ids.insert(&k.id) || !hashes.insert(k.hash) {
                return Err(StoreError::Conflict("duplicate in batch"));
            }
        }
        for k in keys {
            g.put(k);
        }
        Ok(())
    }

    async fn find_by_hash(&self, hash: &Sha256Digest) -> Result<Option<ApiKeyRecord>, StoreError> {
        let g = self.lock();
        Ok(g.by_hash.get(hash).and_then(|id| g.keys.get(id)).cloned())
    }

    async fn find(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        Ok(self.lock().keys.get(id).cloned())
    }

    async fn list(
        &self,
        owner: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let g = self.lock();
        let iter: Box<dyn Iterator<Item = &ApiKeyRecord>> = match after {
            Some(a) => Box::new(
                g.keys
                    .range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded))
                    .map(|(_, v)| v),
            ),
            None => Box::new(g.keys.values()),
        };
        Ok(iter
            .filter(|k| owner.is_none_or(|o| k.owner.as_deref() == Some(o)))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn revoke(&self, id: &str, at: Timestamp) -> Result<ApiKeyRecord, StoreError> {
        let mut g = self.lock();
        let k = g.keys.get_mut(id).ok_or(StoreError::NotFound)?;
        k.revoked_at = Some(k.revoked_at.map_or(at, |r| r.min(at)));
        Ok(k.clone())
    }

    async fn rotate(
        &self,
        old_id: &str,
        new: &ApiKeyRecord,
        old_expires_at: Timestamp,
    ) -> Result<ApiKeyRecord, StoreError> {
        let mut g = self.lock();
        let old = g.keys.get(old_id).ok_or(StoreError::NotFound)?;
        if old.rotated_to.is_some() || old.revoked_at.is_some() {
            return Err(StoreError::Conflict("api key already rotated or revoked"));
        }
        g.check_new(new)?;
        g.put(new);
        let old = g.keys.get_mut(old_id).ok_or(StoreError::NotFound)?;
        old.rotated_to = Some(new.id.clone());
        old.expires_at = Some(
            old.expires_at
                .map_or(old_expires_at, |e| e.min(old_expires_at)),
        );
        Ok(old.clone())
    }

    async fn update(&self, id: &str, patch: &KeyPatch) -> Result<ApiKeyRecord, StoreError> {
        let mut g = self.lock();
        let k = g.keys.get_mut(id).ok_or(StoreError::NotFound)?;
        if k.revoked_at.is_some() {
            return Err(StoreError::Conflict(crate::error::conflict::KEY_REVOKED));
        }
        if k.rotated_to.is_some() && patch.expires_at.is_some() {
            return Err(StoreError::Conflict(crate::error::conflict::KEY_ROTATED));
        }
        patch.apply(k);
        Ok(k.clone())
    }

    async fn record_usage(&self, usage: &[KeyUsage]) -> Result<(), StoreError> {
        let mut g = self.lock();
        for u in usage {
            if let Some(k) = g.keys.get_mut(&u.key_id) {
                if k.last_used_at.is_none_or(|t| t <= u.last_used_at) {
                    k.last_used_at = Some(u.last_used_at);
                    k.last_used_ip = Some(u.last_used_ip.clone());
                }
                g.quota.insert(
                    u.key_id.clone(),
                    QuotaState {
                        window: u.quota_window,
                        used: u.quota_used,
                    },
                );
            }
        }
        Ok(())
    }

    async fn quota_state(&self, id: &str) -> Result<QuotaState, StoreError> {
        Ok(self.lock().quota.get(id).copied().unwrap_or_default())
    }

    async fn remember_ip(
        &self,
        key_id: &str,
        ip: &str,
        _at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        if !g.keys.contains_key(key_id) {
            return Ok(false);
        }
        Ok(g.ips.insert((key_id.to_owned(), ip.to_owned())))
    }

    async fn count(&self) -> Result<u64, StoreError> {
        Ok(self.lock().keys.len() as u64)
    }
}

#[async_trait]
impl RevokedTokens for MemoryStore {
    async fn revoke_token(&self, jti: &str, expires_at: Timestamp) -> Result<(), StoreError> {
        let mut g = self.lock();
        let e = g.revoked.entry(jti.to_owned()).or_insert(expires_at);
        *e = (*e).max(expires_at);
        Ok(())
    }

    async fn revoked_tokens(&self, now: Timestamp) -> Result<Vec<(String, Timestamp)>, StoreError> {
        let mut v: Vec<_> = self
            .lock()
            .revoked
            .iter()
            .filter(|(_, e)| **e > now)
            .map(|(j, e)| (j.clone(), *e))
            .collect();
        v.sort();
        Ok(v)
    }

    async fn delete_expired_revocations(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut g = self.lock();
        let before = g.revoked.len();
        g.revoked.retain(|_, e| *e > now);
        Ok((before - g.revoked.len()) as u64)
    }
}

#[async_trait]
impl Nonces for MemoryStore {
    async fn claim_nonce(
        &self,
        key: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        use crate::nonce_map::{digest, Claim};
        let claim = self
            .nonces
            .claim(&digest(key), expires_at.as_millis(), now.as_millis())?;
        Ok(matches!(claim, Claim::Won(_)))
    }

    async fn delete_expired_nonces(&self, now: Timestamp) -> Result<u64, StoreError> {
        Ok(self.nonces.delete_expired(now.as_millis()))
    }
}

#[async_trait]
impl OAuthClients for MemoryStore {
    async fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.clients.contains_key(&client.id) {
            return Err(StoreError::Conflict("client exists"));
        }
        g.clients.insert(client.id.clone(), client.clone());
        Ok(())
    }

    async fn find_client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        Ok(self.lock().clients.get(id).cloned())
    }

    async fn list_clients(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ClientRecord>, StoreError> {
        let g = self.lock();
        Ok(g.clients
            .values()
            .filter(|c| after.is_none_or(|a| c.id.as_str() > a))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn set_client_secret(
        &self,
        id: &str,
        hash: &Sha256Digest,
        at: Timestamp,
    ) -> Result<ClientRecord, StoreError> {
        let mut g = self.lock();
        let c = g.clients.get_mut(id).ok_or(StoreError::NotFound)?;
        c.secret_hash = Some(*hash);
        c.secret_set_at = Some(at);
        Ok(c.clone())
    }

    async fn set_client_jwks(&self, id: &str, jwks: &str) -> Result<ClientRecord, StoreError> {
        let mut g = self.lock();
        let c = g.clients.get_mut(id).ok_or(StoreError::NotFound)?;
        c.jwks = Some(jwks.to_owned());
        Ok(c.clone())
    }

    async fn delete_client(&self, id: &str) -> Result<(), StoreError> {
        self.lock()
            .clients
            .remove(id)
            .map(|_| ())
            .ok_or(StoreError::NotFound)
    }
}

#[async_trait]
impl HmacCredentials for MemoryStore {
    async fn insert_hmac(&self, c: &HmacCredentialRecord) -> Result<(), StoreError> {
        c.check()?;
        let mut g = self.lock();
        if g.hmac.contains_key(&c.key_id) {
            return Err(StoreError::Conflict("hmac credential exists"));
        }
        g.hmac.insert(c.key_id.clone(), c.clone());
        Ok(())
    }

    async fn find_hmac(&self, key_id: &str) -> Result<Option<HmacCredentialRecord>, StoreError> {
        Ok(self.lock().hmac.get(key_id).cloned())
    }

    async fn list_hmac(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<HmacCredentialRecord>, StoreError> {
        let g = self.lock();
        Ok(g.hmac
            .values()
            .filter(|c| after.is_none_or(|a| c.key_id.as_str() > a))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn rotate_hmac(
        &self,
        key_id: &str,
        secret: &[u8],
        previous_expires_at: Timestamp,
        at: Timestamp,
    ) -> Result<HmacCredentialRecord, StoreError> {
        let mut g = self.lock();
        let c = g.hmac.get_mut(key_id).ok_or(StoreError::NotFound)?;
        if c.revoked_at.is_some() {
            return Err(StoreError::Invalid(hmac_invalid::REVOKED));
        }
        if c.secret.is_none() {
            return Err(StoreError::Invalid(hmac_invalid::NO_SECRET));
        }
        c.previous_secret = c.secret.replace(secret.to_vec());
        c.previous_expires_at = Some(previous_expires_at);
        c.rotated_at = Some(at);
        Ok(c.clone())
    }

    async fn revoke_hmac(
        &self,
        key_id: &str,
        at: Timestamp,
    ) -> Result<HmacCredentialRecord, StoreError> {
        let mut g = self.lock();
        let c = g.hmac.get_mut(key_id).ok_or(StoreError::NotFound)?;
        c.revoked_at.get_or_insert(at);
        Ok(c.clone())
    }
}

/// Most deliveries one [`Webhooks::prune_deliveries`] call removes (both backends).
pub(crate) const PRUNE_DELIVERIES_STEP: usize = 10_000;

/// The order of a delivery log, newest first.
fn newest_first(d: &WebhookDeliveryRecord) -> std::cmp::Reverse<(Timestamp, String)> {
    std::cmp::Reverse((d.created_at, d.id.clone()))
}

#[async_trait]
impl Webhooks for MemoryStore {
    async fn insert_webhook(&self, e: &WebhookEndpointRecord) -> Result<(), StoreError> {
        e.check()?;
        let mut g = self.lock();
        if g.webhooks.contains_key(&e.id) {
            return Err(StoreError::Conflict("webhook endpoint exists"));
        }
        g.webhooks.insert(e.id.clone(), e.clone());
        Ok(())
    }

    async fn find_webhook(&self, id: &str) -> Result<Option<WebhookEndpointRecord>, StoreError> {
        Ok(self.lock().webhooks.get(id).cloned())
    }

    async fn list_webhooks(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookEndpointRecord>, StoreError> {
        let g = self.lock();
        Ok(g.webhooks
            .values()
            .filter(|e| after.is_none_or(|a| e.id.as_str() > a))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn rotate_webhook_secret(
        &self,
        id: &str,
        secret: &[u8],
        previous_expires_at: Timestamp,
        at: Timestamp,
    ) -> Result<WebhookEndpointRecord, StoreError> {
        let mut g = self.lock();
        let e = g.webhooks.get_mut(id).ok_or(StoreError::NotFound)?;
        e.previous_secret = Some(std::mem::replace(&mut e.secret, secret.to_vec()));
        e.previous_expires_at = Some(previous_expires_at);
        e.rotated_at = Some(at);
        Ok(e.clone())
    }

    async fn disable_webhook(
        &self,
        id: &str,
        at: Timestamp,
        reason: &str,
    ) -> Result<WebhookEndpointRecord, StoreError> {
        let mut g = self.lock();
        let e = g.webhooks.get_mut(id).ok_or(StoreError::NotFound)?;
        if e.disabled_at.is_none() {
            e.disabled_at = Some(at);
            e.disabled_reason = Some(reason.to_owned());
        }
        let e = e.clone();
        for d in g.deliveries.values_mut() {
            if d.endpoint_id == id && d.status == DeliveryStatus::Pending {
                d.status = DeliveryStatus::Failed;
                d.last_error = Some(reason.to_owned());
            }
        }
        Ok(e)
    }

    async fn delete_webhook(&self, id: &str) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.webhooks.remove(id).ok_or(StoreError::NotFound)?;
        g.deliveries.retain(|_, d| d.endpoint_id != id);
        Ok(())
    }

    async fn enqueue_deliveries(&self, d: &[WebhookDeliveryRecord]) -> Result<u64, StoreError> {
        let mut g = self.lock();
        let mut ids = HashSet::new();
        for x in d {
            if g.deliveries.contains_key(&x.id) || !ids.insert(&x.id) {
                return Err(StoreError::Conflict("webhook delivery exists"));
            }
        }
        let mut n = 0;
        for x in d {
            if g.webhooks.contains_key(&x.endpoint_id) {
                g.deliveries.insert(x.id.clone(), x.clone());
                n += 1;
            }
        }
        Ok(n)
    }

    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDeliveryRecord>, StoreError> {
        let mut g = self.lock();
        let mut due: Vec<_> = g
            .deliveries
            .values()
            .filter(|d| d.status == DeliveryStatus::Pending && d.next_attempt_at <= now)
            .cloned()
            .collect();
        due.sort_by(|a, b| (a.next_attempt_at, &a.id).cmp(&(b.next_attempt_at, &b.id)));
        due.truncate(limit as usize);
        for d in &mut due {
            d.next_attempt_at = lease_until;
            if let Some(stored) = g.deliveries.get_mut(&d.id) {
                stored.next_attempt_at = lease_until;
            }
        }
        Ok(due)
    }

    async fn record_attempt(&self, id: &str, a: &Attempt) -> Result<(), StoreError> {
        let mut g = self.lock();
        let d = g.deliveries.get_mut(id).ok_or(StoreError::NotFound)?;
        if d.status != DeliveryStatus::Pending {
            return Ok(());
        }
        d.attempts = d.attempts.saturating_add(1);
        d.last_attempt_at = Some(a.at);
        d.last_status = a.status_code;
        d.last_error.clone_from(&a.error);
        match a.next {
            AttemptNext::Delivered => {
                d.status = DeliveryStatus::Delivered;
                d.delivered_at = Some(a.at);
            }
            AttemptNext::Failed => d.status = DeliveryStatus::Failed,
            AttemptNext::RetryAt(t) => d.next_attempt_at = t,
        }
        Ok(())
    }

    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookDeliveryRecord>, StoreError> {
        let g = self.lock();
        let cursor = match after {
            Some(a) => match g.deliveries.get(a) {
                Some(d) => Some(newest_first(d)),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let mut v: Vec<_> = g
            .deliveries
            .values()
            .filter(|d| d.endpoint_id == endpoint_id)
            .filter(|d| cursor.as_ref().is_none_or(|c| newest_first(d) > *c))
            .cloned()
            .collect();
        v.sort_by_key(newest_first);
        v.truncate(limit.min(1000) as usize);
        Ok(v)
    }

    async fn prune_deliveries(&self, before: Timestamp) -> Result<u64, StoreError> {
        let mut g = self.lock();
        let mut gone: Vec<String> = g
            .deliveries
            .values()
            .filter(|d| d.status != DeliveryStatus::Pending && d.created_at < before)
            .map(|d| d.id.clone())
            .collect();
        gone.truncate(PRUNE_DELIVERIES_STEP);
        for id in &gone {
            g.deliveries.remove(id);
        }
        Ok(gone.len() as u64)
    }
}

#[async_trait]
impl SigningKeys for MemoryStore {
    async fn insert_signing_key(
        &self,
        key: &SigningKeyRecord,
        retire: Option<Retirement>,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        if g.signing_keys.iter().any(|k| k.kid == key.kid) {
            return Err(StoreError::Conflict("signing key exists"));
        }
        if let Some(r) = retire {
            for k in g.signing_keys.iter_mut().filter(|k| k.retires_at.is_none()) {
                k.retires_at = Some(r.retires_at);
                k.expires_at = Some(r.expires_at);
            }
        }
        g.signing_keys.push(key.clone());
        g.signing_keys.sort_by_key(|k| k.activates_at);
        Ok(())
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        Ok(self.lock().signing_keys.clone())
    }

    async fn delete_expired_signing_keys(&self, now: Timestamp) -> Result<u64, StoreError> {
        let mut g = self.lock();
        let before = g.signing_keys.len();
        g.signing_keys
            .retain(|k| k.expires_at.is_none_or(|e| e > now));
        Ok((before - g.signing_keys.len()) as u64)
    }
}

#[async_trait]
impl AuditLog for MemoryStore {
    async fn append(&self, events: &[Sealed<'_>]) -> Result<(), StoreError> {
        let mut g = self.lock();
        check_run(events, g.events.last().map_or(1, |e| e.seq + 1))?;
        g.events.extend(events.iter().map(Sealed::to_stored));
        Ok(())
    }

    async fn head(&self) -> Result<Option<(i64, Sha256Digest)>, StoreError> {
        Ok(self.lock().events.last().map(|e| (e.seq, e.hash)))
    }

    async fn query(&self, q: &AuditQuery) -> Result<Vec<StoredEvent>, StoreError> {
        let g = self.lock();
        let limit = q.limit.clamp(1, 1000) as usize;
        Ok(g.events
            .iter()
            .rev()
            .filter(|e| q.before_seq.is_none_or(|b| e.seq < b))
            .filter(|e| q.kind.as_ref().is_none_or(|k| &e.kind == k))
            .filter(|e| q.outcome.as_ref().is_none_or(|o| &e.outcome == o))
            .filter(|e| {
                q.credential_id
                    .as_ref()
                    .is_none_or(|c| e.credential_id.as_ref() == Some(c))
            })
            .filter(|e| q.since.is_none_or(|s| e.time >= s))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn scan(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let g = self.lock();
        Ok(g.events
            .iter()
            .filter(|e| e.seq > after)
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn prune(&self, before: Timestamp) -> Result<Option<Pruned>, StoreError> {
        let mut g = self.lock();
        // Event by event from the oldest, never the newest; in bounded steps, as SQLite does.
        let older = g.events.iter().take_while(|e| e.time < before).count();
        let n = older.min(g.events.len().saturating_sub(1)).min(PRUNE_STEP);
        let Some(last) = n.checked_sub(1).map(|i| &g.events[i]) else {
            return Ok(None);
        };
        let anchor = (last.seq, last.hash);
        g.events.drain(..n);
        g.anchor = Some(anchor);
        Ok(Some(Pruned {
            events: n as u64,
            anchor,
        }))
    }

    async fn anchor(&self) -> Result<Option<(i64, Sha256Digest)>, StoreError> {
        Ok(self.lock().anchor)
    }
}

/// Most events one [`AuditLog::prune`] call of the memory store removes.
const PRUNE_STEP: usize = 65_536;

/// Rate-limit cells in memory, sharded to keep lock contention low.
pub struct MemoryRateCells {
    shards: Box<[Mutex<Shard>]>,
    /// One hash per key picks its shard and finds it in the shard's table. Randomly seeded
    /// per process: keys hold client addresses, so the hash must not be predictable from
    /// outside (a crafted run of addresses must not pile up in one shard or one probe chain).
    hasher: foldhash::fast::RandomState,
}

#[derive(Default)]
struct Shard {
    cells: hashbrown::HashTable<Cell>,
    ops: u32,
}

struct Cell {
    key: Box<str>,
    /// The algorithm's state (`Decision::cell`).
    state: i64,
    expires_at_ms: i64,
}

const SHARDS: usize = 32;
const SWEEP_EVERY: u32 = 4096;

impl Default for MemoryRateCells {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl MemoryRateCells {
    /// An empty set of cells.
    pub fn new() -> Self {
        Self::default()
    }

    /// The synchronous check (the async trait methods call this). `commit: false` peeks.
    pub fn check_sync(&self, key: &str, limit: &Limit, now: Timestamp, commit: bool) -> Decision {
        let hash = self.hasher.hash_one(key);
        // The table takes the low bits (bucket) and the top seven (tag); the shard takes
        // bits from the middle, so keys in one shard still differ in both.
        let idx = (hash >> 32) as usize % SHARDS;
        let mut shard = self.shards[idx].lock().unwrap_or_else(|p| p.into_inner());
        let now_ms = now.as_millis();
        shard.ops = shard.ops.wrapping_add(1);
        if shard.ops.is_multiple_of(SWEEP_EVERY) {
            shard.cells.retain(|c| c.expires_at_ms > now_ms);
        }
        let exp = now_ms.saturating_add(i64::try_from(limit.ttl_ms()).unwrap_or(i64::MAX));
        // One probe for a known key (the common case), a second only to insert.
        match shard.cells.find_mut(hash, |c| &*c.key == key) {
            Some(c) => {
                let d = limit.check(Some(c.state).filter(|_| c.expires_at_ms > now_ms), now_ms);
                if d.allowed && commit {
                    (c.state, c.expires_at_ms) = (d.cell, exp);
                }
                d
            }
            None => {
                let d = limit.check(None, now_ms);
                if d.allowed && commit {
                    let cell = Cell {
                        key: key.into(),
                        state: d.cell,
                        expires_at_ms: exp,
                    };
                    let hasher = &self.hasher;
                    shard
                        .cells
                        .insert_unique(hash, cell, |c| hasher.hash_one(&*c.key));
                }
                d
            }
        }
    }
}

#[async_trait]
impl RateCells for MemoryRateCells {
    async fn check(
        &self,
        key: &str,
        limit: &Limit,
        now: Timestamp,
    ) -> Result<Decision, StoreError> {
        Ok(self.check_sync(key, limit, now, true))
    }

    async fn peek(&self, key: &str, limit: &Limit, now: Timestamp) -> Result<Decision, StoreError> {
        Ok(self.check_sync(key, limit, now, false))
    }

    fn check_in_process(
        &self,
        key: &str,
        limit: &Limit,
        now: Timestamp,
        commit: bool,
    ) -> Option<Decision> {
        Some(self.check_sync(key, limit, now, commit))
    }

    fn is_private(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_passes_the_conformance_suite() {
        crate::conformance::durable_suite(|| async { MemoryStore::new() }).await;
    }

    #[tokio::test]
    async fn memory_rate_cells_pass_the_conformance_suite() {
        crate::conformance::ephemeral_suite(MemoryRateCells::new).await;
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn many_keys_keep_their_own_cells_and_expired_ones_are_swept() {
        use portcullis_core::ratelimit::Algorithm;
        let cells = MemoryRateCells::new();
        let l = Limit {
            algorithm: Algorithm::Gcra,
            limit: 2,
            period_ms: 1_000,
            burst: 2,
        };
        let t0 = Timestamp::from_millis(1_000_000);
        let key = |i: usize| format!("r:route:key_{i}");
        for round in 0..3 {
            for i in 0..5_000 {
                let d = cells.check_sync(&key(i), &l, t0, true);
                assert_eq!(d.allowed, round < 2, "key {i}, request {round}");
            }
        }
        let stored = || -> usize {
            cells
                .shards
                .iter()
                .map(|s| s.lock().unwrap().cells.len())
                .sum()
        };
        assert_eq!(stored(), 5_000);
        // After every cell has expired, enough looks (peeks of keys never stored) reach every
        // shard's sweep.
        let later = Timestamp::from_millis(1_000_000 + 60_000);
        for i in 0..3 * SWEEP_EVERY as usize * SHARDS {
            assert!(
                cells
                    .check_sync(&format!("p:{i}"), &l, later, false)
                    .allowed
            );
        }
        assert_eq!(stored(), 0);
        // A swept key starts afresh.
        assert_eq!(cells.check_sync(&key(7), &l, later, true).remaining, 1);
    }
}
