//! RFC 9421 HTTP Message Signatures for requests, with RFC 9530 `Content-Digest`.
//!
//! A signed request carries two structured-field dictionaries keyed by *label*:
//!
//! ```text
//! Signature-Input: sig1=("@method" "@target-uri" "content-digest");created=1618884473;keyid="k1"
//! Signature: sig1=:base64-of-the-signature:
//! ```
//!
//! The inner list names the covered components; the signature is over the *signature base*
//! (RFC 9421 §2.5): one `"component": value` line per covered component, then
//! `"@signature-params": ` and the inner list serialised again (RFC 8941 §4.1, the canonical
//! form: the RFC's examples are in it, so what a conformant signer sent is reproduced).
//!
//! # Shape
//!
//! 1. [`parse`] reads both headers without trusting them (`Ok(None)`: neither is present,
//!    the request does not use this scheme). Every label of one header must be in the other.
//! 2. [`select`] (or, for an asynchronous key store, the same loop around [`check_policy`])
//!    picks the label to verify; the caller looks its `keyid` up.
//! 3. [`verify`] checks the policy again, that `alg` (if sent) is the key's algorithm,
//!    rebuilds the signature base, checks the signature and then `Content-Digest` against
//!    the body, and makes the [`Verified`] proof. Checking the `nonce` against replays is the
//!    caller's ([`ParsedSignature::nonce`], error [`HttpSigError::Replayed`]).
//!
//! # Label selection
//!
//! Labels are tried in their `Signature-Input` order. A label is a candidate when it has a
//! `keyid`, its `tag` is the route's (when the route names one), and [`check_policy`] holds
//! for it (the covered-component floor, the route's required components, `content-digest`
//! with a body, `created`/`expires`). The first candidate whose `keyid` names a known key is
//! the one verified; there is no fall back to a later label if its signature is bad. No
//! candidate: the first policy error (errors of labels with the route's tag first); a
//! candidate but no known key: [`HttpSigError::UnknownKey`].
//!
//! # Policy
//!
//! Whatever the route configures, a signature must cover `@method`, and the target: either
//! `@target-uri` or `@request-target`, or `@path` together with `@query` when the request
//! has a (non-empty) query. A request with a body must cover `content-digest` (unless the
//! route turns [`Policy::require_content_digest_with_body`] off), and whenever
//! `content-digest` is covered and the body is at hand the field must match it: every
//! algorithm Portcullis knows (`sha-256`, `sha-512`) that is present must match, unknown ones
//! are ignored, and at least one must be known. `created` is required and must be within
//! [`Policy::window_secs`] of now, either way; `expires`, if present, must be after now.
//! `alg` is optional: the registered key decides the algorithm, and an `alg` that is not
//! the key's is refused. `keyid` is required by [`select`].
//!
//! # Components
//!
//! Derived: `@method`, `@target-uri` (`scheme://authority` as given, then the path, then
//! `?query` when there is one), `@authority` (lowercased, default port removed), `@scheme`,
//! `@request-target`, `@path` (empty is `/`), `@query` (`?` alone when there is none) and
//! `@query-param;name="…"` (WHATWG form decoding then percent-encoding with the
//! form-urlencoded set, space as `%20`; a name absent or repeated in the query is an error).
//! `@status` and the `req` and `tr` parameters are for responses and trailers: refused.
//! Fields: by lowercase name, each line trimmed, lines joined with `", "`; parameters `key`
//! (the field parsed as a dictionary, one member serialised), `sf` (re-serialised, only for
//! fields known to be dictionaries: `content-digest`, `repr-digest`, `want-content-digest`,
//! `want-repr-digest`, `signature`, `signature-input`, `accept-signature`, `priority`) and
//! `bs` (each line as a byte sequence). A component covered twice (same name and
//! parameters), or a field absent from the request, is an error.
//!
//! # Strictness and bounds
//!
//! The structured-field parser takes what these headers need (dictionaries, inner lists,
//! strings, tokens, integers, byte sequences, booleans; no decimals) and is stricter than
//! RFC 8941 where leniency would let two parsers disagree: a repeated dictionary key or
//! parameter is refused (RFC 8941 keeps the last), each field line must be a dictionary on
//! its own (lines are not joined before parsing), an empty line is refused. At most
//! [`MAX_SIGNATURES`] labels, [`MAX_COMPONENTS`] covered components a label,
//! [`MAX_HEADER_LEN`] bytes of `Signature-Input`, of `Signature` and of `Content-Digest`, and
//! a signature base of [`MAX_BASE_LEN`] bytes. Nothing here panics on any input.

use std::borrow::Cow;

use http::HeaderMap;

use crate::crypto;
use crate::crypto::sign::{self, KeyError, MessageAlg, MessagePublicKey};
use crate::secret::ct_eq;
use crate::time::Timestamp;
use crate::verified::{Hmac, Verified};

/// The header with the signature parameters.
pub const SIGNATURE_INPUT: &str = "signature-input";
/// The header with the signatures.
pub const SIGNATURE: &str = "signature";
/// The header with the body digests (RFC 9530).
pub const CONTENT_DIGEST: &str = "content-digest";

/// At most this many labels (signatures) are read from a request.
pub const MAX_SIGNATURES: usize = 8;
/// At most this many covered components a signature.
pub const MAX_COMPONENTS: usize = 64;
/// The longest `Signature-Input`, `Signature` or `Content-Digest` read (all lines together).
pub const MAX_HEADER_LEN: usize = 8 * 1024;
/// The longest signature base built.
pub const MAX_BASE_LEN: usize = 64 * 1024;
/// The default time window around `created`.
pub const DEFAULT_WINDOW_SECS: i64 = 300;
/// The shortest HMAC secret accepted for verification.
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// The largest `created`/`expires` an RFC 8941 integer can carry.
const MAX_SF_INTEGER: i64 = 999_999_999_999_999;

/// Fields whose structured type is known to be a dictionary (for the `sf` parameter).
const DICTIONARY_FIELDS: [&str; 8] = [
    "accept-signature",
    "content-digest",
    "priority",
    "repr-digest",
    "signature",
    "signature-input",
    "want-content-digest",
    "want-repr-digest",
];

/// Why a signed request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpSigError {
    /// `Signature-Input` without `Signature`, or the other way round, or no label at all.
    #[error("{0} is missing")]
    Missing(&'static str),
    /// A header is not of its grammar, or exceeds a bound.
    #[error("{0} is malformed")]
    Malformed(&'static str),
    /// A covered component cannot be resolved: an absent field or query parameter, a
    /// component or parameter that is not supported, a component covered twice.
    #[error("covered component: {0}")]
    Component(&'static str),
    /// The signature does not meet the route's policy (or the policy floor).
    #[error("policy: {0}")]
    Policy(&'static str),
    /// The `alg` parameter is not the registered key's algorithm.
    #[error("the alg parameter is not the key's algorithm")]
    AlgorithmMismatch,
    /// `created` is outside the window around now, or `expires` has passed.
    #[error("the signature is outside its validity window")]
    Expired,
    /// The nonce was seen before (detected by the caller, not here).
    #[error("the nonce was already used")]
    Replayed,
    /// `Content-Digest` does not match the body (or has no algorithm Portcullis knows).
    #[error("the content digest does not match the body")]
    BodyHashMismatch,
    /// No candidate label names a known key.
    #[error("no label names a known key")]
    UnknownKey,
    /// Signing: the key cannot sign with the algorithm asked for.
    #[error("the key does not suit the algorithm")]
    UnsuitableKey,
    /// The signature is not valid over the signature base.
    #[error("bad signature")]
    BadSignature,
}

impl HttpSigError {
    /// The wire error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing(_) => "missing_signature",
            Self::Expired => "signature_expired",
            Self::Replayed => "replayed_request",
            Self::BodyHashMismatch => "body_hash_mismatch",
            Self::UnknownKey => "unknown_key",
            Self::Malformed(_)
            | Self::Component(_)
            | Self::Policy(_)
            | Self::AlgorithmMismatch
            | Self::UnsuitableKey
            | Self::BadSignature => "invalid_signature",
        }
    }
}

/// The signature algorithms of RFC 9421 §3.3 Portcullis verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `hmac-sha256` (§3.3.3), a shared secret.
    HmacSha256,
    /// `ed25519` (§3.3.6).
    Ed25519,
    /// `ecdsa-p256-sha256` (§3.3.4), the signature as `r ‖ s` (64 bytes).
    EcdsaP256Sha256,
    /// `rsa-pss-sha512` (§3.3.1).
    RsaPssSha512,
    /// `rsa-v1_5-sha256` (§3.3.2).
    RsaV15Sha256,
}

impl Algorithm {
    /// Every algorithm.
    pub const ALL: [Algorithm; 5] = [
        Algorithm::HmacSha256,
        Algorithm::Ed25519,
        Algorithm::EcdsaP256Sha256,
        Algorithm::RsaPssSha512,
        Algorithm::RsaV15Sha256,
    ];

    /// The registered name (the `alg` parameter's value).
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::Ed25519 => "ed25519",
            Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Algorithm::RsaPssSha512 => "rsa-pss-sha512",
            Algorithm::RsaV15Sha256 => "rsa-v1_5-sha256",
        }
    }

    /// The algorithm with this registered name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    const fn message_alg(self) -> Option<MessageAlg> {
        match self {
            Algorithm::HmacSha256 => None,
            Algorithm::Ed25519 => Some(MessageAlg::Ed25519),
            Algorithm::EcdsaP256Sha256 => Some(MessageAlg::EcdsaP256Sha256),
            Algorithm::RsaPssSha512 => Some(MessageAlg::RsaPssSha512),
            Algorithm::RsaV15Sha256 => Some(MessageAlg::RsaPkcs1Sha256),
        }
    }
}

/// A key registered to verify signatures, for one algorithm. Public keys are parsed (and
/// checked) once, when made.
#[derive(Clone)]
pub struct VerifyingKey(KeyInner);

#[derive(Clone)]
enum KeyInner {
    Hmac(zeroize::Zeroizing<Vec<u8>>),
    Public(Algorithm, MessagePublicKey),
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            KeyInner::Hmac(_) => f.write_str("VerifyingKey(hmac-sha256, <redacted>)"),
            KeyInner::Public(alg, _) => write!(f, "VerifyingKey({})", alg.name()),
        }
    }
}

impl VerifyingKey {
    /// A shared secret for `hmac-sha256` (at least [`MIN_HMAC_SECRET_LEN`] bytes).
    pub fn hmac_sha256(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_HMAC_SECRET_LEN {
            return Err(KeyError::Malformed);
        }
        Ok(Self(KeyInner::Hmac(zeroize::Zeroizing::new(
            secret.to_vec(),
        ))))
    }

    /// A public key for `alg` from a PEM `-----BEGIN PUBLIC KEY-----` block (how clients
    /// register keys) or DER: a SubjectPublicKeyInfo; for RSA also PKCS#1 (`-----BEGIN RSA
    /// PUBLIC KEY-----`). A key of another type or curve, an RSA modulus outside
    /// 2048–8192 bits, or `hmac-sha256`, is refused.
    pub fn from_public_key(alg: Algorithm, pem_or_der: &[u8]) -> Result<Self, KeyError> {
        let m = alg.message_alg().ok_or(KeyError::Malformed)?;
        let key = MessagePublicKey::from_pem_or_der(m, pem_or_der)?;
        Ok(Self(KeyInner::Public(alg, key)))
    }

    /// The public half of a signing key, for `alg` (tests, and clients checking their own
    /// signatures).
    pub fn from_signing_key(alg: Algorithm, key: &sign::SigningKey) -> Result<Self, KeyError> {
        let m = alg.message_alg().ok_or(KeyError::Malformed)?;
        Ok(Self(KeyInner::Public(alg, key.message_public_key(m)?)))
    }

    /// The algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        match &self.0 {
            KeyInner::Hmac(_) => Algorithm::HmacSha256,
            KeyInner::Public(alg, _) => *alg,
        }
    }

    fn verify(&self, msg: &[u8], signature: &[u8]) -> bool {
        match &self.0 {
            KeyInner::Hmac(k) => sign::hmac_sha256_verify(k, msg, signature),
            KeyInner::Public(_, k) => k.verify(msg, signature),
        }
    }
}

/// The request as received (or as it will be sent).
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method.
    pub method: &'a http::Method,
    /// `http` or `https`.
    pub scheme: &'a str,
    /// The authority (the `Host` header, or `:authority`), as sent.
    pub authority: &'a str,
    /// The path as sent (percent-encoding preserved), without the query.
    pub path: &'a str,
    /// The raw query, without the `?`; `None` when there is none.
    pub query: Option<&'a str>,
    /// The header fields.
    pub headers: &'a HeaderMap,
    /// The body when the request has one (`None`: no body).
    pub body: Option<&'a [u8]>,
}

/// What a route demands of a signature.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'p> {
    /// Components the route requires covered, besides the floor (`@method` and the target,
    /// which is always required). An entry is a component name (`"date"`, `"@authority"`),
    /// satisfied by a covered component of that name not narrowed by `key`; or a full
    /// identifier (`"@query-param";name="id"`, `"content-digest";key="sha-256"`),
    /// satisfied by exactly that identifier.
    pub required_components: &'p [&'p str],
    /// When the request has a non-empty body, `content-digest` must be covered (and match).
    pub require_content_digest_with_body: bool,
    /// How far `created` may be from now, either way.
    pub window_secs: i64,
    /// The `tag` a signature must carry for this route, if any.
    pub tag: Option<&'p str>,
}

impl Default for Policy<'_> {
    fn default() -> Self {
        Self {
            required_components: &[],
            require_content_digest_with_body: true,
            window_secs: DEFAULT_WINDOW_SECS,
            tag: None,
        }
    }
}

/// One label's signature, as parsed from `Signature-Input` and `Signature`: untrusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedSignature<'a> {
    label: &'a str,
    components: Vec<sf::Item<'a>>,
    params: sf::Params<'a>,
    signature: Vec<u8>,
}

impl<'a> ParsedSignature<'a> {
    /// The label.
    pub fn label(&self) -> &'a str {
        self.label
    }

    /// The `keyid` parameter.
    pub fn keyid(&self) -> Option<&str> {
        self.string_param("keyid")
    }

    /// The `nonce` parameter (check it against replays).
    pub fn nonce(&self) -> Option<&str> {
        self.string_param("nonce")
    }

    /// The `alg` parameter.
    pub fn alg(&self) -> Option<&str> {
        self.string_param("alg")
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&str> {
        self.string_param("tag")
    }

    /// The `created` parameter.
    pub fn created(&self) -> Option<Timestamp> {
        self.int_param("created").map(Timestamp::from_secs)
    }

    /// The `expires` parameter.
    pub fn expires(&self) -> Option<Timestamp> {
        self.int_param("expires").map(Timestamp::from_secs)
    }

    /// The names of the covered components, in order (parameters left out).
    pub fn covered(&self) -> impl Iterator<Item = &str> + '_ {
        self.components.iter().map(component_name)
    }

    /// The signature bytes.
    pub fn signature(&self) -> &[u8] {
        &self.signature
    }

    /// The `@signature-params` value: the inner list serialised canonically.
    pub fn signature_params(&self) -> String {
        let mut out = String::new();
        sf::write_inner(&mut out, &self.components, &self.params);
        out
    }

    fn string_param(&self, key: &str) -> Option<&str> {
        match sf::param(&self.params, key) {
            Some(sf::Bare::String(s)) => Some(s),
            _ => None,
        }
    }

    fn int_param(&self, key: &str) -> Option<i64> {
        match sf::param(&self.params, key) {
            Some(sf::Bare::Integer(i)) => Some(*i),
            _ => None,
        }
    }

    /// Whether a component named `name` is covered with no parameters.
    fn covers_plain(&self, name: &str) -> bool {
        self.components
            .iter()
            .any(|c| component_name(c) == name && c.params.is_empty())
    }

    /// Whether `content-digest` is covered whole (any parameter but `key`).
    fn covers_whole_digest(&self) -> bool {
        self.components
            .iter()
            .any(|c| component_name(c) == CONTENT_DIGEST && sf::param(&c.params, "key").is_none())
    }

    fn covers_required(&self, entry: &str) -> bool {
        if entry.starts_with('"') || entry.contains(';') {
            let Ok(wanted) = component_spec(entry) else {
                return false;
            };
            let id = identity(&wanted);
            self.components.iter().any(|c| identity(c) == id)
        } else {
            self.components
                .iter()
                .any(|c| component_name(c) == entry && sf::param(&c.params, "key").is_none())
        }
    }
}

