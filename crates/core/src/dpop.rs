//! DPoP proofs (RFC 9449): parse and verify the `DPoP` request header's JWT.
//!
//! A DPoP proof is a JWS the client signs with a key it holds and names in the proof's own
//! `jwk` header member (RFC 9449 §4.2). [`verify_proof`] makes the checks of RFC 9449 §4.3
//! against the request the caller saw and returns a [`DpopProof`]: the key's RFC 7638
//! thumbprint, the proof's `jti` and `iat`. What needs state stays with the caller:
//!
//! - refusing a second `DPoP` header field (§4.3 point 1), before calling this;
//! - remembering `jti` values for as long as proofs are accepted, to refuse replays (§11.1);
//! - comparing [`DpopProof::jkt`] with the access token's `cnf.jkt` (§6.1, §7.1), and
//!   issuing and rotating nonces (§8, §9).
//!
//! This is the one place where a key named by a token is used: a proof says which key it
//! is signed with, and only proves possession of that key. [`crate::jose::Header`] still has
//! no `jwk` member, so no ordinary token can choose its key; the proof's `jwk` is read here,
//! apart from it.
//!
//! ```
//! use portcullis_core::dpop::{self, ProofCheck};
//! use portcullis_core::jose::Algorithm;
//! use portcullis_core::Timestamp;
//!
//! // RFC 9449 §4.1, Figure 2: a proof sent to a token endpoint.
//! let proof = concat!(
//!     "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgt",
//!     "MzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VO",
//!     "SmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRj",
//!     "IiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0Ijox",
//!     "NTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJ",
//!     "K70nfbV37xRZT3Lg",
//! );
//! let check = ProofCheck {
//!     method: "POST",
//!     htu: "https://server.example.com/token",
//!     access_token: None,
//!     nonce: None,
//!     max_age_secs: 60,
//!     leeway_secs: 5,
//!     algorithms: &[Algorithm::Es256, Algorithm::EdDsa],
//! };
//! let proof = dpop::verify_proof(proof, &check, Timestamp::from_secs(1_562_262_620)).unwrap();
//! assert_eq!(proof.jkt, "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::crypto::sha256;
use crate::jose::{b64_decode, b64_encode, Algorithm, JoseError, Jwk, Jws};
use crate::secret::ct_eq;
use crate::time::Timestamp;

/// The longest proof read. A proof holds one public key and one signature: an RSA-4096 one
/// is about 2 KiB.
pub const MAX_PROOF_LEN: usize = 8 * 1024;

/// The longest `jti` taken, in characters (the caller stores every one it accepts).
pub const MAX_JTI_CHARS: usize = 256;

/// The header `typ` of a DPoP proof (RFC 9449 §4.2).
pub const TYP: &str = "dpop+jwt";

/// What the request the proof came with looks like, and what the server asks of proofs.
#[derive(Clone, Copy)]
pub struct ProofCheck<'a> {
    /// The request's method, compared case-sensitively with `htm` (RFC 9110 §9.1).
    pub method: &'a str,
    /// The request's target URI as the server computed it, `scheme://host[:port]/path`;
    /// compared with `htu` after [`normalize_htu`] of both (a query or fragment is ignored).
    pub htu: &'a str,
    /// The access token presented with the proof at a resource: `ath` is then required and
    /// must be [`ath`] of it (RFC 9449 §7.1). `None` at the token endpoint.
    pub access_token: Option<&'a str>,
    /// The nonce the server requires (RFC 9449 §8, §9), if any: `nonce` must then equal it.
    pub nonce: Option<&'a str>,
    /// How far into the past `iat` may lie, in seconds (negative counts as zero).
    pub max_age_secs: i64,
    /// How far into the future `iat` may lie, in seconds, for clock skew (negative: zero).
    pub leeway_secs: i64,
    /// The algorithms accepted. Only asymmetric ones count: `HS256` is refused even when
    /// listed (a proof's key is public, RFC 9449 §4.2).
    pub algorithms: &'a [Algorithm],
}

impl std::fmt::Debug for ProofCheck<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProofCheck")
            .field("method", &self.method)
            .field("htu", &self.htu)
            .field("access_token", &self.access_token.map(|_| "<hidden>"))
            .field("nonce", &self.nonce)
            .field("max_age_secs", &self.max_age_secs)
            .field("leeway_secs", &self.leeway_secs)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

/// A proof that passed every check of [`verify_proof`]. It can only be made there.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DpopProof {
    /// The RFC 7638 thumbprint of the proof's key (RFC 9449 §6.1): what `cnf.jkt` of a
    /// bound token holds.
    pub jkt: String,
    /// The proof's unique id, for the caller's replay check.
    pub jti: String,
    /// When the client made the proof, seconds since the epoch (rounded down).
    pub iat: i64,
    /// The proof's `nonce`, if it carries one as a string (checked only when the check
    /// asked for a nonce; a server whose nonces change over time checks this itself).
    pub nonce: Option<String>,
}

/// Why a proof was refused, in the order of the checks of RFC 9449 §4.3. The texts are for
/// logs; they never hold proof content. [`DpopError::code`] gives the error code for the
/// `WWW-Authenticate` challenge or the token endpoint's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// Longer than [`MAX_PROOF_LEN`].
    #[error("proof too large")]
    TooLarge,
    /// Not a single well-formed compact JWS whose claims are a JSON object with distinct
    /// members, or a `crit` header (no extension is understood) (§4.3 point 2).
    #[error("malformed proof")]
    Malformed,
    /// The header's `typ` is not `dpop+jwt` (§4.3 point 4).
    #[error("not a dpop+jwt")]
    BadType,
    /// `alg` is `none`, symmetric, unknown, or not accepted here (§4.3 point 5).
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// The header's `jwk` is missing, malformed, holds a private key, is of a type Portcullis
    /// does not take, or does not suit `alg` (§4.3 points 6 and 7).
    #[error("bad proof key")]
    BadKey,
    /// The signature does not verify under the proof's own key (§4.3 point 6).
    #[error("bad signature")]
    BadSignature,
    /// A claim the check needs is missing (§4.2, §4.3 point 3).
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
    /// A claim is present but unusable: of the wrong JSON type, a `jti` that is empty or
    /// longer than [`MAX_JTI_CHARS`], an `htu` that is not an http(s) URI, an `iat` out of
    /// range.
    #[error("bad claim {0}")]
    BadClaim(&'static str),
    /// `htm` is not the request's method (§4.3 point 8).
    #[error("method mismatch")]
    MethodMismatch,
    /// `htu` is not the request's URI, ignoring query and fragment (§4.3 point 9); also when
    /// the server's own URI cannot be normalised.
    #[error("uri mismatch")]
    UriMismatch,
    /// The nonce the server requires is missing or not the one required (§4.3 point 10):
    /// the answer carries a fresh `DPoP-Nonce` (§8).
    #[error("nonce required")]
    NonceRequired,
    /// `iat` is further in the past than the window allows (§4.3 point 11, §11.1).
    #[error("proof too old")]
    Stale,
    /// `iat` is further in the future than the leeway allows (§4.3 point 11).
    #[error("proof from the future")]
    FromTheFuture,
    /// `ath` is not the hash of the access token presented (§4.3 point 12).
    #[error("ath mismatch")]
    AthMismatch,
}

