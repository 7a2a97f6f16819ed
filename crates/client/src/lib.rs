//! The client side of Portcullis request signing: the headers that make a request pass the
//! gateway's `hmac`, `sigv4` or `http_signature` check.
//!
//! The protocol itself lives in [`portcullis_core::hmac`] (pure, shared with the server, so
//! both sides canonicalise the same way); this crate adds what a client needs around it: a
//! [`Credential`] that never prints its secret, a fresh random [`Nonce`] per request, the
//! authority as the HTTP client will send it, the body digests, and one function per way of
//! holding a request ([`sign`], [`sign_request`], [`sign_parts`]). With the `reqwest` feature,
//! [`reqwest::send`] signs and sends a `reqwest::RequestBuilder`.
//!
//! | [`Scheme`] | Headers added | Server route (`portcullis serve` defaults) |
//! |---|---|---|
//! | [`Scheme::Native`] | `X-API-Key`, `X-Timestamp`, `X-Nonce`, `X-Signature`, `X-Body-Hash` (with a body) | `/hmac/echo/…` |
//! | [`Scheme::SigV4`] | `X-Amz-Date`, `X-Amz-Content-Sha256`, `Authorization` | `/sigv4/echo/…` (`us-east-1`, `execute-api`) |
//! | [`Scheme::HttpSignature`] | `Signature-Input`, `Signature`, `Content-Digest` (with a body) | `/httpsig/echo/…` |
//!
//! A credential from `portcullis hmac create` (its `key_id` and `secret`) signs with all
//! three: the secret text's bytes are the HMAC key, the key id is the `X-API-Key`, the SigV4
//! access key id and the RFC 9421 `keyid`. RFC 9421 can also sign with a private key
//! ([`Credential::private_key`]).
//!
//! # Example
//!
//! ```
//! use portcullis_client::{Credential, Scheme};
//!
//! let credential = Credential::hmac("hk_partner", "the secret text")?;
//! let mut request = http::Request::post("http://127.0.0.1:8080/hmac/echo/orders?b=2&a=1")
//!     .body(br#"{"amount":100}"#.to_vec())?;
//! portcullis_client::sign_request(
//!     &Scheme::Native,
//!     &credential,
//!     &mut request,
//!     portcullis_client::now(),
//! )?;
//! assert!(request.headers().contains_key("x-signature"));
//! assert!(request.headers().contains_key("x-body-hash"));
//! // Send `request` with any HTTP client, exactly as it is (same path, query and body).
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST};
use http::{HeaderMap, Method, Uri};
use portcullis_core::crypto;
use portcullis_core::crypto::sign::{KeyError, SigningKey};
use portcullis_core::hmac::compat;
use portcullis_core::hmac::http_sig::{self, DigestAlgorithm, HttpSigError};
use portcullis_core::hmac::native::{self, Layout, NativeError};
use portcullis_core::hmac::sigv4::{self, PathRule, SigV4Error};
use portcullis_core::jose;
use zeroize::Zeroizing;

/// The RFC 9421 algorithms, for [`Credential::private_key`].
pub use portcullis_core::hmac::http_sig::Algorithm;
pub use portcullis_core::Timestamp;

#[cfg(feature = "reqwest")]
pub mod reqwest;

/// The SigV4 region the default `/sigv4/echo` route of `portcullis serve` expects.
pub const SIGV4_DEFAULT_REGION: &str = "us-east-1";
/// The SigV4 service the default `/sigv4/echo` route of `portcullis serve` expects.
pub const SIGV4_DEFAULT_SERVICE: &str = "execute-api";
/// The label of the RFC 9421 signature this crate makes.
pub const HTTP_SIG_LABEL: &str = "sig1";
/// The longest key id accepted (the server reads no longer one).
pub const MAX_KEY_ID_LEN: usize = 128;