/// Reads the signatures of a request. `Ok(None)`: neither `Signature-Input` nor
/// `Signature` is present. Every label must be in both headers; each `Signature-Input`
/// member must be an inner list of strings (lowercase field names or `@`-names), with
/// `created`/`expires` integers and `keyid`/`nonce`/`alg`/`tag` strings when present; each
/// `Signature` member a byte sequence.
pub fn parse(headers: &HeaderMap) -> Result<Option<Vec<ParsedSignature<'_>>>, HttpSigError> {
    let inputs = dictionary_field(headers, SIGNATURE_INPUT, "Signature-Input", MAX_SIGNATURES)?;
    let sigs = dictionary_field(headers, SIGNATURE, "Signature", MAX_SIGNATURES)?;
    let (inputs, mut sigs) = match (inputs, sigs) {
        (None, None) => return Ok(None),
        (Some(i), Some(s)) => (i, s),
        (None, Some(_)) => return Err(HttpSigError::Missing("Signature-Input")),
        (Some(_), None) => return Err(HttpSigError::Missing("Signature")),
    };
    if inputs.len() != sigs.len() {
        return Err(HttpSigError::Malformed("Signature"));
    }
    let mut out = Vec::with_capacity(inputs.len());
    for (label, member) in inputs {
        let sf::Member::Inner(components, params) = member else {
            return Err(HttpSigError::Malformed("Signature-Input"));
        };
        if components.len() > MAX_COMPONENTS {
            return Err(HttpSigError::Malformed("Signature-Input"));
        }
        if !components.iter().all(valid_component) || !valid_signature_params(&params) {
            return Err(HttpSigError::Malformed("Signature-Input"));
        }
        let signature = sigs
            .iter_mut()
            .find(|(l, _)| *l == label)
            .and_then(|(_, m)| match m {
                sf::Member::Item(sf::Item {
                    value: sf::Bare::Bytes(b),
                    ..
                }) if !b.is_empty() => Some(std::mem::take(b)),
                _ => None,
            })
            .ok_or(HttpSigError::Malformed("Signature"))?;
        out.push(ParsedSignature {
            label,
            components,
            params,
            signature,
        });
    }
    Ok(Some(out))
}

/// The signature base (RFC 9421 §2.5) of `sig` over `req`.
pub fn signature_base(
    sig: &ParsedSignature<'_>,
    req: &Request<'_>,
) -> Result<Vec<u8>, HttpSigError> {
    build_base(&sig.components, &sig.params, req)
}

/// Whether `sig` meets `policy` for `req` at `now`: the tag, the covered-component floor,
/// the route's required components, `content-digest` with a body, `created` within the
/// window and `expires` not passed. Cheap: no signature base, no cryptography.
pub fn check_policy(
    sig: &ParsedSignature<'_>,
    req: &Request<'_>,
    policy: &Policy<'_>,
    now: Timestamp,
) -> Result<(), HttpSigError> {
    if let Some(tag) = policy.tag {
        if sig.tag() != Some(tag) {
            return Err(HttpSigError::Policy("tag"));
        }
    }
    if !sig.covers_plain("@method") {
        return Err(HttpSigError::Policy("@method is not covered"));
    }
    let has_query = req.query.is_some_and(|q| !q.is_empty());
    let target = sig.covers_plain("@target-uri")
        || sig.covers_plain("@request-target")
        || (sig.covers_plain("@path") && (!has_query || sig.covers_plain("@query")));
    if !target {
        return Err(HttpSigError::Policy("the target is not covered"));
    }
    if !policy
        .required_components
        .iter()
        .all(|r| sig.covers_required(r))
    {
        return Err(HttpSigError::Policy("a required component is not covered"));
    }
    if policy.require_content_digest_with_body
        && req.body.is_some_and(|b| !b.is_empty())
        && !sig.covers_whole_digest()
    {
        return Err(HttpSigError::Policy("content-digest is not covered"));
    }
    let created = sig
        .int_param("created")
        .ok_or(HttpSigError::Policy("created is missing"))?;
    let now = now.as_secs();
    let window = u64::try_from(policy.window_secs).unwrap_or(0);
    if now.abs_diff(created) > window {
        return Err(HttpSigError::Expired);
    }
    if sig.int_param("expires").is_some_and(|e| e <= now) {
        return Err(HttpSigError::Expired);
    }
    Ok(())
}

/// Verifies `sig` over `req` under `key`: [`check_policy`], the `alg` parameter (if any)
/// against the key's algorithm, the signature over the rebuilt signature base, and then,
/// when `content-digest` is covered and the body is at hand, `Content-Digest` against it.
pub fn verify(
    sig: &ParsedSignature<'_>,
    req: &Request<'_>,
    key: &VerifyingKey,
    policy: &Policy<'_>,
    now: Timestamp,
) -> Result<Verified<Hmac>, HttpSigError> {
    check_policy(sig, req, policy, now)?;
    if sig.alg().is_some_and(|a| a != key.algorithm().name()) {
        return Err(HttpSigError::AlgorithmMismatch);
    }
    let base = build_base(&sig.components, &sig.params, req)?;
    if !key.verify(&base, &sig.signature) {
        return Err(HttpSigError::BadSignature);
    }
    if let Some(body) = req.body {
        if sig.covered().any(|n| n == CONTENT_DIGEST) {
            verify_content_digest(req.headers, body)?;
        }
    }
    Ok(Verified::assertion())
}

/// Picks the label to verify (the rule is in the module documentation) and its key:
/// `key_for` is asked for each candidate's `keyid` in turn. Verify the result with
/// [`verify`]. A caller whose key store is asynchronous runs the same loop itself:
/// `keyid` present, then [`check_policy`], then the lookup.
pub fn select<'s, 'a, K>(
    sigs: &'s [ParsedSignature<'a>],
    req: &Request<'_>,
    policy: &Policy<'_>,
    now: Timestamp,
    mut key_for: impl FnMut(&str) -> Option<K>,
) -> Result<(&'s ParsedSignature<'a>, K), HttpSigError> {
    let mut first_err = None;
    let mut tag_err = None;
    let mut candidate = false;
    for sig in sigs {
        let Some(keyid) = sig.keyid() else {
            first_err.get_or_insert(HttpSigError::Policy("keyid is missing"));
            continue;
        };
        match check_policy(sig, req, policy, now) {
            Err(e @ HttpSigError::Policy("tag")) => {
                tag_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
            Ok(()) => {
                candidate = true;
                if let Some(key) = key_for(keyid) {
                    return Ok((sig, key));
                }
            }
        }
    }
    Err(if candidate {
        HttpSigError::UnknownKey
    } else {
        first_err
            .or(tag_err)
            .unwrap_or(HttpSigError::Missing("Signature"))
    })
}

/// Whether `entry` can be a [`Policy::required_components`] entry: a component name
/// (`date`, `@authority`) or a full identifier (`"@query-param";name="id"`).
pub fn valid_required_component(entry: &str) -> bool {
    component_spec(entry).is_ok_and(|c| valid_component(&c))
}

/// Whether `tag` can be a signature's `tag` (RFC 8941 string: printable ASCII), 1 to 256
/// characters.
pub fn valid_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.len() <= 256 && sf::valid_string(tag)
}

/// The parameters of a signature being made. They are serialised in this order:
/// `created`, `expires`, `keyid`, `nonce`, `alg`, `tag`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignParams<'p> {
    /// `created` (whole seconds). Verification requires it.
    pub created: Option<Timestamp>,
    /// `expires` (whole seconds).
    pub expires: Option<Timestamp>,
    /// `keyid`.
    pub keyid: Option<&'p str>,
    /// `nonce`.
    pub nonce: Option<&'p str>,
    /// Whether to send `alg` (the signer's algorithm).
    pub include_alg: bool,
    /// `tag`.
    pub tag: Option<&'p str>,
}

/// What signs: a shared secret, or a private key for one algorithm. `Debug` never shows
/// the secret.
#[derive(Clone, Copy)]
pub enum Signer<'k> {
    /// `hmac-sha256` under this secret.
    HmacSha256(&'k [u8]),
    /// A private key (parsed from PKCS#8) signing with this algorithm: Ed25519 for
    /// `ed25519`, P-256 for `ecdsa-p256-sha256`, RSA for the two RSA algorithms.
    Key(Algorithm, &'k sign::SigningKey),
}

impl std::fmt::Debug for Signer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Signer::HmacSha256(_) => f.write_str("Signer(hmac-sha256, <redacted>)"),
            Signer::Key(alg, key) => f.debug_tuple("Signer").field(alg).field(key).finish(),
        }
    }
}

impl Signer<'_> {
    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Signer::HmacSha256(_) => Algorithm::HmacSha256,
            Signer::Key(alg, _) => *alg,
        }
    }
}

/// Signs `req` (for clients and tests): `components` are identifiers as they appear in
/// `Signature-Input`, with or without the quotes (`@method`, `content-digest`,
/// `@query-param;name="id"`, `"example-dict";key="a"`). Returns the `Signature-Input` and
/// the `Signature` member, both `label=…` (several signatures are joined with `", "`).
pub fn sign(
    req: &Request<'_>,
    components: &[&str],
    params: &SignParams<'_>,
    label: &str,
    signer: &Signer<'_>,
) -> Result<(String, String), HttpSigError> {
    if !sf::valid_key(label) {
        return Err(HttpSigError::Malformed("label"));
    }
    if components.len() > MAX_COMPONENTS {
        return Err(HttpSigError::Malformed("Signature-Input"));
    }
    let items = components
        .iter()
        .map(|c| component_spec(c))
        .collect::<Result<Vec<_>, _>>()?;
    let alg = signer.algorithm();
    let mut p: sf::Params<'_> = Vec::new();
    for (key, t) in [("created", params.created), ("expires", params.expires)] {
        if let Some(t) = t {
            let secs = t.as_secs();
            if !(-MAX_SF_INTEGER..=MAX_SF_INTEGER).contains(&secs) {
                return Err(HttpSigError::Malformed("Signature-Input"));
            }
            p.push((key, sf::Bare::Integer(secs)));
        }
    }
    let strings = [
        ("keyid", params.keyid),
        ("nonce", params.nonce),
        ("alg", params.include_alg.then_some(alg.name())),
        ("tag", params.tag),
    ];
    for (key, s) in strings {
        if let Some(s) = s {
            if !sf::valid_string(s) {
                return Err(HttpSigError::Malformed("Signature-Input"));
            }
            p.push((key, sf::Bare::String(Cow::Borrowed(s))));
        }
    }
    let base = build_base(&items, &p, req)?;
    let signature = match signer {
        Signer::HmacSha256(k) => sign::hmac_sha256(k, &base).to_vec(),
        Signer::Key(alg, key) => {
            let m = alg.message_alg().ok_or(HttpSigError::UnsuitableKey)?;
            key.sign_message(m, &base)
                .map_err(|_| HttpSigError::UnsuitableKey)?
        }
    };
    let mut input = String::with_capacity(128);
    input.push_str(label);
    input.push('=');
    sf::write_inner(&mut input, &items, &p);
    let mut sig = String::with_capacity(label.len() + 4 + signature.len() * 4 / 3);
    sig.push_str(label);
    sig.push('=');
    sf::write_bare(&mut sig, &sf::Bare::Bytes(signature));
    Ok((input, sig))
}

/// The digest algorithms of RFC 9530 Portcullis knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// `sha-256`.
    Sha256,
    /// `sha-512`.
    Sha512,
}

impl DigestAlgorithm {
    /// The dictionary key (RFC 9530 §5).
    pub const fn key(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha-256",
            DigestAlgorithm::Sha512 => "sha-512",
        }
    }

    fn from_key(key: &str) -> Option<Self> {
        match key {
            "sha-256" => Some(DigestAlgorithm::Sha256),
            "sha-512" => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }

    fn digest(self, body: &[u8]) -> Vec<u8> {
        match self {
            DigestAlgorithm::Sha256 => crypto::sha256(body).to_vec(),
            DigestAlgorithm::Sha512 => crypto::sha512(body).to_vec(),
        }
    }
}

/// The `Content-Digest` value for `body` (RFC 9530): `sha-256=:…:`, members in the order
/// given, joined with `", "`.
pub fn content_digest(body: &[u8], algorithms: &[DigestAlgorithm]) -> String {
    let mut out = String::new();
    for (i, alg) in algorithms.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(alg.key());
        out.push('=');
        sf::write_bare(&mut out, &sf::Bare::Bytes(alg.digest(body)));
    }
    out
}

/// Checks `Content-Digest` against `body`: every algorithm Portcullis knows that is present
/// must match, unknown ones are ignored, and at least one must be known. An absent or
/// malformed field is a mismatch.
pub fn verify_content_digest(headers: &HeaderMap, body: &[u8]) -> Result<(), HttpSigError> {
    let dict = dictionary_field(headers, CONTENT_DIGEST, "Content-Digest", 16)
        .map_err(|_| HttpSigError::BodyHashMismatch)?
        .ok_or(HttpSigError::BodyHashMismatch)?;
    let mut known = 0usize;
    for (key, member) in &dict {
        let Some(alg) = DigestAlgorithm::from_key(key) else {
            continue;
        };
        let sf::Member::Item(sf::Item {
            value: sf::Bare::Bytes(sent),
            ..
        }) = member
        else {
            return Err(HttpSigError::BodyHashMismatch);
        };
        if !ct_eq(sent, &alg.digest(body)) {
            return Err(HttpSigError::BodyHashMismatch);
        }
        known += 1;
    }
    if known == 0 {
        return Err(HttpSigError::BodyHashMismatch);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Reading the headers.

/// Every line of `name` parsed as a dictionary, members merged in order (a key repeated
/// across lines is refused). `Ok(None)`: the field is absent.
fn dictionary_field<'a>(
    headers: &'a HeaderMap,
    name: &'static str,
    display: &'static str,
    max_members: usize,
) -> Result<Option<sf::Dict<'a>>, HttpSigError> {
    let bad = HttpSigError::Malformed(display);
    let mut dict: sf::Dict<'a> = Vec::new();
    let mut any = false;
    let mut total = 0usize;
    for value in headers.get_all(name) {
        any = true;
        total = total.saturating_add(value.len());
        if total > MAX_HEADER_LEN {
            return Err(bad);
        }
        let line = value.to_str().map_err(|_| bad)?;
        for (key, member) in sf::dictionary(line).map_err(|_| bad)? {
            if dict.iter().any(|(k, _)| *k == key) || dict.len() >= max_members {
                return Err(bad);
            }
            dict.push((key, member));
        }
    }
    Ok(any.then_some(dict))
}

fn valid_signature_params(params: &sf::Params<'_>) -> bool {
    params.iter().all(|(k, v)| match *k {
        "created" | "expires" => matches!(v, sf::Bare::Integer(_)),
        "keyid" | "nonce" | "alg" | "tag" => matches!(v, sf::Bare::String(_)),
        _ => true,
    })
}

/// A covered component as parsed: a string naming a lowercase field or an `@` name.
fn valid_component(c: &sf::Item<'_>) -> bool {
    let sf::Bare::String(name) = &c.value else {
        return false;
    };
    match name.strip_prefix('@') {
        Some(derived) => {
            !derived.is_empty() && derived.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        }
        None => valid_field_name(name),
    }
}

/// A field name (an RFC 9110 token) in lowercase.
fn valid_field_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| sf::is_tchar(b) && !b.is_ascii_uppercase())
}

fn component_name<'c>(c: &'c sf::Item<'_>) -> &'c str {
    match &c.value {
        sf::Bare::String(s) => s,
        _ => "",
    }
}

/// A component identifier given by a caller (signing, or a route's required component):
/// `"name";params` or `name;params`.
fn component_spec(spec: &str) -> Result<sf::Item<'_>, HttpSigError> {
    let bad = HttpSigError::Malformed("component identifier");
    let item = if spec.starts_with('"') {
        sf::item_exact(spec).map_err(|_| bad)?
    } else {
        let (name, rest) = match spec.find(';') {
            Some(i) => (spec.get(..i).unwrap_or(""), spec.get(i..).unwrap_or("")),
            None => (spec, ""),
        };
        let params = sf::params_exact(rest).map_err(|_| bad)?;
        sf::Item {
            value: sf::Bare::String(Cow::Borrowed(name)),
            params,
        }
    };
    if !valid_component(&item) {
        return Err(bad);
    }
    Ok(item)
}

/// A component's identity for duplicate detection: its name and its parameters in key order.
fn identity(c: &sf::Item<'_>) -> String {
    let mut params: Vec<&(&str, sf::Bare<'_>)> = c.params.iter().collect();
    params.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = String::new();
    sf::write_bare(&mut out, &c.value);
    for (k, v) in params {
        out.push(';');
        out.push_str(k);
        out.push('=');
        sf::write_bare(&mut out, v);
    }
    out
}

// ---------------------------------------------------------------------------------------
// The signature base.

fn build_base(
    components: &[sf::Item<'_>],
    params: &sf::Params<'_>,
    req: &Request<'_>,
) -> Result<Vec<u8>, HttpSigError> {
    let mut out: Vec<u8> = Vec::with_capacity(256);
    let mut seen: Vec<String> = Vec::with_capacity(components.len());
    let mut line = String::new();
    for c in components {
        let id = identity(c);
        if seen.contains(&id) {
            return Err(HttpSigError::Component("covered twice"));
        }
        seen.push(id);
        line.clear();
        sf::write_item(&mut line, c);
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b": ");
        component_value(c, req, &mut out)?;
        out.push(b'\n');
        if out.len() > MAX_BASE_LEN {
            return Err(HttpSigError::Component("the signature base is too long"));
        }
    }
    out.extend_from_slice(b"\"@signature-params\": ");
    line.clear();
    sf::write_inner(&mut line, components, params);
    out.extend_from_slice(line.as_bytes());
    if out.len() > MAX_BASE_LEN {
        return Err(HttpSigError::Component("the signature base is too long"));
    }
    Ok(out)
}

fn component_value(
    c: &sf::Item<'_>,
    req: &Request<'_>,
    out: &mut Vec<u8>,
) -> Result<(), HttpSigError> {
    let name = component_name(c);
    match name.strip_prefix('@') {
        Some(derived) => derived_value(derived, c, req, out),
        None => field_value(name, c, req.headers, out),
    }
}

/// A request part placed in the base: no control characters (a newline would forge lines).
fn clean(s: &str) -> Result<&str, HttpSigError> {
    if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(HttpSigError::Component(
            "a request part has control characters",
        ));
    }
    Ok(s)
}