impl DpopError {
    /// The error code (RFC 9449 §7.1, §8, §12.2): `use_dpop_nonce` when the client must retry
    /// with the server's nonce, `invalid_dpop_proof` otherwise.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NonceRequired => "use_dpop_nonce",
            _ => "invalid_dpop_proof",
        }
    }

    /// The one translation of JOSE errors (the JWS form only: the key and algorithm are
    /// checked here before [`Jws::verify`] is asked).
    fn from_jose(e: JoseError) -> Self {
        match e {
            JoseError::TooLarge => Self::TooLarge,
            JoseError::AlgorithmNotAllowed => Self::AlgorithmNotAllowed,
            JoseError::BadSignature => Self::BadSignature,
            JoseError::BadJwk => Self::BadKey,
            JoseError::Malformed
            | JoseError::BadBase64
            | JoseError::BadHeader
            | JoseError::UnsupportedCritical => Self::Malformed,
        }
    }
}

/// `ath`: base64url (no padding) of the SHA-256 of the access token's ASCII (RFC 9449 §4.2).
pub fn ath(access_token: &str) -> String {
    b64_encode(&sha256(access_token.as_bytes()))
}

/// Verifies a DPoP proof (the `DPoP` header field's value) against the request described by
/// `check`, at `now`, making the checks of RFC 9449 §4.3 in this order: the form (a single
/// compact JWS, no `crit`), `typ`, `alg`, the header's `jwk` (public, of a type that suits
/// `alg`), the signature under that key, and only then the claims: `jti`, `htm`, `htu`,
/// `iat` (all four required), `nonce` and `ath` (required when `check` asks for them).
///
/// Claims that the check does not use (`nonce` without a required nonce, `ath` without an
/// access token, any other) are ignored. `iat` may be fractional (RFC 7519 §2); it is
/// rounded down.
pub fn verify_proof(
    proof: &str,
    check: &ProofCheck<'_>,
    now: Timestamp,
) -> Result<DpopProof, DpopError> {
    let jws = Jws::parse(proof, MAX_PROOF_LEN).map_err(DpopError::from_jose)?;
    let typ = jws.header().typ.as_deref().ok_or(DpopError::BadType)?;
    if !is_dpop_typ(typ) {
        return Err(DpopError::BadType);
    }
    let alg = jws
        .algorithm()
        .filter(|a| a.is_asymmetric() && check.algorithms.contains(a))
        .ok_or(DpopError::AlgorithmNotAllowed)?;
    let jwk = header_jwk(proof)?;
    if jwk
        .alg
        .as_deref()
        .is_some_and(|a| Algorithm::from_name(a) != Some(alg))
        || jwk.use_.as_deref().is_some_and(|u| u != "sig")
    {
        return Err(DpopError::BadKey);
    }
    let key = jwk.public_key().map_err(|_| DpopError::BadKey)?;
    if !key.suits(alg) {
        return Err(DpopError::BadKey);
    }
    let payload = jws.verify(&key, &[alg]).map_err(DpopError::from_jose)?;

    let claims = parse_claims(payload)?;
    let jti = string_claim(claims.jti.as_ref(), "jti")?;
    let jti_chars = jti.chars().count();
    if jti_chars == 0 || jti_chars > MAX_JTI_CHARS {
        return Err(DpopError::BadClaim("jti"));
    }
    let htm = string_claim(claims.htm.as_ref(), "htm")?;
    let htu = string_claim(claims.htu.as_ref(), "htu")?;
    let iat = match claims.iat.as_ref() {
        None => return Err(DpopError::MissingClaim("iat")),
        Some(v) => numeric_date(v).ok_or(DpopError::BadClaim("iat"))?,
    };

    if htm != check.method {
        return Err(DpopError::MethodMismatch);
    }
    let htu = normalize_htu(htu).ok_or(DpopError::BadClaim("htu"))?;
    if normalize_htu(check.htu).as_deref() != Some(htu.as_str()) {
        return Err(DpopError::UriMismatch);
    }
    if let Some(want) = check.nonce {
        let got = match claims.nonce.as_ref() {
            None => return Err(DpopError::NonceRequired),
            Some(v) => v.as_str().ok_or(DpopError::BadClaim("nonce"))?,
        };
        if !ct_eq(got.as_bytes(), want.as_bytes()) {
            return Err(DpopError::NonceRequired);
        }
    }
    let now = now.as_secs();
    if iat < now.saturating_sub(check.max_age_secs.max(0)) {
        return Err(DpopError::Stale);
    }
    if iat > now.saturating_add(check.leeway_secs.max(0)) {
        return Err(DpopError::FromTheFuture);
    }
    if let Some(token) = check.access_token {
        let got = string_claim(claims.ath.as_ref(), "ath")?;
        // Both are digests in base64url; the comparison need not hide anything, but costs
        // nothing either.
        if !ct_eq(got.as_bytes(), ath(token).as_bytes()) {
            return Err(DpopError::AthMismatch);
        }
    }

    Ok(DpopProof {
        jkt: jwk.thumbprint().map_err(|_| DpopError::BadKey)?,
        jti: jti.to_owned(),
        iat,
        nonce: claims
            .nonce
            .as_ref()
            .and_then(|v| v.as_str())
            .map(str::to_owned),
    })
}

/// What a client puts in a proof it makes with [`sign_proof`].
#[derive(Debug, Clone, Copy)]
pub struct NewProof<'a> {
    /// The request's method.
    pub htm: &'a str,
    /// The request's URI (a query is allowed; verifiers ignore it).
    pub htu: &'a str,
    /// At a resource: the access token sent with the proof (its hash goes in `ath`).
    pub access_token: Option<&'a str>,
    /// The server's nonce, when it asked for one.
    pub nonce: Option<&'a str>,
    /// A value never used before with this key.
    pub jti: &'a str,
    /// When the proof is made, seconds since the epoch.
    pub iat: i64,
}

