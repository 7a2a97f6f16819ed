//! The API-key authenticator: extract → parse (checksum, hash) → cached lookup → verify.
//!
//! Per request on a cache hit this is one CRC-32, one SHA-256, one hash-map probe and a few
//! reference-count increments, answered without waiting (`authenticate_now`); on a keep-alive
//! connection that presents the key it presented before, the CRC-32 and the SHA-256 are a
//! comparison with the connection's memo. The cache is invalidated by the admin use cases on every
//! change, and entries also age out (`positive_ttl`, `negative_ttl`) so that a change made by
//! another instance is seen within bounded time.

use std::sync::Arc;

use async_trait::async_trait;
use http::HeaderName;
use portcullis_core::api_key::{self, Kind};
use portcullis_core::crypto::Sha256Digest;
use portcullis_core::identity::Claims;
use portcullis_core::ratelimit::{Algorithm, Limit};
use portcullis_core::{AuthError, Identity, RequestParts, Scheme, ScopeSet, Timestamp};
use portcullis_store::{ApiKeyRecord, ApiKeys};

use super::{Authenticated, Authenticator, Consumed, CredentialLimits, Quota, RouteAuth};
use crate::usage::UsageTracker;

/// Settings of the API-key scheme.
#[derive(Debug, Clone)]
pub struct ApiKeyConfig {
    /// Header that carries the key (default `X-API-Key`).
    pub header: HeaderName,
    /// Also accept `Authorization: Bearer <key>`.
    pub accept_bearer: bool,
    /// Accept keys of foreign formats (imported from other gateways), recognised by hash.
    pub allow_foreign: bool,
    /// Keys kept in the lookup cache.
    pub cache_capacity: usize,
    /// How long a found key is trusted from cache (ms).
    pub positive_ttl_ms: i64,
    /// How long "no such key" is remembered (ms).
    pub negative_ttl_ms: i64,
}

impl Default for ApiKeyConfig {
    fn default() -> Self {
        Self {
            header: HeaderName::from_static("x-api-key"),
            accept_bearer: true,
            allow_foreign: false,
            cache_capacity: 100_000,
            positive_ttl_ms: 30_000,
            negative_ttl_ms: 5_000,
        }
    }
}

/// What the hot path needs of a stored key, prepared once per cache fill.
#[derive(Debug)]
pub struct CachedKey {
    id: Arc<str>,
    hash: Sha256Digest,
    revoked_at: Option<Timestamp>,
    expires_at: Option<Timestamp>,
    owner: Option<Arc<str>>,
    scopes: ScopeSet,
    limits: Option<Arc<CredentialLimits>>,
}

impl CachedKey {
    /// Prepares a record for the hot path. Invalid stored scopes or limits are skipped (and
    /// cannot occur for records written through the admin API, which validates them).
    pub fn from_record(r: &ApiKeyRecord) -> Self {
        let scopes = ScopeSet::parse(&r.scopes).unwrap_or_default();
        let rate_limits: Vec<(Arc<str>, Limit)> = r
            .rate_limits
            .iter()
            .filter_map(|l| {
                let algorithm = Algorithm::from_name(&l.algorithm)?;
                let limit = Limit {
                    algorithm,
                    limit: l.limit.max(1),
                    period_ms: l.period_ms.max(1),
                    burst: l.burst.unwrap_or(l.limit).max(1),
                };
                Some((Arc::from(format!("k:{}:{}", r.id, l.name)), limit))
            })
            .collect();
        let quota = r.quota.as_ref().map(|q| Quota {
            limit: q.limit,
            refill_ms: q.refill_ms.max(1),
            anchor: r.created_at,
        });
        let limits = (!rate_limits.is_empty() || quota.is_some())
            .then(|| Arc::new(CredentialLimits { rate_limits, quota }));
        Self {
            id: r.id.as_str().into(),
            hash: r.hash,
            revoked_at: r.revoked_at,
            expires_at: r.expires_at,
            owner: r.owner.as_deref().map(Into::into),
            scopes,
            limits,
        }
    }
}

#[derive(Clone)]
struct Entry {
    key: Option<Arc<CachedKey>>,
    fetched_at: Timestamp,
}

/// The lookup cache, shared with the admin use cases that invalidate it.
pub struct KeyCache {
    cache: quick_cache::sync::Cache<Sha256Digest, Entry>,
}

impl KeyCache {
    /// A cache holding up to `capacity` keys.
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: quick_cache::sync::Cache::new(capacity.max(16)),
        }
    }

    /// Forgets what is cached for `hash` (call after any change to that key).
    pub fn invalidate(&self, hash: &Sha256Digest) {
        self.cache.remove(hash);
    }
}

