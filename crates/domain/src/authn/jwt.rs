//! The `jwt` scheme: JWT access tokens (RFC 6750, RFC 9068) from Portcullis's own issuer,
//! verified against the key ring, with a bounded cache of tokens already verified; tokens
//! bound to a DPoP key (RFC 9449) only with a fresh proof of that key.
//!
//! Order of checks: the token is read from `Authorization: Bearer` or `Authorization: DPoP`
//! (absent, or a bearer that is not JWS-shaped: not ours, `Ok(None)`); its size is bounded;
//! the header's `kid` picks a published key of the ring (nothing else in the token can choose
//! a key); the signature is checked under the algorithm allow-list; only then are the claims
//! read (`iss`, `exp`, `nbf`, `iat`, `aud`, `typ`), then the revocations. A token with
//! `cnf.jkt` must come as `DPoP` with one `DPoP` proof, signed by that key, for this method
//! and URI, naming this token (`ath`), never seen before; a token without it must come as
//! `Bearer`.

use std::sync::Arc;

use async_trait::async_trait;
use portcullis_core::crypto;
use portcullis_core::dpop::DpopError;
use portcullis_core::error::TokenError;
use portcullis_core::identity::Claims as IdentityClaims;
use portcullis_core::jose::Jws;
use portcullis_core::jwt::{self, JwtError};
use portcullis_core::{AuthError, Identity, RequestParts, Scheme, ScopeSet, Timestamp};

use super::issuers::{ExternalIssuer, Introspected, Lookup, INACTIVE_CACHE_SECS};
use super::{Authenticated, Authenticator, Consumed, RouteAuth};
use crate::dpop::{proof_header, DpopChecker, DpopRefusal, ProofRequest};
use crate::oauth::{verify_own_token, Revocations};
use crate::signing::KeyRing;

/// The longest bearer token read.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The name routes use for Portcullis's own issuer in `jwt_issuers`.
pub const OWN_ISSUER: &str = "portcullis";

/// What the scheme trusts.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The issuer whose tokens are accepted (Portcullis's own).
    pub issuer: String,
    /// Accepted `aud` values; empty: any.
    pub audiences: Vec<String>,
    /// Clock skew allowed, seconds.
    pub leeway_secs: i64,
    /// Verified tokens remembered.
    pub cache_capacity: usize,
}

/// Who issued a token: Portcullis, or the external issuer at this index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Own,
    External(usize),
}

/// A verified token, remembered until its `exp` (an introspected one until its answer's
/// time is up).
#[derive(Clone)]
struct Remembered {
    identity: Identity,
    /// Own tokens: the `jti` the revocations are checked by.
    jti: Option<String>,
    exp: Timestamp,
    /// Introspected tokens: when the answer stops being used (then the server is asked again).
    ask_again: Option<Timestamp>,
    /// `cnf.jkt`: the DPoP key the token is bound to.
    jkt: Option<Arc<str>>,
    source: Source,
}

