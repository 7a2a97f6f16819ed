//! The OAuth 2.0 authorization server for machine clients: client registration (admin) and
//! the token endpoint's `client_credentials` grant (RFC 6749 §4.4), issuing RFC 9068 JWT
//! access tokens signed by the [`KeyRing`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_core::crypto::{self, Sha256Digest};
use portcullis_core::jose::{Algorithm, Jwk, Jws};
use portcullis_core::jwt::{self, Expectations, JwtError};
use portcullis_core::oauth2::{grant_scopes, ClientCredentials, Form, OAuthError};
use portcullis_core::secret::{ct_eq, Secret};
use portcullis_core::{ScopeSet, Timestamp};
use portcullis_store::{ClientRecord, Nonces, OAuthClients, RevokedTokens, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::admin::{with_ip, Actor, AdminError};
use crate::audit::{AuditEvent, Auditor};
use crate::clock::Clock;
use crate::dpop::{DpopChecker, DpopRefusal, ProofRequest};
use crate::random_bytes;
use crate::signing::KeyRing;

/// Grant types a client may be registered for. Only `client_credentials` is served so far;
/// the others are accepted at registration for the user-facing flows to come.
pub const GRANT_TYPES: [&str; 4] = [
    "client_credentials",
    "authorization_code",
    "refresh_token",
    "urn:ietf:params:oauth:grant-type:device_code",
];

/// Token endpoint authentication methods a client may be registered with.
pub const AUTH_METHODS: [&str; 4] = [
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
    "none",
];

/// Algorithms a client may sign its assertions with (`private_key_jwt`).
pub const ASSERTION_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::Es256,
    Algorithm::EdDsa,
    Algorithm::Rs256,
    Algorithm::Ps256,
];

/// Most keys a client may register.
pub const MAX_CLIENT_KEYS: usize = 10;

/// Most entries in a client's lists of scopes, audiences and redirect URIs.
pub const MAX_CLIENT_LIST: usize = 100;

/// The longest a client assertion may still be valid for when presented: its `jti` is
/// remembered that long. (An hour, what common libraries such as authlib mint by default.)
pub const MAX_ASSERTION_LIFETIME_SECS: i64 = 3600;

/// Clock skew allowed on a client assertion's `exp`, `nbf` and `iat`.
const ASSERTION_LEEWAY_SECS: i64 = 30;

/// Longest access-token lifetime a client may have.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What an admin asks for when registering a client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    /// A name for people.
    pub name: String,
    /// Grant types (default: `client_credentials`).
    #[serde(default)]
    pub grant_types: Option<Vec<String>>,
    /// Scopes it may be granted.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Audiences (RFC 8707 resources) it may ask for; the first is the default.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Redirect URIs for the user-facing flows.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// `client_secret_basic` (default for confidential clients), `client_secret_post`, or
    /// `none` (a public client: no secret).
    #[serde(default)]
    pub token_endpoint_auth_method: Option<String>,
    /// Access-token lifetime in seconds (default: the server's).
    #[serde(default)]
    pub token_lifetime_seconds: Option<u64>,
    /// The public keys of a `private_key_jwt` client: a JWKS (`{"keys": […]}`) or one JWK.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
}

/// A client's public keys, as registered: a JWKS document or a single JWK, each key public,
/// of a type Portcullis verifies, with an `alg` (if any) it can verify with, and with
/// distinct `kid`s. Returns the normalised JWKS text that is stored.
pub fn client_jwks(v: &serde_json::Value) -> Result<String, AdminError> {
    let invalid = |m: &str| AdminError::Invalid(format!("`jwks`: {m}"));
    let keys = match v.get("keys") {
        Some(keys) => keys.clone(),
        None if v.get("kty").is_some() => serde_json::Value::Array(vec![v.clone()]),
        None => return Err(invalid("must be a JWKS ({\"keys\": [...]}) or a JWK")),
    };
    let keys: Vec<Jwk> =
        serde_json::from_value(keys).map_err(|_| invalid("every key must be a JWK"))?;
    if keys.is_empty() || keys.len() > MAX_CLIENT_KEYS {
        return Err(invalid("must hold 1 to 10 keys"));
    }
    for (i, k) in keys.iter().enumerate() {
        if k.d.is_some() {
            return Err(invalid("holds a private key; register only the public key"));
        }
        let public = k
            .public_key()
            .map_err(|_| invalid("keys must be EC P-256, RSA (2048 bits or more) or Ed25519"))?;
        if let Some(alg) = &k.alg {
            let ok = Algorithm::from_name(alg)
                .is_some_and(|a| ASSERTION_ALGORITHMS.contains(&a) && public.suits(a));
            if !ok {
                return Err(invalid(
                    "a key's `alg` must be ES256, EdDSA, RS256 or PS256 and suit the key",
                ));
            }
        }
        if k.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err(invalid("keys must be signing keys (`use` \"sig\")"));
        }
        if k.kid.is_some() && keys[..i].iter().any(|o| o.kid == k.kid) {
            return Err(invalid("two keys have the same `kid`"));
        }
    }
    Ok(json!({ "keys": keys }).to_string())
}
/// Settings of the authorization server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The `iss` of every token, and the default audience.
    pub issuer: String,
    /// Access-token lifetime unless the client sets one.
    pub access_token_lifetime: Duration,
}

/// The registered clients with a bounded cache of `find_client` in front (the token and
/// introspection endpoints read a client per request). Changes made through it —
/// `ClientAdmin` uses the same one — drop the entry at once; a change made elsewhere (another
/// instance) is seen after at most the TTL, as is a change racing a read.
pub struct CachedClients {
    inner: Arc<dyn OAuthClients>,
    clock: Arc<dyn Clock>,
    ttl_ms: i64,
    cache: quick_cache::sync::Cache<String, (ClientRecord, Timestamp)>,
}

impl CachedClients {
    /// `inner`, with up to `capacity` clients remembered for `ttl` each.
    pub fn new(
        inner: Arc<dyn OAuthClients>,
        clock: Arc<dyn Clock>,
        capacity: usize,
        ttl: Duration,
    ) -> Self {
        Self {
            inner,
            clock,
            ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }
}

#[async_trait::async_trait]
impl OAuthClients for CachedClients {
    async fn insert_client(&self, client: &ClientRecord) -> Result<(), StoreError> {
        self.inner.insert_client(client).await
    }

    async fn find_client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let now = self.clock.now();
        if let Some((c, until)) = self.cache.get(id) {
            if now < until {
                return Ok(Some(c));
            }
        }
        let found = self.inner.find_client(id).await?;
        // Unknown ids are not remembered: a client created a moment later must work.
        if let Some(c) = &found {
            self.cache
                .insert(id.to_owned(), (c.clone(), now.plus_millis(self.ttl_ms)));
        }
        Ok(found)
    }