/// Authenticates API keys.
pub struct ApiKeyAuthenticator {
    config: ApiKeyConfig,
    store: Arc<dyn ApiKeys>,
    cache: Arc<KeyCache>,
    usage: Arc<UsageTracker>,
    challenge: String,
}

impl ApiKeyAuthenticator {
    /// An authenticator over `store`, sharing `cache` with the admin use cases.
    pub fn new(
        config: ApiKeyConfig,
        store: Arc<dyn ApiKeys>,
        cache: Arc<KeyCache>,
        usage: Arc<UsageTracker>,
    ) -> Self {
        let challenge = format!(
            "ApiKey realm=\"portcullis\", header=\"{}\"",
            config.header.as_str()
        );
        Self {
            config,
            store,
            cache,
            usage,
            challenge,
        }
    }

    /// Finds the presented key text and where it was, without judging it.
    fn extract<'r>(
        &self,
        req: &RequestParts<'r>,
        route: &RouteAuth,
    ) -> Result<Option<(&'r str, Consumed)>, AuthError> {
        let header = req
            .single_header(&self.config.header)
            .map_err(|()| api_key::Error::Ambiguous)?;
        let bearer = if self.config.accept_bearer {
            bearer_token(req)?.filter(|t| self.looks_like_key(t))
        } else {
            None
        };
        let query = route
            .api_key_query_param
            .as_deref()
            .and_then(|p| req.query_param(p))
            .filter(|v| !v.is_empty());
        let mut found: Option<(&str, Consumed)> = None;
        for (value, consumed) in [
            (
                header,
                Consumed {
                    api_key_header: true,
                    ..Consumed::default()
                },
            ),
            (
                bearer,
                Consumed {
                    authorization: true,
                    ..Consumed::default()
                },
            ),
            (
                query,
                Consumed {
                    query_param: true,
                    ..Consumed::default()
                },
            ),
        ] {
            let Some(v) = value else { continue };
            found = match found {
                None => Some((v, consumed)),
                Some((prev, c)) if prev == v => Some((prev, c.union(consumed))),
                Some(_) => return Err(api_key::Error::Ambiguous.into()),
            };
        }
        Ok(found)
    }

    /// Whether a bearer token is ours to judge (a JWT or another scheme's token is not).
    fn looks_like_key(&self, token: &str) -> bool {
        if api_key::is_native(token).is_ok() {
            return true;
        }
        // A native-looking key with a bad checksum is still "ours" (so it is refused, not
        // passed on); JWTs (three dot-separated parts) never are.
        let jwt_like = token.split('.').count() == 3;
        !jwt_like
            && (self.config.allow_foreign
                || token
                    .rsplit_once('_')
                    .is_some_and(|(p, _)| api_key::Prefix::new(p).is_ok()))
    }

    /// The key text presented and what parsing made of it; `None`: no key was presented.
    fn presented(
        &self,
        req: &RequestParts<'_>,
        route: &RouteAuth,
    ) -> Result<Option<(api_key::Parsed, Consumed)>, AuthError> {
        let Some((raw, consumed)) = self.extract(req, route)? else {
            return Ok(None);
        };
        let parsed = match req.conn {
            Some(c) => c.api_key.parse(raw, self.config.allow_foreign),
            None => api_key::parse(raw, self.config.allow_foreign),
        }?;
        Ok(Some((parsed, consumed)))
    }

    /// The cache's answer for `hash` (found, or known not to exist), unless it has none or
    /// its answer is older than the configured time to live.
    fn cached(&self, hash: &Sha256Digest, now: Timestamp) -> Option<Option<Arc<CachedKey>>> {
        let e = self.cache.cache.get(hash)?;
        let ttl = if e.key.is_some() {
            self.config.positive_ttl_ms
        } else {
            self.config.negative_ttl_ms
        };
        (now.millis_since(e.fetched_at) < ttl).then_some(e.key)
    }

    /// The store's answer for `hash`, remembered in the cache.
    async fn fetch(
        &self,
        hash: &Sha256Digest,
        now: Timestamp,
    ) -> Result<Option<Arc<CachedKey>>, AuthError> {
        let record = self.store.find_by_hash(hash).await.map_err(|e| {
            tracing::error!(error = %e, "api key lookup failed");
            AuthError::Unavailable
        })?;
        let key = record.as_ref().map(|r| Arc::new(CachedKey::from_record(r)));
        self.cache.cache.insert(
            *hash,
            Entry {
                key: key.clone(),
                fetched_at: now,
            },
        );
        Ok(key)
    }

    /// The decision once the key found by hash (or its absence) is known.
    fn judge(
        &self,
        parsed: &api_key::Parsed,
        key: Option<Arc<CachedKey>>,
        consumed: Consumed,
        req: &RequestParts<'_>,
        now: Timestamp,
    ) -> Result<Option<Authenticated>, AuthError> {
        let Some(key) = key else {
            return Err(api_key::Error::Unknown.into());
        };
        if parsed.kind == Kind::Foreign && !self.config.allow_foreign {
            return Err(api_key::Error::Malformed.into());
        }
        let stored = api_key::Stored {
            hash: &key.hash,
            revoked_at: key.revoked_at,
            expires_at: key.expires_at,
        };
        let proof = api_key::verify(parsed, &stored, now)?;
        self.usage.record(&key.id, req.client_ip, now);
        let identity = Identity::from_api_key(
            proof,
            Claims {
                client_id: key.owner.clone(),
                subject: None,
                scopes: key.scopes.clone(),
                credential_id: key.id.clone(),
                expires_at: key.expires_at,
            },
        );
        Ok(Some(Authenticated {
            identity,
            limits: key.limits.clone(),
            consumed,
        }))
    }
}