/// How the token was presented (RFC 6750 §2.1, RFC 9449 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presented<'r> {
    Bearer(&'r str),
    Dpop(&'r str),
}

/// What the decision that needs no waiting found.
enum Quick {
    /// The token's identity, and the key it is bound to if any.
    Done(Authenticated, Option<Arc<str>>),
    /// An external issuer's token whose key is not held: a refetch may find it.
    NeedsKeys(usize),
    /// A token the external issuer `i` must be asked about (RFC 7662).
    NeedsIntrospection(usize),
    /// A bearer token that is not this scheme's (not a JWT, and no introspecting issuer on
    /// the route, or one of Portcullis's API keys).
    NotOurs,
}

/// What [`JwtAuthenticator::verify`] could not finish by itself.
enum Pending {
    Keys(usize),
    Introspection(usize),
    NotOurs,
}

/// JWT access tokens from Portcullis's own issuer and from configured external issuers.
pub struct JwtAuthenticator {
    config: JwtConfig,
    ring: Arc<KeyRing>,
    revocations: Arc<Revocations>,
    dpop: Arc<DpopChecker>,
    external: Vec<Arc<ExternalIssuer>>,
    cache: quick_cache::sync::Cache<[u8; 32], Remembered>,
    /// Tokens an introspecting issuer called inactive, until when that answer stands.
    inactive: quick_cache::sync::Cache<[u8; 32], Timestamp>,
    challenges: Vec<String>,
}

impl JwtAuthenticator {
    /// An authenticator for tokens of `config.issuer`, signed by a key of `ring`; proofs of
    /// bound tokens checked by `dpop`.
    pub fn new(
        config: JwtConfig,
        ring: Arc<KeyRing>,
        revocations: Arc<Revocations>,
        dpop: Arc<DpopChecker>,
    ) -> Self {
        Self {
            revocations,
            dpop,
            external: Vec::new(),
            cache: quick_cache::sync::Cache::new(config.cache_capacity.max(1)),
            inactive: quick_cache::sync::Cache::new((config.cache_capacity / 10).max(1)),
            challenges: vec![
                "Bearer realm=\"portcullis\"".to_owned(),
                format!(
                    "DPoP realm=\"portcullis\", algs=\"{}\"",
                    DpopChecker::algs()
                ),
            ],
            config,
            ring,
        }
    }

    /// Also trusts `issuers` (on the routes that name them in `jwt_issuers`).
    pub fn with_issuers(mut self, issuers: Vec<Arc<ExternalIssuer>>) -> Self {
        self.external = issuers;
        self
    }

    /// Whether `route` trusts tokens from `source`.
    fn trusted(&self, route: &RouteAuth, source: Source) -> bool {
        let name = match source {
            Source::Own => OWN_ISSUER,
            Source::External(i) => &self.external[i].settings().name,
        };
        match &route.jwt_issuers {
            None => source == Source::Own,
            Some(names) => names.iter().any(|n| n == name),
        }
    }

    /// Who issued `jws`, by its (unverified) `iss`: it only picks whose keys and rules the
    /// token is then verified under.
    fn source(&self, jws: &Jws<'_>) -> Result<Source, AuthError> {
        if self.external.is_empty() {
            return Ok(Source::Own);
        }
        #[derive(serde::Deserialize)]
        struct Iss<'a> {
            #[serde(default, borrow)]
            iss: Option<std::borrow::Cow<'a, str>>,
        }
        let iss = serde_json::from_slice::<Iss<'_>>(jws.unverified_payload())
            .ok()
            .and_then(|i| i.iss);
        match iss.as_deref() {
            Some(i) if i == self.config.issuer => Ok(Source::Own),
            Some(i) => self
                .external
                .iter()
                .position(|e| e.settings().issuer == i)
                .map(Source::External)
                .ok_or(AuthError::Token(TokenError::Invalid)),
            None => Err(AuthError::Token(TokenError::Invalid)),
        }
    }

    /// Verifies a token not in the cache, or says what it needs first.
    fn verify(
        &self,
        token: &str,
        digest: &[u8; 32],
        route: &RouteAuth,
        now: Timestamp,
    ) -> Result<Result<Remembered, Pending>, AuthError> {
        let refuse = |e: JwtError| match e {
            JwtError::Expired => AuthError::Token(TokenError::Expired),
            other => {
                tracing::debug!(error = %other, "bearer token refused");
                AuthError::Token(TokenError::Invalid)
            }
        };
        if token.split('.').count() != 3 {
            return Ok(Err(match self.opaque_introspector(token, route) {
                Some(i) => Pending::Introspection(i),
                None => Pending::NotOurs,
            }));
        }
        let jws = Jws::parse(token, MAX_TOKEN_BYTES).map_err(|e| refuse(e.into()))?;
        let source = self.source(&jws)?;
        let (claims, proof, name) = match source {
            Source::Own => {
                let (c, p) = verify_own_token(
                    &self.ring,
                    &self.config.issuer,
                    &self.config.audiences,
                    self.config.leeway_secs,
                    &jws,
                    now,
                )
                .map_err(refuse)?;
                (c, p, None)
            }
            Source::External(i) if self.external[i].introspects() => {
                return Ok(Err(Pending::Introspection(i)));
            }
            Source::External(i) => {
                let issuer = &self.external[i];
                let Lookup::Found(key, algorithms) =
                    issuer.lookup(jws.header().kid.as_deref(), jws.algorithm())
                else {
                    return Ok(Err(Pending::Keys(i)));
                };
                let (c, p) = issuer
                    .verify(&jws, &key, &algorithms, now)
                    .map_err(refuse)?;
                (c, p, Some(issuer.settings().name.as_str()))
            }
        };
        let identity = |claims: jwt::Claims<'_>, credential: String, exp| {
            Identity::from_jwt(proof, identity_claims(claims, credential, exp))
        };
        remember(claims, name, digest, source, None, identity).map(Ok)
    }

    /// For an opaque (not JWS-shaped) bearer: the first issuer trusted on `route` that
    /// introspects its tokens, unless the token is one of our own API keys (the issuer would
    /// learn the key). `None`: the token is not this scheme's.
    fn opaque_introspector(&self, token: &str, route: &RouteAuth) -> Option<usize> {
        (0..self.external.len())
            .find(|&i| self.external[i].introspects() && self.trusted(route, Source::External(i)))
            .filter(|_| portcullis_core::api_key::is_native(token).is_err())
    }

    /// Asks issuer `i` about `token`, remembering the answer (an active one until its `exp`
    /// or the issuer's `cache_ttl`, whichever is first; an inactive one briefly).
    async fn introspect(
        &self,
        i: usize,
        token: &str,
        now: Timestamp,
    ) -> Result<Remembered, AuthError> {
        let issuer = &self.external[i];
        let digest = crypto::sha256(token.as_bytes());
        let invalid = AuthError::Token(TokenError::Invalid);
        match issuer.introspect(token, now).await {
            Ok(Introspected::Active(claims)) => {
                let ttl = issuer.settings().introspection.as_ref().map_or(0, |c| {
                    i64::try_from(c.cache_ttl.as_millis()).unwrap_or(i64::MAX)
                });
                let until = claims.exp.map_or(now.plus_millis(ttl), |e| {
                    Timestamp::from_secs(e).min(now.plus_millis(ttl))
                });
                let claims = jwt::Claims {
                    // Without exp the answer's time bounds it.
                    exp: claims.exp.or(Some(until.as_secs())),
                    ..*claims
                };
                let name = issuer.settings().name.as_str();
                let r = remember(
                    claims,
                    Some(name),
                    &digest,
                    Source::External(i),
                    Some(until),
                    |c, cred, exp| {
                        // Proven by the issuer's answer, not by a signature here.
                        let c = identity_claims(c, cred, exp);
                        Identity {
                            schemes: portcullis_core::identity::SchemeSet::one(Scheme::Jwt),
                            client_id: c.client_id,
                            subject: c.subject,
                            scopes: c.scopes,
                            credential_id: c.credential_id,
                            expires_at: c.expires_at,
                        }
                    },
                )?;
                self.cache.insert(digest, r.clone());
                Ok(r)
            }
            Ok(Introspected::Inactive) => {
                self.inactive
                    .insert(digest, now.plus_millis(INACTIVE_CACHE_SECS * 1000));
                Err(invalid)
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer.settings().name, error = %e, "token introspection failed");
                Err(AuthError::Unavailable)
            }
        }
    }

    /// The verified token, from the cache or verified now, or what it needs first.
    fn remembered(
        &self,
        token: &str,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Result<Result<Remembered, Pending>, AuthError> {
        let digest = crypto::sha256(token.as_bytes());
        let leeway = self.config.leeway_secs.saturating_mul(1000);
        match self.cache.get(&digest) {
            Some(r) if r.ask_again.is_some_and(|t| now >= t) => {
                // An introspection answer whose time is up: ask again.
                self.cache.remove(&digest);
            }
            Some(r) if now < r.exp.plus_millis(leeway) => return Ok(Ok(r)),
            Some(_) => {
                self.cache.remove(&digest);
                return Err(AuthError::Token(TokenError::Expired));
            }
            None => {}
        }
        if self.inactive.get(&digest).is_some_and(|until| now < until) {
            return Err(AuthError::Token(TokenError::Invalid));
        }
        let r = self.verify(token, &digest, route, now)?;
        if let Ok(r) = &r {
            self.cache.insert(digest, r.clone());
        }
        Ok(r)
    }

    /// What the route makes of a verified token: trusted issuer, not revoked.
    fn admit(&self, r: Remembered, route: &RouteAuth) -> Result<Quick, AuthError> {
        if !self.trusted(route, r.source) {
            tracing::debug!("token of an issuer this route does not trust");
            return Err(AuthError::Token(TokenError::Invalid));
        }
        // Checked on every request, cached or not: a revocation applies to the next one.
        if r.jti
            .as_deref()
            .is_some_and(|j| self.revocations.is_revoked(j))
        {
            return Err(AuthError::Token(TokenError::Invalid));
        }
        let authenticated = Authenticated {
            identity: r.identity,
            limits: None,
            consumed: Consumed {
                authorization: true,
                ..Consumed::default()
            },
        };
        Ok(Quick::Done(authenticated, r.jkt))
    }

    /// The decision without waiting: everything but a key refetch.
    fn decide_now(
        &self,
        token: &str,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Result<Quick, AuthError> {
        // The common case of a bearer that is not ours (an API key), without hashing it.
        if token.split('.').count() != 3 && self.opaque_introspector(token, route).is_none() {
            return Ok(Quick::NotOurs);
        }
        match self.remembered(token, route, now)? {
            Ok(r) => self.admit(r, route),
            Err(Pending::Keys(i)) => Ok(Quick::NeedsKeys(i)),
            Err(Pending::Introspection(i)) => Ok(Quick::NeedsIntrospection(i)),
            Err(Pending::NotOurs) => Ok(Quick::NotOurs),
        }
    }

    /// The decision, refetching an external issuer's keys once if the token's is not held,
    /// or asking the issuer about it; `Ok(None)`: not this scheme's token.
    #[allow(clippy::type_complexity)]
    async fn decide(
        &self,
        token: &str,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Result<Option<(Authenticated, Option<Arc<str>>)>, AuthError> {
        let quick = match self.decide_now(token, route, now)? {
            // No fetch or question on behalf of a route that would refuse the token anyway.
            Quick::NeedsKeys(i) | Quick::NeedsIntrospection(i)
                if !self.trusted(route, Source::External(i)) =>
            {
                return Err(AuthError::Token(TokenError::Invalid));
            }
            Quick::NeedsIntrospection(i) => {
                let r = self.introspect(i, token, now).await?;
                self.admit(r, route)?
            }
            Quick::NeedsKeys(i) => {
                let issuer = &self.external[i];
                let jws = Jws::parse(token, MAX_TOKEN_BYTES)
                    .map_err(|_| AuthError::Token(TokenError::Invalid))?;
                issuer
                    .lookup_or_refetch(jws.header().kid.as_deref(), jws.algorithm(), now)
                    .await;
                match self.decide_now(token, route, now)? {
                    Quick::NeedsKeys(_) if !issuer.has_keys() => {
                        // The issuer was never reached: not the token's fault.
                        return Err(AuthError::Unavailable);
                    }
                    Quick::NeedsKeys(_) => {
                        tracing::debug!(issuer = %issuer.settings().name, "no published key for the token");
                        return Err(AuthError::Token(TokenError::Invalid));
                    }
                    done => done,
                }
            }
            done => done,
        };
        match quick {
            Quick::Done(a, jkt) => Ok(Some((a, jkt))),
            Quick::NotOurs => Ok(None),
            Quick::NeedsKeys(_) | Quick::NeedsIntrospection(_) => {
                Err(AuthError::Token(TokenError::Invalid))
            }
        }
    }

    /// A `DPoP` token: bound to a key, with one proof of that key for this request.
    async fn decide_dpop(
        &self,
        req: &RequestParts<'_>,
        route: &RouteAuth,
        token: &str,
        now: Timestamp,
    ) -> Result<Authenticated, AuthError> {
        let (authenticated, jkt) = self
            .decide(token, route, now)
            .await?
            .ok_or(AuthError::Token(TokenError::Invalid))?;
        // An unbound token proves nothing more for being sent as DPoP.
        let jkt = jkt.ok_or(AuthError::Token(TokenError::Invalid))?;
        let refused = |why: &dyn std::fmt::Display| {
            tracing::debug!(reason = %why, "DPoP proof refused");
            AuthError::Token(TokenError::DpopProof)
        };
        let proof = match proof_header(req.headers) {
            Ok(Some(p)) => p,
            Ok(None) => return Err(refused(&"no DPoP proof")),
            Err(e) => return Err(refused(&e)),
        };
        let htu = req
            .target_uri()
            .ok_or_else(|| refused(&"the request names no authority"))?;
        let checked = ProofRequest {
            proof,
            method: req.method.as_str(),
            htu: &htu,
            access_token: Some(token),
        };
        match self.dpop.check(&checked, now).await {
            Ok(p) if p.jkt.as_str() == &*jkt => Ok(authenticated),
            Ok(_) => Err(refused(&"proof of another key")),
            Err(DpopRefusal::Unavailable) => Err(AuthError::Unavailable),
            Err(DpopRefusal::Proof(DpopError::NonceRequired)) => {
                Err(AuthError::Token(TokenError::DpopNonce))
            }
            Err(e) => Err(refused(&e)),
        }
    }
}

/// The facts of a verified token's claims.
fn identity_claims(claims: jwt::Claims<'_>, credential: String, exp: Timestamp) -> IdentityClaims {
    IdentityClaims {
        client_id: claims.client().map(Into::into),
        subject: claims.sub.map(Into::into),
        scopes: ScopeSet::default(),
        credential_id: credential.into(),
        expires_at: Some(exp),
    }
}

/// What is remembered of a verified token: its identity (made by `identity` from the claims,
/// the credential id and the expiry), `jti` for revocation (own tokens), and its DPoP key.
fn remember<'c>(
    claims: jwt::Claims<'c>,
    issuer_name: Option<&str>,
    digest: &[u8; 32],
    source: Source,
    ask_again: Option<Timestamp>,
    identity: impl FnOnce(jwt::Claims<'c>, String, Timestamp) -> Identity,
) -> Result<Remembered, AuthError> {
    let invalid = AuthError::Token(TokenError::Invalid);
    let scopes = ScopeSet::parse(claims.scopes()).map_err(|_| invalid.clone())?;
    let jkt = match claims.cnf.as_ref().map(|c| c.jkt.as_deref()) {
        None => None,
        Some(Some(j)) if !j.is_empty() && j.len() <= 128 => Some(Arc::from(j)),
        // A confirmation this scheme cannot check (a certificate binding): never ignored.
        Some(_) => return Err(invalid),
    };
    let exp = Timestamp::from_secs(claims.exp.unwrap_or_default());
    // Own tokens always carry a jti (the revocations go by it); an external one may not:
    // it is then named by a prefix of the token's hash.
    let (jti, credential) = match (issuer_name, claims.jti.as_deref()) {
        (None, Some(j)) => (Some(j.to_owned()), format!("jwt:{j}")),
        (None, None) => return Err(invalid),
        (Some(n), Some(j)) if j.len() <= 256 => (None, format!("jwt:{n}:{j}")),
        (Some(n), _) => (None, format!("jwt:{n}:#{}", crypto::hex(&digest[..8]))),
    };
    let mut identity = identity(claims, credential, exp);
    identity.scopes = scopes;
    Ok(Remembered {
        identity,
        jti,
        exp,
        ask_again,
        jkt,
        source,
    })
}

/// The token, if `Authorization` is `Bearer` (whether it is this scheme's is decided later:
/// a JWT, or an opaque token where an introspecting issuer is trusted) or `DPoP` (ours
/// whatever it is).
fn presented<'r>(req: &RequestParts<'r>) -> Result<Option<Presented<'r>>, AuthError> {
    let invalid = AuthError::Token(TokenError::Invalid);
    if let Some(t) = super::bearer_token(req).map_err(|()| invalid.clone())? {
        return Ok(Some(Presented::Bearer(t)));
    }
    let v = req
        .single_header(&http::header::AUTHORIZATION)
        .map_err(|()| invalid.clone())?;
    match v.and_then(|v| v.trim().split_once(' ')) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("dpop") => {
            let token = token.trim();
            if token.split('.').count() == 3 {
                Ok(Some(Presented::Dpop(token)))
            } else {
                Err(invalid)
            }
        }
        _ => Ok(None),
    }
}