/// The client side: a proof (RFC 9449 §4.2) signed by `key`, with the key's public JWK in
/// the header — what a client of Portcullis's protected routes sends as `DPoP`.
pub fn sign_proof(
    key: &crate::crypto::sign::SigningKey,
    proof: &NewProof<'_>,
) -> Result<String, crate::crypto::sign::KeyError> {
    let alg = key.algorithm();
    let jwk = Jwk::from_public(&key.public_key(), alg)
        .map_err(|_| crate::crypto::sign::KeyError::Library)?;
    let header = serde_json::json!({ "typ": TYP, "alg": alg.name(), "jwk": jwk });
    let mut claims = serde_json::json!({
        "jti": proof.jti,
        "htm": proof.htm,
        "htu": proof.htu,
        "iat": proof.iat,
    });
    if let Some(t) = proof.access_token {
        claims["ath"] = ath(t).into();
    }
    if let Some(n) = proof.nonce {
        claims["nonce"] = n.into();
    }
    let mut out = format!(
        "{}.{}",
        b64_encode(header.to_string().as_bytes()),
        b64_encode(claims.to_string().as_bytes())
    );
    let sig = key.sign(out.as_bytes())?;
    out.push('.');
    out.push_str(&b64_encode(&sig));
    Ok(out)
}

/// Normalises an `htu` value, or the server's own request URI, for comparison (RFC 9449
/// §4.3 point 9, with the syntax- and scheme-based normalisation of RFC 3986 §6.2.2 and
/// §6.2.3): the query and fragment are dropped; scheme and host are lowercased; the default
/// port (80 for `http`, 443 for `https`) and an empty port are dropped, other ports written
/// without leading zeros; an empty path becomes `/`; percent-encodings of unreserved
/// characters are decoded and the others written in uppercase hex; other characters not
/// allowed in a path are percent-encoded; `.` and `..` segments are removed.
///
/// `None` when `uri` is not an absolute `http` or `https` URI with a host (userinfo, a
/// malformed percent-encoding, whitespace or control characters, an IPv6 zone or IPvFuture
/// literal, a port above 65535: all `None`).
pub fn normalize_htu(uri: &str) -> Option<String> {
    if uri.len() > MAX_PROOF_LEN || uri.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let (scheme, rest) = uri.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let rest = rest.find(['?', '#']).map_or(rest, |end| &rest[..end]);
    let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
    let (host, port) = split_host_port(authority)?;
    let mut out = format!("{scheme}://{host}");
    if let Some(port) = port.filter(|p| *p != default_port) {
        out.push(':');
        out.push_str(itoa::Buffer::new().format(port));
    }
    if path.is_empty() {
        out.push('/');
    } else {
        out.push_str(&remove_dot_segments(&normalize_percent(path)?));
    }
    Some(out)
}

/// `typ` compares as a media type: case-insensitive, `application/` optional (RFC 7515
/// §4.1.9).
fn is_dpop_typ(typ: &str) -> bool {
    let typ = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    };
    typ.eq_ignore_ascii_case(TYP)
}

/// The header's `jwk` member (RFC 9449 §4.2), read from the header segment apart from
/// [`crate::jose::Header`], which has no such member on purpose. [`Jws::parse`] has already
/// checked the segment's form and refused repeated header members; `Jwk`'s derived reader
/// refuses repeated members it knows.
fn header_jwk(proof: &str) -> Result<Jwk, DpopError> {
    #[derive(Deserialize)]
    struct WithJwk {
        #[serde(default)]
        jwk: Option<Jwk>,
    }
    /// The names of the `jwk` members, to find private ones `Jwk` does not model.
    #[derive(Deserialize)]
    struct JwkNames {
        #[serde(default)]
        jwk: Option<BTreeMap<String, serde::de::IgnoredAny>>,
    }
    /// Private members of RSA (RFC 7518 §6.3.2), EC and OKP (`d`) and symmetric (`k`) keys.
    const PRIVATE: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

    let (segment, _) = proof.split_once('.').ok_or(DpopError::Malformed)?;
    let json = b64_decode(segment).map_err(|_| DpopError::Malformed)?;
    let names = serde_json::from_slice::<JwkNames>(&json)
        .map_err(|_| DpopError::BadKey)?
        .jwk
        .ok_or(DpopError::BadKey)?;
    if PRIVATE.iter().any(|m| names.contains_key(*m)) {
        return Err(DpopError::BadKey);
    }
    serde_json::from_slice::<WithJwk>(&json)
        .map_err(|_| DpopError::BadKey)?
        .jwk
        .ok_or(DpopError::BadKey)
}

/// The claims a proof carries (RFC 9449 §4.2), each still untyped so that a wrong type can
/// be told from a missing claim. A repeated member is refused by the derived reader.
#[derive(Deserialize)]
struct RawClaims {
    #[serde(default)]
    jti: Option<serde_json::Value>,
    #[serde(default)]
    htm: Option<serde_json::Value>,
    #[serde(default)]
    htu: Option<serde_json::Value>,
    #[serde(default)]
    iat: Option<serde_json::Value>,
    #[serde(default)]
    ath: Option<serde_json::Value>,
    #[serde(default)]
    nonce: Option<serde_json::Value>,
}

fn parse_claims(payload: &[u8]) -> Result<RawClaims, DpopError> {
    // A derived reader also takes a JSON array, member by position: a claims set is an
    // object (RFC 7519 §7.2 step 10).
    if payload.trim_ascii_start().first() != Some(&b'{') {
        return Err(DpopError::Malformed);
    }
    serde_json::from_slice(payload).map_err(|_| DpopError::Malformed)
}

fn string_claim<'v>(
    v: Option<&'v serde_json::Value>,
    name: &'static str,
) -> Result<&'v str, DpopError> {
    v.ok_or(DpopError::MissingClaim(name))?
        .as_str()
        .ok_or(DpopError::BadClaim(name))
}

/// A NumericDate (RFC 7519 §2): an integer, or a finite number rounded down, in `i64`.
fn numeric_date(v: &serde_json::Value) -> Option<i64> {
    let serde_json::Value::Number(n) = v else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?.floor();
    // `i64::MAX as f64` rounds up to 2^63, which is itself out of range: hence `<`.
    (f.is_finite() && f >= i64::MIN as f64 && f < i64::MAX as f64).then_some(f as i64)
}