fn derived_value(
    derived: &str,
    c: &sf::Item<'_>,
    req: &Request<'_>,
    out: &mut Vec<u8>,
) -> Result<(), HttpSigError> {
    if derived == "query-param" {
        let name = match c.params.as_slice() {
            [("name", sf::Bare::String(n))] => n,
            _ => {
                return Err(HttpSigError::Component(
                    "@query-param takes one name parameter",
                ))
            }
        };
        return query_param_value(req.query, name, out);
    }
    if !c.params.is_empty() {
        return Err(HttpSigError::Component("parameters on a derived component"));
    }
    let path = match clean(req.path)? {
        "" => "/",
        p => p,
    };
    let query = req.query.map(clean).transpose()?;
    match derived {
        "method" => out.extend_from_slice(clean(req.method.as_str())?.as_bytes()),
        "target-uri" => {
            out.extend_from_slice(clean(req.scheme)?.to_ascii_lowercase().as_bytes());
            out.extend_from_slice(b"://");
            out.extend_from_slice(clean(req.authority)?.as_bytes());
            out.extend_from_slice(path.as_bytes());
            if let Some(q) = query {
                out.push(b'?');
                out.extend_from_slice(q.as_bytes());
            }
        }
        "authority" => out.extend_from_slice(
            normalized_authority(clean(req.scheme)?, clean(req.authority)?).as_bytes(),
        ),
        "scheme" => out.extend_from_slice(clean(req.scheme)?.to_ascii_lowercase().as_bytes()),
        "request-target" => {
            out.extend_from_slice(path.as_bytes());
            if let Some(q) = query {
                out.push(b'?');
                out.extend_from_slice(q.as_bytes());
            }
        }
        "path" => out.extend_from_slice(path.as_bytes()),
        "query" => {
            out.push(b'?');
            out.extend_from_slice(query.unwrap_or("").as_bytes());
        }
        "status" => return Err(HttpSigError::Component("@status is for responses")),
        _ => return Err(HttpSigError::Component("unknown derived component")),
    }
    Ok(())
}

/// The authority normalised as RFC 9110 §4.2.3 says: host lowercased, the scheme's default
/// port (or an empty port) removed.
fn normalized_authority(scheme: &str, authority: &str) -> String {
    let mut a = authority.to_ascii_lowercase();
    let host_end = a.rfind(']').map_or(0, |i| i + 1);
    let colon = a.get(host_end..).and_then(|rest| rest.rfind(':'));
    if let Some(colon) = colon {
        let at = host_end + colon;
        let port = a.get(at + 1..).unwrap_or("");
        let default = if scheme.eq_ignore_ascii_case("https") {
            "443"
        } else if scheme.eq_ignore_ascii_case("http") {
            "80"
        } else {
            ""
        };
        if port.is_empty() || (!default.is_empty() && port == default) {
            a.truncate(at);
        }
    }
    a
}

/// RFC 9421 §2.2.8: the query parsed as WHATWG `application/x-www-form-urlencoded`, each
/// name and value percent-encoded again with the form-urlencoded set (space as `%20`).
fn query_param_value(
    query: Option<&str>,
    name: &str,
    out: &mut Vec<u8>,
) -> Result<(), HttpSigError> {
    let query = query.ok_or(HttpSigError::Component("query parameter absent"))?;
    let mut found: Option<String> = None;
    let mut encoded = String::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        encoded.clear();
        form_encode(&k, &mut encoded);
        if encoded == name {
            if found.is_some() {
                return Err(HttpSigError::Component("query parameter repeated"));
            }
            let mut value = String::new();
            form_encode(&v, &mut value);
            found = Some(value);
        }
    }
    let value = found.ok_or(HttpSigError::Component("query parameter absent"))?;
    out.extend_from_slice(value.as_bytes());
    Ok(())
}

/// Percent-encodes with the WHATWG application/x-www-form-urlencoded percent-encode set:
/// ASCII alphanumerics and `*-._` as they are, every other UTF-8 byte `%XX`.
fn form_encode(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

fn field_value(
    name: &str,
    c: &sf::Item<'_>,
    headers: &HeaderMap,
    out: &mut Vec<u8>,
) -> Result<(), HttpSigError> {
    let (mut structured, mut key, mut bs) = (false, None, false);
    for (k, v) in &c.params {
        match (*k, v) {
            ("sf", sf::Bare::Boolean(true)) => structured = true,
            ("key", sf::Bare::String(s)) => key = Some(s.as_ref()),
            ("bs", sf::Bare::Boolean(true)) => bs = true,
            ("req", _) => return Err(HttpSigError::Component("req is for responses")),
            ("tr", _) => return Err(HttpSigError::Component("trailers are not signed here")),
            _ => return Err(HttpSigError::Component("unsupported field parameter")),
        }
    }
    if bs && (structured || key.is_some()) {
        return Err(HttpSigError::Component("bs with sf or key"));
    }
    if structured && key.is_none() && !DICTIONARY_FIELDS.contains(&name) {
        return Err(HttpSigError::Component("sf on a field of unknown type"));
    }
    let values = headers.get_all(name);
    if values.iter().next().is_none() {
        return Err(HttpSigError::Component("field absent"));
    }
    if bs {
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            let mut s = String::new();
            sf::write_bare(&mut s, &sf::Bare::Bytes(trim_ows(v.as_bytes()).to_vec()));
            out.extend_from_slice(s.as_bytes());
        }
        return Ok(());
    }
    if !structured && key.is_none() {
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(trim_ows(v.as_bytes()));
        }
        return Ok(());
    }
    let not_dict = HttpSigError::Component("field is not a dictionary");
    let mut joined = String::new();
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            joined.push_str(", ");
        }
        let line = std::str::from_utf8(trim_ows(v.as_bytes())).map_err(|_| not_dict)?;
        joined.push_str(line);
        if joined.len() > MAX_BASE_LEN {
            return Err(not_dict);
        }
    }
    let dict = sf::dictionary(&joined).map_err(|_| not_dict)?;
    let mut s = String::new();
    match key {
        Some(key) => {
            let member = dict
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, m)| m)
                .ok_or(HttpSigError::Component("dictionary member absent"))?;
            sf::write_member(&mut s, member);
        }
        None => sf::write_dict(&mut s, &dict),
    }
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

// ---------------------------------------------------------------------------------------
// RFC 8941 structured field values: the parts these headers use.

mod sf {
    use std::borrow::Cow;

    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
    use base64::engine::DecodePaddingMode;
    use base64::Engine as _;

    /// At most this many items in an inner list.
    const MAX_ITEMS: usize = 256;
    /// At most this many parameters on an item or inner list.
    const MAX_PARAMS: usize = 32;
    /// At most this many dictionary members.
    const MAX_MEMBERS: usize = 64;

