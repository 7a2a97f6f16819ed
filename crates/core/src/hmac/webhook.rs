//! Signed webhooks in the three conventions in use: Stripe, GitHub and Standard Webhooks.
//!
//! | Style | Headers | Signed bytes | Key | Signature |
//! |---|---|---|---|---|
//! | [`Style::Stripe`] | `Stripe-Signature: t=<unix>,v1=<hex>[,v1=…]` | `<t>.<body>` | the secret text's bytes (`whsec_…` included) | lowercase hex |
//! | [`Style::GitHub`] | `X-Hub-Signature-256: sha256=<hex>` | `<body>` | the secret text's bytes | lowercase hex |
//! | [`Style::StandardWebhooks`] | `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<b64>[ v1,<b64>…]` | `<id>.<timestamp>.<body>` | base64-decoded part of `whsec_<base64>` | standard base64 |
//!
//! All are HMAC-SHA256 over the raw body bytes as received. Several signatures in one header
//! (secret rotation) verify if any one matches under any of the secrets given; schemes this
//! module cannot check (Stripe's `v0`, Standard Webhooks' asymmetric `v1a`, any other) are
//! ignored, but count towards the [`MAX_SIGNATURES`] bound.
//!
//! Verification is [`parse`] (read the headers, untrusted; no body, no key) then
//! [`Signed::verify`], or both in one call with [`verify`]. The signature is checked before
//! the timestamp, so [`WebhookError::TooOld`] and [`WebhookError::TooNew`] only ever describe
//! a genuinely signed message: a replay or a skewed clock, never a forgery.
//!
//! GitHub deliveries carry no signed timestamp and so have no replay protection here: dedupe
//! on `X-GitHub-Delivery` if that matters. Likewise use [`Signed::id`] (Standard Webhooks) as
//! the idempotency key the spec recommends.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use http::HeaderMap;
use zeroize::Zeroizing;

use crate::crypto::{self, sign::HmacSha256};
use crate::secret::ct_eq;
use crate::verified::{self, Verified};
use crate::Timestamp;

/// Most signatures read from one header (of any scheme, checked or not); more is malformed.
pub const MAX_SIGNATURES: usize = 16;
/// Longest header value read, in bytes; longer is malformed.
pub const MAX_HEADER_LEN: usize = 8 * 1024;
/// Longest Standard Webhooks message id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest Stripe or GitHub secret, in bytes.
pub const MAX_SECRET_LEN: usize = 1024;
/// Shortest Standard Webhooks HMAC key, in bytes (the spec's lower bound).
pub const MIN_KEY_BYTES: usize = 24;
/// Longest Standard Webhooks HMAC key, in bytes (the spec's upper bound).
pub const MAX_KEY_BYTES: usize = 64;
/// Most digits in a timestamp (seconds up to the year 33658).
pub const MAX_TIMESTAMP_DIGITS: usize = 12;

/// `Stripe-Signature`.
pub const STRIPE_SIGNATURE: &str = "stripe-signature";
/// `X-Hub-Signature-256` (GitHub; the legacy SHA-1 `X-Hub-Signature` is not read).
pub const GITHUB_SIGNATURE: &str = "x-hub-signature-256";
/// `webhook-id` (Standard Webhooks).
pub const WEBHOOK_ID: &str = "webhook-id";
/// `webhook-timestamp` (Standard Webhooks).
pub const WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// `webhook-signature` (Standard Webhooks).
pub const WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// The prefix of Standard Webhooks (and Stripe) secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// Why a webhook was refused, or could not be signed. Never carries key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// A header the convention needs is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A header is repeated, longer than [`MAX_HEADER_LEN`], not visible ASCII, or not of
    /// the convention's form (including more than [`MAX_SIGNATURES`] signatures).
    #[error("malformed header {0}")]
    MalformedHeader(&'static str),
    /// Correctly signed, but the timestamp is further in the past than the tolerance.
    #[error("timestamp too old")]
    TooOld,
    /// Correctly signed, but the timestamp is further in the future than the tolerance.
    #[error("timestamp too far in the future")]
    TooNew,
    /// No signature in the header is valid under any of the secrets (or the header holds
    /// none of a scheme this module checks).
    #[error("no signature matched")]
    NoMatch,
    /// A secret is not of its style's format, or was parsed for another style.
    #[error("bad secret format")]
    BadSecret,
    /// [`sign`] was asked for what the convention cannot carry: `"secrets"` (none, more than
    /// [`MAX_SIGNATURES`], or more than one for GitHub), `"id"` (see [`sign`]) or
    /// `"timestamp"` (before the epoch, or more than [`MAX_TIMESTAMP_DIGITS`] digits).
    #[error("cannot sign: bad {0}")]
    Unsignable(&'static str),
}

impl WebhookError {
    /// The error code: `missing_signature` (a header is absent), `signature_expired`
    /// (correctly signed, outside the tolerance), `invalid_signature` otherwise.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingHeader(_) => "missing_signature",
            Self::TooOld | Self::TooNew => "signature_expired",
            Self::MalformedHeader(_) | Self::NoMatch | Self::BadSecret | Self::Unsignable(_) => {
                "invalid_signature"
            }
        }
    }
}

