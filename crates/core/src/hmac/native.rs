//! The native request-signing scheme (`hmac`), and the named legacy layouts a route may take
//! instead for partners who already sign another way.
//!
//! A signed request carries `X-API-Key` (the credential's key id), `X-Timestamp` (Unix
//! seconds), `X-Nonce` (16–128 characters of `[A-Za-z0-9_-]`), `X-Signature` (lowercase hex
//! HMAC-SHA256 of the string to sign under the credential's secret) and, optionally,
//! `X-Body-Hash` (lowercase hex SHA-256 of the body; when present it must match the body
//! received). The string to sign is, each part on its own line, joined by `\n` with no
//! trailing newline:
//!
//! ```text
//! METHOD                      uppercase
//! /path/as/sent               percent-encoding preserved, no query
//! a=1&b=x%20y                 the canonical query (below); an empty line if none
//! 1714000000                  X-Timestamp
//! 3f9a1c0e5b7d4a2f            X-Nonce
//! e3b0c442…b855               lowercase hex SHA-256 of the exact body bytes
//! ```
//!
//! The canonical query: the raw query split on `&` (empty pieces dropped), each piece split
//! at its first `=` (no `=`: an empty value), names and values percent-decoded (`+` is a
//! plus, not a space; a malformed escape is refused), then encoded again with RFC 3986's
//! unreserved characters (`A-Z a-z 0-9 - . _ ~`) as they are and every other byte as `%XX`
//! (uppercase hex), sorted by name then value (bytewise), joined as `name=value` with `&`.
//!
//! Signing the query is not optional in this layout: a scheme that leaves it out lets an
//! attacker change `?amount=`. Sorting means the order of parameters is not signed, as in
//! AWS Signature V4: an upstream that gives repeated parameters an order-dependent meaning
//! should not be behind a signed route with repeated parameters.

use super::{iso_basic, lower_hex_32};
use crate::crypto::sign::HmacSha256;
use crate::crypto::{self, Sha256Digest};
use crate::time::Timestamp;
use crate::verified::{Hmac, Verified};

/// The header naming the credential.
pub const KEY_ID: &str = "x-api-key";
/// The header with the signing time.
pub const TIMESTAMP: &str = "x-timestamp";
/// The header with the nonce.
pub const NONCE: &str = "x-nonce";
/// The header with the signature.
pub const SIGNATURE: &str = "x-signature";
/// The optional header with the body's SHA-256.
pub const BODY_HASH: &str = "x-body-hash";

/// The same names, made once (a lookup by a `&str` parses the name every time).
static H_KEY_ID: http::HeaderName = http::HeaderName::from_static(KEY_ID);
static H_TIMESTAMP: http::HeaderName = http::HeaderName::from_static(TIMESTAMP);
static H_NONCE: http::HeaderName = http::HeaderName::from_static(NONCE);
static H_SIGNATURE: http::HeaderName = http::HeaderName::from_static(SIGNATURE);
static H_BODY_HASH: http::HeaderName = http::HeaderName::from_static(BODY_HASH);

/// The longest key id read.
pub const MAX_KEY_ID_LEN: usize = 128;
/// At most this many query parameters are canonicalised.
pub const MAX_QUERY_PARAMS: usize = 256;

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NativeError {
    /// A header the layout needs is absent.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A header is repeated, not visible ASCII, or not of its form.
    #[error("{0} is malformed")]
    Malformed(&'static str),
    /// The query has a malformed percent-escape or too many parameters.
    #[error("the query cannot be canonicalised")]
    BadQuery,
    /// The signing time is outside the window around now.
    #[error("the signature is outside the time window")]
    Expired,
    /// `X-Body-Hash` is not the SHA-256 of the body received.
    #[error("the body hash does not match the body")]
    BodyHashMismatch,
    /// The signature is not the string to sign's under any of the credential's secrets.
    #[error("bad signature")]
    BadSignature,
}

impl NativeError {
    /// The wire error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing_signature",
            Self::Expired => "signature_expired",
            Self::BodyHashMismatch => "body_hash_mismatch",
            Self::Malformed(_) | Self::BadQuery | Self::BadSignature => "invalid_signature",
        }
    }
}

