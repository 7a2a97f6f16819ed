//! External token issuers for the `jwt` scheme: any OpenID Connect provider or OAuth 2.0
//! authorization server that signs JWT access tokens and publishes a JWKS.
//!
//! An issuer is configured by its `iss` and either its JWKS URL or nothing more (then the
//! JWKS URL comes from its metadata: OpenID Connect Discovery, else RFC 8414). Its keys are
//! held in memory and replaced whole by [`ExternalIssuer::refresh`], which the adapter runs
//! in the background; a token whose `kid` is not among them triggers one refetch, at most
//! once per `min_refetch`, so a key the issuer has just rolled in is found and a flood of
//! made-up `kid`s costs the issuer nothing. A failed fetch keeps the keys already held: an
//! issuer that is down does not take the gateway down while its keys are valid.
//!
//! Keys are chosen only by the token header's `kid` among the issuer's published keys (a
//! token without `kid` only when the issuer publishes exactly one usable key), and only with
//! an algorithm that is both in the issuer's allow-list and one the key is for. `jku`, `x5u`,
//! `jwk` and `x5c` in a token header are never read.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use portcullis_core::crypto::sign::PublicKey;
use portcullis_core::jose::{Algorithm, Jwk, Jws};
use portcullis_core::jwt::{self, Claims, Expectations, JwtError};
use portcullis_core::{Timestamp, Verified};
use serde::Deserialize;

/// The largest metadata or JWKS document read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// The most keys taken from one JWKS.
pub const MAX_KEYS: usize = 64;

/// What an external issuer is trusted for.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    /// The name routes use for it (`jwt_issuers`).
    pub name: String,
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Its JWKS URL; `None`: from its metadata.
    pub jwks_uri: Option<String>,
    /// The algorithms its tokens may be signed with (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// Accepted `aud` values (at least one; a token for another audience is refused).
    pub audiences: Vec<String>,
    /// The header `typ` required, if any (`at+jwt` for RFC 9068 tokens).
    pub typ: Option<String>,
    /// Clock skew allowed on `exp`, `nbf`, `iat`, seconds.
    pub leeway_secs: i64,
    /// The shortest time between two fetches caused by unknown `kid`s.
    pub min_refetch: Duration,
    /// RFC 7662 introspection instead of keys: every token of this issuer (opaque or not) is
    /// asked about at its introspection endpoint.
    pub introspection: Option<IntrospectionSettings>,
}

/// How to ask an authorization server about its tokens (RFC 7662).
#[derive(Clone)]
pub struct IntrospectionSettings {
    /// The introspection endpoint.
    pub endpoint: String,
    /// Portcullis's client id there.
    pub client_id: String,
    /// Its secret (`client_secret_basic`).
    pub client_secret: portcullis_core::secret::Secret,
    /// The longest an answer is remembered (never past the token's `exp`); an inactive
    /// answer is remembered at most [`INACTIVE_CACHE_SECS`].
    pub cache_ttl: Duration,
}

impl std::fmt::Debug for IntrospectionSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntrospectionSettings")
            .field("endpoint", &self.endpoint)
            .field("client_id", &self.client_id)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

/// The longest an inactive introspection answer is remembered, seconds.
pub const INACTIVE_CACHE_SECS: i64 = 10;

/// The largest introspection answer read.
pub const MAX_INTROSPECTION_BYTES: usize = 64 * 1024;