/// Why a request could not be signed. Never carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The credential's key id is empty, longer than [`MAX_KEY_ID_LEN`] or not visible
    /// ASCII.
    #[error("the key id must be 1 to 128 visible ASCII characters")]
    BadKeyId,
    /// A nonce is not 16 to 128 characters of `[A-Za-z0-9_-]`.
    #[error("a nonce must be 16 to 128 characters of A-Z a-z 0-9 _ -")]
    BadNonce,
    /// The shared secret is empty.
    #[error("the secret is empty")]
    EmptySecret,
    /// A header the request carries (or that signing makes) is not a valid header value.
    #[error("the header {0} is not a valid header value")]
    HeaderValue(&'static str),
    /// The RFC 9421 scheme refused to sign (a component it cannot resolve, say).
    #[error("RFC 9421: {0}")]
    HttpSig(#[from] HttpSigError),
    /// The URI has neither an authority nor is there a `Host` header, or (RFC 9421) it has
    /// no scheme: the signature covers them, so the URI must be absolute.
    #[error("the request URI must be absolute (scheme://host/path): {0} is missing")]
    IncompleteUri(&'static str),
    /// The native scheme refused to sign (a malformed query escape, say).
    #[error("native hmac: {0}")]
    Native(#[from] NativeError),
    /// The private key is not a PKCS#8 key of the algorithm's type (an RSA key of at least
    /// 2048 bits, a P-256 key, an Ed25519 key).
    #[error("the private key is not a PKCS#8 {alg} key: {source}")]
    PrivateKey {
        /// The algorithm the key was meant for.
        alg: &'static str,
        /// What was wrong with it.
        source: KeyError,
    },
    /// The private key is in a container this crate does not read (`RSA PRIVATE KEY`,
    /// `EC PRIVATE KEY`, an encrypted or OpenSSH key): convert it to unencrypted PKCS#8 with
    /// `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key-pkcs8.pem`.
    #[error(
        "the private key is a `{0}` block: convert it to PKCS#8 with \
         `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pkcs8.pem`"
    )]
    PrivateKeyFormat(String),
    /// The operating system's random number generator failed (no nonce can be made).
    #[error("the random number generator failed: {0}")]
    Random(getrandom::Error),
    /// `reqwest` could not build or send the request.
    #[cfg(feature = "reqwest")]
    #[error("reqwest: {0}")]
    Reqwest(#[from] ::reqwest::Error),
    /// The SigV4 scheme refused to sign.
    #[error("sigv4: {0}")]
    SigV4(#[from] SigV4Error),
    /// Kong's or APISIX's format could not be made.
    #[error(transparent)]
    Gateway(#[from] portcullis_core::hmac::compat::CompatError),
    /// The body is a stream: its bytes, which every scheme signs, are not at hand.
    #[error("the body is a stream; sign a request whose body is in memory")]
    StreamingBody,
    /// The signing time cannot be written as the scheme needs (before the year 0 or after
    /// 9999, or before the epoch where Unix seconds are sent).
    #[error("the signing time is out of range")]
    TimeOutOfRange,
    /// The credential cannot sign with this scheme: a private key signs only
    /// [`Scheme::HttpSignature`].
    #[error("a private-key credential signs only RFC 9421 (http_signature) requests")]
    UnsuitableCredential,
}

/// How a request is signed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Scheme {
    /// RFC 9421 HTTP Message Signatures: `@method`, `@target-uri` and, when the body is not
    /// empty, `content-digest` (RFC 9530, SHA-256) covered; parameters `created`, `keyid`,
    /// `nonce` and `alg`; label [`HTTP_SIG_LABEL`].
    HttpSignature,
    /// Portcullis's own scheme ([`portcullis_core::hmac::native`], layout `native`): the
    /// method, path, canonical query, timestamp, nonce and body hash, HMAC-SHA256.
    Native,
    /// AWS Signature Version 4 in the `Authorization` header, for this credential scope.
    /// Signed headers: `host`, `x-amz-date`, `x-amz-content-sha256` and, when present,
    /// `content-type`.
    SigV4 {
        /// The region, e.g. [`SIGV4_DEFAULT_REGION`].
        region: String,
        /// The service, e.g. [`SIGV4_DEFAULT_SERVICE`].
        service: String,
    },
    /// Kong's or Apache APISIX's `hmac-auth` format ([`portcullis_core::hmac::compat`]), as a
    /// route with `hmac_layout = "kong"` / `"apisix"` takes it: `Date`, a random `X-Nonce`
    /// and, with a body, `Digest` are added and signed with the method and path
    /// (`request-line` / `@request-target`), HMAC-SHA256.
    Gateway(portcullis_core::hmac::compat::Format),
}

impl Scheme {
    /// [`Scheme::SigV4`] for `region` and `service`.
    pub fn sigv4(region: impl Into<String>, service: impl Into<String>) -> Self {
        Self::SigV4 {
            region: region.into(),
            service: service.into(),
        }
    }
}

/// What signs: a key id with a shared secret (every scheme) or with a private key (RFC 9421
/// only). `Debug` shows the key id and the kind of key, never the key.
pub struct Credential {
    key_id: String,
    key: Key,
}

enum Key {
    Secret(Zeroizing<Vec<u8>>),
    Private(Algorithm, SigningKey),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.key {
            Key::Secret(_) => "<shared secret, redacted>",
            Key::Private(..) => "<private key, redacted>",
        };
        f.debug_struct("Credential")
            .field("key_id", &self.key_id)
            .field("algorithm", &self.algorithm().name())
            .field("key", &key)
            .finish()
    }
}

impl Credential {
    /// A shared-secret credential, as `portcullis hmac create` prints it: the key id and the
    /// secret text (its bytes are the HMAC key for every scheme).
    pub fn hmac(key_id: impl Into<String>, secret: impl AsRef<[u8]>) -> Result<Self, Error> {
        let key_id = checked_key_id(key_id.into())?;
        let secret = secret.as_ref();
        if secret.is_empty() {
            return Err(Error::EmptySecret);
        }
        Ok(Self {
            key_id,
            key: Key::Secret(Zeroizing::new(secret.to_vec())),
        })
    }

    /// A private-key credential for RFC 9421 algorithm `alg` (not `hmac-sha256`): an
    /// unencrypted PKCS#8 key, as a PEM `-----BEGIN PRIVATE KEY-----` block or DER. The key
    /// must be of the algorithm's type: Ed25519 for `ed25519`, P-256 for
    /// `ecdsa-p256-sha256`, RSA (2048 bits or more) for `rsa-pss-sha512` and
    /// `rsa-v1_5-sha256`.
    pub fn private_key(
        key_id: impl Into<String>,
        alg: Algorithm,
        pem_or_der: &[u8],
    ) -> Result<Self, Error> {
        let der = match crypto::sign::pem_decode(pem_or_der) {
            Some((label, der)) if label == "PRIVATE KEY" => Zeroizing::new(der),
            Some((label, _)) => return Err(Error::PrivateKeyFormat(label)),
            None if pem_or_der.trim_ascii_start().starts_with(b"-----") => {
                return Err(Error::PrivateKeyFormat("unreadable PEM".to_owned()))
            }
            None => Zeroizing::new(pem_or_der.to_vec()),
        };
        let jose = jose_alg(alg).ok_or(Error::PrivateKey {
            alg: alg.name(),
            source: KeyError::Malformed,
        })?;
        let key = SigningKey::from_pkcs8(jose, &der).map_err(|source| Error::PrivateKey {
            alg: alg.name(),
            source,
        })?;
        Self::signing_key(key_id, alg, key)
    }

    /// A private-key credential from a key already parsed (say, just generated).
    pub fn signing_key(
        key_id: impl Into<String>,
        alg: Algorithm,
        key: SigningKey,
    ) -> Result<Self, Error> {
        let key_id = checked_key_id(key_id.into())?;
        // The key must suit the algorithm (a P-256 key cannot sign ed25519): find out now
        // rather than at the first request.
        http_sig::VerifyingKey::from_signing_key(alg, &key).map_err(|source| {
            Error::PrivateKey {
                alg: alg.name(),
                source,
            }
        })?;
        Ok(Self {
            key_id,
            key: Key::Private(alg, key),
        })
    }

    /// The key id (`X-API-Key`, the SigV4 access key id, the RFC 9421 `keyid`).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The RFC 9421 algorithm this credential signs with (`hmac-sha256` for a shared
    /// secret).
    pub fn algorithm(&self) -> Algorithm {
        match &self.key {
            Key::Secret(_) => Algorithm::HmacSha256,
            Key::Private(alg, _) => *alg,
        }
    }

    /// The key that verifies this credential's RFC 9421 signatures (tests, self-checks).
    pub fn verifying_key(&self) -> Result<http_sig::VerifyingKey, KeyError> {
        match &self.key {
            Key::Secret(s) => http_sig::VerifyingKey::hmac_sha256(s),
            Key::Private(alg, key) => http_sig::VerifyingKey::from_signing_key(*alg, key),
        }
    }

    fn secret(&self) -> Result<&[u8], Error> {
        match &self.key {
            Key::Secret(s) => Ok(s),
            Key::Private(..) => Err(Error::UnsuitableCredential),
        }
    }
}

/// A single-use value the server remembers for the signature window, so that a captured
/// request cannot be sent again: 16 to 128 characters of `[A-Za-z0-9_-]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Nonce(String);

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", self.0)
    }
}

