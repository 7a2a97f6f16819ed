//! HMAC signing credentials: the admin use cases (create, list, show, rotate, revoke — each
//! durable and audited, a secret shown once) and the cache of opened secrets that the `hmac`
//! authenticator ([`crate::authn::hmac`]) reads.
//!
//! A secret must be recoverable to verify a signature, so it is stored sealed (AES-256-GCM
//! under the master key, bound to its key id), never in the clear and never hashed.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::crypto::seal::SealKey;
use portcullis_core::hmac::http_sig::{Algorithm, VerifyingKey};
use portcullis_core::secret::Secret;
use portcullis_core::{ScopeSet, Timestamp};
use portcullis_store::{hmac_invalid, HmacCredentialRecord, HmacCredentials, StoreError};
use serde::Deserialize;
use serde_json::json;
use zeroize::Zeroizing;

use crate::admin::{with_ip, Actor, AdminError};
use crate::audit::{AuditEvent, Auditor};
use crate::clock::Clock;
use crate::random_bytes;

/// How long a replaced secret keeps working after a rotation unless the rotation says.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
/// The longest grace a rotation may give.
pub const MAX_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long an opened credential is used before it is read again (a change made through
/// [`HmacAdmin`] on this instance is seen at once).
pub const CACHE_TTL: Duration = Duration::from_secs(5);

/// The associated data a secret is sealed under: its kind and key id.
fn aad(key_id: &str) -> Vec<u8> {
    let mut a = b"hmac-secret:".to_vec();
    a.extend_from_slice(key_id.as_bytes());
    a
}

/// A credential as the authenticators need it: its secrets opened, or its public key parsed.
pub struct Opened {
    /// The key id.
    pub key_id: Arc<str>,
    /// The scopes it grants.
    pub scopes: ScopeSet,
    /// What verifies its signatures.
    pub material: Material,
    /// When it was revoked.
    pub revoked_at: Option<Timestamp>,
    /// SigV4 signing keys derived from its secrets (see [`Opened::sigv4_signing_key`]).
    sigv4_keys: std::sync::Mutex<Vec<Sigv4Key>>,
}

/// A derived SigV4 signing key: which secret, for which `date/region/service` scope.
struct Sigv4Key {
    secret_index: usize,
    scope: String,
    key: Zeroizing<[u8; 32]>,
}

/// How many derived SigV4 keys a credential keeps (a day's scopes, the day's change).
const SIGV4_KEYS: usize = 4;

/// What verifies a credential's signatures.
pub enum Material {
    /// Shared secrets (every scheme).
    Secrets {
        /// The current secret.
        current: Zeroizing<Vec<u8>>,
        /// The replaced secret and until when it is accepted.
        previous: Option<(Zeroizing<Vec<u8>>, Timestamp)>,
    },
    /// A registered public key (RFC 9421 only), parsed once.
    PublicKey(VerifyingKey),
}

/// The secrets valid at one moment (one, or two during a rotation's grace period), as a
/// slice without an allocation per request.
#[derive(Debug, Clone, Copy)]
pub struct Secrets<'a> {
    all: [&'a [u8]; 2],
    n: usize,
}

impl<'a> std::ops::Deref for Secrets<'a> {
    type Target = [&'a [u8]];

    fn deref(&self) -> &Self::Target {
        &self.all[..self.n]
    }
}

impl<'a> IntoIterator for Secrets<'a> {
    type Item = &'a [u8];
    type IntoIter = std::iter::Take<std::array::IntoIter<&'a [u8], 2>>;

    fn into_iter(self) -> Self::IntoIter {
        self.all.into_iter().take(self.n)
    }
}

impl Opened {
    /// The secrets a signature may be made with at `now`: the current one, and the
    /// previous one during its grace period; none for a public-key credential.
    pub fn secrets_at(&self, now: Timestamp) -> Secrets<'_> {
        let mut out = Secrets {
            all: [&[], &[]],
            n: 0,
        };
        let Material::Secrets { current, previous } = &self.material else {
            return out;
        };
        out.all[0] = current.as_slice();
        out.n = 1;
        if let Some((s, until)) = previous {
            if now < *until {
                out.all[1] = s.as_slice();
                out.n = 2;
            }
        }
        out
    }

    /// Whether it is revoked at `now`.
    pub fn revoked(&self, now: Timestamp) -> bool {
        self.revoked_at.is_some_and(|r| r <= now)
    }

    /// The SigV4 signing key of the secret at `secret_index` of [`Opened::secrets_at`] for
    /// `date/region/service`, derived once and kept with the credential (a few of them): it
    /// is four HMACs, and good for a whole day. Gone with the credential when it changes
    /// (rotation, revocation and the cache's renewal make a new `Opened`).
    pub fn sigv4_signing_key(
        &self,
        secret_index: usize,
        secret: &[u8],
        date: &str,
        region: &str,
        service: &str,
    ) -> [u8; 32] {
        let same = |k: &Sigv4Key| {
            k.secret_index == secret_index && {
                let mut parts = k.scope.splitn(3, '/');
                parts.next() == Some(date)
                    && parts.next() == Some(region)
                    && parts.next() == Some(service)
            }
        };
        if let Ok(keys) = self.sigv4_keys.lock() {
            if let Some(k) = keys.iter().find(|k| same(k)) {
                return *k.key;
            }
        }
        let key = portcullis_core::hmac::sigv4::signing_key(secret, date, region, service);
        if let Ok(mut keys) = self.sigv4_keys.lock() {
            if keys.len() >= SIGV4_KEYS {
                keys.remove(0);
            }
            keys.push(Sigv4Key {
                secret_index,
                scope: format!("{date}/{region}/{service}"),
                key: Zeroizing::new(key),
            });
        }
        key
    }
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The credentials, read through a bounded cache of opened secrets.
pub struct HmacKeys {
    store: Arc<dyn HmacCredentials>,
    seal: Arc<SealKey>,
    clock: Arc<dyn Clock>,
    cache: quick_cache::sync::Cache<String, (Arc<Opened>, Timestamp)>,
}

/// Why a credential could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The store did not answer.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A stored secret does not open under the master key, or a stored public key does not
    /// parse.
    #[error("the secret or public key of {0} does not open under this master key or parse")]
    Sealed(String),
}

impl HmacKeys {
    /// Credentials from `store`, secrets opened with `seal`.
    pub fn new(store: Arc<dyn HmacCredentials>, seal: Arc<SealKey>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            seal,
            clock,
            cache: quick_cache::sync::Cache::new(10_000),
        }
    }

    /// The credential with `key_id`, opened. Unknown ids are not remembered.
    pub async fn get(&self, key_id: &str) -> Result<Option<Arc<Opened>>, KeysError> {
        let now = self.clock.now();
        if let Some((o, until)) = self.cache.get(key_id) {
            if now < until {
                return Ok(Some(o));
            }
        }
        let Some(r) = self.store.find_hmac(key_id).await? else {
            return Ok(None);
        };
        let material = match (&r.secret, &r.public_key, &r.public_key_alg) {
            (Some(sealed), _, _) => {
                let open = |s: &[u8]| {
                    self.seal
                        .open(&aad(&r.key_id), s)
                        .map_err(|_| KeysError::Sealed(r.key_id.clone()))
                };
                let previous = match (&r.previous_secret, r.previous_expires_at) {
                    (Some(p), Some(until)) => Some((open(p)?, until)),
                    _ => None,
                };
                Material::Secrets {
                    current: open(sealed)?,
                    previous,
                }
            }
            (None, Some(pem), Some(alg)) => Material::PublicKey(
                Algorithm::from_name(alg)
                    .and_then(|a| VerifyingKey::from_public_key(a, pem.as_bytes()).ok())
                    .ok_or_else(|| KeysError::Sealed(r.key_id.clone()))?,
            ),
            _ => return Err(KeysError::Sealed(r.key_id.clone())),
        };
        let opened = Arc::new(Opened {
            key_id: r.key_id.as_str().into(),
            // Stored scopes were checked when they were written.
            scopes: ScopeSet::parse(&r.scopes).unwrap_or_default(),
            material,
            revoked_at: r.revoked_at,
            sigv4_keys: std::sync::Mutex::new(Vec::new()),
        });
        let ttl = i64::try_from(CACHE_TTL.as_millis()).unwrap_or(i64::MAX);
        self.cache
            .insert(r.key_id.clone(), (opened.clone(), now.plus_millis(ttl)));
        Ok(Some(opened))
    }

    /// Drops what is remembered of `key_id` (after a change to it).
    pub fn forget(&self, key_id: &str) {
        self.cache.remove(key_id);
    }
}