/// Whether the query string carries `access_token=` (refused everywhere).
fn token_in_query(req: &RequestParts<'_>) -> bool {
    req.query.is_some_and(|q| {
        q.split('&')
            .any(|p| p == "access_token" || p.starts_with("access_token="))
    })
}

#[async_trait]
impl Authenticator for JwtAuthenticator {
    fn scheme(&self) -> Scheme {
        Scheme::Jwt
    }

    fn challenge(&self, _route: &RouteAuth) -> String {
        self.challenges[0].clone()
    }

    fn challenges(&self, _route: &RouteAuth) -> Vec<String> {
        self.challenges.clone()
    }

    fn authenticate_now(
        &self,
        req: &RequestParts<'_>,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Option<Result<Option<Authenticated>, AuthError>> {
        if token_in_query(req) {
            return Some(Err(AuthError::Token(TokenError::InQuery)));
        }
        match presented(req) {
            Err(e) => Some(Err(e)),
            Ok(None) => Some(Ok(None)),
            // The proof's replay check waits on the store.
            Ok(Some(Presented::Dpop(_))) => None,
            Ok(Some(Presented::Bearer(t))) => match self.decide_now(t, route, now) {
                Ok(Quick::Done(a, None)) => Some(Ok(Some(a))),
                // A bound token used as a bearer one: whoever holds it without the key may
                // not use it (RFC 9449 §7.2).
                Ok(Quick::Done(_, Some(_))) => Some(Err(AuthError::Token(TokenError::Invalid))),
                Ok(Quick::NotOurs) => Some(Ok(None)),
                // An issuer's key to fetch, or an issuer to ask, first.
                Ok(Quick::NeedsKeys(_) | Quick::NeedsIntrospection(_)) => None,
                Err(e) => Some(Err(e)),
            },
        }
    }

