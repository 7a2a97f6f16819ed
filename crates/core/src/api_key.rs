//! API keys: format, parsing, checksum, hashing and verification.
//!
//! # Format
//!
//! ```text
//! pk_live_4Nw2dJ8vC3hT9xq1ZkRbY6mLpA5sE7uGfHjK2nQ3rS4t  5vYk9a
//! └─────┘ └──────────────────────────────────────────┘  └────┘
//!  prefix     base58 of 32 random bytes (43–44 chars)  checksum (6 base58 chars)
//! ```
//!
//! * `prefix` — configured per deployment (`pk_live`, `pk_test` …): 1–32 characters of
//!   `[a-z0-9_]`, starting with a letter, not ending with `_`. It is separated from the body by
//!   the **last** `_` (base58 has no `_`).
//! * body — the Bitcoin base58 alphabet encoding of 32 bytes from the OS random generator
//!   (256 bits of entropy).
//! * checksum — CRC-32 (IEEE) of the ASCII text `prefix_body`, as a big-endian base58 number
//!   left-padded with `1` to exactly 6 characters. It rejects typos and truncations before
//!   any lookup and lets secret scanners recognise our keys with the regular expression
//!   `\b[a-z][a-z0-9_]{0,31}_[1-9A-HJ-NP-Za-km-z]{48,50}\b` plus a CRC check.
//!
//! Only the SHA-256 of the whole key text is stored. A short display prefix
//! (`prefix_` + the first 8 body characters) is kept to recognise a key in lists.
//!
//! Keys imported from another gateway ("foreign" keys) do not follow this format. They are
//! accepted only when the caller allows it, and are then recognised by their hash alone.

use crate::crypto::{self, Sha256Digest};
use crate::secret::{ct_eq, Secret};
use crate::verified::{self, Verified};
use crate::Timestamp;
use zeroize::Zeroize;

/// Random bytes in a key body.
pub const BODY_BYTES: usize = 32;
/// Length of the checksum suffix.
pub const CHECKSUM_LEN: usize = 6;
/// Longest prefix accepted.
pub const MAX_PREFIX_LEN: usize = 32;
/// Longest presented key text looked at; longer input is refused without hashing.
pub const MAX_KEY_LEN: usize = 256;
/// Shortest foreign (imported) key accepted.
pub const MIN_FOREIGN_LEN: usize = 16;
/// Body characters kept in the display prefix.
pub const DISPLAY_BODY_CHARS: usize = 8;

const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Why a presented API key was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key header was sent more than once, or in two places with different values.
    #[error("api key presented ambiguously")]
    Ambiguous,
    /// The checksum does not match: a typo, a truncation, or a forgery attempt.
    #[error("api key checksum mismatch")]
    BadChecksum,
    /// The key expired.
    #[error("api key expired")]
    Expired,
    /// The text is not a key of any accepted format.
    #[error("api key malformed")]
    Malformed,
    /// The key was revoked (or its rotation grace period ended).
    #[error("api key revoked")]
    Revoked,
    /// Well-formed, but no stored key has this hash.
    #[error("api key unknown")]
    Unknown,
}

/// Why a configured prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "api key prefix must be 1-32 characters of [a-z0-9_], start with a letter and not end with '_'"
)]
pub struct PrefixError;

/// A validated key prefix such as `pk_live`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix(String);

impl Prefix {
    /// Validates a prefix.
    pub fn new(s: &str) -> Result<Self, PrefixError> {
        if valid_prefix(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(PrefixError)
        }
    }

    /// The prefix text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_prefix(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_PREFIX_LEN
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'_'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

/// A freshly generated key: the raw text (show once), its hash and display prefix.
#[derive(Debug)]
pub struct Generated {
    /// The key itself. Show it to the user once; never store or log it.
    pub key: Secret,
    /// SHA-256 of the key text: what is stored.
    pub hash: Sha256Digest,
    /// `prefix_` plus the first body characters, for lists.
    pub display_prefix: String,
}

/// Builds a key from `random` (32 bytes from a CSPRNG, supplied by the caller).
pub fn generate(prefix: &Prefix, random: &[u8; BODY_BYTES]) -> Generated {
    let body = bs58::encode(random).into_string();
    let mut key = String::with_capacity(prefix.0.len() + 1 + body.len() + CHECKSUM_LEN);
    key.push_str(&prefix.0);
    key.push('_');
    key.push_str(&body);
    let sum = checksum_chars(crypto::crc32(key.as_bytes()));
    key.push_str(std::str::from_utf8(&sum).unwrap_or_default());
    let display_prefix = display_prefix_of(&key, prefix.0.len());
    let hash = crypto::sha256(key.as_bytes());
    Generated {
        key: Secret::new(key),
        hash,
        display_prefix,
    }
}

fn display_prefix_of(key: &str, prefix_len: usize) -> String {
    key.chars()
        .take(prefix_len + 1 + DISPLAY_BODY_CHARS)
        .collect()
}

fn checksum_chars(mut n: u32) -> [u8; CHECKSUM_LEN] {
    let mut out = [ALPHABET[0]; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(n % 58) as usize];
        n /= 58;
    }
    out
}