/// Host (lowercased) and port of an authority without userinfo.
fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(literal) = authority.strip_prefix('[') {
        // An IPv6 literal; zone ids and IPvFuture are not taken.
        let (inside, after) = literal.split_once(']')?;
        if inside.is_empty()
            || !inside
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (&authority[..inside.len() + 2], port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        // A registered name or IPv4 address, as a DNS name would be written: no userinfo
        // (RFC 9110 §4.2.4 forbids it in http URIs), no percent-encoding, no sub-delims.
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return None;
        }
        (host, port)
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// Percent-encoding normalisation of a path (RFC 3986 §6.2.2.1, §6.2.2.2): `%XX` of an
/// unreserved character is decoded, other `%XX` are written in uppercase; characters a path
/// may not hold (non-ASCII, `{`, `\` …) are percent-encoded, as user agents send them.
/// `None` for a `%` not followed by two hex digits.
fn normalize_percent(path: &str) -> Option<String> {
    fn push_encoded(out: &mut String, b: u8) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        out.push('%');
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hi = char::from(*bytes.get(i + 1)?).to_digit(16)?;
            let lo = char::from(*bytes.get(i + 2)?).to_digit(16)?;
            // Two hex digits make a byte.
            let decoded = (hi * 16 + lo) as u8;
            if is_unreserved(decoded) {
                out.push(char::from(decoded));
            } else {
                push_encoded(&mut out, decoded);
            }
            i += 3;
        } else {
            if is_path_char(b) {
                out.push(char::from(b));
            } else {
                push_encoded(&mut out, b);
            }
            i += 1;
        }
    }
    Some(out)
}

/// RFC 3986 §2.3.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What a path may hold unencoded (RFC 3986 §3.3: `pchar` and `/`).
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'/' | b':'
                | b'@'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        )
}

