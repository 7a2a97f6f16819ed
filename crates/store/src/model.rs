//! Stored records. Hashes, never raw secrets; `Debug` shows no hash either.

use std::borrow::Cow;

use portcullis_core::audit::{write_json, Fields};
use portcullis_core::crypto::Sha256Digest;
use portcullis_core::Timestamp;
use serde::{Deserialize, Serialize};

/// A rate limit as stored on a key or configured on a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    /// A name, unique among one key's limits (`burst`, `daily` …).
    pub name: String,
    /// `gcra` (default) or `token_bucket`.
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
    /// Requests per period.
    pub limit: u32,
    /// Period in milliseconds.
    pub period_ms: u64,
    /// Burst size; defaults to `limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

fn default_algorithm() -> String {
    "gcra".into()
}

/// A usage quota: `limit` requests per refill interval, counted from the key's creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSpec {
    /// Requests allowed per interval.
    pub limit: u64,
    /// Refill interval in milliseconds.
    pub refill_ms: u64,
}

/// A stored API key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// Public id (`key_…`).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Owner (the client id forwarded upstream); many keys per owner.
    pub owner: Option<String>,
    /// SHA-256 of the raw key.
    pub hash: Sha256Digest,
    /// Display prefix (`pk_live_AbCdEfGh`); empty for keys imported as hashes.
    pub display_prefix: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Free-form JSON object.
    pub metadata: serde_json::Value,
    /// Per-key rate limits, overriding the route's.
    pub rate_limits: Vec<RateLimitSpec>,
    /// Per-key usage quota.
    pub quota: Option<QuotaSpec>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Expiry (own, or end of a rotation grace period).
    pub expires_at: Option<Timestamp>,
    /// Revocation time.
    pub revoked_at: Option<Timestamp>,
    /// The key this one replaced by rotation.
    pub rotated_from: Option<String>,
    /// The key that replaced this one.
    pub rotated_to: Option<String>,
    /// Last successful use (batched, may lag a few seconds).
    pub last_used_at: Option<Timestamp>,
    /// Address of the last successful use.
    pub last_used_ip: Option<String>,
    /// `native`, `imported_raw` or `imported_hash`.
    pub origin: String,
}

impl std::fmt::Debug for ApiKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("owner", &self.owner)
            .field("hash", &"<hidden>")
            .field("display_prefix", &self.display_prefix)
            .field("scopes", &self.scopes)
            .field("expires_at", &self.expires_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// A change to a key's properties: each field given replaces the stored one whole; `None`
/// leaves it as it is. A key's identity (id, hash, prefix), its history (created, revoked,
/// rotated) and its usage are not properties and cannot change this way.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPatch {
    /// New name.
    pub name: Option<String>,
    /// New owner; `Some(None)` removes it.
    pub owner: Option<Option<String>>,
    /// New scopes.
    pub scopes: Option<Vec<String>>,
    /// New metadata object.
    pub metadata: Option<serde_json::Value>,
    /// New per-key rate limits (empty: the route's apply).
    pub rate_limits: Option<Vec<RateLimitSpec>>,
    /// New quota; `Some(None)` removes it.
    pub quota: Option<Option<QuotaSpec>>,
    /// New expiry; `Some(None)` removes it. Refused (`Conflict`) on a key replaced by
    /// rotation, whose expiry is the end of its grace period.
    pub expires_at: Option<Option<Timestamp>>,
}

impl KeyPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == KeyPatch::default()
    }

    /// The names of the properties it changes, in a fixed order.
    pub fn fields(&self) -> Vec<&'static str> {
        [
            ("name", self.name.is_some()),
            ("owner", self.owner.is_some()),
            ("scopes", self.scopes.is_some()),
            ("metadata", self.metadata.is_some()),
            ("rate_limits", self.rate_limits.is_some()),
            ("quota", self.quota.is_some()),
            ("expires_at", self.expires_at.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, given)| given.then_some(n))
        .collect()
    }

    /// `key` with the patch applied (the stores' shared rule; they check revocation and
    /// rotation first).
    pub fn apply(&self, key: &mut ApiKeyRecord) {
        if let Some(v) = &self.name {
            key.name.clone_from(v);
        }
        if let Some(v) = &self.owner {
            key.owner.clone_from(v);
        }
        if let Some(v) = &self.scopes {
            key.scopes.clone_from(v);
        }
        if let Some(v) = &self.metadata {
            key.metadata.clone_from(v);
        }
        if let Some(v) = &self.rate_limits {
            key.rate_limits.clone_from(v);
        }
        if let Some(v) = &self.quota {
            key.quota.clone_from(v);
        }
        if let Some(v) = self.expires_at {
            key.expires_at = v;
        }
    }
}