    async fn list_clients(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ClientRecord>, StoreError> {
        self.inner.list_clients(after, limit).await
    }

    async fn set_client_secret(
        &self,
        id: &str,
        hash: &Sha256Digest,
        at: Timestamp,
    ) -> Result<ClientRecord, StoreError> {
        let r = self.inner.set_client_secret(id, hash, at).await;
        self.cache.remove(id);
        r
    }

    async fn set_client_jwks(&self, id: &str, jwks: &str) -> Result<ClientRecord, StoreError> {
        let r = self.inner.set_client_jwks(id, jwks).await;
        self.cache.remove(id);
        r
    }

    async fn delete_client(&self, id: &str) -> Result<(), StoreError> {
        let r = self.inner.delete_client(id).await;
        self.cache.remove(id);
        r
    }
}

/// Client registration: create, list, show, rotate the secret, delete — each durable and
/// audited; a secret is returned once, from `create` and `rotate_secret`.
pub struct ClientAdmin {
    store: Arc<dyn OAuthClients>,
    auditor: Auditor,
    clock: Arc<dyn Clock>,
}

fn new_secret() -> (Secret, Sha256Digest) {
    let secret = format!("pcs_{}", bs58::encode(random_bytes::<32>()).into_string());
    let hash = crypto::sha256(secret.as_bytes());
    (Secret::new(secret), hash)
}

impl ClientAdmin {
    /// Admin over `store`.
    pub fn new(store: Arc<dyn OAuthClients>, auditor: Auditor, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            auditor,
            clock,
        }
    }

    fn ensure_auditable(&self) -> Result<(), AdminError> {
        crate::admin::ensure_auditable(&self.auditor)
    }

    async fn audit(&self, actor: Actor, kind: &'static str, c: &ClientRecord, now: Timestamp) {
        let e = with_ip(AuditEvent::new(now, kind, "ok").actor(actor.name), actor)
            .credential(c.id.as_str().into())
            .detail(json!({ "name": c.name, "grant_types": c.grant_types, "scopes": c.scopes }));
        self.auditor.emit_durable(e).await;
    }

    /// Registers a client; a confidential one gets a secret of 256 random bits, returned
    /// here only (stored as its SHA-256).
    pub async fn create(
        &self,
        actor: Actor,
        req: NewClient,
    ) -> Result<(ClientRecord, Option<Secret>), AdminError> {
        self.ensure_auditable()?;
        let invalid = |m: &str| AdminError::Invalid(m.to_owned());
        let name = req.name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(invalid("`name` must be 1-200 characters"));
        }
        let grant_types = req
            .grant_types
            .unwrap_or_else(|| vec!["client_credentials".to_owned()]);
        if grant_types.is_empty()
            || grant_types
                .iter()
                .any(|g| !GRANT_TYPES.contains(&g.as_str()))
        {
            return Err(AdminError::Invalid(format!(
                "`grant_types` must be some of: {}",
                GRANT_TYPES.join(", ")
            )));
        }
        let scopes =
            ScopeSet::parse(&req.scopes).map_err(|e| AdminError::Invalid(e.to_string()))?;
        let method = req
            .token_endpoint_auth_method
            .unwrap_or_else(|| "client_secret_basic".to_owned());
        if !AUTH_METHODS.contains(&method.as_str()) {
            return Err(AdminError::Invalid(format!(
                "`token_endpoint_auth_method` must be one of: {}",
                AUTH_METHODS.join(", ")
            )));
        }
        let confidential = method != "none";
        let jwks = match (&req.jwks, method.as_str()) {
            (Some(v), "private_key_jwt") => Some(client_jwks(v)?),
            (None, "private_key_jwt") => {
                return Err(invalid(
                    "a private_key_jwt client needs `jwks`, its public keys",
                ))
            }
            (Some(_), _) => {
                return Err(invalid(
                    "`jwks` is for clients with token_endpoint_auth_method private_key_jwt",
                ))
            }
            (None, _) => None,
        };
        if [&req.scopes, &req.audiences, &req.redirect_uris]
            .iter()
            .any(|l| l.len() > MAX_CLIENT_LIST)
        {
            return Err(invalid(
                "scopes, audiences and redirect URIs are at most 100 each",
            ));
        }
        if !confidential && grant_types.iter().any(|g| g == "client_credentials") {
            return Err(invalid(
                "a public client (token_endpoint_auth_method none) cannot use client_credentials",
            ));
        }
        for uri in req.audiences.iter().chain(&req.redirect_uris) {
            if uri.is_empty() || uri.len() > 2000 || uri.contains(char::is_whitespace) {
                return Err(invalid("audiences and redirect URIs must be URIs"));
            }
        }
        if req
            .token_lifetime_seconds
            .is_some_and(|l| l == 0 || l > MAX_TOKEN_LIFETIME.as_secs())
        {
            return Err(invalid("`token_lifetime_seconds` must be 1-86400"));
        }
        let now = self.clock.now();
        let (secret, hash) = if confidential && jwks.is_none() {
            let (s, h) = new_secret();
            (Some(s), Some(h))
        } else {
            (None, None)
        };
        let record = ClientRecord {
            id: format!("cl_{}", bs58::encode(random_bytes::<16>()).into_string()),
            name: name.to_owned(),
            confidential,
            grant_types,
            scopes: scopes.iter().map(str::to_owned).collect(),
            audiences: req.audiences,
            redirect_uris: req.redirect_uris,
            auth_method: method,
            token_lifetime_secs: req.token_lifetime_seconds,
            secret_hash: hash,
            created_at: now,
            secret_set_at: hash.map(|_| now),
            jwks,
        };
        self.store.insert_client(&record).await?;
        self.audit(actor, "oauth_client.created", &record, now)
            .await;
        Ok((record, secret))
    }

    /// Clients ordered by id.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<ClientRecord>, AdminError> {
        Ok(self.store.list_clients(after, limit.clamp(1, 1000)).await?)
    }

    /// One client.
    pub async fn show(&self, id: &str) -> Result<ClientRecord, AdminError> {
        self.store
            .find_client(id)
            .await?
            .ok_or(AdminError::NotFound)
    }

    /// A new secret; the old one stops working at once.
    pub async fn rotate_secret(
        &self,
        actor: Actor,
        id: &str,
    ) -> Result<(ClientRecord, Secret), AdminError> {
        self.ensure_auditable()?;
        let c = self.show(id).await?;
        if c.secret_hash.is_none() {
            return Err(AdminError::Conflict(
                "this client has no secret (it is public, or authenticates with its key)".into(),
            ));
        }
        let now = self.clock.now();
        let (secret, hash) = new_secret();
        let c = self.store.set_client_secret(id, &hash, now).await?;
        self.audit(actor, "oauth_client.secret_rotated", &c, now)
            .await;
        Ok((c, secret))
    }

    /// Replaces the public keys of a `private_key_jwt` client (a JWKS or one JWK): assertions
    /// signed by a key no longer listed stop working at once.
    pub async fn set_jwks(
        &self,
        actor: Actor,
        id: &str,
        jwks: &serde_json::Value,
    ) -> Result<ClientRecord, AdminError> {
        self.ensure_auditable()?;
        let c = self.show(id).await?;
        if c.auth_method != "private_key_jwt" {
            return Err(AdminError::Conflict(
                "only a private_key_jwt client has registered keys".into(),
            ));
        }
        let text = client_jwks(jwks)?;
        let c = self.store.set_client_jwks(id, &text).await?;
        self.audit(actor, "oauth_client.keys_set", &c, self.clock.now())
            .await;
        Ok(c)
    }

    /// Deletes a client: its secret stops working at once (tokens already issued live out
    /// their short lifetime).
    pub async fn delete(&self, actor: Actor, id: &str) -> Result<(), AdminError> {
        self.ensure_auditable()?;
        let c = self.show(id).await?;
        self.store.delete_client(id).await?;
        self.audit(actor, "oauth_client.deleted", &c, self.clock.now())
            .await;
        Ok(())
    }
}

