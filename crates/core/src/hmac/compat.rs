//! The wire formats of other gateways' `hmac-auth` plugins, so that partners migrating from
//! Kong or Apache APISIX keep their clients: byte-exact to each plugin's signing string, with
//! Portcullis's safeguards on top.
//!
//! # Kong (`hmac-auth`)
//!
//! ```text
//! Authorization: hmac username="alice", algorithm="hmac-sha256", headers="date request-line", signature="<base64>"
//! ```
//!
//! (or `Proxy-Authorization`, which Kong reads first). The signing string is one line per
//! name in `headers`, joined by `\n` with no trailing newline: `name: value` for a header of
//! the request (the name as listed), `request-line` is `METHOD /path?query HTTP/1.1`, and
//! `@request-target` is `@request-target: method /path?query` (method in lower case).
//! Algorithms `hmac-sha1`, `hmac-sha256`, `hmac-sha384`, `hmac-sha512`. The time is `Date`
//! or `X-Date`; the body's `Digest: SHA-256=<base64>`.
//!
//! # Apache APISIX (`hmac-auth`, 3.11 and later, after draft-cavage-http-signatures)
//!
//! ```text
//! Authorization: Signature keyId="john-key",algorithm="hmac-sha256",headers="@request-target date",signature="<base64>"
//! ```
//!
//! The signing string is the key id, then one line per name in `headers` — `name: value`
//! for a header, `METHOD /path?query` for `@request-target` — each line ending in `\n`.
//! Algorithms `hmac-sha1`, `hmac-sha256`, `hmac-sha512`. Time and body as Kong's.
//!
//! # Safeguards (beyond what either plugin checks)
//!
//! - The method and the path (with the query) must be signed: `request-line` or
//!   `@request-target` (APISIX: `@request-target`).
//! - A time must be signed: `date` or `x-date`, present once, an IMF-fixdate
//!   (`Sun, 06 Nov 1994 08:49:37 GMT`), within the window of now; each signed one is checked.
//! - A request with a body must sign `digest` (unless [`Expect::allow_unsigned_body`]), and a
//!   `Digest` that is sent must be the body's SHA-256 — an unsigned `Digest` proves nothing,
//!   since whoever changes the body recomputes it.
//! - Every signed header must be present exactly once (a repeated header is ambiguous: which
//!   value was signed?), and no name may be listed twice.
//! - Replay: the caller spends [`Signed::replay_key`] after a successful [`verify`]: a signed
//!   `x-nonce` when the client sends one, else the signature itself.

use std::borrow::Cow;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use http::HeaderMap;

use crate::crypto;
use crate::crypto::sign::{self, HmacAlg};
use crate::time::Timestamp;
use crate::verified::{Hmac, Verified};

/// The longest `Authorization` value read.
pub const MAX_AUTHORIZATION_LEN: usize = 8 * 1024;
/// At most this many signed headers.
pub const MAX_SIGNED_HEADERS: usize = 32;
/// The longest key id read.
pub const MAX_KEY_ID_LEN: usize = 256;
/// The signed header that carries a client's nonce, when it sends one.
pub const NONCE_HEADER: &str = "x-nonce";

/// Which product's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Kong's `hmac-auth`.
    Kong,
    /// Apache APISIX's `hmac-auth` (3.11+).
    Apisix,
}

impl Format {
    /// The route option's name for it (`hmac_layout`).
    pub const fn name(self) -> &'static str {
        match self {
            Format::Kong => "kong",
            Format::Apisix => "apisix",
        }
    }

    fn scheme(self) -> &'static str {
        match self {
            Format::Kong => "hmac",
            Format::Apisix => "Signature",
        }
    }

    fn algorithm(self, name: &str) -> Option<HmacAlg> {
        match (self, name) {
            (_, "hmac-sha1") => Some(HmacAlg::Sha1),
            (_, "hmac-sha256") => Some(HmacAlg::Sha256),
            (Format::Kong, "hmac-sha384") => Some(HmacAlg::Sha384),
            (_, "hmac-sha512") => Some(HmacAlg::Sha512),
            _ => None,
        }
    }

    fn target_names(self) -> &'static [&'static str] {
        match self {
            Format::Kong => &["request-line", "@request-target"],
            Format::Apisix => &["@request-target"],
        }
    }
}

