//! The `hmac` scheme: requests signed with a credential's shared secret, in the native
//! layout or the legacy one the route names (`portcullis_core::hmac::native`).
//!
//! Order of the checks: the headers' form, the credential (unknown or revoked:
//! `unknown_key`), the time window, `X-Body-Hash`, the signature under the current secret
//! or the previous one during a rotation's grace period, and last the nonce (or, in the
//! layout without one, the signature) claimed durably — only a valid signature spends it,
//! so a forger cannot burn a partner's nonces, and a replay is refused after a restart too.

use std::sync::Arc;

use async_trait::async_trait;
use portcullis_core::hmac::compat::{self, CompatError, Format};
use portcullis_core::hmac::native::{self, NativeError};
use portcullis_core::identity::Claims;
use portcullis_core::{AuthError, Identity, RequestParts, Scheme, SignatureError, Timestamp};
use portcullis_store::Nonces;

use super::{Authenticated, Authenticator, Consumed, HmacFormat, Replay, RouteAuth};
use crate::hmac::{HmacKeys, KeysError, Opened, Secrets};

/// The authenticator of the `hmac` scheme.
pub struct HmacAuthenticator {
    keys: Arc<HmacKeys>,
    nonces: Arc<dyn Nonces>,
}

impl HmacAuthenticator {
    /// Credentials from `keys`, nonces claimed in `nonces`.
    pub fn new(keys: Arc<HmacKeys>, nonces: Arc<dyn Nonces>) -> Self {
        Self { keys, nonces }
    }
}

fn refused(e: &NativeError) -> AuthError {
    tracing::debug!(error = %e, "signed request refused");
    AuthError::Signature(SignatureError::from_code(e.code()))
}

#[async_trait]
impl Authenticator for HmacAuthenticator {
    fn scheme(&self) -> Scheme {
        Scheme::Hmac
    }

    fn challenge(&self, route: &RouteAuth) -> String {
        match route.hmac.layout {
            HmacFormat::Native(_) => "HMAC-SHA256 realm=\"portcullis\", headers=\"x-api-key x-timestamp x-nonce x-signature\"",
            HmacFormat::Gateway(Format::Kong) => "hmac realm=\"portcullis\", headers=\"date request-line digest\"",
            HmacFormat::Gateway(Format::Apisix) => "Signature realm=\"portcullis\", headers=\"@request-target date digest\"",
        }
        .to_owned()
    }

    async fn authenticate(
        &self,
        req: &RequestParts<'_>,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Result<Option<Authenticated>, AuthError> {
        let layout = match route.hmac.layout {
            HmacFormat::Native(l) => l,
            HmacFormat::Gateway(f) => return self.authenticate_compat(f, req, route, now).await,
        };
        let Some(signed) = native::parse(req.headers, layout).map_err(|e| refused(&e))? else {
            return Ok(None);
        };
        // The adapter reads the body of every request on a route with this scheme; a body
        // it did not read cannot have been checked.
        let body = req
            .body
            .ok_or(AuthError::Signature(SignatureError::Invalid))?;
        let key = lookup(&self.keys, signed.key_id(), now).await?;
        let parts = native::Request {
            method: req.method,
            path: req.path,
            query: req.query,
            body,
        };
        let expect = native::Expect {
            window_secs: route.hmac.window_secs,
            now,
        };
        let proof = native::verify(&signed, &parts, &secrets_of(&key, now)?, &expect)
            .map_err(|e| refused(&e))?;
        if layout.has_nonce() || route.hmac.replay == Replay::Once {
            claim(
                &*self.nonces,
                &signed.replay_key(),
                signed.timestamp(),
                route.hmac.window_secs,
                now,
            )
            .await?;
        }
        Ok(Some(signed_identity(
            Identity::from_hmac(proof, claims(&key)),
            Consumed {
                api_key_header: true,
                ..Consumed::default()
            },
        )))
    }
}

