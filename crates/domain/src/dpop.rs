//! DPoP (RFC 9449) with state: the pure proof check of [`portcullis_core::dpop`] plus the
//! replay check that needs a store. One [`DpopChecker`] serves the token endpoint (binding
//! a new token to the proof's key) and the gateway (a bound token must come with a fresh
//! proof of that key, for that request).
//!
//! Every proof `jti` accepted is claimed in the durable [`Nonces`] store, keyed by the
//! proof key's thumbprint, for as long as a proof with that `iat` could be accepted: a
//! captured proof cannot be replayed, not even to another instance sharing the store or
//! after a restart (RFC 9449 §11.1).
//!
//! Server nonces (§8, §9), when configured, are stateless: the time window's number and an
//! HMAC of it under a key derived from the master key, so every instance sharing that key
//! issues and accepts the same nonces with nothing stored. A nonce is good in its window and
//! the next one (one to two periods); a proof without a good one is refused with
//! `use_dpop_nonce` and the answer carries the current nonce in `DPoP-Nonce`.

use std::sync::Arc;

use portcullis_core::crypto::sign::hmac_sha256;
use portcullis_core::dpop::{self, DpopError, DpopProof, ProofCheck};
use portcullis_core::jose::{b64_decode, b64_encode, Algorithm};
use portcullis_core::secret::ct_eq;
use portcullis_core::Timestamp;
use portcullis_store::Nonces;

/// The algorithms proofs may be signed with (also the metadata's
/// `dpop_signing_alg_values_supported` and the `algs` of the `DPoP` challenge).
pub const PROOF_ALGORITHMS: [Algorithm; 4] = [
    Algorithm::Es256,
    Algorithm::EdDsa,
    Algorithm::Rs256,
    Algorithm::Ps256,
];

/// How far in the future a proof's `iat` may lie (client clocks run fast), seconds.
pub const PROOF_LEEWAY_SECS: i64 = 10;

/// Why a request's DPoP proof was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DpopRefusal {
    /// The proof failed a check of RFC 9449 §4.3.
    #[error("{0}")]
    Proof(#[from] DpopError),
    /// More than one `DPoP` header field, or one that is not visible ASCII (§4.3 point 1).
    #[error("more than one DPoP proof")]
    Ambiguous,
    /// The proof's `jti` was used before (§11.1).
    #[error("proof replayed")]
    Replayed,
    /// The replay store could not answer: refused, never waved through.
    #[error("replay store unavailable")]
    Unavailable,
}

impl DpopRefusal {
    /// The error code on the wire: `use_dpop_nonce` or `invalid_dpop_proof`
    /// (`Unavailable` is the caller's `temporarily_unavailable`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::Proof(e) => e.code(),
            Self::Ambiguous | Self::Replayed | Self::Unavailable => "invalid_dpop_proof",
        }
    }
}

/// What a request offers for its DPoP check.
#[derive(Debug, Clone, Copy)]
pub struct ProofRequest<'a> {
    /// The `DPoP` header field's value.
    pub proof: &'a str,
    /// The request method.
    pub method: &'a str,
    /// The URI the client addressed, `scheme://host[:port]/path` (the query is ignored).
    pub htu: &'a str,
    /// At a resource, the access token the proof must name in `ath`.
    pub access_token: Option<&'a str>,
}

/// Checks DPoP proofs and remembers their `jti`s.
pub struct DpopChecker {
    nonces: Arc<dyn Nonces>,
    max_age_secs: i64,
    server_nonces: Option<ServerNonces>,
}

/// Stateless server nonces: `base64url(window || HMAC-SHA256(key, window)[..16])`.
struct ServerNonces {
    key: zeroize::Zeroizing<[u8; 32]>,
    period_secs: i64,
}

impl ServerNonces {
    fn window(&self, now: Timestamp) -> i64 {
        now.as_secs().div_euclid(self.period_secs)
    }