/// What the authorization server said of a token.
#[derive(Debug)]
pub enum Introspected {
    /// Active, with these claims (checked: `iss`, `exp`, `nbf`, `aud` where present).
    Active(Box<Claims<'static>>),
    /// Not active, or active but not for here (another issuer or audience, expired).
    Inactive,
}

/// Why fetching an issuer's metadata or keys failed (for logs and metrics; never on the wire).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The server could not be reached, did not answer in time, or broke the connection.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// An answer other than 200.
    #[error("status {0}")]
    Status(u16),
    /// A body over [`MAX_DOCUMENT_BYTES`].
    #[error("document too large")]
    TooLarge,
    /// Not the JSON document expected, or one naming another issuer or an unusable URL.
    #[error("bad document: {0}")]
    BadDocument(&'static str),
    /// A JWKS without a single key usable here.
    #[error("no usable key")]
    NoUsableKey,
}

/// GETs a document over HTTP(S): the adapter's side of fetching.
#[async_trait]
pub trait Fetch: Send + Sync {
    /// The body of a 200 answer to `GET url`, at most `max_bytes` long.
    async fn get(&self, url: &str, max_bytes: usize) -> Result<Vec<u8>, FetchError>;

    /// The body of a 200 answer to `POST url` of the form `body`
    /// (`application/x-www-form-urlencoded`) with `Authorization: authorization`.
    async fn post_form(
        &self,
        url: &str,
        authorization: &str,
        body: &str,
        max_bytes: usize,
    ) -> Result<Vec<u8>, FetchError>;
}

/// One published key, ready to verify with.
#[derive(Debug)]
struct RemoteKey {
    kid: Option<String>,
    /// The algorithms it may verify: its `alg` if published (and allowed), else every allowed
    /// one its type suits.
    algorithms: Vec<Algorithm>,
    key: PublicKey,
}

/// The keys held, and when they were fetched.
#[derive(Debug, Default)]
struct KeySet {
    keys: Vec<RemoteKey>,
    fetched: bool,
}

/// Fetch bookkeeping, under one async lock so that concurrent misses make one fetch.
#[derive(Debug, Default)]
struct FetchState {
    last_attempt: Option<Timestamp>,
    jwks_uri: Option<String>,
}

/// An external issuer whose tokens the `jwt` scheme verifies.
pub struct ExternalIssuer {
    settings: IssuerSettings,
    fetch: Arc<dyn Fetch>,
    keys: RwLock<Arc<KeySet>>,
    state: tokio::sync::Mutex<FetchState>,
}

impl std::fmt::Debug for ExternalIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalIssuer")
            .field("name", &self.settings.name)
            .field("issuer", &self.settings.issuer)
            .finish_non_exhaustive()
    }
}

/// What a key lookup found.
pub enum Lookup {
    /// The key to verify with, and the algorithms it may verify.
    Found(PublicKey, Vec<Algorithm>),
    /// No published key matches (a refetch may find one).
    Unknown,
}

/// The metadata members read (OpenID Connect Discovery 1.0 §3, RFC 8414 §2).
#[derive(Deserialize)]
struct Metadata {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<serde_json::Value>,
}

