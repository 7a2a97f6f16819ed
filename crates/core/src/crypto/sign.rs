//! The signature and MAC primitives behind JOSE (RFC 7518, RFC 8037), on AWS-LC.
//!
//! Parsed keys are kept ready to use: a signing key is parsed from its PKCS#8 document once
//! and then signs without re-reading it (re-parsing an RSA key per signature costs more than
//! the signature).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self as sig, KeyPair as _};
use aws_lc_rs::{hmac, rand, rsa};

use crate::jose::Algorithm;

/// Why a key could not be made, parsed or used. Never carries key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key document is not a key of the kind the algorithm needs.
    #[error("the key does not suit {0:?}")]
    Unsuitable(Algorithm),
    /// A public key's parameters are malformed (a point off the curve, a short modulus).
    #[error("malformed public key")]
    Malformed,
    /// The crypto library could not generate or sign (it should not happen).
    #[error("the crypto library failed")]
    Library,
}

/// The smallest RSA modulus accepted, for verifying and for signing (RFC 7518 §3.3).
pub const RSA_MIN_BITS: usize = 2048;

/// The size of RSA keys Portcullis generates.
pub const RSA_GENERATED_BITS: usize = 2048;

/// A private key Portcullis signs with, parsed once.
pub struct SigningKey {
    alg: Algorithm,
    inner: Inner,
    /// The PKCS#8 document it was parsed from (for sealing at rest).
    pkcs8: zeroize::Zeroizing<Vec<u8>>,
}

enum Inner {
    Ec(sig::EcdsaKeyPair),
    Rsa(rsa::KeyPair),
    Ed(sig::Ed25519KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A new key for `alg` (not HS256: Portcullis signs its tokens with asymmetric keys only).
    ///
    /// The key material comes from AWS-LC's own generator, seeded by the operating system:
    /// AWS-LC takes no randomness from its caller for keys, the one place where this crate
    /// does not get its random bytes passed in.
    pub fn generate(alg: Algorithm) -> Result<Self, KeyError> {
        let rng = rand::SystemRandom::new();
        let pkcs8 = match alg {
            Algorithm::Es256 => {
                sig::EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| KeyError::Library)?
                    .as_ref()
                    .to_vec()
            }
            Algorithm::EdDsa => sig::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| KeyError::Library)?
                .as_ref()
                .to_vec(),
            Algorithm::Rs256 | Algorithm::Ps256 => {
                let size = match RSA_GENERATED_BITS {
                    3072 => rsa::KeySize::Rsa3072,
                    4096 => rsa::KeySize::Rsa4096,
                    _ => rsa::KeySize::Rsa2048,
                };
                rsa::KeyPair::generate(size)
                    .and_then(|k| k.as_der())
                    .map_err(|_| KeyError::Library)?
                    .as_ref()
                    .to_vec()
            }
            Algorithm::Hs256 => return Err(KeyError::Unsuitable(alg)),
        };
        Self::from_pkcs8(alg, &pkcs8)
    }

    /// Parses a PKCS#8 private key for `alg`.
    pub fn from_pkcs8(alg: Algorithm, pkcs8: &[u8]) -> Result<Self, KeyError> {
        let bad = |_| KeyError::Unsuitable(alg);
        let inner = match alg {
            Algorithm::Es256 => Inner::Ec(
                sig::EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                    .map_err(bad)?,
            ),
            Algorithm::EdDsa => Inner::Ed(sig::Ed25519KeyPair::from_pkcs8(pkcs8).map_err(bad)?),
            Algorithm::Rs256 | Algorithm::Ps256 => {
                let k = rsa::KeyPair::from_pkcs8(pkcs8).map_err(bad)?;
                if k.public_modulus_len() * 8 < RSA_MIN_BITS {
                    return Err(KeyError::Unsuitable(alg));
                }
                Inner::Rsa(k)
            }
            Algorithm::Hs256 => return Err(KeyError::Unsuitable(alg)),
        };
        Ok(Self {
            alg,
            inner,
            pkcs8: zeroize::Zeroizing::new(pkcs8.to_vec()),
        })
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The PKCS#8 document of the private key. Seal it before it is stored.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        match &self.inner {
            Inner::Ec(k) => {
                // Uncompressed point: 0x04 ‖ x ‖ y.
                let p = k.public_key().as_ref();
                PublicKey::Ec {
                    x: p[1..33].to_vec(),
                    y: p[33..65].to_vec(),
                }
            }
            Inner::Ed(k) => PublicKey::Ed25519 {
                x: k.public_key().as_ref().to_vec(),
            },
            Inner::Rsa(k) => {
                let p = k.public_key();
                PublicKey::Rsa {
                    n: p.modulus().big_endian_without_leading_zero().to_vec(),
                    e: p.exponent().big_endian_without_leading_zero().to_vec(),
                }
            }
        }
    }

    /// Signs `msg` (a JWS signing input), in the encoding JWS uses: `r ‖ s` for ECDSA.
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = rand::SystemRandom::new();
        match &self.inner {
            Inner::Ec(k) => k
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Library),
            Inner::Ed(k) => Ok(k.sign(msg).as_ref().to_vec()),
            Inner::Rsa(k) => {
                let pad: &'static dyn sig::RsaEncoding = match self.alg {
                    Algorithm::Ps256 => &sig::RSA_PSS_SHA256,
                    _ => &sig::RSA_PKCS1_SHA256,
                };
                let mut out = vec![0; k.public_modulus_len()];
                k.sign(pad, &rng, msg, &mut out)
                    .map_err(|_| KeyError::Library)?;
                Ok(out)
            }
        }
    }
}

