//! The signed identity a route may hand its upstream: `X-Portcullis-Identity`, a short-lived
//! JWT signed by the key ring, stating what the gateway verified. An upstream that checks it
//! against `/oauth2/jwks` knows the request came through Portcullis (the plain
//! `X-Portcullis-*` fields prove nothing to a service that can also be reached directly).
//!
//! Claims: `iss` (Portcullis's issuer), `aud` (the route's identity audience), `iat`, `nbf`,
//! `exp` ([`LIFETIME_SECS`] after `iat`), `jti`, `sub` (the end user, else the client),
//! `client_id`, `scope`, `scheme` (the schemes that proved it, space-separated),
//! `credential_id` (never a secret) and `route`. Header `typ` is [`TYP`], so that it can
//! never pass as an access token (`at+jwt`) anywhere.
//!
//! A token is reused for the same identity and audience until half its lifetime has passed:
//! a signature per request would cost more than the rest of the request. So `jti` names the
//! token, not the request (`X-Request-Id` does that).

use std::sync::Arc;

use portcullis_core::{crypto, Identity, Timestamp};
use serde_json::json;

use crate::random_bytes;
use crate::signing::KeyRing;

/// The header `typ` of identity tokens.
pub const TYP: &str = "portcullis-identity+jwt";

/// How long an identity token is valid, seconds.
pub const LIFETIME_SECS: i64 = 60;

/// Makes (and reuses) identity tokens.
pub struct IdentityTokens {
    ring: Arc<KeyRing>,
    issuer: String,
    cache: quick_cache::sync::Cache<[u8; 32], (Arc<str>, Timestamp)>,
}

impl IdentityTokens {
    /// Tokens of `issuer`, signed by `ring`'s signing key, at most `capacity` remembered.
    pub fn new(ring: Arc<KeyRing>, issuer: String, capacity: usize) -> Self {
        Self {
            ring,
            issuer,
            cache: quick_cache::sync::Cache::new(capacity.max(1)),
        }
    }

    /// The token stating `identity` to `audience` for `route` at `now`; `None` when no key
    /// signs (the adapter then refuses the request rather than send it unproven).
    pub fn token(
        &self,
        route: &str,
        audience: &str,
        identity: &Identity,
        now: Timestamp,
    ) -> Option<Arc<str>> {
        let scheme = identity.schemes.to_string();
        let key = cache_key(&[
            route,
            audience,
            &scheme,
            &identity.credential_id,
            identity.client_id.as_deref().unwrap_or(""),
            identity.subject.as_deref().unwrap_or(""),
            identity.scopes.as_space_separated(),
        ]);
        if let Some((t, reuse_until)) = self.cache.get(&key) {
            if now < reuse_until {
                return Some(t);
            }
        }
        let iat = now.as_secs();
        // Never valid past the credential it states.
        let exp = identity.expires_at.map_or(iat + LIFETIME_SECS, |e| {
            e.as_secs().min(iat + LIFETIME_SECS)
        });
        let mut claims = json!({
            "iss": self.issuer,
            "aud": audience,
            "iat": iat,
            "nbf": iat,
            "exp": exp,
            "jti": bs58::encode(random_bytes::<12>()).into_string(),
            "sub": identity.subject.as_deref().or(identity.client_id.as_deref()),
            "client_id": identity.client_id.as_deref(),
            "scope": identity.scopes.as_space_separated(),
            "scheme": scheme,
            "credential_id": &*identity.credential_id,
            "route": route,
        });
        // An absent fact is left out, never `null` (verifiers refuse a `sub` that is not a
        // string).
        if let Some(m) = claims.as_object_mut() {
            m.retain(|_, v| !v.is_null());
        }
        let signer = self.ring.signer(now)?;
        let token: Arc<str> = signer
            .sign(Some(TYP), claims.to_string().as_bytes())
            .ok()?
            .into();
        let reuse_until = Timestamp::from_secs(iat + (exp - iat) / 2);
        self.cache.insert(key, (token.clone(), reuse_until));
        Some(token)
    }
}