/// A webhook signing convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Style {
    /// Stripe's `Stripe-Signature` (also copied by many other providers).
    Stripe,
    /// GitHub's `X-Hub-Signature-256`.
    GitHub,
    /// The Standard Webhooks specification (as Svix sends, with `webhook-` headers).
    StandardWebhooks,
}

/// How far a signed timestamp may be from `now`. Not used for [`Style::GitHub`].
///
/// A timestamp `t` (whole seconds) is accepted when
/// `now - past_secs <= t <= now + future_secs`, both bounds included, `now` rounded down to
/// the second. Stripe's own libraries check only the past side; here both are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tolerance {
    /// Seconds a timestamp may lie in the past.
    pub past_secs: u32,
    /// Seconds a timestamp may lie in the future (clock skew).
    pub future_secs: u32,
}

impl Default for Tolerance {
    /// Five minutes either way (Stripe's default and the Standard Webhooks libraries').
    fn default() -> Self {
        Self {
            past_secs: 300,
            future_secs: 300,
        }
    }
}

impl Tolerance {
    fn check(self, t: i64, now: Timestamp) -> Result<(), WebhookError> {
        let now = now.as_secs();
        if t < now.saturating_sub(i64::from(self.past_secs)) {
            Err(WebhookError::TooOld)
        } else if t > now.saturating_add(i64::from(self.future_secs)) {
            Err(WebhookError::TooNew)
        } else {
            Ok(())
        }
    }
}

/// An HMAC key for one [`Style`], parsed once (see [`parse_secret`]). Zeroed on drop;
/// `Debug` prints `<redacted>`.
#[derive(Clone)]
pub struct WebhookSecret {
    style: Style,
    key: Zeroizing<Vec<u8>>,
}

impl WebhookSecret {
    /// The style it was parsed for.
    pub fn style(&self) -> Style {
        self.style
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebhookSecret({:?}, <redacted>)", self.style)
    }
}

/// Parses a configured secret for `style`.
///
/// - Stripe, GitHub: the text's bytes are the key, as those providers use them (a Stripe
///   `whsec_…` secret is not decoded); 1 to [`MAX_SECRET_LEN`] bytes.
/// - Standard Webhooks: `whsec_` then standard (padded) base64 of [`MIN_KEY_BYTES`] to
///   [`MAX_KEY_BYTES`] bytes, the key; the prefix may be left out, as the spec's libraries
///   accept.
pub fn parse_secret(style: Style, text: &str) -> Result<WebhookSecret, WebhookError> {
    let key = match style {
        Style::Stripe | Style::GitHub => {
            if text.is_empty() || text.len() > MAX_SECRET_LEN {
                return Err(WebhookError::BadSecret);
            }
            Zeroizing::new(text.as_bytes().to_vec())
        }
        Style::StandardWebhooks => {
            let b64 = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
            if b64.len() > MAX_KEY_BYTES.div_ceil(3) * 4 {
                return Err(WebhookError::BadSecret);
            }
            let key = Zeroizing::new(STANDARD.decode(b64).map_err(|_| WebhookError::BadSecret)?);
            if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
                return Err(WebhookError::BadSecret);
            }
            key
        }
    };
    Ok(WebhookSecret { style, key })
}

/// A new Standard Webhooks secret, `whsec_<base64>`, from `N` random bytes from a CSPRNG
/// (supplied by the caller). `N` must be 24 to 64 (checked at compile time); 24 is what Svix
/// issues, 32 is a good choice.
pub fn new_secret<const N: usize>(random: &[u8; N]) -> String {
    const {
        assert!(
            N >= MIN_KEY_BYTES && N <= MAX_KEY_BYTES,
            "a Standard Webhooks secret has 24 to 64 bytes"
        )
    };
    let mut out = String::with_capacity(SECRET_PREFIX.len() + N.div_ceil(3) * 4);
    out.push_str(SECRET_PREFIX);
    STANDARD.encode_string(random, &mut out);
    out
}

/// Signs a webhook: the headers to send with `body`, as `(lowercase name, value)`.
///
/// Several secrets (rotation: current and previous) give several signatures in one header,
/// in the order given; GitHub's header carries exactly one, so GitHub takes one secret.
/// `id` is used by Standard Webhooks only (ignored otherwise): 1 to [`MAX_ID_LEN`] visible
/// ASCII characters other than `.`, as the spec asks. The timestamp is `now` in whole seconds.
pub fn sign(
    style: Style,
    secrets: &[WebhookSecret],
    id: &str,
    body: &[u8],
    now: Timestamp,
) -> Result<Vec<(&'static str, String)>, WebhookError> {
    let most = if style == Style::GitHub {
        1
    } else {
        MAX_SIGNATURES
    };
    if secrets.is_empty() || secrets.len() > most {
        return Err(WebhookError::Unsignable("secrets"));
    }
    if secrets.iter().any(|s| s.style != style) {
        return Err(WebhookError::BadSecret);
    }
    let t = now.as_secs();
    let mut digits = itoa::Buffer::new();
    let t_text = digits.format(t);
    if style != Style::GitHub && (t < 0 || t_text.len() > MAX_TIMESTAMP_DIGITS) {
        return Err(WebhookError::Unsignable("timestamp"));
    }
    if style == Style::StandardWebhooks && !valid_id(id) {
        return Err(WebhookError::Unsignable("id"));
    }
    let tags = secrets.iter().map(|s| tag(style, &s.key, id, t_text, body));
    Ok(match style {
        Style::Stripe => {
            let mut v = format!("t={t_text}");
            for tag in tags {
                v.push_str(",v1=");
                crypto::push_hex(&mut v, &tag);
            }
            vec![(STRIPE_SIGNATURE, v)]
        }
        Style::GitHub => {
            let mut v = String::from("sha256=");
            for tag in tags {
                crypto::push_hex(&mut v, &tag);
            }
            vec![(GITHUB_SIGNATURE, v)]
        }
        Style::StandardWebhooks => {
            let mut v = String::new();
            for tag in tags {
                if !v.is_empty() {
                    v.push(' ');
                }
                v.push_str("v1,");
                STANDARD.encode_string(tag, &mut v);
            }
            vec![
                (WEBHOOK_ID, id.to_owned()),
                (WEBHOOK_TIMESTAMP, t_text.to_owned()),
                (WEBHOOK_SIGNATURE, v),
            ]
        }
    })
}