/// A token endpoint success (RFC 6749 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The JWT.
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
    /// The scopes granted, space-separated.
    pub scope: String,
    /// The token's `jti`.
    pub jti: String,
    /// The client it was issued to.
    pub client_id: String,
    /// The thumbprint of the DPoP key the token is bound to (`cnf.jkt`), if it is.
    pub dpop_jkt: Option<String>,
}

impl IssuedToken {
    /// The `token_type` of the answer: `DPoP` for a bound token (RFC 9449 §5.1).
    pub fn token_type(&self) -> &'static str {
        if self.dpop_jkt.is_some() {
            "DPoP"
        } else {
            "Bearer"
        }
    }
}

/// Access tokens revoked before their expiry: durable in the store, and in memory for the
/// gateway's check of every request (a map lookup by `jti`).
pub struct Revocations {
    store: Arc<dyn RevokedTokens>,
    set: RwLock<HashMap<String, Timestamp>>,
}

impl Revocations {
    /// The revocations stored, loaded.
    pub async fn load(store: Arc<dyn RevokedTokens>, now: Timestamp) -> Result<Self, StoreError> {
        let set = store.revoked_tokens(now).await?.into_iter().collect();
        Ok(Self {
            store,
            set: RwLock::new(set),
        })
    }

    /// Whether the token `jti` was revoked.
    pub fn is_revoked(&self, jti: &str) -> bool {
        self.set
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(jti)
    }

    /// Revokes `jti` (valid until `expires_at`): stored durably first, then in force.
    pub async fn revoke(&self, jti: &str, expires_at: Timestamp) -> Result<(), StoreError> {
        self.store.revoke_token(jti, expires_at).await?;
        self.set
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(jti.to_owned(), expires_at);
        Ok(())
    }

    /// Forgets revocations of tokens that have expired anyway.
    pub async fn purge(&self, now: Timestamp) -> Result<(), StoreError> {
        self.store.delete_expired_revocations(now).await?;
        self.set
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, e| *e > now);
        Ok(())
    }
}

/// Verifies a token Portcullis issued: the key only by `kid` among the published ones, that
/// key's own algorithm only, `typ` `at+jwt`, `iss`, `exp`/`nbf`/`iat` with `leeway_secs`, and
/// `aud` among `audiences` (empty: any). Revocation is the caller's to check.
pub fn verify_own_token<'j>(
    ring: &KeyRing,
    issuer: &str,
    audiences: &[String],
    leeway_secs: i64,
    jws: &'j Jws<'_>,
    now: Timestamp,
) -> Result<(jwt::Claims<'j>, portcullis_core::Verified<jwt::Jwt>), JwtError> {
    let bad = JwtError::Jose(portcullis_core::jose::JoseError::BadSignature);
    let kid = jws.header().kid.as_deref().ok_or(bad)?;
    let keys = ring.keys();
    let key = keys
        .iter()
        .find(|k| k.record.kid == kid && k.published_at(now))
        .ok_or(bad)?;
    let algorithms = [key.algorithm()];
    let expect = Expectations {
        algorithms: &algorithms,
        issuer,
        audiences,
        typ: Some("at+jwt"),
        leeway_secs,
    };
    jwt::verify(jws, key.public_key(), &expect, now)
}

/// An introspection answer (RFC 7662 §2.2): `{"active": false}` and nothing more, or
/// `active`, the token's claims and its `token_type`.
#[derive(Debug, Clone)]
pub struct Introspection {
    claims: Option<Arc<jwt::Claims<'static>>>,
}

impl Introspection {
    /// Whether the token is active.
    pub fn active(&self) -> bool {
        self.claims.is_some()
    }

    /// The active token's `jti`.
    pub fn jti(&self) -> Option<&str> {
        self.claims.as_ref().and_then(|c| c.jti.as_deref())
    }

    /// The answer's JSON.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Active<'c> {
            active: bool,
            #[serde(flatten)]
            claims: &'c jwt::Claims<'static>,
            token_type: &'static str,
        }
        let Some(c) = &self.claims else {
            return br#"{"active":false}"#.to_vec();
        };
        // RFC 9449 §6.2: a bound token's type is DPoP (its cnf is among the claims).
        let bound = c.cnf.as_ref().is_some_and(|c| c.jkt.is_some());
        let answer = Active {
            active: true,
            claims: c,
            token_type: if bound { "DPoP" } else { "Bearer" },
        };
        // Claims are strings and integers: nothing here can fail to serialise.
        serde_json::to_vec(&answer).unwrap_or_else(|_| br#"{"active":false}"#.to_vec())
    }

    /// The same, as a JSON value (for tests).
    #[cfg(test)]
    pub(crate) fn to_value(&self) -> serde_json::Value {
        serde_json::from_slice(&self.to_json()).unwrap_or_default()
    }
}

/// The token endpoint, and the introspection and revocation endpoints beside it.
pub struct TokenIssuer {
    clients: Arc<dyn OAuthClients>,
    nonces: Arc<dyn Nonces>,
    ring: Arc<KeyRing>,
    config: IssuerConfig,
    revocations: Arc<Revocations>,
    dpop: Arc<DpopChecker>,
    /// Tokens introspected or revoked before, verified: by their SHA-256, until `exp`.
    verified: quick_cache::sync::Cache<[u8; 32], Arc<jwt::Claims<'static>>>,
}

impl TokenIssuer {
    /// An issuer over the registered clients, the store of used assertion `jti`s, the key
    /// ring, the revocations and the DPoP proof checker.
    pub fn new(
        clients: Arc<dyn OAuthClients>,
        nonces: Arc<dyn Nonces>,
        ring: Arc<KeyRing>,
        config: IssuerConfig,
        revocations: Arc<Revocations>,
        dpop: Arc<DpopChecker>,
    ) -> Self {
        Self {
            clients,
            nonces,
            ring,
            config,
            revocations,
            dpop,
            verified: quick_cache::sync::Cache::new(100_000),
        }
    }