    /// RFC 8941 §4.2.7: parsers should not fail on missing padding or non-zero pad bits.
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) enum Bare<'a> {
        Integer(i64),
        String(Cow<'a, str>),
        Token(&'a str),
        Bytes(Vec<u8>),
        Boolean(bool),
    }

    pub(super) type Params<'a> = Vec<(&'a str, Bare<'a>)>;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) struct Item<'a> {
        pub(super) value: Bare<'a>,
        pub(super) params: Params<'a>,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) enum Member<'a> {
        Item(Item<'a>),
        Inner(Vec<Item<'a>>, Params<'a>),
    }

    pub(super) type Dict<'a> = Vec<(&'a str, Member<'a>)>;

    /// Not of the grammar.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) struct Error;

    pub(super) fn param<'p, 'a>(params: &'p Params<'a>, key: &str) -> Option<&'p Bare<'a>> {
        params.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// A dictionary field value (one line). Leading and trailing spaces are allowed; an
    /// empty value is refused.
    pub(super) fn dictionary(s: &str) -> Result<Dict<'_>, Error> {
        let mut p = Parser { s, pos: 0 };
        p.skip_sp();
        if p.done() {
            return Err(Error);
        }
        let mut out: Dict<'_> = Vec::new();
        loop {
            let key = p.key()?;
            let member = if p.eat(b'=') {
                p.item_or_inner()?
            } else {
                Member::Item(Item {
                    value: Bare::Boolean(true),
                    params: p.params()?,
                })
            };
            if out.len() >= MAX_MEMBERS || out.iter().any(|(k, _)| *k == key) {
                return Err(Error);
            }
            out.push((key, member));
            p.skip_ows();
            if p.done() {
                return Ok(out);
            }
            if !p.eat(b',') {
                return Err(Error);
            }
            p.skip_ows();
            if p.done() {
                return Err(Error);
            }
        }
    }

    /// Exactly one item (bare item and parameters), nothing around it.
    pub(super) fn item_exact(s: &str) -> Result<Item<'_>, Error> {
        let mut p = Parser { s, pos: 0 };
        let item = p.item()?;
        if !p.done() {
            return Err(Error);
        }
        Ok(item)
    }

    /// Exactly a list of parameters (`;a=1;b`), possibly empty, nothing around it.
    pub(super) fn params_exact(s: &str) -> Result<Params<'_>, Error> {
        let mut p = Parser { s, pos: 0 };
        let params = p.params()?;
        if !p.done() {
            return Err(Error);
        }
        Ok(params)
    }

    /// An RFC 9110 `tchar`.
    pub(super) fn is_tchar(b: u8) -> bool {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
    }

    fn is_key_char(b: u8) -> bool {
        b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.' | b'*')
    }

    /// Whether `s` is a valid key (for a label made here).
    pub(super) fn valid_key(s: &str) -> bool {
        let b = s.as_bytes();
        matches!(b.first(), Some(c) if c.is_ascii_lowercase() || *c == b'*')
            && b.iter().all(|c| is_key_char(*c))
    }

    /// Whether `s` can be serialised as a string (printable ASCII).
    pub(super) fn valid_string(s: &str) -> bool {
        s.bytes().all(|b| (0x20..=0x7e).contains(&b))
    }

    struct Parser<'a> {
        s: &'a str,
        pos: usize,
    }

    impl<'a> Parser<'a> {
        fn peek(&self) -> Option<u8> {
            self.s.as_bytes().get(self.pos).copied()
        }

        fn done(&self) -> bool {
            self.pos >= self.s.len()
        }

        fn eat(&mut self, c: u8) -> bool {
            if self.peek() == Some(c) {
                self.pos += 1;
                true
            } else {
                false
            }
        }

        fn skip_sp(&mut self) {
            while self.peek() == Some(b' ') {
                self.pos += 1;
            }
        }

        fn skip_ows(&mut self) {
            while matches!(self.peek(), Some(b' ' | b'\t')) {
                self.pos += 1;
            }
        }

        /// The text from `from` to here: only ever ASCII was stepped over, so the bounds
        /// are character boundaries.
        fn since(&self, from: usize) -> Result<&'a str, Error> {
            self.s.get(from..self.pos).ok_or(Error)
        }

        fn key(&mut self) -> Result<&'a str, Error> {
            match self.peek() {
                Some(c) if c.is_ascii_lowercase() || c == b'*' => {}
                _ => return Err(Error),
            }
            let start = self.pos;
            self.pos += 1;
            while self.peek().is_some_and(is_key_char) {
                self.pos += 1;
            }
            self.since(start)
        }

        fn item_or_inner(&mut self) -> Result<Member<'a>, Error> {
            if self.peek() == Some(b'(') {
                let (items, params) = self.inner()?;
                Ok(Member::Inner(items, params))
            } else {
                Ok(Member::Item(self.item()?))
            }
        }

        fn inner(&mut self) -> Result<(Vec<Item<'a>>, Params<'a>), Error> {
            if !self.eat(b'(') {
                return Err(Error);
            }
            let mut items = Vec::new();
            loop {
                self.skip_sp();
                if self.eat(b')') {
                    let params = self.params()?;
                    return Ok((items, params));
                }
                if items.len() >= MAX_ITEMS {
                    return Err(Error);
                }
                items.push(self.item()?);
                if !matches!(self.peek(), Some(b' ' | b')')) {
                    return Err(Error);
                }
            }
        }

        fn item(&mut self) -> Result<Item<'a>, Error> {
            let value = self.bare()?;
            let params = self.params()?;
            Ok(Item { value, params })
        }

        fn params(&mut self) -> Result<Params<'a>, Error> {
            let mut out: Params<'a> = Vec::new();
            while self.eat(b';') {
                self.skip_sp();
                let key = self.key()?;
                let value = if self.eat(b'=') {
                    self.bare()?
                } else {
                    Bare::Boolean(true)
                };
                if out.len() >= MAX_PARAMS || out.iter().any(|(k, _)| *k == key) {
                    return Err(Error);
                }
                out.push((key, value));
            }
            Ok(out)
        }

        fn bare(&mut self) -> Result<Bare<'a>, Error> {
            match self.peek() {
                Some(b'-' | b'0'..=b'9') => self.integer(),
                Some(b'"') => self.string(),
                Some(b':') => self.bytes(),
                Some(b'?') => self.boolean(),
                Some(c) if c.is_ascii_alphabetic() || c == b'*' => self.token(),
                _ => Err(Error),
            }
        }

        fn integer(&mut self) -> Result<Bare<'a>, Error> {
            let negative = self.eat(b'-');
            let start = self.pos;
            let mut value: i64 = 0;
            while let Some(d @ b'0'..=b'9') = self.peek() {
                if self.pos - start >= 15 {
                    return Err(Error);
                }
                value = value * 10 + i64::from(d - b'0');
                self.pos += 1;
            }
            if self.pos == start || self.peek() == Some(b'.') {
                // No digits, or a decimal: not used by these fields.
                return Err(Error);
            }
            Ok(Bare::Integer(if negative { -value } else { value }))
        }

        fn string(&mut self) -> Result<Bare<'a>, Error> {
            if !self.eat(b'"') {
                return Err(Error);
            }
            let start = self.pos;
            let mut owned: Option<String> = None;
            loop {
                let c = self.peek().ok_or(Error)?;
                let at = self.pos;
                self.pos += 1;
                match c {
                    b'\\' => {
                        let escaped = self.peek().ok_or(Error)?;
                        if escaped != b'"' && escaped != b'\\' {
                            return Err(Error);
                        }
                        if owned.is_none() {
                            owned = Some(self.s.get(start..at).ok_or(Error)?.to_owned());
                        }
                        if let Some(o) = owned.as_mut() {
                            o.push(char::from(escaped));
                        }
                        self.pos += 1;
                    }
                    b'"' => {
                        return Ok(Bare::String(match owned {
                            Some(o) => Cow::Owned(o),
                            None => Cow::Borrowed(self.s.get(start..at).ok_or(Error)?),
                        }));
                    }
                    0x20..=0x7e => {
                        if let Some(o) = owned.as_mut() {
                            o.push(char::from(c));
                        }
                    }
                    _ => return Err(Error),
                }
            }
        }

        fn token(&mut self) -> Result<Bare<'a>, Error> {
            let start = self.pos;
            self.pos += 1;
            while self
                .peek()
                .is_some_and(|c| is_tchar(c) || c == b':' || c == b'/')
            {
                self.pos += 1;
            }
            Ok(Bare::Token(self.since(start)?))
        }

        fn bytes(&mut self) -> Result<Bare<'a>, Error> {
            if !self.eat(b':') {
                return Err(Error);
            }
            let start = self.pos;
            loop {
                match self.peek() {
                    Some(b':') => break,
                    Some(c) if c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=') => {
                        self.pos += 1;
                    }
                    _ => return Err(Error),
                }
            }
            let b64 = self.since(start)?;
            self.pos += 1;
            LENIENT
                .decode(b64.as_bytes())
                .map(Bare::Bytes)
                .map_err(|_| Error)
        }

        fn boolean(&mut self) -> Result<Bare<'a>, Error> {
            if !self.eat(b'?') {
                return Err(Error);
            }
            let value = match self.peek() {
                Some(b'0') => false,
                Some(b'1') => true,
                _ => return Err(Error),
            };
            self.pos += 1;
            Ok(Bare::Boolean(value))
        }
    }

    // Serialisation (RFC 8941 §4.1). Strings and keys are valid: they were parsed, or
    // checked before being put in.

    pub(super) fn write_bare(out: &mut String, b: &Bare<'_>) {
        match b {
            Bare::Integer(i) => out.push_str(itoa::Buffer::new().format(*i)),
            Bare::String(s) => {
                out.push('"');
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
            Bare::Token(t) => out.push_str(t),
            Bare::Bytes(bytes) => {
                out.push(':');
                STANDARD.encode_string(bytes, out);
                out.push(':');
            }
            Bare::Boolean(v) => out.push_str(if *v { "?1" } else { "?0" }),
        }
    }

    pub(super) fn write_params(out: &mut String, params: &Params<'_>) {
        for (k, v) in params {
            out.push(';');
            out.push_str(k);
            if *v != Bare::Boolean(true) {
                out.push('=');
                write_bare(out, v);
            }
        }
    }

    pub(super) fn write_item(out: &mut String, item: &Item<'_>) {
        write_bare(out, &item.value);
        write_params(out, &item.params);
    }

    pub(super) fn write_inner(out: &mut String, items: &[Item<'_>], params: &Params<'_>) {
        out.push('(');
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            write_item(out, item);
        }
        out.push(')');
        write_params(out, params);
    }

    pub(super) fn write_member(out: &mut String, member: &Member<'_>) {
        match member {
            Member::Item(item) => write_item(out, item),
            Member::Inner(items, params) => write_inner(out, items, params),
        }
    }

    pub(super) fn write_dict(out: &mut String, dict: &Dict<'_>) {
        for (i, (key, member)) in dict.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(key);
            match member {
                Member::Item(Item {
                    value: Bare::Boolean(true),
                    params,
                }) => write_params(out, params),
                _ => {
                    out.push('=');
                    write_member(out, member);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_settings_are_checked() {
        for ok in [
            "date",
            "@authority",
            "content-type",
            "\"@query-param\";name=\"id\"",
            "\"example-dict\";key=\"a\"",
        ] {
            assert!(valid_required_component(ok), "{ok}");
        }
        for bad in ["", "Date", "@", "@Method", "a b", "\"unterminated", "x;="] {
            assert!(!valid_required_component(bad), "{bad}");
        }
        assert!(valid_tag("app-123") && !valid_tag("") && !valid_tag("\u{7f}"));
        assert!(!valid_tag(&"t".repeat(257)));
    }
    use crate::crypto::sign::{pem_decode, SigningKey};
    use crate::jose::Algorithm as Jose;
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use http::{HeaderValue, Method};
    use proptest::prelude::*;

    // RFC 9421 Appendix B.1: the test keys.

    /// B.1.1 `test-key-rsa` (PKCS#1).
    const TEST_KEY_RSA_PUBLIC: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEAhAKYdtoeoy8zcAcR874L8cnZxKzAGwd7v36APp7Pv6Q2jdsPBRrw
WEBnez6d0UDKDwGbc6nxfEXAy5mbhgajzrw3MOEt8uA5txSKobBpKDeBLOsdJKFq
MGmXCQvEG7YemcxDTRPxAleIAgYYRjTSd/QBwVW9OwNFhekro3RtlinV0a75jfZg
kne/YiktSvLG34lw2zqXBDTC5NHROUqGTlML4PlNZS5Ri2U4aCNx2rUPRcKIlE0P
uKxI4T+HIaFpv8+rdV6eUgOrB2xeI1dSFFn/nnv5OoZJEIB+VmuKn3DCUcCZSFlQ
PSXSfBDiUGhwOw76WuSSsf1D4b/vLoJ10wIDAQAB
-----END RSA PUBLIC KEY-----
";

    const TEST_KEY_RSA_PRIVATE: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEqAIBAAKCAQEAhAKYdtoeoy8zcAcR874L8cnZxKzAGwd7v36APp7Pv6Q2jdsP
BRrwWEBnez6d0UDKDwGbc6nxfEXAy5mbhgajzrw3MOEt8uA5txSKobBpKDeBLOsd
JKFqMGmXCQvEG7YemcxDTRPxAleIAgYYRjTSd/QBwVW9OwNFhekro3RtlinV0a75
jfZgkne/YiktSvLG34lw2zqXBDTC5NHROUqGTlML4PlNZS5Ri2U4aCNx2rUPRcKI
lE0PuKxI4T+HIaFpv8+rdV6eUgOrB2xeI1dSFFn/nnv5OoZJEIB+VmuKn3DCUcCZ
SFlQPSXSfBDiUGhwOw76WuSSsf1D4b/vLoJ10wIDAQABAoIBAG/JZuSWdoVHbi56
vjgCgkjg3lkO1KrO3nrdm6nrgA9P9qaPjxuKoWaKO1cBQlE1pSWp/cKncYgD5WxE
CpAnRUXG2pG4zdkzCYzAh1i+c34L6oZoHsirK6oNcEnHveydfzJL5934egm6p8DW
+m1RQ70yUt4uRc0YSor+q1LGJvGQHReF0WmJBZHrhz5e63Pq7lE0gIwuBqL8SMaA
yRXtK+JGxZpImTq+NHvEWWCu09SCq0r838ceQI55SvzmTkwqtC+8AT2zFviMZkKR
Qo6SPsrqItxZWRty2izawTF0Bf5S2VAx7O+6t3wBsQ1sLptoSgX3QblELY5asI0J
YFz7LJECgYkAsqeUJmqXE3LP8tYoIjMIAKiTm9o6psPlc8CrLI9CH0UbuaA2JCOM
cCNq8SyYbTqgnWlB9ZfcAm/cFpA8tYci9m5vYK8HNxQr+8FS3Qo8N9RJ8d0U5Csw
DzMYfRghAfUGwmlWj5hp1pQzAuhwbOXFtxKHVsMPhz1IBtF9Y8jvgqgYHLbmyiu1
mwJ5AL0pYF0G7x81prlARURwHo0Yf52kEw1dxpx+JXER7hQRWQki5/NsUEtv+8RT
qn2m6qte5DXLyn83b1qRscSdnCCwKtKWUug5q2ZbwVOCJCtmRwmnP131lWRYfj67
B/xJ1ZA6X3GEf4sNReNAtaucPEelgR2nsN0gKQKBiGoqHWbK1qYvBxX2X3kbPDkv
9C+celgZd2PW7aGYLCHq7nPbmfDV0yHcWjOhXZ8jRMjmANVR/eLQ2EfsRLdW69bn
f3ZD7JS1fwGnO3exGmHO3HZG+6AvberKYVYNHahNFEw5TsAcQWDLRpkGybBcxqZo
81YCqlqidwfeO5YtlO7etx1xLyqa2NsCeG9A86UjG+aeNnXEIDk1PDK+EuiThIUa
/2IxKzJKWl1BKr2d4xAfR0ZnEYuRrbeDQYgTImOlfW6/GuYIxKYgEKCFHFqJATAG
IxHrq1PDOiSwXd2GmVVYyEmhZnbcp8CxaEMQoevxAta0ssMK3w6UsDtvUvYvF22m
qQKBiD5GwESzsFPy3Ga0MvZpn3D6EJQLgsnrtUPZx+z2Ep2x0xc5orneB5fGyF1P
WtP+fG5Q6Dpdz3LRfm+KwBCWFKQjg7uTxcjerhBWEYPmEMKYwTJF5PBG9/ddvHLQ
EQeNC8fHGg4UXU8mhHnSBt3EA10qQJfRDs15M38eG2cYwB1PZpDHScDnDA0=
-----END RSA PRIVATE KEY-----
";

    /// B.1.2 `test-key-rsa-pss`.
    const TEST_KEY_RSA_PSS_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAr4tmm3r20Wd/PbqvP1s2
+QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct+Lh1GH45x28Rw3Ry53mm+
oAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7OyrFAHq
gDsznjPFmTOtCEcN2Z1FpWgchwuYLPL+Wokqltd11nqqzi+bJ9cvSKADYdUAAN5W
Utzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw9lq4
aOT9v6d+nb4bnNkQVklLQ3fVAvJm+xdDOp9LCNCN48V2pnDOkFV6+U9nV5oyc6XI
2wIDAQAB
-----END PUBLIC KEY-----
";

    const TEST_KEY_RSA_PSS_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIIEvgIBADALBgkqhkiG9w0BAQoEggSqMIIEpgIBAAKCAQEAr4tmm3r20Wd/Pbqv
P1s2+QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct+Lh1GH45x28Rw3Ry5
3mm+oAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7Oyr
FAHqgDsznjPFmTOtCEcN2Z1FpWgchwuYLPL+Wokqltd11nqqzi+bJ9cvSKADYdUA
AN5WUtzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw
9lq4aOT9v6d+nb4bnNkQVklLQ3fVAvJm+xdDOp9LCNCN48V2pnDOkFV6+U9nV5oy
c6XI2wIDAQABAoIBAQCUB8ip+kJiiZVKF8AqfB/aUP0jTAqOQewK1kKJ/iQCXBCq
pbo360gvdt05H5VZ/RDVkEgO2k73VSsbulqezKs8RFs2tEmU+JgTI9MeQJPWcP6X
aKy6LIYs0E2cWgp8GADgoBs8llBq0UhX0KffglIeek3n7Z6Gt4YFge2TAcW2WbN4
XfK7lupFyo6HHyWRiYHMMARQXLJeOSdTn5aMBP0PO4bQyk5ORxTUSeOciPJUFktQ
HkvGbym7KryEfwH8Tks0L7WhzyP60PL3xS9FNOJi9m+zztwYIXGDQuKM2GDsITeD
2mI2oHoPMyAD0wdI7BwSVW18p1h+jgfc4dlexKYRAoGBAOVfuiEiOchGghV5vn5N
RDNscAFnpHj1QgMr6/UG05RTgmcLfVsI1I4bSkbrIuVKviGGf7atlkROALOG/xRx
DLadgBEeNyHL5lz6ihQaFJLVQ0u3U4SB67J0YtVO3R6lXcIjBDHuY8SjYJ7Ci6Z6
vuDcoaEujnlrtUhaMxvSfcUJAoGBAMPsCHXte1uWNAqYad2WdLjPDlKtQJK1diCm
rqmB2g8QE99hDOHItjDBEdpyFBKOIP+NpVtM2KLhRajjcL9Ph8jrID6XUqikQuVi
4J9FV2m42jXMuioTT13idAILanYg8D3idvy/3isDVkON0X3UAVKrgMEne0hJpkPL
FYqgetvDAoGBAKLQ6JZMbSe0pPIJkSamQhsehgL5Rs51iX4m1z7+sYFAJfhvN3Q/
OGIHDRp6HjMUcxHpHw7U+S1TETxePwKLnLKj6hw8jnX2/nZRgWHzgVcY+sPsReRx
NJVf+Cfh6yOtznfX00p+JWOXdSY8glSSHJwRAMog+hFGW1AYdt7w80XBAoGBAImR
NUugqapgaEA8TrFxkJmngXYaAqpA0iYRA7kv3S4QavPBUGtFJHBNULzitydkNtVZ
3w6hgce0h9YThTo/nKc+OZDZbgfN9s7cQ75x0PQCAO4fx2P91Q+mDzDUVTeG30mE
t2m3S0dGe47JiJxifV9P3wNBNrZGSIF3mrORBVNDAoGBAI0QKn2Iv7Sgo4T/XjND
dl2kZTXqGAk8dOhpUiw/HdM3OGWbhHj2NdCzBliOmPyQtAr770GITWvbAI+IRYyF
S7Fnk6ZVVVHsxjtaHy1uJGFlaZzKR4AGNaUTOJMs6NadzCmGPAxNQQOCqoUjn4XR
rOjr9w349JooGXhOxbu8nOxX
-----END PRIVATE KEY-----
";

    /// B.1.3 `test-key-ecc-p256`.
    const TEST_KEY_ECC_P256_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lf
w0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END PUBLIC KEY-----
";

    const TEST_KEY_ECC_P256_PRIVATE: &str = "-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIFKbhfNZfpDsW43+0+JjUr9K+bTeuxopu653+hBaXGA7oAoGCCqGSM49
AwEHoUQDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lfw0EkjqF7xB4FivAxzic30tMM
4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END EC PRIVATE KEY-----
";

    /// B.1.4 `test-key-ed25519`.
    const TEST_KEY_ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
";

    const TEST_KEY_ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
";

    /// B.1.5 `test-shared-secret` (base64).
    const TEST_SHARED_SECRET: &str =
        "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";

    /// B.2 `test-request`.
    const B2_BODY: &[u8] = br#"{"hello": "world"}"#;
    const B2_DIGEST: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";
    const CREATED: i64 = 1_618_884_473;

    fn now() -> Timestamp {
        Timestamp::from_secs(CREATED + 10)
    }

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, hv(v));
        }
        h
    }

    fn b2_headers() -> HeaderMap {
        headers(&[
            ("host", "example.com"),
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("content-type", "application/json"),
            ("content-digest", B2_DIGEST),
            ("content-length", "18"),
        ])
    }

    fn b2_request(h: &HeaderMap) -> Request<'_> {
        Request {
            method: &Method::POST,
            scheme: "https",
            authority: "example.com",
            path: "/foo",
            query: Some("param=Value&Pet=dog"),
            headers: h,
            body: Some(B2_BODY),
        }
    }

    fn with_sig(h: &HeaderMap, input: &str, sig: &str) -> HeaderMap {
        let mut h = h.clone();
        h.append(SIGNATURE_INPUT, hv(input));
        h.append(SIGNATURE, hv(sig));
        h
    }

    fn only(h: &HeaderMap) -> ParsedSignature<'_> {
        let mut v = parse(h).unwrap().unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    fn der(pem: &str) -> Vec<u8> {
        pem_decode(pem.as_bytes()).unwrap().1
    }

    fn b64(s: &str) -> Vec<u8> {
        STANDARD.decode(s).unwrap()
    }

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend([0x81, n as u8]);
        } else {
            out.extend([0x82, (n >> 8) as u8, n as u8]);
        }
        out.extend_from_slice(content);
        out
    }

    /// Reads one DER element: (tag, contents, rest).
    fn read_tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
        let tag = b[0];
        let (len, hdr) = match b[1] {
            n if n < 0x80 => (usize::from(n), 2),
            0x81 => (usize::from(b[2]), 3),
            0x82 => ((usize::from(b[2]) << 8) | usize::from(b[3]), 4),
            _ => unreachable!(),
        };
        (tag, &b[hdr..hdr + len], &b[hdr + len..])
    }

    /// A PKCS#8 document around a private key of `alg_id` (an AlgorithmIdentifier).
    fn pkcs8(alg_id: &[u8], private: &[u8]) -> Vec<u8> {
        let mut body = tlv(0x02, &[0]);
        body.extend_from_slice(alg_id);
        body.extend(tlv(0x04, private));
        tlv(0x30, &body)
    }

    const RSA_ENCRYPTION: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    const EC_P256: &[u8] = &[
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86,
        0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
    ];

    /// The RFC's RSA-PSS private key is PKCS#8 with the id-RSASSA-PSS OID, which AWS-LC
    /// does not take for signing: the same RSAPrivateKey under rsaEncryption.
    fn rsa_pss_signing_key() -> SigningKey {
        let doc = der(TEST_KEY_RSA_PSS_PRIVATE);
        let (_, outer, _) = read_tlv(&doc);
        let (_, _version, rest) = read_tlv(outer);
        let (_, _alg, rest) = read_tlv(rest);
        let (tag, inner, _) = read_tlv(rest);
        assert_eq!(tag, 0x04);
        SigningKey::from_pkcs8(Jose::Ps256, &pkcs8(RSA_ENCRYPTION, inner)).unwrap()
    }

    fn rsa_signing_key() -> SigningKey {
        let pkcs1 = der(TEST_KEY_RSA_PRIVATE);
        SigningKey::from_pkcs8(Jose::Rs256, &pkcs8(RSA_ENCRYPTION, &pkcs1)).unwrap()
    }

    fn ecc_signing_key() -> SigningKey {
        let sec1 = der(TEST_KEY_ECC_P256_PRIVATE);
        SigningKey::from_pkcs8(Jose::Es256, &pkcs8(EC_P256, &sec1)).unwrap()
    }

    fn ed25519_signing_key() -> SigningKey {
        SigningKey::from_pkcs8(Jose::EdDsa, &der(TEST_KEY_ED25519_PRIVATE)).unwrap()
    }

    fn key(alg: Algorithm) -> VerifyingKey {
        match alg {
            Algorithm::HmacSha256 => VerifyingKey::hmac_sha256(&b64(TEST_SHARED_SECRET)).unwrap(),
            Algorithm::RsaPssSha512 => {
                VerifyingKey::from_public_key(alg, TEST_KEY_RSA_PSS_PUBLIC.as_bytes()).unwrap()
            }
            Algorithm::RsaV15Sha256 => {
                VerifyingKey::from_public_key(alg, TEST_KEY_RSA_PUBLIC.as_bytes()).unwrap()
            }
            Algorithm::EcdsaP256Sha256 => {
                VerifyingKey::from_public_key(alg, TEST_KEY_ECC_P256_PUBLIC.as_bytes()).unwrap()
            }
            Algorithm::Ed25519 => {
                VerifyingKey::from_public_key(alg, TEST_KEY_ED25519_PUBLIC.as_bytes()).unwrap()
            }
        }
    }

    fn base_str(sig: &ParsedSignature<'_>, req: &Request<'_>) -> String {
        String::from_utf8(signature_base(sig, req).unwrap()).unwrap()
    }

    // RFC 9421 Appendix B.2.

    #[test]
    fn rfc9421_b21_minimal_signature_rsa_pss() {
        let input = r#"sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#;
        let sig = "sig-b21=:d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGxbtRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2VjBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q==:";
        let h = with_sig(&b2_headers(), input, sig);
        let req = b2_request(&h);
        let s = only(&h);
        assert_eq!(s.label(), "sig-b21");
        assert_eq!(s.keyid(), Some("test-key-rsa-pss"));
        assert_eq!(s.nonce(), Some("b3k2pp5k7z-50gnwp.yemd"));
        assert_eq!(s.created(), Some(Timestamp::from_secs(CREATED)));
        assert_eq!(s.signature_params(), &input["sig-b21=".len()..]);
        let base = base_str(&s, &req);
        assert_eq!(
            base,
            r#""@signature-params": ();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#
        );
        let k = key(Algorithm::RsaPssSha512);
        assert!(k.verify(base.as_bytes(), s.signature()));
        assert!(!k.verify(b"other", s.signature()));
        // Valid as a signature, but it covers nothing: below the floor.
        assert_eq!(
            verify(&s, &req, &k, &Policy::default(), now()).unwrap_err(),
            HttpSigError::Policy("@method is not covered")
        );
    }

    #[test]
    fn rfc9421_b22_selective_components_rsa_pss() {
        let input = r#"sig-b22=("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#;
        let sig = "sig-b22=:LjbtqUbfmvjj5C5kr1Ugj4PmLYvx9wVjZvD9GsTT4F7GrcQEdJzgI9qHxICagShLRiLMlAJjtq6N4CDfKtjvuJyE5qH7KT8UCMkSowOB4+ECxCmT8rtAmj/0PIXxi0A0nxKyB09RNrCQibbUjsLS/2YyFYXEu4TRJQzRw1rLEuEfY17SARYhpTlaqwZVtR8NV7+4UKkjqpcAoFqWFQh62s7Cl+H2fjBSpqfZUJcsIk4N6wiKYd4je2U/lankenQ99PZfB4jY3I5rSV2DSBVkSFsURIjYErOs0tFTQosMTAoxk//0RoKUqiYY8Bh0aaUEb0rQl3/XaVe4bXTugEjHSw==:";
        let h = with_sig(&b2_headers(), input, sig);
        let req = b2_request(&h);
        let s = only(&h);
        assert_eq!(s.tag(), Some("header-example"));
        let base = base_str(&s, &req);
        assert_eq!(
            base,
            concat!(
                "\"@authority\": example.com\n",
                "\"content-digest\": sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:\n",
                "\"@query-param\";name=\"Pet\": dog\n",
                "\"@signature-params\": (\"@authority\" \"content-digest\" \"@query-param\";name=\"Pet\")",
                ";created=1618884473;keyid=\"test-key-rsa-pss\";tag=\"header-example\""
            )
        );
        assert!(key(Algorithm::RsaPssSha512).verify(base.as_bytes(), s.signature()));
        assert_eq!(s.signature_params(), &input["sig-b22=".len()..]);
    }

    #[test]
    fn rfc9421_b23_full_coverage_rsa_pss_verifies_end_to_end() {
        let input = r#"sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#;
        let sig = "sig-b23=:bbN8oArOxYoyylQQUU6QYwrTuaxLwjAC9fbY2F6SVWvh0yBiMIRGOnMYwZ/5MR6fb0Kh1rIRASVxFkeGt683+qRpRRU5p2voTp768ZrCUb38K0fUxN0O0iC59DzYx8DFll5GmydPxSmme9v6ULbMFkl+V5B1TP/yPViV7KsLNmvKiLJH1pFkh/aYA2HXXZzNBXmIkoQoLd7YfW91kE9o/CCoC1xMy7JA1ipwvKvfrs65ldmlu9bpG6A9BmzhuzF8Eim5f8ui9eH8LZH896+QIF61ka39VBrohr9iyMUJpvRX2Zbhl5ZJzSRxpJyoEZAFL2FUo5fTIztsDZKEgM4cUA==:";
        let h = with_sig(&b2_headers(), input, sig);
        let req = b2_request(&h);
        let s = only(&h);
        assert_eq!(
            base_str(&s, &req),
            concat!(
                "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n",
                "\"@method\": POST\n",
                "\"@path\": /foo\n",
                "\"@query\": ?param=Value&Pet=dog\n",
                "\"@authority\": example.com\n",
                "\"content-type\": application/json\n",
                "\"content-digest\": sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:\n",
                "\"content-length\": 18\n",
                "\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@query\" \"@authority\" ",
                "\"content-type\" \"content-digest\" \"content-length\");created=1618884473",
                ";keyid=\"test-key-rsa-pss\""
            )
        );
        let k = key(Algorithm::RsaPssSha512);
        let policy = Policy {
            required_components: &["date", "content-type"],
            ..Policy::default()
        };
        verify(&s, &req, &k, &policy, now()).unwrap();
        // The RFC's created is in 2021: now it is long expired.
        assert_eq!(
            verify(&s, &req, &k, &policy, Timestamp::from_secs(1_750_000_000)).unwrap_err(),
            HttpSigError::Expired
        );
        // The body changed: the signature holds (it covers the digest), the digest does not.
        let tampered = Request {
            body: Some(br#"{"hello": "World"}"#),
            ..req
        };
        assert_eq!(
            verify(&s, &tampered, &k, &policy, now()).unwrap_err(),
            HttpSigError::BodyHashMismatch
        );
        // Another key of the same type, or another algorithm's key, does not verify.
        let other = key(Algorithm::RsaV15Sha256);
        assert_eq!(
            verify(&s, &req, &other, &policy, now()).unwrap_err(),
            HttpSigError::BadSignature
        );
    }

    #[test]
    fn rfc9421_b24_response_ecdsa_signature_and_status_refused_on_requests() {
        // B.2.4 signs a response; the base is the RFC's, the signature is verified as given.
        let base = concat!(
            "\"@status\": 200\n",
            "\"content-type\": application/json\n",
            "\"content-digest\": sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:\n",
            "\"content-length\": 23\n",
            "\"@signature-params\": (\"@status\" \"content-type\" \"content-digest\" ",
            "\"content-length\");created=1618884473;keyid=\"test-key-ecc-p256\""
        );
        let sig = b64("wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==");
        let k = key(Algorithm::EcdsaP256Sha256);
        assert!(k.verify(base.as_bytes(), &sig));
        let mut flipped = sig.clone();
        flipped[10] ^= 1;
        assert!(!k.verify(base.as_bytes(), &flipped));
        // The response body's digest, as the RFC gives it.
        assert_eq!(
            content_digest(br#"{"message": "good dog"}"#, &[DigestAlgorithm::Sha512]),
            "sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:"
        );
        // On a request, @status is refused.
        let h = with_sig(
            &b2_headers(),
            r#"sig-b24=("@status" "content-type");created=1618884473;keyid="test-key-ecc-p256""#,
            "sig-b24=:AAAA:",
        );
        assert_eq!(
            signature_base(&only(&h), &b2_request(&h)).unwrap_err(),
            HttpSigError::Component("@status is for responses")
        );
    }

    #[test]
    fn rfc9421_b25_hmac_reproduced_exactly() {
        let secret = b64(TEST_SHARED_SECRET);
        let h = b2_headers();
        let req = b2_request(&h);
        let params = SignParams {
            created: Some(Timestamp::from_secs(CREATED)),
            keyid: Some("test-shared-secret"),
            ..SignParams::default()
        };
        let (input, sig) = sign(
            &req,
            &["date", "@authority", "content-type"],
            &params,
            "sig-b25",
            &Signer::HmacSha256(&secret),
        )
        .unwrap();
        assert_eq!(
            input,
            r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#
        );
        assert_eq!(
            sig,
            "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"
        );
        let h2 = with_sig(&h, &input, &sig);
        let req2 = b2_request(&h2);
        let s = only(&h2);
        assert_eq!(
            base_str(&s, &req2),
            concat!(
                "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n",
                "\"@authority\": example.com\n",
                "\"content-type\": application/json\n",
                "\"@signature-params\": (\"date\" \"@authority\" \"content-type\")",
                ";created=1618884473;keyid=\"test-shared-secret\""
            )
        );
        let k = key(Algorithm::HmacSha256);
        assert!(k.verify(&signature_base(&s, &req2).unwrap(), s.signature()));
        // No @method: below the floor whatever the MAC says.
        assert_eq!(
            verify(&s, &req2, &k, &Policy::default(), now()).unwrap_err(),
            HttpSigError::Policy("@method is not covered")
        );
    }

    #[test]
    fn rfc9421_b26_ed25519_reproduced_exactly() {
        let sk = ed25519_signing_key();
        let h = b2_headers();
        let req = b2_request(&h);
        let params = SignParams {
            created: Some(Timestamp::from_secs(CREATED)),
            keyid: Some("test-key-ed25519"),
            ..SignParams::default()
        };
        let components = [
            "date",
            "@method",
            "@path",
            "@authority",
            "content-type",
            "content-length",
        ];
        let (input, sig) = sign(
            &req,
            &components,
            &params,
            "sig-b26",
            &Signer::Key(Algorithm::Ed25519, &sk),
        )
        .unwrap();
        assert_eq!(
            input,
            r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#
        );
        assert_eq!(
            sig,
            "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"
        );
        let h2 = with_sig(&h, &input, &sig);
        let req2 = b2_request(&h2);
        let s = only(&h2);
        assert_eq!(
            base_str(&s, &req2),
            concat!(
                "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n",
                "\"@method\": POST\n",
                "\"@path\": /foo\n",
                "\"@authority\": example.com\n",
                "\"content-type\": application/json\n",
                "\"content-length\": 18\n",
                "\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" ",
                "\"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
            )
        );
        let k = key(Algorithm::Ed25519);
        assert!(k.verify(&signature_base(&s, &req2).unwrap(), s.signature()));
        // The request has a query that the signature does not cover: below the floor.
        assert_eq!(
            verify(&s, &req2, &k, &Policy::default(), now()).unwrap_err(),
            HttpSigError::Policy("the target is not covered")
        );
        // Without the query (and with a route not asking for the digest) it verifies.
        let no_query = Request {
            query: None,
            ..req2
        };
        assert_eq!(
            verify(&s, &no_query, &k, &Policy::default(), now()).unwrap_err(),
            HttpSigError::Policy("content-digest is not covered")
        );
        let lax = Policy {
            require_content_digest_with_body: false,
            ..Policy::default()
        };
        verify(&s, &no_query, &k, &lax, now()).unwrap();
        // The public half of the signing key is the RFC's public key.
        let from_private = VerifyingKey::from_signing_key(Algorithm::Ed25519, &sk).unwrap();
        verify(&s, &no_query, &from_private, &lax, now()).unwrap();
    }

    #[test]
    fn rfc9421_b3_tls_terminating_proxy_ecdsa() {
        let cert = ":MIIBqDCCAU6gAwIBAgIBBzAKBggqhkjOPQQDAjA6MRswGQYDVQQKDBJMZXQncyBBdXRoZW50aWNhdGUxGzAZBgNVBAMMEkxBIEludGVybWVkaWF0ZSBDQTAeFw0yMDAxMTQyMjU1MzNaFw0yMTAxMjMyMjU1MzNaMA0xCzAJBgNVBAMMAkJDMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8YnXXfaUgmnMtOXU/IncWalRhebrXmckC8vdgJ1p5Be5F/3YC8OthxM4+k1M6aEAEFcGzkJiNy6J84y7uzo9M6NyMHAwCQYDVR0TBAIwADAfBgNVHSMEGDAWgBRm3WjLa38lbEYCuiCPct0ZaSED2DAOBgNVHQ8BAf8EBAMCBsAwEwYDVR0lBAwwCgYIKwYBBQUHAwIwHQYDVR0RAQH/BBMwEYEPYmRjQGV4YW1wbGUuY29tMAoGCCqGSM49BAMCA0gAMEUCIBHda/r1vaL6G3VliL4/Di6YK0Q6bMjeSkC3dFCOOB8TAiEAx/kHSB4urmiZ0NX5r5XarmPk0wmuydBVoU4hBVZ1yhk=:";
        let h = with_sig(
            &headers(&[
                ("host", "service.internal.example"),
                ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
                ("content-type", "application/json"),
                ("content-length", "18"),
                ("client-cert", cert),
            ]),
            r#"ttrp=("@path" "@query" "@method" "@authority" "client-cert");created=1618884473;keyid="test-key-ecc-p256""#,
            "ttrp=:xVMHVpawaAC/0SbHrKRs9i8I3eOs5RtTMGCWXm/9nvZzoHsIg6Mce9315T6xoklyy0yzhD9ah4JHRwMLOgmizw==:",
        );
        let req = Request {
            authority: "service.internal.example",
            ..b2_request(&h)
        };
        let s = only(&h);
        let base = base_str(&s, &req);
        assert!(base.starts_with(concat!(
            "\"@path\": /foo\n",
            "\"@query\": ?param=Value&Pet=dog\n",
            "\"@method\": POST\n",
            "\"@authority\": service.internal.example\n",
            "\"client-cert\": :MIIBqDCC"
        )));
        let k = key(Algorithm::EcdsaP256Sha256);
        let lax = Policy {
            require_content_digest_with_body: false,
            ..Policy::default()
        };
        verify(&s, &req, &k, &lax, now()).unwrap();
        assert_eq!(
            verify(&s, &req, &k, &Policy::default(), now()).unwrap_err(),
            HttpSigError::Policy("content-digest is not covered")
        );
    }

    #[test]
    fn rfc9421_b4_transformations_ed25519() {
        // The request of B.4: two Accept lines, combined in the base.
        let h = headers(&[
            ("host", "example.org"),
            ("date", "Fri, 15 Jul 2022 14:24:55 GMT"),
            ("accept", "application/json"),
            ("accept", "*/*"),
        ]);
        let req = Request {
            method: &Method::GET,
            scheme: "https",
            authority: "example.org",
            path: "/demo",
            query: Some("name1=Value1&Name2=value2"),
            headers: &h,
            body: None,
        };
        let sk = ed25519_signing_key();
        let params = SignParams {
            created: Some(Timestamp::from_secs(CREATED)),
            keyid: Some("test-key-ed25519"),
            ..SignParams::default()
        };
        let (input, sig) = sign(
            &req,
            &["@method", "@path", "@authority", "accept"],
            &params,
            "transform",
            &Signer::Key(Algorithm::Ed25519, &sk),
        )
        .unwrap();
        assert_eq!(
            input,
            r#"transform=("@method" "@path" "@authority" "accept");created=1618884473;keyid="test-key-ed25519""#
        );
        assert_eq!(
            sig,
            "transform=:ZT1kooQsEHpZ0I1IjCqtQppOmIqlJPeo7DHR3SoMn0s5JZ1eRGS0A+vyYP9t/LXlh5QMFFQ6cpLt2m0pmj3NDA==:"
        );
        let k = key(Algorithm::Ed25519);
        let check = |pairs: &[(&'static str, &str)], method: &Method, authority: &str| {
            let h = with_sig(&headers(pairs), &input, &sig);
            let s = only(&h);
            let req = Request {
                method,
                authority,
                headers: &h,
                query: None,
                ..req
            };
            let policy = Policy::default();
            verify(&s, &req, &k, &policy, now())
        };
        // Valid transformations: one Accept line, extra headers, another header order.
        check(
            &[("accept", "application/json, */*"), ("host", "example.org")],
            &Method::GET,
            "example.org",
        )
        .unwrap();
        check(
            &[
                ("x-forwarded-for", "192.0.2.123"),
                ("accept", "application/json"),
                ("accept", "*/*"),
            ],
            &Method::GET,
            "example.org",
        )
        .unwrap();
        // Invalid ones: the Accept values reordered, another method, another authority.
        for (pairs, method, authority) in [
            (
                &[("accept", "*/*"), ("accept", "application/json")][..],
                &Method::GET,
                "example.org",
            ),
            (
                &[("accept", "application/json, */*")][..],
                &Method::POST,
                "example.org",
            ),
            (
                &[("accept", "application/json, */*")][..],
                &Method::GET,
                "example.com",
            ),
        ] {
            assert_eq!(
                check(pairs, method, authority).unwrap_err(),
                HttpSigError::BadSignature
            );
        }
    }

    #[test]
    fn rfc9421_rsa_keys_sign_and_verify() {
        let h = b2_headers();
        let req = b2_request(&h);
        let components = ["@method", "@target-uri", "content-digest", "date"];
        for (alg, sk) in [
            (Algorithm::RsaPssSha512, rsa_pss_signing_key()),
            (Algorithm::RsaV15Sha256, rsa_signing_key()),
            (Algorithm::EcdsaP256Sha256, ecc_signing_key()),
        ] {
            let params = SignParams {
                created: Some(now()),
                keyid: Some("k"),
                include_alg: true,
                ..SignParams::default()
            };
            let (input, sig) =
                sign(&req, &components, &params, "sig1", &Signer::Key(alg, &sk)).unwrap();
            assert!(
                input.ends_with(&format!(";alg=\"{}\"", alg.name())),
                "{input}"
            );
            let h2 = with_sig(&h, &input, &sig);
            let req2 = b2_request(&h2);
            let s = only(&h2);
            // The RFC's public key verifies what the RFC's private key signed.
            verify(&s, &req2, &key(alg), &Policy::default(), now()).unwrap();
            let mine = VerifyingKey::from_signing_key(alg, &sk).unwrap();
            verify(&s, &req2, &mine, &Policy::default(), now()).unwrap();
            // The alg parameter names this algorithm: any other key refuses it up front.
            for other in Algorithm::ALL.into_iter().filter(|a| *a != alg) {
                assert_eq!(
                    verify(&s, &req2, &key(other), &Policy::default(), now()).unwrap_err(),
                    HttpSigError::AlgorithmMismatch,
                    "{alg:?} vs {other:?}"
                );
            }
        }
        // A key that does not suit the algorithm cannot sign with it.
        let ed = ed25519_signing_key();
        assert_eq!(
            sign(
                &req,
                &components,
                &SignParams::default(),
                "s",
                &Signer::Key(Algorithm::RsaPssSha512, &ed)
            )
            .unwrap_err(),
            HttpSigError::UnsuitableKey
        );
    }

    // RFC 9530.

    #[test]
    fn rfc9530_content_digest_examples() {
        assert_eq!(
            content_digest(B2_BODY, &[DigestAlgorithm::Sha256]),
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        );
        assert_eq!(
            content_digest(B2_BODY, &[DigestAlgorithm::Sha512]),
            B2_DIGEST
        );
        assert_eq!(
            content_digest(b"", &[DigestAlgorithm::Sha256]),
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
        );
        let both = content_digest(B2_BODY, &[DigestAlgorithm::Sha256, DigestAlgorithm::Sha512]);
        assert_eq!(
            both,
            format!("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, {B2_DIGEST}")
        );
        let check = |values: &[&str], body: &[u8]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(CONTENT_DIGEST, hv(v));
            }
            verify_content_digest(&h, body)
        };
        check(&[&both], B2_BODY).unwrap();
        check(&[B2_DIGEST], B2_BODY).unwrap();
        // Across two lines, with an unknown algorithm alongside.
        check(
            &[
                "md5=:AAAA:",
                "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
            ],
            B2_BODY,
        )
        .unwrap();
        check(&["unixsum=30637, id-sha-256=:AAAA:"], B2_BODY)
            .map(|_| ())
            .unwrap_err();
        let mismatch = Err(HttpSigError::BodyHashMismatch);
        assert_eq!(check(&[&both], b"{\"hello\": \"world\"} "), mismatch);
        // Every known algorithm must match, not just one.
        let half = format!(
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-512=:{}:",
            STANDARD.encode([0u8; 64])
        );
        assert_eq!(check(&[&half], B2_BODY), mismatch);
        assert_eq!(check(&["sha-256=\"X48E\""], B2_BODY), mismatch);
        assert_eq!(check(&["sha-256=:AAAA:"], B2_BODY), mismatch);
        assert_eq!(check(&["sha-256"], B2_BODY), mismatch);
        assert_eq!(check(&["not a dictionary"], B2_BODY), mismatch);
        assert_eq!(check(&[], B2_BODY), mismatch);
    }

    // RFC 9421 §2.1 and §2.2: component values.

    fn lines(req: &Request<'_>, components: &[&str]) -> Result<Vec<String>, HttpSigError> {
        let items = components
            .iter()
            .map(|c| component_spec(c))
            .collect::<Result<Vec<_>, _>>()?;
        let base = String::from_utf8(build_base(&items, &Vec::new(), req)?).unwrap();
        let mut v: Vec<String> = base.split('\n').map(str::to_owned).collect();
        v.pop();
        Ok(v)
    }

    fn get<'a>(h: &'a HeaderMap, path: &'a str, query: Option<&'a str>) -> Request<'a> {
        Request {
            method: &Method::POST,
            scheme: "https",
            authority: "www.example.com",
            path,
            query,
            headers: h,
            body: None,
        }
    }

    #[test]
    fn rfc9421_s2_1_field_values() {
        let h = headers(&[
            ("host", "www.example.com"),
            ("date", "Tue, 20 Apr 2021 02:07:56 GMT"),
            ("x-ows-header", "   Leading and trailing whitespace.   "),
            ("cache-control", "max-age=60"),
            ("cache-control", "   must-revalidate"),
            ("example-dict", " a=1,    b=2;x=1;y=2,   c=(a   b   c)"),
            ("x-empty-header", ""),
        ]);
        let req = get(&h, "/foo", None);
        assert_eq!(
            lines(
                &req,
                &[
                    "host",
                    "date",
                    "x-ows-header",
                    "cache-control",
                    "example-dict",
                    "x-empty-header"
                ]
            )
            .unwrap(),
            [
                "\"host\": www.example.com",
                "\"date\": Tue, 20 Apr 2021 02:07:56 GMT",
                "\"x-ows-header\": Leading and trailing whitespace.",
                "\"cache-control\": max-age=60, must-revalidate",
                "\"example-dict\": a=1,    b=2;x=1;y=2,   c=(a   b   c)",
                "\"x-empty-header\": ",
            ]
        );
        // §2.1.1: sf needs a field known to be a dictionary.
        assert_eq!(
            lines(&req, &["example-dict;sf"]).unwrap_err(),
            HttpSigError::Component("sf on a field of unknown type")
        );
        let spaced = headers(&[(
            "content-digest",
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:,   sha-512=:AAAA:;x=?1",
        )]);
        assert_eq!(
            lines(&get(&spaced, "/", None), &["content-digest;sf"]).unwrap(),
            ["\"content-digest\";sf: sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-512=:AAAA:;x"]
        );
        // §2.1.2: one dictionary member.
        let dict = headers(&[("example-dict", " a=1, b=2;x=1;y=2, c=(a   b    c), d")]);
        let req = get(&dict, "/", None);
        assert_eq!(
            lines(
                &req,
                &[
                    r#""example-dict";key="a""#,
                    r#""example-dict";key="d""#,
                    r#""example-dict";key="b""#,
                    r#""example-dict";key="c""#,
                ]
            )
            .unwrap(),
            [
                "\"example-dict\";key=\"a\": 1",
                "\"example-dict\";key=\"d\": ?1",
                "\"example-dict\";key=\"b\": 2;x=1;y=2",
                "\"example-dict\";key=\"c\": (a b c)",
            ]
        );
        assert_eq!(
            lines(&req, &[r#""example-dict";key="e""#]).unwrap_err(),
            HttpSigError::Component("dictionary member absent")
        );
        // §2.1.3: byte sequences, one per line.
        let two = headers(&[
            ("example-header", "value, with, lots"),
            ("example-header", "of, commas"),
        ]);
        assert_eq!(
            lines(
                &get(&two, "/", None),
                &["example-header", "example-header;bs"]
            )
            .unwrap(),
            [
                "\"example-header\": value, with, lots, of, commas",
                "\"example-header\";bs: :dmFsdWUsIHdpdGgsIGxvdHM=:, :b2YsIGNvbW1hcw==:",
            ]
        );
        let one = headers(&[("example-header", "value, with, lots, of, commas")]);
        assert_eq!(
            lines(&get(&one, "/", None), &["example-header;bs"]).unwrap(),
            ["\"example-header\";bs: :dmFsdWUsIHdpdGgsIGxvdHMsIG9mLCBjb21tYXM=:"]
        );
        assert_eq!(
            lines(&get(&one, "/", None), &["example-header;bs;sf"]).unwrap_err(),
            HttpSigError::Component("bs with sf or key")
        );
        for refused in [
            "example-header;req",
            "example-header;tr",
            "example-header;x",
        ] {
            lines(&get(&one, "/", None), &[refused]).unwrap_err();
        }
        // Absent, or covered twice.
        assert_eq!(
            lines(&get(&one, "/", None), &["x-absent"]).unwrap_err(),
            HttpSigError::Component("field absent")
        );
        assert_eq!(
            lines(&get(&one, "/", None), &["example-header", "example-header"]).unwrap_err(),
            HttpSigError::Component("covered twice")
        );
        assert_eq!(
            lines(
                &get(&one, "/", None),
                &["example-header;bs", "\"example-header\";bs"]
            )
            .unwrap_err(),
            HttpSigError::Component("covered twice")
        );
    }

    #[test]
    fn rfc9421_s2_2_derived_components() {
        let h = headers(&[("host", "www.example.com")]);
        let req = get(&h, "/path", Some("param=value"));
        assert_eq!(
            lines(
                &req,
                &[
                    "@method",
                    "@target-uri",
                    "@authority",
                    "@scheme",
                    "@request-target",
                    "@path",
                    "@query"
                ]
            )
            .unwrap(),
            [
                "\"@method\": POST",
                "\"@target-uri\": https://www.example.com/path?param=value",
                "\"@authority\": www.example.com",
                "\"@scheme\": https",
                "\"@request-target\": /path?param=value",
                "\"@path\": /path",
                "\"@query\": ?param=value",
            ]
        );
        let q = |query| lines(&get(&h, "/path", query), &["@query"]).unwrap();
        assert_eq!(
            q(Some("param=value&foo=bar&baz=bat%2Dman")),
            ["\"@query\": ?param=value&foo=bar&baz=bat%2Dman"]
        );
        assert_eq!(q(Some("queryString")), ["\"@query\": ?queryString"]);
        assert_eq!(q(Some("")), ["\"@query\": ?"]);
        assert_eq!(q(None), ["\"@query\": ?"]);
        assert_eq!(
            lines(&get(&h, "", None), &["@path", "@target-uri"]).unwrap(),
            ["\"@path\": /", "\"@target-uri\": https://www.example.com/"]
        );
        // §2.2.8.
        let req = get(&h, "/path", Some("param=value&foo=bar&baz=batman&qux="));
        assert_eq!(
            lines(
                &req,
                &[
                    "@query-param;name=\"baz\"",
                    "\"@query-param\";name=\"qux\"",
                    "\"@query-param\";name=\"param\""
                ]
            )
            .unwrap(),
            [
                "\"@query-param\";name=\"baz\": batman",
                "\"@query-param\";name=\"qux\": ",
                "\"@query-param\";name=\"param\": value",
            ]
        );
        let req = get(
            &h,
            "/parameters",
            Some("var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something"),
        );
        assert_eq!(
            lines(
                &req,
                &[
                    r#""@query-param";name="var""#,
                    r#""@query-param";name="bar""#,
                    r#""@query-param";name="fa%C3%A7ade%22%3A%20""#,
                ]
            )
            .unwrap(),
            [
                "\"@query-param\";name=\"var\": this%20is%20a%20big%0Amultiline%20value",
                "\"@query-param\";name=\"bar\": with%20plus%20whitespace",
                "\"@query-param\";name=\"fa%C3%A7ade%22%3A%20\": something",
            ]
        );
        let repeated = get(&h, "/", Some("a=1&a=2"));
        assert_eq!(
            lines(&repeated, &[r#""@query-param";name="a""#]).unwrap_err(),
            HttpSigError::Component("query parameter repeated")
        );
        for absent in [Some("b=1"), None] {
            assert_eq!(
                lines(&get(&h, "/", absent), &[r#""@query-param";name="a""#]).unwrap_err(),
                HttpSigError::Component("query parameter absent")
            );
        }
        for refused in [
            "@query-param",
            "@query-param;name=a",
            "@method;req",
            "@path;bs",
            "@nope",
            "@signature-params",
        ] {
            lines(&get(&h, "/", Some("a=1")), &[refused]).unwrap_err();
        }
        // No control character from the request reaches the base.
        lines(&get(&h, "/a\nb", None), &["@path"]).unwrap_err();
    }

    #[test]
    fn authority_is_normalised() {
        for (scheme, authority, expected) in [
            ("https", "Example.COM:443", "example.com"),
            ("https", "example.com:80", "example.com:80"),
            ("http", "example.com:80", "example.com"),
            ("HTTP", "example.com:", "example.com"),
            ("https", "example.com:8443", "example.com:8443"),
            ("http", "[::1]:80", "[::1]"),
            ("http", "[::1]", "[::1]"),
            ("https", "[2001:db8::1]:8443", "[2001:db8::1]:8443"),
        ] {
            assert_eq!(normalized_authority(scheme, authority), expected);
        }
    }

    // Policy.

    /// A request signed by `alg` over `components`, for policy and tamper tests.
    struct Signed {
        headers: HeaderMap,
    }

    const BODY: &[u8] = b"{\"amount\": 100}";

    fn signed(alg: Algorithm, components: &[&str], params: SignParams<'_>) -> Signed {
        let h = headers(&[
            ("host", "api.example.com"),
            ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("content-type", "application/json"),
            (
                "content-digest",
                &content_digest(BODY, &[DigestAlgorithm::Sha256]),
            ),
            ("x-custom", "one"),
            ("x-custom", "two"),
        ]);
        let req = plain_request(&h);
        let secret = b64(TEST_SHARED_SECRET);
        let sk = match alg {
            Algorithm::Ed25519 => Some(ed25519_signing_key()),
            Algorithm::EcdsaP256Sha256 => Some(ecc_signing_key()),
            Algorithm::RsaPssSha512 => Some(rsa_pss_signing_key()),
            Algorithm::RsaV15Sha256 => Some(rsa_signing_key()),
            Algorithm::HmacSha256 => None,
        };
        let signer = match &sk {
            Some(sk) => Signer::Key(alg, sk),
            None => Signer::HmacSha256(&secret),
        };
        let (input, sig) = sign(&req, components, &params, "sig1", &signer).unwrap();
        Signed {
            headers: with_sig(&h, &input, &sig),
        }
    }

    fn plain_request(h: &HeaderMap) -> Request<'_> {
        Request {
            method: &Method::POST,
            scheme: "https",
            authority: "api.example.com",
            path: "/v1/pay",
            query: Some("to=alice&note=a%20b"),
            headers: h,
            body: Some(BODY),
        }
    }

    fn params_now() -> SignParams<'static> {
        SignParams {
            created: Some(now()),
            keyid: Some("k1"),
            nonce: Some("n-1"),
            ..SignParams::default()
        }
    }

    const FULL: [&str; 7] = [
        "@method",
        "@target-uri",
        "@authority",
        "date",
        "content-type",
        "content-digest",
        "x-custom",
    ];

    fn check(s: &Signed, policy: &Policy<'_>) -> Result<(), HttpSigError> {
        let sig = only(&s.headers);
        verify(
            &sig,
            &plain_request(&s.headers),
            &key(Algorithm::HmacSha256),
            policy,
            now(),
        )
        .map(|_| ())
    }

    #[test]
    fn the_policy_floor_holds_whatever_the_route_says() {
        let p = Policy::default();
        check(&signed(Algorithm::HmacSha256, &FULL, params_now()), &p).unwrap();
        for (components, err) in [
            (
                &["@target-uri", "content-digest"][..],
                "@method is not covered",
            ),
            (
                &["@method", "content-digest"][..],
                "the target is not covered",
            ),
            (
                &["@method", "@path", "content-digest"][..],
                "the target is not covered",
            ),
            (
                &[
                    "@method",
                    "@path",
                    "@query-param;name=\"to\"",
                    "content-digest",
                ][..],
                "the target is not covered",
            ),
            (
                &["@method", "@target-uri"][..],
                "content-digest is not covered",
            ),
            (
                &["@method", "@target-uri", "content-digest;key=\"sha-256\""][..],
                "content-digest is not covered",
            ),
        ] {
            assert_eq!(
                check(&signed(Algorithm::HmacSha256, components, params_now()), &p),
                Err(HttpSigError::Policy(err)),
                "{components:?}"
            );
        }
        for ok in [
            &["@method", "@path", "@query", "content-digest"][..],
            &["@method", "@request-target", "content-digest;sf"][..],
        ] {
            check(&signed(Algorithm::HmacSha256, ok, params_now()), &p).unwrap();
        }
        // Without a body, content-digest is not needed; without a query, @path is the target.
        let k = key(Algorithm::HmacSha256);
        let s = {
            let h = headers(&[("host", "api.example.com")]);
            let req = Request {
                query: None,
                body: None,
                ..plain_request(&h)
            };
            let secret = b64(TEST_SHARED_SECRET);
            let (i, sg) = sign(
                &req,
                &["@method", "@path"],
                &params_now(),
                "a",
                &Signer::HmacSha256(&secret),
            )
            .unwrap();
            with_sig(&h, &i, &sg)
        };
        let sig = only(&s);
        let bare = Request {
            query: None,
            body: None,
            ..plain_request(&s)
        };
        verify(&sig, &bare, &k, &p, now()).unwrap();
        // The same signature once a query is added: the floor now wants @query.
        let with_query = Request {
            query: Some("to=mallory"),
            ..bare
        };
        assert_eq!(
            verify(&sig, &with_query, &k, &p, now()).unwrap_err(),
            HttpSigError::Policy("the target is not covered")
        );
    }

    #[test]
    fn required_components_tag_and_digest_policy() {
        let s = signed(Algorithm::HmacSha256, &FULL, params_now());
        let required = |r: &'static [&'static str]| Policy {
            required_components: r,
            ..Policy::default()
        };
        check(&s, &required(&["date", "x-custom", "@authority"])).unwrap();
        check(&s, &required(&["\"content-digest\""])).unwrap();
        for missing in [
            &["content-length"][..],
            &["@query"][..],
            &["\"content-digest\";key=\"sha-256\""][..],
            &["\"@query-param\";name=\"to\""][..],
            &["not an identifier\""][..],
        ] {
            assert_eq!(
                check(&s, &required(missing)),
                Err(HttpSigError::Policy("a required component is not covered")),
                "{missing:?}"
            );
        }
        let narrowed = signed(
            Algorithm::HmacSha256,
            &[
                "@method",
                "@target-uri",
                "content-digest",
                "content-digest;key=\"sha-256\"",
                "@query-param;name=\"to\"",
            ],
            params_now(),
        );
        check(
            &narrowed,
            &required(&[
                "\"content-digest\";key=\"sha-256\"",
                "@query-param;name=\"to\"",
            ]),
        )
        .unwrap();
        // Tags.
        let tagged = signed(
            Algorithm::HmacSha256,
            &FULL,
            SignParams {
                tag: Some("payments"),
                ..params_now()
            },
        );
        let want = |t| Policy {
            tag: Some(t),
            ..Policy::default()
        };
        check(&tagged, &want("payments")).unwrap();
        assert_eq!(
            check(&tagged, &want("other")),
            Err(HttpSigError::Policy("tag"))
        );
        assert_eq!(
            check(&s, &want("payments")),
            Err(HttpSigError::Policy("tag"))
        );
        // A route that does not ask for the digest still checks one that is covered.
        let lax = Policy {
            require_content_digest_with_body: false,
            ..Policy::default()
        };
        let sig = only(&s.headers);
        let other_body = Request {
            body: Some(b"{\"amount\": 900}"),
            ..plain_request(&s.headers)
        };
        assert_eq!(
            verify(&sig, &other_body, &key(Algorithm::HmacSha256), &lax, now()).unwrap_err(),
            HttpSigError::BodyHashMismatch
        );
    }

    #[test]
    fn created_and_expires_windows() {
        let at = |created: Option<i64>, expires: Option<i64>| {
            let s = signed(
                Algorithm::HmacSha256,
                &FULL,
                SignParams {
                    created: created.map(Timestamp::from_secs),
                    expires: expires.map(Timestamp::from_secs),
                    ..params_now()
                },
            );
            check(&s, &Policy::default())
        };
        let n = now().as_secs();
        let w = DEFAULT_WINDOW_SECS;
        at(Some(n), None).unwrap();
        at(Some(n - w), None).unwrap();
        at(Some(n + w), None).unwrap();
        assert_eq!(at(Some(n - w - 1), None), Err(HttpSigError::Expired));
        assert_eq!(at(Some(n + w + 1), None), Err(HttpSigError::Expired));
        assert_eq!(
            at(None, None),
            Err(HttpSigError::Policy("created is missing"))
        );
        at(Some(n), Some(n + 1)).unwrap();
        assert_eq!(at(Some(n), Some(n)), Err(HttpSigError::Expired));
        assert_eq!(at(Some(n - 10), Some(n - 5)), Err(HttpSigError::Expired));
        assert_eq!(at(Some(-MAX_SF_INTEGER), None), Err(HttpSigError::Expired));
        // A negative window is no window.
        let s = signed(Algorithm::HmacSha256, &FULL, params_now());
        let p = Policy {
            window_secs: -5,
            ..Policy::default()
        };
        check(&s, &p).unwrap();
        let sig = only(&s.headers);
        let later = now().plus_millis(1000);
        assert_eq!(
            verify(
                &sig,
                &plain_request(&s.headers),
                &key(Algorithm::HmacSha256),
                &p,
                later
            )
            .unwrap_err(),
            HttpSigError::Expired
        );
        // Timestamps a structured integer cannot carry are refused when signing.
        let h = HeaderMap::new();
        let req = plain_request(&h);
        assert_eq!(
            sign(
                &req,
                &["@method"],
                &SignParams {
                    created: Some(Timestamp::from_secs(MAX_SF_INTEGER + 1)),
                    ..SignParams::default()
                },
                "s",
                &Signer::HmacSha256(b"k")
            )
            .unwrap_err(),
            HttpSigError::Malformed("Signature-Input")
        );
    }

    fn run(req: &Request<'_>, k: &VerifyingKey) -> Result<(), HttpSigError> {
        let sig = only(req.headers);
        verify(&sig, req, k, &Policy::default(), now()).map(|_| ())
    }

    #[test]
    fn every_single_byte_change_to_a_covered_part_is_refused() {
        for alg in [
            Algorithm::HmacSha256,
            Algorithm::Ed25519,
            Algorithm::EcdsaP256Sha256,
        ] {
            let s = signed(alg, &FULL, params_now());
            let k = key(alg);
            let p = Policy::default();
            let base = plain_request(&s.headers);
            run(&base, &k).unwrap();
            let mutate = |text: &str, i: usize| {
                let mut b = text.as_bytes().to_vec();
                b[i] = if b[i] == b'a' { b'b' } else { b'a' };
                String::from_utf8(b).unwrap()
            };
            // Every covered field, every byte.
            for name in ["date", "content-type", "content-digest", "x-custom"] {
                let values: Vec<String> = s
                    .headers
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect();
                for (line, value) in values.iter().enumerate() {
                    for i in 0..value.len() {
                        let mut h = s.headers.clone();
                        h.remove(name);
                        for (j, v) in values.iter().enumerate() {
                            let v = if j == line {
                                mutate(value, i)
                            } else {
                                v.clone()
                            };
                            h.append(name, hv(&v));
                        }
                        assert!(
                            run(&plain_request(&h), &k).is_err(),
                            "{alg:?} {name} byte {i}"
                        );
                    }
                }
            }
            // The method, the scheme, the authority, the path and the query.
            let methods = [
                Method::GET,
                Method::PUT,
                Method::from_bytes(b"POSt").unwrap(),
            ];
            for m in &methods {
                assert!(run(&Request { method: m, ..base }, &k).is_err());
            }
            assert!(run(
                &Request {
                    scheme: "http",
                    ..base
                },
                &k
            )
            .is_err());
            let mutated: Vec<(usize, String)> =
                ["api.example.com", "/v1/pay", "to=alice&note=a%20b"]
                    .iter()
                    .enumerate()
                    .flat_map(|(part, text)| (0..text.len()).map(move |i| (part, mutate(text, i))))
                    .collect();
            for (part, text) in &mutated {
                let r = run(
                    &match part {
                        0 => Request {
                            authority: text,
                            ..base
                        },
                        1 => Request { path: text, ..base },
                        _ => Request {
                            query: Some(text),
                            ..base
                        },
                    },
                    &k,
                );
                assert!(r.is_err(), "{alg:?} part {part}: {text}");
            }
            // The body: the digest no longer matches.
            for i in 0..BODY.len() {
                let mut body = BODY.to_vec();
                body[i] ^= 0x01;
                assert_eq!(
                    run(
                        &Request {
                            body: Some(&body),
                            ..base
                        },
                        &k
                    )
                    .unwrap_err(),
                    HttpSigError::BodyHashMismatch
                );
            }
            // Every byte of Signature-Input.
            let input = s
                .headers
                .get(SIGNATURE_INPUT)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            for i in 0..input.len() {
                for c in [b'a', b'0', b' ', b'"', b';', b'('] {
                    let mut b = input.clone().into_bytes();
                    if b[i] == c {
                        continue;
                    }
                    b[i] = c;
                    let mut h = s.headers.clone();
                    h.insert(SIGNATURE_INPUT, HeaderValue::from_bytes(&b).unwrap());
                    let ok = match parse(&h) {
                        Ok(Some(sigs)) => sigs
                            .iter()
                            .any(|sig| verify(sig, &plain_request(&h), &k, &p, now()).is_ok()),
                        _ => false,
                    };
                    assert!(!ok, "{alg:?} Signature-Input byte {i} -> {}", char::from(c));
                }
            }
            // Every bit of the signature.
            let sig = only(&s.headers).signature().to_vec();
            for i in 0..sig.len() * 8 {
                let mut bad = sig.clone();
                bad[i / 8] ^= 1 << (i % 8);
                let mut h = s.headers.clone();
                h.insert(SIGNATURE, hv(&format!("sig1=:{}:", STANDARD.encode(&bad))));
                assert_eq!(
                    run(&plain_request(&h), &k).unwrap_err(),
                    HttpSigError::BadSignature
                );
            }
        }
    }

    #[test]
    fn select_takes_the_first_label_whose_policy_holds_and_key_is_known() {
        let secret = b64(TEST_SHARED_SECRET);
        let h = b2_headers();
        let req = b2_request(&h);
        let make = |label: &str, components: &[&str], params: SignParams<'_>| {
            sign(
                &req,
                components,
                &params,
                label,
                &Signer::HmacSha256(&secret),
            )
            .unwrap()
        };
        let full = ["@method", "@target-uri", "content-digest"];
        let (i1, s1) = make(
            "proxy",
            &full,
            SignParams {
                keyid: Some("proxy-key"),
                ..params_now()
            },
        );
        let (i2, s2) = make(
            "weak",
            &["@method"],
            SignParams {
                keyid: Some("k1"),
                ..params_now()
            },
        );
        let (i3, s3) = make(
            "client",
            &full,
            SignParams {
                keyid: Some("k1"),
                ..params_now()
            },
        );
        let (i4, s4) = make(
            "nokey",
            &full,
            SignParams {
                keyid: None,
                ..params_now()
            },
        );
        let mut hh = h.clone();
        hh.append(SIGNATURE_INPUT, hv(&format!("{i1}, {i2}")));
        hh.append(SIGNATURE_INPUT, hv(&format!("{i3}, {i4}")));
        hh.append(SIGNATURE, hv(&format!("{s4}, {s3}, {s2}")));
        hh.append(SIGNATURE, hv(&s1));
        let sigs = parse(&hh).unwrap().unwrap();
        assert_eq!(
            sigs.iter().map(|s| s.label()).collect::<Vec<_>>(),
            ["proxy", "weak", "client", "nokey"]
        );
        let k = key(Algorithm::HmacSha256);
        let req = b2_request(&hh);
        let p = Policy::default();
        let known = |id: &str| (id == "k1").then_some(&k);
        let (chosen, found) = select(&sigs, &req, &p, now(), known).unwrap();
        assert_eq!(chosen.label(), "client");
        verify(chosen, &req, found, &p, now()).unwrap();
        // Nobody known: the candidates passed, so the key is what is missing.
        assert_eq!(
            select(&sigs, &req, &p, now(), |_| None::<&VerifyingKey>).unwrap_err(),
            HttpSigError::UnknownKey
        );
        // Only the weak one known: its policy failure is reported.
        assert_eq!(
            select(&sigs[1..2], &req, &p, now(), known).unwrap_err(),
            HttpSigError::Policy("the target is not covered")
        );
        assert_eq!(
            select(&sigs[3..], &req, &p, now(), known).unwrap_err(),
            HttpSigError::Policy("keyid is missing")
        );
        // A route tag nobody carries.
        let tagged = Policy {
            tag: Some("t"),
            ..Policy::default()
        };
        assert_eq!(
            select(&sigs, &req, &tagged, now(), known).unwrap_err(),
            HttpSigError::Policy("keyid is missing")
        );
        assert_eq!(
            select(&sigs[..3], &req, &tagged, now(), known).unwrap_err(),
            HttpSigError::Policy("tag")
        );
        assert_eq!(
            select(&[], &req, &p, now(), known).unwrap_err(),
            HttpSigError::Missing("Signature")
        );
    }

    #[test]
    fn keys_are_checked_when_registered() {
        // Another type, another curve, a private key, garbage, HMAC as a public key.
        assert!(VerifyingKey::from_public_key(
            Algorithm::Ed25519,
            TEST_KEY_ECC_P256_PUBLIC.as_bytes()
        )
        .is_err());
        assert!(VerifyingKey::from_public_key(
            Algorithm::EcdsaP256Sha256,
            TEST_KEY_ED25519_PUBLIC.as_bytes()
        )
        .is_err());
        assert!(VerifyingKey::from_public_key(
            Algorithm::RsaPssSha512,
            TEST_KEY_ECC_P256_PUBLIC.as_bytes()
        )
        .is_err());
        assert!(VerifyingKey::from_public_key(
            Algorithm::EcdsaP256Sha256,
            TEST_KEY_RSA_PSS_PUBLIC.as_bytes()
        )
        .is_err());
        assert!(VerifyingKey::from_public_key(
            Algorithm::Ed25519,
            TEST_KEY_ED25519_PRIVATE.as_bytes()
        )
        .is_err());
        assert!(VerifyingKey::from_public_key(
            Algorithm::HmacSha256,
            TEST_KEY_ED25519_PUBLIC.as_bytes()
        )
        .is_err());
        assert!(VerifyingKey::from_public_key(
            Algorithm::Ed25519,
            b"-----BEGIN PUBLIC KEY-----\nzz\n-----END PUBLIC KEY-----"
        )
        .is_err());
        assert!(VerifyingKey::from_public_key(Algorithm::Ed25519, b"").is_err());
        // PKCS#1 only for RSA.
        assert!(VerifyingKey::from_public_key(
            Algorithm::Ed25519,
            TEST_KEY_ED25519_PUBLIC
                .replace("PUBLIC KEY", "RSA PUBLIC KEY")
                .as_bytes()
        )
        .is_err());
        // DER works as well as PEM; so does the raw Ed25519 key.
        let ed = der(TEST_KEY_ED25519_PUBLIC);
        assert_eq!(
            VerifyingKey::from_public_key(Algorithm::Ed25519, &ed)
                .unwrap()
                .algorithm(),
            Algorithm::Ed25519
        );
        VerifyingKey::from_public_key(Algorithm::Ed25519, &ed[ed.len() - 32..]).unwrap();
        // RSA below 2048 bits.
        let small = "-----BEGIN PUBLIC KEY-----\nMIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQClbkoOcBAXWJpRh9x+qEHRVvLsDjatUqRN/rHmH3rZkdjFEFb/7bFitMDyg6EqiKOU3/Umq3KRy7MHzqv84LHf1c2VCAltWyuLbfXWce9jd8CSHLI8Jwpw4lmOb/idGfEFrMLT8Ms18pKA4Thrb2TE7yLh4fINDOjP+yJJvZohNwIDAQAB\n-----END PUBLIC KEY-----\n";
        assert!(VerifyingKey::from_public_key(Algorithm::RsaPssSha512, small.as_bytes()).is_err());
        // Short HMAC secrets.
        assert!(VerifyingKey::hmac_sha256(&[7; 31]).is_err());
        let k = VerifyingKey::hmac_sha256(&[7; 32]).unwrap();
        assert_eq!(format!("{k:?}"), "VerifyingKey(hmac-sha256, <redacted>)");
        let secret = [0x5a; 32];
        let signer = format!("{:?}", Signer::HmacSha256(&secret));
        assert_eq!(signer, "Signer(hmac-sha256, <redacted>)");
        assert_eq!(
            format!("{:?}", key(Algorithm::Ed25519)),
            "VerifyingKey(ed25519)"
        );
        for alg in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(alg.name()), Some(alg));
        }
        assert_eq!(Algorithm::from_name("ecdsa-p384-sha384"), None);
    }

    #[test]
    fn error_codes() {
        assert_eq!(
            HttpSigError::Missing("Signature").code(),
            "missing_signature"
        );
        assert_eq!(HttpSigError::Expired.code(), "signature_expired");
        assert_eq!(HttpSigError::Replayed.code(), "replayed_request");
        assert_eq!(HttpSigError::BodyHashMismatch.code(), "body_hash_mismatch");
        assert_eq!(HttpSigError::UnknownKey.code(), "unknown_key");
        for e in [
            HttpSigError::Malformed("x"),
            HttpSigError::Component("x"),
            HttpSigError::Policy("x"),
            HttpSigError::AlgorithmMismatch,
            HttpSigError::UnsuitableKey,
            HttpSigError::BadSignature,
        ] {
            assert_eq!(e.code(), "invalid_signature");
        }
    }

    // Parsing.

    fn parse_pair(input: &[u8], sig: &[u8]) -> Result<Option<usize>, HttpSigError> {
        let mut h = HeaderMap::new();
        h.append(SIGNATURE_INPUT, HeaderValue::from_bytes(input).unwrap());
        h.append(SIGNATURE, HeaderValue::from_bytes(sig).unwrap());
        parse(&h).map(|o| o.map(|v| v.len()))
    }

    #[test]
    fn absent_and_half_present_headers() {
        assert_eq!(parse(&b2_headers()), Ok(None));
        let mut h = b2_headers();
        h.append(SIGNATURE, hv("a=:AAAA:"));
        assert_eq!(
            parse(&h).unwrap_err(),
            HttpSigError::Missing("Signature-Input")
        );
        let mut h = b2_headers();
        h.append(SIGNATURE_INPUT, hv("a=()"));
        assert_eq!(parse(&h).unwrap_err(), HttpSigError::Missing("Signature"));
    }

    #[test]
    fn malformed_headers_of_many_shapes_are_refused() {
        let ok_sig = b"a=:AAAA:".as_slice();
        let inputs: &[&[u8]] = &[
            b"",
            b" ",
            b"a",
            b"a=",
            b"a=(",
            b"a=(\"@method\"",
            b"a=\"@method\"",
            b"a=(@method)",
            b"a=(\"@method\"\"@path\")",
            b"a=(\"@method\",\"@path\")",
            b"A=()",
            b"1a=()",
            b"a=();created=1.5",
            b"a=();created=\"1\"",
            b"a=();keyid=1",
            b"a=();nonce=tok",
            b"a=();alg=?1",
            b"a=();tag=:AAAA:",
            b"a=();created=1234567890123456",
            b"a=();created=-",
            b"a=();created",
            b"a=(), a=()",
            b"a=() b=()",
            b"a=(),",
            b"a=(),   ",
            b",a=()",
            b"a=();;created=1",
            b"a=();created=1;created=2",
            b"a=(\"a\\x\")",
            b"a=(\"a\\\")",
            b"a=(\"unterminated)",
            b"a=(\"\xc3\xa9\")",
            b"a=(\"Content-Type\")",
            b"a=(\"@\")",
            b"a=(\"\")",
            b"a=(\"@Method\")",
            b"a=(\"a b\")",
            b"a=(\"x\";=1)",
            b"a=(\"x\";K=1)",
            b"a=(\"x\";k=)",
            b"a=(\"x\";k=1;k=2)",
            b"a=((\"x\"))",
            b"a=(\"x\")garbage",
            b"a=?2",
            b"a=:AAAA",
            b"a=(\"x\"\t\"y\")",
            b"a=()\t,\tb=()",
        ];
        for input in inputs {
            let r = parse_pair(input, ok_sig);
            assert!(
                matches!(r, Err(HttpSigError::Malformed(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(input)
            );
        }
        let sigs: &[&[u8]] = &[
            b"a=:!!!:",
            b"a=:AAAA",
            b"a=::",
            b"a=\"AAAA\"",
            b"a=(:AAAA:)",
            b"b=:AAAA:",
            b"a=:AAAA:, b=:AAAA:",
            b"a=:AAAA:, a=:AAAA:",
            b"a=:A=AA:",
        ];
        for sig in sigs {
            let r = parse_pair(b"a=()", sig);
            assert!(
                matches!(r, Err(HttpSigError::Malformed(_))),
                "{:?}: {r:?}",
                String::from_utf8_lossy(sig)
            );
        }
        // What the grammar allows: spaces, tabs between members, parameters on the signature,
        // missing padding, extension parameters.
        assert_eq!(
            parse_pair(b"  a=(  \"@method\"   \"@path\"  );created=1 ", ok_sig),
            Ok(Some(1))
        );
        assert_eq!(
            parse_pair(b"a=(), b=()", b"b=:AAAA:;x=1,\tbbb=?0, a=:AAA:"),
            Err(HttpSigError::Malformed("Signature"))
        );
        assert_eq!(
            parse_pair(b"a=(), b=()", b"b=:AAAA:;x=1,\ta=:AAA:"),
            Ok(Some(2))
        );
        assert_eq!(
            parse_pair(b"a=(\"x\";sf;k=tok/en:1;n=-3);foo=*bar;created=1", ok_sig),
            Ok(Some(1))
        );
        // The canonical form of what was sent is what is signed.
        let mut h = HeaderMap::new();
        h.append(
            SIGNATURE_INPUT,
            hv("a=(  \"@method\"   \"x\";sf=?1  );created=01;keyid=\"a\\\\b\\\"c\""),
        );
        h.append(SIGNATURE, hv("a=:AAAA:"));
        let s = only(&h);
        assert_eq!(
            s.signature_params(),
            r#"("@method" "x";sf);created=1;keyid="a\\b\"c""#
        );
        assert_eq!(s.keyid(), Some("a\\b\"c"));
        assert_eq!(s.covered().collect::<Vec<_>>(), ["@method", "x"]);
        // Bounds.
        let many: Vec<String> = (0..=MAX_SIGNATURES).map(|i| format!("s{i}=()")).collect();
        let many_sigs: Vec<String> = (0..=MAX_SIGNATURES)
            .map(|i| format!("s{i}=:AAAA:"))
            .collect();
        assert_eq!(
            parse_pair(many.join(", ").as_bytes(), many_sigs.join(", ").as_bytes()),
            Err(HttpSigError::Malformed("Signature-Input"))
        );
        assert_eq!(
            parse_pair(
                many[..MAX_SIGNATURES].join(", ").as_bytes(),
                many_sigs[..MAX_SIGNATURES].join(", ").as_bytes()
            ),
            Ok(Some(MAX_SIGNATURES))
        );
        let components = |n: usize| {
            let names: Vec<String> = (0..n).map(|i| format!("\"x-h{i}\"")).collect();
            format!("a=({})", names.join(" "))
        };
        assert_eq!(
            parse_pair(components(MAX_COMPONENTS).as_bytes(), ok_sig),
            Ok(Some(1))
        );
        assert_eq!(
            parse_pair(components(MAX_COMPONENTS + 1).as_bytes(), ok_sig),
            Err(HttpSigError::Malformed("Signature-Input"))
        );
        let long = format!("a=();keyid=\"{}\"", "k".repeat(MAX_HEADER_LEN));
        assert_eq!(
            parse_pair(long.as_bytes(), ok_sig),
            Err(HttpSigError::Malformed("Signature-Input"))
        );
        let mut h = HeaderMap::new();
        for i in 0..3 {
            h.append(
                SIGNATURE_INPUT,
                hv(&format!("l{i}=();nonce=\"{}\"", "n".repeat(3000))),
            );
        }
        h.append(SIGNATURE, hv("l0=:AAAA:, l1=:AAAA:, l2=:AAAA:"));
        assert_eq!(
            parse(&h).unwrap_err(),
            HttpSigError::Malformed("Signature-Input")
        );
        // A label repeated across lines.
        let mut h = HeaderMap::new();
        h.append(SIGNATURE_INPUT, hv("a=()"));
        h.append(SIGNATURE_INPUT, hv("a=()"));
        h.append(SIGNATURE, hv("a=:AAAA:"));
        assert_eq!(
            parse(&h).unwrap_err(),
            HttpSigError::Malformed("Signature-Input")
        );
    }

    #[test]
    fn signing_refuses_what_it_could_not_serialise() {
        let h = b2_headers();
        let req = b2_request(&h);
        let signer = Signer::HmacSha256(b"secret");
        let p = SignParams::default();
        for label in ["", "Sig", "1a", "a b", "a=b"] {
            assert_eq!(
                sign(&req, &["@method"], &p, label, &signer).unwrap_err(),
                HttpSigError::Malformed("label")
            );
        }
        for c in [
            "",
            "Date",
            "\"date",
            "date;",
            "date;K",
            "@",
            "a b",
            "\"a\";x=\"\\q\"",
        ] {
            assert!(sign(&req, &[c], &p, "s", &signer).is_err(), "{c}");
        }
        let bad = SignParams {
            keyid: Some("new\nline"),
            ..SignParams::default()
        };
        assert!(sign(&req, &["@method"], &bad, "s", &signer).is_err());
        let too_many: Vec<String> = (0..=MAX_COMPONENTS).map(|i| format!("x-{i}")).collect();
        let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
        assert!(sign(&req, &too_many, &p, "s", &signer).is_err());
        // A covered field the request lacks.
        assert_eq!(
            sign(&req, &["x-absent"], &p, "s", &signer).unwrap_err(),
            HttpSigError::Component("field absent")
        );
    }

    // The structured-field parser, by property.

    fn sf_text() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-c0-9@\"();=:?*, \t.\\\\/+-]{0,48}").unwrap()
    }

    fn arb_bare() -> impl Strategy<Value = sf::Bare<'static>> {
        prop_oneof![
            (-MAX_SF_INTEGER..=MAX_SF_INTEGER).prop_map(sf::Bare::Integer),
            "[ -~]{0,12}".prop_map(|s| sf::Bare::String(Cow::Owned(s))),
            proptest::sample::select(vec!["a", "*b", "tok/en:x", "A-1"]).prop_map(sf::Bare::Token),
            proptest::collection::vec(any::<u8>(), 0..24).prop_map(sf::Bare::Bytes),
            any::<bool>().prop_map(sf::Bare::Boolean),
        ]
    }

    fn arb_key() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(vec!["a", "b", "sig-1", "*x", "k.y", "z_9"])
    }

    fn arb_params() -> impl Strategy<Value = sf::Params<'static>> {
        proptest::collection::vec((arb_key(), arb_bare()), 0..4).prop_map(|v| {
            let mut out: sf::Params<'static> = Vec::new();
            for (k, b) in v {
                if !out.iter().any(|(k2, _)| *k2 == k) {
                    out.push((k, b));
                }
            }
            out
        })
    }

    fn arb_item() -> impl Strategy<Value = sf::Item<'static>> {
        (arb_bare(), arb_params()).prop_map(|(value, params)| sf::Item { value, params })
    }

    fn arb_dict() -> impl Strategy<Value = sf::Dict<'static>> {
        let member = prop_oneof![
            arb_item().prop_map(sf::Member::Item),
            (proptest::collection::vec(arb_item(), 0..4), arb_params())
                .prop_map(|(items, params)| sf::Member::Inner(items, params)),
        ];
        proptest::collection::vec((arb_key(), member), 1..5).prop_map(|v| {
            let mut out: sf::Dict<'static> = Vec::new();
            for (k, m) in v {
                if !out.iter().any(|(k2, _)| *k2 == k) {
                    out.push((k, m));
                }
            }
            out
        })
    }

    #[test]
    fn any_single_changed_byte_fails() {
        let secret = b64(TEST_SHARED_SECRET);
        let signer = Signer::HmacSha256(&secret);
        let h = b2_headers();
        let req = b2_request(&h);
        let params = SignParams {
            created: Some(Timestamp::from_secs(CREATED)),
            keyid: Some("test-shared-secret"),
            nonce: Some("n-1"),
            ..SignParams::default()
        };
        let components = ["@method", "@target-uri", "content-digest", "date"];
        let (input, sig) = sign(&req, &components, &params, "sig1", &signer).unwrap();
        let signed = with_sig(&h, &input, &sig);
        let k = key(Algorithm::HmacSha256);
        let run = |req: &Request<'_>, h: &HeaderMap| {
            let sigs = parse(h).unwrap().unwrap();
            verify(&sigs[0], req, &k, &Policy::default(), now()).map(|_| ())
        };
        run(&b2_request(&signed), &signed).unwrap();
        let flip = |s: &str, i: usize| -> String {
            let mut b = s.as_bytes().to_vec();
            b[i] = if b[i] == b'a' { b'b' } else { b'a' };
            String::from_utf8(b).unwrap()
        };
        let base = b2_request(&signed);
        for i in 0..base.path.len() {
            let p = flip(base.path, i);
            assert!(
                run(&Request { path: &p, ..base }, &signed).is_err(),
                "path {i}"
            );
        }
        let q = base.query.unwrap();
        for i in 0..q.len() {
            let q2 = flip(q, i);
            let r = Request {
                query: Some(&q2),
                ..base
            };
            assert!(run(&r, &signed).is_err(), "query {i}");
        }
        for m in [Method::PUT, Method::GET, Method::PATCH] {
            assert!(run(&Request { method: &m, ..base }, &signed).is_err());
        }
        let body = base.body.unwrap();
        for i in 0..body.len() {
            let mut b = body.to_vec();
            b[i] ^= 1;
            let r = Request {
                body: Some(&b),
                ..base
            };
            assert_eq!(
                run(&r, &signed),
                Err(HttpSigError::BodyHashMismatch),
                "body {i}"
            );
        }
        let date = signed["date"].to_str().unwrap().to_owned();
        for i in 0..date.len() {
            let mut h2 = signed.clone();
            h2.insert("date", hv(&flip(&date, i)));
            assert!(run(&b2_request(&h2), &h2).is_err(), "date {i}");
        }
        // The signature parameters (created, keyid, nonce) are signed too.
        let tampered = input.replace(&CREATED.to_string(), &(CREATED + 1).to_string());
        let h2 = with_sig(&h, &tampered, &sig);
        assert_eq!(run(&b2_request(&h2), &h2), Err(HttpSigError::BadSignature));
        let h2 = with_sig(&h, &input.replace("n-1", "n-2"), &sig);
        assert_eq!(run(&b2_request(&h2), &h2), Err(HttpSigError::BadSignature));
    }

    proptest! {
        #[test]
        fn dictionaries_round_trip(dict in arb_dict()) {
            let mut text = String::new();
            sf::write_dict(&mut text, &dict);
            let parsed = sf::dictionary(&text).unwrap();
            prop_assert_eq!(&parsed, &dict);
        }

        #[test]
        fn what_parses_reserialises_to_a_fixed_point(s in sf_text()) {
            if let Ok(dict) = sf::dictionary(&s) {
                let mut once = String::new();
                sf::write_dict(&mut once, &dict);
                let again = sf::dictionary(&once).unwrap();
                prop_assert_eq!(&again, &dict);
                let mut twice = String::new();
                sf::write_dict(&mut twice, &again);
                prop_assert_eq!(once, twice);
            }
        }

        #[test]
        fn arbitrary_signature_headers_never_panic(
            input in prop_oneof![sf_text(), any::<String>(), "[ -~]{0,200}"],
            sig in prop_oneof![sf_text(), "[a-c]=:[A-Za-z0-9+/=]{0,90}:(, [a-c]=:[A-Za-z0-9+/=]{0,8}:)?"],
            body in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
        ) {
            let (Ok(i), Ok(sv)) = (HeaderValue::from_str(&input), HeaderValue::from_str(&sig)) else {
                return Ok(());
            };
            let mut h = b2_headers();
            h.append(SIGNATURE_INPUT, i);
            h.append(SIGNATURE, sv);
            h.append("example-dict", hv("a=1, b=(x y)"));
            let req = Request { body: body.as_deref(), ..b2_request(&h) };
            if let Ok(Some(sigs)) = parse(&h) {
                for s in &sigs {
                    let _ = s.signature_params();
                    let _ = signature_base(s, &req);
                    for alg in Algorithm::ALL {
                        let _ = verify(s, &req, &key(alg), &Policy::default(), now());
                    }
                }
                let _ = select(&sigs, &req, &Policy::default(), now(), |_| Some(()));
            }
        }

        #[test]
        fn arbitrary_covered_components_never_panic(
            components in proptest::collection::vec(
                prop_oneof![
                    proptest::sample::select(vec![
                        "\"@method\"", "\"@query-param\";name=\"Pet\"", "\"content-digest\";sf",
                        "\"example-dict\";key=\"b\"", "\"example-dict\";sf", "\"date\";bs",
                        "\"@query-param\"", "\"x\";req", "\"@status\"",
                    ]).prop_map(str::to_owned),
                    "\"[a-z@-]{1,8}\"(;[a-z]{1,3}(=[a-z0-9\"?:]{1,4})?){0,2}",
                ],
                0..6,
            ),
            query in proptest::option::of("[a-zA-Z0-9=&%+.]{0,24}"),
        ) {
            let input = format!("a=({});created=1618884483;keyid=\"k\"", components.join(" "));
            let Ok(i) = HeaderValue::from_str(&input) else { return Ok(()); };
            let mut h = b2_headers();
            h.append(SIGNATURE_INPUT, i);
            h.append(SIGNATURE, hv("a=:AAAA:"));
            h.append("example-dict", hv("a=1, b=(x y);z"));
            let req = Request { query: query.as_deref(), ..b2_request(&h) };
            if let Ok(Some(sigs)) = parse(&h) {
                for s in &sigs {
                    let _ = signature_base(s, &req);
                    let _ = verify(s, &req, &key(Algorithm::HmacSha256), &Policy::default(), now());
                }
            }
        }
    }
}
