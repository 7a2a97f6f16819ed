//! Secret values: never printed, zeroed on drop, compared in constant time.

use std::fmt;
use zeroize::Zeroize;

/// A secret string (a raw API key, an admin token). `Debug` prints `<redacted>`.
///
/// The only way to read it is [`Secret::expose`], so every place that touches the raw
/// value is easy to find in review.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself. Never log or format the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Constant-time equality of two byte strings. Lengths are not secret (compare digests).
///
/// `constant_time_eq` compares a vector register at a time behind an optimisation barrier
/// (a key and a digest in a few instructions); `subtle`'s slice comparison, used before,
/// takes a volatile read per byte, which on the API-key path (the connection's key memo and
/// the stored hash, on every request) was ≈ 1,000 instructions.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && constant_time_eq::constant_time_eq(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("pk_live_supersecret".into());
        assert!(!format!("{s:?}").contains("supersecret"));
        assert_eq!(s.expose(), "pk_live_supersecret");
    }

    #[test]
    fn ct_eq_compares_content_and_length() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"abcd"));
    }

    #[test]
    fn ct_eq_sees_a_difference_at_every_position_of_a_key_and_a_digest() {
        for len in [0, 1, 15, 16, 17, 32, 57, 64, 100] {
            let a: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            assert!(ct_eq(&a, &a.clone()));
            for i in 0..len {
                let mut b = a.clone();
                b[i] ^= 0x01;
                assert!(!ct_eq(&a, &b), "len {len}, byte {i}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn ct_eq_is_equality(a in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
                             b in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            proptest::prop_assert_eq!(ct_eq(&a, &b), a == b);
            proptest::prop_assert!(ct_eq(&a, &a.clone()));
        }
    }
}