/// What is signed, and how. [`Layout::Native`] is the scheme above; the others are the
/// layouts partners brought from elsewhere, each weaker in a way its doc says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// `METHOD\npath\ncanonical-query\ntimestamp\nnonce\nsha256hex(body)`.
    Native,
    /// `METHOD\npath\ntimestamp\nsha256hex(body)`: no query and no nonce are signed. The
    /// query can be changed at will; a replay within the window is caught only because the
    /// signature itself is remembered (so two identical requests in one second are one).
    MethodPathTimestampBodyHash,
    /// `METHOD\npath\ntimestamp\nnonce\n` followed by the raw body: the query is not signed.
    MethodPathTimestampNonceBody,
    /// `METHOD\npath\ntimestamp\nnonce\nsha256hex(body)` with an ISO 8601 basic UTC
    /// timestamp (`20240422T120000Z`): the query is not signed.
    MethodPathIsoTimeNonceBodyHash,
}

impl Layout {
    /// Every layout.
    pub const ALL: [Layout; 4] = [
        Layout::Native,
        Layout::MethodPathTimestampBodyHash,
        Layout::MethodPathTimestampNonceBody,
        Layout::MethodPathIsoTimeNonceBodyHash,
    ];

    /// The name used in configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Layout::Native => "native",
            Layout::MethodPathTimestampBodyHash => "method-path-timestamp-bodyhash",
            Layout::MethodPathTimestampNonceBody => "method-path-timestamp-nonce-body",
            Layout::MethodPathIsoTimeNonceBodyHash => "method-path-isotime-nonce-bodyhash",
        }
    }

    /// The layout with this configuration name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.name() == name)
    }

    /// Whether the layout signs a nonce (and so requires `X-Nonce`).
    pub const fn has_nonce(self) -> bool {
        !matches!(self, Layout::MethodPathTimestampBodyHash)
    }

    /// Whether the layout signs the body's SHA-256 (the other one signs the body itself).
    pub const fn hashes_body(self) -> bool {
        !matches!(self, Layout::MethodPathTimestampNonceBody)
    }

    /// Whether the layout signs the query.
    pub const fn signs_query(self) -> bool {
        matches!(self, Layout::Native)
    }
}

/// The parts of the request that are signed.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method.
    pub method: &'a http::Method,
    /// The path as sent, without the query.
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
    /// The exact body bytes (empty when there is none).
    pub body: &'a [u8],
}

/// A request's signature headers, parsed (nothing verified yet).
#[derive(Debug, Clone)]
pub struct Signed<'a> {
    key_id: &'a str,
    timestamp_text: &'a str,
    timestamp: Timestamp,
    nonce: Option<&'a str>,
    signature: [u8; 32],
    body_hash: Option<Sha256Digest>,
    layout: Layout,
}

impl<'a> Signed<'a> {
    /// The credential's key id (look its secrets up by it).
    pub fn key_id(&self) -> &'a str {
        self.key_id
    }

    /// The signing time.
    pub fn timestamp(&self) -> Timestamp {
        self.timestamp
    }

    /// The nonce, in layouts that sign one.
    pub fn nonce(&self) -> Option<&'a str> {
        self.nonce
    }

    /// What makes this request single-use: its nonce, or (in the layout without one) its
    /// signature. Claim it only after [`verify`] succeeded, so that a forger cannot spend a
    /// partner's nonces.
    pub fn replay_key(&self) -> String {
        let mut k = String::with_capacity(8 + self.key_id.len() + 66);
        k.push_str("hmac:");
        k.push_str(self.key_id);
        match self.nonce {
            Some(n) => {
                k.push_str(":n:");
                k.push_str(n);
            }
            None => {
                k.push_str(":s:");
                crypto::push_hex(&mut k, &self.signature);
            }
        }
        k
    }
}