impl Nonce {
    /// A fresh nonce: 128 bits from the operating system's generator, 32 hex digits.
    pub fn random() -> Result<Self, Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(Error::Random)?;
        Ok(Self(crypto::hex(&bytes)))
    }

    /// A nonce of your own (it must never be used twice with one key id).
    pub fn new(text: impl Into<String>) -> Result<Self, Error> {
        let text = text.into();
        let ok = (16..=128).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(text))
        } else {
            Err(Error::BadNonce)
        }
    }

    /// The nonce text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A request about to be sent, borrowed: what [`sign_parts`] signs. The URI is the one the
/// HTTP client will send to (absolute for SigV4 and RFC 9421, unless `headers` holds `Host`),
/// the headers those it will send, the body its exact bytes.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI, `scheme://authority/path?query`.
    pub uri: &'a Uri,
    /// The headers set so far (a `Host` here is the authority signed).
    pub headers: &'a HeaderMap,
    /// The body bytes (empty when there is none).
    pub body: &'a [u8],
}

/// The headers that sign `request` under `scheme`, with a fresh [`Nonce`]: add them (replacing
/// any of the same name) and send the request unchanged. `now` is the signing time, usually
/// [`now()`].
pub fn sign<B: AsRef<[u8]>>(
    scheme: &Scheme,
    credential: &Credential,
    request: &http::Request<B>,
    now: Timestamp,
) -> Result<Vec<(HeaderName, HeaderValue)>, Error> {
    let out = Outgoing {
        method: request.method(),
        uri: request.uri(),
        headers: request.headers(),
        body: request.body().as_ref(),
    };
    sign_parts(scheme, credential, &out, now, &Nonce::random()?)
}

/// Signs `request` in place: [`sign`], then the headers inserted (replacing any of the same
/// name).
pub fn sign_request<B: AsRef<[u8]>>(
    scheme: &Scheme,
    credential: &Credential,
    request: &mut http::Request<B>,
    now: Timestamp,
) -> Result<(), Error> {
    for (name, value) in sign(scheme, credential, request, now)? {
        request.headers_mut().insert(name, value);
    }
    Ok(())
}

/// The headers that sign `request` under `scheme` at `now` with `nonce` (used by the native
/// scheme and RFC 9421; SigV4 has none). [`sign`] is this with [`Nonce::random`].
pub fn sign_parts(
    scheme: &Scheme,
    credential: &Credential,
    request: &Outgoing<'_>,
    now: Timestamp,
    nonce: &Nonce,
) -> Result<Vec<(HeaderName, HeaderValue)>, Error> {
    match scheme {
        Scheme::HttpSignature => sign_http_sig(credential, request, now, nonce),
        Scheme::Native => sign_native(credential, request, now, nonce),
        Scheme::SigV4 { region, service } => sign_sigv4(credential, request, now, region, service),
        Scheme::Gateway(format) => sign_gateway(*format, credential, request, now, nonce),
    }
}