/// The HMAC of a message: `t.body` (Stripe), `body` (GitHub), `id.t.body` (Standard
/// Webhooks).
fn tag(style: Style, key: &[u8], id: &str, t: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new(key);
    match style {
        Style::Stripe => {
            mac.update(t.as_bytes());
            mac.update(b".");
        }
        Style::GitHub => {}
        Style::StandardWebhooks => {
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(t.as_bytes());
            mac.update(b".");
        }
    }
    mac.update(body);
    mac.finish()
}

/// A webhook's signature headers, read but not trusted yet: see [`Signed::verify`].
pub struct Signed<'h> {
    style: Style,
    /// The message id (Standard Webhooks), else empty.
    id: &'h str,
    /// The signed timestamp (not GitHub), in seconds, canonical decimal.
    timestamp: Option<i64>,
    /// The signatures of the scheme this module checks, `count` of them.
    sigs: [[u8; 32]; MAX_SIGNATURES],
    count: usize,
}

impl<'h> Signed<'h> {
    /// The convention the headers were read in.
    pub fn style(&self) -> Style {
        self.style
    }

    /// The `webhook-id` (Standard Webhooks only): the idempotency key. Trust it only after
    /// [`Signed::verify`].
    pub fn id(&self) -> Option<&'h str> {
        (self.style == Style::StandardWebhooks).then_some(self.id)
    }

    /// The signed timestamp (Stripe `t`, `webhook-timestamp`; none for GitHub). Trust it
    /// only after [`Signed::verify`].
    pub fn timestamp(&self) -> Option<Timestamp> {
        self.timestamp.map(Timestamp::from_secs)
    }

    /// Checks the signatures against `body` (the raw bytes received) under each of
    /// `secrets` (any may match), then the timestamp against `now` within `tolerance`.
    pub fn verify(
        &self,
        body: &[u8],
        secrets: &[WebhookSecret],
        tolerance: Tolerance,
        now: Timestamp,
    ) -> Result<Verified<verified::Hmac>, WebhookError> {
        if secrets.iter().any(|s| s.style != self.style) {
            return Err(WebhookError::BadSecret);
        }
        let sigs = &self.sigs[..self.count.min(MAX_SIGNATURES)];
        let mut digits = itoa::Buffer::new();
        let t_text = self.timestamp.map_or("", |t| digits.format(t));
        let matched = !sigs.is_empty()
            && secrets.iter().any(|s| {
                let tag = tag(self.style, &s.key, self.id, t_text, body);
                sigs.iter().any(|sig| ct_eq(&tag, sig))
            });
        if !matched {
            return Err(WebhookError::NoMatch);
        }
        if let Some(t) = self.timestamp {
            tolerance.check(t, now)?;
        }
        Ok(Verified::assertion())
    }

    fn push(&mut self, sig: [u8; 32]) {
        if let Some(slot) = self.sigs.get_mut(self.count) {
            *slot = sig;
            self.count += 1;
        }
    }
}

impl std::fmt::Debug for Signed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("style", &self.style)
            .field("id", &self.id())
            .field("timestamp", &self.timestamp)
            .field("signatures", &self.count)
            .finish()
    }
}