impl HmacAuthenticator {
    /// A request in another gateway's `hmac-auth` format (`portcullis_core::hmac::compat`).
    async fn authenticate_compat(
        &self,
        format: Format,
        req: &RequestParts<'_>,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Result<Option<Authenticated>, AuthError> {
        let compat_refused = |e: &CompatError| {
            tracing::debug!(error = %e, format = format.name(), "signed request refused");
            AuthError::Signature(SignatureError::from_code(e.code()))
        };
        let Some(signed) = compat::parse(format, req.headers).map_err(|e| compat_refused(&e))?
        else {
            return Ok(None);
        };
        let body = req
            .body
            .ok_or(AuthError::Signature(SignatureError::Invalid))?;
        let key = lookup(&self.keys, signed.key_id(), now).await?;
        let parts = compat::Request {
            method: req.method,
            path: req.path,
            query: req.query,
            headers: req.headers,
            body,
        };
        let expect = compat::Expect {
            window_secs: route.hmac.window_secs,
            allow_unsigned_body: route.hmac.allow_unsigned_body,
            now,
        };
        let proof = compat::verify(&signed, &parts, &secrets_of(&key, now)?, &expect)
            .map_err(|e| compat_refused(&e))?;
        let (replay_key, has_nonce) = signed.replay_key(req.headers);
        if has_nonce || route.hmac.replay == Replay::Once {
            // The signed time is the window's anchor; now is within it of that time.
            claim(
                &*self.nonces,
                &replay_key,
                now,
                route.hmac.window_secs.saturating_mul(2),
                now,
            )
            .await?;
        }
        Ok(Some(signed_identity(
            Identity::from_hmac(proof, claims(&key)),
            Consumed {
                authorization: true,
                ..Consumed::default()
            },
        )))
    }
}

/// The credential `key_id` names, for a signature made at `now`: an unknown or revoked one
/// is `unknown_key`; a store that does not answer, `Unavailable`.
pub(crate) async fn lookup(
    keys: &HmacKeys,
    key_id: &str,
    now: Timestamp,
) -> Result<Arc<Opened>, AuthError> {
    match keys.get(key_id).await {
        Ok(Some(k)) if !k.revoked(now) => Ok(k),
        Ok(_) => Err(AuthError::Signature(SignatureError::UnknownKey)),
        Err(KeysError::Store(e)) => {
            tracing::warn!(error = %e, "hmac credentials unavailable");
            Err(AuthError::Unavailable)
        }
        Err(e @ KeysError::Sealed(_)) => {
            tracing::error!(error = %e, "hmac credential does not open");
            Err(AuthError::Signature(SignatureError::Invalid))
        }
    }
}

/// The secrets `key` signs with at `now`; a credential with a public key instead (RFC 9421
/// only) is no credential of the shared-secret schemes: `unknown_key`.
pub(crate) fn secrets_of(key: &Opened, now: Timestamp) -> Result<Secrets<'_>, AuthError> {
    let secrets = key.secrets_at(now);
    if secrets.is_empty() {
        return Err(AuthError::Signature(SignatureError::UnknownKey));
    }
    Ok(secrets)
}

/// Spends `key` (what makes a verified request single-use) until the signing time `signed_at`
/// is out of the window (plus a second of rounding): a second claim is `replayed_request`,
/// and a nonce store that does not answer refuses the request (fail closed).
pub(crate) async fn claim(
    nonces: &dyn Nonces,
    key: &str,
    signed_at: Timestamp,
    window_secs: i64,
    now: Timestamp,
) -> Result<(), AuthError> {
    let until = Timestamp::from_secs(
        signed_at
            .as_secs()
            .saturating_add(window_secs.max(0))
            .saturating_add(1),
    );
    match nonces.claim_nonce(key, until, now).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(AuthError::Signature(SignatureError::Replayed)),
        Err(e) => {
            tracing::warn!(error = %e, "nonce store unavailable: signed request refused");
            Err(AuthError::Unavailable)
        }
    }
}

/// The claims of a request signed under `key`.
pub(crate) fn claims(key: &Opened) -> Claims {
    Claims {
        client_id: Some(key.key_id.clone()),
        subject: None,
        scopes: key.scopes.clone(),
        credential_id: key.key_id.clone(),
        expires_at: None,
    }
}