fn sign_gateway(
    format: compat::Format,
    credential: &Credential,
    req: &Outgoing<'_>,
    now: Timestamp,
    nonce: &Nonce,
) -> Result<Vec<(HeaderName, HeaderValue)>, Error> {
    let date = now.to_http_date().ok_or(Error::TimeOutOfRange)?;
    let mut headers = req.headers.clone();
    let mut out = vec![
        header("date", &date)?,
        header(compat::NONCE_HEADER, nonce.as_str())?,
    ];
    let target = match format {
        compat::Format::Kong => "request-line",
        compat::Format::Apisix => "@request-target",
    };
    let mut names = vec![target, "date", compat::NONCE_HEADER];
    if !req.body.is_empty() {
        out.push(header("digest", &compat::digest(req.body))?);
        names.push("digest");
    }
    for (name, value) in &out {
        headers.insert(name.clone(), value.clone());
    }
    let r = compat::Request {
        method: req.method,
        path: req.uri.path(),
        query: req.uri.query(),
        headers: &headers,
        body: req.body,
    };
    let auth = compat::authorization(
        format,
        portcullis_core::crypto::sign::HmacAlg::Sha256,
        &credential.key_id,
        credential.secret()?,
        &names,
        &r,
    )?;
    out.push(header("authorization", &auth)?);
    Ok(out)
}

/// The wall clock, as the [`Timestamp`] to sign with.
#[allow(clippy::disallowed_methods)]
pub fn now() -> Timestamp {
    // The workspace reads the wall clock in one place, `portcullis_domain::Clock`, so that the
    // server's decisions can be tested at any instant. A client cannot go through it: it must
    // not pull in the server's domain and storage crates to sign a request, and the time is
    // the very thing it signs (the server compares it with its own clock). So this crate
    // reads the clock itself, here only; every function that signs still takes `now`.
    let t = std::time::SystemTime::now();
    let millis = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => Timestamp::from_millis(millis(d)),
        Err(e) => Timestamp::from_millis(-millis(e.duration())),
    }
}

fn sign_native(
    credential: &Credential,
    req: &Outgoing<'_>,
    now: Timestamp,
    nonce: &Nonce,
) -> Result<Vec<(HeaderName, HeaderValue)>, Error> {
    let secs = now.as_secs();
    if secs < 0 {
        return Err(Error::TimeOutOfRange);
    }
    let r = native::Request {
        method: req.method,
        path: req.uri.path(),
        query: req.uri.query(),
        body: req.body,
    };
    let mut out = native::sign(
        Layout::Native,
        &r,
        &credential.key_id,
        credential.secret()?,
        &secs.to_string(),
        Some(nonce.as_str()),
    )?
    .into_iter()
    .map(|(name, value)| header(name, &value))
    .collect::<Result<Vec<_>, _>>()?;
    if !req.body.is_empty() {
        let hash = crypto::hex(&crypto::sha256(req.body));
        out.push(header(native::BODY_HASH, &hash)?);
    }
    Ok(out)
}

fn sign_sigv4(
    credential: &Credential,
    req: &Outgoing<'_>,
    now: Timestamp,
    region: &str,
    service: &str,
) -> Result<Vec<(HeaderName, HeaderValue)>, Error> {
    let secret = credential.secret()?;
    let amz_date = amz_date(now)?;
    let mut headers = req.headers.clone();
    if !headers.contains_key(HOST) {
        let host = authority(req)?;
        headers.insert(HOST, header_value(&host, "host")?);
    }
    let mut signed = vec!["host"];
    if headers.contains_key(CONTENT_TYPE) {
        signed.push("content-type");
    }
    let r = sigv4::Request {
        method: req.method,
        path: req.uri.path(),
        query: req.uri.query(),
        headers: &headers,
        body: req.body,
    };
    let signer = sigv4::Signer {
        access_key_id: &credential.key_id,
        secret,
        region,
        service,
        amz_date: &amz_date,
        session_token: None,
        content_sha256: true,
        path_rule: PathRule::ByService,
    };
    sigv4::sign_headers(&r, &signer, &signed)?
        .into_iter()
        .map(|(name, value)| {
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| Error::HeaderValue("name"))?;
            let value = HeaderValue::from_str(&value).map_err(|_| Error::HeaderValue("sigv4"))?;
            Ok((name, value))
        })
        .collect()
}

fn sign_http_sig(
    credential: &Credential,
    req: &Outgoing<'_>,
    now: Timestamp,
    nonce: &Nonce,
) -> Result<Vec<(HeaderName, HeaderValue)>, Error> {
    let scheme = req.uri.scheme_str().ok_or(Error::IncompleteUri("scheme"))?;
    let authority = authority(req)?;
    let mut headers = req.headers.clone();
    let mut out = Vec::with_capacity(3);
    let mut components = vec!["@method", "@target-uri"];
    if !req.body.is_empty() {
        let digest = http_sig::content_digest(req.body, &[DigestAlgorithm::Sha256]);
        let digest = header(http_sig::CONTENT_DIGEST, &digest)?;
        headers.insert(digest.0.clone(), digest.1.clone());
        out.push(digest);
        components.push(http_sig::CONTENT_DIGEST);
    }
    let r = http_sig::Request {
        method: req.method,
        scheme,
        authority: &authority,
        path: req.uri.path(),
        query: req.uri.query(),
        headers: &headers,
        body: Some(req.body),
    };
    let params = http_sig::SignParams {
        created: Some(Timestamp::from_secs(now.as_secs())),
        expires: None,
        keyid: Some(&credential.key_id),
        nonce: Some(nonce.as_str()),
        include_alg: true,
        tag: None,
    };
    let signer = match &credential.key {
        Key::Secret(s) => http_sig::Signer::HmacSha256(s),
        Key::Private(alg, key) => http_sig::Signer::Key(*alg, key),
    };
    let (input, signature) = http_sig::sign(&r, &components, &params, HTTP_SIG_LABEL, &signer)?;
    out.push(header(http_sig::SIGNATURE_INPUT, &input)?);
    out.push(header(http_sig::SIGNATURE, &signature)?);
    Ok(out)
}