/// A public key (or, for HS256, a shared secret) to verify signatures with.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// A P-256 point, coordinates as 32 big-endian bytes each.
    Ec {
        /// The x coordinate.
        x: Vec<u8>,
        /// The y coordinate.
        y: Vec<u8>,
    },
    /// An RSA public key, big-endian without leading zeros.
    Rsa {
        /// The modulus.
        n: Vec<u8>,
        /// The public exponent.
        e: Vec<u8>,
    },
    /// An Ed25519 public key (32 bytes).
    Ed25519 {
        /// The key.
        x: Vec<u8>,
    },
    /// A shared secret for HS256. Never published.
    Oct {
        /// The secret.
        k: zeroize::Zeroizing<Vec<u8>>,
    },
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Ec { .. } => "PublicKey::Ec",
            Self::Rsa { .. } => "PublicKey::Rsa",
            Self::Ed25519 { .. } => "PublicKey::Ed25519",
            Self::Oct { .. } => "PublicKey::Oct(<redacted>)",
        })
    }
}

impl PublicKey {
    /// Whether this key can verify `alg`: the key type must match the algorithm (an RSA or EC
    /// key is never an HMAC secret, whatever the token's header says).
    pub fn suits(&self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (Self::Ec { .. }, Algorithm::Es256)
                | (Self::Rsa { .. }, Algorithm::Rs256 | Algorithm::Ps256)
                | (Self::Ed25519 { .. }, Algorithm::EdDsa)
                | (Self::Oct { .. }, Algorithm::Hs256)
        )
    }

    /// Checks the parameters' sizes (the curve check itself happens when verifying).
    pub fn check(&self) -> Result<(), KeyError> {
        let ok = match self {
            Self::Ec { x, y } => x.len() == 32 && y.len() == 32,
            Self::Rsa { n, e } => {
                n.len() * 8 >= RSA_MIN_BITS
                    && n.len() <= 2048
                    && n.first().is_some_and(|b| *b != 0)
                    && !e.is_empty()
                    && e.len() <= 8
            }
            Self::Ed25519 { x } => x.len() == 32,
            Self::Oct { k } => k.len() >= 32,
        };
        ok.then_some(()).ok_or(KeyError::Malformed)
    }

    /// Whether `signature` over `msg` is valid for `alg` under this key. A key that does not
    /// suit `alg`, or a signature of the wrong size, is simply invalid.
    pub fn verify(&self, alg: Algorithm, msg: &[u8], signature: &[u8]) -> bool {
        if !self.suits(alg) || self.check().is_err() {
            return false;
        }
        match self {
            Self::Ec { x, y } => {
                if signature.len() != 64 {
                    return false;
                }
                let mut point = [0u8; 65];
                point[0] = 4;
                point[1..33].copy_from_slice(x);
                point[33..].copy_from_slice(y);
                sig::UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, &point[..])
                    .verify(msg, signature)
                    .is_ok()
            }
            Self::Ed25519 { x } => sig::UnparsedPublicKey::new(&sig::ED25519, x)
                .verify(msg, signature)
                .is_ok(),
            Self::Rsa { n, e } => {
                let params = match alg {
                    Algorithm::Ps256 => &sig::RSA_PSS_2048_8192_SHA256,
                    _ => &sig::RSA_PKCS1_2048_8192_SHA256,
                };
                sig::RsaPublicKeyComponents { n, e }
                    .verify(params, msg, signature)
                    .is_ok()
            }
            Self::Oct { k } => {
                let key = hmac::Key::new(hmac::HMAC_SHA256, k);
                hmac::verify(&key, msg, signature).is_ok()
            }
        }
    }
}