    fn tag(&self, window: i64) -> [u8; 16] {
        let mac = hmac_sha256(&self.key[..], &window.to_be_bytes());
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&mac[..16]);
        tag
    }

    fn issue(&self, now: Timestamp) -> String {
        let w = self.window(now);
        let mut raw = [0u8; 24];
        raw[..8].copy_from_slice(&w.to_be_bytes());
        raw[8..].copy_from_slice(&self.tag(w));
        b64_encode(&raw)
    }

    fn accepts(&self, nonce: &str, now: Timestamp) -> bool {
        if nonce.len() != 32 {
            return false;
        }
        let Some(raw) = b64_decode(nonce)
            .ok()
            .and_then(|r| <[u8; 24]>::try_from(r.as_slice()).ok())
        else {
            return false;
        };
        let mut window = [0u8; 8];
        window.copy_from_slice(&raw[..8]);
        let w = i64::from_be_bytes(window);
        let current = self.window(now);
        (w == current || w == current - 1) && ct_eq(&raw[8..], &self.tag(w))
    }
}

impl DpopChecker {
    /// A checker accepting proofs made at most `max_age_secs` ago, remembering their ids in
    /// `nonces`.
    pub fn new(nonces: Arc<dyn Nonces>, max_age_secs: i64) -> Self {
        Self {
            nonces,
            max_age_secs: max_age_secs.max(1),
            server_nonces: None,
        }
    }

    /// Requires a server nonce in every proof (RFC 9449 §8, §9), made under `key` (shared by
    /// every instance) and changing every `period_secs`.
    pub fn with_server_nonces(mut self, key: [u8; 32], period_secs: i64) -> Self {
        self.server_nonces = Some(ServerNonces {
            key: zeroize::Zeroizing::new(key),
            period_secs: period_secs.max(1),
        });
        self
    }

    /// The nonce to send in `DPoP-Nonce` at `now`, when nonces are required.
    pub fn fresh_nonce(&self, now: Timestamp) -> Option<String> {
        self.server_nonces.as_ref().map(|n| n.issue(now))
    }

    /// The `algs` of the `DPoP` challenge: the accepted algorithms, space-separated.
    pub fn algs() -> String {
        PROOF_ALGORITHMS
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Verifies the proof (RFC 9449 §4.3) and claims its `jti`; `Ok` carries the key's
    /// thumbprint.
    pub async fn check(
        &self,
        req: &ProofRequest<'_>,
        now: Timestamp,
    ) -> Result<DpopProof, DpopRefusal> {
        let check = ProofCheck {
            method: req.method,
            htu: req.htu,
            access_token: req.access_token,
            nonce: None,
            max_age_secs: self.max_age_secs,
            leeway_secs: PROOF_LEEWAY_SECS,
            algorithms: &PROOF_ALGORITHMS,
        };
        let proof = dpop::verify_proof(req.proof, &check, now)?;
        // Before the jti is spent: the client retries with the nonce and a new proof.
        if let Some(n) = &self.server_nonces {
            if !proof.nonce.as_deref().is_some_and(|v| n.accepts(v, now)) {
                return Err(DpopRefusal::Proof(DpopError::NonceRequired));
            }
        }
        // Accepted until iat + max age: remembered at least that long (and past any leeway).
        let until = Timestamp::from_secs(
            proof
                .iat
                .max(now.as_secs())
                .saturating_add(self.max_age_secs + PROOF_LEEWAY_SECS),
        );
        let key = format!("dpop:{}:{}", proof.jkt, proof.jti);
        match self.nonces.claim_nonce(&key, until, now).await {
            Ok(true) => Ok(proof),
            Ok(false) => Err(DpopRefusal::Replayed),
            Err(e) => {
                tracing::warn!(error = %e, "DPoP replay check: store unavailable");
                Err(DpopRefusal::Unavailable)
            }
        }
    }
}

/// The value of the request's one `DPoP` header field, if any.
pub fn proof_header(headers: &http::HeaderMap) -> Result<Option<&str>, DpopRefusal> {
    let mut all = headers.get_all("dpop").iter();
    let Some(first) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(DpopRefusal::Ambiguous);
    }
    first.to_str().map(Some).map_err(|_| DpopRefusal::Ambiguous)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::crypto::sign::SigningKey;
    use portcullis_core::jose::Jwk;
    use portcullis_store::memory::MemoryStore;

    const NOW: i64 = 1_800_000_000;
    const HTU: &str = "https://api.example/orders";

    /// A GET proof for `HTU` made at `iat` (the client side, `core::dpop::sign_proof`).
    fn proof(
        key: &SigningKey,
        jti: &str,
        iat: i64,
        token: Option<&str>,
        nonce: Option<&str>,
    ) -> String {
        dpop::sign_proof(
            key,
            &dpop::NewProof {
                htm: "GET",
                htu: HTU,
                access_token: token,
                nonce,
                jti,
                iat,
            },
        )
        .unwrap()
    }