/// The bearer token, if any (a repeated `Authorization` is an ambiguous key).
fn bearer_token<'r>(req: &RequestParts<'r>) -> Result<Option<&'r str>, AuthError> {
    super::bearer_token(req).map_err(|()| api_key::Error::Ambiguous.into())
}

#[async_trait]
impl Authenticator for ApiKeyAuthenticator {
    fn scheme(&self) -> Scheme {
        Scheme::ApiKey
    }

    fn challenge(&self, _route: &RouteAuth) -> String {
        self.challenge.clone()
    }

    fn authenticate_now(
        &self,
        req: &RequestParts<'_>,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Option<Result<Option<Authenticated>, AuthError>> {
        let (parsed, consumed) = match self.presented(req, route) {
            Ok(Some(p)) => p,
            Ok(None) => return Some(Ok(None)),
            Err(e) => return Some(Err(e)),
        };
        // A cache miss goes to the store: `authenticate` then starts again (the connection's
        // memo makes the second parse a comparison).
        let key = self.cached(&parsed.hash, now)?;
        Some(self.judge(&parsed, key, consumed, req, now))
    }

    async fn authenticate(
        &self,
        req: &RequestParts<'_>,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Result<Option<Authenticated>, AuthError> {
        let Some((parsed, consumed)) = self.presented(req, route)? else {
            return Ok(None);
        };
        let key = match self.cached(&parsed.hash, now) {
            Some(key) => key,
            None => self.fetch(&parsed.hash, now).await?,
        };
        self.judge(&parsed, key, consumed, req, now)
    }