/// HMAC-SHA256 of `msg` under `key` (HS256 signing; tests and shared-secret schemes).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Whether `tag` is the HMAC-SHA256 of `msg` under `key`, compared in constant time.
pub fn hmac_sha256_verify(key: &[u8], msg: &[u8], tag: &[u8]) -> bool {
    hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, key), msg, tag).is_ok()
}

/// The HMAC hash functions the gateway formats of other products use (Kong's and Apache
/// APISIX's `hmac-auth`); SHA-1 only for them, where HMAC-SHA1 is still a sound MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HmacAlg {
    /// HMAC-SHA1 (legacy formats only).
    Sha1,
    /// HMAC-SHA256.
    Sha256,
    /// HMAC-SHA384.
    Sha384,
    /// HMAC-SHA512.
    Sha512,
}

impl HmacAlg {
    fn algorithm(self) -> hmac::Algorithm {
        match self {
            HmacAlg::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            HmacAlg::Sha256 => hmac::HMAC_SHA256,
            HmacAlg::Sha384 => hmac::HMAC_SHA384,
            HmacAlg::Sha512 => hmac::HMAC_SHA512,
        }
    }
}

/// The HMAC of `msg` under `key` with `alg`.
pub fn hmac_with(alg: HmacAlg, key: &[u8], msg: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(alg.algorithm(), key), msg)
        .as_ref()
        .to_vec()
}

/// Whether `tag` is the HMAC of `msg` under `key` with `alg`, compared in constant time.
pub fn hmac_with_verify(alg: HmacAlg, key: &[u8], msg: &[u8], tag: &[u8]) -> bool {
    hmac::verify(&hmac::Key::new(alg.algorithm(), key), msg, tag).is_ok()
}

/// An HMAC-SHA256 computed piece by piece (a canonical string written as it is built).
pub struct HmacSha256(hmac::Context);

impl HmacSha256 {
    /// A MAC under `key`.
    pub fn new(key: &[u8]) -> Self {
        Self(hmac::Context::with_key(&hmac::Key::new(
            hmac::HMAC_SHA256,
            key,
        )))
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The tag.
    pub fn finish(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(self.0.sign().as_ref());
        out
    }

    /// Whether the tag is `tag`, compared in constant time.
    pub fn verify(self, tag: &[u8]) -> bool {
        constant_time_eq::constant_time_eq(&self.finish(), tag)
    }
}

// RFC 9421 HTTP Message Signatures: the public-key algorithms of its §3.3, keys parsed once
// from the SubjectPublicKeyInfo a client registers, and signing with a `SigningKey`.

/// The public-key algorithms of RFC 9421 §3.3 (HTTP Message Signatures) Portcullis handles.
/// (`hmac-sha256` is [`hmac_sha256`] / [`hmac_sha256_verify`].)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageAlg {
    /// `rsa-pss-sha512`: RSASSA-PSS, SHA-512, MGF1 with SHA-512, a 64-byte salt (§3.3.1).
    RsaPssSha512,
    /// `rsa-v1_5-sha256`: RSASSA-PKCS1-v1_5 with SHA-256 (§3.3.2).
    RsaPkcs1Sha256,
    /// `ecdsa-p256-sha256`: ECDSA on P-256 with SHA-256, the signature as `r ‖ s` (§3.3.4).
    EcdsaP256Sha256,
    /// `ed25519`: EdDSA on edwards25519 (§3.3.6).
    Ed25519,
}

impl MessageAlg {
    fn verification(self) -> &'static dyn sig::VerificationAlgorithm {
        match self {
            Self::RsaPssSha512 => &sig::RSA_PSS_2048_8192_SHA512,
            Self::RsaPkcs1Sha256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Self::EcdsaP256Sha256 => &sig::ECDSA_P256_SHA256_FIXED,
            Self::Ed25519 => &sig::ED25519,
        }
    }

    fn is_rsa(self) -> bool {
        matches!(self, Self::RsaPssSha512 | Self::RsaPkcs1Sha256)
    }
}