/// The name of an HMAC algorithm in these formats.
pub const fn algorithm_name(alg: HmacAlg) -> &'static str {
    match alg {
        HmacAlg::Sha1 => "hmac-sha1",
        HmacAlg::Sha256 => "hmac-sha256",
        HmacAlg::Sha384 => "hmac-sha384",
        HmacAlg::Sha512 => "hmac-sha512",
    }
}

/// Why a signed request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompatError {
    /// A parameter the format needs is absent.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A header or parameter is repeated, too long, or not of its form.
    #[error("{0} is malformed")]
    Malformed(&'static str),
    /// The algorithm is not one of the format's.
    #[error("the algorithm is not supported")]
    Algorithm,
    /// What must be signed is not: the method and path, a time, the body's digest.
    #[error("the signature does not cover {0}")]
    NotCovered(&'static str),
    /// A signed header is absent from the request, or repeated in it.
    #[error("a signed header is absent or repeated")]
    SignedHeader,
    /// The signed time is outside the window around now.
    #[error("the signature is outside the time window")]
    Expired,
    /// `Digest` is not the SHA-256 of the body received.
    #[error("the body digest does not match the body")]
    BodyHashMismatch,
    /// The signature is not the signing string's under any of the credential's secrets.
    #[error("bad signature")]
    BadSignature,
}

impl CompatError {
    /// The wire error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing_signature",
            Self::Expired => "signature_expired",
            Self::BodyHashMismatch => "body_hash_mismatch",
            Self::Malformed(_)
            | Self::Algorithm
            | Self::NotCovered(_)
            | Self::SignedHeader
            | Self::BadSignature => "invalid_signature",
        }
    }
}

/// A request's signature in one of these formats, parsed (nothing verified yet).
#[derive(Clone)]
pub struct Signed<'a> {
    format: Format,
    key_id: Cow<'a, str>,
    algorithm: HmacAlg,
    headers: Vec<&'a str>,
    signature: Vec<u8>,
    /// Which field carried it (`authorization` or `proxy-authorization`).
    field: &'static str,
}

impl std::fmt::Debug for Signed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signed")
            .field("format", &self.format)
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Signed<'_> {
    /// The key id (Kong's `username`, APISIX's `keyId`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The algorithm.
    pub fn algorithm(&self) -> HmacAlg {
        self.algorithm
    }

    /// The signed names, as listed.
    pub fn headers(&self) -> &[&str] {
        &self.headers
    }

    /// The field that carried the signature (to keep it from the upstream).
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// What makes this request single-use: its signed `x-nonce` when there is one
    /// (`Some(true)` in the second element), else its signature. Claim it after [`verify`].
    pub fn replay_key(&self, req_headers: &HeaderMap) -> (String, bool) {
        let mut k = String::with_capacity(80 + self.key_id.len());
        k.push_str(self.format.name());
        k.push(':');
        k.push_str(&self.key_id);
        let nonce = self
            .headers
            .iter()
            .any(|h| h.eq_ignore_ascii_case(NONCE_HEADER))
            .then(|| req_headers.get(NONCE_HEADER).and_then(|v| v.to_str().ok()))
            .flatten();
        match nonce {
            Some(n) => {
                k.push_str(":n:");
                k.push_str(n);
                (k, true)
            }
            None => {
                k.push_str(":s:");
                crypto::push_hex(&mut k, &self.signature);
                (k, false)
            }
        }
    }
}