    fn req<'a>(p: &'a str, token: Option<&'a str>) -> ProofRequest<'a> {
        ProofRequest {
            proof: p,
            method: "GET",
            htu: HTU,
            access_token: token,
        }
    }

    #[tokio::test]
    async fn a_proof_is_accepted_once_and_names_its_key() {
        let checker = DpopChecker::new(Arc::new(MemoryStore::new()), 60);
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let p = proof(&key, "p1", NOW, Some("tok"), None);
        let now = Timestamp::from_secs(NOW + 5);
        let ok = checker.check(&req(&p, Some("tok")), now).await.unwrap();
        assert_eq!(
            ok.jkt,
            Jwk::from_public(&key.public_key(), key.algorithm())
                .unwrap()
                .thumbprint()
                .unwrap()
        );
        assert_eq!(
            checker.check(&req(&p, Some("tok")), now).await.unwrap_err(),
            DpopRefusal::Replayed
        );
        // Another token than the one the proof names.
        let p2 = proof(&key, "p2", NOW, Some("tok"), None);
        let e = checker
            .check(&req(&p2, Some("other")), now)
            .await
            .unwrap_err();
        assert_eq!(e, DpopRefusal::Proof(DpopError::AthMismatch));
        assert_eq!(e.code(), "invalid_dpop_proof");
        // Too old for the window.
        let p3 = proof(&key, "p3", NOW - 61, None, None);
        assert_eq!(
            checker
                .check(&req(&p3, None), Timestamp::from_secs(NOW))
                .await
                .unwrap_err(),
            DpopRefusal::Proof(DpopError::Stale)
        );
    }

    #[test]
    fn a_second_dpop_field_is_refused() {
        let mut h = http::HeaderMap::new();
        assert_eq!(proof_header(&h), Ok(None));
        h.append("dpop", "a.b.c".parse().unwrap());
        assert_eq!(proof_header(&h), Ok(Some("a.b.c")));
        h.append("dpop", "d.e.f".parse().unwrap());
        assert_eq!(proof_header(&h), Err(DpopRefusal::Ambiguous));
        assert_eq!(DpopChecker::algs(), "ES256 EdDSA RS256 PS256");
    }

    #[tokio::test]
    async fn server_nonces_are_required_when_configured_and_age_out() {
        let store = Arc::new(MemoryStore::new());
        let checker = DpopChecker::new(store.clone(), 60).with_server_nonces([9; 32], 300);
        let other = DpopChecker::new(store, 60).with_server_nonces([8; 32], 300);
        let key = SigningKey::generate(Algorithm::Es256).unwrap();
        let now = Timestamp::from_secs(NOW);
        let nonce = checker.fresh_nonce(now).unwrap();
        assert_eq!(nonce.len(), 32);
        assert_eq!(
            DpopChecker::new(Arc::new(MemoryStore::new()), 60).fresh_nonce(now),
            None
        );
        let with = |jti: &str, n: Option<&str>| proof(&key, jti, NOW, None, n);
        let needs_nonce = DpopRefusal::Proof(DpopError::NonceRequired);
        assert_eq!(needs_nonce.code(), "use_dpop_nonce");
        for (p, at) in [
            (with("a", None), NOW),
            (with("b", Some("not-a-nonce")), NOW),
            // Another deployment's nonce; one two windows old.
            (with("c", Some(&other.fresh_nonce(now).unwrap())), NOW),
            (with("d", Some(&nonce)), NOW + 600),
        ] {
            let at = Timestamp::from_secs(at);
            // (The proof's own age is not the point here: a wide window.)
            let wide = DpopChecker::new(Arc::new(MemoryStore::new()), 3600)
                .with_server_nonces([9; 32], 300);
            assert_eq!(
                wide.check(&req(&p, None), at).await.unwrap_err(),
                needs_nonce
            );
        }
        // The current nonce, and the one of the window before.
        assert!(checker
            .check(&req(&with("e", Some(&nonce)), None), now)
            .await
            .is_ok());
        let wide =
            DpopChecker::new(Arc::new(MemoryStore::new()), 3600).with_server_nonces([9; 32], 300);
        assert!(wide
            .check(
                &req(&with("f", Some(&nonce)), None),
                Timestamp::from_secs(NOW + 300)
            )
            .await
            .is_ok());
    }
}
