//! The OAuth 2.0 authorization server for machine clients: client registration (admin) and
//! the token endpoint's `client_credentials` grant (RFC 6749 §4.4), issuing RFC 9068 JWT
//! access tokens signed by the [`KeyRing`].

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use portcullis_core::crypto::{self, Sha256Digest};
use portcullis_core::jose::Jws;
use portcullis_core::jwt::{self, Expectations, JwtError};
use portcullis_core::oauth2::{grant_scopes, ClientCredentials, Form, OAuthError};
use portcullis_core::secret::{ct_eq, Secret};
use portcullis_core::{ScopeSet, Timestamp};
use portcullis_store::{ClientRecord, OAuthClients, RevokedTokens, StoreError};
use serde::Deserialize;
use serde_json::json;

use crate::admin::{with_ip, Actor, AdminError};
use crate::audit::{AuditEvent, Auditor};
use crate::clock::Clock;
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
pub const AUTH_METHODS: [&str; 3] = ["client_secret_basic", "client_secret_post", "none"];

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
}

/// Settings of the authorization server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// The `iss` of every token, and the default audience.
    pub issuer: String,
    /// Access-token lifetime unless the client sets one.
    pub access_token_lifetime: Duration,
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
        if self.auditor.is_storing() {
            Ok(())
        } else {
            Err(AdminError::AuditUnavailable)
        }
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
        let (secret, hash) = if confidential {
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
        if !c.confidential {
            return Err(AdminError::Conflict("a public client has no secret".into()));
        }
        let now = self.clock.now();
        let (secret, hash) = new_secret();
        let c = self.store.set_client_secret(id, &hash, now).await?;
        self.audit(actor, "oauth_client.secret_rotated", &c, now)
            .await;
        Ok((c, secret))
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
pub fn verify_own_token(
    ring: &KeyRing,
    issuer: &str,
    audiences: &[String],
    leeway_secs: i64,
    token: &str,
    max_len: usize,
    now: Timestamp,
) -> Result<(jwt::Claims, portcullis_core::Verified<jwt::Jwt>), JwtError> {
    let jws = Jws::parse(token, max_len)?;
    let bad = JwtError::Jose(portcullis_core::jose::JoseError::BadSignature);
    let kid = jws.header().kid.as_deref().ok_or(bad)?;
    let keys = ring.keys();
    let key = keys
        .iter()
        .find(|k| k.record.kid == kid && k.published_at(now))
        .ok_or(bad)?;
    let public = key.jwk.public_key().map_err(|_| bad)?;
    let algorithms = [key.algorithm()];
    let expect = Expectations {
        algorithms: &algorithms,
        issuer,
        audiences,
        typ: Some("at+jwt"),
        leeway_secs,
    };
    jwt::verify(&jws, &public, &expect, now)
}

/// The token endpoint, and the introspection and revocation endpoints beside it.
pub struct TokenIssuer {
    clients: Arc<dyn OAuthClients>,
    ring: Arc<KeyRing>,
    config: IssuerConfig,
    revocations: Arc<Revocations>,
}

impl TokenIssuer {
    /// An issuer over the registered clients, the key ring and the revocations.
    pub fn new(
        clients: Arc<dyn OAuthClients>,
        ring: Arc<KeyRing>,
        config: IssuerConfig,
        revocations: Arc<Revocations>,
    ) -> Self {
        Self {
            clients,
            ring,
            config,
            revocations,
        }
    }

    /// The token named by the form's `token`, if it is one of ours, valid at `now` (any
    /// audience) and not revoked.
    fn active(&self, form: &Form, now: Timestamp) -> Result<Option<jwt::Claims>, OAuthError> {
        let token = form
            .get("token")
            .ok_or(OAuthError::InvalidRequest("token is missing."))?;
        Ok(verify_own_token(
            &self.ring,
            &self.config.issuer,
            &[],
            0,
            token,
            portcullis_core::jose::MAX_TOKEN_LEN,
            now,
        )
        .ok()
        .map(|(c, _)| c)
        .filter(|c| {
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
    ) -> Result<(String, serde_json::Value), OAuthError> {
        let caller = self
            .authenticate(&ClientCredentials::from_request(authorization, form)?)
            .await?;
        // A public client proves nothing by naming itself: it may not read others' tokens.
        if !caller.confidential {
            return Err(OAuthError::InvalidClient);
        }
        let Some(c) = self.active(form, now)? else {
            return Ok((caller.id, json!({ "active": false })));
        };
        let mut v = serde_json::to_value(&c).unwrap_or_else(|_| json!({}));
        v["active"] = json!(true);
        v["token_type"] = json!("Bearer");
        Ok((caller.id, v))
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
            .authenticate(&ClientCredentials::from_request(authorization, form)?)
            .await?;
        let Some(c) = self.active(form, now)? else {
            return Ok((caller.id, None));
        };
        if c.client_id.as_deref() != Some(caller.id.as_str()) {
            return Err(OAuthError::UnauthorizedClient);
        }
        let (Some(jti), Some(exp)) = (c.jti, c.exp) else {
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

    /// Answers one token request: the form, the `Authorization` header, at `now`.
    pub async fn token(
        &self,
        authorization: Option<&str>,
        form: &Form,
        now: Timestamp,
    ) -> Result<IssuedToken, OAuthError> {
        let grant = form
            .get("grant_type")
            .ok_or(OAuthError::InvalidRequest("grant_type is missing."))?;
        let creds = ClientCredentials::from_request(authorization, form)?;
        let client = self.authenticate(&creds).await?;
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
        let jti = bs58::encode(random_bytes::<16>()).into_string();
        let iat = now.as_secs();
        let aud = if audiences.len() == 1 {
            json!(audiences[0])
        } else {
            json!(audiences)
        };
        let claims = json!({
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
        let access_token = signer
            .sign(Some("at+jwt"), claims.to_string().as_bytes())
            .map_err(|_| OAuthError::TemporarilyUnavailable)?;
        Ok(IssuedToken {
            access_token,
            expires_in: lifetime,
            scope: scopes.to_space_separated(),
            jti,
            client_id: client.id,
        })
    }

    /// The client, if the credentials prove it: a registered client, authenticating the way
    /// it was registered to, with its secret (compared in constant time, as digests).
    async fn authenticate(&self, creds: &ClientCredentials) -> Result<ClientRecord, OAuthError> {
        let client = self
            .clients
            .find_client(creds.client_id())
            .await
            .map_err(unavailable)?;
        // The digest is computed whether or not the client exists, so that an unknown id and a
        // wrong secret take the same path.
        let presented = match creds {
            ClientCredentials::Basic { secret, .. } | ClientCredentials::Post { secret, .. } => {
                Some(crypto::sha256(secret.as_bytes()))
            }
            ClientCredentials::None { .. } => None,
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
            store,
            ring.clone(),
            IssuerConfig {
                issuer: ISS.into(),
                access_token_lifetime: Duration::from_secs(900),
            },
            revocations,
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

    fn form(s: &str) -> Form {
        Form::parse(s.as_bytes()).unwrap()
    }

    #[tokio::test]
    async fn client_credentials_issues_an_rfc9068_token_our_jwks_verifies() {
        let (admin, issuer, ring) = setup().await;
        let (c, secret) = admin
            .create(
                ACTOR,
                NewClient {
                    name: "svc".into(),
                    grant_types: None,
                    scopes: vec!["read:echo".into(), "write:echo".into()],
                    audiences: vec![],
                    redirect_uris: vec![],
                    token_endpoint_auth_method: None,
                    token_lifetime_seconds: None,
                },
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
                &form("grant_type=client_credentials"),
                now,
            )
            .await
            .unwrap();
        assert_eq!(all.scope, "read:echo write:echo");
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
                    .token(auth.as_deref(), &form(&body), now)
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
        assert!(issuer.token(None, &form(&again), now).await.is_ok());
        admin.delete(ACTOR, &post.id).await.unwrap();
        assert_eq!(
            issuer.token(None, &form(&again), now).await.unwrap_err(),
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
}