    async fn authenticate(
        &self,
        req: &RequestParts<'_>,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Result<Option<Authenticated>, AuthError> {
        if token_in_query(req) {
            return Err(AuthError::Token(TokenError::InQuery));
        }
        match presented(req)? {
            None => Ok(None),
            Some(Presented::Dpop(t)) => self.decide_dpop(req, route, t, now).await.map(Some),
            Some(Presented::Bearer(t)) => match self.decide(t, route, now).await? {
                None => Ok(None),
                Some((a, None)) => Ok(Some(a)),
                Some((_, Some(_))) => Err(AuthError::Token(TokenError::Invalid)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::RingConfig;
    use portcullis_core::crypto::seal::SealKey;
    use portcullis_core::crypto::sign::SigningKey;
    use portcullis_core::jose::Algorithm;
    use portcullis_store::memory::MemoryStore;

    const ISS: &str = "http://issuer.test";
    const NOW: i64 = 1_800_000_000;

    async fn setup() -> (JwtAuthenticator, Arc<KeyRing>) {
        let store = Arc::new(MemoryStore::new());
        let nonces: Arc<dyn portcullis_store::Nonces> = store.clone();
        let revocations = Arc::new(
            Revocations::load(store.clone(), Timestamp::EPOCH)
                .await
                .unwrap(),
        );
        let ring = Arc::new(
            KeyRing::open(
                store,
                SealKey::new(&[2; 32]),
                RingConfig::default(),
                Timestamp::from_secs(NOW),
            )
            .await
            .unwrap(),
        );
        let a = JwtAuthenticator::new(
            JwtConfig {
                issuer: ISS.into(),
                audiences: vec![ISS.into()],
                leeway_secs: 30,
                cache_capacity: 16,
            },
            ring.clone(),
            revocations,
            Arc::new(DpopChecker::new(nonces, 60)),
        );
        (a, ring)
    }

    /// A `GET /` with these fields and query.
    fn get<'a>(h: &'a http::HeaderMap, query: Option<&'a str>) -> RequestParts<'a> {
        RequestParts {
            method: &http::Method::GET,
            path: "/",
            query,
            scheme: "http",
            authority: None,
            headers: h,
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            conn: None,
            body: None,
        }
    }

    /// An external issuer `name` at `iss` with its JWKS at `jwks`, for `alg` tokens to
    /// `https://api.example`.
    fn external(
        name: &str,
        iss: &str,
        jwks: &str,
        alg: Algorithm,
        fetch: Arc<dyn crate::authn::issuers::Fetch>,
    ) -> Arc<ExternalIssuer> {
        Arc::new(ExternalIssuer::new(
            crate::authn::issuers::IssuerSettings {
                name: name.into(),
                issuer: iss.into(),
                jwks_uri: Some(jwks.into()),
                algorithms: vec![alg],
                audiences: vec!["https://api.example".into()],
                typ: None,
                leeway_secs: 30,
                min_refetch: std::time::Duration::from_secs(60),
                introspection: None,
            },
            fetch,
        ))
    }

    fn mint(ring: &KeyRing, typ: Option<&str>, claims: serde_json::Value) -> String {
        ring.signer(Timestamp::from_secs(NOW))
            .unwrap()
            .sign(typ, claims.to_string().as_bytes())
            .unwrap()
    }

    fn good() -> serde_json::Value {
        serde_json::json!({"iss": ISS, "sub": "cl_1", "aud": ISS, "exp": NOW + 900, "iat": NOW,
            "jti": "j1", "client_id": "cl_1", "scope": "read:echo"})
    }

    fn run(
        a: &JwtAuthenticator,
        auth: Option<&str>,
        query: Option<&str>,
        now: i64,
    ) -> Result<Option<Authenticated>, AuthError> {
        let mut h = http::HeaderMap::new();
        if let Some(v) = auth {
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        }
        let req = get(&h, query);
        a.authenticate_now(&req, &RouteAuth::default(), Timestamp::from_secs(now))
            .unwrap()
    }

    #[tokio::test]
    async fn tokens_of_our_issuer_pass_and_others_fail_with_the_right_code() {
        let (a, ring) = setup().await;
        let t = mint(&ring, Some("at+jwt"), good());
        let ok = run(&a, Some(&format!("Bearer {t}")), None, NOW)
            .unwrap()
            .unwrap();
        assert_eq!(ok.identity.credential_id.as_ref(), "jwt:j1");
        assert_eq!(ok.identity.client_id.as_deref(), Some("cl_1"));
        assert_eq!(ok.identity.scopes.as_space_separated(), "read:echo");
        assert!(ok.consumed.authorization);
        // Again, from the cache; and past its exp, expired even from the cache.
        assert!(run(&a, Some(&format!("Bearer {t}")), None, NOW + 10)
            .unwrap()
            .is_some());
        assert_eq!(
            run(&a, Some(&format!("Bearer {t}")), None, NOW + 931).unwrap_err(),
            AuthError::Token(TokenError::Expired)
        );

        // Not this scheme's: no header, another scheme, a bearer that is not a JWS.
        assert!(run(&a, None, None, NOW).unwrap().is_none());
        assert!(run(&a, Some("Basic YTpi"), None, NOW).unwrap().is_none());
        assert!(run(&a, Some("Bearer pk_live_abc"), None, NOW)
            .unwrap()
            .is_none());

        let invalid = AuthError::Token(TokenError::Invalid);
        let with = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = good();
            f(&mut v);
            mint(&ring, Some("at+jwt"), v)
        };
        let other = SigningKey::generate(Algorithm::Es256).unwrap();
        let foreign = portcullis_core::jose::sign_compact(
            &other,
            &ring.keys()[0].record.kid,
            Some("at+jwt"),
            good().to_string().as_bytes(),
        )
        .unwrap();
        for (t, want) in [
            (
                with(&|v| v["iss"] = "http://evil.test".into()),
                invalid.clone(),
            ),
            (
                with(&|v| v["aud"] = "http://other.test".into()),
                invalid.clone(),
            ),
            (
                with(&|v| v["exp"] = (NOW - 60).into()),
                AuthError::Token(TokenError::Expired),
            ),
            (
                with(&|v| {
                    v.as_object_mut().unwrap().remove("jti");
                }),
                invalid.clone(),
            ),
            (mint(&ring, Some("JWT"), good()), invalid.clone()),
            (foreign, invalid.clone()),
            (
                format!("{}x", mint(&ring, Some("at+jwt"), good())),
                invalid.clone(),
            ),
            ("a.b.c".to_owned(), invalid.clone()),
            (
                format!("{}.{}.{}", "a".repeat(5000), "b".repeat(5000), "c"),
                invalid.clone(),
            ),
        ] {
            assert_eq!(
                run(&a, Some(&format!("Bearer {t}")), None, NOW).unwrap_err(),
                want,
                "{t}"
            );
        }
        // In the query string: refused, whatever else is sent.
        assert_eq!(
            run(&a, None, Some("x=1&access_token=abc"), NOW).unwrap_err(),
            AuthError::Token(TokenError::InQuery)
        );
    }

    /// `authenticate` (the full path, proof replay check included) for a request to
    /// `http://api.test/orders` with these fields.
    async fn run_full(
        a: &JwtAuthenticator,
        fields: &[(&str, &str)],
        now: i64,
    ) -> Result<Option<Authenticated>, AuthError> {
        let mut h = http::HeaderMap::new();
        for (n, v) in fields {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let req = RequestParts {
            method: &http::Method::POST,
            path: "/orders",
            query: Some("x=1"),
            scheme: "http",
            authority: Some("api.test"),
            headers: &h,
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            conn: None,
            body: None,
        };
        a.authenticate(&req, &RouteAuth::default(), Timestamp::from_secs(now))
            .await
    }

    fn dpop_proof(key: &SigningKey, token: &str, jti: &str, htu: &str) -> String {
        portcullis_core::dpop::sign_proof(
            key,
            &portcullis_core::dpop::NewProof {
                htm: "POST",
                htu,
                access_token: Some(token),
                nonce: None,
                jti,
                iat: NOW,
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn bound_tokens_need_a_fresh_proof_of_their_key_and_unbound_ones_a_bearer() {
        let (a, ring) = setup().await;
        let holder = SigningKey::generate(Algorithm::Es256).unwrap();
        let jkt = portcullis_core::jose::Jwk::from_public(&holder.public_key(), Algorithm::Es256)
            .unwrap()
            .thumbprint()
            .unwrap();
        let mut claims = good();
        claims["cnf"] = serde_json::json!({ "jkt": jkt });
        let bound = mint(&ring, Some("at+jwt"), claims);
        let htu = "http://api.test/orders";
        let auth = format!("DPoP {bound}");
        let p1 = dpop_proof(&holder, &bound, "p1", htu);

        let ok = run_full(&a, &[("authorization", &auth), ("dpop", &p1)], NOW)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(ok.identity.client_id.as_deref(), Some("cl_1"));
        assert!(ok.consumed.authorization);
        // The sync path defers DPoP to the async one.
        let mut h = http::HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
        let parts = RequestParts {
            method: &http::Method::POST,
            path: "/orders",
            query: None,
            scheme: "http",
            authority: Some("api.test"),
            headers: &h,
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            conn: None,
            body: None,
        };
        assert!(a
            .authenticate_now(&parts, &RouteAuth::default(), Timestamp::from_secs(NOW))
            .is_none());

        let dpop_refused = AuthError::Token(TokenError::DpopProof);
        let stranger = SigningKey::generate(Algorithm::Es256).unwrap();
        let other_token = mint(&ring, Some("at+jwt"), good());
        for (fields, want) in [
            // The same proof again: a replay.
            (
                vec![("authorization", auth.clone()), ("dpop", p1.clone())],
                dpop_refused.clone(),
            ),
            // No proof; two proofs; a proof by another key; for another URI; naming another
            // token.
            (vec![("authorization", auth.clone())], dpop_refused.clone()),
            (
                vec![
                    ("authorization", auth.clone()),
                    ("dpop", dpop_proof(&holder, &bound, "p2", htu)),
                    ("dpop", dpop_proof(&holder, &bound, "p3", htu)),
                ],
                dpop_refused.clone(),
            ),
            (
                vec![
                    ("authorization", auth.clone()),
                    ("dpop", dpop_proof(&stranger, &bound, "p4", htu)),
                ],
                dpop_refused.clone(),
            ),
            (
                vec![
                    ("authorization", auth.clone()),
                    (
                        "dpop",
                        dpop_proof(&holder, &bound, "p5", "http://other.test/orders"),
                    ),
                ],
                dpop_refused.clone(),
            ),
            (
                vec![
                    ("authorization", auth.clone()),
                    ("dpop", dpop_proof(&holder, &other_token, "p6", htu)),
                ],
                dpop_refused.clone(),
            ),
            // The bound token as a plain bearer: whoever stole it lacks the key.
            (
                vec![("authorization", format!("Bearer {bound}"))],
                AuthError::Token(TokenError::Invalid),
            ),
            // An unbound token sent as DPoP, even with a proof.
            (
                vec![
                    ("authorization", format!("DPoP {other_token}")),
                    ("dpop", dpop_proof(&holder, &other_token, "p7", htu)),
                ],
                AuthError::Token(TokenError::Invalid),
            ),
            (
                vec![("authorization", "DPoP not-a-jwt".to_owned())],
                AuthError::Token(TokenError::Invalid),
            ),
        ] {
            let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
            assert_eq!(
                run_full(&a, &fields, NOW).await.unwrap_err(),
                want,
                "{fields:?}"
            );
        }
        // A fresh proof still works after all those refusals; the unbound token as a bearer too.
        let p8 = dpop_proof(&holder, &bound, "p8", "http://API.test:80/orders");
        assert!(
            run_full(&a, &[("authorization", &auth), ("dpop", &p8)], NOW)
                .await
                .is_ok()
        );
        let plain = format!("Bearer {other_token}");
        assert!(run_full(&a, &[("authorization", &plain)], NOW)
            .await
            .unwrap()
            .is_some());
        assert_eq!(a.challenges(&RouteAuth::default()).len(), 2);
        assert!(a.challenges(&RouteAuth::default())[1].starts_with("DPoP "));
    }

    #[tokio::test]
    async fn external_issuers_tokens_pass_only_on_routes_that_trust_them() {
        use crate::authn::issuers::tests::{jwk, FakeFetch};
        const EXT: &str = "https://idp.example";
        let (a, ring) = setup().await;
        let fetch = Arc::new(FakeFetch::default());
        let idp_key = SigningKey::generate(Algorithm::Rs256).unwrap();
        let jwks = "https://idp.example/jwks";
        fetch.put(jwks, serde_json::json!({"keys": [jwk(&idp_key, "r1")]}));
        let issuer = external("idp", EXT, jwks, Algorithm::Rs256, fetch.clone());
        let a = a.with_issuers(vec![issuer]);
        let ext_token = |kid: &str, key: &SigningKey, extra: serde_json::Value| {
            let mut c = serde_json::json!({"iss": EXT, "sub": "alice", "azp": "mobile",
                "aud": "https://api.example", "exp": NOW + 300, "scp": ["read:echo"]});
            for (k, v) in extra.as_object().unwrap() {
                c[k] = v.clone();
            }
            portcullis_core::jose::sign_compact(key, kid, None, c.to_string().as_bytes()).unwrap()
        };
        let t = ext_token("r1", &idp_key, serde_json::json!({}));
        let route = |names: &[&str]| RouteAuth {
            jwt_issuers: Some(names.iter().map(|n| n.to_string()).collect()),
            ..RouteAuth::default()
        };
        let call = |auth: String, route: RouteAuth| {
            let a = &a;
            async move {
                let mut h = http::HeaderMap::new();
                h.insert(http::header::AUTHORIZATION, auth.parse().unwrap());
                let req = get(&h, None);
                a.authenticate(&req, &route, Timestamp::from_secs(NOW))
                    .await
            }
        };
        // Keys not fetched yet: the first request fetches them.
        let ok = call(format!("Bearer {t}"), route(&["idp"]))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(fetch.gets(), 1);
        assert_eq!(ok.identity.client_id.as_deref(), Some("mobile"));
        assert_eq!(ok.identity.subject.as_deref(), Some("alice"));
        assert_eq!(ok.identity.scopes.as_space_separated(), "read:echo");
        assert!(ok.identity.credential_id.starts_with("jwt:idp:#"));
        // From the cache, on a route that trusts it, and on one that does not: the default
        // (own issuer only), or another list.
        let invalid = AuthError::Token(TokenError::Invalid);
        assert!(call(format!("Bearer {t}"), route(&["portcullis", "idp"]))
            .await
            .is_ok());
        assert_eq!(
            call(format!("Bearer {t}"), RouteAuth::default())
                .await
                .unwrap_err(),
            invalid
        );
        assert_eq!(
            call(format!("Bearer {t}"), route(&["portcullis"]))
                .await
                .unwrap_err(),
            invalid
        );
        // Our own tokens: on the default route and where listed, not on an idp-only route.
        let own = mint(&ring, Some("at+jwt"), good());
        assert!(call(format!("Bearer {own}"), RouteAuth::default())
            .await
            .is_ok());
        assert_eq!(
            call(format!("Bearer {own}"), route(&["idp"]))
                .await
                .unwrap_err(),
            invalid
        );
        // Forged for the idp (another key under its kid), an unknown issuer, another audience.
        let stranger = SigningKey::generate(Algorithm::Rs256).unwrap();
        for bad in [
            ext_token("r1", &stranger, serde_json::json!({})),
            ext_token(
                "r1",
                &idp_key,
                serde_json::json!({"iss": "https://other.example"}),
            ),
            ext_token(
                "r1",
                &idp_key,
                serde_json::json!({"aud": "https://else.example"}),
            ),
            ext_token("zz", &idp_key, serde_json::json!({"jti": "x"})),
        ] {
            assert_eq!(
                call(format!("Bearer {bad}"), route(&["idp"]))
                    .await
                    .unwrap_err(),
                invalid
            );
        }
        // The unknown kid refetched once (the first fetch was at NOW: not again yet).
        assert_eq!(fetch.gets(), 1);
    }

    #[tokio::test]
    async fn an_issuer_never_reached_is_unavailable_not_an_invalid_token() {
        use crate::authn::issuers::tests::FakeFetch;
        let (a, _ring) = setup().await;
        let issuer = external(
            "down",
            "https://down.example",
            "https://down.example/jwks",
            Algorithm::Es256,
            Arc::new(FakeFetch::default()),
        );
        let a = a.with_issuers(vec![issuer]);
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let claims = serde_json::json!({"iss": "https://down.example", "aud": "https://api.example", "exp": NOW + 60});
        let t = portcullis_core::jose::sign_compact(&key, "k", None, claims.to_string().as_bytes())
            .unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        let req = get(&h, None);
        let route = RouteAuth {
            jwt_issuers: Some(vec!["down".to_owned()].into()),
            ..RouteAuth::default()
        };
        assert!(a
            .authenticate_now(&req, &route, Timestamp::from_secs(NOW))
            .is_none());
        assert_eq!(
            a.authenticate(&req, &route, Timestamp::from_secs(NOW))
                .await
                .unwrap_err(),
            AuthError::Unavailable
        );
    }

    #[tokio::test]
    async fn opaque_tokens_are_introspected_where_an_introspecting_issuer_is_trusted() {
        use crate::authn::issuers::tests::FakeFetch;
        use crate::authn::issuers::{IntrospectionSettings, IssuerSettings};
        let (a, _ring) = setup().await;
        let fetch = Arc::new(FakeFetch::default());
        let endpoint = "https://as.example/introspect";
        let answer = |token: &str, v: serde_json::Value| {
            fetch.put(
                &format!("{endpoint} token={token}&token_type_hint=access_token"),
                v,
            );
        };
        answer(
            "opaque-1",
            serde_json::json!({"active": true, "client_id": "partner",
            "scope": "read:echo", "exp": NOW + 600, "jti": "o1"}),
        );
        answer("opaque-2", serde_json::json!({"active": false}));
        let issuer = Arc::new(ExternalIssuer::new(
            IssuerSettings {
                name: "as".into(),
                issuer: "https://as.example".into(),
                jwks_uri: None,
                algorithms: vec![Algorithm::Rs256],
                audiences: vec!["https://api.example".into()],
                typ: None,
                leeway_secs: 0,
                min_refetch: std::time::Duration::from_secs(60),
                introspection: Some(IntrospectionSettings {
                    endpoint: endpoint.into(),
                    client_id: "gw".into(),
                    client_secret: portcullis_core::secret::Secret::new("s".into()),
                    cache_ttl: std::time::Duration::from_secs(30),
                }),
            },
            fetch.clone(),
        ));
        let a = a.with_issuers(vec![issuer]);
        let trusting = RouteAuth {
            jwt_issuers: Some(vec!["as".to_owned()].into()),
            ..RouteAuth::default()
        };
        let call = |token: &str, route: &RouteAuth, at: i64| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
            let route = route.clone();
            let a = &a;
            async move {
                a.authenticate(&get(&h, None), &route, Timestamp::from_secs(at))
                    .await
            }
        };
        let ok = call("opaque-1", &trusting, NOW).await.unwrap().unwrap();
        assert_eq!(ok.identity.client_id.as_deref(), Some("partner"));
        assert_eq!(ok.identity.credential_id.as_ref(), "jwt:as:o1");
        assert_eq!(fetch.gets(), 1);
        // From the cache within its time; asked again after it.
        assert!(call("opaque-1", &trusting, NOW + 29).await.is_ok());
        assert_eq!(fetch.gets(), 1);
        assert!(call("opaque-1", &trusting, NOW + 31).await.is_ok());
        assert_eq!(fetch.gets(), 2);
        // Inactive: refused, and not asked again at once.
        let invalid = AuthError::Token(TokenError::Invalid);
        assert_eq!(call("opaque-2", &trusting, NOW).await.unwrap_err(), invalid);
        assert_eq!(
            call("opaque-2", &trusting, NOW + 1).await.unwrap_err(),
            invalid
        );
        assert_eq!(fetch.gets(), 3);
        // The server cannot answer: fail closed, as unavailable.
        assert_eq!(
            call("opaque-3", &trusting, NOW).await.unwrap_err(),
            AuthError::Unavailable
        );
        // A route that does not trust it: an opaque bearer is not this scheme's (nothing
        // asked); nor is one of our API keys, anywhere.
        let before = fetch.gets();
        assert!(call("opaque-1", &RouteAuth::default(), NOW + 100)
            .await
            .unwrap()
            .is_none());
        let key = portcullis_core::api_key::generate(
            &portcullis_core::api_key::Prefix::new("pk_test").unwrap(),
            &[7; 32],
        );
        assert!(call(key.key.expose(), &trusting, NOW)
            .await
            .unwrap()
            .is_none());
        assert_eq!(fetch.gets(), before);
    }
}
