//! The `sigv4` scheme: requests signed with AWS Signature Version 4
//! (`portcullis_core::hmac::sigv4`), the HMAC credential's key id as the access key id and
//! its secret as the secret access key, so that AWS SDKs, `botocore` and `curl --aws-sigv4`
//! sign for Portcullis unchanged.
//!
//! Order of the checks: the form, the credential (unknown, revoked or public-key only:
//! `unknown_key`), then [`sigv4::verify`] (scope, time, payload hash, signature) under the
//! current secret and, during a rotation's grace period, the previous one, and last the
//! signature claimed durably as single-use (unless the route's replay rule is the window).
//! An `X-Amz-Security-Token` is refused: Portcullis issues no STS session tokens, so one means
//! the client signs with credentials that are not ours to vouch for.

use std::sync::Arc;

use async_trait::async_trait;
use portcullis_core::hmac::sigv4::{self, SigV4Error};
use portcullis_core::{
    crypto, AuthError, Identity, RequestParts, Scheme, SignatureError, Timestamp,
};
use portcullis_store::Nonces;

use super::hmac::{claim, claims, lookup, secrets_of, signed_identity};
use super::{Authenticated, Authenticator, Consumed, Replay, RouteAuth};
use crate::hmac::HmacKeys;

/// The authenticator of the `sigv4` scheme.
pub struct SigV4Authenticator {
    keys: Arc<HmacKeys>,
    nonces: Arc<dyn Nonces>,
}

impl SigV4Authenticator {
    /// Credentials from `keys`, signatures claimed in `nonces`.
    pub fn new(keys: Arc<HmacKeys>, nonces: Arc<dyn Nonces>) -> Self {
        Self { keys, nonces }
    }
}

fn refused(e: &SigV4Error) -> AuthError {
    tracing::debug!(error = %e, "sigv4 request refused");
    AuthError::Signature(SignatureError::from_code(e.code()))
}

#[async_trait]
impl Authenticator for SigV4Authenticator {
    fn scheme(&self) -> Scheme {
        Scheme::SigV4
    }

    fn challenge(&self, route: &RouteAuth) -> String {
        format!(
            "AWS4-HMAC-SHA256 realm=\"portcullis\", region=\"{}\", service=\"{}\"",
            route.sigv4.region, route.sigv4.service
        )
    }

