//! Portcullis storage: one narrow trait per aggregate, with its contract in the docs.
//!
//! Durable aggregates ([`ApiKeys`], [`AuditLog`], [`SigningKeys`], [`OAuthClients`], [`RevokedTokens`],
//! [`Nonces`], [`HmacCredentials`], [`Webhooks`]) hold what must survive a crash: an
//! implementation returns `Ok` only once the change is durable (SQLite: WAL with
//! `synchronous=FULL`). Ephemeral state ([`RateCells`]) may be lost on restart.
//!
//! Backends: [`memory`] (tests, and the default ephemeral store) and [`sqlite`] (the default
//! durable store). Every backend runs the same [`conformance`] suite.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit_block;
pub mod conformance;
pub mod error;
pub mod memory;
pub mod model;
mod nonce_map;
#[cfg(feature = "sqlite")]
pub mod sqlite;

use async_trait::async_trait;
use portcullis_core::crypto::Sha256Digest;
use portcullis_core::ratelimit::{Decision, Limit};
use portcullis_core::Timestamp;

pub use error::StoreError;
pub use model::*;

/// API keys, looked up by the SHA-256 of the raw key.
#[async_trait]
pub trait ApiKeys: Send + Sync {
    /// Stores a new key. `Conflict` if the id or the hash exists.
    async fn insert(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    /// Stores many keys in one transaction (import): all or nothing. `Conflict` on any clash.
    async fn insert_many(&self, keys: &[ApiKeyRecord]) -> Result<(), StoreError>;

    /// The key with this hash, revoked and expired ones included.
    async fn find_by_hash(&self, hash: &Sha256Digest) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// The key with this id.
    async fn find(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Keys ordered by id, after `after` (exclusive), optionally of one owner; at most `limit`.
    async fn list(
        &self,
        owner: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Marks a key revoked at `at` (kept if already revoked earlier) and returns it.
    /// `NotFound` if there is no such key.
    async fn revoke(&self, id: &str, at: Timestamp) -> Result<ApiKeyRecord, StoreError>;

    /// Rotation, atomically: inserts `new` (whose `rotated_from` names `old_id`), sets the old
    /// key's `rotated_to` and lowers its `expires_at` to `old_expires_at` (never raises it).
    /// `NotFound` if the old key does not exist; `Conflict` if it was already rotated or is
    /// revoked.
    async fn rotate(
        &self,
        old_id: &str,
        new: &ApiKeyRecord,
        old_expires_at: Timestamp,
    ) -> Result<ApiKeyRecord, StoreError>;

    /// Changes a key's properties (see [`KeyPatch`]) in one write and returns the key as
    /// stored. `NotFound` if there is no such key; `Conflict` if it is revoked, or if the
    /// patch sets the expiry of a key replaced by rotation. Concurrent patches of different
    /// properties both take effect.
    async fn update(&self, id: &str, patch: &KeyPatch) -> Result<ApiKeyRecord, StoreError>;

    /// Records batched usage (last use, last address, quota counts). Unknown ids are ignored;
    /// a report older than the stored last use leaves last use and address unchanged.
    async fn record_usage(&self, usage: &[KeyUsage]) -> Result<(), StoreError>;

    /// The persisted quota state of a key (default when never used).
    async fn quota_state(&self, id: &str) -> Result<QuotaState, StoreError>;

    /// Remembers that `key_id` was used from `ip`. Returns `true` if this pair is new;
    /// `false` (and remembers nothing) for a key id that does not exist.
    async fn remember_ip(&self, key_id: &str, ip: &str, at: Timestamp) -> Result<bool, StoreError>;

    /// How many keys are stored.
    async fn count(&self) -> Result<u64, StoreError>;
}

/// The tamper-evident audit trail (see `portcullis_core::audit`).
#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends events whose `seq` continue the stored chain (head + 1, + 2, …), in one
    /// transaction. `Conflict` if a `seq` exists already, `Invalid` if one would leave a gap:
    /// a writer bug cannot store a broken sequence. Likewise `Invalid` if an event's
    /// `prev_hash` is not the hash of the event before it in the same call.
    async fn append(&self, events: &[Sealed<'_>]) -> Result<(), StoreError>;

    /// The last stored event's `seq` and `hash`, if any.
    async fn head(&self) -> Result<Option<(i64, Sha256Digest)>, StoreError>;

    /// Events matching `query`, newest first.
    async fn query(&self, query: &AuditQuery) -> Result<Vec<StoredEvent>, StoreError>;

    /// Events with `seq > after`, oldest first, at most `limit` (for verification).
    async fn scan(&self, after: i64, limit: u32) -> Result<Vec<StoredEvent>, StoreError>;

    /// Retention: removes the oldest events, a run from the start of what is stored, while
    /// they are older than `before` — in the units the store keeps them in (SQLite: one
    /// append's block, removed only when every event in it is older), never the unit holding
    /// the newest event (the head, which the next append continues), and at most a bounded
    /// amount per call, so that a call never holds the write lock for long: call again until
    /// it answers `None` (nothing left to remove). In the same transaction the last removed
    /// event's `seq` and `hash` become the trail's [`AuditLog::anchor`]; durable on `Ok`.
    async fn prune(&self, before: Timestamp) -> Result<Option<Pruned>, StoreError>;

    /// The `seq` and `hash` of the last event removed by [`AuditLog::prune`], if any: the
    /// stored events start right after it, and verification starts from it.
    async fn anchor(&self) -> Result<Option<(i64, Sha256Digest)>, StoreError>;
}

/// Rate-limit cells: atomic check-and-update of one limiter key.
#[async_trait]
pub trait RateCells: Send + Sync {
    /// Applies one request at `now` to the cell `key` under `limit`, atomically, and returns
    /// the decision. A refused request leaves the cell unchanged.
    async fn check(&self, key: &str, limit: &Limit, now: Timestamp)
        -> Result<Decision, StoreError>;

    /// What [`RateCells::check`] would decide at `now`, without changing the cell.
    async fn peek(&self, key: &str, limit: &Limit, now: Timestamp) -> Result<Decision, StoreError>;

    /// [`RateCells::check`] (`commit`) or [`RateCells::peek`] (not `commit`) answered at once,
    /// for a store that keeps its cells in this process: the request path then skips an async
    /// call and its boxed future, twice per authenticated request. `None` (the default): this
    /// store has to be asked through the async methods.
    fn check_in_process(
        &self,
        key: &str,
        limit: &Limit,
        now: Timestamp,
        commit: bool,
    ) -> Option<Decision> {
        let _ = (key, limit, now, commit);
        None
    }

    /// Whether this process is the only one that changes these cells (an in-memory store):
    /// then a cell that no check of this process brought to its limit is under it, and a
    /// caller may skip looking. `false` (the default): other instances share the cells.
    fn is_private(&self) -> bool {
        false
    }
}

/// Token-signing keys. Durable before `Ok`, like every durable aggregate.
#[async_trait]
pub trait SigningKeys: Send + Sync {
    /// Stores `key` and, in the same transaction, retires every key not yet retired
    /// (`retires_at` unset) as `retire` says: the rotation step. `Conflict` if the kid exists.
    async fn insert_signing_key(
        &self,
        key: &SigningKeyRecord,
        retire: Option<Retirement>,
    ) -> Result<(), StoreError>;

    /// Every stored key, oldest `activates_at` first.
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;

    /// Deletes the keys whose `expires_at` is at or before `now`; returns how many.
    async fn delete_expired_signing_keys(&self, now: Timestamp) -> Result<u64, StoreError>;
}

/// OAuth 2.0 clients. Durable before `Ok`.
#[async_trait]
pub trait OAuthClients: Send + Sync {
    /// Registers a client. `Conflict` if the id exists.
    async fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError>;

    /// The client with this id.
    async fn find_client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError>;

    /// Clients ordered by id, after `after` (exclusive); at most `limit`.
    async fn list_clients(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ClientRecord>, StoreError>;

    /// Replaces the secret's hash (set at `at`) and returns the client. `NotFound` if absent.
    async fn set_client_secret(
        &self,
        id: &str,
        hash: &Sha256Digest,
        at: Timestamp,
    ) -> Result<ClientRecord, StoreError>;

    /// Replaces the client's registered public keys (a JWKS document) and returns the
    /// client. `NotFound` if absent.
    async fn set_client_jwks(&self, id: &str, jwks: &str) -> Result<ClientRecord, StoreError>;

    /// Deletes the client. `NotFound` if absent.
    async fn delete_client(&self, id: &str) -> Result<(), StoreError>;
}

/// HMAC signing credentials. Durable before `Ok`.
#[async_trait]
pub trait HmacCredentials: Send + Sync {
    /// Stores a new credential. `Conflict` if the key id exists; `Invalid` if it breaks the
    /// record's rules (exactly one of a secret and a public key, see [`HmacCredentialRecord`]).
    async fn insert_hmac(&self, c: &HmacCredentialRecord) -> Result<(), StoreError>;

    /// The credential with this key id (revoked ones included).
    async fn find_hmac(&self, key_id: &str) -> Result<Option<HmacCredentialRecord>, StoreError>;

    /// Credentials ordered by key id, after `after` (exclusive); at most `limit`.
    async fn list_hmac(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<HmacCredentialRecord>, StoreError>;

    /// Rotation, atomically: the current secret becomes the previous one (accepted until
    /// `previous_expires_at`; a previous one still there is dropped), `secret` becomes
    /// current, `rotated_at = at`. `NotFound` if absent; `Invalid` if revoked
    /// ([`hmac_invalid::REVOKED`]) or a public-key credential ([`hmac_invalid::NO_SECRET`]).
    async fn rotate_hmac(
        &self,
        key_id: &str,
        secret: &[u8],
        previous_expires_at: Timestamp,
        at: Timestamp,
    ) -> Result<HmacCredentialRecord, StoreError>;

    /// Revokes it at `at` (a second revoke keeps the first time) and returns it. `NotFound`
    /// if absent.
    async fn revoke_hmac(
        &self,
        key_id: &str,
        at: Timestamp,
    ) -> Result<HmacCredentialRecord, StoreError>;
}

/// The `Invalid` texts of [`HmacCredentials::rotate_hmac`] (both backends use these, so a
/// caller can match on them).
pub mod hmac_invalid {
    /// A revoked credential cannot be rotated.
    pub const REVOKED: &str = "hmac credential revoked";
    /// A public-key credential has no secret to rotate.
    pub const NO_SECRET: &str = "hmac credential has a public key, not a secret";
}

/// Values that may be used once (a client assertion's `jti`, a DPoP proof's, a signed
/// request's nonce), each remembered until `expires_at`, after which the credential that
/// carried it is refused on its own. Durable before `Ok`, so that a restart is no replay
/// window.
#[async_trait]
pub trait Nonces: Send + Sync {
    /// Records `key` as used until `expires_at`: `true` if it was not in use at `now`, `false`
    /// if it was (a replay). Atomic: of two concurrent claims of one key, one wins.
    async fn claim_nonce(
        &self,
        key: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    /// Forgets the ones expired by `now`; returns how many records went (a backend that keeps
    /// keys in groups, as SQLite does, counts the groups whose every key expired).
    async fn delete_expired_nonces(&self, now: Timestamp) -> Result<u64, StoreError>;
}

/// Access tokens revoked before they expire (by `jti`). Durable before `Ok`.
#[async_trait]
pub trait RevokedTokens: Send + Sync {
    /// Records `jti` as revoked until `expires_at` (a second call keeps the later expiry).
    async fn revoke_token(&self, jti: &str, expires_at: Timestamp) -> Result<(), StoreError>;

    /// Every revoked token that has not expired by `now`.
    async fn revoked_tokens(&self, now: Timestamp) -> Result<Vec<(String, Timestamp)>, StoreError>;

    /// Forgets the ones expired by `now`; returns how many.
    async fn delete_expired_revocations(&self, now: Timestamp) -> Result<u64, StoreError>;
}

/// Webhook endpoints and the outbox of their deliveries. Durable before `Ok`: a delivery
/// enqueued is not lost by a crash.
#[async_trait]
pub trait Webhooks: Send + Sync {
    /// Registers an endpoint. `Conflict` if the id exists; `Invalid` if a previous secret
    /// comes without its deadline or the other way round.
    async fn insert_webhook(&self, e: &WebhookEndpointRecord) -> Result<(), StoreError>;

    /// The endpoint with this id (disabled ones included).
    async fn find_webhook(&self, id: &str) -> Result<Option<WebhookEndpointRecord>, StoreError>;

    /// Endpoints ordered by id, after `after` (exclusive); at most `limit`.
    async fn list_webhooks(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookEndpointRecord>, StoreError>;

    /// Rotation, atomically: the current secret becomes the previous one (signing too until
    /// `previous_expires_at`; a previous one still there is dropped), `secret` becomes
    /// current, `rotated_at = at`. `NotFound` if absent.
    async fn rotate_webhook_secret(
        &self,
        id: &str,
        secret: &[u8],
        previous_expires_at: Timestamp,
        at: Timestamp,
    ) -> Result<WebhookEndpointRecord, StoreError>;

    /// Disables it at `at` for `reason` (a second call keeps the first time and reason), and
    /// in the same transaction marks its pending deliveries failed with `reason` as their
    /// last error. `NotFound` if absent.
    async fn disable_webhook(
        &self,
        id: &str,
        at: Timestamp,
        reason: &str,
    ) -> Result<WebhookEndpointRecord, StoreError>;

    /// Deletes the endpoint and its whole delivery log. `NotFound` if absent.
    async fn delete_webhook(&self, id: &str) -> Result<(), StoreError>;

    /// Enqueues deliveries, all in one transaction. One whose endpoint does not exist
    /// (deleted meanwhile) is skipped; `Conflict` if a delivery id exists (nothing stored).
    /// Returns how many were stored.
    async fn enqueue_deliveries(&self, d: &[WebhookDeliveryRecord]) -> Result<u64, StoreError>;

    /// Claims at most `limit` pending deliveries due at `now` (`next_attempt_at <= now`),
    /// oldest due first, and moves their `next_attempt_at` to `lease_until`, atomically: a
    /// second claim (another worker, another instance) does not see them again until the
    /// lease ends, which it does only if the claimer died before recording the attempt. The
    /// records are returned as claimed (`next_attempt_at` is the lease's end), oldest due
    /// first.
    async fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<WebhookDeliveryRecord>, StoreError>;

    /// Records an attempt of a pending delivery: `attempts + 1`, the last attempt's time,
    /// status and error, and then delivered, failed or due again. A delivery no longer
    /// pending (disabled meanwhile) is left as it is. `NotFound` if absent.
    async fn record_attempt(&self, id: &str, a: &Attempt) -> Result<(), StoreError>;

    /// The deliveries of one endpoint, newest first (`created_at`, then id), after the
    /// delivery `after` (exclusive; an unknown one gives an empty page); at most `limit`.
    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookDeliveryRecord>, StoreError>;

    /// Retention: removes delivered and failed deliveries created before `before` (never a
    /// pending one), at most a bounded number per call: call again while it answers more
    /// than 0. Returns how many went.
    async fn prune_deliveries(&self, before: Timestamp) -> Result<u64, StoreError>;
}

/// The durable store the binary wires in.
pub trait Durable:
    ApiKeys
    + AuditLog
    + SigningKeys
    + OAuthClients
    + RevokedTokens
    + Nonces
    + HmacCredentials
    + Webhooks
{
}
impl<
        T: ApiKeys
            + AuditLog
            + SigningKeys
            + OAuthClients
            + RevokedTokens
            + Nonces
            + HmacCredentials
            + Webhooks,
    > Durable for T
{
}

/// The audit-seq rule every backend applies: `seq` must be exactly `next`.
/// Checks that `events` continue at `next` and follow each other: seqs one by one, each
/// `prev_hash` the hash of the event before it (the first one's is the caller's to check).
pub(crate) fn check_run(events: &[Sealed<'_>], mut next: i64) -> Result<(), StoreError> {
    let mut before: Option<&Sealed<'_>> = None;
    for e in events {
        check_next_seq(e.seq, next)?;
        if before.is_some_and(|b| b.hash != e.prev_hash) {
            return Err(StoreError::Invalid(
                "audit events in a call must follow each other",
            ));
        }
        before = Some(e);
        next = e.seq.saturating_add(1);
    }
    Ok(())
}

pub(crate) fn check_next_seq(seq: i64, next: i64) -> Result<(), StoreError> {
    if seq < next {
        Err(StoreError::Conflict("audit seq exists"))
    } else if seq > next {
        Err(StoreError::Invalid(
            "audit seqs must continue the stored chain without gaps",
        ))
    } else {
        Ok(())
    }
}