/// Reads the signature headers for `layout`. `Ok(None)`: no `X-Signature`, so the request
/// is not signed this way (an `X-API-Key` alone is an API key's business).
pub fn parse<'a>(
    headers: &'a http::HeaderMap,
    layout: Layout,
) -> Result<Option<Signed<'a>>, NativeError> {
    let Some(signature) = header(headers, &H_SIGNATURE)? else {
        return Ok(None);
    };
    let signature = lower_hex_32(signature).ok_or(NativeError::Malformed("X-Signature"))?;
    let key_id = header(headers, &H_KEY_ID)?.ok_or(NativeError::Missing("X-API-Key"))?;
    if key_id.is_empty() || key_id.len() > MAX_KEY_ID_LEN {
        return Err(NativeError::Malformed("X-API-Key"));
    }
    let timestamp_text =
        header(headers, &H_TIMESTAMP)?.ok_or(NativeError::Missing("X-Timestamp"))?;
    let timestamp = match layout {
        Layout::MethodPathIsoTimeNonceBodyHash => iso_basic(timestamp_text),
        _ => unix_seconds(timestamp_text),
    }
    .ok_or(NativeError::Malformed("X-Timestamp"))?;
    let nonce = if layout.has_nonce() {
        let n = header(headers, &H_NONCE)?.ok_or(NativeError::Missing("X-Nonce"))?;
        if !is_nonce(n) {
            return Err(NativeError::Malformed("X-Nonce"));
        }
        Some(n)
    } else {
        None
    };
    let body_hash = match header(headers, &H_BODY_HASH)? {
        None => None,
        Some(h) => Some(lower_hex_32(h).ok_or(NativeError::Malformed("X-Body-Hash"))?),
    };
    Ok(Some(Signed {
        key_id,
        timestamp_text,
        timestamp,
        nonce,
        signature,
        body_hash,
        layout,
    }))
}

/// What [`verify`] checks the time against.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// How far the signing time may be from now, either way, in seconds (default 300).
    pub window_secs: i64,
    /// Now.
    pub now: Timestamp,
}

/// Verifies `signed` for `req` under any of `secrets` (the current one and, during a
/// rotation's grace period, the previous one): the signing time within the window, then
/// `X-Body-Hash` against the body, then the signature, compared in constant time. The
/// nonce's single use is the caller's to claim afterwards ([`Signed::replay_key`]).
pub fn verify(
    signed: &Signed<'_>,
    req: &Request<'_>,
    secrets: &[&[u8]],
    expect: &Expect,
) -> Result<Verified<Hmac>, NativeError> {
    let skew = expect
        .now
        .as_secs()
        .saturating_sub(signed.timestamp.as_secs());
    if skew.saturating_abs() > expect.window_secs.max(0) {
        return Err(NativeError::Expired);
    }
    // The body is hashed once, and only where the layout or `X-Body-Hash` needs it.
    let body_hash = (signed.layout.hashes_body() || signed.body_hash.is_some())
        .then(|| crypto::sha256(req.body));
    if let (Some(sent), Some(hash)) = (signed.body_hash, body_hash) {
        if sent != hash {
            return Err(NativeError::BodyHashMismatch);
        }
    }
    let body_hex = body_hash.map(|h| crypto::hex_digest(&h));
    let query = canonical_query_if(signed.layout, req.query)?;
    for secret in secrets {
        let mut mac = HmacSha256::new(secret);
        write_string_to_sign(
            &mut |part| mac.update(part),
            signed.layout,
            req,
            query.as_deref(),
            signed.timestamp_text,
            signed.nonce,
            body_hex.as_ref().map(|h| &h[..]),
        );
        if mac.verify(&signed.signature) {
            return Ok(Verified::assertion());
        }
    }
    Err(NativeError::BadSignature)
}

/// The string to sign for `layout` (what a client MACs; tests and `portcullis sign`).
pub fn string_to_sign(
    layout: Layout,
    req: &Request<'_>,
    timestamp: &str,
    nonce: Option<&str>,
) -> Result<Vec<u8>, NativeError> {
    let query = canonical_query_if(layout, req.query)?;
    let mut out = Vec::new();
    write_string_to_sign(
        &mut |part| out.extend_from_slice(part),
        layout,
        req,
        query.as_deref(),
        timestamp,
        nonce,
        layout
            .hashes_body()
            .then(|| crypto::hex_digest(&crypto::sha256(req.body)))
            .as_ref()
            .map(|h| &h[..]),
    );
    Ok(out)
}

/// The headers a client adds to sign `req` with the credential `key_id` / `secret`.
pub fn sign(
    layout: Layout,
    req: &Request<'_>,
    key_id: &str,
    secret: &[u8],
    timestamp: &str,
    nonce: Option<&str>,
) -> Result<Vec<(&'static str, String)>, NativeError> {
    let tag = crypto::sign::hmac_sha256(secret, &string_to_sign(layout, req, timestamp, nonce)?);
    let mut headers = vec![
        (KEY_ID, key_id.to_owned()),
        (TIMESTAMP, timestamp.to_owned()),
        (SIGNATURE, crypto::hex(&tag)),
    ];
    if let (true, Some(n)) = (layout.has_nonce(), nonce) {
        headers.push((NONCE, n.to_owned()));
    }
    Ok(headers)
}