fn checksum_value(chars: &[u8]) -> Option<u64> {
    chars.iter().try_fold(0u64, |acc, &c| {
        let d = DIGIT_OF[usize::from(c)];
        (d != NOT_BASE58).then(|| acc * 58 + u64::from(d))
    })
}

/// Marks a byte outside the base58 alphabet in [`DIGIT_OF`].
const NOT_BASE58: u8 = 0xff;

/// The base58 digit of each byte (a table: a scan of the alphabet per character was a tenth
/// of a key check).
const DIGIT_OF: [u8; 256] = {
    let mut t = [NOT_BASE58; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        t[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Which format a presented key has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Our format, checksum verified.
    Native,
    /// An imported key of another format, recognised only by its hash.
    Foreign,
}

/// A presented key that passed the format checks. Not trusted yet: see [`verify`].
#[derive(Clone, Copy)]
pub struct Parsed {
    /// The format.
    pub kind: Kind,
    /// SHA-256 of the key text, to look the stored key up by.
    pub hash: Sha256Digest,
}

impl std::fmt::Debug for Parsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parsed")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// Whether `raw` has the shape of a native key (prefix, body, checksum), checksum verified.
///
/// Cheap and allocation-free: this runs before any hashing or lookup.
pub fn is_native(raw: &str) -> Result<(), Error> {
    if raw.len() > MAX_KEY_LEN {
        return Err(Error::Malformed);
    }
    let (prefix, rest) = raw.rsplit_once('_').ok_or(Error::Malformed)?;
    if !valid_prefix(prefix) || rest.len() <= CHECKSUM_LEN || !rest.is_ascii() {
        return Err(Error::Malformed);
    }
    let split = rest.len() - CHECKSUM_LEN;
    let (body, sum) = rest.split_at(split);
    let want = checksum_value(sum.as_bytes()).ok_or(Error::Malformed)?;
    let signed = &raw[..raw.len() - CHECKSUM_LEN];
    if want != u64::from(crypto::crc32(signed.as_bytes())) {
        return Err(Error::BadChecksum);
    }
    // 32 bytes in base58 take 32 ('1' per leading zero byte) to 44 characters. The CRC has
    // already caught typos; a charset and length check is all that is left (decoding would
    // cost more than the rest of the check together, for no security gain: the hash lookup
    // decides whether the key exists).
    if (MIN_BODY_LEN..=MAX_BODY_LEN).contains(&body.len()) && body.bytes().all(is_base58) {
        Ok(())
    } else {
        Err(Error::Malformed)
    }
}

/// Shortest body text (32 zero bytes).
const MIN_BODY_LEN: usize = BODY_BYTES;
/// Longest body text (base58 of 2^256 - 1).
const MAX_BODY_LEN: usize = 44;

fn is_base58(b: u8) -> bool {
    DIGIT_OF[usize::from(b)] != NOT_BASE58
}

/// Parses a presented key. Foreign (imported) formats are accepted only if `allow_foreign`.
///
/// Foreign keys must be [`MIN_FOREIGN_LEN`]..=[`MAX_KEY_LEN`] visible ASCII characters.
pub fn parse(raw: &str, allow_foreign: bool) -> Result<Parsed, Error> {
    let kind = match is_native(raw) {
        Ok(()) => Kind::Native,
        Err(e) if !allow_foreign => return Err(e),
        Err(_) => {
            let ok = (MIN_FOREIGN_LEN..=MAX_KEY_LEN).contains(&raw.len())
                && raw.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(Error::Malformed);
            }
            Kind::Foreign
        }
    };
    Ok(Parsed {
        kind,
        hash: crypto::sha256(raw.as_bytes()),
    })
}

/// The last key parsed on one connection, with what [`parse`] made of it.
///
/// A client on a keep-alive connection sends the same key with every request (the usual
/// partner or service client): its checksum and SHA-256 are then computed once per
/// connection, not once per request. [`parse`] is a pure function of the key text, so the
/// answer is the same either way; the lookup, revocation and expiry checks still run on every
/// request. The text is compared in constant time (a connection from a shared proxy may carry
/// several callers' keys) and zeroed when replaced and on drop. Only keys that parsed are
/// remembered.
#[derive(Default)]
pub struct ParseMemo(std::sync::Mutex<Option<Remembered>>);

struct Remembered {
    /// The key text, `len` bytes of it (inline: no allocation per connection).
    raw: [u8; MAX_KEY_LEN],
    len: usize,
    allow_foreign: bool,
    parsed: Parsed,
}

impl Drop for Remembered {
    fn drop(&mut self) {
        self.raw.zeroize();
    }
}

impl ParseMemo {
    /// [`parse`], answered from memory when `raw` is the key parsed last.
    pub fn parse(&self, raw: &str, allow_foreign: bool) -> Result<Parsed, Error> {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = slot.as_ref() {
            if r.allow_foreign == allow_foreign && ct_eq(&r.raw[..r.len], raw.as_bytes()) {
                return Ok(r.parsed);
            }
        }
        let parsed = parse(raw, allow_foreign)?;
        // `parse` refuses anything longer than MAX_KEY_LEN, so the text fits.
        let text = raw.as_bytes();
        if text.len() <= MAX_KEY_LEN {
            let r = slot.get_or_insert_with(|| Remembered {
                raw: [0; MAX_KEY_LEN],
                len: 0,
                allow_foreign,
                parsed,
            });
            r.raw.zeroize();
            r.raw[..text.len()].copy_from_slice(text);
            (r.len, r.allow_foreign, r.parsed) = (text.len(), allow_foreign, parsed);
        }
        Ok(parsed)
    }
}

impl std::fmt::Debug for ParseMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ParseMemo(<redacted>)")
    }
}