pub(crate) fn signed_identity(identity: Identity, consumed: Consumed) -> Authenticated {
    Authenticated {
        identity,
        limits: None,
        consumed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hmac::tests::{code, partner, parts, ACTOR};
    use crate::Clock;
    use portcullis_core::hmac::native::Layout;

    fn signed(
        key_id: &str,
        secret: &str,
        ts: Timestamp,
        nonce: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> http::HeaderMap {
        let req = native::Request {
            method: &http::Method::POST,
            path: "/orders",
            query,
            body,
        };
        let mut h = http::HeaderMap::new();
        for (k, v) in native::sign(
            Layout::Native,
            &req,
            key_id,
            secret.as_bytes(),
            &ts.as_secs().to_string(),
            Some(nonce),
        )
        .unwrap()
        {
            h.insert(k, v.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn signed_requests_pass_once_and_every_refusal_has_its_code() {
        let (store, keys, admin, clock) = crate::hmac::tests::setup().await;
        let auth = HmacAuthenticator::new(keys, store.clone());
        let route = RouteAuth::default();
        let (r, secret) = partner(&admin).await;
        let now = clock.now();
        let post = http::Method::POST;
        let body = br#"{"amount":100}"#;
        let h = signed(
            &r.key_id,
            secret.expose(),
            now,
            "nonce_000000000001",
            Some("a=1"),
            body,
        );
        let ok = auth
            .authenticate(&parts(&h, &post, Some("a=1"), body), &route, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*ok.identity.credential_id, r.key_id.as_str());
        assert!(ok.identity.schemes.contains(Scheme::Hmac));
        // The same request again: a replay, also for a new authenticator (a restart).
        let again = HmacAuthenticator::new(
            Arc::new(HmacKeys::new(
                store.clone(),
                Arc::new(portcullis_core::crypto::seal::SealKey::new(&[9; 32])),
                clock.clone(),
            )),
            store.clone(),
        );
        assert_eq!(
            code(
                again
                    .authenticate(&parts(&h, &post, Some("a=1"), body), &route, now)
                    .await
            ),
            Some(SignatureError::Replayed)
        );
        // Another query: the signature does not cover it, and the nonce is not spent.
        let h2 = signed(
            &r.key_id,
            secret.expose(),
            now,
            "nonce_000000000002",
            Some("a=1"),
            body,
        );
        assert_eq!(
            code(
                auth.authenticate(&parts(&h2, &post, Some("a=9"), body), &route, now)
                    .await
            ),
            Some(SignatureError::Invalid)
        );
        assert!(auth
            .authenticate(&parts(&h2, &post, Some("a=1"), body), &route, now)
            .await
            .unwrap()
            .is_some());
        // Old, unknown, body hash, unsigned.
        let old = Timestamp::from_secs(now.as_secs() - 301);
        let h3 = signed(
            &r.key_id,
            secret.expose(),
            old,
            "nonce_000000000003",
            None,
            body,
        );
        assert_eq!(
            code(
                auth.authenticate(&parts(&h3, &post, None, body), &route, now)
                    .await
            ),
            Some(SignatureError::Expired)
        );
        let h4 = signed(
            "hk_unknown",
            secret.expose(),
            now,
            "nonce_000000000004",
            None,
            body,
        );
        assert_eq!(
            code(
                auth.authenticate(&parts(&h4, &post, None, body), &route, now)
                    .await
            ),
            Some(SignatureError::UnknownKey)
        );
        let mut h5 = signed(
            &r.key_id,
            secret.expose(),
            now,
            "nonce_000000000005",
            None,
            body,
        );
        h5.insert(
            native::BODY_HASH,
            portcullis_core::crypto::hex(&portcullis_core::crypto::sha256(b"other"))
                .parse()
                .unwrap(),
        );
        assert_eq!(
            code(
                auth.authenticate(&parts(&h5, &post, None, body), &route, now)
                    .await
            ),
            Some(SignatureError::BodyHashMismatch)
        );
        let none = http::HeaderMap::new();
        assert!(auth
            .authenticate(&parts(&none, &post, None, body), &route, now)
            .await
            .unwrap()
            .is_none());
        // Rotation: the old secret works during the grace period; revocation stops both.
        let (_, new) = admin.rotate(ACTOR, &r.key_id, None).await.unwrap();
        for (n, s) in [
            ("nonce_000000000006", secret.expose()),
            ("nonce_000000000007", new.expose()),
        ] {
            let h = signed(&r.key_id, s, now, n, None, body);
            assert!(auth
                .authenticate(&parts(&h, &post, None, body), &route, now)
                .await
                .unwrap()
                .is_some());
        }
        admin.revoke(ACTOR, &r.key_id).await.unwrap();
        let h = signed(
            &r.key_id,
            new.expose(),
            now,
            "nonce_000000000008",
            None,
            body,
        );
        assert_eq!(
            code(
                auth.authenticate(&parts(&h, &post, None, body), &route, now)
                    .await
            ),
            Some(SignatureError::UnknownKey)
        );
    }
}