/// The parts of the request that are signed.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method, as sent.
    pub method: &'a http::Method,
    /// The path as sent (percent-encoding preserved), without the query.
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: Option<&'a str>,
    /// The headers as received.
    pub headers: &'a HeaderMap,
    /// The exact body bytes (empty when there is none).
    pub body: &'a [u8],
}

/// What [`verify`] checks against.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// How far a signed time may be from now, either way, in seconds.
    pub window_secs: i64,
    /// Whether a request with a body may leave `digest` unsigned.
    pub allow_unsigned_body: bool,
    /// Now.
    pub now: Timestamp,
}

/// Reads a signature in `format` from `Proxy-Authorization` (Kong only, read first, as Kong
/// does) or `Authorization`. `Ok(None)`: no field of the format's scheme, so the request is
/// not signed this way.
pub fn parse(format: Format, headers: &HeaderMap) -> Result<Option<Signed<'_>>, CompatError> {
    let fields: &[&'static str] = match format {
        Format::Kong => &["proxy-authorization", "authorization"],
        Format::Apisix => &["authorization"],
    };
    for field in fields {
        let mut values = headers.get_all(*field).iter().filter(|v| {
            let b = v.as_bytes().trim_ascii_start();
            b.len() > format.scheme().len()
                && b[..format.scheme().len()].eq_ignore_ascii_case(format.scheme().as_bytes())
                && b[format.scheme().len()].is_ascii_whitespace()
        });
        let Some(v) = values.next() else {
            continue;
        };
        if values.next().is_some() {
            return Err(CompatError::Malformed("Authorization"));
        }
        return parse_value(format, v, field).map(Some);
    }
    Ok(None)
}

fn parse_value<'a>(
    format: Format,
    v: &'a http::HeaderValue,
    field: &'static str,
) -> Result<Signed<'a>, CompatError> {
    let bad = CompatError::Malformed("Authorization");
    if v.len() > MAX_AUTHORIZATION_LEN {
        return Err(bad);
    }
    let text = v.to_str().map_err(|_| bad.clone())?.trim();
    let rest = text
        .get(format.scheme().len()..)
        .ok_or_else(|| bad.clone())?
        .trim_start();
    let (mut key_id, mut algorithm, mut names, mut signature) = (None, None, None, None);
    for param in rest.split(',') {
        let param = param.trim();
        if param.is_empty() {
            continue;
        }
        let (name, value) = param.split_once('=').ok_or_else(|| bad.clone())?;
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .filter(|v| !v.contains('"'))
            .ok_or_else(|| bad.clone())?;
        let slot = match (format, name.trim()) {
            (Format::Kong, "username") | (Format::Apisix, "keyId") => &mut key_id,
            (_, "algorithm") => &mut algorithm,
            (_, "headers") => &mut names,
            (_, "signature") => &mut signature,
            // Parameters the plugins ignore are ignored here too.
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(bad);
        }
    }
    let key_id = key_id.ok_or(CompatError::Missing("the key id"))?;
    if key_id.is_empty()
        || key_id.len() > MAX_KEY_ID_LEN
        || !key_id.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(CompatError::Malformed("the key id"));
    }
    let algorithm = format
        .algorithm(algorithm.ok_or(CompatError::Missing("algorithm"))?)
        .ok_or(CompatError::Algorithm)?;
    let names = names.ok_or(CompatError::Missing("headers"))?;
    let headers: Vec<&str> = names.split(' ').filter(|n| !n.is_empty()).collect();
    if headers.is_empty() || headers.len() > MAX_SIGNED_HEADERS {
        return Err(CompatError::Malformed("headers"));
    }
    for (i, h) in headers.iter().enumerate() {
        let pseudo = format.target_names().contains(h);
        let token = h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !(pseudo || token) || headers[..i].iter().any(|o| o.eq_ignore_ascii_case(h)) {
            return Err(CompatError::Malformed("headers"));
        }
    }
    let signature = signature.ok_or(CompatError::Missing("signature"))?;
    let signature = STANDARD
        .decode(signature)
        .or_else(|_| STANDARD_NO_PAD.decode(signature))
        .map_err(|_| CompatError::Malformed("signature"))?;
    if signature.is_empty() || signature.len() > 64 {
        return Err(CompatError::Malformed("signature"));
    }
    Ok(Signed {
        format,
        key_id: Cow::Borrowed(key_id),
        algorithm,
        headers,
        signature,
        field,
    })
}