fn canonical_query_if(layout: Layout, query: Option<&str>) -> Result<Option<String>, NativeError> {
    if layout.signs_query() {
        canonical_query(query).map(Some)
    } else {
        Ok(None)
    }
}

/// Writes the string to sign in pieces (no copy of the body into a buffer).
fn write_string_to_sign(
    out: &mut dyn FnMut(&[u8]),
    layout: Layout,
    req: &Request<'_>,
    canonical_query: Option<&str>,
    timestamp: &str,
    nonce: Option<&str>,
    body_hex: Option<&[u8]>,
) {
    let hex = body_hex.unwrap_or_default();
    let method = req.method.as_str();
    if method.bytes().any(|b| b.is_ascii_lowercase()) {
        out(method.to_ascii_uppercase().as_bytes());
    } else {
        out(method.as_bytes());
    }
    out(b"\n");
    out(req.path.as_bytes());
    out(b"\n");
    if let Some(q) = canonical_query {
        out(q.as_bytes());
        out(b"\n");
    }
    out(timestamp.as_bytes());
    out(b"\n");
    match layout {
        Layout::Native | Layout::MethodPathIsoTimeNonceBodyHash => {
            out(nonce.unwrap_or_default().as_bytes());
            out(b"\n");
            out(hex);
        }
        Layout::MethodPathTimestampBodyHash => out(hex),
        Layout::MethodPathTimestampNonceBody => {
            out(nonce.unwrap_or_default().as_bytes());
            out(b"\n");
            out(req.body);
        }
    }
}

/// The canonical form of a raw query (see the module docs); empty for none.
pub fn canonical_query(query: Option<&str>) -> Result<String, NativeError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(String::new());
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    for piece in query.split('&').filter(|p| !p.is_empty()) {
        if pairs.len() >= MAX_QUERY_PARAMS {
            return Err(NativeError::BadQuery);
        }
        let (name, value) = piece.split_once('=').unwrap_or((piece, ""));
        pairs.push((reencode(name)?, reencode(value)?));
    }
    pairs.sort_unstable();
    let mut out = String::with_capacity(query.len() + 8);
    for (i, (name, value)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
    }
    Ok(out)
}

/// Percent-decodes `s` strictly and encodes it again with only the unreserved set bare.
fn reencode(s: &str) -> Result<String, NativeError> {
    super::decode(s)
        .map(|b| super::encoded(&b))
        .ok_or(NativeError::BadQuery)
}

/// The header's value if present once and visible ASCII; repeated or otherwise: malformed.
fn header<'a>(
    headers: &'a http::HeaderMap,
    name: &'static http::HeaderName,
) -> Result<Option<&'a str>, NativeError> {
    let mut values = headers.get_all(name).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(NativeError::Malformed(display_name(name)));
    }
    v.to_str()
        .map(|s| Some(s.trim()))
        .map_err(|_| NativeError::Malformed(display_name(name)))
}

fn display_name(name: &http::HeaderName) -> &'static str {
    match name.as_str() {
        KEY_ID => "X-API-Key",
        TIMESTAMP => "X-Timestamp",
        NONCE => "X-Nonce",
        SIGNATURE => "X-Signature",
        _ => "X-Body-Hash",
    }
}

