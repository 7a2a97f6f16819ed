//! The `http_signature` scheme: RFC 9421 HTTP Message Signatures
//! (`portcullis_core::hmac::http_sig`) under an HMAC credential's secret (`hmac-sha256`) or
//! the public key registered for it (`ed25519`, `ecdsa-p256-sha256`, `rsa-pss-sha512`,
//! `rsa-v1_5-sha256`); the credential's key id is the `keyid`.
//!
//! Order of the checks: both headers parsed; the labels tried in order — `keyid`, the route's
//! policy ([`http_sig::check_policy`]: `@method`, the target, `content-digest` with a body,
//! the route's components and tag, `created` in the window, `expires`), then the credential
//! (the first label whose key is known is the one verified); then [`http_sig::verify`] (the
//! signature, then `Content-Digest` against the body) under the current secret or, during a
//! rotation's grace period, the previous one; last the `nonce` — or, without one, the
//! signature itself unless the route's replay rule is the window — claimed durably.

use std::sync::Arc;

use async_trait::async_trait;
use portcullis_core::hmac::http_sig::{self, HttpSigError, Policy, VerifyingKey};
use portcullis_core::{
    crypto, AuthError, Identity, RequestParts, Scheme, SignatureError, Timestamp,
};
use portcullis_store::Nonces;

use super::hmac::{claim, claims, lookup, signed_identity};
use super::{Authenticated, Authenticator, Consumed, Replay, RouteAuth};
use crate::hmac::{HmacKeys, Material, Opened};

/// The authenticator of the `http_signature` scheme.
pub struct HttpSigAuthenticator {
    keys: Arc<HmacKeys>,
    nonces: Arc<dyn Nonces>,
}

impl HttpSigAuthenticator {
    /// Credentials from `keys`, nonces claimed in `nonces`.
    pub fn new(keys: Arc<HmacKeys>, nonces: Arc<dyn Nonces>) -> Self {
        Self { keys, nonces }
    }
}

fn refused(e: &HttpSigError) -> AuthError {
    tracing::debug!(error = %e, "http message signature refused");
    AuthError::Signature(SignatureError::from_code(e.code()))
}

/// The keys a signature under `key` may verify with at `now`.
fn verifying_keys(key: &Opened, now: Timestamp) -> Vec<VerifyingKey> {
    match &key.material {
        Material::PublicKey(k) => vec![k.clone()],
        Material::Secrets { .. } => key
            .secrets_at(now)
            .into_iter()
            // Issued secrets are longer than the floor; a shorter one cannot verify.
            .filter_map(|s| VerifyingKey::hmac_sha256(s).ok())
            .collect(),
    }
}

#[async_trait]
impl Authenticator for HttpSigAuthenticator {
    fn scheme(&self) -> Scheme {
        Scheme::HttpSignature
    }

    fn challenge(&self, route: &RouteAuth) -> String {
        let mut c = String::from("HttpSignature realm=\"portcullis\"");
        if let Some(tag) = &route.http_sig.tag {
            c.push_str(", tag=\"");
            c.push_str(tag);
            c.push('"');
        }
        c
    }