    async fn authenticate(
        &self,
        req: &RequestParts<'_>,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Result<Option<Authenticated>, AuthError> {
        let body = req.body.unwrap_or_default();
        let parts = sigv4::Request {
            method: req.method,
            path: req.path,
            query: req.query,
            headers: req.headers,
            body,
        };
        let Some(signed) = sigv4::parse(&parts).map_err(|e| refused(&e))? else {
            return Ok(None);
        };
        // The adapter reads the body of every request on a route with this scheme; a body
        // it did not read cannot have been checked.
        if req.body.is_none() {
            return Err(AuthError::Signature(SignatureError::Invalid));
        }
        if signed.security_token().is_some() {
            tracing::debug!("sigv4 request with a session token refused");
            return Err(AuthError::Signature(SignatureError::Invalid));
        }
        let key = lookup(&self.keys, signed.access_key_id(), now).await?;
        let secrets = secrets_of(&key, now)?;
        let expect = sigv4::Expect {
            region: &route.sigv4.region,
            service: &route.sigv4.service,
            window_secs: route.hmac.window_secs,
            allow_unsigned_payload: route.sigv4.allow_unsigned_payload,
            path_rule: sigv4::PathRule::ByService,
            now,
        };
        let mut outcome = Err(SigV4Error::BadSignature);
        for (i, secret) in secrets.into_iter().enumerate() {
            let signing_key =
                key.sigv4_signing_key(i, secret, signed.date(), signed.region(), signed.service());
            outcome = sigv4::verify_with_signing_key(&signed, &parts, &signing_key, &expect);
            if !matches!(outcome, Err(SigV4Error::BadSignature)) {
                break;
            }
        }
        let proof = outcome.map_err(|e| refused(&e))?;
        if route.hmac.replay == Replay::Once {
            let mut k = String::with_capacity(80 + key.key_id.len());
            k.push_str("sigv4:");
            k.push_str(&key.key_id);
            k.push(':');
            crypto::push_hex(&mut k, signed.signature());
            // A presigned URL stays valid until it expires, so it stays spent as long.
            let lifetime = signed
                .expires_secs()
                .map_or(route.hmac.window_secs, |e| e.max(route.hmac.window_secs));
            claim(&*self.nonces, &k, signed.timestamp(), lifetime, now).await?;
        }
        Ok(Some(signed_identity(
            Identity::from_sigv4(proof, claims(&key)),
            Consumed {
                authorization: !signed.is_presigned(),
                ..Consumed::default()
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hmac::tests::{code, partner, parts, ACTOR};
    use crate::Clock;

    fn signed(
        key_id: &str,
        secret: &str,
        ts: Timestamp,
        query: Option<&str>,
        body: &[u8],
        region: &str,
    ) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("host", "127.0.0.1:8080".parse().unwrap());
        let req = sigv4::Request {
            method: &http::Method::POST,
            path: "/orders",
            query,
            headers: &h,
            body,
        };
        let date = sigv4::amz_date(ts).unwrap();
        let s = sigv4::Signer {
            access_key_id: key_id,
            secret: secret.as_bytes(),
            region,
            service: "execute-api",
            amz_date: &date,
            session_token: None,
            content_sha256: true,
            path_rule: sigv4::PathRule::ByService,
        };
        for (k, v) in sigv4::sign_headers(&req, &s, &[]).unwrap() {
            h.insert(http::HeaderName::try_from(k).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn signed_requests_pass_once_and_each_refusal_has_its_code() {
        let (store, keys, admin, clock) = crate::hmac::tests::setup().await;
        let auth = SigV4Authenticator::new(keys, store.clone());
        let route = RouteAuth::default();
        let (r, secret) = partner(&admin).await;
        let now = clock.now();
        let post = http::Method::POST;
        let body = br#"{"amount":100}"#;
        let h = signed(
            &r.key_id,
            secret.expose(),
            now,
            Some("a=1"),
            body,
            "us-east-1",
        );
        let ok = auth
            .authenticate(&parts(&h, &post, Some("a=1"), body), &route, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*ok.identity.credential_id, r.key_id.as_str());
        assert!(ok.identity.schemes.contains(Scheme::SigV4));
        assert!(ok.consumed.authorization);
        // Again: a replay; with the window rule, accepted.
        assert_eq!(
            code(
                auth.authenticate(&parts(&h, &post, Some("a=1"), body), &route, now)
                    .await
            ),
            Some(SignatureError::Replayed)
        );
        let mut window = route.clone();
        window.hmac.replay = Replay::Window;
        assert!(auth
            .authenticate(&parts(&h, &post, Some("a=1"), body), &window, now)
            .await
            .unwrap()
            .is_some());
        // Another query, another body, the wrong region, too old, unknown, a session token.
        let h2 = signed(
            &r.key_id,
            secret.expose(),
            now,
            Some("a=2"),
            body,
            "us-east-1",
        );
        assert_eq!(
            code(
                auth.authenticate(&parts(&h2, &post, Some("a=9"), body), &route, now)
                    .await
            ),
            Some(SignatureError::Invalid)
        );
        assert_eq!(
            code(
                auth.authenticate(&parts(&h2, &post, Some("a=2"), b"{}"), &route, now)
                    .await
            ),
            Some(SignatureError::BodyHashMismatch)
        );
        let h3 = signed(&r.key_id, secret.expose(), now, None, body, "eu-west-1");
        assert_eq!(
            code(
                auth.authenticate(&parts(&h3, &post, None, body), &route, now)
                    .await
            ),
            Some(SignatureError::Invalid)
        );
        let h4 = signed(
            &r.key_id,
            secret.expose(),
            Timestamp::from_secs(now.as_secs() - 301),
            None,
            body,
            "us-east-1",
        );
        assert_eq!(
            code(
                auth.authenticate(&parts(&h4, &post, None, body), &route, now)
                    .await
            ),
            Some(SignatureError::Expired)
        );
        let h5 = signed("hk_nope", secret.expose(), now, None, body, "us-east-1");
        assert_eq!(
            code(
                auth.authenticate(&parts(&h5, &post, None, body), &route, now)
                    .await
            ),
            Some(SignatureError::UnknownKey)
        );
        let mut h6 = signed(&r.key_id, secret.expose(), now, None, b"", "us-east-1");
        h6.insert(sigv4::SECURITY_TOKEN, "token".parse().unwrap());
        assert_eq!(
            code(
                auth.authenticate(&parts(&h6, &post, None, b""), &route, now)
                    .await
            ),
            Some(SignatureError::Invalid)
        );
        let none = http::HeaderMap::new();
        assert!(auth
            .authenticate(&parts(&none, &post, None, body), &route, now)
            .await
            .unwrap()
            .is_none());
        // Rotation: both secrets during the grace period; revocation: neither.
        let (_, new) = admin.rotate(ACTOR, &r.key_id, None).await.unwrap();
        for (q, s) in [("r=1", secret.expose()), ("r=2", new.expose())] {
            let h = signed(&r.key_id, s, now, Some(q), body, "us-east-1");
            assert!(auth
                .authenticate(&parts(&h, &post, Some(q), body), &route, now)
                .await
                .unwrap()
                .is_some());
        }
        admin.revoke(ACTOR, &r.key_id).await.unwrap();
        let h = signed(&r.key_id, new.expose(), now, Some("r=3"), body, "us-east-1");
        assert_eq!(
            code(
                auth.authenticate(&parts(&h, &post, Some("r=3"), body), &route, now)
                    .await
            ),
            Some(SignatureError::UnknownKey)
        );
    }
}
