//! Sealing secrets at rest: AES-256-GCM under a key-encryption key, each record bound to its
//! id (and kind) as associated data, so that a sealed value moved to another record does not
//! open.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

/// The first byte of a sealed value: the format (AES-256-GCM, 96-bit nonce).
const V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why a sealed value did not open. One case only, on purpose: a wrong key, a wrong record
/// and a tampered value look alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed value does not open under this key and record")]
pub struct SealError;

/// A key-encryption key.
pub struct SealKey(LessSafeKey);

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealKey(<redacted>)")
    }
}

impl SealKey {
    /// A key from its 32 bytes.
    pub fn new(key: &[u8; 32]) -> Self {
        // Only a wrong key length fails, and the type fixes it at 32 bytes.
        #[allow(clippy::expect_used)]
        let unbound = UnboundKey::new(&aead::AES_256_GCM, key).expect("a 32-byte AES key");
        Self(LessSafeKey::new(unbound))
    }

    /// Seals `plaintext` for the record `aad` names, with a fresh random `nonce` (the caller
    /// passes 12 random bytes; never reuse them under one key).
    pub fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(V1);
        out.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        // Sealing only fails for inputs near 64 GiB.
        #[allow(clippy::expect_used)]
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .expect("AES-GCM sealing of a bounded value");
        out.extend_from_slice(&body);
        zeroize::Zeroize::zeroize(&mut body);
        out
    }

    /// Opens what [`SealKey::seal`] made for the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != V1 {
            return Err(SealError);
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + NONCE_LEN]);
        let mut body = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
        let len = self
            .0
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| SealError)?
            .len();
        body.truncate(len);
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_under_its_key_and_record() {
        let k = SealKey::new(&[7; 32]);
        let sealed = k.seal([1; 12], b"signing_key:abc", b"secret bytes");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            &*k.open(b"signing_key:abc", &sealed).unwrap(),
            b"secret bytes"
        );
        assert_eq!(k.open(b"signing_key:abd", &sealed), Err(SealError));
        assert_eq!(
            SealKey::new(&[8; 32]).open(b"signing_key:abc", &sealed),
            Err(SealError)
        );
        for i in 0..sealed.len() {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert_eq!(k.open(b"signing_key:abc", &t), Err(SealError), "byte {i}");
        }
        assert_eq!(k.open(b"signing_key:abc", &sealed[..20]), Err(SealError));
        assert_eq!(k.open(b"", &[]), Err(SealError));
    }

    #[test]
    fn aes_256_gcm_matches_a_published_vector() {
        // The GCM specification's test case 15 (AES-256, 96-bit IV, no AAD), as the NIST
        // GCM test vectors print it.
        let key: [u8; 32] = crate::crypto::unhex(
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        )
        .unwrap();
        let iv: [u8; 12] = crate::crypto::unhex("cafebabefacedbaddecaf888").unwrap();
        let pt: [u8; 64] = crate::crypto::unhex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
        )
        .unwrap();
        let sealed = SealKey::new(&key).seal(iv, b"", &pt);
        assert_eq!(
            crate::crypto::hex(&sealed[13..]),
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad\
b094dac5d93471bdec1a502270e3cc6c"
        );
    }
}