/// Batched usage of one key, written off the request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUsage {
    /// The key.
    pub key_id: String,
    /// Latest use.
    pub last_used_at: Timestamp,
    /// Address of the latest use.
    pub last_used_ip: String,
    /// Index of the quota window the count belongs to (0 when the key has no quota).
    pub quota_window: i64,
    /// Requests counted in that window so far (absolute, not a delta).
    pub quota_used: u64,
}

/// Quota state of a key as last persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QuotaState {
    /// Window index.
    pub window: i64,
    /// Requests used in that window.
    pub used: u64,
}

/// One audit event as stored, with its place in the hash chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// Position in the chain, 1-based and contiguous.
    pub seq: i64,
    /// Event time.
    pub time: Timestamp,
    /// Event kind (`auth.decision`, `api_key.created`, `api_key.new_ip` …), for filtering.
    /// Borrowed when the writer names it (kinds are constants: no allocation per event).
    pub kind: Cow<'static, str>,
    /// Outcome (`allow`, `deny`, `ok` …), for filtering.
    pub outcome: Cow<'static, str>,
    /// Credential id involved, if any, for filtering.
    pub credential_id: Option<String>,
    /// The event as canonical JSON (what the hash covers).
    pub body: String,
    /// Hash of the previous event (zeros for the first).
    pub prev_hash: Sha256Digest,
    /// `SHA-256(prev_hash ‖ seq as 8 big-endian bytes ‖ body)`.
    pub hash: Sha256Digest,
}

/// What one [`crate::AuditLog::prune`] call removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    /// Events removed by this call.
    pub events: u64,
    /// The trail's anchor after it: `seq` and `hash` of the last event removed so far (the
    /// stored events now start at `seq + 1`, chained to `hash`).
    pub anchor: (i64, Sha256Digest),
}

/// Filters for reading the audit trail, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only this outcome.
    pub outcome: Option<String>,
    /// Only this credential.
    pub credential_id: Option<String>,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Only events with `seq` below this (paging).
    pub before_seq: Option<i64>,
    /// At most this many (the store caps it at 1000).
    pub limit: u32,
}

/// One audit event handed to [`crate::AuditLog::append`]: its fields (borrowed from the
/// writer's batch) and its place in the hash chain. The canonical JSON that `hash` covers is
/// `portcullis_core::audit::write_json(&fields)`; a store keeps the fields, the JSON, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed<'a> {
    /// Position in the chain, 1-based and contiguous.
    pub seq: i64,
    /// What the event says.
    pub fields: Fields<'a>,
    /// Hash of the previous event (zeros for the first).
    pub prev_hash: Sha256Digest,
    /// `SHA-256(prev_hash ‖ seq as 8 big-endian bytes ‖ canonical JSON)`.
    pub hash: Sha256Digest,
}