/// The largest RSA modulus accepted for HTTP message signatures (what AWS-LC verifies).
pub const RSA_MAX_BITS: usize = 8192;

/// A public key for one [`MessageAlg`], parsed (and its curve or modulus checked) once.
#[derive(Clone)]
pub struct MessagePublicKey {
    alg: MessageAlg,
    key: sig::ParsedPublicKey,
}

impl std::fmt::Debug for MessagePublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessagePublicKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl MessagePublicKey {
    /// Parses a DER public key for `alg`: a SubjectPublicKeyInfo (RFC 5280) for every
    /// algorithm; for RSA also a PKCS#1 `RSAPublicKey`, for ECDSA an uncompressed SEC 1
    /// point, for Ed25519 the raw 32 bytes. A key of another type, another curve, or an RSA
    /// modulus outside 2048–8192 bits is refused.
    pub fn from_der(alg: MessageAlg, der: &[u8]) -> Result<Self, KeyError> {
        if alg.is_rsa() {
            // Normalise to PKCS#1 (AWS-LC takes SPKI with either RSA OID or PKCS#1) and check
            // the size now rather than at every verification.
            let public = rsa::PublicKey::from_der(der).map_err(|_| KeyError::Malformed)?;
            let bits = rsa::RsaParameters::public_modulus_len(public.as_ref())
                .map_err(|_| KeyError::Malformed)?;
            let bits = usize::try_from(bits).map_err(|_| KeyError::Malformed)?;
            if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
                return Err(KeyError::Malformed);
            }
            let key = sig::ParsedPublicKey::new(alg.verification(), public.as_ref())
                .map_err(|_| KeyError::Malformed)?;
            return Ok(Self { alg, key });
        }
        let key =
            sig::ParsedPublicKey::new(alg.verification(), der).map_err(|_| KeyError::Malformed)?;
        Ok(Self { alg, key })
    }

    /// Parses a PEM `-----BEGIN PUBLIC KEY-----` (or, for RSA, `-----BEGIN RSA PUBLIC
    /// KEY-----`) block, or, when `input` is not PEM, DER as [`MessagePublicKey::from_der`].
    pub fn from_pem_or_der(alg: MessageAlg, input: &[u8]) -> Result<Self, KeyError> {
        match pem_decode(input) {
            Some((label, der)) => {
                let ok = label == "PUBLIC KEY" || (alg.is_rsa() && label == "RSA PUBLIC KEY");
                if !ok {
                    return Err(KeyError::Malformed);
                }
                Self::from_der(alg, &der)
            }
            None if input.trim_ascii_start().starts_with(b"-----") => Err(KeyError::Malformed),
            None => Self::from_der(alg, input),
        }
    }

    /// The algorithm this key verifies.
    pub fn algorithm(&self) -> MessageAlg {
        self.alg
    }

    /// Whether `signature` over `msg` is valid under this key (a signature of the wrong size
    /// is simply invalid).
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        if self.alg == MessageAlg::EcdsaP256Sha256 && signature.len() != 64 {
            return false;
        }
        self.key.verify_sig(msg, signature).is_ok()
    }
}

/// The label and DER contents of the one PEM block in `input` (surrounding whitespace
/// allowed), or `None` when `input` is not exactly one well-formed block.
pub fn pem_decode(input: &[u8]) -> Option<(String, Vec<u8>)> {
    use base64::Engine as _;
    const MAX_PEM: usize = 64 * 1024;
    if input.len() > MAX_PEM {
        return None;
    }
    let text = std::str::from_utf8(input).ok()?.trim();
    let rest = text.strip_prefix("-----BEGIN ")?;
    let (label, rest) = rest.split_once("-----")?;
    if label.is_empty() || !label.bytes().all(|b| b.is_ascii_uppercase() || b == b' ') {
        return None;
    }
    let end = format!("-----END {label}-----");
    let body = rest.strip_suffix(end.as_str())?;
    if body.contains('-') || body.contains(':') {
        // Another block, or RFC 1421 headers (encrypted keys): not a plain key.
        return None;
    }
    let b64: String = body.split_ascii_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .ok()?;
    Some((label.to_owned(), der))
}