/// What `create` takes (the admin API's JSON body).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewHmac {
    /// A name for people.
    pub name: String,
    /// Scopes it grants.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A public key (PEM SubjectPublicKeyInfo, or PKCS#1 for RSA) to register instead of
    /// issuing a secret: the credential then verifies RFC 9421 signatures only.
    #[serde(default)]
    pub public_key: Option<String>,
    /// The public key's RFC 9421 algorithm: `ed25519`, `ecdsa-p256-sha256`,
    /// `rsa-pss-sha512` or `rsa-v1_5-sha256` (required with `public_key`).
    #[serde(default)]
    pub algorithm: Option<String>,
    /// Import: keep this key id (a partner's Kong `username`, APISIX `keyId`, AWS access key
    /// id) instead of generating one.
    #[serde(default)]
    pub key_id: Option<String>,
    /// Import: keep this secret (at least [`MIN_IMPORTED_SECRET_LEN`] bytes) instead of
    /// generating one; it is not returned (and `Debug` does not print it).
    #[serde(default)]
    pub secret: Option<Secret>,
}

/// The shortest secret an import keeps: a short shared secret can be guessed offline from
/// one signed request.
pub const MIN_IMPORTED_SECRET_LEN: usize = 16;
/// The longest secret an import keeps.
pub const MAX_IMPORTED_SECRET_LEN: usize = 1024;