    /// From the store, not the cache: a long-lived connection asks seldom, and must see a
    /// revocation made on another instance as soon as the store has it.
    async fn reverify(
        &self,
        identity: &Identity,
        now: Timestamp,
    ) -> Result<Option<Identity>, AuthError> {
        let record = self
            .store
            .find(&identity.credential_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "api key lookup failed");
                AuthError::Unavailable
            })?;
        let Some(r) = record else {
            return Ok(None);
        };
        let over = |t: Option<Timestamp>| t.is_some_and(|t| t <= now);
        if over(r.revoked_at) || over(r.expires_at) {
            return Ok(None);
        }
        let key = CachedKey::from_record(&r);
        Ok(Some(Identity {
            client_id: key.owner,
            scopes: key.scopes,
            expires_at: key.expires_at,
            ..identity.clone()
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use portcullis_core::api_key::Prefix;
    use portcullis_store::conformance::sample_key;
    use portcullis_store::memory::MemoryStore;

    /// What a result says, comparable (an identity is not `PartialEq`).
    fn outcome(r: &Result<Option<Authenticated>, AuthError>) -> String {
        match r {
            Ok(Some(a)) => format!(
                "ok {} {:?} {}",
                a.identity.credential_id,
                a.identity.scopes.as_space_separated(),
                a.limits.as_ref().map_or(0, |l| l.rate_limits.len())
            ),
            Ok(None) => "none".into(),
            Err(e) => format!("err {e:?}"),
        }
    }

    #[tokio::test]
    async fn reverifying_reads_the_store_not_the_cache() {
        let now = Timestamp::from_secs(1_800_000_000);
        let store = Arc::new(MemoryStore::new());
        store.insert(&sample_key(1)).await.unwrap();
        let auth = ApiKeyAuthenticator::new(
            ApiKeyConfig::default(),
            store.clone(),
            Arc::new(KeyCache::new(16)),
            Arc::new(UsageTracker::new(store.clone())),
        );
        let claims = |id: &str| Claims {
            client_id: None,
            subject: None,
            scopes: ScopeSet::default(),
            credential_id: id.into(),
            expires_at: None,
        };
        let proof = |id: &str| {
            let g = api_key::generate(&Prefix::new("pk_test").unwrap(), &[1; 32]);
            let parsed = api_key::parse(g.key.expose(), false).unwrap();
            let stored = api_key::Stored {
                hash: &parsed.hash,
                revoked_at: None,
                expires_at: None,
            };
            Identity::from_api_key(api_key::verify(&parsed, &stored, now).unwrap(), claims(id))
        };
        let fresh = auth
            .reverify(&proof("key_001"), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            fresh.scopes.as_space_separated(),
            "read:echo write:x",
            "the stored scopes"
        );
        assert_eq!(fresh.client_id.as_deref(), Some("odd"));
        assert!(auth
            .reverify(&proof("key_nope"), now)
            .await
            .unwrap()
            .is_none());
        store.revoke("key_001", now).await.unwrap();
        assert!(
            auth.reverify(&proof("key_001"), now)
                .await
                .unwrap()
                .is_none(),
            "revoked"
        );
    }

    #[tokio::test]
    async fn answering_from_memory_gives_what_authenticate_gives() {
        let now = Timestamp::from_secs(1_800_000_000);
        let store = Arc::new(MemoryStore::new());
        let prefix = Prefix::new("pk_test").unwrap();
        let mut raws = Vec::new();
        for (n, revoked, expired) in [(1u8, false, false), (2, true, false), (3, false, true)] {
            let g = api_key::generate(&prefix, &[n; 32]);
            raws.push(g.key.expose().to_owned());
            store
                .insert_many(&[ApiKeyRecord {
                    hash: g.hash,
                    revoked_at: revoked.then_some(Timestamp::from_secs(1_700_000_000)),
                    expires_at: expired.then_some(Timestamp::from_secs(1_700_000_000)),
                    ..sample_key(n)
                }])
                .await
                .unwrap();
        }
        // Not stored, and a mistyped one.
        raws.push(api_key::generate(&prefix, &[9; 32]).key.expose().to_owned());
        raws.push(format!("{}x", raws[0]));
        let auth = ApiKeyAuthenticator::new(
            ApiKeyConfig::default(),
            store.clone(),
            Arc::new(KeyCache::new(16)),
            Arc::new(UsageTracker::new(store.clone())),
        );
        let route = RouteAuth::default();
        let method = http::Method::GET;
        let mut cases: Vec<http::HeaderMap> = raws
            .iter()
            .map(|k| {
                let mut h = http::HeaderMap::new();
                h.insert("x-api-key", k.parse().unwrap());
                h
            })
            .collect();
        cases.push(http::HeaderMap::new());
        let mut twice = http::HeaderMap::new();
        twice.append("x-api-key", raws[0].parse().unwrap());
        twice.append("x-api-key", raws[1].parse().unwrap());
        cases.push(twice);
        let conn = portcullis_core::ConnMemo::default();
        for (i, headers) in cases.iter().enumerate() {
            let req = RequestParts {
                method: &method,
                path: "/",
                query: None,
                scheme: "http",
                authority: None,
                headers,
                client_ip: [127, 0, 0, 1].into(),
                conn: Some(&conn),
                body: None,
            };
            // A well-formed key, stored or not, is not in the cache yet: only the store can
            // answer (a mistyped, missing or doubled key needs no look-up).
            let needs_store = i < 4;
            let first = auth.authenticate_now(&req, &route, now);
            assert_eq!(first.is_none(), needs_store, "case {i}");
            let slow = auth.authenticate(&req, &route, now).await;
            let fast = auth.authenticate_now(&req, &route, now).unwrap();
            assert_eq!(outcome(&fast), outcome(&slow), "case {i}");
            if let Some(first) = first {
                assert_eq!(outcome(&first), outcome(&slow), "case {i}");
            }
        }
        let ok = |i: usize| {
            let req = RequestParts {
                method: &method,
                path: "/",
                query: None,
                scheme: "http",
                authority: None,
                headers: &cases[i],
                client_ip: [127, 0, 0, 1].into(),
                conn: None,
                body: None,
            };
            outcome(&auth.authenticate_now(&req, &route, now).unwrap())
        };
        assert!(ok(0).starts_with("ok key_001"), "{}", ok(0));
        assert!(ok(1).contains("Revoked"), "{}", ok(1));
        assert!(ok(2).contains("Expired"), "{}", ok(2));
        assert!(ok(3).contains("Unknown"), "{}", ok(3));
        assert_eq!(ok(5), "none");
    }
}