impl SigningKey {
    /// Signs `msg` for RFC 9421 algorithm `alg`: ECDSA as `r ‖ s`, RSA with PSS/SHA-512 or
    /// PKCS#1 v1.5/SHA-256 whatever JOSE algorithm the key was parsed for. A key of another
    /// type is [`KeyError::Unsuitable`].
    pub fn sign_message(&self, alg: MessageAlg, msg: &[u8]) -> Result<Vec<u8>, KeyError> {
        let rng = rand::SystemRandom::new();
        match (&self.inner, alg) {
            (Inner::Ec(k), MessageAlg::EcdsaP256Sha256) => k
                .sign(&rng, msg)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Library),
            (Inner::Ed(k), MessageAlg::Ed25519) => Ok(k.sign(msg).as_ref().to_vec()),
            (Inner::Rsa(k), MessageAlg::RsaPssSha512 | MessageAlg::RsaPkcs1Sha256) => {
                let pad: &'static dyn sig::RsaEncoding = match alg {
                    MessageAlg::RsaPssSha512 => &sig::RSA_PSS_SHA512,
                    _ => &sig::RSA_PKCS1_SHA256,
                };
                let mut out = vec![0; k.public_modulus_len()];
                k.sign(pad, &rng, msg, &mut out)
                    .map_err(|_| KeyError::Library)?;
                Ok(out)
            }
            _ => Err(KeyError::Unsuitable(self.alg)),
        }
    }

    /// The public half as a [`MessagePublicKey`] for `alg` (the key must be of its type).
    pub fn message_public_key(&self, alg: MessageAlg) -> Result<MessagePublicKey, KeyError> {
        let der = match (&self.inner, alg) {
            (Inner::Ec(k), MessageAlg::EcdsaP256Sha256) => k.public_key().as_ref().to_vec(),
            (Inner::Ed(k), MessageAlg::Ed25519) => k.public_key().as_ref().to_vec(),
            (Inner::Rsa(k), MessageAlg::RsaPssSha512 | MessageAlg::RsaPkcs1Sha256) => {
                k.public_key().as_ref().to_vec()
            }
            _ => return Err(KeyError::Unsuitable(self.alg)),
        };
        MessagePublicKey::from_der(alg, &der)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_key_signs_what_its_public_key_verifies() {
        for alg in [
            Algorithm::Es256,
            Algorithm::EdDsa,
            Algorithm::Rs256,
            Algorithm::Ps256,
        ] {
            let k = SigningKey::generate(alg).unwrap();
            let again = SigningKey::from_pkcs8(alg, k.pkcs8()).unwrap();
            let s = again.sign(b"payload").unwrap();
            let public = k.public_key();
            assert!(public.verify(alg, b"payload", &s), "{alg:?}");
            assert!(!public.verify(alg, b"payloaD", &s), "{alg:?}");
            let mut flipped = s.clone();
            flipped[0] ^= 1;
            assert!(!public.verify(alg, b"payload", &flipped), "{alg:?}");
        }
    }

    #[test]
    fn a_key_never_verifies_an_algorithm_of_another_type() {
        let ec = SigningKey::generate(Algorithm::Es256).unwrap();
        let public = ec.public_key();
        let s = ec.sign(b"m").unwrap();
        for other in [
            Algorithm::Rs256,
            Algorithm::Ps256,
            Algorithm::EdDsa,
            Algorithm::Hs256,
        ] {
            assert!(!public.verify(other, b"m", &s), "{other:?}");
        }
        // The bytes of a public key used as an HMAC secret (the classic confusion): refused
        // because an EC key does not suit HS256, whatever the MAC would say.
        let Some(PublicKey::Ec { x, .. }) = Some(public.clone()) else {
            unreachable!()
        };
        let forged = hmac_sha256(&x, b"m");
        assert!(!public.verify(Algorithm::Hs256, b"m", &forged));
    }

    #[test]
    fn a_zero_ecdsa_signature_is_invalid() {
        let public = SigningKey::generate(Algorithm::Es256).unwrap().public_key();
        assert!(!public.verify(Algorithm::Es256, b"m", &[0u8; 64]));
        assert!(!public.verify(Algorithm::Es256, b"m", &[]));
    }

    #[test]
    fn hs256_is_not_a_signing_key_and_short_secrets_are_refused() {
        assert_eq!(
            SigningKey::generate(Algorithm::Hs256).unwrap_err(),
            KeyError::Unsuitable(Algorithm::Hs256)
        );
        let short = PublicKey::Oct {
            k: zeroize::Zeroizing::new(vec![1; 16]),
        };
        let tag = hmac_sha256(&[1; 16], b"m");
        assert!(!short.verify(Algorithm::Hs256, b"m", &tag));
    }
}