/// Reads the signature headers of `style` from `headers`, without the body or any key.
///
/// Each header must appear once, be at most [`MAX_HEADER_LEN`] bytes of visible ASCII
/// (surrounding spaces and tabs are ignored) and have the convention's form:
///
/// - Stripe: `,`-separated `key=value` elements (spaces around them ignored), exactly one
///   `t`; `v1` values are 64 lowercase hex digits; other keys are ignored.
/// - GitHub: `sha256=` then 64 lowercase hex digits.
/// - Standard Webhooks: `webhook-signature` is space-separated `version,signature` entries,
///   `v1` signatures are base64 of 32 bytes, other versions are ignored; `webhook-id` is 1 to
///   [`MAX_ID_LEN`] visible ASCII characters without `.` (so that `id.t.body` has one
///   reading).
///
/// Timestamps are canonical decimal seconds: digits only, no leading zero, at most
/// [`MAX_TIMESTAMP_DIGITS`].
pub fn parse(style: Style, headers: &HeaderMap) -> Result<Signed<'_>, WebhookError> {
    let mut s = Signed {
        style,
        id: "",
        timestamp: None,
        sigs: [[0; 32]; MAX_SIGNATURES],
        count: 0,
    };
    let mut seen = 0usize;
    let mut count = |name: &'static str| {
        seen += 1;
        if seen > MAX_SIGNATURES {
            Err(WebhookError::MalformedHeader(name))
        } else {
            Ok(())
        }
    };
    match style {
        Style::Stripe => {
            const NAME: &str = STRIPE_SIGNATURE;
            let bad = WebhookError::MalformedHeader(NAME);
            for element in header(headers, NAME)?.split(',') {
                let (key, value) = element.trim_matches(ows).split_once('=').ok_or(bad)?;
                match key {
                    "" => return Err(bad),
                    "t" if s.timestamp.is_none() => {
                        s.timestamp = Some(parse_timestamp(value).ok_or(bad)?);
                    }
                    "t" => return Err(bad),
                    "v1" => {
                        count(NAME)?;
                        s.push(lower_hex_tag(value).ok_or(bad)?);
                    }
                    _ => count(NAME)?,
                }
            }
            if s.timestamp.is_none() {
                return Err(bad);
            }
        }
        Style::GitHub => {
            const NAME: &str = GITHUB_SIGNATURE;
            let sig = header(headers, NAME)?
                .strip_prefix("sha256=")
                .and_then(lower_hex_tag)
                .ok_or(WebhookError::MalformedHeader(NAME))?;
            s.push(sig);
        }
        Style::StandardWebhooks => {
            let id = header(headers, WEBHOOK_ID)?;
            let t = header(headers, WEBHOOK_TIMESTAMP)?;
            let sigs = header(headers, WEBHOOK_SIGNATURE)?;
            if !valid_id(id) {
                return Err(WebhookError::MalformedHeader(WEBHOOK_ID));
            }
            s.id = id;
            s.timestamp =
                Some(parse_timestamp(t).ok_or(WebhookError::MalformedHeader(WEBHOOK_TIMESTAMP))?);
            let bad = WebhookError::MalformedHeader(WEBHOOK_SIGNATURE);
            for entry in sigs.split(' ').filter(|e| !e.is_empty()) {
                count(WEBHOOK_SIGNATURE)?;
                match entry.split_once(',').ok_or(bad)? {
                    ("v1", sig) => s.push(decode_b64_tag(sig).ok_or(bad)?),
                    ("", _) => return Err(bad),
                    _ => {}
                }
            }
        }
    }
    Ok(s)
}

/// [`parse`] then [`Signed::verify`]: the whole check of a received webhook.
pub fn verify(
    style: Style,
    headers: &HeaderMap,
    body: &[u8],
    secrets: &[WebhookSecret],
    tolerance: Tolerance,
    now: Timestamp,
) -> Result<Verified<verified::Hmac>, WebhookError> {
    parse(style, headers)?.verify(body, secrets, tolerance, now)
}

/// Optional whitespace around header values and list elements.
fn ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// The one value of header `name`, trimmed.
fn header<'h>(headers: &'h HeaderMap, name: &'static str) -> Result<&'h str, WebhookError> {
    let mut all = headers.get_all(name).iter();
    let value = all.next().ok_or(WebhookError::MissingHeader(name))?;
    if all.next().is_some() || value.len() > MAX_HEADER_LEN {
        return Err(WebhookError::MalformedHeader(name));
    }
    let text = value
        .to_str()
        .map_err(|_| WebhookError::MalformedHeader(name))?
        .trim_matches(ows);
    if text.is_empty() {
        return Err(WebhookError::MalformedHeader(name));
    }
    Ok(text)
}

/// Canonical decimal seconds: `0` or digits without a leading zero, at most
/// [`MAX_TIMESTAMP_DIGITS`] of them.
fn parse_timestamp(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let canonical = !b.is_empty()
        && b.len() <= MAX_TIMESTAMP_DIGITS
        && b.iter().all(u8::is_ascii_digit)
        && (b[0] != b'0' || b.len() == 1);
    canonical.then(|| b.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
}

/// A Standard Webhooks message id: 1 to [`MAX_ID_LEN`] visible ASCII characters, no `.`.
fn valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic() && b != b'.')
}

/// Exactly 64 lowercase hex digits (what Stripe and GitHub send, and what their libraries
/// compare as text: an uppercase digit does not match there, and does not here).
fn lower_hex_tag(s: &str) -> Option<[u8; 32]> {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        .then(|| crypto::unhex::<32>(s))
        .flatten()
}