/// An imported key id: 1 to 128 of `A-Z a-z 0-9 . _ - @ + = /`.
fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@+=/".contains(&b))
}

/// The longest public key (PEM) accepted.
pub const MAX_PUBLIC_KEY_LEN: usize = 16 * 1024;

/// The registered public key and its algorithm name, checked: it must parse for that
/// algorithm (type, curve, RSA size).
fn checked_public_key(
    pem: Option<&str>,
    alg: Option<&str>,
) -> Result<Option<(String, &'static str)>, AdminError> {
    let (pem, alg) = match (pem, alg) {
        (None, None) => return Ok(None),
        (Some(p), Some(a)) => (p.trim(), a),
        (Some(_), None) => {
            return Err(AdminError::Invalid(
                "`algorithm` is required with `public_key`".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(AdminError::Invalid(
                "`algorithm` goes with `public_key`".into(),
            ))
        }
    };
    let alg = Algorithm::from_name(alg)
        .filter(|a| *a != Algorithm::HmacSha256)
        .ok_or_else(|| {
            AdminError::Invalid(
                "`algorithm` must be ed25519, ecdsa-p256-sha256, rsa-pss-sha512 or rsa-v1_5-sha256"
                    .into(),
            )
        })?;
    if pem.is_empty() || pem.len() > MAX_PUBLIC_KEY_LEN || !pem.starts_with("-----BEGIN ") {
        return Err(AdminError::Invalid(
            "`public_key` must be a PEM public key of at most 16 KiB".into(),
        ));
    }
    VerifyingKey::from_public_key(alg, pem.as_bytes()).map_err(|_| {
        AdminError::Invalid(format!(
            "`public_key` is not a public key for {} (RSA: 2048 to 8192 bits)",
            alg.name()
        ))
    })?;
    Ok(Some((pem.to_owned(), alg.name())))
}

/// The admin use cases for HMAC credentials.
pub struct HmacAdmin {
    store: Arc<dyn HmacCredentials>,
    keys: Arc<HmacKeys>,
    seal: Arc<SealKey>,
    auditor: Auditor,
    clock: Arc<dyn Clock>,
}

fn new_secret() -> Secret {
    Secret::new(format!(
        "hs_{}",
        bs58::encode(random_bytes::<32>()).into_string()
    ))
}

impl HmacAdmin {
    /// The use cases over `store`; `keys` is the authenticator's cache (changes drop its
    /// entries).
    pub fn new(
        store: Arc<dyn HmacCredentials>,
        keys: Arc<HmacKeys>,
        seal: Arc<SealKey>,
        auditor: Auditor,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            keys,
            seal,
            auditor,
            clock,
        }
    }

    fn ensure_auditable(&self) -> Result<(), AdminError> {
        crate::admin::ensure_auditable(&self.auditor)
    }

    async fn audit(
        &self,
        actor: Actor,
        kind: &'static str,
        r: &HmacCredentialRecord,
        now: Timestamp,
    ) {
        let e = with_ip(AuditEvent::new(now, kind, "ok").actor(actor.name), actor)
            .credential(r.key_id.as_str().into())
            .detail(json!({ "name": r.name, "scopes": r.scopes }));
        self.auditor.emit_durable(e).await;
    }

    /// Creates a credential: with a secret of 256 random bits, returned here only (stored
    /// sealed), or, when `req` registers a public key, with that key and no secret, or, when
    /// `req` imports one, with the secret given (not returned). A key id given is kept
    /// (conflict if taken).
    pub async fn create(
        &self,
        actor: Actor,
        req: NewHmac,
    ) -> Result<(HmacCredentialRecord, Option<Secret>), AdminError> {
        self.ensure_auditable()?;
        let name = req.name.trim();
        if name.is_empty() || name.len() > crate::admin::limits::MAX_NAME {
            return Err(AdminError::Invalid(
                "`name` must be 1-128 characters".into(),
            ));
        }
        if req.scopes.len() > crate::admin::limits::MAX_SCOPES {
            return Err(AdminError::Invalid("at most 64 scopes".into()));
        }
        let scopes =
            ScopeSet::parse(&req.scopes).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let public = checked_public_key(req.public_key.as_deref(), req.algorithm.as_deref())?;
        if let Some(id) = &req.key_id {
            if !valid_key_id(id) {
                return Err(AdminError::Invalid(
                    "`key_id` must be 1-128 characters of [A-Za-z0-9._-@+=/]".into(),
                ));
            }
        }
        let imported = match req.secret {
            Some(_) if public.is_some() => {
                return Err(AdminError::Invalid(
                    "a credential has a `secret` or a `public_key`, not both".into(),
                ))
            }
            Some(s)
                if !(MIN_IMPORTED_SECRET_LEN..=MAX_IMPORTED_SECRET_LEN)
                    .contains(&s.expose().len())
                    || s.expose().chars().any(char::is_control) =>
            {
                return Err(AdminError::Invalid(
                    "an imported `secret` is 16-1024 characters, no control characters".into(),
                ))
            }
            s => s,
        };
        let now = self.clock.now();
        let key_id = req
            .key_id
            .unwrap_or_else(|| format!("hk_{}", bs58::encode(random_bytes::<16>()).into_string()));
        let (secret, stored) = match (imported, public.is_none()) {
            (Some(s), _) => (None, Some(s)),
            (None, true) => {
                let s = new_secret();
                (Some(s.clone()), Some(s))
            }
            (None, false) => (None, None),
        };
        let (public_key, public_key_alg) = public.unzip();
        let record = HmacCredentialRecord {
            secret: stored.as_ref().map(|s| {
                self.seal
                    .seal(random_bytes(), &aad(&key_id), s.expose().as_bytes())
            }),
            key_id,
            name: name.to_owned(),
            scopes: scopes.iter().map(str::to_owned).collect(),
            previous_secret: None,
            previous_expires_at: None,
            public_key,
            public_key_alg: public_key_alg.map(str::to_owned),
            created_at: now,
            rotated_at: None,
            revoked_at: None,
        };
        self.store.insert_hmac(&record).await?;
        self.audit(actor, "hmac.created", &record, now).await;
        Ok((record, secret))
    }

    /// Credentials ordered by key id.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<HmacCredentialRecord>, AdminError> {
        Ok(self.store.list_hmac(after, limit.clamp(1, 1000)).await?)
    }

    /// One credential.
    pub async fn show(&self, key_id: &str) -> Result<HmacCredentialRecord, AdminError> {
        self.store
            .find_hmac(key_id)
            .await?
            .ok_or(AdminError::NotFound)
    }

    /// A new secret; the current one keeps working for `grace` (default
    /// [`DEFAULT_GRACE`], at most [`MAX_GRACE`]), so that partners can switch without a
    /// failed request.
    pub async fn rotate(
        &self,
        actor: Actor,
        key_id: &str,
        grace: Option<Duration>,
    ) -> Result<(HmacCredentialRecord, Secret), AdminError> {
        self.ensure_auditable()?;
        let grace = grace.unwrap_or(DEFAULT_GRACE);
        if grace > MAX_GRACE {
            return Err(AdminError::Invalid(
                "the grace period is at most 30 days".into(),
            ));
        }
        let now = self.clock.now();
        let secret = new_secret();
        let sealed = self
            .seal
            .seal(random_bytes(), &aad(key_id), secret.expose().as_bytes());
        let until = now.plus_millis(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
        let r = self.store.rotate_hmac(key_id, &sealed, until, now).await;
        self.keys.forget(key_id);
        let r = r.map_err(|e| match e {
            StoreError::Invalid(w) if w == hmac_invalid::REVOKED => {
                AdminError::Conflict("a revoked credential cannot be rotated".into())
            }
            StoreError::Invalid(w) if w == hmac_invalid::NO_SECRET => {
                AdminError::Conflict("this credential has a public key, not a secret".into())
            }
            other => other.into(),
        })?;
        self.audit(actor, "hmac.rotated", &r, now).await;
        Ok((r, secret))
    }

    /// Revokes it: refused from the next request on.
    pub async fn revoke(
        &self,
        actor: Actor,
        key_id: &str,
    ) -> Result<HmacCredentialRecord, AdminError> {
        self.ensure_auditable()?;
        let now = self.clock.now();
        let r = self.store.revoke_hmac(key_id, now).await;
        self.keys.forget(key_id);
        let r = r?;
        self.audit(actor, "hmac.revoked", &r, now).await;
        Ok(r)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use portcullis_store::memory::MemoryStore;

    pub(crate) async fn setup() -> (Arc<MemoryStore>, Arc<HmacKeys>, HmacAdmin, Arc<ManualClock>) {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_714_000_000)));
        let seal = Arc::new(SealKey::new(&[9; 32]));
        let (auditor, writer) = crate::audit::channel(store.clone(), None, 1024)
            .await
            .unwrap();
        tokio::spawn(writer.run());
        let keys = Arc::new(HmacKeys::new(store.clone(), seal.clone(), clock.clone()));
        let admin = HmacAdmin::new(store.clone(), keys.clone(), seal, auditor, clock.clone());
        (store, keys, admin, clock)
    }

    pub(crate) const ACTOR: Actor = Actor {
        name: "admin-token",
        ip: None,
    };

    /// A request to `/orders` on `127.0.0.1:8080` from loopback, its body read.
    pub(crate) fn parts<'a>(
        h: &'a http::HeaderMap,
        m: &'a http::Method,
        query: Option<&'a str>,
        body: &'a [u8],
    ) -> portcullis_core::RequestParts<'a> {
        portcullis_core::RequestParts {
            method: m,
            path: "/orders",
            query,
            scheme: "http",
            authority: Some("127.0.0.1:8080"),
            headers: h,
            client_ip: [127, 0, 0, 1].into(),
            conn: None,
            body: Some(body),
        }
    }

    /// The signature error of a refusal, if it is one.
    pub(crate) fn code(
        r: Result<Option<crate::Authenticated>, portcullis_core::AuthError>,
    ) -> Option<portcullis_core::SignatureError> {
        match r {
            Err(portcullis_core::AuthError::Signature(s)) => Some(s),
            _ => None,
        }
    }

    /// A credential with a secret and the scope `write:orders`.
    pub(crate) async fn partner(admin: &HmacAdmin) -> (HmacCredentialRecord, Secret) {
        let (r, secret) = admin
            .create(
                ACTOR,
                NewHmac {
                    name: "p".into(),
                    scopes: vec!["write:orders".into()],
                    ..NewHmac::default()
                },
            )
            .await
            .unwrap();
        (r, secret.unwrap())
    }

    #[tokio::test]
    async fn created_secrets_are_sealed_and_open_again_and_rotation_keeps_the_old_one_a_while() {
        let (store, keys, admin, clock) = setup().await;
        let (r, secret) = admin
            .create(
                ACTOR,
                NewHmac {
                    name: "partner".into(),
                    scopes: vec!["read:echo".into()],
                    ..NewHmac::default()
                },
            )
            .await
            .unwrap();
        let secret = secret.unwrap();
        assert!(r.key_id.starts_with("hk_") && secret.expose().starts_with("hs_"));
        let stored = store.find_hmac(&r.key_id).await.unwrap().unwrap();
        let sealed = stored.secret.unwrap();
        assert!(!sealed
            .windows(secret.expose().len())
            .any(|w| w == secret.expose().as_bytes()));
        let o = keys.get(&r.key_id).await.unwrap().unwrap();
        assert_eq!(
            o.secrets_at(clock.now()).to_vec(),
            vec![secret.expose().as_bytes()]
        );
        assert_eq!(o.scopes.iter().collect::<Vec<_>>(), ["read:echo"]);

        let (_, new) = admin
            .rotate(ACTOR, &r.key_id, Some(Duration::from_secs(60)))
            .await
            .unwrap();
        let o = keys.get(&r.key_id).await.unwrap().unwrap();
        let now = clock.now();
        assert_eq!(
            o.secrets_at(now).to_vec(),
            vec![new.expose().as_bytes(), secret.expose().as_bytes()]
        );
        assert_eq!(
            o.secrets_at(now.plus_millis(60_000)).to_vec(),
            vec![new.expose().as_bytes()]
        );
        assert!(matches!(
            admin
                .rotate(ACTOR, &r.key_id, Some(MAX_GRACE + Duration::from_secs(1)))
                .await,
            Err(AdminError::Invalid(_))
        ));

        let revoked = admin.revoke(ACTOR, &r.key_id).await.unwrap();
        assert!(revoked.revoked_at.is_some());
        assert!(keys
            .get(&r.key_id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some());
        assert!(matches!(
            admin.rotate(ACTOR, &r.key_id, None).await,
            Err(AdminError::Conflict(_))
        ));
        assert!(matches!(
            admin.revoke(ACTOR, "hk_nope").await,
            Err(AdminError::NotFound)
        ));
        assert!(keys.get("hk_nope").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_secret_sealed_for_one_key_id_does_not_open_for_another() {
        let (store, keys, admin, _) = setup().await;
        let (a, _) = admin
            .create(
                ACTOR,
                NewHmac {
                    name: "a".into(),
                    scopes: vec![],
                    ..NewHmac::default()
                },
            )
            .await
            .unwrap();
        let mut moved = store.find_hmac(&a.key_id).await.unwrap().unwrap();
        moved.key_id = "hk_other".into();
        store.insert_hmac(&moved).await.unwrap();
        assert!(matches!(
            keys.get("hk_other").await,
            Err(KeysError::Sealed(_))
        ));
        for bad in ["", &"n".repeat(129)] {
            assert!(matches!(
                admin
                    .create(
                        ACTOR,
                        NewHmac {
                            name: bad.into(),
                            scopes: vec![],
                            ..NewHmac::default()
                        }
                    )
                    .await,
                Err(AdminError::Invalid(_))
            ));
        }
    }

    #[tokio::test]
    async fn an_imported_credential_keeps_its_key_id_and_secret() {
        let (_, keys, admin, clock) = setup().await;
        let import = |key_id: &str, secret: &str| NewHmac {
            name: "alice".into(),
            key_id: Some(key_id.into()),
            secret: Some(Secret::new(secret.into())),
            ..NewHmac::default()
        };
        let shown_in_debug = format!("{:?}", import("alice123", "a-secret-from-kong-0123"));
        assert!(
            !shown_in_debug.contains("a-secret-from-kong"),
            "{shown_in_debug}"
        );
        let (r, shown) = admin
            .create(ACTOR, import("alice123", "a-secret-from-kong-0123"))
            .await
            .unwrap();
        assert_eq!(r.key_id, "alice123");
        assert!(shown.is_none(), "an imported secret is not shown again");
        let o = keys.get("alice123").await.unwrap().unwrap();
        assert_eq!(
            o.secrets_at(clock.now()).to_vec(),
            vec![b"a-secret-from-kong-0123".as_slice()]
        );
        assert!(matches!(
            admin
                .create(ACTOR, import("alice123", "another-secret-0123456"))
                .await,
            Err(AdminError::Conflict(_))
        ));
        for (id, secret) in [
            ("bob", "too-short"),
            ("has space", "a-secret-from-kong-0123"),
            ("", "a-secret-from-kong-0123"),
            ("carol", "control\u{7}characters-in-it"),
        ] {
            assert!(
                matches!(
                    admin.create(ACTOR, import(id, secret)).await,
                    Err(AdminError::Invalid(_))
                ),
                "{id:?}"
            );
        }
        // A key id alone: a generated secret, shown once.
        let (r, shown) = admin
            .create(
                ACTOR,
                NewHmac {
                    name: "dave".into(),
                    key_id: Some("AKIDEXAMPLE".into()),
                    ..NewHmac::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(r.key_id, "AKIDEXAMPLE");
        assert!(shown.is_some());
    }

    #[tokio::test]
    async fn derived_sigv4_keys_are_the_core_ones_per_secret_and_scope() {
        let (_, keys, admin, _) = setup().await;
        let (r, secret) = partner(&admin).await;
        let o = keys.get(&r.key_id).await.unwrap().unwrap();
        let s = secret.expose().as_bytes();
        let want = portcullis_core::hmac::sigv4::signing_key(s, "20260101", "us-east-1", "x");
        for _ in 0..2 {
            assert_eq!(
                o.sigv4_signing_key(0, s, "20260101", "us-east-1", "x"),
                want
            );
        }
        let other = o.sigv4_signing_key(0, s, "20260102", "us-east-1", "x");
        assert_ne!(other, want);
        assert_eq!(
            other,
            portcullis_core::hmac::sigv4::signing_key(s, "20260102", "us-east-1", "x")
        );
        // Another secret index is another key, even for the same scope.
        assert_ne!(
            o.sigv4_signing_key(1, b"another", "20260101", "us-east-1", "x"),
            want
        );
        // More scopes than it keeps: the oldest goes, the answers stay right.
        for day in 3..9 {
            let d = format!("202601{day:02}");
            assert_eq!(
                o.sigv4_signing_key(0, s, &d, "us-east-1", "x"),
                portcullis_core::hmac::sigv4::signing_key(s, &d, "us-east-1", "x")
            );
        }
        assert_eq!(
            o.sigv4_signing_key(0, s, "20260101", "us-east-1", "x"),
            want
        );
    }
}