    async fn authenticate(
        &self,
        req: &RequestParts<'_>,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Result<Option<Authenticated>, AuthError> {
        let Some(sigs) = http_sig::parse(req.headers).map_err(|e| refused(&e))? else {
            return Ok(None);
        };
        // The adapter reads the body of every request on a route with this scheme; a body
        // it did not read cannot have been checked.
        let body = req
            .body
            .ok_or(AuthError::Signature(SignatureError::Invalid))?;
        let parts = http_sig::Request {
            method: req.method,
            scheme: req.scheme,
            authority: req.authority.unwrap_or_default(),
            path: req.path,
            query: req.query,
            headers: req.headers,
            body: (!body.is_empty()).then_some(body),
        };
        let required: Vec<&str> = route
            .http_sig
            .components
            .iter()
            .map(String::as_str)
            .collect();
        let policy = Policy {
            required_components: &required,
            require_content_digest_with_body: true,
            window_secs: route.hmac.window_secs,
            tag: route.http_sig.tag.as_deref(),
        };
        // The selection of `http_sig::select`, with the key store asked asynchronously.
        let mut first_err = None;
        let mut tag_err = None;
        let mut candidate = false;
        let mut chosen = None;
        for sig in &sigs {
            let Some(keyid) = sig.keyid() else {
                first_err.get_or_insert(HttpSigError::Policy("keyid is missing"));
                continue;
            };
            match http_sig::check_policy(sig, &parts, &policy, now) {
                Err(e @ HttpSigError::Policy("tag")) => {
                    tag_err.get_or_insert(e);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
                Ok(()) => {
                    candidate = true;
                    match lookup(&self.keys, keyid, now).await {
                        Ok(k) => {
                            chosen = Some((sig, k));
                            break;
                        }
                        Err(AuthError::Signature(SignatureError::UnknownKey)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        let Some((sig, key)) = chosen else {
            let e = if candidate {
                HttpSigError::UnknownKey
            } else {
                first_err
                    .or(tag_err)
                    .unwrap_or(HttpSigError::Missing("Signature"))
            };
            return Err(refused(&e));
        };
        let mut outcome = Err(HttpSigError::BadSignature);
        for k in verifying_keys(&key, now) {
            outcome = http_sig::verify(sig, &parts, &k, &policy, now);
            if !matches!(outcome, Err(HttpSigError::BadSignature)) {
                break;
            }
        }
        let proof = outcome.map_err(|e| refused(&e))?;
        // `created` was checked by the policy: it is there.
        let created = sig.created().unwrap_or(now);
        let window = route.hmac.window_secs;
        match sig.nonce() {
            Some(n) => {
                let k = format!("httpsig:{}:n:{n}", key.key_id);
                claim(&*self.nonces, &k, created, window, now).await?;
            }
            None if route.hmac.replay == Replay::Once => {
                let mut k = String::with_capacity(80 + key.key_id.len());
                k.push_str("httpsig:");
                k.push_str(&key.key_id);
                k.push_str(":s:");
                crypto::push_hex(&mut k, &crypto::sha256(sig.signature()));
                claim(&*self.nonces, &k, created, window, now).await?;
            }
            None => {}
        }
        Ok(Some(signed_identity(
            Identity::from_http_signature(proof, claims(&key)),
            Consumed::default(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hmac::tests::{code, partner, parts, ACTOR};
    use crate::hmac::NewHmac;
    use crate::Clock;
    use portcullis_core::crypto::sign::SigningKey;
    use portcullis_core::hmac::http_sig::{Algorithm, DigestAlgorithm, SignParams, Signer};

    fn signed(
        keyid: &str,
        signer: &Signer<'_>,
        created: Timestamp,
        nonce: Option<&str>,
        query: Option<&str>,
        body: &[u8],
    ) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        let mut components = vec!["@method", "@target-uri"];
        if !body.is_empty() {
            h.insert(
                http_sig::CONTENT_DIGEST,
                http_sig::content_digest(body, &[DigestAlgorithm::Sha256])
                    .parse()
                    .unwrap(),
            );
            components.push("content-digest");
        }
        let req = http_sig::Request {
            method: &http::Method::POST,
            scheme: "http",
            authority: "127.0.0.1:8080",
            path: "/orders",
            query,
            headers: &h,
            body: (!body.is_empty()).then_some(body),
        };
        let params = SignParams {
            created: Some(created),
            keyid: Some(keyid),
            nonce,
            include_alg: true,
            ..SignParams::default()
        };
        let (input, sig) = http_sig::sign(&req, &components, &params, "sig1", signer).unwrap();
        h.insert(http_sig::SIGNATURE_INPUT, input.parse().unwrap());
        h.insert(http_sig::SIGNATURE, sig.parse().unwrap());
        h
    }

    /// The SubjectPublicKeyInfo PEM of an Ed25519 key (RFC 8410).
    fn ed25519_pem(key: &SigningKey) -> String {
        use base64::Engine as _;
        let portcullis_core::crypto::sign::PublicKey::Ed25519 { x } = key.public_key() else {
            panic!("not an Ed25519 key");
        };
        let mut der = vec![
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        der.extend_from_slice(&x);
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    }

    #[tokio::test]
    async fn hmac_signatures_pass_once_and_each_refusal_has_its_code() {
        let (store, keys, admin, clock) = crate::hmac::tests::setup().await;
        let auth = HttpSigAuthenticator::new(keys, store.clone());
        let route = RouteAuth::default();
        let (r, secret) = partner(&admin).await;
        let hmac = Signer::HmacSha256(secret.expose().as_bytes());
        let now = clock.now();
        let post = http::Method::POST;
        let body = br#"{"amount":100}"#;
        let h = signed(&r.key_id, &hmac, now, Some("n-1"), Some("a=1"), body);
        let ok = auth
            .authenticate(&parts(&h, &post, Some("a=1"), body), &route, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&*ok.identity.credential_id, r.key_id.as_str());
        assert!(ok.identity.schemes.contains(Scheme::HttpSignature));
        assert_eq!(
            code(
                auth.authenticate(&parts(&h, &post, Some("a=1"), body), &route, now)
                    .await
            ),
            Some(SignatureError::Replayed)
        );
        // Without a nonce the signature is single-use; with the window rule it is not.
        let h = signed(&r.key_id, &hmac, now, None, Some("a=1"), body);
        let mut window = route.clone();
        window.hmac.replay = Replay::Window;
        for _ in 0..2 {
            assert!(auth
                .authenticate(&parts(&h, &post, Some("a=1"), body), &window, now)
                .await
                .unwrap()
                .is_some());
        }
        assert!(auth
            .authenticate(&parts(&h, &post, Some("a=1"), body), &route, now)
            .await
            .unwrap()
            .is_some());
        assert_eq!(
            code(
                auth.authenticate(&parts(&h, &post, Some("a=1"), body), &route, now)
                    .await
            ),
            Some(SignatureError::Replayed)
        );
        // A changed query or body, an old signature, an unknown key.
        let h = signed(&r.key_id, &hmac, now, Some("n-2"), Some("a=1"), body);
        assert_eq!(
            code(
                auth.authenticate(&parts(&h, &post, Some("a=2"), body), &route, now)
                    .await
            ),
            Some(SignatureError::Invalid)
        );
        assert_eq!(
            code(
                auth.authenticate(&parts(&h, &post, Some("a=1"), b"{}"), &route, now)
                    .await
            ),
            Some(SignatureError::BodyHashMismatch)
        );
        let old = Timestamp::from_secs(now.as_secs() - 301);
        let h = signed(&r.key_id, &hmac, old, Some("n-3"), None, body);
        assert_eq!(
            code(
                auth.authenticate(&parts(&h, &post, None, body), &route, now)
                    .await
            ),
            Some(SignatureError::Expired)
        );
        let h = signed("hk_nope", &hmac, now, Some("n-4"), None, body);
        assert_eq!(
            code(
                auth.authenticate(&parts(&h, &post, None, body), &route, now)
                    .await
            ),
            Some(SignatureError::UnknownKey)
        );
        // The route requires `date`: a signature that does not cover it fails the policy.
        let mut strict = route.clone();
        strict.http_sig.components = vec!["date".to_owned()].into();
        let h = signed(&r.key_id, &hmac, now, Some("n-5"), None, body);
        assert_eq!(
            code(
                auth.authenticate(&parts(&h, &post, None, body), &strict, now)
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
    }

    #[tokio::test]
    async fn a_registered_public_key_verifies_and_is_not_a_secret_for_other_schemes() {
        let (store, keys, admin, clock) = crate::hmac::tests::setup().await;
        let auth = HttpSigAuthenticator::new(keys.clone(), store.clone());
        let route = RouteAuth::default();
        let key = SigningKey::generate(portcullis_core::jose::Algorithm::EdDsa).unwrap();
        let pem = ed25519_pem(&key);
        let (r, secret) = admin
            .create(
                ACTOR,
                NewHmac {
                    name: "p".into(),
                    scopes: vec![],
                    public_key: Some(pem),
                    algorithm: Some("ed25519".into()),
                    ..NewHmac::default()
                },
            )
            .await
            .unwrap();
        assert!(secret.is_none() && r.secret.is_none());
        let now = clock.now();
        let post = http::Method::POST;
        let body = b"{}";
        let signer = Signer::Key(Algorithm::Ed25519, &key);
        let h = signed(&r.key_id, &signer, now, Some("n-1"), None, body);
        assert!(auth
            .authenticate(&parts(&h, &post, None, body), &route, now)
            .await
            .unwrap()
            .is_some());
        // Another key of the same type does not verify.
        let other = SigningKey::generate(portcullis_core::jose::Algorithm::EdDsa).unwrap();
        let h = signed(
            &r.key_id,
            &Signer::Key(Algorithm::Ed25519, &other),
            now,
            Some("n-2"),
            None,
            body,
        );
        assert_eq!(
            code(
                auth.authenticate(&parts(&h, &post, None, body), &route, now)
                    .await
            ),
            Some(SignatureError::Invalid)
        );
        // A public-key credential has no secret for SigV4 or the native scheme.
        assert!(keys
            .get(&r.key_id)
            .await
            .unwrap()
            .unwrap()
            .secrets_at(now)
            .is_empty());
        // Registration checks the key against its algorithm.
        for (pk, alg) in [
            (Some(ed25519_pem(&key)), Some("ecdsa-p256-sha256")),
            (
                Some("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----".into()),
                Some("ed25519"),
            ),
            (Some(ed25519_pem(&key)), None),
            (None, Some("ed25519")),
            (Some(ed25519_pem(&key)), Some("hmac-sha256")),
        ] {
            assert!(matches!(
                admin
                    .create(
                        ACTOR,
                        NewHmac {
                            name: "p".into(),
                            scopes: vec![],
                            public_key: pk,
                            algorithm: alg.map(Into::into),
                            ..NewHmac::default()
                        },
                    )
                    .await,
                Err(crate::admin::AdminError::Invalid(_))
            ));
        }
    }
}