/// The value of a signed header: present exactly once.
fn single<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, CompatError> {
    let mut values = headers.get_all(name).iter();
    let v = values.next().ok_or(CompatError::SignedHeader)?;
    if values.next().is_some() {
        return Err(CompatError::SignedHeader);
    }
    v.to_str().map_err(|_| CompatError::SignedHeader)
}

/// The request target as the plugins read it: the path as sent, then `?query` when there is
/// one (an empty path is `/`).
fn request_uri(req: &Request<'_>) -> String {
    let path = if req.path.is_empty() { "/" } else { req.path };
    match req.query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    }
}

/// The signing string of `format` for the signed names `headers` and `key_id` over `req`.
/// Every signed header must be in the request exactly once.
pub fn signing_string(
    format: Format,
    key_id: &str,
    headers: &[&str],
    req: &Request<'_>,
) -> Result<String, CompatError> {
    let uri = request_uri(req);
    let mut lines: Vec<String> = Vec::with_capacity(headers.len() + 1);
    if format == Format::Apisix {
        lines.push(key_id.to_owned());
    }
    for h in headers {
        let line = match (format, *h) {
            (Format::Kong, "request-line") => format!("{} {uri} HTTP/1.1", req.method.as_str()),
            (Format::Kong, "@request-target") => format!(
                "@request-target: {} {uri}",
                req.method.as_str().to_ascii_lowercase()
            ),
            (Format::Apisix, "@request-target") => format!("{} {uri}", req.method.as_str()),
            (_, name) => {
                let lower = name.to_ascii_lowercase();
                format!("{name}: {}", single(req.headers, &lower)?)
            }
        };
        lines.push(line);
    }
    let mut s = lines.join("\n");
    if format == Format::Apisix {
        s.push('\n');
    }
    Ok(s)
}

/// The `Digest` value of `body` the plugins compare: `SHA-256=<base64>`.
pub fn digest(body: &[u8]) -> String {
    format!("SHA-256={}", STANDARD.encode(crypto::sha256(body)))
}

/// Verifies `signed` for `req` under any of `secrets` (the current one and, during a
/// rotation's grace period, the previous one): what must be signed is (method and path, a
/// time, the body's digest), each signed time is within the window, a `Digest` sent matches
/// the body, and the signature matches, compared in constant time. The single use of the
/// request is the caller's to claim afterwards ([`Signed::replay_key`]).
pub fn verify(
    signed: &Signed<'_>,
    req: &Request<'_>,
    secrets: &[&[u8]],
    e: &Expect,
) -> Result<Verified<Hmac>, CompatError> {
    let listed = |name: &str| signed.headers.iter().any(|h| h.eq_ignore_ascii_case(name));
    if !signed
        .format
        .target_names()
        .iter()
        .any(|t| signed.headers.contains(t))
    {
        return Err(CompatError::NotCovered("the method and path"));
    }
    let mut timed = false;
    for name in ["date", "x-date"] {
        if !listed(name) {
            continue;
        }
        let t = Timestamp::parse_http_date(single(req.headers, name)?)
            .ok_or(CompatError::Malformed("the signed date"))?;
        if e.now.as_secs().saturating_sub(t.as_secs()).saturating_abs() > e.window_secs.max(0) {
            return Err(CompatError::Expired);
        }
        timed = true;
    }
    if !timed {
        return Err(CompatError::NotCovered("a date"));
    }
    let digest_sent = req.headers.contains_key("digest");
    if digest_sent && single(req.headers, "digest").ok() != Some(digest(req.body).as_str()) {
        return Err(CompatError::BodyHashMismatch);
    }
    if !req.body.is_empty() && !e.allow_unsigned_body && !listed("digest") {
        return Err(CompatError::NotCovered("the body's digest"));
    }
    let text = signing_string(signed.format, &signed.key_id, &signed.headers, req)?;
    if secrets
        .iter()
        .any(|s| sign::hmac_with_verify(signed.algorithm, s, text.as_bytes(), &signed.signature))
    {
        Ok(Verified::assertion())
    } else {
        Err(CompatError::BadSignature)
    }
}