    /// The token named by the form's `token`, if it is one of ours, valid at `now` (any
    /// audience) and not revoked.
    fn active(
        &self,
        form: &Form,
        now: Timestamp,
    ) -> Result<Option<Arc<jwt::Claims<'static>>>, OAuthError> {
        let token = form
            .get("token")
            .ok_or(OAuthError::InvalidRequest("token is missing."))?;
        let digest = crypto::sha256(token.as_bytes());
        let claims = match self.verified.get(&digest) {
            Some(c) if c.exp.is_some_and(|e| now.as_secs() < e) => Some(c),
            _ => Jws::parse(token, portcullis_core::jose::MAX_TOKEN_LEN)
                .ok()
                .and_then(|jws| {
                    verify_own_token(&self.ring, &self.config.issuer, &[], 0, &jws, now)
                        .ok()
                        .map(|(c, _)| c.into_owned())
                })
                .map(|c| {
                    let c = Arc::new(c);
                    self.verified.insert(digest, c.clone());
                    c
                }),
        };
        // Checked every time, cached or not.
        Ok(claims.filter(|c| {
            c.jti
                .as_deref()
                .is_some_and(|j| !self.revocations.is_revoked(j))
        }))
    }

    /// `POST /oauth2/introspect` (RFC 7662): for an authenticated client, whether `token` is
    /// active, and if so its claims. Anything else — not ours, expired, revoked, malformed —
    /// is `{"active": false}` and nothing more.
    pub async fn introspect(
        &self,
        authorization: Option<&str>,
        form: &Form,
        now: Timestamp,
    ) -> Result<(String, Introspection), OAuthError> {
        let caller = self
            .authenticate(&ClientCredentials::from_request(authorization, form)?, now)
            .await?;
        // A public client proves nothing by naming itself: it may not read others' tokens.
        if !caller.confidential {
            return Err(OAuthError::InvalidClient);
        }
        Ok((
            caller.id,
            Introspection {
                claims: self.active(form, now)?,
            },
        ))
    }

    /// `POST /oauth2/revoke` (RFC 7009): the authenticated client revokes a token issued to
    /// it; the gateway refuses it from the next request. A token that is not ours, or no
    /// longer valid, is answered like a revoked one (§2.2). Returns the revoked `jti`.
    pub async fn revoke(
        &self,
        authorization: Option<&str>,
        form: &Form,
        now: Timestamp,
    ) -> Result<(String, Option<String>), OAuthError> {
        let caller = self
            .authenticate(&ClientCredentials::from_request(authorization, form)?, now)
            .await?;
        let Some(c) = self.active(form, now)? else {
            return Ok((caller.id, None));
        };
        if c.client_id.as_deref() != Some(caller.id.as_str()) {
            return Err(OAuthError::UnauthorizedClient);
        }
        let (Some(jti), Some(exp)) = (c.jti.as_deref().map(str::to_owned), c.exp) else {
            return Ok((caller.id, None));
        };
        self.revocations
            .revoke(&jti, Timestamp::from_secs(exp))
            .await
            .map_err(unavailable)?;
        Ok((caller.id, Some(jti)))
    }

    /// The issuer's settings.
    pub fn config(&self) -> &IssuerConfig {
        &self.config
    }

    /// The DPoP nonce to hand out at `now` (`DPoP-Nonce`), when nonces are required.
    pub fn dpop_nonce(&self, now: Timestamp) -> Option<String> {
        self.dpop.fresh_nonce(now)
    }

    /// Answers one token request: the `Authorization` header, the `DPoP` proof if one was
    /// sent (`Err`: several, or unreadable), the form, at `now`. With a proof the token is
    /// bound to its key (RFC 9449 §5, §6).
    pub async fn token(
        &self,
        authorization: Option<&str>,
        dpop: Result<Option<&str>, DpopRefusal>,
        form: &Form,
        now: Timestamp,
    ) -> Result<IssuedToken, OAuthError> {
        let grant = form
            .get("grant_type")
            .ok_or(OAuthError::InvalidRequest("grant_type is missing."))?;
        let creds = ClientCredentials::from_request(authorization, form)?;
        let client = self.authenticate(&creds, now).await?;
        if grant != "client_credentials" {
            return Err(OAuthError::UnsupportedGrantType);
        }
        if !client.grant_types.iter().any(|g| g == grant) {
            return Err(OAuthError::UnauthorizedClient);
        }
        let allowed = ScopeSet::parse(&client.scopes).map_err(|_| OAuthError::InvalidScope)?;
        let scopes = grant_scopes(form.get("scope"), &allowed)?;
        let audiences: Vec<&str> = if form.resources().is_empty() {
            match client.audiences.first() {
                Some(a) => vec![a.as_str()],
                None => vec![self.config.issuer.as_str()],
            }
        } else {
            for r in form.resources() {
                if !client.audiences.iter().any(|a| a == r) {
                    return Err(OAuthError::InvalidTarget);
                }
            }
            form.resources().iter().map(String::as_str).collect()
        };
        // Never longer than a retired key stays published (its tokens must verify to the end).
        let lifetime = client
            .token_lifetime_secs
            .unwrap_or(self.config.access_token_lifetime.as_secs())
            .min(self.ring.config().max_token_lifetime.as_secs())
            .max(1);
        let signer = self
            .ring
            .signer(now)
            .ok_or(OAuthError::TemporarilyUnavailable)?;
        // Last before signing: a proof's jti is spent only on a request that gets a token.
        let jkt = match dpop {
            Ok(None) => None,
            Ok(Some(proof)) => Some(self.check_dpop(&client, proof, now).await?),
            Err(e) => {
                tracing::debug!(client_id = %client.id, reason = %e, "DPoP proof refused");
                return Err(OAuthError::InvalidDpopProof);
            }
        };
        let jti = bs58::encode(random_bytes::<16>()).into_string();
        let iat = now.as_secs();
        let aud = if audiences.len() == 1 {
            json!(audiences[0])
        } else {
            json!(audiences)
        };
        let mut claims = json!({
            "iss": self.config.issuer,
            "sub": client.id,
            "aud": aud,
            "exp": iat.saturating_add(i64::try_from(lifetime).unwrap_or(i64::MAX)),
            "iat": iat,
            "nbf": iat,
            "jti": jti,
            "client_id": client.id,
            "scope": scopes.as_space_separated(),
        });
        if let Some(jkt) = &jkt {
            claims["cnf"] = json!({ "jkt": jkt });
        }
        let access_token = signer
            .sign(Some("at+jwt"), claims.to_string().as_bytes())
            .map_err(|_| OAuthError::TemporarilyUnavailable)?;
        Ok(IssuedToken {
            access_token,
            expires_in: lifetime,
            scope: scopes.to_space_separated(),
            jti,
            client_id: client.id,
            dpop_jkt: jkt,
        })
    }

    /// The token endpoint's check of a DPoP proof (RFC 9449 §5): for `POST` to this token
    /// endpoint, never seen before; the key's thumbprint.
    async fn check_dpop(
        &self,
        client: &ClientRecord,
        proof: &str,
        now: Timestamp,
    ) -> Result<String, OAuthError> {
        let htu = format!("{}/oauth2/token", self.config.issuer);
        let req = ProofRequest {
            proof,
            method: "POST",
            htu: &htu,
            access_token: None,
        };
        match self.dpop.check(&req, now).await {
            Ok(p) => Ok(p.jkt),
            Err(DpopRefusal::Unavailable) => Err(OAuthError::TemporarilyUnavailable),
            Err(DpopRefusal::Proof(portcullis_core::dpop::DpopError::NonceRequired)) => {
                Err(OAuthError::UseDpopNonce)
            }
            Err(e) => {
                tracing::debug!(client_id = %client.id, reason = %e, "DPoP proof refused");
                Err(OAuthError::InvalidDpopProof)
            }
        }
    }

    /// The client, if the credentials prove it: a registered client, authenticating the way
    /// it was registered to, with its secret (compared in constant time, as digests) or an
    /// assertion signed by one of its keys.
    async fn authenticate(
        &self,
        creds: &ClientCredentials,
        now: Timestamp,
    ) -> Result<ClientRecord, OAuthError> {
        let client = self
            .clients
            .find_client(creds.client_id())
            .await
            .map_err(unavailable)?;
        if let ClientCredentials::Assertion { assertion, .. } = creds {
            let client = client.ok_or(OAuthError::InvalidClient)?;
            if client.auth_method != creds.method() {
                return Err(OAuthError::InvalidClient);
            }
            self.check_assertion(&client, assertion, now).await?;
            return Ok(client);
        }
        // The digest is computed whether or not the client exists, so that an unknown id and a
        // wrong secret take the same path.
        let presented = match creds {
            ClientCredentials::Basic { secret, .. } | ClientCredentials::Post { secret, .. } => {
                Some(crypto::sha256(secret.as_bytes()))
            }
            ClientCredentials::None { .. } | ClientCredentials::Assertion { .. } => None,
        };
        let client = client.ok_or(OAuthError::InvalidClient)?;
        if client.auth_method != creds.method() {
            return Err(OAuthError::InvalidClient);
        }
        match (presented, client.secret_hash) {
            (Some(p), Some(stored)) if ct_eq(&p, &stored) => Ok(client),
            (None, None) if !client.confidential => Ok(client),
            _ => Err(OAuthError::InvalidClient),
        }
    }
}