/// The authority the HTTP client will send as `Host`: the request's `Host` header when it
/// has one, else the URI's host with its port unless that is the scheme's default (what
/// hyper, reqwest and curl send).
fn authority(req: &Outgoing<'_>) -> Result<String, Error> {
    if let Some(h) = req.headers.get(HOST) {
        return h
            .to_str()
            .map(str::to_owned)
            .map_err(|_| Error::HeaderValue("host"));
    }
    let host = req.uri.host().ok_or(Error::IncompleteUri("host"))?;
    let default_port = match req.uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    Ok(match req.uri.port_u16() {
        Some(p) if Some(p) != default_port => format!("{host}:{p}"),
        _ => host.to_owned(),
    })
}

/// `YYYYMMDDTHHMMSSZ` (UTC).
fn amz_date(now: Timestamp) -> Result<String, Error> {
    sigv4::amz_date(now).ok_or(Error::TimeOutOfRange)
}

fn checked_key_id(key_id: String) -> Result<String, Error> {
    let ok = !key_id.is_empty()
        && key_id.len() <= MAX_KEY_ID_LEN
        && key_id.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(key_id).ok_or(Error::BadKeyId)
}

/// The JOSE algorithm a PKCS#8 key is parsed for, to sign with RFC 9421's `alg`.
fn jose_alg(alg: Algorithm) -> Option<jose::Algorithm> {
    match alg {
        Algorithm::HmacSha256 => None,
        Algorithm::Ed25519 => Some(jose::Algorithm::EdDsa),
        Algorithm::EcdsaP256Sha256 => Some(jose::Algorithm::Es256),
        Algorithm::RsaPssSha512 => Some(jose::Algorithm::Ps256),
        Algorithm::RsaV15Sha256 => Some(jose::Algorithm::Rs256),
    }
}

fn header_value(value: &str, what: &'static str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(value).map_err(|_| Error::HeaderValue(what))
}