/// Standard (padded, canonical) base64 of exactly 32 bytes.
fn decode_b64_tag(s: &str) -> Option<[u8; 32]> {
    if s.len() != 44 {
        return None;
    }
    // The decoder's size estimate for 44 characters is 33 bytes.
    let mut buf = [0u8; 36];
    let n = STANDARD.decode_slice(s, &mut buf).ok()?;
    buf.get(..n)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sign::hmac_sha256;
    use http::{HeaderName, HeaderValue};
    use proptest::prelude::*;

    fn map(pairs: &[(&str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        h
    }

    fn secret(style: Style, text: &str) -> WebhookSecret {
        parse_secret(style, text).unwrap()
    }

    const NOW: i64 = 1_700_000_000;
    const STRIPE_SECRET: &str = "whsec_portcullis_test_endpoint";
    const STRIPE_BODY: &[u8] = br#"{"id":"evt_test","object":"event"}"#;

    #[test]
    fn github_documented_example() {
        // docs.github.com, "Validating webhook deliveries", "Testing the webhook payload
        // validation".
        let key = secret(Style::GitHub, "It's a Secret to Everybody");
        let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let h = map(&[("X-Hub-Signature-256", sig.to_owned())]);
        let now = Timestamp::from_secs(0);
        assert!(verify(
            Style::GitHub,
            &h,
            b"Hello, World!",
            std::slice::from_ref(&key),
            Tolerance::default(),
            now
        )
        .is_ok());
        let signed = sign(Style::GitHub, &[key], "", b"Hello, World!", now).unwrap();
        assert_eq!(signed, vec![(GITHUB_SIGNATURE, sig.to_owned())]);
    }

    fn std_headers(id: &str, t: &str, sig: &str) -> HeaderMap {
        map(&[
            ("webhook-id", id.to_owned()),
            ("webhook-timestamp", t.to_owned()),
            ("webhook-signature", sig.to_owned()),
        ])
    }

    #[test]
    fn standard_webhooks_documented_example() {
        // The Standard Webhooks / Svix published vector.
        let key = secret(
            Style::StandardWebhooks,
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        let (id, t, body) = (
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        let sig = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        let now = Timestamp::from_secs(t);
        let h = std_headers(id, "1614265330", sig);
        let p = parse(Style::StandardWebhooks, &h).unwrap();
        assert_eq!(p.id(), Some(id));
        assert_eq!(p.timestamp(), Some(now));
        let keys = std::slice::from_ref(&key);
        assert!(p.verify(body, keys, Tolerance::default(), now).is_ok());
        let signed = sign(Style::StandardWebhooks, keys, id, body, now).unwrap();
        assert_eq!(signed[2], (WEBHOOK_SIGNATURE, sig.to_owned()));
        assert_eq!(signed[1], (WEBHOOK_TIMESTAMP, "1614265330".to_owned()));
        assert_eq!(signed[0], (WEBHOOK_ID, id.to_owned()));
        // The prefix may be left out, as the spec's libraries accept.
        let bare = secret(Style::StandardWebhooks, "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert!(p.verify(body, &[bare], Tolerance::default(), now).is_ok());
    }

    #[test]
    fn standard_webhooks_reference_library_vector() {
        // The spec repository's Rust library test (`test_sign`).
        let key = secret(
            Style::StandardWebhooks,
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        );
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let now = Timestamp::from_secs(1_649_367_553);
        let signed = sign(
            Style::StandardWebhooks,
            &[key],
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            body,
            now,
        )
        .unwrap();
        assert_eq!(
            signed[2].1,
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    #[test]
    fn stripe_known_answer_and_round_trip() {
        // Independent path: HMAC of the documented signed payload `t.body`, keyed with the
        // whole `whsec_…` text; pinned against Python's hmac module too.
        let mut payload = b"1700000000.".to_vec();
        payload.extend_from_slice(STRIPE_BODY);
        let expected = crypto::hex(&hmac_sha256(STRIPE_SECRET.as_bytes(), &payload));
        assert_eq!(
            expected,
            "ba9bc2f9e4a95995ea613031ab2d7669018b0d686e15e65e8048e2a0026d77fe"
        );
        let key = secret(Style::Stripe, STRIPE_SECRET);
        let now = Timestamp::from_secs(NOW);
        let signed = sign(
            Style::Stripe,
            std::slice::from_ref(&key),
            "",
            STRIPE_BODY,
            now,
        )
        .unwrap();
        assert_eq!(
            signed,
            vec![(STRIPE_SIGNATURE, format!("t=1700000000,v1={expected}"))]
        );
        // A header as Stripe sends it, with a v0 test-mode signature and spaces, verifies.
        let hand = format!("t=1700000000, v1={expected}, v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39");
        let h = map(&[("Stripe-Signature", hand)]);
        let p = parse(Style::Stripe, &h).unwrap();
        assert_eq!(p.timestamp(), Some(now));
        assert_eq!(p.id(), None);
        assert!(p
            .verify(STRIPE_BODY, &[key], Tolerance::default(), now)
            .is_ok());
    }

    fn all_styles() -> [(Style, WebhookSecret, WebhookSecret); 3] {
        [
            (
                Style::Stripe,
                secret(Style::Stripe, "whsec_old"),
                secret(Style::Stripe, "whsec_new"),
            ),
            (
                Style::GitHub,
                secret(Style::GitHub, "old"),
                secret(Style::GitHub, "new"),
            ),
            (
                Style::StandardWebhooks,
                secret(Style::StandardWebhooks, &new_secret(&[1u8; 24])),
                secret(Style::StandardWebhooks, &new_secret(&[2u8; 32])),
            ),
        ]
    }

    fn check(
        style: Style,
        h: &HeaderMap,
        body: &[u8],
        keys: &[WebhookSecret],
        now: i64,
    ) -> Result<(), WebhookError> {
        verify(
            style,
            h,
            body,
            keys,
            Tolerance::default(),
            Timestamp::from_secs(now),
        )
        .map(|_| ())
    }

    #[test]
    fn rotation_either_side() {
        let now = Timestamp::from_secs(NOW);
        for (style, old, new) in all_styles() {
            let both = [old.clone(), new.clone()];
            let one = |k: &WebhookSecret| sign(style, std::slice::from_ref(k), "msg_1", b"x", now);
            // Verifying with old+new accepts a header signed by either.
            for k in [&old, &new] {
                let h = map(&one(k).unwrap());
                assert_eq!(check(style, &h, b"x", &both, NOW), Ok(()), "{style:?}");
            }
            let stranger = match style {
                Style::StandardWebhooks => secret(style, &new_secret(&[3u8; 24])),
                _ => secret(style, "stranger"),
            };
            let h = map(&one(&old).unwrap());
            assert_eq!(
                check(style, &h, b"x", std::slice::from_ref(&stranger), NOW),
                Err(WebhookError::NoMatch)
            );
            // A header with two signatures verifies with either secret alone.
            if style == Style::GitHub {
                assert_eq!(
                    sign(style, &both, "", b"x", now),
                    Err(WebhookError::Unsignable("secrets"))
                );
                continue;
            }
            let h = map(&sign(style, &both, "msg_1", b"x", now).unwrap());
            assert_eq!(parse(style, &h).unwrap().count, 2);
            for k in [&old, &new] {
                assert_eq!(check(style, &h, b"x", std::slice::from_ref(k), NOW), Ok(()));
            }
            assert_eq!(
                check(style, &h, b"x", &[stranger], NOW),
                Err(WebhookError::NoMatch)
            );
        }
    }

    #[test]
    fn tolerance_bounds_are_inclusive() {
        let tol = Tolerance {
            past_secs: 300,
            future_secs: 60,
        };
        for (style, key, _) in all_styles() {
            let keys = std::slice::from_ref(&key);
            let h = map(&sign(style, keys, "msg_1", b"x", Timestamp::from_secs(NOW)).unwrap());
            let at = |now: i64| {
                verify(style, &h, b"x", keys, tol, Timestamp::from_secs(now))
                    .map(|_| ())
                    .map_err(|e| (e, e.code()))
            };
            if style == Style::GitHub {
                assert_eq!(at(0), Ok(()));
                continue;
            }
            // Signed at NOW: accepted from NOW - 60 to NOW + 300, both included.
            assert_eq!(at(NOW + 300), Ok(()));
            assert_eq!(
                at(NOW + 301),
                Err((WebhookError::TooOld, "signature_expired"))
            );
            assert_eq!(at(NOW - 60), Ok(()));
            assert_eq!(
                at(NOW - 61),
                Err((WebhookError::TooNew, "signature_expired"))
            );
            // Milliseconds are rounded down: NOW + 300.999 s is still NOW + 300.
            let late = Timestamp::from_millis((NOW + 300) * 1000 + 999);
            assert!(verify(style, &h, b"x", keys, tol, late).is_ok());
            // A forged message is a bad signature, however stale.
            assert_eq!(at(NOW + 10_000).map_err(|e| e.0), Err(WebhookError::TooOld));
            assert_eq!(
                verify(
                    style,
                    &h,
                    b"y",
                    keys,
                    tol,
                    Timestamp::from_secs(NOW + 10_000)
                )
                .map(|_| ()),
                Err(WebhookError::NoMatch)
            );
        }
    }

    #[test]
    fn any_changed_byte_fails() {
        let now = Timestamp::from_secs(NOW);
        let body = br#"{"a":1}"#;
        for (style, key, _) in all_styles() {
            let keys = std::slice::from_ref(&key);
            let pairs = sign(style, keys, "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", body, now).unwrap();
            assert_eq!(check(style, &map(&pairs), body, keys, NOW), Ok(()));
            for i in 0..body.len() {
                let mut b = body.to_vec();
                b[i] ^= 1;
                assert_eq!(
                    check(style, &map(&pairs), &b, keys, NOW),
                    Err(WebhookError::NoMatch)
                );
            }
            // Every byte of every header value (id, timestamp, signature), changed to each of
            // a few others that keep it a valid header value.
            for (n, (_, value)) in pairs.iter().enumerate() {
                for i in 0..value.len() {
                    for with in [b'0', b'1', b'a', b'A', b'=', b',', b'.', b'Z'] {
                        let mut v = value.clone().into_bytes();
                        if v[i] == with {
                            continue;
                        }
                        v[i] = with;
                        let mut changed = pairs.clone();
                        changed[n].1 = String::from_utf8(v).unwrap();
                        let r = check(style, &map(&changed), body, keys, NOW);
                        assert!(r.is_err(), "{style:?} {changed:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn headers_missing_repeated_or_malformed() {
        let now = Timestamp::from_secs(NOW);
        for (style, key, _) in all_styles() {
            let keys = std::slice::from_ref(&key);
            let pairs = sign(style, keys, "msg_1", b"x", now).unwrap();
            for n in 0..pairs.len() {
                let mut fewer = pairs.clone();
                let (name, _) = fewer.remove(n);
                let e = check(style, &map(&fewer), b"x", keys, NOW).unwrap_err();
                assert_eq!(e, WebhookError::MissingHeader(name));
                assert_eq!(e.code(), "missing_signature");
                let mut more = pairs.clone();
                more.push(pairs[n].clone());
                let e = check(style, &map(&more), b"x", keys, NOW).unwrap_err();
                assert_eq!(e, WebhookError::MalformedHeader(name));
                assert_eq!(e.code(), "invalid_signature");
            }
        }
        let sig = format!("v1={}", "ab".repeat(32));
        for bad in [
            "".to_owned(),
            "t=1700000000".to_owned() + ",",
            sig.clone(),
            format!("t=01700000000,{sig}"),
            format!("t=+1700000000,{sig}"),
            format!("t=-1,{sig}"),
            format!("t=1700000000,t=1700000000,{sig}"),
            format!("t=1700000000,{sig}x"),
            "t=1700000000,v1=abc".to_owned(),
            format!("t=1700000000,v1={}", "AB".repeat(32)),
            format!("t=1700000000,=x,{sig}"),
            format!("t=1700000000,{sig},junk"),
            format!(
                "t=1700000000{}",
                format!(",{sig}").repeat(MAX_SIGNATURES + 1)
            ),
            format!("t=1700000000,{sig}{}", ",v0=00".repeat(MAX_SIGNATURES)),
            format!("t=1700000000,{}", "x".repeat(MAX_HEADER_LEN)),
        ] {
            let h = map(&[(STRIPE_SIGNATURE, bad.clone())]);
            assert!(
                matches!(
                    parse(Style::Stripe, &h),
                    Err(WebhookError::MalformedHeader(_))
                ),
                "{bad:?}"
            );
        }
        // Well-formed without a v1: nothing to check.
        let h = map(&[(STRIPE_SIGNATURE, format!("t={NOW},v0={}", "ab".repeat(32)))]);
        let key = secret(Style::Stripe, STRIPE_SECRET);
        assert_eq!(
            check(Style::Stripe, &h, b"x", &[key], NOW),
            Err(WebhookError::NoMatch)
        );
        for bad in [
            "sha256=".to_owned(),
            format!("sha1={}", "ab".repeat(20)),
            format!("SHA256={}", "ab".repeat(32)),
            format!("sha256={}", "ab".repeat(33)),
            format!("sha256={}", "AB".repeat(32)),
            format!("sha256={},sha256={}", "ab".repeat(32), "ab".repeat(32)),
        ] {
            let h = map(&[(GITHUB_SIGNATURE, bad.clone())]);
            assert!(parse(Style::GitHub, &h).is_err(), "{bad:?}");
        }
        let b64 = "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        for (id, t, sig) in [
            ("msg.1", "1614265330", format!("v1,{b64}")),
            ("msg 1", "1614265330", format!("v1,{b64}")),
            (
                &"m".repeat(MAX_ID_LEN + 1)[..],
                "1614265330",
                format!("v1,{b64}"),
            ),
            ("msg_1", "1614265330.0", format!("v1,{b64}")),
            ("msg_1", "9999999999999", format!("v1,{b64}")),
            ("msg_1", "1614265330", b64.to_owned()),
            ("msg_1", "1614265330", format!("v1,{}", &b64[1..])),
            (
                "msg_1",
                "1614265330",
                format!("v1,{}", b64.replace('=', "A")),
            ),
            ("msg_1", "1614265330", format!(",{b64}")),
            ("msg_1", "1614265330", format!("v1,{b64}").repeat(2)),
            (
                "msg_1",
                "1614265330",
                vec![format!("v1a,{b64}"); MAX_SIGNATURES + 1].join(" "),
            ),
        ] {
            let h = std_headers(id, t, &sig);
            assert!(
                matches!(
                    parse(Style::StandardWebhooks, &h),
                    Err(WebhookError::MalformedHeader(_))
                ),
                "{id:?} {t:?} {sig:?}"
            );
        }
        // Asymmetric and unknown versions are ignored; extra spaces are tolerated.
        let h = std_headers(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            &format!("v1a,AAAA  v2,xyz v1,{b64} "),
        );
        let key = secret(
            Style::StandardWebhooks,
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        );
        assert_eq!(
            check(
                Style::StandardWebhooks,
                &h,
                br#"{"test": 2432232314}"#,
                &[key],
                1_614_265_330
            ),
            Ok(())
        );
        // Non-visible-ASCII header bytes.
        let mut h = HeaderMap::new();
        h.insert(
            GITHUB_SIGNATURE,
            HeaderValue::from_bytes(b"sha256=\xffab").unwrap(),
        );
        assert_eq!(
            parse(Style::GitHub, &h).unwrap_err(),
            WebhookError::MalformedHeader(GITHUB_SIGNATURE)
        );
    }

    #[test]
    fn secrets_are_checked_and_bound_to_their_style() {
        for bad in [
            "",
            "whsec_",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw ",
        ] {
            assert_eq!(
                parse_secret(Style::StandardWebhooks, bad).unwrap_err(),
                WebhookError::BadSecret,
                "{bad:?}"
            );
        }
        assert!(parse_secret(Style::StandardWebhooks, &new_secret(&[9u8; 64])).is_ok());
        let too_long = format!("whsec_{}", STANDARD.encode([9u8; 65]));
        assert!(parse_secret(Style::StandardWebhooks, &too_long).is_err());
        assert!(parse_secret(Style::Stripe, "").is_err());
        assert!(parse_secret(Style::GitHub, &"x".repeat(MAX_SECRET_LEN + 1)).is_err());
        assert_eq!(
            new_secret(&std::array::from_fn::<u8, 24, _>(|i| i as u8)),
            "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYX"
        );

        let stripe = secret(Style::Stripe, STRIPE_SECRET);
        assert!(!format!("{stripe:?}").contains("portcullis"));
        let now = Timestamp::from_secs(NOW);
        let h = map(&sign(Style::Stripe, std::slice::from_ref(&stripe), "", b"x", now).unwrap());
        let as_github = secret(Style::GitHub, STRIPE_SECRET);
        assert_eq!(
            check(
                Style::Stripe,
                &h,
                b"x",
                std::slice::from_ref(&as_github),
                NOW
            ),
            Err(WebhookError::BadSecret)
        );
        assert_eq!(
            sign(Style::Stripe, &[as_github], "", b"x", now),
            Err(WebhookError::BadSecret)
        );
        assert_eq!(
            check(Style::Stripe, &h, b"x", &[], NOW),
            Err(WebhookError::NoMatch)
        );
    }

    #[test]
    fn sign_refuses_what_the_convention_cannot_carry() {
        let now = Timestamp::from_secs(NOW);
        let std_key = secret(Style::StandardWebhooks, &new_secret(&[1u8; 24]));
        let keys = std::slice::from_ref(&std_key);
        for id in ["", "a.b", "a b", "é", &"m".repeat(MAX_ID_LEN + 1)] {
            assert_eq!(
                sign(Style::StandardWebhooks, keys, id, b"x", now),
                Err(WebhookError::Unsignable("id"))
            );
        }
        assert_eq!(
            sign(
                Style::StandardWebhooks,
                keys,
                "m",
                b"x",
                Timestamp::from_millis(-1)
            ),
            Err(WebhookError::Unsignable("timestamp"))
        );
        assert_eq!(
            sign(Style::StandardWebhooks, &[], "m", b"x", now),
            Err(WebhookError::Unsignable("secrets"))
        );
        let many = vec![std_key.clone(); MAX_SIGNATURES + 1];
        assert_eq!(
            sign(Style::StandardWebhooks, &many, "m", b"x", now),
            Err(WebhookError::Unsignable("secrets"))
        );
        // As many as the bound, and they all parse back.
        let h = map(&sign(Style::StandardWebhooks, &many[1..], "m", b"x", now).unwrap());
        assert_eq!(check(Style::StandardWebhooks, &h, b"x", keys, NOW), Ok(()));
        // Epoch 0 is a canonical timestamp.
        let h = map(&sign(Style::StandardWebhooks, keys, "m", b"", Timestamp::EPOCH).unwrap());
        assert_eq!(check(Style::StandardWebhooks, &h, b"", keys, 0), Ok(()));
    }

    fn header_text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[tv01a-f=, ]{0,120}",
            "(t=[0-9]{0,13}|v[01a]=[0-9a-f]{0,66}|sha256=[0-9a-fA-F]{0,66}|v1a?,[A-Za-z0-9+/=]{0,46}|[ ,=.]){0,20}",
            "[ -~]{0,200}",
        ]
    }

    proptest! {
        #[test]
        fn malformed_headers_never_panic(
            sig in header_text(),
            t in "[0-9+-]{0,14}",
            id in "[ -~]{0,20}",
            raw in proptest::collection::vec(any::<u8>(), 0..100),
            body in proptest::collection::vec(any::<u8>(), 0..40),
        ) {
            let keys = all_styles();
            for (style, key, other) in &keys {
                let mut h = HeaderMap::new();
                for name in [STRIPE_SIGNATURE, GITHUB_SIGNATURE, WEBHOOK_SIGNATURE] {
                    if let Ok(v) = HeaderValue::from_str(&sig) {
                        h.insert(name, v);
                    }
                }
                if let Ok(v) = HeaderValue::from_str(&t) {
                    h.insert(WEBHOOK_TIMESTAMP, v);
                }
                if let Ok(v) = HeaderValue::from_str(&id) {
                    h.insert(WEBHOOK_ID, v);
                }
                let both = [key.clone(), other.clone()];
                let _ = check(*style, &h, &body, &both, NOW);
                if let Ok(v) = HeaderValue::from_bytes(&raw) {
                    h.insert(STRIPE_SIGNATURE, v.clone());
                    h.insert(GITHUB_SIGNATURE, v.clone());
                    h.append(WEBHOOK_SIGNATURE, v);
                }
                prop_assert!(check(*style, &h, &body, &both, NOW).is_err());
            }
        }

        #[test]
        fn sign_then_verify_round_trips(
            body in proptest::collection::vec(any::<u8>(), 0..200),
            id in "[!-~&&[^.]]{1,40}",
            t in 0i64..100_000_000_000,
        ) {
            let now = Timestamp::from_secs(t);
            for (style, key, other) in all_styles() {
                let keys = [key, other];
                let n = if style == Style::GitHub { 1 } else { 2 };
                let h = map(&sign(style, &keys[..n], &id, &body, now).unwrap());
                let p = parse(style, &h).unwrap();
                prop_assert!(p.verify(&body, &keys[1..], Tolerance::default(), now).is_ok() || n == 1);
                prop_assert!(p.verify(&body, &keys, Tolerance::default(), now).is_ok());
            }
        }
    }
}