impl TokenIssuer {
    /// A `private_key_jwt` assertion (RFC 7523 §3): signed by one of the client's keys (by
    /// `kid` when the header names one) with an algorithm that key is for; `iss` and `sub`
    /// the client; `aud` this issuer or its token endpoint; `exp` in at most
    /// [`MAX_ASSERTION_LIFETIME_SECS`]; a `jti` not seen before — remembered durably until
    /// the assertion expires, so no replay survives a restart either.
    async fn check_assertion(
        &self,
        client: &ClientRecord,
        assertion: &str,
        now: Timestamp,
    ) -> Result<(), OAuthError> {
        let refuse = |why: &'static str| {
            tracing::debug!(client_id = %client.id, why, "client assertion refused");
            OAuthError::InvalidClient
        };
        let keys: Vec<Jwk> = client
            .jwks
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|v| serde_json::from_value(v["keys"].clone()).ok())
            .ok_or_else(|| refuse("no registered keys"))?;
        let jws = Jws::parse(assertion, portcullis_core::jose::MAX_TOKEN_LEN)
            .map_err(|_| refuse("malformed"))?;
        let kid = jws.header().kid.as_deref();
        let audiences = [
            self.config.issuer.clone(),
            format!("{}/oauth2/token", self.config.issuer),
        ];
        let mut verified = None;
        for key in keys
            .iter()
            // A header `kid` picks its key; a key registered without one may still be it (the
            // signing library may have added a kid of its own).
            .filter(|k| kid.is_none() || k.kid.is_none() || k.kid.as_deref() == kid)
        {
            let Ok(public) = key.public_key() else {
                continue;
            };
            let algorithms: Vec<Algorithm> = match key.alg.as_deref() {
                Some(a) => Algorithm::from_name(a).into_iter().collect(),
                None => ASSERTION_ALGORITHMS.to_vec(),
            };
            let expect = Expectations {
                algorithms: &algorithms,
                issuer: &client.id,
                audiences: &audiences,
                typ: None,
                leeway_secs: ASSERTION_LEEWAY_SECS,
            };
            match jwt::verify(&jws, &public, &expect, now) {
                Ok((claims, _)) => {
                    verified = Some(claims);
                    break;
                }
                // A key of another type, or one the signature is not by: try the next.
                Err(JwtError::Jose(_)) => continue,
                Err(e) => {
                    tracing::debug!(client_id = %client.id, error = %e, "client assertion refused");
                    return Err(OAuthError::InvalidClient);
                }
            }
        }
        let claims = verified.ok_or_else(|| refuse("no registered key verifies it"))?;
        if claims.sub.as_deref() != Some(client.id.as_str()) {
            return Err(refuse("sub is not the client"));
        }
        let exp = claims.exp.ok_or_else(|| refuse("no exp"))?;
        if exp
            > now
                .as_secs()
                .saturating_add(MAX_ASSERTION_LIFETIME_SECS + ASSERTION_LEEWAY_SECS)
        {
            return Err(refuse("valid for too long"));
        }
        let jti = claims
            .jti
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| refuse("no jti"))?;
        let key = format!("pkjwt:{}:{jti}", client.id);
        let until = Timestamp::from_secs(exp.saturating_add(ASSERTION_LEEWAY_SECS));
        if !self
            .nonces
            .claim_nonce(&key, until, now)
            .await
            .map_err(unavailable)?
        {
            return Err(refuse("jti already used"));
        }
        Ok(())
    }
}

