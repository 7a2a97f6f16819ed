//! The `jwt` scheme: bearer JWT access tokens (RFC 6750, RFC 9068) from Portcullis's own
//! issuer, verified against the key ring, with a bounded cache of tokens already verified.
//!
//! Order of checks: the bearer token is read (absent, or not JWS-shaped: not ours, `Ok(None)`);
//! its size is bounded; the header's `kid` picks a published key of the ring (nothing else
//! in the token can choose a key); the signature is checked under the algorithm allow-list;
//! only then are the claims read (`iss`, `exp`, `nbf`, `iat`, `aud`, `typ`).

use std::sync::Arc;

use async_trait::async_trait;
use portcullis_core::crypto;
use portcullis_core::error::TokenError;
use portcullis_core::identity::Claims as IdentityClaims;
use portcullis_core::jwt::JwtError;
use portcullis_core::{AuthError, Identity, RequestParts, Scheme, ScopeSet, Timestamp};

use super::{Authenticated, Authenticator, Consumed, RouteAuth};
use crate::oauth::{verify_own_token, Revocations};
use crate::signing::KeyRing;

/// The longest bearer token read.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

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

/// A verified token, remembered until its `exp`.
#[derive(Clone)]
struct Remembered {
    identity: Identity,
    jti: String,
    exp: Timestamp,
}

/// Bearer JWTs from Portcullis's own issuer.
pub struct JwtAuthenticator {
    config: JwtConfig,
    ring: Arc<KeyRing>,
    revocations: Arc<Revocations>,
    cache: quick_cache::sync::Cache<[u8; 32], Remembered>,
    challenge: String,
}

impl JwtAuthenticator {
    /// An authenticator for tokens of `config.issuer`, signed by a key of `ring`.
    pub fn new(config: JwtConfig, ring: Arc<KeyRing>, revocations: Arc<Revocations>) -> Self {
        Self {
            revocations,
            cache: quick_cache::sync::Cache::new(config.cache_capacity.max(1)),
            challenge: "Bearer realm=\"portcullis\"".to_owned(),
            config,
            ring,
        }
    }

    fn verify(&self, token: &str, now: Timestamp) -> Result<(Identity, String), AuthError> {
        let invalid = AuthError::Token(TokenError::Invalid);
        let (claims, proof) = verify_own_token(
            &self.ring,
            &self.config.issuer,
            &self.config.audiences,
            self.config.leeway_secs,
            token,
            MAX_TOKEN_BYTES,
            now,
        )
        .map_err(|e| match e {
            JwtError::Expired => AuthError::Token(TokenError::Expired),
            other => {
                tracing::debug!(error = %other, "bearer token refused");
                invalid.clone()
            }
        })?;
        let scopes = ScopeSet::parse(
            claims
                .scope
                .as_deref()
                .unwrap_or("")
                .split(' ')
                .filter(|s| !s.is_empty()),
        )
        .map_err(|_| invalid.clone())?;
        let jti = claims.jti.clone().ok_or(invalid.clone())?;
        let exp = Timestamp::from_secs(claims.exp.unwrap_or_default());
        let identity = Identity::from_jwt(
            proof,
            IdentityClaims {
                client_id: claims.client_id.map(Into::into),
                subject: claims.sub.map(Into::into),
                scopes,
                credential_id: format!("jwt:{jti}").into(),
                expires_at: Some(exp),
            },
        );
        Ok((identity, jti))
    }

    fn decide(&self, token: &str, now: Timestamp) -> Result<Authenticated, AuthError> {
        let digest = crypto::sha256(token.as_bytes());
        let leeway = self.config.leeway_secs.saturating_mul(1000);
        let (identity, jti) = match self.cache.get(&digest) {
            Some(r) if now < r.exp.plus_millis(leeway) => (r.identity, r.jti),
            Some(_) => {
                self.cache.remove(&digest);
                return Err(AuthError::Token(TokenError::Expired));
            }
            None => {
                let (identity, jti) = self.verify(token, now)?;
                if let Some(exp) = identity.expires_at {
                    let jti = jti.clone();
                    let remembered = Remembered {
                        identity: identity.clone(),
                        jti,
                        exp,
                    };
                    self.cache.insert(digest, remembered);
                }
                (identity, jti)
            }
        };
        // Checked on every request, cached or not: a revocation applies to the next one.
        if self.revocations.is_revoked(&jti) {
            return Err(AuthError::Token(TokenError::Invalid));
        }
        Ok(Authenticated {
            identity,
            limits: None,
            consumed: Consumed {
                authorization: true,
                ..Consumed::default()
            },
        })
    }
}

/// The bearer token, if `Authorization: Bearer` carries something JWS-shaped (three
/// dot-separated parts); another bearer (an API key) is not this scheme's.
fn bearer_jwt<'r>(req: &RequestParts<'r>) -> Result<Option<&'r str>, AuthError> {
    let token = super::bearer_token(req).map_err(|()| AuthError::Token(TokenError::Invalid))?;
    Ok(token.filter(|t| t.split('.').count() == 3))
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
        self.challenge.clone()
    }

    fn authenticate_now(
        &self,
        req: &RequestParts<'_>,
        _route: &RouteAuth,
        now: Timestamp,
    ) -> Option<Result<Option<Authenticated>, AuthError>> {
        if token_in_query(req) {
            return Some(Err(AuthError::Token(TokenError::InQuery)));
        }
        Some(match bearer_jwt(req) {
            Err(e) => Err(e),
            Ok(None) => Ok(None),
            Ok(Some(t)) => self.decide(t, now).map(Some),
        })
    }

    async fn authenticate(
        &self,
        req: &RequestParts<'_>,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Result<Option<Authenticated>, AuthError> {
        self.authenticate_now(req, route, now).unwrap_or(Ok(None))
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
        );
        (a, ring)
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
        let req = RequestParts {
            method: &http::Method::GET,
            path: "/",
            query,
            headers: &h,
            client_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            conn: None,
        };
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
}