/// RFC 3986 §5.2.4 for an absolute path (one that starts with `/`).
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." | ".." => {
                if *segment == ".." {
                    out.pop();
                }
                if i == last {
                    // "/a/b/.." is "/a/": the result still ends with a slash.
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sign::SigningKey;
    use crate::jose::sign_compact;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// RFC 9449 §4.1, Figure 2 (the line breaks removed).
    const RFC_PROOF: &str = concat!(
        "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgt",
        "MzR0VjNoUklDUkRZOXpDa0RscEJoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VO",
        "SmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19.eyJqdGkiOiItQndDM0VTYzZhY2MybFRj",
        "IiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwiaWF0Ijox",
        "NTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJ",
        "K70nfbV37xRZT3Lg",
    );
    /// RFC 9449 §6.1, Figure 9: the thumbprint of Figure 2's key.
    const RFC_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";
    const RFC_IAT: i64 = 1_562_262_616;

    const NOW: i64 = 1_800_000_000;
    const HTU: &str = "https://api.example.com/v1/things";
    const ALL: [Algorithm; 4] = [
        Algorithm::Es256,
        Algorithm::EdDsa,
        Algorithm::Rs256,
        Algorithm::Ps256,
    ];

    fn check() -> ProofCheck<'static> {
        ProofCheck {
            method: "GET",
            htu: HTU,
            access_token: None,
            nonce: None,
            max_age_secs: 300,
            leeway_secs: 30,
            algorithms: &ALL,
        }
    }

    fn claims() -> Value {
        json!({ "jti": "e1j3V_bKic8-LAEB", "htm": "GET", "htu": HTU, "iat": NOW })
    }

    fn public_jwk(key: &SigningKey) -> Value {
        serde_json::to_value(Jwk::from_public(&key.public_key(), key.algorithm()).unwrap()).unwrap()
    }

    /// The header a client would send: `typ`, `alg` and the key's JWK.
    fn header(key: &SigningKey) -> Value {
        json!({ "typ": TYP, "alg": key.algorithm().name(), "jwk": public_jwk(key) })
    }

    /// A compact JWS of these exact bytes, signed by `key`.
    fn sign_raw(key: &SigningKey, header: &[u8], claims: &[u8]) -> String {
        let mut t = format!("{}.{}", b64_encode(header), b64_encode(claims));
        let s = key.sign(t.as_bytes()).unwrap();
        t.push('.');
        t.push_str(&b64_encode(&s));
        t
    }

    fn sign(key: &SigningKey, header: &Value, claims: &Value) -> String {
        sign_raw(
            key,
            header.to_string().as_bytes(),
            claims.to_string().as_bytes(),
        )
    }

    fn verify(proof: &str, check: &ProofCheck<'_>) -> Result<DpopProof, DpopError> {
        verify_proof(proof, check, Timestamp::from_secs(NOW))
    }

    fn es256() -> SigningKey {
        SigningKey::generate(Algorithm::Es256).unwrap()
    }

    #[test]
    fn a_valid_proof_verifies_for_every_algorithm() {
        for alg in ALL {
            let key = SigningKey::generate(alg).unwrap();
            let proof = sign(&key, &header(&key), &claims());
            let got = verify(&proof, &check()).unwrap();
            let jwk = Jwk::from_public(&key.public_key(), alg).unwrap();
            assert_eq!(got.jkt, jwk.thumbprint().unwrap(), "{alg:?}");
            assert_eq!(got.jti, "e1j3V_bKic8-LAEB");
            assert_eq!(got.iat, NOW);
            // Not on this allow-list.
            let others: Vec<Algorithm> = ALL.into_iter().filter(|a| *a != alg).collect();
            let only_others = ProofCheck {
                algorithms: &others,
                ..check()
            };
            assert_eq!(
                verify(&proof, &only_others).unwrap_err(),
                DpopError::AlgorithmNotAllowed,
                "{alg:?}"
            );
        }
    }

    #[test]
    fn rfc9449_figure_2_parses_verifies_and_has_the_figure_9_thumbprint() {
        let jws = Jws::parse(RFC_PROOF, MAX_PROOF_LEN).unwrap();
        assert_eq!(jws.header().typ.as_deref(), Some("dpop+jwt"));
        assert_eq!(jws.algorithm(), Some(Algorithm::Es256));
        let jwk = header_jwk(RFC_PROOF).unwrap();
        assert_eq!(jwk.kty, "EC");
        assert_eq!(jwk.crv.as_deref(), Some("P-256"));
        assert_eq!(
            jwk.x.as_deref(),
            Some("l8tFrhx-34tV3hRICRDY9zCkDlpBhF42UQUfWVAWBFs")
        );
        assert_eq!(
            jwk.y.as_deref(),
            Some("9VE4jf_Ok_o64zbTTlcuNJajHmt6v9TDVrU0CdvGRDA")
        );
        assert_eq!(jwk.thumbprint().unwrap(), RFC_JKT);
        let claims: Value = serde_json::from_slice(jws.unverified_payload()).unwrap();
        assert_eq!(
            claims,
            json!({
                "jti": "-BwC3ESc6acc2lTc", "htm": "POST",
                "htu": "https://server.example.com/token", "iat": RFC_IAT,
            })
        );

        let at_token_endpoint = ProofCheck {
            method: "POST",
            htu: "https://server.example.com/token",
            ..check()
        };
        let at = |secs| verify_proof(RFC_PROOF, &at_token_endpoint, Timestamp::from_secs(secs));
        assert_eq!(
            at(RFC_IAT).unwrap(),
            DpopProof {
                jkt: RFC_JKT.to_owned(),
                jti: "-BwC3ESc6acc2lTc".to_owned(),
                iat: RFC_IAT,
                nonce: None,
            }
        );
        assert_eq!(at(RFC_IAT + 301).unwrap_err(), DpopError::Stale);
        assert_eq!(at(RFC_IAT - 31).unwrap_err(), DpopError::FromTheFuture);
        // One signature bit flipped.
        let last = RFC_PROOF.len() - 2;
        let flipped = format!(
            "{}{}",
            &RFC_PROOF[..last],
            if &RFC_PROOF[last..] == "Lg" {
                "Lw"
            } else {
                "Lg"
            }
        );
        assert_eq!(
            verify_proof(&flipped, &at_token_endpoint, Timestamp::from_secs(RFC_IAT)).unwrap_err(),
            DpopError::BadSignature
        );
    }

    #[test]
    fn rfc9449_section_7_1_ath_example() {
        assert_eq!(
            ath("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
    }

    #[test]
    fn typ_must_be_dpop_jwt() {
        let key = es256();
        for (typ, ok) in [
            (json!("dpop+jwt"), true),
            (json!("DPoP+JWT"), true),
            (json!("application/dpop+jwt"), true),
            (json!("JWT"), false),
            (json!("at+jwt"), false),
            (json!("dpop"), false),
            (json!("application/"), false),
            (json!(""), false),
        ] {
            let mut h = header(&key);
            h["typ"] = typ.clone();
            let got = verify(&sign(&key, &h, &claims()), &check());
            assert_eq!(got.is_ok(), ok, "{typ}: {got:?}");
            if !ok {
                assert_eq!(got.unwrap_err(), DpopError::BadType);
            }
        }
        let mut h = header(&key);
        h.as_object_mut().unwrap().remove("typ");
        assert_eq!(
            verify(&sign(&key, &h, &claims()), &check()).unwrap_err(),
            DpopError::BadType
        );
        // Not a string: the JOSE header itself is refused.
        h["typ"] = json!(1);
        assert_eq!(
            verify(&sign(&key, &h, &claims()), &check()).unwrap_err(),
            DpopError::Malformed
        );
    }

    #[test]
    fn none_hs256_and_unknown_algorithms_are_refused() {
        let key = es256();
        let with_hs = [Algorithm::Es256, Algorithm::Hs256];
        let check = ProofCheck {
            algorithms: &with_hs,
            ..check()
        };
        for alg in ["none", "None", "HS256", "ES384", "RS512", "es256", ""] {
            let mut h = header(&key);
            h["alg"] = json!(alg);
            let proof = sign(&key, &h, &claims());
            assert_eq!(
                verify(&proof, &check).unwrap_err(),
                DpopError::AlgorithmNotAllowed,
                "{alg}"
            );
            // Without a signature, as `none` tokens come.
            let (unsigned, _) = proof.rsplit_once('.').unwrap();
            assert_eq!(
                verify(&format!("{unsigned}."), &check).unwrap_err(),
                DpopError::Malformed,
                "{alg}"
            );
        }
        // HS256 with an oct key as the jwk, MACed with it: refused on the algorithm.
        let secret = [7u8; 32];
        let h = json!({ "typ": TYP, "alg": "HS256", "jwk": { "kty": "oct", "k": b64_encode(&secret) } });
        let input = format!(
            "{}.{}",
            b64_encode(h.to_string().as_bytes()),
            b64_encode(claims().to_string().as_bytes())
        );
        let mac = crate::crypto::sign::hmac_sha256(&secret, input.as_bytes());
        assert_eq!(
            verify(&format!("{input}.{}", b64_encode(&mac)), &check).unwrap_err(),
            DpopError::AlgorithmNotAllowed
        );
    }

    #[test]
    fn the_jwk_must_be_present_public_and_suit_the_algorithm() {
        let key = es256();
        let bad_key = |h: &Value| verify(&sign(&key, h, &claims()), &check()).unwrap_err();

        let mut h = header(&key);
        h.as_object_mut().unwrap().remove("jwk");
        assert_eq!(bad_key(&h), DpopError::BadKey, "missing");
        for not_a_key in [json!(null), json!("x"), json!([1]), json!({})] {
            h["jwk"] = not_a_key.clone();
            assert_eq!(bad_key(&h), DpopError::BadKey, "{not_a_key}");
        }
        // Private members: `d` (EC, OKP, RSA) and the RSA ones `Jwk` does not model.
        for member in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
            let mut h = header(&key);
            h["jwk"][member] = json!("jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI");
            assert_eq!(bad_key(&h), DpopError::BadKey, "{member}");
        }
        // An Ed25519 key under ES256, an EC key under EdDSA.
        let ed = SigningKey::generate(Algorithm::EdDsa).unwrap();
        let mut h = header(&key);
        h["jwk"] = public_jwk(&ed);
        h["jwk"].as_object_mut().unwrap().remove("alg");
        assert_eq!(bad_key(&h), DpopError::BadKey, "OKP under ES256");
        let mut h = header(&ed);
        h["jwk"] = public_jwk(&key);
        h["jwk"].as_object_mut().unwrap().remove("alg");
        assert_eq!(
            verify(&sign(&ed, &h, &claims()), &check()).unwrap_err(),
            DpopError::BadKey,
            "EC under EdDSA"
        );
        // The JWK says it is for another algorithm, or for encryption.
        let mut h = header(&key);
        h["jwk"]["alg"] = json!("RS256");
        assert_eq!(bad_key(&h), DpopError::BadKey, "jwk alg");
        let mut h = header(&key);
        h["jwk"]["use"] = json!("enc");
        assert_eq!(bad_key(&h), DpopError::BadKey, "jwk use");
        // A member repeated inside the jwk.
        let jwk = public_jwk(&key);
        let raw = format!(
            r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{{"kty":"EC","crv":"P-256","x":{},"x":{},"y":{}}}}}"#,
            jwk["x"], jwk["x"], jwk["y"]
        );
        let proof = sign_raw(&key, raw.as_bytes(), claims().to_string().as_bytes());
        assert_eq!(verify(&proof, &check()).unwrap_err(), DpopError::BadKey);
        // A curve or size Portcullis does not take.
        let mut h = header(&key);
        h["jwk"]["crv"] = json!("P-384");
        assert_eq!(bad_key(&h), DpopError::BadKey, "P-384");
        // Extra public members are fine and do not change the thumbprint.
        let mut h = header(&key);
        h["jwk"]["x5t"] = json!("abc");
        h["jwk"]["ext"] = json!(true);
        let got = verify(&sign(&key, &h, &claims()), &check()).unwrap();
        assert_eq!(
            got.jkt,
            Jwk::from_public(&key.public_key(), Algorithm::Es256)
                .unwrap()
                .thumbprint()
                .unwrap()
        );
    }

    #[test]
    fn the_signature_must_be_by_the_jwk() {
        let key = es256();
        let other = es256();
        // Signed by another key than the one in the header.
        let proof = sign(&other, &header(&key), &claims());
        assert_eq!(
            verify(&proof, &check()).unwrap_err(),
            DpopError::BadSignature
        );
        // A claim changed after signing.
        let good = sign(&key, &header(&key), &claims());
        let (h, rest) = good.split_once('.').unwrap();
        let (_, s) = rest.split_once('.').unwrap();
        let mut changed = claims();
        changed["htm"] = json!("DELETE");
        let forged = format!("{h}.{}.{s}", b64_encode(changed.to_string().as_bytes()));
        let delete = ProofCheck {
            method: "DELETE",
            ..check()
        };
        assert_eq!(
            verify(&forged, &delete).unwrap_err(),
            DpopError::BadSignature
        );
        // A zero signature.
        let zero = format!(
            "{}.{}",
            good.rsplit_once('.').unwrap().0,
            b64_encode(&[0; 64])
        );
        assert_eq!(
            verify(&zero, &check()).unwrap_err(),
            DpopError::BadSignature
        );
    }

    #[test]
    fn the_four_claims_are_required_and_typed() {
        let key = es256();
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims();
            f(&mut c);
            verify(&sign(&key, &header(&key), &c), &check())
        };
        for claim in ["jti", "htm", "htu", "iat"] {
            assert_eq!(
                with(&|c| {
                    c.as_object_mut().unwrap().remove(claim);
                })
                .unwrap_err(),
                DpopError::MissingClaim(claim)
            );
            assert_eq!(
                with(&|c| c[claim] = Value::Null).unwrap_err(),
                DpopError::MissingClaim(claim),
                "{claim}: null"
            );
            let wrong = if claim == "iat" { json!("1") } else { json!(1) };
            assert_eq!(
                with(&|c| c[claim] = wrong.clone()).unwrap_err(),
                DpopError::BadClaim(claim),
                "{claim}: wrong type"
            );
        }
        assert_eq!(
            with(&|c| c["jti"] = json!("")).unwrap_err(),
            DpopError::BadClaim("jti")
        );
        assert_eq!(
            with(&|c| c["jti"] = json!("é".repeat(MAX_JTI_CHARS + 1))).unwrap_err(),
            DpopError::BadClaim("jti")
        );
        assert_eq!(
            with(&|c| c["jti"] = json!("é".repeat(MAX_JTI_CHARS)))
                .unwrap()
                .jti
                .chars()
                .count(),
            MAX_JTI_CHARS
        );
        assert_eq!(
            with(&|c| c["htu"] = json!("not a uri")).unwrap_err(),
            DpopError::BadClaim("htu")
        );
        assert_eq!(
            with(&|c| c["iat"] = json!(1e300)).unwrap_err(),
            DpopError::BadClaim("iat")
        );
        assert_eq!(
            with(&|c| c["iat"] = json!(u64::MAX)).unwrap_err(),
            DpopError::BadClaim("iat")
        );
        // A fractional iat is rounded down.
        assert_eq!(
            with(&|c| c["iat"] = json!(NOW as f64 + 0.75)).unwrap().iat,
            NOW
        );
        // Claims that are not an object, or repeat a member.
        for raw in [
            "[\"e1j3V_bKic8-LAEB\",\"GET\",\"https://api.example.com/v1/things\",1800000000]",
            "\"x\"",
            "",
            r#"{"jti":"a","jti":"b","htm":"GET","htu":"https://api.example.com/v1/things","iat":1800000000}"#,
        ] {
            let proof = sign_raw(&key, header(&key).to_string().as_bytes(), raw.as_bytes());
            assert_eq!(
                verify(&proof, &check()).unwrap_err(),
                DpopError::Malformed,
                "{raw}"
            );
        }
    }

    #[test]
    fn htm_must_be_the_method_exactly() {
        let key = es256();
        let proof = sign(&key, &header(&key), &claims());
        for method in ["POST", "get", "GET ", ""] {
            let c = ProofCheck { method, ..check() };
            assert_eq!(
                verify(&proof, &c).unwrap_err(),
                DpopError::MethodMismatch,
                "{method}"
            );
        }
    }

    #[test]
    fn htu_must_be_the_uri_up_to_normalisation() {
        let key = es256();
        let proof_for = |htu: &str| {
            let mut c = claims();
            c["htu"] = json!(htu);
            sign(&key, &header(&key), &c)
        };
        for same in [
            HTU,
            "https://api.example.com/v1/things?page=2",
            "https://api.example.com/v1/things#top",
            "https://api.example.com:443/v1/things",
            "HTTPS://API.Example.COM/v1/things",
            "https://api.example.com/v1/./x/../things",
            "https://api.example.com/v1/%74hings",
        ] {
            assert!(verify(&proof_for(same), &check()).is_ok(), "{same}");
        }
        for other in [
            "https://api.example.com/v1/things/",
            "https://api.example.com/v1/Things",
            "https://api.example.com/v1",
            "http://api.example.com/v1/things",
            "https://api.example.com:8443/v1/things",
            "https://other.example.com/v1/things",
            "https://api.example.com/v1%2Fthings",
        ] {
            assert_eq!(
                verify(&proof_for(other), &check()).unwrap_err(),
                DpopError::UriMismatch,
                "{other}"
            );
        }
        // The server's own URI is normalised too.
        let proof = proof_for(HTU);
        let c = ProofCheck {
            htu: "https://API.example.com:443/v1/things?q=1",
            ..check()
        };
        assert!(verify(&proof, &c).is_ok());
        // A server URI that is no http(s) URI matches nothing.
        let c = ProofCheck {
            htu: "/v1/things",
            ..check()
        };
        assert_eq!(verify(&proof, &c).unwrap_err(), DpopError::UriMismatch);
    }

    #[test]
    fn normalize_htu_examples() {
        for (uri, want) in [
            ("https://a.example/p", Some("https://a.example/p")),
            ("HtTpS://A.EXAMPLE", Some("https://a.example/")),
            ("https://a.example:443/p", Some("https://a.example/p")),
            ("https://a.example:/p", Some("https://a.example/p")),
            ("https://a.example:0443/p", Some("https://a.example/p")),
            ("https://a.example:80/p", Some("https://a.example:80/p")),
            ("http://a.example:80/p", Some("http://a.example/p")),
            ("http://a.example:443/p", Some("http://a.example:443/p")),
            ("https://a.example:8443", Some("https://a.example:8443/")),
            ("https://a.example/p?q=1#f", Some("https://a.example/p")),
            ("https://a.example?q=/x", Some("https://a.example/")),
            ("https://a.example#/x", Some("https://a.example/")),
            (
                "https://a.example/a/./b/../c",
                Some("https://a.example/a/c"),
            ),
            ("https://a.example/a/b/..", Some("https://a.example/a/")),
            ("https://a.example/a/b/.", Some("https://a.example/a/b/")),
            ("https://a.example/../../x", Some("https://a.example/x")),
            ("https://a.example/%2e%2E/x", Some("https://a.example/x")),
            ("https://a.example//a/../b", Some("https://a.example//b")),
            ("https://a.example/%7euser", Some("https://a.example/~user")),
            ("https://a.example/a%2fb", Some("https://a.example/a%2Fb")),
            ("https://a.example/{x}", Some("https://a.example/%7Bx%7D")),
            (
                "https://a.example/caf\u{e9}",
                Some("https://a.example/caf%C3%A9"),
            ),
            (
                "https://a.example/caf%c3%a9",
                Some("https://a.example/caf%C3%A9"),
            ),
            ("https://[::1]:8443/p", Some("https://[::1]:8443/p")),
            ("https://[2001:DB8::1]:443", Some("https://[2001:db8::1]/")),
            ("https://192.0.2.1/p", Some("https://192.0.2.1/p")),
            ("ftp://a.example/p", None),
            ("https:/a.example/p", None),
            ("//a.example/p", None),
            ("/p", None),
            ("", None),
            ("https://", None),
            ("https:///p", None),
            ("https://:443/p", None),
            ("https://user@a.example/p", None),
            ("https://user:pw@a.example/p", None),
            ("https://a.example:65536/p", None),
            ("https://a.example:123456/p", None),
            ("https://a.example:44x/p", None),
            ("https://a.example:-1/p", None),
            ("https://a.exa%6Dple/p", None),
            ("https://a.example/p%", None),
            ("https://a.example/p%4", None),
            ("https://a.example/p%zz", None),
            ("https://a.example/a b", None),
            ("https://a.example/a\tb", None),
            ("https://a.example/a\u{0}b", None),
            (" https://a.example/p", None),
            ("https://a.example\\@evil.example/p", None),
            ("https://[::1%25eth0]/p", None),
            ("https://[v1.x]/p", None),
            ("https://[::1]x/p", None),
            ("https://[]/p", None),
            ("https://caf\u{e9}.example/p", None),
        ] {
            assert_eq!(normalize_htu(uri).as_deref(), want, "{uri:?}");
        }
    }

    #[test]
    fn iat_must_be_within_the_window() {
        let key = es256();
        let at = |iat: i64| {
            let mut c = claims();
            c["iat"] = json!(iat);
            verify(&sign(&key, &header(&key), &c), &check())
        };
        assert!(at(NOW - 300).is_ok());
        assert_eq!(at(NOW - 301).unwrap_err(), DpopError::Stale);
        assert_eq!(at(0).unwrap_err(), DpopError::Stale);
        assert_eq!(at(i64::MIN).unwrap_err(), DpopError::Stale);
        assert!(at(NOW + 30).is_ok());
        assert_eq!(at(NOW + 31).unwrap_err(), DpopError::FromTheFuture);
        assert_eq!(at(i64::MAX).unwrap_err(), DpopError::FromTheFuture);
        // Negative windows count as zero.
        let mut c = claims();
        c["iat"] = json!(NOW);
        let proof = sign(&key, &header(&key), &c);
        let strict = ProofCheck {
            max_age_secs: -5,
            leeway_secs: -5,
            ..check()
        };
        assert!(verify(&proof, &strict).is_ok());
        // Time is passed in: the same proof is stale later on.
        assert_eq!(
            verify_proof(&proof, &strict, Timestamp::from_secs(NOW + 1)).unwrap_err(),
            DpopError::Stale
        );
        assert_eq!(
            verify_proof(&proof, &strict, Timestamp::from_secs(NOW - 1)).unwrap_err(),
            DpopError::FromTheFuture
        );
    }

    #[test]
    fn ath_is_required_with_an_access_token() {
        let key = es256();
        let token = "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU";
        let at_resource = ProofCheck {
            access_token: Some(token),
            ..check()
        };
        let with_ath = |ath: Option<Value>| {
            let mut c = claims();
            if let Some(a) = ath {
                c["ath"] = a;
            }
            verify(&sign(&key, &header(&key), &c), &at_resource)
        };
        assert_eq!(with_ath(None).unwrap_err(), DpopError::MissingClaim("ath"));
        assert_eq!(
            with_ath(Some(json!(ath("another token")))).unwrap_err(),
            DpopError::AthMismatch
        );
        assert_eq!(
            with_ath(Some(json!(ath(token).to_uppercase()))).unwrap_err(),
            DpopError::AthMismatch
        );
        assert_eq!(
            with_ath(Some(json!(1))).unwrap_err(),
            DpopError::BadClaim("ath")
        );
        assert!(with_ath(Some(json!(ath(token)))).is_ok());
        // Without an access token (the token endpoint), an ath is ignored.
        let mut c = claims();
        c["ath"] = json!("whatever");
        assert!(verify(&sign(&key, &header(&key), &c), &check()).is_ok());
        // The access token never shows in the check's Debug.
        assert!(!format!("{at_resource:?}").contains("Kz~8"));
    }

    #[test]
    fn the_required_nonce_must_be_echoed() {
        let key = es256();
        let with_nonce = ProofCheck {
            nonce: Some("eyJ7S_zG.eyJH0-Z.HX4w-7v"),
            ..check()
        };
        let proof = |nonce: Option<&str>| {
            let mut c = claims();
            if let Some(n) = nonce {
                c["nonce"] = json!(n);
            }
            sign(&key, &header(&key), &c)
        };
        for bad in [None, Some("eyJ7S_zG.eyJH0-Z.HX4w-7w"), Some("")] {
            let e = verify(&proof(bad), &with_nonce).unwrap_err();
            assert_eq!(e, DpopError::NonceRequired, "{bad:?}");
            assert_eq!(e.code(), "use_dpop_nonce");
        }
        assert!(verify(&proof(Some("eyJ7S_zG.eyJH0-Z.HX4w-7v")), &with_nonce).is_ok());
        // A nonce the server did not ask for is ignored.
        assert!(verify(&proof(Some("stale")), &check()).is_ok());
    }

    #[test]
    fn every_other_error_is_invalid_dpop_proof() {
        for e in [
            DpopError::TooLarge,
            DpopError::Malformed,
            DpopError::BadType,
            DpopError::AlgorithmNotAllowed,
            DpopError::BadKey,
            DpopError::BadSignature,
            DpopError::MissingClaim("jti"),
            DpopError::BadClaim("htu"),
            DpopError::MethodMismatch,
            DpopError::UriMismatch,
            DpopError::Stale,
            DpopError::FromTheFuture,
            DpopError::AthMismatch,
        ] {
            assert_eq!(e.code(), "invalid_dpop_proof", "{e:?}");
        }
    }

    #[test]
    fn oversize_garbage_and_non_compact_input_is_refused() {
        let key = es256();
        let mut c = claims();
        c["pad"] = json!("x".repeat(MAX_PROOF_LEN));
        assert_eq!(
            verify(&sign(&key, &header(&key), &c), &check()).unwrap_err(),
            DpopError::TooLarge
        );
        // Just under the bound is read.
        let proof = sign(&key, &header(&key), &claims());
        let mut c = claims();
        c["pad"] = json!("x".repeat((MAX_PROOF_LEN - proof.len() - 60) * 3 / 4));
        let near = sign(&key, &header(&key), &c);
        assert!(near.len() <= MAX_PROOF_LEN);
        assert!(verify(&near, &check()).is_ok());

        for garbage in [
            "",
            ".",
            "..",
            "...",
            "not a jwt",
            "a.b",
            "a.b.c",
            "eyJ9.eyJ9.AA",
            &format!("{proof}.{proof}"),
            &format!("{proof}.x.y"),
            &format!(" {proof}"),
            &format!("{proof}\n"),
        ] {
            assert_eq!(
                verify(garbage, &check()).unwrap_err(),
                DpopError::Malformed,
                "{garbage:?}"
            );
        }
        // A critical extension.
        let mut h = header(&key);
        h["crit"] = json!(["exp"]);
        h["exp"] = json!(NOW);
        assert_eq!(
            verify(&sign(&key, &h, &claims()), &check()).unwrap_err(),
            DpopError::Malformed
        );
        // A repeated header member.
        let raw = format!(
            r#"{{"typ":"dpop+jwt","alg":"ES256","alg":"ES256","jwk":{}}}"#,
            public_jwk(&key)
        );
        let proof = sign_raw(&key, raw.as_bytes(), claims().to_string().as_bytes());
        assert_eq!(verify(&proof, &check()).unwrap_err(), DpopError::Malformed);
    }

    #[test]
    fn sign_compact_output_is_a_proof_only_with_a_jwk() {
        // What the JOSE signer makes has no jwk: it is no DPoP proof.
        let key = es256();
        let t = sign_compact(&key, "k1", Some(TYP), claims().to_string().as_bytes()).unwrap();
        assert_eq!(verify(&t, &check()).unwrap_err(), DpopError::BadKey);
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(s in "\\PC{0,300}", dots in "[A-Za-z0-9_.-]{0,300}") {
            for input in [&s, &dots] {
                let _ = verify(input, &check());
                let _ = normalize_htu(input);
            }
        }

        #[test]
        fn arbitrary_claims_never_panic(raw in "\\PC{0,200}") {
            let key = es256();
            let proof = sign_raw(&key, header(&key).to_string().as_bytes(), raw.as_bytes());
            let _ = verify(&proof, &check());
        }

        #[test]
        fn normalisation_is_idempotent(
            uri in "(?i)(https?)://[a-z0-9.-]{1,10}(:[0-9]{0,5})?(/[a-z0-9%._~!$&'()*+,;=:@{}\\\\-]{0,8}){0,4}(\\?[a-z=&/]{0,5})?(#[a-z/]{0,3})?"
        ) {
            if let Some(once) = normalize_htu(&uri) {
                let twice = normalize_htu(&once);
                prop_assert_eq!(twice.as_deref(), Some(once.as_str()));
            }
        }
    }

    #[test]
    fn proofs_made_by_sign_proof_verify() {
        for alg in [
            Algorithm::Es256,
            Algorithm::EdDsa,
            Algorithm::Rs256,
            Algorithm::Ps256,
        ] {
            let key = SigningKey::generate(alg).unwrap();
            let made = sign_proof(
                &key,
                &NewProof {
                    htm: "GET",
                    htu: "https://API.example.com:443/v1/things?b=c",
                    access_token: Some("tok"),
                    nonce: Some("n-1"),
                    jti: "j",
                    iat: NOW,
                },
            )
            .unwrap();
            let check = ProofCheck {
                method: "GET",
                htu: HTU,
                access_token: Some("tok"),
                nonce: Some("n-1"),
                max_age_secs: 60,
                leeway_secs: 5,
                algorithms: &[alg],
            };
            let proof = verify(&made, &check).unwrap();
            assert_eq!(proof.nonce.as_deref(), Some("n-1"));
            assert_eq!(
                proof.jkt,
                Jwk::from_public(&key.public_key(), alg)
                    .unwrap()
                    .thumbprint()
                    .unwrap()
            );
            assert_eq!(proof.jti, "j");
        }
    }
}
