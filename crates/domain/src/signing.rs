//! The keys Portcullis signs tokens with: made, sealed, rotated without downtime, published.
//!
//! A key's life: made and **published** (in the JWKS) at once; **signs** from `activates_at`,
//! which a rotation puts a lead time ahead, so that every verifier that caches our JWKS has
//! seen the key before the first token it signs; **retires** when the next key activates; and
//! stays published until `expires_at`, the end of the longest-lived token it can have signed.
//! The private half is sealed under the master key (AES-256-GCM, bound to the kid) before it
//! reaches the store, so the store, its backups and its replicas never hold it in the clear.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_core::crypto::seal::SealKey;
use portcullis_core::crypto::sign::{PublicKey, SigningKey};
use portcullis_core::jose::{self, Algorithm, Jwk};
use portcullis_core::Timestamp;
use portcullis_store::{Retirement, SigningKeyRecord, SigningKeys, StoreError};

use crate::admin::{with_ip, Actor, AdminError};
use crate::audit::{AuditEvent, Auditor};
use crate::clock::Clock;
use crate::random_bytes;

/// Why the key ring could not do what was asked. Store and crypto details are for the log.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A stored key does not open under the master key (a different master key, or tampering).
    #[error("signing key {kid} does not open under this master key")]
    Sealed {
        /// The key's id.
        kid: String,
    },
    /// A stored key is not what its record says.
    #[error("signing key {kid} is corrupt")]
    Corrupt {
        /// The key's id.
        kid: String,
    },
    /// The crypto library failed to make or use a key.
    #[error("key generation failed")]
    Crypto,
    /// The algorithm cannot sign (HS256).
    #[error("{0} is not a signing algorithm")]
    NotSigning(&'static str),
}

/// How keys are made and rotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingConfig {
    /// The algorithm of new keys.
    pub algorithm: Algorithm,
    /// How long a new key is published before it signs.
    pub lead_time: Duration,
    /// Rotate by itself this long after the signing key activated; `None`: only on demand.
    pub rotate_every: Option<Duration>,
    /// The longest lifetime of a token Portcullis signs: how long a retired key stays
    /// published.
    pub max_token_lifetime: Duration,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Es256,
            lead_time: Duration::from_secs(3600),
            rotate_every: None,
            max_token_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// One key, parsed and ready.
pub struct RingKey {
    /// Its record (the sealed private half included).
    pub record: SigningKeyRecord,
    /// Its public JWK (`kid` set).
    pub jwk: Jwk,
    /// The same public key, parsed once (verification needs it per token).
    public: PublicKey,
    key: SigningKey,
}

impl RingKey {
    /// Whether it signs at `now`.
    pub fn signs_at(&self, now: Timestamp) -> bool {
        self.record.activates_at <= now && self.record.retires_at.is_none_or(|r| now < r)
    }

    /// Whether it is in the JWKS at `now`.
    pub fn published_at(&self, now: Timestamp) -> bool {
        self.record.expires_at.is_none_or(|e| now < e)
    }

    /// Signs `claims` (serialised JSON) as a compact JWS with this key's `kid` and `typ`.
    pub fn sign(&self, typ: Option<&str>, claims: &[u8]) -> Result<String, SigningError> {
        jose::sign_compact(&self.key, &self.record.kid, typ, claims)
            .map_err(|_| SigningError::Crypto)
    }

    /// The algorithm it signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }

    /// Its public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }
}

impl std::fmt::Debug for RingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingKey")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// The signing keys, loaded from the store and kept parsed in memory.
pub struct KeyRing {
    store: Arc<dyn SigningKeys>,
    seal: SealKey,
    config: RingConfig,
    keys: RwLock<Arc<Vec<Arc<RingKey>>>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The associated data a private key is sealed under: its kind and kid.
fn aad(kid: &str) -> Vec<u8> {
    let mut a = b"signing_key:".to_vec();
    a.extend_from_slice(kid.as_bytes());
    a
}

impl KeyRing {
    /// Loads every stored key (each must open under `seal`), and makes the first key, signing
    /// at once, when there is none.
    pub async fn open(
        store: Arc<dyn SigningKeys>,
        seal: SealKey,
        config: RingConfig,
        now: Timestamp,
    ) -> Result<Self, SigningError> {
        let ring = Self {
            store,
            seal,
            config,
            keys: RwLock::new(Arc::new(Vec::new())),
        };
        ring.reload().await?;
        if ring.signer(now).is_none() && ring.pending(now).is_none() {
            ring.add(ring.config.algorithm, now, now).await?;
        }
        Ok(ring)
    }