fn header(name: &'static str, value: &str) -> Result<(HeaderName, HeaderValue), Error> {
    Ok((HeaderName::from_static(name), header_value(value, name)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_core::hmac::http_sig::{Policy, VerifyingKey};

    const SECRET: &str = "hs_0123456789abcdef0123456789abcdef0123456789";
    const NOW: i64 = 1_714_000_000;

    fn now() -> Timestamp {
        Timestamp::from_secs(NOW)
    }

    fn cred() -> Credential {
        Credential::hmac("hk_partner", SECRET).unwrap()
    }

    fn request(uri: &str, body: &[u8]) -> http::Request<Vec<u8>> {
        http::Request::post(uri)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .unwrap()
    }

    /// The request as the server receives it: the headers sent plus `Host`.
    fn received(req: &http::Request<Vec<u8>>, signed: &[(HeaderName, HeaderValue)]) -> HeaderMap {
        let mut h = req.headers().clone();
        if !h.contains_key(HOST) {
            let out = Outgoing {
                method: req.method(),
                uri: req.uri(),
                headers: req.headers(),
                body: req.body(),
            };
            h.insert(HOST, authority(&out).unwrap().parse().unwrap());
        }
        for (n, v) in signed {
            h.insert(n.clone(), v.clone());
        }
        h
    }

    fn verify_native(
        headers: &HeaderMap,
        method: &Method,
        uri: &Uri,
        body: &[u8],
    ) -> Result<(), NativeError> {
        let signed = native::parse(headers, Layout::Native)?.unwrap();
        let r = native::Request {
            method,
            path: uri.path(),
            query: uri.query(),
            body,
        };
        let expect = native::Expect {
            window_secs: 300,
            now: now(),
        };
        native::verify(&signed, &r, &[SECRET.as_bytes()], &expect).map(|_| ())
    }

    #[test]
    fn native_signatures_verify_and_any_changed_byte_fails() {
        let body = br#"{"amount":100}"#;
        let req = request("http://127.0.0.1:8080/hmac/echo/orders?b=2&a=x%20y", body);
        let signed = sign(&Scheme::Native, &cred(), &req, now()).unwrap();
        let h = received(&req, &signed);
        assert_eq!(h["x-api-key"], "hk_partner");
        assert_eq!(h["x-timestamp"], NOW.to_string().as_str());
        assert_eq!(h["x-nonce"].len(), 32);
        assert_eq!(
            h["x-body-hash"],
            crypto::hex(&crypto::sha256(body)).as_str()
        );
        let (m, u) = (req.method(), req.uri());
        verify_native(&h, m, u, body).unwrap();

        let mut other = body.to_vec();
        other[3] ^= 1;
        assert_eq!(
            verify_native(&h, m, u, &other),
            Err(NativeError::BodyHashMismatch)
        );
        let mut no_hash = h.clone();
        no_hash.remove("x-body-hash");
        assert_eq!(
            verify_native(&no_hash, m, u, &other),
            Err(NativeError::BadSignature)
        );
        let moved: Uri = "http://127.0.0.1:8080/hmac/echo/orderz?b=2&a=x%20y"
            .parse()
            .unwrap();
        assert_eq!(
            verify_native(&h, m, &moved, body),
            Err(NativeError::BadSignature)
        );
        let query: Uri = "http://127.0.0.1:8080/hmac/echo/orders?b=3&a=x%20y"
            .parse()
            .unwrap();
        assert_eq!(
            verify_native(&h, m, &query, body),
            Err(NativeError::BadSignature)
        );
        assert_eq!(
            verify_native(&h, &Method::PUT, u, body),
            Err(NativeError::BadSignature)
        );

        // No body: no X-Body-Hash, and two signatures never share a nonce.
        let get = http::Request::get("http://h/hmac/echo")
            .body(Vec::new())
            .unwrap();
        let a = received(&get, &sign(&Scheme::Native, &cred(), &get, now()).unwrap());
        let b = received(&get, &sign(&Scheme::Native, &cred(), &get, now()).unwrap());
        assert!(!a.contains_key("x-body-hash"));
        assert_ne!(a["x-nonce"], b["x-nonce"]);
        verify_native(&a, get.method(), get.uri(), b"").unwrap();
    }

    fn verify_sigv4(headers: &HeaderMap, uri: &Uri, body: &[u8]) -> Result<(), SigV4Error> {
        let r = sigv4::Request {
            method: &Method::POST,
            path: uri.path(),
            query: uri.query(),
            headers,
            body,
        };
        let p = sigv4::parse(&r)?.unwrap();
        assert_eq!(p.access_key_id(), "hk_partner");
        let e = sigv4::Expect {
            region: SIGV4_DEFAULT_REGION,
            service: SIGV4_DEFAULT_SERVICE,
            window_secs: 300,
            allow_unsigned_payload: false,
            path_rule: PathRule::ByService,
            now: now(),
        };
        sigv4::verify(&p, &r, SECRET.as_bytes(), &e).map(|_| ())
    }

    #[test]
    fn sigv4_signatures_verify_and_any_changed_byte_fails() {
        let scheme = Scheme::sigv4(SIGV4_DEFAULT_REGION, SIGV4_DEFAULT_SERVICE);
        let body = b"Action=ListUsers&Version=2010-05-08";
        let req = request("http://127.0.0.1:8080/sigv4/echo/users?z=1&a=2", body);
        let signed = sign(&scheme, &cred(), &req, now()).unwrap();
        let names: Vec<&str> = signed.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["x-amz-date", "x-amz-content-sha256", "authorization"]
        );
        let h = received(&req, &signed);
        assert_eq!(h["host"], "127.0.0.1:8080");
        let auth = h["authorization"].to_str().unwrap();
        assert!(
            auth.contains("/us-east-1/execute-api/aws4_request")
                && auth.contains("SignedHeaders=content-type;host;x-amz-content-sha256;x-amz-date"),
            "{auth}"
        );
        verify_sigv4(&h, req.uri(), body).unwrap();

        let mut other = body.to_vec();
        other[0] ^= 1;
        assert_eq!(
            verify_sigv4(&h, req.uri(), &other),
            Err(SigV4Error::BodyHashMismatch)
        );
        let mut typed = h.clone();
        typed.insert(CONTENT_TYPE, "text/plain".parse().unwrap());
        assert_eq!(
            verify_sigv4(&typed, req.uri(), body),
            Err(SigV4Error::BadSignature)
        );
        let mut hosted = h.clone();
        hosted.insert(HOST, "127.0.0.1:8081".parse().unwrap());
        assert_eq!(
            verify_sigv4(&hosted, req.uri(), body),
            Err(SigV4Error::BadSignature)
        );
        let query: Uri = "http://127.0.0.1:8080/sigv4/echo/users?z=1&a=3"
            .parse()
            .unwrap();
        assert_eq!(
            verify_sigv4(&h, &query, body),
            Err(SigV4Error::BadSignature)
        );
        // Another region's endpoint refuses the scope.
        let wrong = Scheme::sigv4("eu-west-1", SIGV4_DEFAULT_SERVICE);
        let h = received(&req, &sign(&wrong, &cred(), &req, now()).unwrap());
        assert_eq!(
            verify_sigv4(&h, req.uri(), body),
            Err(SigV4Error::WrongScope)
        );
    }

    fn verify_http_sig(
        headers: &HeaderMap,
        key: &VerifyingKey,
        uri: &Uri,
        body: &[u8],
    ) -> Result<(), HttpSigError> {
        let sigs = http_sig::parse(headers)?.unwrap();
        let r = http_sig::Request {
            method: &Method::POST,
            scheme: uri.scheme_str().unwrap(),
            authority: headers[HOST].to_str().unwrap(),
            path: uri.path(),
            query: uri.query(),
            headers,
            body: Some(body),
        };
        let policy = Policy::default();
        let (sig, key) = http_sig::select(&sigs, &r, &policy, now(), |kid| {
            (kid == "hk_partner").then_some(key)
        })?;
        assert_eq!(sig.label(), HTTP_SIG_LABEL);
        assert_eq!(sig.nonce().map(str::len), Some(32));
        assert_eq!(sig.created(), Some(now()));
        assert_eq!(sig.alg(), Some(key.algorithm().name()));
        let covered: Vec<&str> = sig.covered().collect();
        let expected: &[&str] = if body.is_empty() {
            &["@method", "@target-uri"]
        } else {
            &["@method", "@target-uri", "content-digest"]
        };
        assert_eq!(covered, expected);
        http_sig::verify(sig, &r, key, &policy, now()).map(|_| ())
    }

    fn check_http_sig(credential: &Credential) {
        let key = credential.verifying_key().unwrap();
        let body = br#"{"amount":100}"#;
        let req = request("http://127.0.0.1:8080/httpsig/echo/orders?b=2&a=1", body);
        let signed = sign(&Scheme::HttpSignature, credential, &req, now()).unwrap();
        let h = received(&req, &signed);
        assert_eq!(
            h["content-digest"],
            http_sig::content_digest(body, &[DigestAlgorithm::Sha256]).as_str()
        );
        verify_http_sig(&h, &key, req.uri(), body).unwrap();

        let mut other = body.to_vec();
        other[5] ^= 1;
        assert_eq!(
            verify_http_sig(&h, &key, req.uri(), &other),
            Err(HttpSigError::BodyHashMismatch)
        );
        let moved: Uri = "http://127.0.0.1:8080/httpsig/echo/orders?b=2&a=2"
            .parse()
            .unwrap();
        assert_eq!(
            verify_http_sig(&h, &key, &moved, body),
            Err(HttpSigError::BadSignature)
        );
        let mut digest = h.clone();
        digest.insert(
            "content-digest",
            http_sig::content_digest(&other, &[DigestAlgorithm::Sha256])
                .parse()
                .unwrap(),
        );
        assert_eq!(
            verify_http_sig(&digest, &key, req.uri(), &other),
            Err(HttpSigError::BadSignature)
        );

        let get = http::Request::get("https://api.example.com/httpsig/echo")
            .body(Vec::new())
            .unwrap();
        let h = received(
            &get,
            &sign(&Scheme::HttpSignature, credential, &get, now()).unwrap(),
        );
        assert!(!h.contains_key("content-digest"));
        assert_eq!(h["host"], "api.example.com");
        let sigs = http_sig::parse(&h).unwrap().unwrap();
        let r = http_sig::Request {
            method: &Method::GET,
            scheme: "https",
            authority: "api.example.com",
            path: "/httpsig/echo",
            query: None,
            headers: &h,
            body: Some(b""),
        };
        http_sig::verify(&sigs[0], &r, &key, &Policy::default(), now()).unwrap();
        let wrong_method = http_sig::Request {
            method: &Method::DELETE,
            ..r
        };
        assert_eq!(
            http_sig::verify(&sigs[0], &wrong_method, &key, &Policy::default(), now()).map(|_| ()),
            Err(HttpSigError::BadSignature)
        );
    }

    #[test]
    fn http_signatures_verify_and_any_changed_byte_fails_with_a_shared_secret() {
        check_http_sig(&cred());
    }

    #[test]
    fn http_signatures_verify_with_each_kind_of_private_key() {
        for (alg, jose) in [
            (Algorithm::Ed25519, jose::Algorithm::EdDsa),
            (Algorithm::EcdsaP256Sha256, jose::Algorithm::Es256),
            (Algorithm::RsaPssSha512, jose::Algorithm::Ps256),
            (Algorithm::RsaV15Sha256, jose::Algorithm::Rs256),
        ] {
            let generated = SigningKey::generate(jose).unwrap();
            let c = Credential::private_key("hk_partner", alg, generated.pkcs8()).unwrap();
            assert_eq!(c.algorithm(), alg);
            check_http_sig(&c);
            // A private key signs RFC 9421 only.
            let req = request("http://h/x", b"");
            assert!(matches!(
                sign(&Scheme::Native, &c, &req, now()),
                Err(Error::UnsuitableCredential)
            ));
        }
    }

    /// `openssl genpkey -algorithm ed25519`.
    const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJNynvMdr8R7/Moso0L0DUx0kC2jF/ewxm4ubsnmi+R1
-----END PRIVATE KEY-----
";

    #[test]
    fn private_keys_are_read_from_pkcs8_pem_and_mismatches_are_refused() {
        let c = Credential::private_key("k1", Algorithm::Ed25519, ED25519_PEM.as_bytes()).unwrap();
        check_http_sig(
            &Credential::private_key("hk_partner", Algorithm::Ed25519, ED25519_PEM.as_bytes())
                .unwrap(),
        );
        assert_eq!(c.key_id(), "k1");
        assert!(matches!(
            Credential::private_key("k1", Algorithm::EcdsaP256Sha256, ED25519_PEM.as_bytes()),
            Err(Error::PrivateKey { .. })
        ));
        assert!(matches!(
            Credential::private_key("k1", Algorithm::HmacSha256, ED25519_PEM.as_bytes()),
            Err(Error::PrivateKey { .. })
        ));
        let pkcs1 = ED25519_PEM.replace("PRIVATE KEY", "RSA PRIVATE KEY");
        match Credential::private_key("k1", Algorithm::RsaPssSha512, pkcs1.as_bytes()) {
            Err(e @ Error::PrivateKeyFormat(_)) => {
                assert!(e.to_string().contains("openssl pkcs8 -topk8"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Credential::private_key("k1", Algorithm::Ed25519, b"-----BEGIN garbage"),
            Err(Error::PrivateKeyFormat(_))
        ));
        assert!(Credential::private_key("k1", Algorithm::Ed25519, b"not a key").is_err());
    }

    #[test]
    fn kong_and_apisix_signatures_verify_with_every_safeguard_met() {
        for format in [compat::Format::Kong, compat::Format::Apisix] {
            for body in [&b""[..], br#"{"amount":1}"#] {
                let req = request("http://127.0.0.1:8080/kong/orders?a=1", body);
                let signed = sign(&Scheme::Gateway(format), &cred(), &req, now()).unwrap();
                let h = received(&req, &signed);
                let s = compat::parse(format, &h).unwrap().unwrap();
                let r = compat::Request {
                    method: req.method(),
                    path: req.uri().path(),
                    query: req.uri().query(),
                    headers: &h,
                    body,
                };
                let expect = compat::Expect {
                    window_secs: 300,
                    allow_unsigned_body: false,
                    now: now(),
                };
                compat::verify(&s, &r, &[SECRET.as_bytes()], &expect).unwrap();
                assert!(s.replay_key(&h).1, "the nonce is signed");
                let other = compat::Request {
                    query: Some("a=2"),
                    ..r
                };
                assert!(compat::verify(&s, &other, &[SECRET.as_bytes()], &expect).is_err());
            }
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let shown = format!("{:?}", cred());
        assert!(shown.contains("hk_partner"), "{shown}");
        assert!(
            !shown.contains(SECRET) && !shown.contains("0123456789abcdef"),
            "{shown}"
        );
        let key =
            Credential::private_key("k1", Algorithm::Ed25519, ED25519_PEM.as_bytes()).unwrap();
        let shown = format!("{key:?}");
        assert!(
            shown.contains("ed25519") && shown.contains("redacted"),
            "{shown}"
        );
        let err = Credential::private_key("k1", Algorithm::EcdsaP256Sha256, ED25519_PEM.as_bytes())
            .unwrap_err();
        assert!(!format!("{err:?} {err}").contains("MC4CAQAw"));
    }

    #[test]
    fn credentials_and_nonces_are_checked() {
        assert!(matches!(Credential::hmac("", SECRET), Err(Error::BadKeyId)));
        assert!(matches!(
            Credential::hmac("a b", SECRET),
            Err(Error::BadKeyId)
        ));
        assert!(matches!(
            Credential::hmac("k".repeat(129), SECRET),
            Err(Error::BadKeyId)
        ));
        assert!(matches!(Credential::hmac("k", ""), Err(Error::EmptySecret)));
        assert!(Nonce::new("0123456789abcdef").is_ok());
        assert!(Nonce::new("0123456789abcde").is_err());
        assert!(Nonce::new("0123456789abcdef!").is_err());
        assert!(Nonce::new("x".repeat(129)).is_err());
        let n = Nonce::random().unwrap();
        assert!(Nonce::new(n.as_str()).is_ok());
    }

    #[test]
    fn a_fixed_nonce_gives_a_reproducible_signature() {
        let req = request("http://h/hmac/echo", b"x");
        let out = Outgoing {
            method: req.method(),
            uri: req.uri(),
            headers: req.headers(),
            body: req.body(),
        };
        let nonce = Nonce::new("nonce_0000000000001").unwrap();
        let a = sign_parts(&Scheme::Native, &cred(), &out, now(), &nonce).unwrap();
        let b = sign_parts(&Scheme::Native, &cred(), &out, now(), &nonce).unwrap();
        assert_eq!(a, b);
        let expected = native::sign(
            Layout::Native,
            &native::Request {
                method: &Method::POST,
                path: "/hmac/echo",
                query: None,
                body: b"x",
            },
            "hk_partner",
            SECRET.as_bytes(),
            &NOW.to_string(),
            Some("nonce_0000000000001"),
        )
        .unwrap();
        let sig = expected
            .iter()
            .find(|(n, _)| *n == native::SIGNATURE)
            .unwrap();
        assert!(a
            .iter()
            .any(|(n, v)| n == native::SIGNATURE && v == sig.1.as_str()));
    }

    #[test]
    fn the_authority_is_what_http_clients_send_as_host() {
        let cases = [
            ("http://h:80/", "h"),
            ("http://h:8080/", "h:8080"),
            ("https://h:443/", "h"),
            ("https://h:80/", "h:80"),
            ("http://[::1]:9000/x", "[::1]:9000"),
        ];
        for (uri, host) in cases {
            let uri: Uri = uri.parse().unwrap();
            let out = Outgoing {
                method: &Method::GET,
                uri: &uri,
                headers: &HeaderMap::new(),
                body: b"",
            };
            assert_eq!(authority(&out).unwrap(), host, "{uri}");
        }
        let uri: Uri = "/relative".parse().unwrap();
        let mut headers = HeaderMap::new();
        let out = Outgoing {
            method: &Method::GET,
            uri: &uri,
            headers: &headers,
            body: b"",
        };
        assert!(matches!(authority(&out), Err(Error::IncompleteUri("host"))));
        headers.insert(HOST, "given.example".parse().unwrap());
        let out = Outgoing {
            method: &Method::GET,
            uri: &uri,
            headers: &headers,
            body: b"",
        };
        assert_eq!(authority(&out).unwrap(), "given.example");
        // SigV4 can sign a relative URI with a Host header; RFC 9421 needs the scheme.
        let nonce = Nonce::random().unwrap();
        assert!(sign_parts(&Scheme::sigv4("r", "s"), &cred(), &out, now(), &nonce).is_ok());
        assert!(matches!(
            sign_parts(&Scheme::HttpSignature, &cred(), &out, now(), &nonce),
            Err(Error::IncompleteUri("scheme"))
        ));
    }

    #[test]
    fn amz_dates_are_iso_8601_basic_utc() {
        // The AWS SigV4 test suite's date.
        assert_eq!(
            amz_date(Timestamp::from_secs(1_440_938_160)).unwrap(),
            "20150830T123600Z"
        );
        assert_eq!(amz_date(Timestamp::EPOCH).unwrap(), "19700101T000000Z");
        assert!(amz_date(Timestamp::from_secs(-62_200_000_000)).is_err());
        assert!(amz_date(Timestamp::from_secs(300_000_000_000)).is_err());
    }

    #[test]
    fn the_clock_is_read() {
        // After 2024 and before 2100.
        let t = super::now().as_secs();
        assert!((1_700_000_000..4_102_444_800).contains(&t), "{t}");
    }
}