impl ExternalIssuer {
    /// An issuer with no keys yet: call [`ExternalIssuer::refresh`].
    pub fn new(settings: IssuerSettings, fetch: Arc<dyn Fetch>) -> Self {
        Self {
            state: tokio::sync::Mutex::new(FetchState {
                last_attempt: None,
                jwks_uri: settings.jwks_uri.clone(),
            }),
            settings,
            fetch,
            keys: RwLock::new(Arc::new(KeySet::default())),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &IssuerSettings {
        &self.settings
    }

    /// Whether its tokens are checked by introspection (no keys are fetched then).
    pub fn introspects(&self) -> bool {
        self.settings.introspection.is_some()
    }

    /// Asks the issuer's introspection endpoint about `token` (RFC 7662 §2), as a
    /// confidential client with `client_secret_basic`. An answer that is not a JSON object
    /// with a boolean `active` is an error (the caller fails closed).
    pub async fn introspect(
        &self,
        token: &str,
        now: Timestamp,
    ) -> Result<Introspected, FetchError> {
        let Some(cfg) = &self.settings.introspection else {
            return Err(FetchError::BadDocument("no introspection endpoint"));
        };
        let auth = portcullis_core::oauth2::basic_authorization(
            &cfg.client_id,
            cfg.client_secret.expose(),
        );
        let body = format!(
            "token={}&token_type_hint=access_token",
            portcullis_core::oauth2::form_encode(token)
        );
        let answer = self
            .fetch
            .post_form(&cfg.endpoint, &auth, &body, MAX_INTROSPECTION_BYTES)
            .await?;
        #[derive(Deserialize)]
        struct Active {
            active: bool,
        }
        let active: Active = serde_json::from_slice(&answer)
            .map_err(|_| FetchError::BadDocument("not an introspection answer"))?;
        if !active.active {
            return Ok(Introspected::Inactive);
        }
        let Ok(claims) = Claims::from_json(&answer).map(Claims::into_owned) else {
            return Err(FetchError::BadDocument(
                "introspection claims of the wrong type",
            ));
        };
        let s = &self.settings;
        let now = now.as_secs();
        let leeway = s.leeway_secs.max(0);
        let fits = claims.iss.as_deref().is_none_or(|i| i == s.issuer)
            && claims.exp.is_none_or(|e| now < e.saturating_add(leeway))
            && claims.nbf.is_none_or(|n| now.saturating_add(leeway) >= n)
            && claims.aud.as_ref().is_none_or(|a| {
                a.values()
                    .iter()
                    .any(|v| s.audiences.iter().any(|e| e == v))
            });
        Ok(if fits {
            Introspected::Active(Box::new(claims))
        } else {
            Introspected::Inactive
        })
    }

    /// Whether keys were ever fetched.
    pub fn has_keys(&self) -> bool {
        self.current().fetched
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fetches the metadata (when no JWKS URL is configured and none was found yet) and the
    /// JWKS, and replaces the keys held; on failure the keys held stay. Returns how many keys
    /// are usable.
    pub async fn refresh(&self, now: Timestamp) -> Result<usize, FetchError> {
        if self.introspects() {
            return Ok(0);
        }
        let mut state = self.state.lock().await;
        self.refresh_locked(&mut state, now).await
    }

    async fn refresh_locked(
        &self,
        state: &mut FetchState,
        now: Timestamp,
    ) -> Result<usize, FetchError> {
        state.last_attempt = Some(now);
        let uri = match &state.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let u = self.discover().await?;
                state.jwks_uri = Some(u.clone());
                u
            }
        };
        let body = self.fetch.get(&uri, MAX_DOCUMENT_BYTES).await?;
        let keys = parse_jwks(&body, &self.settings.algorithms)?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(KeySet {
            keys,
            fetched: true,
        });
        Ok(n)
    }

    /// The JWKS URL from the issuer's metadata: OpenID Connect Discovery first, then RFC 8414
    /// (with the path inserted after `/.well-known/…` as its §3.1 says). The document must
    /// name this exact issuer (OpenID Connect Discovery §4.3, RFC 8414 §3.3).
    async fn discover(&self) -> Result<String, FetchError> {
        let iss = self.settings.issuer.trim_end_matches('/');
        let oidc = format!("{iss}/.well-known/openid-configuration");
        let rfc8414 = rfc8414_url(&self.settings.issuer)
            .ok_or(FetchError::BadDocument("the issuer is not an http(s) URL"))?;
        let mut last = FetchError::BadDocument("no metadata");
        for url in [oidc, rfc8414] {
            match self.fetch.get(&url, MAX_DOCUMENT_BYTES).await {
                Ok(body) => {
                    let m: Metadata = serde_json::from_slice(&body).map_err(|_| {
                        FetchError::BadDocument(
                            "metadata is not a JSON object with issuer and jwks_uri",
                        )
                    })?;
                    if m.issuer != self.settings.issuer {
                        return Err(FetchError::BadDocument("metadata names another issuer"));
                    }
                    if !fetchable(&m.jwks_uri) {
                        return Err(FetchError::BadDocument(
                            "jwks_uri is not https (or http on a loopback address)",
                        ));
                    }
                    return Ok(m.jwks_uri);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The key for a token whose header names `kid` and `alg`, among those held.
    pub fn lookup(&self, kid: Option<&str>, alg: Option<Algorithm>) -> Lookup {
        let set = self.current();
        let Some(alg) = alg.filter(|a| self.settings.algorithms.contains(a)) else {
            return Lookup::Unknown;
        };
        let usable = |k: &&RemoteKey| k.algorithms.contains(&alg);
        let found = match kid {
            Some(kid) => set
                .keys
                .iter()
                .filter(usable)
                .find(|k| k.kid.as_deref() == Some(kid)),
            // Without a kid only an unambiguous key will do.
            None => {
                let mut it = set.keys.iter().filter(usable);
                match (it.next(), it.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        };
        match found {
            Some(k) => Lookup::Found(k.key.clone(), vec![alg]),
            None => Lookup::Unknown,
        }
    }

    /// [`ExternalIssuer::lookup`], and on a miss one refetch when the last fetch is older
    /// than `min_refetch` (concurrent misses wait for the same fetch).
    pub async fn lookup_or_refetch(
        &self,
        kid: Option<&str>,
        alg: Option<Algorithm>,
        now: Timestamp,
    ) -> Lookup {
        if let Lookup::Found(k, a) = self.lookup(kid, alg) {
            return Lookup::Found(k, a);
        }
        let mut state = self.state.lock().await;
        // Someone else may have fetched while this waited.
        if let Lookup::Found(k, a) = self.lookup(kid, alg) {
            return Lookup::Found(k, a);
        }
        let min = i64::try_from(self.settings.min_refetch.as_millis()).unwrap_or(i64::MAX);
        let due = state
            .last_attempt
            .is_none_or(|t| now.millis_since(t) >= min);
        if due {
            if let Err(e) = self.refresh_locked(&mut state, now).await {
                tracing::warn!(issuer = %self.settings.name, error = %e, "refetching the JWKS for an unknown kid failed");
            }
        }
        drop(state);
        self.lookup(kid, alg)
    }

    /// Verifies `jws` under `key` as a token of this issuer.
    pub fn verify<'j>(
        &self,
        jws: &'j Jws<'_>,
        key: &PublicKey,
        algorithms: &[Algorithm],
        now: Timestamp,
    ) -> Result<(Claims<'j>, Verified<jwt::Jwt>), JwtError> {
        let expect = Expectations {
            algorithms,
            issuer: &self.settings.issuer,
            audiences: &self.settings.audiences,
            typ: self.settings.typ.as_deref(),
            leeway_secs: self.settings.leeway_secs,
        };
        jwt::verify(jws, key, &expect, now)
    }
}

/// The keys of a JWKS document usable for `allowed` algorithms. Keys that are not for
/// signatures (`use` other than `sig`), of a type or curve not supported, with private
/// members, or for an algorithm not allowed are skipped; a document without any usable key
/// is refused (keeping the keys held before).
fn parse_jwks(body: &[u8], allowed: &[Algorithm]) -> Result<Vec<RemoteKey>, FetchError> {
    let doc: JwksDoc =
        serde_json::from_slice(body).map_err(|_| FetchError::BadDocument("not a JWKS"))?;
    let mut out = Vec::new();
    for v in doc.keys.into_iter().take(MAX_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
            continue;
        };
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let Ok(key) = jwk.public_key() else {
            continue;
        };
        let algorithms: Vec<Algorithm> = match jwk.alg.as_deref() {
            Some(name) => Algorithm::from_name(name)
                .filter(|a| allowed.contains(a) && key.suits(*a))
                .into_iter()
                .collect(),
            None => allowed
                .iter()
                .copied()
                .filter(|a| a.is_asymmetric() && key.suits(*a))
                .collect(),
        };
        if algorithms.is_empty() {
            continue;
        }
        out.push(RemoteKey {
            kid: jwk.kid,
            algorithms,
            key,
        });
    }
    if out.is_empty() {
        return Err(FetchError::NoUsableKey);
    }
    Ok(out)
}

/// The RFC 8414 §3.1 metadata URL of `issuer`: `/.well-known/oauth-authorization-server`
/// inserted between the host and the path.
fn rfc8414_url(issuer: &str) -> Option<String> {
    let (scheme, rest) = issuer.split_once("://")?;
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let path = path.trim_end_matches('/');
    Some(format!(
        "{scheme}://{authority}/.well-known/oauth-authorization-server{path}"
    ))
}

/// Whether Portcullis fetches from `url`: `https`, or `http` to a loopback address (tests,
/// a sidecar).
pub fn fetchable(url: &str) -> bool {
    if url.len() > 2048 || url.contains(['#', ' ']) {
        return false;
    }
    if let Some(rest) = url.strip_prefix("https://") {
        return !rest.is_empty() && !rest.starts_with('/');
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use portcullis_core::crypto::sign::SigningKey;
    use portcullis_core::jose::sign_compact;
    use std::collections::HashMap;
    use std::sync::Mutex;

    const ISS: &str = "https://idp.example/realms/main";
    const NOW: i64 = 1_800_000_000;

    /// Documents by URL; counts the GETs.
    #[derive(Default)]
    pub(crate) struct FakeFetch {
        docs: Mutex<HashMap<String, Vec<u8>>>,
        gets: Mutex<Vec<String>>,
    }

    impl FakeFetch {
        pub(crate) fn put(&self, url: &str, doc: serde_json::Value) {
            self.docs
                .lock()
                .unwrap()
                .insert(url.to_owned(), doc.to_string().into_bytes());
        }
        fn remove(&self, url: &str) {
            self.docs.lock().unwrap().remove(url);
        }
        pub(crate) fn gets(&self) -> usize {
            self.gets.lock().unwrap().len()
        }
    }

    #[async_trait]
    impl Fetch for FakeFetch {
        async fn get(&self, url: &str, _max: usize) -> Result<Vec<u8>, FetchError> {
            self.gets.lock().unwrap().push(url.to_owned());
            self.docs
                .lock()
                .unwrap()
                .get(url)
                .cloned()
                .ok_or(FetchError::Status(404))
        }

        async fn post_form(
            &self,
            url: &str,
            authorization: &str,
            body: &str,
            _max: usize,
        ) -> Result<Vec<u8>, FetchError> {
            self.gets
                .lock()
                .unwrap()
                .push(format!("POST {url} {authorization} {body}"));
            self.docs
                .lock()
                .unwrap()
                .get(&format!("{url} {body}"))
                .cloned()
                .ok_or(FetchError::Status(404))
        }
    }

    fn settings(jwks_uri: Option<&str>) -> IssuerSettings {
        IssuerSettings {
            name: "idp".into(),
            issuer: ISS.into(),
            jwks_uri: jwks_uri.map(Into::into),
            algorithms: vec![Algorithm::Rs256, Algorithm::Es256],
            audiences: vec!["https://api.example".into()],
            typ: None,
            leeway_secs: 30,
            min_refetch: Duration::from_secs(60),
            introspection: None,
        }
    }

    pub(crate) fn jwk(key: &SigningKey, kid: &str) -> serde_json::Value {
        let mut j =
            serde_json::to_value(Jwk::from_public(&key.public_key(), key.algorithm()).unwrap())
                .unwrap();
        j["kid"] = kid.into();
        j
    }

    fn token(key: &SigningKey, kid: &str) -> String {
        let claims = serde_json::json!({"iss": ISS, "aud": "https://api.example",
            "exp": NOW + 300, "sub": "u1", "azp": "web"});
        sign_compact(key, kid, None, claims.to_string().as_bytes()).unwrap()
    }

    async fn verify(
        i: &ExternalIssuer,
        t: &str,
        now: i64,
    ) -> Result<Claims<'static>, &'static str> {
        let jws = Jws::parse(t, 16 * 1024).map_err(|_| "malformed")?;
        let kid = jws.header().kid.clone();
        match i
            .lookup_or_refetch(kid.as_deref(), jws.algorithm(), Timestamp::from_secs(now))
            .await
        {
            Lookup::Found(k, algs) => i
                .verify(&jws, &k, &algs, Timestamp::from_secs(now))
                .map(|(c, _)| c.into_owned())
                .map_err(|_| "refused"),
            Lookup::Unknown => Err("unknown key"),
        }
    }

    #[tokio::test]
    async fn keys_come_from_discovery_and_an_unknown_kid_refetches_at_most_once_a_minute() {
        let fetch = Arc::new(FakeFetch::default());
        let jwks_url = "https://idp.example/keys";
        fetch.put(
            &format!("{ISS}/.well-known/openid-configuration"),
            serde_json::json!({"issuer": ISS, "jwks_uri": jwks_url}),
        );
        let k1 = SigningKey::generate(Algorithm::Rs256).unwrap();
        let k2 = SigningKey::generate(Algorithm::Es256).unwrap();
        fetch.put(
            jwks_url,
            serde_json::json!({"keys": [jwk(&k1, "k1"),
                // Skipped: an encryption key, an unsupported curve, a private key.
                {"kty": "RSA", "use": "enc", "n": "AQAB", "e": "AQAB", "kid": "enc"},
                {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "p521"},
                {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}]}),
        );
        let i = ExternalIssuer::new(settings(None), fetch.clone());
        assert!(!i.has_keys());
        assert_eq!(i.refresh(Timestamp::from_secs(NOW)).await.unwrap(), 1);
        assert_eq!(fetch.gets(), 2);
        let c = verify(&i, &token(&k1, "k1"), NOW).await.unwrap();
        assert_eq!((c.sub.as_deref(), c.client()), (Some("u1"), Some("web")));

        // The issuer rolls in k2; a token signed by it makes one refetch (the JWKS URL is
        // remembered: no second discovery), not one per request.
        fetch.put(
            jwks_url,
            serde_json::json!({"keys": [jwk(&k1, "k1"), jwk(&k2, "k2")]}),
        );
        let t2 = token(&k2, "k2");
        assert_eq!(verify(&i, &t2, NOW + 30).await, Err("unknown key"));
        assert_eq!(fetch.gets(), 2, "too soon after the last fetch");
        assert!(verify(&i, &t2, NOW + 61).await.is_ok());
        assert_eq!(fetch.gets(), 3);
        let forged = token(&SigningKey::generate(Algorithm::Es256).unwrap(), "k9");
        for _ in 0..5 {
            assert_eq!(verify(&i, &forged, NOW + 62).await, Err("unknown key"));
        }
        assert_eq!(fetch.gets(), 3, "made-up kids do not hammer the issuer");

        // The issuer goes down: the keys held keep working.
        fetch.remove(jwks_url);
        assert!(i.refresh(Timestamp::from_secs(NOW + 200)).await.is_err());
        assert!(verify(&i, &token(&k1, "k1"), NOW + 201).await.is_ok());
    }

    #[tokio::test]
    async fn only_allowed_algorithms_and_matching_key_types_verify() {
        let fetch = Arc::new(FakeFetch::default());
        let url = "https://idp.example/keys";
        let rsa = SigningKey::generate(Algorithm::Rs256).unwrap();
        let ed = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let ps = SigningKey::from_pkcs8(Algorithm::Ps256, rsa.pkcs8()).unwrap();
        let mut pinned = jwk(&rsa, "pinned");
        pinned["alg"] = "RS256".into();
        fetch.put(url, serde_json::json!({"keys": [pinned, jwk(&ed, "ed")]}));
        let i = ExternalIssuer::new(settings(Some(url)), fetch.clone());
        i.refresh(Timestamp::from_secs(NOW)).await.unwrap();
        assert!(verify(&i, &token(&rsa, "pinned"), NOW).await.is_ok());
        // PS256 with a key published for RS256; EdDSA, not in the allow-list; HS256 keyed
        // with the RSA key's public bytes (the classic confusion): all refused.
        assert_eq!(
            verify(&i, &token(&ps, "pinned"), NOW).await,
            Err("unknown key")
        );
        assert_eq!(verify(&i, &token(&ed, "ed"), NOW).await, Err("unknown key"));
        let hs = {
            let header = portcullis_core::jose::b64_encode(br#"{"alg":"HS256","kid":"pinned"}"#);
            let claims = portcullis_core::jose::b64_encode(
                serde_json::json!({"iss": ISS, "aud": "https://api.example", "exp": NOW + 60})
                    .to_string()
                    .as_bytes(),
            );
            let input = format!("{header}.{claims}");
            let published = serde_json::to_vec(&jwk(&rsa, "pinned")).unwrap();
            let mac = portcullis_core::crypto::sign::hmac_sha256(&published, input.as_bytes());
            format!("{input}.{}", portcullis_core::jose::b64_encode(&mac))
        };
        assert_eq!(verify(&i, &hs, NOW).await, Err("unknown key"));
        // A kid-less token: only when one key could be meant (here two are published, but
        // only one is for RS256).
        let no_kid = {
            let claims =
                serde_json::json!({"iss": ISS, "aud": "https://api.example", "exp": NOW + 60});
            let t = sign_compact(&rsa, "x", None, claims.to_string().as_bytes()).unwrap();
            // Drop the kid from the header.
            let header = portcullis_core::jose::b64_encode(br#"{"alg":"RS256"}"#);
            let rest: Vec<&str> = t.split('.').collect();
            let input = format!("{header}.{}", rest[1]);
            let sig = rsa.sign(input.as_bytes()).unwrap();
            format!("{input}.{}", portcullis_core::jose::b64_encode(&sig))
        };
        assert!(verify(&i, &no_kid, NOW).await.is_ok());
        // Wrong audience and expired: refused by the claims check.
        let other_aud = {
            let claims =
                serde_json::json!({"iss": ISS, "aud": "https://else.example", "exp": NOW + 60});
            sign_compact(&rsa, "pinned", None, claims.to_string().as_bytes()).unwrap()
        };
        assert_eq!(verify(&i, &other_aud, NOW).await, Err("refused"));
        assert_eq!(
            verify(&i, &token(&rsa, "pinned"), NOW + 331).await,
            Err("refused")
        );
    }

    #[tokio::test]
    async fn metadata_must_name_the_issuer_and_rfc8414_is_tried_second() {
        let fetch = Arc::new(FakeFetch::default());
        let k = SigningKey::generate(Algorithm::Es256).unwrap();
        fetch.put(
            "https://idp.example/.well-known/oauth-authorization-server/realms/main",
            serde_json::json!({"issuer": ISS, "jwks_uri": "https://idp.example/k"}),
        );
        fetch.put(
            "https://idp.example/k",
            serde_json::json!({"keys": [jwk(&k, "a")]}),
        );
        let i = ExternalIssuer::new(settings(None), fetch.clone());
        assert_eq!(i.refresh(Timestamp::from_secs(NOW)).await.unwrap(), 1);

        for meta in [
            serde_json::json!({"issuer": "https://evil.example", "jwks_uri": "https://idp.example/k"}),
            serde_json::json!({"issuer": ISS, "jwks_uri": "http://idp.example/k"}),
            serde_json::json!({"issuer": ISS}),
        ] {
            let f = Arc::new(FakeFetch::default());
            f.put(&format!("{ISS}/.well-known/openid-configuration"), meta);
            f.put(
                "https://idp.example/k",
                serde_json::json!({"keys": [jwk(&k, "a")]}),
            );
            let i = ExternalIssuer::new(settings(None), f);
            assert!(matches!(
                i.refresh(Timestamp::from_secs(NOW)).await,
                Err(FetchError::BadDocument(_))
            ));
            assert!(!i.has_keys());
        }
    }

    #[test]
    fn only_https_or_loopback_http_is_fetched() {
        for ok in [
            "https://idp.example/keys",
            "http://127.0.0.1:8080/jwks",
            "http://[::1]:9/x",
            "http://localhost/x",
        ] {
            assert!(fetchable(ok), "{ok}");
        }
        for bad in [
            "http://idp.example/keys",
            "http://127.0.0.1.evil.example/x",
            "ftp://idp.example",
            "https://",
            "file:///etc/passwd",
        ] {
            assert!(!fetchable(bad), "{bad}");
        }
        assert_eq!(
            rfc8414_url("https://idp.example/realms/main/").as_deref(),
            Some("https://idp.example/.well-known/oauth-authorization-server/realms/main")
        );
        assert_eq!(
            rfc8414_url("https://idp.example").as_deref(),
            Some("https://idp.example/.well-known/oauth-authorization-server")
        );
    }

    #[tokio::test]
    async fn introspection_answers_are_checked_for_issuer_audience_and_time() {
        let fetch = Arc::new(FakeFetch::default());
        let url = "https://idp.example/introspect";
        let mut cfg = settings(None);
        cfg.introspection = Some(IntrospectionSettings {
            endpoint: url.into(),
            client_id: "gw".into(),
            client_secret: portcullis_core::secret::Secret::new("s3cr:t".into()),
            cache_ttl: Duration::from_secs(60),
        });
        let i = ExternalIssuer::new(cfg, fetch.clone());
        assert_eq!(i.refresh(Timestamp::from_secs(NOW)).await.unwrap(), 0);
        assert_eq!(
            fetch.gets(),
            0,
            "no keys are fetched for an introspected issuer"
        );
        let answer = |token: &str, v: serde_json::Value| {
            fetch.put(
                &format!("{url} token={token}&token_type_hint=access_token"),
                v,
            );
        };
        answer(
            "good",
            serde_json::json!({"active": true, "iss": ISS, "aud": ["https://api.example"],
            "exp": NOW + 60, "sub": "u", "client_id": "c", "scope": "a b"}),
        );
        answer("bare", serde_json::json!({"active": true}));
        answer("gone", serde_json::json!({"active": false}));
        answer(
            "other-iss",
            serde_json::json!({"active": true, "iss": "https://evil.example"}),
        );
        answer(
            "other-aud",
            serde_json::json!({"active": true, "aud": "https://else.example"}),
        );
        answer(
            "expired",
            serde_json::json!({"active": true, "exp": NOW - 31}),
        );
        answer("weird", serde_json::json!({"active": "yes"}));
        let now = Timestamp::from_secs(NOW);
        match i.introspect("good", now).await.unwrap() {
            Introspected::Active(c) => {
                assert_eq!((c.client(), c.scopes()), (Some("c"), vec!["a", "b"]))
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            i.introspect("bare", now).await,
            Ok(Introspected::Active(_))
        ));
        for t in ["gone", "other-iss", "other-aud", "expired"] {
            assert!(
                matches!(i.introspect(t, now).await, Ok(Introspected::Inactive)),
                "{t}"
            );
        }
        assert!(i.introspect("weird", now).await.is_err());
        assert!(i.introspect("unknown-to-the-fake", now).await.is_err());
        // Authenticated as RFC 6749 §2.3.1 says: the secret form-encoded, then base64.
        let first = fetch.gets.lock().unwrap()[0].clone();
        assert!(
            first.contains(&portcullis_core::oauth2::basic_authorization(
                "gw", "s3cr:t"
            )),
            "{first}"
        );
    }
}