/// The hash under which a raw key is stored (SHA-256 of its text).
pub fn hash(raw: &str) -> Sha256Digest {
    crypto::sha256(raw.as_bytes())
}

/// The stored facts `verify` needs about the key found by hash.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    /// The stored hash.
    pub hash: &'a Sha256Digest,
    /// When the key was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
    /// When the key expires (its own expiry, or the end of a rotation grace period).
    pub expires_at: Option<Timestamp>,
}

/// Verifies a parsed key against the stored key found by its hash, at time `now`.
pub fn verify(
    presented: &Parsed,
    stored: &Stored<'_>,
    now: Timestamp,
) -> Result<Verified<verified::ApiKey>, Error> {
    if !ct_eq(&presented.hash, stored.hash) {
        return Err(Error::Unknown);
    }
    if stored.revoked_at.is_some_and(|t| t <= now) {
        return Err(Error::Revoked);
    }
    if stored.expires_at.is_some_and(|t| t <= now) {
        return Err(Error::Expired);
    }
    Ok(Verified::assertion())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(seed: u8) -> Generated {
        generate(&Prefix::new("pk_live").unwrap(), &[seed; 32])
    }

    #[test]
    fn generated_keys_parse_as_native() {
        for seed in [0u8, 1, 0x7f, 0xff] {
            let g = key(seed);
            let p = parse(g.key.expose(), false).unwrap();
            assert_eq!(p.kind, Kind::Native);
            assert_eq!(p.hash, g.hash);
            assert!(g.key.expose().starts_with("pk_live_"));
            assert!(g.display_prefix.starts_with("pk_live_"));
            assert_eq!(
                g.display_prefix.len(),
                "pk_live_".len() + DISPLAY_BODY_CHARS
            );
        }
    }

    fn outcome(r: Result<Parsed, Error>) -> Result<(Kind, Sha256Digest), Error> {
        r.map(|p| (p.kind, p.hash))
    }

    #[test]
    fn the_connection_memo_answers_as_parse_does() {
        let memo = ParseMemo::default();
        let (a, b) = (key(1), key(2));
        let (a, b) = (a.key.expose(), b.key.expose());
        let mut bad = a.to_owned();
        bad.pop();
        bad.push(if a.ends_with('2') { '3' } else { '2' });
        // Hits, misses that replace, refusals that are not remembered, the foreign switch.
        for (raw, foreign) in [
            (a, false),
            (a, false),
            (b, false),
            (&bad[..], false),
            (b, false),
            (a, false),
            ("kong-style-legacy-key-123", false),
            ("kong-style-legacy-key-123", true),
            ("kong-style-legacy-key-123", false),
            (&a[..a.len() - 1], false),
            ("", false),
        ] {
            assert_eq!(
                outcome(memo.parse(raw, foreign)),
                outcome(parse(raw, foreign)),
                "{raw:?} foreign={foreign}"
            );
        }
        assert!(!format!("{memo:?}").contains(&a[8..]));
    }

    #[test]
    fn known_answer() {
        // Pinned so the documented format cannot drift silently.
        let g = generate(&Prefix::new("pk_test").unwrap(), &[0u8; 32]);
        assert_eq!(
            g.key.expose(),
            format!("pk_test_{}{}", "1".repeat(32), "3i8khH")
        );
    }

    #[test]
    fn any_single_character_change_is_caught() {
        let g = key(42);
        let raw = g.key.expose();
        for i in "pk_live_".len()..raw.len() {
            let mut b = raw.as_bytes().to_vec();
            b[i] = if b[i] == b'2' { b'3' } else { b'2' };
            let s = String::from_utf8(b).unwrap();
            assert!(is_native(&s).is_err(), "change at {i} not caught");
        }
    }

    #[test]
    fn truncated_and_foreign_keys_are_refused_unless_allowed() {
        let g = key(7);
        let raw = g.key.expose();
        assert!(parse(&raw[..raw.len() - 1], false).is_err());
        assert!(parse("sk_nodelimiter", false).is_err());
        assert_eq!(parse("nounderscore", false).unwrap_err(), Error::Malformed);
        assert_eq!(
            parse("kong-style-legacy-key-123", true).unwrap().kind,
            Kind::Foreign
        );
        assert!(parse("short", true).is_err());
        assert!(parse("has space in the key text", true).is_err());
        assert!(parse(&"a".repeat(MAX_KEY_LEN + 1), true).is_err());
    }

    #[test]
    fn the_charset_check_matches_the_alphabet() {
        for b in 0..=255u8 {
            assert_eq!(is_base58(b), ALPHABET.contains(&b), "byte {b}");
            assert_eq!(
                checksum_value(&[b]),
                ALPHABET.iter().position(|&a| a == b).map(|d| d as u64),
                "byte {b}"
            );
        }
        assert_eq!(bs58::encode([0xffu8; 32]).into_string().len(), MAX_BODY_LEN);
        assert_eq!(bs58::encode([0u8; 32]).into_string().len(), MIN_BODY_LEN);
    }

    #[test]
    fn prefixes_are_validated() {
        assert!(Prefix::new("pk_live").is_ok());
        assert!(Prefix::new("a").is_ok());
        for bad in ["", "Pk", "_pk", "pk_", "pk-live", &"a".repeat(33)] {
            assert!(Prefix::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn verify_checks_hash_then_revocation_then_expiry() {
        let g = key(9);
        let p = parse(g.key.expose(), false).unwrap();
        let now = Timestamp::from_secs(1_000);
        let ok = Stored {
            hash: &g.hash,
            revoked_at: None,
            expires_at: None,
        };
        assert!(verify(&p, &ok, now).is_ok());
        let other = [1u8; 32];
        assert_eq!(
            verify(&p, &Stored { hash: &other, ..ok }, now).unwrap_err(),
            Error::Unknown
        );
        let revoked = Stored {
            revoked_at: Some(now),
            ..ok
        };
        assert_eq!(verify(&p, &revoked, now).unwrap_err(), Error::Revoked);
        let later = Stored {
            revoked_at: Some(now.plus_millis(1)),
            ..ok
        };
        assert!(verify(&p, &later, now).is_ok());
        let expired = Stored {
            expires_at: Some(now),
            ..ok
        };
        assert_eq!(verify(&p, &expired, now).unwrap_err(), Error::Expired);
    }

    proptest! {
        /// Over any sequence of presented texts (valid keys, one-character changes of them,
        /// foreign texts, noise), the memo answers exactly as parsing each one afresh.
        #[test]
        fn memo_equals_parse_over_any_sequence(
            picks in proptest::collection::vec((0usize..4, 0usize..60, any::<u8>(), any::<bool>()), 1..30)
        ) {
            let memo = ParseMemo::default();
            let keys = [key(3), key(4)];
            for (what, at, byte, foreign) in picks {
                let text = match what {
                    0 | 1 => keys[what].key.expose().to_owned(),
                    2 => {
                        let mut v = keys[0].key.expose().as_bytes().to_vec();
                        let i = at % v.len();
                        v[i] = byte;
                        String::from_utf8_lossy(&v).into_owned()
                    }
                    _ => "x".repeat(at) + &char::from(byte % 94 + 33).to_string(),
                };
                prop_assert_eq!(outcome(memo.parse(&text, foreign)), outcome(parse(&text, foreign)));
            }
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,300}", foreign in any::<bool>()) {
            let _ = parse(&s, foreign);
        }

        #[test]
        fn parse_never_panics_on_near_keys(prefix in "[a-z][a-z0-9_]{0,40}", body in "[1-9A-Za-z_]{0,80}") {
            let s = format!("{prefix}_{body}");
            let _ = parse(&s, false);
        }

        #[test]
        fn every_generated_key_round_trips(bytes in any::<[u8; 32]>(), prefix in "[a-z][a-z0-9]{0,10}") {
            let g = generate(&Prefix::new(&prefix).unwrap(), &bytes);
            prop_assert_eq!(parse(g.key.expose(), false).unwrap().hash, g.hash);
        }
    }
}