fn unavailable(e: StoreError) -> OAuthError {
    tracing::warn!(error = %e, "token endpoint: store unavailable");
    OAuthError::TemporarilyUnavailable
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::signing::RingConfig;
    use portcullis_core::crypto::seal::SealKey;
    use portcullis_core::crypto::sign::SigningKey;
    use portcullis_core::jose::{Jwk, Jws, MAX_TOKEN_LEN};
    use portcullis_core::jwt::{self, Expectations};
    use portcullis_store::memory::MemoryStore;

    const ISS: &str = "http://127.0.0.1:8080";

    async fn setup() -> (ClientAdmin, TokenIssuer, Arc<KeyRing>) {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_800_000_000)));
        let (auditor, writer) = crate::audit::channel(store.clone(), None, 1024)
            .await
            .unwrap();
        tokio::spawn(writer.run());
        let ring = Arc::new(
            KeyRing::open(
                store.clone(),
                SealKey::new(&[1; 32]),
                RingConfig::default(),
                clock.now(),
            )
            .await
            .unwrap(),
        );
        let admin = ClientAdmin::new(store.clone(), auditor, clock);
        let revocations = Arc::new(
            Revocations::load(store.clone(), Timestamp::EPOCH)
                .await
                .unwrap(),
        );
        let issuer = TokenIssuer::new(
            store.clone(),
            store.clone(),
            ring.clone(),
            IssuerConfig {
                issuer: ISS.into(),
                access_token_lifetime: Duration::from_secs(900),
            },
            revocations,
            Arc::new(DpopChecker::new(store, 60)),
        );
        (admin, issuer, ring)
    }

    const ACTOR: Actor = Actor {
        name: "admin-token",
        ip: None,
    };

    fn basic(id: &str, secret: &str) -> String {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
        )
    }

    /// A client asking for nothing but a name and scopes (the defaults for the rest).
    fn new_client(name: &str, scopes: Vec<String>) -> NewClient {
        NewClient {
            name: name.into(),
            grant_types: None,
            scopes,
            audiences: vec![],
            redirect_uris: vec![],
            token_endpoint_auth_method: None,
            token_lifetime_seconds: None,
            jwks: None,
        }
    }

    fn form(s: &str) -> Form {
        Form::parse(s.as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn client_credentials_issues_an_rfc9068_token_our_jwks_verifies() {
        let (admin, issuer, ring) = setup().await;
        let (c, secret) = admin
            .create(
                ACTOR,
                new_client("svc", vec!["read:echo".into(), "write:echo".into()]),
            )
            .await
            .unwrap();
        let secret = secret.unwrap();
        assert!(secret.expose().starts_with("pcs_"));
        assert_eq!(
            c.secret_hash,
            Some(crypto::sha256(secret.expose().as_bytes()))
        );
        let now = Timestamp::from_secs(1_800_000_000);
        let t = issuer
            .token(
                Some(&basic(&c.id, secret.expose())),
                Ok(None),
                &form("grant_type=client_credentials&scope=read%3Aecho"),
                now,
            )
            .await
            .unwrap();
        assert_eq!((t.expires_in, t.scope.as_str()), (900, "read:echo"));

        let jws = Jws::parse(&t.access_token, MAX_TOKEN_LEN).unwrap();
        assert_eq!(jws.header().typ.as_deref(), Some("at+jwt"));
        let jwks = ring.jwks(now);
        let jwk: Jwk = serde_json::from_value(jwks["keys"][0].clone()).unwrap();
        assert_eq!(jws.header().kid, jwk.kid);
        let aud = vec![ISS.to_owned()];
        let (claims, _) = jwt::verify(
            &jws,
            &jwk.public_key().unwrap(),
            &Expectations {
                algorithms: &[portcullis_core::jose::Algorithm::Es256],
                issuer: ISS,
                audiences: &aud,
                typ: Some("at+jwt"),
                leeway_secs: 0,
            },
            now,
        )
        .unwrap();
        assert_eq!(claims.sub.as_deref(), Some(c.id.as_str()));
        assert_eq!(claims.client_id.as_deref(), Some(c.id.as_str()));
        assert_eq!(claims.exp, Some(now.as_secs() + 900));
        assert_eq!(claims.jti.as_deref(), Some(t.jti.as_str()));

        // No scope asked: every allowed scope.
        let all = issuer
            .token(
                None,
                Ok(None),
                &form(&format!(
                    "grant_type=client_credentials&client_id={}&client_secret={}",
                    c.id,
                    secret.expose()
                )),
                now,
            )
            .await;
        assert_eq!(
            all.unwrap_err(),
            OAuthError::InvalidClient,
            "registered for basic, not post"
        );
        let all = issuer
            .token(
                Some(&basic(&c.id, secret.expose())),
                Ok(None),
                &form("grant_type=client_credentials"),
                now,
            )
            .await
            .unwrap();
        assert_eq!(all.scope, "read:echo write:echo");
    }

    /// A client assertion (RFC 7523 §3) by `key`, with `claims` merged over valid ones.
    fn assertion(key: &SigningKey, kid: &str, client: &str, claims: serde_json::Value) -> String {
        let mut c = json!({
            "iss": client, "sub": client, "aud": format!("{ISS}/oauth2/token"),
            "exp": NOW + 300, "iat": NOW, "jti": bs58::encode(random_bytes::<12>()).into_string(),
        });
        for (k, v) in claims.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        portcullis_core::jose::sign_compact(key, kid, None, c.to_string().as_bytes()).unwrap()
    }

    const NOW: i64 = 1_800_000_000;

    fn pkjwt_form(a: &str) -> Form {
        form(&format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion={a}",
            portcullis_core::oauth2::JWT_BEARER_ASSERTION
        ))
    }

    #[tokio::test]
    async fn private_key_jwt_clients_authenticate_with_single_use_assertions() {
        let (admin, issuer, _) = setup().await;
        let now = Timestamp::from_secs(NOW);
        let es = SigningKey::generate(Algorithm::Es256).unwrap();
        let ed = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let es_jwk = Jwk::from_public(&es.public_key(), Algorithm::Es256).unwrap();
        // The Ed25519 key is registered without `kid` or `alg`: found by trying the keys.
        let mut ed_jwk = Jwk::from_public(&ed.public_key(), Algorithm::EdDsa).unwrap();
        ed_jwk.kid = None;
        ed_jwk.alg = None;
        let new = |jwks: Option<serde_json::Value>| NewClient {
            name: "signer".into(),
            grant_types: None,
            scopes: vec!["read:echo".into()],
            audiences: vec![],
            redirect_uris: vec![],
            token_endpoint_auth_method: Some("private_key_jwt".into()),
            token_lifetime_seconds: None,
            jwks,
        };
        let (c, secret) = admin
            .create(ACTOR, new(Some(json!({ "keys": [es_jwk, ed_jwk] }))))
            .await
            .unwrap();
        assert!(
            secret.is_none(),
            "a key-authenticated client gets no secret"
        );
        assert!(c.confidential);
        let es_kid = es_jwk.kid.clone().unwrap();

        let a = assertion(&es, &es_kid, &c.id, json!({}));
        let t = issuer
            .token(None, Ok(None), &pkjwt_form(&a), now)
            .await
            .unwrap();
        assert_eq!(t.client_id, c.id);
        assert_eq!(
            issuer
                .token(None, Ok(None), &pkjwt_form(&a), now)
                .await
                .unwrap_err(),
            OAuthError::InvalidClient,
            "an assertion's jti is single use"
        );
        let by_ed = assertion(&ed, "", &c.id, json!({ "aud": ISS }));
        let by_ed = {
            // Without a kid in the header.
            let parts: Vec<&str> = by_ed.split('.').collect();
            let header = portcullis_core::jose::b64_encode(br#"{"alg":"EdDSA"}"#);
            let input = format!("{header}.{}", parts[1]);
            let sig = ed.sign(input.as_bytes()).unwrap();
            format!("{input}.{}", portcullis_core::jose::b64_encode(&sig))
        };
        assert!(
            issuer
                .token(None, Ok(None), &pkjwt_form(&by_ed), now)
                .await
                .is_ok(),
            "the issuer itself is an accepted audience; a key without kid is found"
        );
        // A kid in the header that the kid-less registered key does not carry still finds it.
        let ed_with_kid = assertion(&ed, "libraries-kid", &c.id, json!({}));
        assert!(issuer
            .token(None, Ok(None), &pkjwt_form(&ed_with_kid), now)
            .await
            .is_ok());
        // client_id in the body must be the assertion's client.
        let named = assertion(&es, &es_kid, &c.id, json!({}));
        let body = format!(
            "grant_type=client_credentials&client_id={}&client_assertion_type={}&client_assertion={named}",
            c.id,
            portcullis_core::oauth2::JWT_BEARER_ASSERTION
        );
        assert!(issuer
            .token(None, Ok(None), &form(&body), now)
            .await
            .is_ok());

        let stranger = SigningKey::generate(Algorithm::Es256).unwrap();
        let refused = [
            (
                "signed by a key not registered",
                assertion(&stranger, &es_kid, &c.id, json!({})),
            ),
            (
                "expired",
                assertion(&es, &es_kid, &c.id, json!({ "exp": NOW - 60 })),
            ),
            (
                "valid for too long",
                assertion(&es, &es_kid, &c.id, json!({ "exp": NOW + 7200 })),
            ),
            (
                "no exp",
                assertion(&es, &es_kid, &c.id, json!({ "exp": null })),
            ),
            (
                "no jti",
                assertion(&es, &es_kid, &c.id, json!({ "jti": null })),
            ),
            (
                "wrong aud",
                assertion(&es, &es_kid, &c.id, json!({ "aud": "https://elsewhere" })),
            ),
            (
                "wrong iss",
                assertion(&es, &es_kid, &c.id, json!({ "iss": "cl_other" })),
            ),
            (
                "sub is another client",
                assertion(&es, &es_kid, &c.id, json!({ "sub": "cl_other" })),
            ),
            (
                "issued in the future",
                assertion(&es, &es_kid, &c.id, json!({ "iat": NOW + 600 })),
            ),
            ("unknown kid", assertion(&es, "nope", &c.id, json!({}))),
        ];
        for (why, a) in refused {
            assert_eq!(
                issuer
                    .token(None, Ok(None), &pkjwt_form(&a), now)
                    .await
                    .unwrap_err(),
                OAuthError::InvalidClient,
                "{why}"
            );
        }
        // A secret client cannot use an assertion, nor the key client a secret.
        let (sc, _) = admin
            .create(
                ACTOR,
                NewClient {
                    token_endpoint_auth_method: None,
                    jwks: None,
                    ..new(None)
                },
            )
            .await
            .unwrap();
        let a = assertion(&es, &es_kid, &sc.id, json!({}));
        assert_eq!(
            issuer
                .token(None, Ok(None), &pkjwt_form(&a), now)
                .await
                .unwrap_err(),
            OAuthError::InvalidClient
        );
        assert!(matches!(
            admin.rotate_secret(ACTOR, &c.id).await,
            Err(AdminError::Conflict(_))
        ));
        // Keys replaced: the old key stops working at once.
        let c2 = admin
            .set_jwks(
                ACTOR,
                &c.id,
                &serde_json::to_value(stranger_jwk(&stranger)).unwrap(),
            )
            .await
            .unwrap();
        assert!(c2
            .jwks
            .unwrap()
            .contains(&stranger_jwk(&stranger).x.unwrap()));
        let old = assertion(&es, &es_kid, &c.id, json!({}));
        assert_eq!(
            issuer
                .token(None, Ok(None), &pkjwt_form(&old), now)
                .await
                .unwrap_err(),
            OAuthError::InvalidClient
        );
        let new_kid = stranger_jwk(&stranger).kid.unwrap();
        let fresh = assertion(&stranger, &new_kid, &c.id, json!({}));
        assert!(issuer
            .token(None, Ok(None), &pkjwt_form(&fresh), now)
            .await
            .is_ok());
    }

    fn stranger_jwk(k: &SigningKey) -> Jwk {
        Jwk::from_public(&k.public_key(), k.algorithm()).unwrap()
    }

    #[tokio::test]
    async fn client_keys_are_checked_at_registration() {
        let (admin, _, _) = setup().await;
        let ok = stranger_jwk(&SigningKey::generate(Algorithm::Es256).unwrap());
        let with = |jwks: serde_json::Value| NewClient {
            name: "signer".into(),
            grant_types: None,
            scopes: vec![],
            audiences: vec![],
            redirect_uris: vec![],
            token_endpoint_auth_method: Some("private_key_jwt".into()),
            token_lifetime_seconds: None,
            jwks: Some(jwks),
        };
        let mut private = serde_json::to_value(&ok).unwrap();
        private["d"] = json!("AAAA");
        let mut wrong_alg = ok.clone();
        wrong_alg.alg = Some("RS256".into());
        let mut hs = ok.clone();
        hs.alg = Some("HS256".into());
        let mut enc = ok.clone();
        enc.use_ = Some("enc".into());
        let bad = [
            json!({}),
            json!({ "keys": [] }),
            json!({ "keys": "x" }),
            json!({ "keys": [{ "kty": "oct", "k": "AAAA" }] }),
            json!({ "keys": [private.clone()] }),
            private,
            json!({ "keys": [wrong_alg] }),
            json!({ "keys": [hs] }),
            json!({ "keys": [enc] }),
            json!({ "keys": [ok.clone(), ok.clone()] }),
            json!({ "keys": vec![ok.clone(); 11] }),
        ];
        for b in bad {
            assert!(
                matches!(
                    admin.create(ACTOR, with(b.clone())).await,
                    Err(AdminError::Invalid(_))
                ),
                "{b}"
            );
        }
        // One JWK alone is a JWKS of one.
        let (c, _) = admin
            .create(ACTOR, with(serde_json::to_value(&ok).unwrap()))
            .await
            .unwrap();
        assert!(c.jwks.unwrap().starts_with(r#"{"keys":["#));
        // Keys only for private_key_jwt; private_key_jwt only with keys.
        let mut no_keys = with(json!({}));
        no_keys.jwks = None;
        assert!(matches!(
            admin.create(ACTOR, no_keys).await,
            Err(AdminError::Invalid(_))
        ));
        let mut basic_with_keys = with(serde_json::to_value(&ok).unwrap());
        basic_with_keys.token_endpoint_auth_method = None;
        assert!(matches!(
            admin.create(ACTOR, basic_with_keys).await,
            Err(AdminError::Invalid(_))
        ));
        let mut too_many = with(serde_json::to_value(&ok).unwrap());
        too_many.scopes = (0..101).map(|i| format!("s{i}")).collect();
        assert!(matches!(
            admin.create(ACTOR, too_many).await,
            Err(AdminError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn refusals_carry_the_rfc6749_codes() {
        let (admin, issuer, _) = setup().await;
        let new = |method: &str, grants: Option<Vec<String>>| NewClient {
            name: "svc".into(),
            grant_types: grants,
            scopes: vec!["read:echo".into()],
            audiences: vec!["https://api.example".into()],
            redirect_uris: vec!["https://app.example/cb".into()],
            token_endpoint_auth_method: Some(method.into()),
            token_lifetime_seconds: Some(60),
            jwks: None,
        };
        let (post, secret) = admin
            .create(ACTOR, new("client_secret_post", None))
            .await
            .unwrap();
        let secret = secret.unwrap();
        let (code_only, code_secret) = admin
            .create(
                ACTOR,
                new(
                    "client_secret_basic",
                    Some(vec!["authorization_code".into()]),
                ),
            )
            .await
            .unwrap();
        let now = Timestamp::from_secs(1_800_000_000);
        let ok = format!("client_id={}&client_secret={}", post.id, secret.expose());
        let t = issuer
            .token(
                None,
                Ok(None),
                &form(&format!(
                    "grant_type=client_credentials&{ok}&resource=https%3A%2F%2Fapi.example"
                )),
                now,
            )
            .await
            .unwrap();
        assert_eq!(t.expires_in, 60);
        let cases = [
            (
                None,
                ok.clone(),
                OAuthError::InvalidRequest("grant_type is missing."),
            ),
            (
                None,
                format!("grant_type=password&{ok}"),
                OAuthError::UnsupportedGrantType,
            ),
            (
                None,
                format!("grant_type=client_credentials&{ok}&scope=admin"),
                OAuthError::InvalidScope,
            ),
            (
                None,
                format!("grant_type=client_credentials&{ok}&resource=https%3A%2F%2Fother"),
                OAuthError::InvalidTarget,
            ),
            (
                None,
                format!(
                    "grant_type=client_credentials&client_id={}&client_secret=wrong",
                    post.id
                ),
                OAuthError::InvalidClient,
            ),
            (
                None,
                "grant_type=client_credentials&client_id=cl_nobody&client_secret=x".into(),
                OAuthError::InvalidClient,
            ),
            (
                None,
                format!("grant_type=client_credentials&client_id={}", post.id),
                OAuthError::InvalidClient,
            ),
            (
                Some(basic(&code_only.id, code_secret.unwrap().expose())),
                "grant_type=client_credentials".into(),
                OAuthError::UnauthorizedClient,
            ),
        ];
        for (auth, body, want) in cases {
            assert_eq!(
                issuer
                    .token(auth.as_deref(), Ok(None), &form(&body), now)
                    .await
                    .unwrap_err(),
                want,
                "{body}"
            );
        }
        // A rotated secret replaces the old one at once; a deleted client is unknown.
        let (_, fresh) = admin.rotate_secret(ACTOR, &post.id).await.unwrap();
        assert_eq!(
            issuer
                .token(
                    None,
                    Ok(None),
                    &form(&format!("grant_type=client_credentials&{ok}")),
                    now
                )
                .await
                .unwrap_err(),
            OAuthError::InvalidClient
        );
        let again = format!(
            "grant_type=client_credentials&client_id={}&client_secret={}",
            post.id,
            fresh.expose()
        );
        assert!(issuer
            .token(None, Ok(None), &form(&again), now)
            .await
            .is_ok());
        admin.delete(ACTOR, &post.id).await.unwrap();
        assert_eq!(
            issuer
                .token(None, Ok(None), &form(&again), now)
                .await
                .unwrap_err(),
            OAuthError::InvalidClient
        );
        // A public client has no secret and may not introspect.
        let (public, none) = admin
            .create(
                ACTOR,
                NewClient {
                    grant_types: Some(vec!["authorization_code".into()]),
                    ..new("none", None)
                },
            )
            .await
            .unwrap();
        assert!(none.is_none() && public.secret_hash.is_none());
        let ask = form(&format!("client_id={}&token=x", public.id));
        assert_eq!(
            issuer.introspect(None, &ask, now).await.unwrap_err(),
            OAuthError::InvalidClient
        );
        // Registration checks.
        for bad in [
            new("private_key_jwt", None),
            new("none", None),
            new("client_secret_basic", Some(vec!["password".into()])),
            NewClient {
                token_lifetime_seconds: Some(0),
                ..new("client_secret_basic", None)
            },
            NewClient {
                name: " ".into(),
                ..new("client_secret_basic", None)
            },
        ] {
            assert!(matches!(
                admin.create(ACTOR, bad).await,
                Err(AdminError::Invalid(_))
            ));
        }
    }

    #[tokio::test]
    async fn a_dpop_proof_binds_the_token_to_its_key_once() {
        let (admin, issuer, _ring) = setup().await;
        let (c, secret) = admin
            .create(ACTOR, new_client("app", vec!["read:echo".into()]))
            .await
            .unwrap();
        let auth = basic(&c.id, secret.unwrap().expose());
        let now = Timestamp::from_secs(1_800_000_000);
        let key = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let jkt = Jwk::from_public(&key.public_key(), Algorithm::EdDsa)
            .unwrap()
            .thumbprint()
            .unwrap();
        let proof = |jti: &str, htu: &str, method: &str| {
            portcullis_core::dpop::sign_proof(
                &key,
                &portcullis_core::dpop::NewProof {
                    htm: method,
                    htu,
                    access_token: None,
                    nonce: None,
                    jti,
                    iat: now.as_secs(),
                },
            )
            .unwrap()
        };
        let endpoint = format!("{ISS}/oauth2/token");
        let grant = form("grant_type=client_credentials");
        let p1 = proof("p1", &endpoint, "POST");
        let t = issuer
            .token(Some(&auth), Ok(Some(&p1)), &grant, now)
            .await
            .unwrap();
        assert_eq!(t.token_type(), "DPoP");
        assert_eq!(t.dpop_jkt.as_deref(), Some(jkt.as_str()));
        let body = Jws::parse(&t.access_token, MAX_TOKEN_LEN).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &portcullis_core::jose::b64_decode(t.access_token.split('.').nth(1).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(body.header().typ.as_deref(), Some("at+jwt"));
        assert_eq!(claims["cnf"]["jkt"], json!(jkt));
        // Introspection says so (RFC 9449 §6.2).
        let v = issuer
            .introspect(
                Some(&auth),
                &form(&format!("token={}", t.access_token)),
                now,
            )
            .await
            .unwrap()
            .1
            .to_value();
        assert_eq!(v["token_type"], "DPoP");
        assert_eq!(v["cnf"]["jkt"], json!(jkt));

        // Without a proof: a bearer token as before.
        let plain = issuer
            .token(Some(&auth), Ok(None), &grant, now)
            .await
            .unwrap();
        assert_eq!((plain.token_type(), plain.dpop_jkt), ("Bearer", None));

        let refused = OAuthError::InvalidDpopProof;
        for (dpop, why) in [
            (Ok(Some(p1.as_str())), "replayed"),
            (Err(DpopRefusal::Ambiguous), "two proofs"),
            (Ok(Some("a.b.c")), "malformed"),
        ] {
            assert_eq!(
                issuer
                    .token(Some(&auth), dpop, &grant, now)
                    .await
                    .unwrap_err(),
                refused,
                "{why}"
            );
        }
        let wrong_uri = proof("p2", "https://elsewhere.example/oauth2/token", "POST");
        let wrong_method = proof("p3", &endpoint, "GET");
        for p in [wrong_uri, wrong_method] {
            assert_eq!(
                issuer
                    .token(Some(&auth), Ok(Some(&p)), &grant, now)
                    .await
                    .unwrap_err(),
                refused
            );
        }
        // A failed client authentication spends no proof.
        let p4 = proof("p4", &endpoint, "POST");
        let bad = basic(&c.id, "pcs_wrong");
        assert_eq!(
            issuer
                .token(Some(&bad), Ok(Some(&p4)), &grant, now)
                .await
                .unwrap_err(),
            OAuthError::InvalidClient
        );
        assert!(issuer
            .token(Some(&auth), Ok(Some(&p4)), &grant, now)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn the_client_cache_drops_what_changes_through_it_and_ages_out_the_rest() {
        let store = Arc::new(MemoryStore::new());
        let clock = Arc::new(ManualClock::new(Timestamp::from_secs(1_800_000_000)));
        let cached = CachedClients::new(store.clone(), clock.clone(), 16, Duration::from_secs(5));
        let record = ClientRecord {
            id: "cl_1".into(),
            name: "svc".into(),
            confidential: true,
            grant_types: vec!["client_credentials".into()],
            scopes: vec![],
            audiences: vec![],
            redirect_uris: vec![],
            auth_method: "client_secret_basic".into(),
            token_lifetime_secs: None,
            secret_hash: Some([1; 32]),
            created_at: clock.now(),
            secret_set_at: Some(clock.now()),
            jwks: None,
        };
        assert_eq!(cached.find_client("cl_1").await.unwrap(), None);
        cached.insert_client(&record).await.unwrap();
        // Not remembered as unknown: found at once.
        assert!(cached.find_client("cl_1").await.unwrap().is_some());
        // Through the cache: seen at once.
        cached
            .set_client_secret("cl_1", &[2; 32], clock.now())
            .await
            .unwrap();
        assert_eq!(
            cached
                .find_client("cl_1")
                .await
                .unwrap()
                .unwrap()
                .secret_hash,
            Some([2; 32])
        );
        // Behind its back (another instance): seen once the TTL has passed.
        store
            .set_client_secret("cl_1", &[3; 32], clock.now())
            .await
            .unwrap();
        let hash = |c: Option<ClientRecord>| c.unwrap().secret_hash;
        assert_eq!(
            hash(cached.find_client("cl_1").await.unwrap()),
            Some([2; 32])
        );
        clock.advance(5_000);
        assert_eq!(
            hash(cached.find_client("cl_1").await.unwrap()),
            Some([3; 32])
        );
        cached.delete_client("cl_1").await.unwrap();
        assert_eq!(cached.find_client("cl_1").await.unwrap(), None);
    }
}