    /// How keys are made and rotated.
    pub fn config(&self) -> &RingConfig {
        &self.config
    }

    /// Reads the keys from the store again (another instance may have rotated).
    pub async fn reload(&self) -> Result<(), SigningError> {
        let records = self.store.signing_keys().await?;
        let mut keys = Vec::with_capacity(records.len());
        for record in records {
            keys.push(Arc::new(self.parse(record)?));
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        Ok(())
    }

    fn parse(&self, record: SigningKeyRecord) -> Result<RingKey, SigningError> {
        let corrupt = || SigningError::Corrupt {
            kid: record.kid.clone(),
        };
        let alg = Algorithm::from_name(&record.alg).ok_or_else(corrupt)?;
        let pkcs8 = self
            .seal
            .open(&aad(&record.kid), &record.private_sealed)
            .map_err(|_| SigningError::Sealed {
                kid: record.kid.clone(),
            })?;
        let key = SigningKey::from_pkcs8(alg, &pkcs8).map_err(|_| corrupt())?;
        let public = key.public_key();
        let jwk = Jwk::from_public(&public, alg).map_err(|_| corrupt())?;
        if jwk.kid.as_deref() != Some(record.kid.as_str()) {
            return Err(corrupt());
        }
        Ok(RingKey {
            record,
            jwk,
            public,
            key,
        })
    }

    /// Every key the ring holds, oldest first.
    pub fn keys(&self) -> Arc<Vec<Arc<RingKey>>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The key that signs at `now`: of those active, the one that activated last.
    pub fn signer(&self, now: Timestamp) -> Option<Arc<RingKey>> {
        self.keys().iter().rev().find(|k| k.signs_at(now)).cloned()
    }

    /// A key published but not yet signing, if a rotation is under way.
    pub fn pending(&self, now: Timestamp) -> Option<Arc<RingKey>> {
        self.keys()
            .iter()
            .rev()
            .find(|k| k.record.activates_at > now)
            .cloned()
    }

    /// The JWKS document at `now`: every published key, newest first.
    pub fn jwks(&self, now: Timestamp) -> serde_json::Value {
        let all = self.keys();
        let keys: Vec<&Jwk> = all
            .iter()
            .rev()
            .filter(|k| k.published_at(now))
            .map(|k| &k.jwk)
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// Rotation: a new key (of `alg`, or the configured algorithm), published now, signing
    /// after `lead` (or the configured lead time); the keys signing until then retire when it
    /// activates and stay published for the longest token lifetime after.
    pub async fn rotate(
        &self,
        alg: Option<Algorithm>,
        lead: Option<Duration>,
        now: Timestamp,
    ) -> Result<Arc<RingKey>, SigningError> {
        let lead = lead.unwrap_or(self.config.lead_time);
        let activates = now.plus_millis(millis(lead));
        self.add(alg.unwrap_or(self.config.algorithm), now, activates)
            .await
    }

    async fn add(
        &self,
        alg: Algorithm,
        now: Timestamp,
        activates_at: Timestamp,
    ) -> Result<Arc<RingKey>, SigningError> {
        if !alg.is_asymmetric() {
            return Err(SigningError::NotSigning(alg.name()));
        }
        // Key generation (RSA especially) takes milliseconds: off the async threads.
        let key = tokio::task::spawn_blocking(move || SigningKey::generate(alg))
            .await
            .map_err(|_| SigningError::Crypto)?
            .map_err(|_| SigningError::Crypto)?;
        let public = key.public_key();
        let jwk = Jwk::from_public(&public, alg).map_err(|_| SigningError::Crypto)?;
        let kid = jwk.kid.clone().ok_or(SigningError::Crypto)?;
        let record = SigningKeyRecord {
            private_sealed: self.seal.seal(random_bytes(), &aad(&kid), key.pkcs8()),
            public_jwk: serde_json::to_string(&jwk).map_err(|_| SigningError::Crypto)?,
            kid,
            alg: alg.name().to_owned(),
            created_at: now,
            activates_at,
            retires_at: None,
            expires_at: None,
        };
        let retire = (!self.keys().is_empty()).then(|| Retirement {
            retires_at: activates_at,
            expires_at: activates_at.plus_millis(millis(self.config.max_token_lifetime)),
        });
        self.store.insert_signing_key(&record, retire).await?;
        self.reload().await?;
        Ok(Arc::new(RingKey {
            record,
            jwk,
            public,
            key,
        }))
    }

    /// The periodic step: a scheduled rotation when one is due (and none is under way), and
    /// the removal of keys whose tokens have all expired. Returns the new key, if any.
    pub async fn tick(&self, now: Timestamp) -> Result<Option<Arc<RingKey>>, SigningError> {
        let removed = self.store.delete_expired_signing_keys(now).await?;
        if removed > 0 {
            self.reload().await?;
        }
        let Some(every) = self.config.rotate_every else {
            return Ok(None);
        };
        let due = self
            .signer(now)
            .is_none_or(|k| now >= k.record.activates_at.plus_millis(millis(every)));
        if due && self.pending(now).is_none() {
            return self.rotate(None, None, now).await.map(Some);
        }
        Ok(None)
    }
}

/// The admin use cases for signing keys: list and rotate, each rotation audited durably.
pub struct SigningAdmin {
    ring: Arc<KeyRing>,
    auditor: Auditor,
    clock: Arc<dyn Clock>,
}

impl SigningAdmin {
    /// Admin over `ring`.
    pub fn new(ring: Arc<KeyRing>, auditor: Auditor, clock: Arc<dyn Clock>) -> Self {
        Self {
            ring,
            auditor,
            clock,
        }
    }

    /// The ring.
    pub fn ring(&self) -> &Arc<KeyRing> {
        &self.ring
    }

    /// Rotates now (see [`KeyRing::rotate`]), audited as `signing_key.rotated`.
    pub async fn rotate(
        &self,
        actor: Actor,
        alg: Option<Algorithm>,
        lead: Option<Duration>,
    ) -> Result<Arc<RingKey>, AdminError> {
        if !self.auditor.is_storing() {
            return Err(AdminError::AuditUnavailable);
        }
        if lead.is_some_and(|l| l > MAX_LEAD) {
            return Err(AdminError::Invalid("`lead_time` must be at most 7d".into()));
        }
        if alg.is_some_and(|a| !a.is_asymmetric()) {
            return Err(AdminError::Invalid(
                "`algorithm` must be ES256, EdDSA, RS256 or PS256".into(),
            ));
        }
        let now = self.clock.now();
        let key = self
            .ring
            .rotate(alg, lead, now)
            .await
            .map_err(|e| match e {
                SigningError::Store(s) => AdminError::from(s),
                other => AdminError::Store(StoreError::Unavailable(other.to_string())),
            })?;
        self.auditor
            .emit_durable(with_ip(rotation_event(now, &key), actor).actor(actor.name))
            .await;
        Ok(key)
    }
}

/// The longest lead time a rotation may ask for.
pub const MAX_LEAD: Duration = Duration::from_secs(7 * 86_400);

fn rotation_event(now: Timestamp, key: &RingKey) -> AuditEvent {
    AuditEvent::new(now, "signing_key.rotated", "ok")
        .credential(key.record.kid.as_str().into())
        .detail(serde_json::json!({
            "algorithm": key.record.alg,
            "activates_at": key.record.activates_at.as_millis(),
        }))
}

/// [`KeyRing::tick`] with its scheduled rotations audited (actor `system:scheduler`).
pub async fn tick_audited(
    ring: &KeyRing,
    auditor: &Auditor,
    now: Timestamp,
) -> Result<(), SigningError> {
    if let Some(key) = ring.tick(now).await? {
        auditor
            .emit_durable(rotation_event(now, &key).actor("system:scheduler"))
            .await;
    }
    Ok(())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::jose::{Jws, MAX_TOKEN_LEN};
    use portcullis_store::memory::MemoryStore;

    const H: i64 = 3_600_000;

    async fn ring(store: Arc<MemoryStore>, config: RingConfig, now: i64) -> KeyRing {
        KeyRing::open(
            store,
            SealKey::new(&[3; 32]),
            config,
            Timestamp::from_millis(now),
        )
        .await
        .unwrap()
    }

    fn verifies(ring: &KeyRing, now: i64, token: &str) -> bool {
        let jws = Jws::parse(token, MAX_TOKEN_LEN).unwrap();
        let jwks = ring.jwks(Timestamp::from_millis(now));
        jwks["keys"].as_array().unwrap().iter().any(|j| {
            let jwk: Jwk = serde_json::from_value(j.clone()).unwrap();
            jwk.kid == jws.header().kid
                && jws
                    .verify(&jwk.public_key().unwrap(), &Algorithm::ALL)
                    .is_ok()
        })
    }

    #[tokio::test]
    async fn a_rotation_publishes_first_signs_later_and_unpublishes_last() {
        let store = Arc::new(MemoryStore::new());
        let cfg = RingConfig {
            lead_time: Duration::from_secs(3600),
            max_token_lifetime: Duration::from_secs(2 * 3600),
            ..RingConfig::default()
        };
        let r = ring(store.clone(), cfg.clone(), 0).await;
        let first = r.signer(Timestamp::from_millis(0)).unwrap();
        assert_eq!(first.algorithm(), Algorithm::Es256);
        let old_token = first.sign(Some("at+jwt"), b"{}").unwrap();

        let next = r
            .rotate(None, None, Timestamp::from_millis(10))
            .await
            .unwrap();
        // Published at once, signing only after the lead time.
        assert_eq!(
            r.jwks(Timestamp::from_millis(10))["keys"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            r.signer(Timestamp::from_millis(H)).unwrap().record.kid,
            first.record.kid
        );
        assert_eq!(
            r.signer(Timestamp::from_millis(H + 10)).unwrap().record.kid,
            next.record.kid
        );
        // The old key's tokens verify until the longest token lifetime has passed.
        assert!(verifies(&r, 3 * H, &old_token));
        assert!(!verifies(&r, 3 * H + 10, &old_token));

        // A second ring on the same store (a restart) sees the same keys, opened.
        let again = ring(store.clone(), cfg.clone(), H + 20).await;
        assert_eq!(again.keys().len(), 2);
        assert_eq!(
            again
                .signer(Timestamp::from_millis(H + 20))
                .unwrap()
                .record
                .kid,
            next.record.kid
        );
        // The stored private half is sealed: the PKCS#8 bytes are not in the record.
        let stored = store.signing_keys().await.unwrap();
        assert!(stored
            .iter()
            .all(|k| !k.private_sealed.windows(16).any(|w| first
                .key
                .pkcs8()
                .windows(16)
                .any(|p| p == w))));

        // Expired keys leave the store on the periodic step.
        assert_eq!(
            again
                .tick(Timestamp::from_millis(3 * H + 10))
                .await
                .unwrap()
                .map(|_| ()),
            None
        );
        assert_eq!(store.signing_keys().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn another_master_key_does_not_open_the_keys() {
        let store = Arc::new(MemoryStore::new());
        let _ = ring(store.clone(), RingConfig::default(), 0).await;
        let err = KeyRing::open(
            store,
            SealKey::new(&[4; 32]),
            RingConfig::default(),
            Timestamp::EPOCH,
        )
        .await
        .unwrap_err();
        assert!(matches!(err, SigningError::Sealed { .. }), "{err}");
    }

    #[tokio::test]
    async fn scheduled_rotation_and_every_algorithm() {
        let store = Arc::new(MemoryStore::new());
        let cfg = RingConfig {
            rotate_every: Some(Duration::from_secs(24 * 3600)),
            ..RingConfig::default()
        };
        let r = ring(store, cfg, 0).await;
        assert!(r
            .tick(Timestamp::from_millis(23 * H))
            .await
            .unwrap()
            .is_none());
        let k = r
            .tick(Timestamp::from_millis(24 * H))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(k.record.activates_at, Timestamp::from_millis(25 * H));
        // Under way: no second rotation.
        assert!(r
            .tick(Timestamp::from_millis(24 * H + 1))
            .await
            .unwrap()
            .is_none());
        for alg in [Algorithm::EdDsa, Algorithm::Rs256, Algorithm::Ps256] {
            let k = r
                .rotate(
                    Some(alg),
                    Some(Duration::ZERO),
                    Timestamp::from_millis(26 * H),
                )
                .await
                .unwrap();
            assert_eq!(k.algorithm(), alg);
        }
        assert!(matches!(
            r.rotate(Some(Algorithm::Hs256), None, Timestamp::EPOCH)
                .await,
            Err(SigningError::NotSigning("HS256"))
        ));
    }
}