/// A digest of the parts, each length-prefixed (no two lists collide).
fn cache_key(parts: &[&str]) -> [u8; 32] {
    let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for p in parts {
        buf.extend_from_slice(&(p.len() as u64).to_be_bytes());
        buf.extend_from_slice(p.as_bytes());
    }
    crypto::sha256(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::RingConfig;
    use portcullis_core::crypto::seal::SealKey;
    use portcullis_core::identity::SchemeSet;
    use portcullis_core::jose::{Jwk, Jws, MAX_TOKEN_LEN};
    use portcullis_core::jwt::{self, Expectations};
    use portcullis_core::{Scheme, ScopeSet};
    use portcullis_store::memory::MemoryStore;

    const NOW: i64 = 1_800_000_000;
    const ISS: &str = "https://gw.example";

    fn identity(credential: &str) -> Identity {
        Identity {
            schemes: SchemeSet::one(Scheme::ApiKey),
            client_id: Some("acme".into()),
            subject: None,
            scopes: ScopeSet::parse(["read:orders"]).unwrap(),
            credential_id: credential.into(),
            expires_at: None,
        }
    }

    #[tokio::test]
    async fn the_token_states_the_identity_and_verifies_against_our_jwks() {
        let ring = Arc::new(
            KeyRing::open(
                Arc::new(MemoryStore::new()),
                SealKey::new(&[3; 32]),
                RingConfig::default(),
                Timestamp::from_secs(NOW),
            )
            .await
            .unwrap(),
        );
        let tokens = IdentityTokens::new(ring.clone(), ISS.into(), 16);
        let now = Timestamp::from_secs(NOW);
        let t = tokens
            .token("orders", "orders-svc", &identity("key_1"), now)
            .unwrap();
        let jws = Jws::parse(&t, MAX_TOKEN_LEN).unwrap();
        assert_eq!(jws.header().typ.as_deref(), Some(TYP));
        let jwk: Jwk = serde_json::from_value(ring.jwks(now)["keys"][0].clone()).unwrap();
        let aud = vec!["orders-svc".to_owned()];
        let (claims, _) = jwt::verify(
            &jws,
            &jwk.public_key().unwrap(),
            &Expectations {
                algorithms: &[portcullis_core::jose::Algorithm::Es256],
                issuer: ISS,
                audiences: &aud,
                typ: Some(TYP),
                leeway_secs: 0,
            },
            now,
        )
        .unwrap();
        assert_eq!(claims.sub.as_deref(), Some("acme"));
        assert_eq!(claims.exp, Some(NOW + LIFETIME_SECS));
        let raw: serde_json::Value = serde_json::from_slice(jws.unverified_payload()).unwrap();
        assert_eq!(raw["scheme"], "api_key");
        assert_eq!(raw["credential_id"], "key_1");
        assert_eq!(raw["route"], "orders");
        let anonymous = Identity {
            client_id: None,
            ..identity("key_3")
        };
        let t3 = tokens
            .token("orders", "orders-svc", &anonymous, now)
            .unwrap();
        let raw3: serde_json::Value =
            serde_json::from_slice(Jws::parse(&t3, MAX_TOKEN_LEN).unwrap().unverified_payload())
                .unwrap();
        assert!(
            raw3.get("sub").is_none() && raw3.get("client_id").is_none(),
            "{raw3}"
        );
        assert_eq!(raw["scope"], "read:orders");

        // Reused within half its life; a new one after, and for another credential.
        let again = tokens
            .token(
                "orders",
                "orders-svc",
                &identity("key_1"),
                Timestamp::from_secs(NOW + 29),
            )
            .unwrap();
        assert_eq!(again, t);
        let later = tokens
            .token(
                "orders",
                "orders-svc",
                &identity("key_1"),
                Timestamp::from_secs(NOW + 30),
            )
            .unwrap();
        assert_ne!(later, t);
        assert_ne!(
            tokens
                .token("orders", "orders-svc", &identity("key_2"), now)
                .unwrap(),
            t
        );
        assert_ne!(
            tokens
                .token("orders", "billing-svc", &identity("key_1"), now)
                .unwrap(),
            t
        );
    }
}