fn is_nonce(n: &str) -> bool {
    (16..=128).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Decimal Unix seconds, 1 to 12 digits.
fn unix_seconds(s: &str) -> Option<Timestamp> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().map(Timestamp::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method};

    const SECRET: &[u8] = b"hs_test_secret_for_the_readme_example";
    const NOW: i64 = 1_714_000_000;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn expect() -> Expect {
        Expect {
            window_secs: 300,
            now: Timestamp::from_secs(NOW),
        }
    }

    fn check(layout: Layout, req: &Request<'_>, h: &HeaderMap) -> Result<(), NativeError> {
        let s = parse(h, layout)?.ok_or(NativeError::Missing("X-Signature"))?;
        verify(&s, req, &[SECRET], &expect()).map(|_| ())
    }

    #[test]
    fn rfc4231_hmac_sha256_vectors() {
        // RFC 4231 §4.2, §4.3, §4.4, §4.7, §4.8 (test case 5 is a truncated tag).
        let cases: [(Vec<u8>, Vec<u8>, &str); 5] = [
            (
                vec![0x0b; 20],
                b"Hi There".to_vec(),
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                b"Jefe".to_vec(),
                b"what do ya want for nothing?".to_vec(),
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                vec![0xaa; 20],
                vec![0xdd; 50],
                "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
            ),
            (
                vec![0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First".to_vec(),
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
            (
                vec![0xaa; 131],
                b"This is a test using a larger than block-size key and a larger than \
                  block-size data. The key needs to be hashed before being used by the \
                  HMAC algorithm."
                    .to_vec(),
                "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
            ),
        ];
        for (key, msg, want) in cases {
            assert_eq!(crypto::hex(&crypto::sign::hmac_sha256(&key, &msg)), want);
            let mut mac = HmacSha256::new(&key);
            let (a, b) = msg.split_at(msg.len() / 2);
            mac.update(a);
            mac.update(b);
            assert!(mac.verify(&crypto::unhex::<32>(want).unwrap()));
        }
    }

    #[test]
    fn the_readme_example_signs_as_documented() {
        let req = Request {
            method: &Method::POST,
            path: "/hmac/echo/orders",
            query: Some("b=2&a=x%20y&a=1"),
            body: br#"{"amount":100}"#,
        };
        let sts =
            string_to_sign(Layout::Native, &req, "1714000000", Some("3f9a1c0e5b7d4a2f")).unwrap();
        let body_hex = crypto::hex(&crypto::sha256(req.body));
        assert_eq!(
            String::from_utf8(sts.clone()).unwrap(),
            format!("POST\n/hmac/echo/orders\na=1&a=x%20y&b=2\n1714000000\n3f9a1c0e5b7d4a2f\n{body_hex}")
        );
        // Computed independently (Python's hmac module) for the README.
        assert_eq!(
            crypto::hex(&crypto::sign::hmac_sha256(SECRET, &sts)),
            "033d2a8727a029ebe0217bd1352513e9b92b58a5a669bb3cb084e8fb2fd17b0d"
        );
    }

    #[test]
    fn canonical_query_sorts_decodes_and_encodes() {
        let c = |q: &str| canonical_query(Some(q));
        assert_eq!(c("").unwrap(), "");
        assert_eq!(canonical_query(None).unwrap(), "");
        assert_eq!(c("b=2&a=1").unwrap(), "a=1&b=2");
        assert_eq!(c("a=2&a=1").unwrap(), "a=1&a=2");
        assert_eq!(c("flag&x=").unwrap(), "flag=&x=");
        assert_eq!(c("a=b+c").unwrap(), "a=b%2Bc");
        assert_eq!(c("a=%7e%41").unwrap(), "a=~A");
        assert_eq!(c("k%20y=v/w").unwrap(), "k%20y=v%2Fw");
        assert_eq!(c("&&a=1&").unwrap(), "a=1");
        assert_eq!(c("a=%e2%82%ac").unwrap(), "a=%E2%82%AC");
        for bad in ["a=%", "a=%4", "a=%zz", "%g0=1"] {
            assert_eq!(c(bad), Err(NativeError::BadQuery), "{bad}");
        }
        let many = vec!["a=1"; MAX_QUERY_PARAMS + 1].join("&");
        assert_eq!(c(&many), Err(NativeError::BadQuery));
    }

    fn signed_request(layout: Layout, ts: &str, req: &Request<'_>) -> HeaderMap {
        headers(
            &sign(
                layout,
                req,
                "hk_partner",
                SECRET,
                ts,
                Some("nonce_0123456789abcdef"),
            )
            .unwrap(),
        )
    }

    #[test]
    fn every_layout_round_trips_and_any_changed_part_fails() {
        let body = br#"{"amount":100}"#.to_vec();
        for layout in Layout::ALL {
            let ts = match layout {
                Layout::MethodPathIsoTimeNonceBodyHash => "20240424T230640Z",
                _ => "1714000000",
            };
            let req = Request {
                method: &Method::POST,
                path: "/orders/7",
                query: Some("amount=100"),
                body: &body,
            };
            let h = signed_request(layout, ts, &req);
            check(layout, &req, &h).unwrap_or_else(|e| panic!("{layout:?}: {e}"));

            let other_body = br#"{"amount":900}"#.to_vec();
            let changed = [
                Request {
                    method: &Method::PUT,
                    ..req
                },
                Request {
                    path: "/orders/8",
                    ..req
                },
                Request {
                    body: &other_body,
                    ..req
                },
            ];
            for c in changed {
                assert_eq!(
                    check(layout, &c, &h),
                    Err(NativeError::BadSignature),
                    "{layout:?}"
                );
            }
            let q = Request {
                query: Some("amount=900"),
                ..req
            };
            assert_eq!(
                check(layout, &q, &h).is_ok(),
                !layout.signs_query(),
                "{layout:?}: the query is signed only natively"
            );
            // Another timestamp (in the window) or nonce: not what was signed.
            let mut h2 = h.clone();
            let ts2 = match layout {
                Layout::MethodPathIsoTimeNonceBodyHash => "20240424T230641Z",
                _ => "1714000001",
            };
            h2.insert(TIMESTAMP, HeaderValue::from_static(ts2));
            assert_eq!(check(layout, &req, &h2), Err(NativeError::BadSignature));
            if layout.has_nonce() {
                let mut h3 = h.clone();
                h3.insert(NONCE, HeaderValue::from_static("nonce_0123456789abcdeF"));
                assert_eq!(check(layout, &req, &h3), Err(NativeError::BadSignature));
            }
        }
    }

    #[test]
    fn a_single_flipped_byte_anywhere_fails() {
        let req = Request {
            method: &Method::POST,
            path: "/p/a%2Fb",
            query: Some("x=1&y=%20"),
            body: b"0123456789",
        };
        let h = signed_request(Layout::Native, "1714000000", &req);
        let sig = h[SIGNATURE].to_str().unwrap().to_owned();
        for i in 0..sig.len() {
            let mut s = sig.clone().into_bytes();
            s[i] = if s[i] == b'0' { b'1' } else { b'0' };
            let mut h2 = h.clone();
            h2.insert(SIGNATURE, HeaderValue::from_bytes(&s).unwrap());
            assert_eq!(
                check(Layout::Native, &req, &h2),
                Err(NativeError::BadSignature)
            );
        }
        for i in 0..req.body.len() {
            let mut b = req.body.to_vec();
            b[i] ^= 1;
            let r = Request { body: &b, ..req };
            assert_eq!(
                check(Layout::Native, &r, &h),
                Err(NativeError::BadSignature)
            );
        }
        for (i, _) in req.path.char_indices().skip(1) {
            let mut p = req.path.as_bytes().to_vec();
            p[i] ^= 1;
            let p = String::from_utf8(p).unwrap();
            let r = Request { path: &p, ..req };
            assert_eq!(
                check(Layout::Native, &r, &h),
                Err(NativeError::BadSignature)
            );
        }
    }

    #[test]
    fn time_window_body_hash_and_rotation() {
        let req = Request {
            method: &Method::GET,
            path: "/x",
            query: None,
            body: b"",
        };
        for (ts, ok) in [
            (NOW, true),
            (NOW - 300, true),
            (NOW + 300, true),
            (NOW - 301, false),
            (NOW + 301, false),
        ] {
            let h = signed_request(Layout::Native, &ts.to_string(), &req);
            let r = check(Layout::Native, &req, &h);
            assert_eq!(r.is_ok(), ok, "{ts}");
            if !ok {
                assert_eq!(r.unwrap_err().code(), "signature_expired");
            }
        }
        let mut h = signed_request(Layout::Native, "1714000000", &req);
        h.insert(
            BODY_HASH,
            HeaderValue::from_str(&crypto::hex(&crypto::sha256(b""))).unwrap(),
        );
        check(Layout::Native, &req, &h).unwrap();
        h.insert(
            BODY_HASH,
            HeaderValue::from_str(&crypto::hex(&crypto::sha256(b"x"))).unwrap(),
        );
        assert_eq!(
            check(Layout::Native, &req, &h),
            Err(NativeError::BodyHashMismatch)
        );

        // Either of two secrets (a rotation's grace period).
        let h = signed_request(Layout::Native, "1714000000", &req);
        let s = parse(&h, Layout::Native).unwrap().unwrap();
        assert!(verify(&s, &req, &[b"new", SECRET], &expect()).is_ok());
        assert_eq!(
            verify(&s, &req, &[b"new"], &expect()).unwrap_err(),
            NativeError::BadSignature
        );
        assert!(verify(&s, &req, &[], &expect()).is_err());
    }

    #[test]
    fn headers_are_refused_by_name_and_form() {
        let req = Request {
            method: &Method::GET,
            path: "/x",
            query: None,
            body: b"",
        };
        let good = signed_request(Layout::Native, "1714000000", &req);
        assert!(parse(&HeaderMap::new(), Layout::Native).unwrap().is_none());
        let without = |name: &str| {
            let mut h = good.clone();
            h.remove(name);
            parse(&h, Layout::Native).map(|s| s.is_some())
        };
        assert_eq!(without(SIGNATURE), Ok(false));
        assert_eq!(without(KEY_ID), Err(NativeError::Missing("X-API-Key")));
        assert_eq!(without(TIMESTAMP), Err(NativeError::Missing("X-Timestamp")));
        assert_eq!(without(NONCE), Err(NativeError::Missing("X-Nonce")));
        let with = |name: &'static str, value: &str| {
            let mut h = good.clone();
            h.insert(name, HeaderValue::from_str(value).unwrap());
            parse(&h, Layout::Native).map(|_| ())
        };
        for (name, bad) in [
            (SIGNATURE, "ABCDEF".repeat(10) + "ABCD"),
            (SIGNATURE, "00".repeat(31)),
            (SIGNATURE, "zz".repeat(32)),
            (NONCE, "short".into()),
            (NONCE, "x".repeat(129)),
            (NONCE, "nonce with spaces!!".into()),
            (TIMESTAMP, "-1".into()),
            (TIMESTAMP, "1714000000.5".into()),
            (TIMESTAMP, "9".repeat(13)),
            (TIMESTAMP, "20240424T230640Z".into()),
            (KEY_ID, "k".repeat(MAX_KEY_ID_LEN + 1)),
            (BODY_HASH, "AB".repeat(32)),
        ] {
            assert!(
                matches!(with(name, &bad), Err(NativeError::Malformed(_))),
                "{name}: {bad}"
            );
        }
        let mut twice = good.clone();
        twice.append(SIGNATURE, good[SIGNATURE].clone());
        assert_eq!(
            parse(&twice, Layout::Native).unwrap_err(),
            NativeError::Malformed("X-Signature")
        );
        // The ISO layout reads only its own timestamp form.
        assert_eq!(
            iso_basic("20240424T230640Z"),
            Some(Timestamp::from_secs(1_714_000_000))
        );
        for bad in [
            "20241324T230640Z",
            "20240431T000000Z",
            "20240424T246000Z",
            "2024-04-24T23:06:40Z",
            "20240424t230640z",
        ] {
            assert_eq!(iso_basic(bad), None, "{bad}");
        }
        // The replay key: by nonce, or by signature where there is none.
        let s = parse(&good, Layout::Native).unwrap().unwrap();
        assert_eq!(s.replay_key(), "hmac:hk_partner:n:nonce_0123456789abcdef");
        let h = signed_request(Layout::MethodPathTimestampBodyHash, "1714000000", &req);
        let s = parse(&h, Layout::MethodPathTimestampBodyHash)
            .unwrap()
            .unwrap();
        assert!(s.replay_key().starts_with("hmac:hk_partner:s:"));
        assert_eq!(s.nonce(), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_headers_and_queries_never_panic(
            sig in "\\PC{0,80}", ts in "\\PC{0,20}", nonce in "\\PC{0,140}",
            q in "\\PC{0,64}", hash in "\\PC{0,70}",
        ) {
            let mut h = HeaderMap::new();
            for (k, v) in [(SIGNATURE, &sig), (TIMESTAMP, &ts), (NONCE, &nonce), (BODY_HASH, &hash)] {
                if let Ok(v) = HeaderValue::from_str(v) {
                    h.insert(k, v);
                }
            }
            h.insert(KEY_ID, HeaderValue::from_static("hk_1"));
            let req = Request { method: &Method::GET, path: "/", query: Some(&q), body: b"" };
            for layout in Layout::ALL {
                if let Ok(Some(s)) = parse(&h, layout) {
                    let _ = verify(&s, &req, &[SECRET], &expect());
                }
            }
            let _ = canonical_query(Some(&q));
        }
    }
}