impl Sealed<'_> {
    /// The event as read back: its canonical JSON rendered.
    pub fn to_stored(&self) -> StoredEvent {
        let mut body = String::with_capacity(256);
        write_json(&self.fields, &mut body);
        StoredEvent {
            seq: self.seq,
            time: Timestamp::from_millis(self.fields.time_ms),
            kind: Cow::Owned(self.fields.kind.to_owned()),
            outcome: Cow::Owned(self.fields.outcome.to_owned()),
            credential_id: self.fields.credential_id.map(str::to_owned),
            body,
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

/// A token-signing key as stored (see [`crate::SigningKeys`]).
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRecord {
    /// The key id: the RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// The JWS algorithm (`ES256`, `EdDSA`, `RS256`, `PS256`).
    pub alg: String,
    /// The PKCS#8 private key, sealed by the caller (the store never sees it in the clear).
    pub private_sealed: Vec<u8>,
    /// The public JWK, as JSON.
    pub public_jwk: String,
    /// When it was made (and first published).
    pub created_at: Timestamp,
    /// When it starts signing.
    pub activates_at: Timestamp,
    /// When it stops signing (set when the next key is scheduled).
    pub retires_at: Option<Timestamp>,
    /// When it leaves the JWKS: after every token it signed has expired.
    pub expires_at: Option<Timestamp>,
}

impl std::fmt::Debug for SigningKeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRecord")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("created_at", &self.created_at)
            .field("activates_at", &self.activates_at)
            .field("retires_at", &self.retires_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The retirement of the keys that sign before a new one takes over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retirement {
    /// When they stop signing (the new key's `activates_at`).
    pub retires_at: Timestamp,
    /// When they leave the JWKS.
    pub expires_at: Timestamp,
}

/// An OAuth 2.0 client as stored (see [`crate::OAuthClients`]).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// The `client_id`.
    pub id: String,
    /// A name for people (shown on consent pages).
    pub name: String,
    /// Confidential (has a secret or key) or public.
    pub confidential: bool,
    /// Grant types it may use (`client_credentials`, `authorization_code` …).
    pub grant_types: Vec<String>,
    /// Scopes it may be granted.
    pub scopes: Vec<String>,
    /// Audiences (RFC 8707 resources) it may ask tokens for.
    pub audiences: Vec<String>,
    /// Redirect URIs, matched exactly (for the user-facing flows).
    pub redirect_uris: Vec<String>,
    /// `client_secret_basic`, `client_secret_post`, `private_key_jwt` or `none`.
    pub auth_method: String,
    /// Lifetime of its access tokens in seconds (`None`: the server's default).
    pub token_lifetime_secs: Option<u64>,
    /// SHA-256 of the secret (confidential clients with a secret).
    pub secret_hash: Option<Sha256Digest>,
    /// When it was registered.
    pub created_at: Timestamp,
    /// When its secret was last set.
    pub secret_set_at: Option<Timestamp>,
    /// Its public keys as a JWKS document (`private_key_jwt` clients).
    pub jwks: Option<String>,
}

impl std::fmt::Debug for ClientRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("grant_types", &self.grant_types)
            .field("scopes", &self.scopes)
            .field("auth_method", &self.auth_method)
            .finish_non_exhaustive()
    }
}

/// A partner's credential for signed requests (see [`crate::HmacCredentials`]): a public key
/// id and a shared secret, or instead a registered public key for RFC 9421 signatures.
/// Exactly one of `secret` and `public_key` is set.
#[derive(Clone, PartialEq, Eq)]
pub struct HmacCredentialRecord {
    /// The public key id the client sends (`X-API-Key`, the SigV4 access key id, RFC 9421
    /// `keyid`). Unique.
    pub key_id: String,
    /// A name for people.
    pub name: String,
    /// Scopes it grants.
    pub scopes: Vec<String>,
    /// The current shared secret, sealed by the caller (`portcullis_core::crypto::seal`; the
    /// store never sees it in the clear). `None` for a public-key credential.
    pub secret: Option<Vec<u8>>,
    /// The secret it replaced, sealed, accepted until `previous_expires_at`.
    pub previous_secret: Option<Vec<u8>>,
    /// Until when `previous_secret` is accepted (set together with it).
    pub previous_expires_at: Option<Timestamp>,
    /// A registered public key (PEM SubjectPublicKeyInfo), instead of a secret.
    pub public_key: Option<String>,
    /// The public key's RFC 9421 algorithm name (`ed25519`, `ecdsa-p256-sha256`,
    /// `rsa-pss-sha512`, `rsa-v1_5-sha256`), set together with it.
    pub public_key_alg: Option<String>,
    /// When it was made.
    pub created_at: Timestamp,
    /// When the secret was last rotated.
    pub rotated_at: Option<Timestamp>,
    /// When it was revoked (refused from then on).
    pub revoked_at: Option<Timestamp>,
}

