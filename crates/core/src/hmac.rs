//! HMAC request signing and signed webhooks, pure: each scheme parses what the caller sent,
//! the caller looks up the key material, and `verify` checks it and makes the
//! [`crate::Verified`] proof.
//!
//! - [`native`]: Portcullis's own scheme (`X-API-Key`, `X-Timestamp`, `X-Nonce`,
//!   `X-Signature`) and the legacy layouts and other gateways' wire formats a route may take.
//! - [`sigv4`]: AWS Signature Version 4 (headers and presigned URLs).
//! - [`http_sig`]: RFC 9421 HTTP Message Signatures, with RFC 9530 `Content-Digest`.
//! - [`webhook`]: signing and verifying webhooks in the Stripe, GitHub and Standard Webhooks
//!   conventions.

pub mod compat;
pub mod http_sig;
pub mod native;
pub mod sigv4;
pub mod webhook;

// What the schemes read alike: strict percent-decoding, RFC 3986 unreserved encoding, hex
// digests and the ISO 8601 basic timestamp.

use std::borrow::Cow;

use crate::crypto::{self, Sha256Digest};
use crate::time::Timestamp;

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `bytes` URI-encoded: `A-Z a-z 0-9 - _ . ~` (and `/` when `keep_slash`) bare,
/// every other byte `%XX` in upper-case hex.
pub(crate) fn push_encoded(out: &mut String, bytes: &[u8], keep_slash: bool) {
    for &b in bytes {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(b >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(b & 0xf)]));
        }
    }
}

/// `bytes` URI-encoded (see [`push_encoded`]).
pub(crate) fn encoded(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    push_encoded(&mut out, bytes, false);
    out
}

/// Percent-decodes `s` strictly (`+` is a plus); `None` for a malformed escape.
pub(crate) fn decode(s: &str) -> Option<Cow<'_, [u8]>> {
    if !s.contains('%') {
        return Some(Cow::Borrowed(s.as_bytes()));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = bytes.get(i + 1).and_then(|c| hex_value(*c))?;
            let lo = bytes.get(i + 2).and_then(|c| hex_value(*c))?;
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    Some(Cow::Owned(out))
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// 64 lowercase hex digits.
pub(crate) fn lower_hex_32(s: &str) -> Option<Sha256Digest> {
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    crypto::unhex::<32>(s)
}

/// ISO 8601 basic UTC: `YYYYMMDDTHHMMSSZ`.
pub(crate) fn iso_basic(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (hour, minute, second) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    let month = time::Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(year).ok()?, month, u8::try_from(day).ok()?)
            .ok()?;
    let t = time::Time::from_hms(
        u8::try_from(hour).ok()?,
        u8::try_from(minute).ok()?,
        u8::try_from(second).ok()?,
    )
    .ok()?;
    Some(Timestamp::from_secs(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    ))
}