/// The `Authorization` value a client of `format` sends (for tests and `portcullis sign`):
/// the signature of `req` over the names `headers` under `secret`.
pub fn authorization(
    format: Format,
    alg: HmacAlg,
    key_id: &str,
    secret: &[u8],
    headers: &[&str],
    req: &Request<'_>,
) -> Result<String, CompatError> {
    let text = signing_string(format, key_id, headers, req)?;
    let sig = STANDARD.encode(sign::hmac_with(alg, secret, text.as_bytes()));
    let names = headers.join(" ");
    let alg = algorithm_name(alg);
    Ok(match format {
        Format::Kong => format!(
            "hmac username=\"{key_id}\", algorithm=\"{alg}\", headers=\"{names}\", signature=\"{sig}\""
        ),
        Format::Apisix => format!(
            "Signature keyId=\"{key_id}\",algorithm=\"{alg}\",headers=\"{names}\",signature=\"{sig}\""
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method};

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn expect_at(date: &str) -> Expect {
        Expect {
            window_secs: 300,
            allow_unsigned_body: false,
            now: Timestamp::parse_http_date(date).unwrap(),
        }
    }

    #[test]
    fn hmac_with_reproduces_rfc_4231_and_rfc_2202() {
        let (key, data) = (b"Jefe", b"what do ya want for nothing?");
        for (alg, hex) in [
            (HmacAlg::Sha1, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
            (
                HmacAlg::Sha256,
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (HmacAlg::Sha384, "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e8e2240ca5e69e2c78b3239ecfab21649"),
            (HmacAlg::Sha512, "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea2505549758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"),
        ] {
            let tag = sign::hmac_with(alg, key, data);
            assert_eq!(crypto::hex(&tag), hex, "{alg:?}");
            assert!(sign::hmac_with_verify(alg, key, data, &tag));
            assert!(!sign::hmac_with_verify(alg, key, b"other", &tag));
        }
    }

    #[test]
    fn kong_documented_example_verifies() {
        // Kong's hmac-auth documentation: secret "secret", `GET /requests`.
        let date = "Thu, 22 Jun 2017 17:15:21 GMT";
        let h = headers(&[
            ("date", date),
            ("authorization", "hmac username=\"alice123\", algorithm=\"hmac-sha256\", headers=\"date request-line\", signature=\"ujWCGHeec9Xd6UD2zlyxiNMCiXnDOWeVFMu5VeRUxtw=\""),
        ]);
        let req = Request {
            method: &Method::GET,
            path: "/requests",
            query: None,
            headers: &h,
            body: b"",
        };
        let s = parse(Format::Kong, &h).unwrap().unwrap();
        assert_eq!(s.key_id(), "alice123");
        assert_eq!(
            signing_string(Format::Kong, "alice123", s.headers(), &req).unwrap(),
            "date: Thu, 22 Jun 2017 17:15:21 GMT\nGET /requests HTTP/1.1"
        );
        verify(&s, &req, &[b"secret"], &expect_at(date)).unwrap();
        assert_eq!(
            verify(&s, &req, &[b"other"], &expect_at(date)).map(|_| ()),
            Err(CompatError::BadSignature)
        );
        // Out of the window.
        assert_eq!(
            verify(
                &s,
                &req,
                &[b"secret"],
                &expect_at("Thu, 22 Jun 2017 17:20:22 GMT")
            )
            .map(|_| ()),
            Err(CompatError::Expired)
        );
    }

    #[test]
    fn apisix_signing_string_is_the_documented_one() {
        // APISIX's hmac-auth documentation builds it as key id, `METHOD path`, `date: …`,
        // each line ending in a newline.
        let date = "Fri, 06 Sep 2024 06:41:29 GMT";
        let h = headers(&[("date", date)]);
        let req = Request {
            method: &Method::GET,
            path: "/get",
            query: Some("a=1"),
            headers: &h,
            body: b"",
        };
        assert_eq!(
            signing_string(
                Format::Apisix,
                "john-key",
                &["@request-target", "date"],
                &req
            )
            .unwrap(),
            "john-key\nGET /get?a=1\ndate: Fri, 06 Sep 2024 06:41:29 GMT\n"
        );
        let auth = authorization(
            Format::Apisix,
            HmacAlg::Sha256,
            "john-key",
            b"john-secret-key",
            &["@request-target", "date"],
            &req,
        )
        .unwrap();
        let mut h2 = h.clone();
        h2.insert("authorization", auth.parse().unwrap());
        let req2 = Request {
            headers: &h2,
            ..req
        };
        let s = parse(Format::Apisix, &h2).unwrap().unwrap();
        verify(&s, &req2, &[b"john-secret-key"], &expect_at(date)).unwrap();
        // Another query is another request.
        let req3 = Request {
            query: Some("a=2"),
            ..req2
        };
        assert_eq!(
            verify(&s, &req3, &[b"john-secret-key"], &expect_at(date)).map(|_| ()),
            Err(CompatError::BadSignature)
        );
    }

    fn signed_headers(
        format: Format,
        names: &[&str],
        extra: &[(&'static str, &str)],
        method: &Method,
        body: &[u8],
    ) -> HeaderMap {
        let mut h = headers(extra);
        let req = Request {
            method,
            path: "/orders",
            query: Some("amount=1"),
            headers: &h,
            body,
        };
        let a = authorization(format, HmacAlg::Sha512, "partner", b"s3cret", names, &req).unwrap();
        h.insert("authorization", a.parse().unwrap());
        h
    }

    #[test]
    fn the_safeguards_hold_for_both_formats() {
        let date = "Fri, 06 Sep 2024 06:41:29 GMT";
        let e = expect_at(date);
        let body = br#"{"amount":1}"#;
        let d = digest(body);
        for format in [Format::Kong, Format::Apisix] {
            let check = |names: &[&str], extra: &[(&'static str, &str)], body: &[u8]| {
                let h = signed_headers(format, names, extra, &Method::POST, body);
                let s = parse(format, &h).unwrap().unwrap().clone();
                let headers = h.clone();
                let req = Request {
                    method: &Method::POST,
                    path: "/orders",
                    query: Some("amount=1"),
                    headers: &headers,
                    body,
                };
                verify(&s, &req, &[b"s3cret"], &e).map(|_| ())
            };
            // Everything signed: accepted.
            check(
                &["@request-target", "date", "digest"],
                &[("date", date), ("digest", &d)],
                body,
            )
            .unwrap();
            // No method and path, no date, no digest with a body.
            assert_eq!(
                check(&["date"], &[("date", date)], b""),
                Err(CompatError::NotCovered("the method and path"))
            );
            assert_eq!(
                check(&["@request-target"], &[("date", date)], b""),
                Err(CompatError::NotCovered("a date"))
            );
            assert_eq!(
                check(
                    &["@request-target", "date"],
                    &[("date", date), ("digest", &d)],
                    body
                ),
                Err(CompatError::NotCovered("the body's digest"))
            );
            // A digest that is not the body's.
            assert_eq!(
                check(
                    &["@request-target", "date", "digest"],
                    &[("date", date), ("digest", &digest(b"other"))],
                    body
                ),
                Err(CompatError::BodyHashMismatch)
            );
            // A signed header sent twice.
            let mut h = signed_headers(
                format,
                &["@request-target", "x-date"],
                &[("x-date", date)],
                &Method::GET,
                b"",
            );
            h.append("x-date", date.parse().unwrap());
            let s = parse(format, &h).unwrap().unwrap();
            let req = Request {
                method: &Method::GET,
                path: "/orders",
                query: Some("amount=1"),
                headers: &h,
                body: b"",
            };
            assert_eq!(
                verify(&s, &req, &[b"s3cret"], &e).map(|_| ()),
                Err(CompatError::SignedHeader)
            );
        }
        // The unsigned-body opt-in.
        let h = signed_headers(
            Format::Apisix,
            &["@request-target", "date"],
            &[("date", date)],
            &Method::POST,
            body,
        );
        let s = parse(Format::Apisix, &h).unwrap().unwrap();
        let req = Request {
            method: &Method::POST,
            path: "/orders",
            query: Some("amount=1"),
            headers: &h,
            body,
        };
        let lax = Expect {
            allow_unsigned_body: true,
            ..e
        };
        verify(&s, &req, &[b"s3cret"], &lax).unwrap();
    }

    #[test]
    fn parse_refuses_by_form_and_ignores_other_schemes() {
        let none = headers(&[("authorization", "Bearer abc")]);
        assert!(parse(Format::Kong, &none).unwrap().is_none());
        assert!(parse(Format::Apisix, &none).unwrap().is_none());
        for (format, v) in [
            (Format::Kong, "hmac username=\"a\", algorithm=\"hmac-md5\", headers=\"date request-line\", signature=\"AAAA\""),
            (Format::Kong, "hmac username=\"a\", algorithm=\"hmac-sha256\", headers=\"date date request-line\", signature=\"AAAA\""),
            (Format::Kong, "hmac username=\"a\", username=\"b\", algorithm=\"hmac-sha256\", headers=\"date\", signature=\"AAAA\""),
            (Format::Kong, "hmac algorithm=\"hmac-sha256\", headers=\"date\", signature=\"AAAA\""),
            (Format::Kong, "hmac username=\"a\", algorithm=\"hmac-sha256\", headers=\"date\", signature=\"not base64!\""),
            (Format::Apisix, "Signature keyId=\"a\",algorithm=\"hmac-sha384\",headers=\"date\",signature=\"AAAA\""),
            (Format::Apisix, "Signature keyId=\"a\",algorithm=\"hmac-sha256\",signature=\"AAAA\""),
            (Format::Apisix, "Signature keyId=a,algorithm=\"hmac-sha256\",headers=\"date\",signature=\"AAAA\""),
        ] {
            let h = headers(&[("authorization", v)]);
            assert!(parse(format, &h).is_err(), "{v}");
        }
        // Kong reads Proxy-Authorization first.
        let h = headers(&[
            ("proxy-authorization", "hmac username=\"p\", algorithm=\"hmac-sha1\", headers=\"date request-line\", signature=\"AAAA\""),
            ("authorization", "hmac username=\"a\", algorithm=\"hmac-sha1\", headers=\"date request-line\", signature=\"AAAA\""),
        ]);
        let s = parse(Format::Kong, &h).unwrap().unwrap();
        assert_eq!((s.key_id(), s.field()), ("p", "proxy-authorization"));
    }

    #[test]
    fn the_replay_key_is_the_signed_nonce_or_the_signature() {
        let date = "Fri, 06 Sep 2024 06:41:29 GMT";
        let h = signed_headers(
            Format::Kong,
            &["request-line", "date", "x-nonce"],
            &[("date", date), ("x-nonce", "n-123")],
            &Method::GET,
            b"",
        );
        let s = parse(Format::Kong, &h).unwrap().unwrap();
        assert_eq!(s.replay_key(&h), ("kong:partner:n:n-123".to_owned(), true));
        let h = signed_headers(
            Format::Kong,
            &["request-line", "date"],
            &[("date", date), ("x-nonce", "n-123")],
            &Method::GET,
            b"",
        );
        let s = parse(Format::Kong, &h).unwrap().unwrap();
        let (k, nonce) = s.replay_key(&h);
        assert!(k.starts_with("kong:partner:s:") && !nonce, "{k}");
    }

    #[test]
    fn any_single_changed_byte_fails() {
        let date = "Fri, 06 Sep 2024 06:41:29 GMT";
        let e = expect_at(date);
        let body = br#"{"amount":1}"#;
        let d = digest(body);
        for format in [Format::Kong, Format::Apisix] {
            let target = format.target_names()[0];
            let h = signed_headers(
                format,
                &[target, "date", "digest"],
                &[("date", date), ("digest", &d)],
                &Method::POST,
                body,
            );
            let s = parse(format, &h).unwrap().unwrap();
            let base = Request {
                method: &Method::POST,
                path: "/orders",
                query: Some("amount=1"),
                headers: &h,
                body,
            };
            verify(&s, &base, &[b"s3cret"], &e).unwrap();
            let flip = |t: &str, i: usize| -> String {
                let mut b = t.as_bytes().to_vec();
                b[i] = if b[i] == b'a' { b'b' } else { b'a' };
                String::from_utf8(b).unwrap()
            };
            for i in 0..base.path.len() {
                let p = flip(base.path, i);
                let r = Request { path: &p, ..base };
                assert!(verify(&s, &r, &[b"s3cret"], &e).is_err(), "path {i}");
            }
            for i in 0.."amount=1".len() {
                let q = flip("amount=1", i);
                let r = Request {
                    query: Some(&q),
                    ..base
                };
                assert!(verify(&s, &r, &[b"s3cret"], &e).is_err(), "query {i}");
            }
            let put = Method::PUT;
            assert!(verify(
                &s,
                &Request {
                    method: &put,
                    ..base
                },
                &[b"s3cret"],
                &e
            )
            .is_err());
            for i in 0..body.len() {
                let mut b = body.to_vec();
                b[i] ^= 1;
                // The body alone, and the body with a digest recomputed for it.
                let r = Request { body: &b, ..base };
                assert!(verify(&s, &r, &[b"s3cret"], &e).is_err(), "body {i}");
                let mut h2 = h.clone();
                h2.insert("digest", digest(&b).parse().unwrap());
                let r = Request {
                    body: &b,
                    headers: &h2,
                    ..base
                };
                assert_eq!(
                    verify(&s, &r, &[b"s3cret"], &e).map(|_| ()),
                    Err(CompatError::BadSignature),
                    "body {i}"
                );
            }
            for i in 5..date.len() {
                let mut h2 = h.clone();
                let changed = flip(date, i);
                h2.insert("date", HeaderValue::from_str(&changed).unwrap());
                let r = Request {
                    headers: &h2,
                    ..base
                };
                assert!(verify(&s, &r, &[b"s3cret"], &e).is_err(), "date {i}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_authorization_values_never_panic(v in "\\PC{0,300}") {
            if let Ok(hv) = HeaderValue::from_str(&format!("hmac {v}")) {
                let mut h = HeaderMap::new();
                h.insert("authorization", hv);
                let _ = parse(Format::Kong, &h);
            }
            if let Ok(hv) = HeaderValue::from_str(&format!("Signature {v}")) {
                let mut h = HeaderMap::new();
                h.insert("authorization", hv);
                let _ = parse(Format::Apisix, &h);
            }
        }
    }
}