impl HmacCredentialRecord {
    /// The rule both backends apply before storing a credential: exactly one of a secret and a
    /// public key; an algorithm with (and only with) a public key; a previous secret only next
    /// to a current one, and with (and only with) its deadline.
    pub(crate) fn check(&self) -> Result<(), crate::StoreError> {
        let invalid = crate::StoreError::Invalid;
        if self.secret.is_some() == self.public_key.is_some() {
            return Err(invalid(
                "hmac credential needs exactly one of a secret and a public key",
            ));
        }
        if self.public_key.is_some() != self.public_key_alg.is_some() {
            return Err(invalid(
                "hmac credential public key and algorithm go together",
            ));
        }
        if self.previous_secret.is_some() && self.secret.is_none() {
            return Err(invalid(
                "hmac credential previous secret needs a current one",
            ));
        }
        if self.previous_secret.is_some() != self.previous_expires_at.is_some() {
            return Err(invalid(
                "hmac credential previous secret and its deadline go together",
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for HmacCredentialRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Whether the secrets are set, never their bytes (sealed, but still not for logs).
        let set = |s: &Option<Vec<u8>>| if s.is_some() { "<set>" } else { "<none>" };
        f.debug_struct("HmacCredentialRecord")
            .field("key_id", &self.key_id)
            .field("name", &self.name)
            .field("scopes", &self.scopes)
            .field("secret", &set(&self.secret))
            .field("previous_secret", &set(&self.previous_secret))
            .field("previous_expires_at", &self.previous_expires_at)
            .field("public_key_alg", &self.public_key_alg)
            .field("created_at", &self.created_at)
            .field("rotated_at", &self.rotated_at)
            .field("revoked_at", &self.revoked_at)
            .finish_non_exhaustive()
    }
}

/// A registered webhook endpoint (see [`crate::Webhooks`]): where Portcullis delivers its own
/// events, signed the Standard Webhooks way.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookEndpointRecord {
    /// The id, `wh_…`.
    pub id: String,
    /// The absolute `http(s)://` URL deliveries are POSTed to.
    pub url: String,
    /// A note for people (may be empty).
    pub description: String,
    /// The event types it subscribed to (`api_key.revoked` …, or `*`).
    pub events: Vec<String>,
    /// The signing secret, sealed by the caller (the store never sees it in the clear).
    pub secret: Vec<u8>,
    /// The secret it replaced, sealed, still signing until `previous_expires_at`.
    pub previous_secret: Option<Vec<u8>>,
    /// Until when `previous_secret` signs too (set together with it).
    pub previous_expires_at: Option<Timestamp>,
    /// When it was registered.
    pub created_at: Timestamp,
    /// When its secret was last rotated.
    pub rotated_at: Option<Timestamp>,
    /// When it stopped receiving deliveries (the receiver answered 410 Gone).
    pub disabled_at: Option<Timestamp>,
    /// Why it was disabled (short text, never a secret).
    pub disabled_reason: Option<String>,
}

impl WebhookEndpointRecord {
    /// The rule both backends apply before storing an endpoint: a previous secret only with
    /// its deadline.
    pub(crate) fn check(&self) -> Result<(), crate::StoreError> {
        if self.previous_secret.is_some() != self.previous_expires_at.is_some() {
            return Err(crate::StoreError::Invalid(
                "webhook previous secret and its deadline go together",
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for WebhookEndpointRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpointRecord")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("events", &self.events)
            .field("secret", &"<sealed>")
            .field("previous_expires_at", &self.previous_expires_at)
            .field("created_at", &self.created_at)
            .field("disabled_at", &self.disabled_at)
            .finish_non_exhaustive()
    }
}

/// Where a webhook delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveryStatus {
    /// The receiver answered 2xx.
    Delivered,
    /// Given up: attempts exhausted, or the endpoint was disabled.
    Failed,
    /// Waiting for its next attempt (`next_attempt_at`).
    Pending,
}

impl DeliveryStatus {
    /// `delivered`, `failed` or `pending` (as stored and shown).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
            Self::Pending => "pending",
        }
    }

    /// The status named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            "pending" => Some(Self::Pending),
            _ => None,
        }
    }
}

/// One event to deliver to one endpoint, and how its attempts went (the delivery log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDeliveryRecord {
    /// The Standard Webhooks `webhook-id` (`msg_…`): the same on every attempt, so that the
    /// receiver can deduplicate.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event type (`api_key.revoked` …).
    pub event_type: String,
    /// The exact JSON body sent (signed as is). Holds no secret.
    pub payload: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (pending), or was last due.
    pub next_attempt_at: Timestamp,
    /// When the last attempt was made.
    pub last_attempt_at: Option<Timestamp>,
    /// The HTTP status of the last attempt (`None`: no answer).
    pub last_status: Option<u16>,
    /// Why the last attempt failed (short text, never a secret).
    pub last_error: Option<String>,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// When the receiver took it.
    pub delivered_at: Option<Timestamp>,
}

/// The outcome of one delivery attempt (see [`crate::Webhooks::record_attempt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it was made.
    pub at: Timestamp,
    /// The HTTP status (`None`: no answer: refused, timed out …).
    pub status_code: Option<u16>,
    /// Why it failed (short text, never a secret); `None` when delivered.
    pub error: Option<String>,
    /// What happens next.
    pub next: AttemptNext,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptNext {
    /// Delivered: done.
    Delivered,
    /// Given up: done.
    Failed,
    /// Try again at this time.
    RetryAt(Timestamp),
}
