//! Authenticators: one per scheme, each `parse → look up → verify` over the core and the store.
//!
//! `Ok(None)` means "this request carries no credential of my scheme" (Oathkeeper's
//! *not responsible*), so an `any` policy tries the next scheme. `Err` means a credential of
//! this scheme was presented and refused.

pub mod api_key;
pub mod hmac;
pub mod http_sig;
pub mod issuers;
pub mod jwt;
pub mod sigv4;

use std::sync::Arc;

use async_trait::async_trait;
use portcullis_core::ratelimit::Limit;
use portcullis_core::{AuthError, Identity, RequestParts, Scheme, Timestamp};

/// Per-route options the authenticators read.
#[derive(Debug, Clone, Default)]
pub struct RouteAuth {
    /// Query parameter that may carry an API key on this route (discouraged; off by default).
    pub api_key_query_param: Option<String>,
    /// The token issuers the `jwt` scheme trusts on this route, by name (`portcullis` for
    /// Portcullis's own); `None`: Portcullis's own only.
    pub jwt_issuers: Option<Arc<[String]>>,
    /// How the signing schemes (`hmac`, `sigv4`, `http_signature`) read signed requests on
    /// this route.
    pub hmac: HmacRoute,
    /// The `sigv4` scheme's endpoint.
    pub sigv4: SigV4Route,
    /// What the `http_signature` scheme demands.
    pub http_sig: HttpSigRoute,
}

/// The signing schemes' options on a route.
#[derive(Debug, Clone, Copy)]
pub struct HmacRoute {
    /// The `hmac` scheme's wire format: the native headers with their layout (native unless
    /// the route names a legacy one), or another gateway's `hmac-auth` format.
    pub layout: HmacFormat,
    /// Whether a request with a body may leave it unsigned in another gateway's format
    /// (their clients often send `Digest` without signing it).
    pub allow_unsigned_body: bool,
    /// How far the signing time may be from now, either way, in seconds (every scheme).
    pub window_secs: i64,
    /// What a signature without a nonce may be used for.
    pub replay: Replay,
}

impl Default for HmacRoute {
    fn default() -> Self {
        Self {
            layout: HmacFormat::Native(portcullis_core::hmac::native::Layout::Native),
            allow_unsigned_body: false,
            window_secs: 300,
            replay: Replay::Once,
        }
    }
}

/// The `hmac` scheme's wire format on a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacFormat {
    /// `X-API-Key`, `X-Timestamp`, `X-Nonce`, `X-Signature` with this string-to-sign layout.
    Native(portcullis_core::hmac::native::Layout),
    /// Kong's or Apache APISIX's `hmac-auth` `Authorization`.
    Gateway(portcullis_core::hmac::compat::Format),
}

impl HmacFormat {
    /// Every format, as named in configuration (`hmac_layout`).
    pub fn all() -> Vec<HmacFormat> {
        use portcullis_core::hmac::compat::Format;
        let mut v: Vec<HmacFormat> = portcullis_core::hmac::native::Layout::ALL
            .iter()
            .map(|l| HmacFormat::Native(*l))
            .collect();
        v.extend([
            HmacFormat::Gateway(Format::Kong),
            HmacFormat::Gateway(Format::Apisix),
        ]);
        v
    }

    /// The name in configuration.
    pub fn name(self) -> &'static str {
        match self {
            HmacFormat::Native(l) => l.name(),
            HmacFormat::Gateway(f) => f.name(),
        }
    }

    /// The format with this configuration name.
    pub fn from_name(name: &str) -> Option<HmacFormat> {
        Self::all().into_iter().find(|f| f.name() == name)
    }
}

/// How a signed request that carries no nonce (SigV4, an RFC 9421 signature without
/// `nonce`, a legacy layout without one) is kept from being replayed. A nonce, when the
/// scheme has one, is always single-use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Replay {
    /// The signature itself is single-use: the same signed request twice is a replay (two
    /// identical requests in the same second must differ, e.g. by a query parameter).
    #[default]
    Once,
    /// Only the time window bounds replay (AWS's own behaviour): the same signed request is
    /// accepted again until it leaves the window, or a presigned URL until it expires.
    Window,
}

/// The `sigv4` scheme's options on a route: the endpoint's credential scope.
#[derive(Debug, Clone)]
pub struct SigV4Route {
    /// The region the credential scope must name.
    pub region: Arc<str>,
    /// The service the credential scope must name.
    pub service: Arc<str>,
    /// Whether `x-amz-content-sha256: UNSIGNED-PAYLOAD` (a body not covered) is accepted.
    pub allow_unsigned_payload: bool,
}

impl Default for SigV4Route {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            service: "execute-api".into(),
            allow_unsigned_payload: false,
        }
    }
}

/// The `http_signature` scheme's options on a route (beyond the floor every signature must
/// meet: `@method`, the target, `content-digest` with a body, `created` in the window).
#[derive(Debug, Clone, Default)]
pub struct HttpSigRoute {
    /// Components that must be covered besides the floor (`"date"`, `"@authority"`,
    /// `"@query-param";name="id"`).
    pub components: Arc<[String]>,
    /// The `tag` a signature must carry here.
    pub tag: Option<Arc<str>>,
}

/// Limits that come with a credential and override the route's defaults.
#[derive(Debug, Clone, Default)]
pub struct CredentialLimits {
    /// Named rate limits (cell key suffix, limit).
    pub rate_limits: Vec<(Arc<str>, Limit)>,
    /// Usage quota: (limit per window, window length in ms, anchor time).
    pub quota: Option<Quota>,
}

/// A usage quota with periodic refill.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Requests per window.
    pub limit: u64,
    /// Window length in milliseconds.
    pub refill_ms: u64,
    /// Windows are counted from this time (the key's creation).
    pub anchor: Timestamp,
}

impl Quota {
    /// Index of the window containing `now`.
    pub fn window(&self, now: Timestamp) -> i64 {
        let refill = i64::try_from(self.refill_ms.max(1)).unwrap_or(i64::MAX);
        now.millis_since(self.anchor).max(0) / refill
    }

    /// Start of the window after the one containing `now`.
    pub fn next_refill(&self, now: Timestamp) -> Timestamp {
        let refill = i64::try_from(self.refill_ms.max(1)).unwrap_or(i64::MAX);
        self.anchor
            .plus_millis((self.window(now) + 1).saturating_mul(refill))
    }
}

/// A successful authentication: the identity, plus what the credential says about limits.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// Who the caller proved to be.
    pub identity: Identity,
    /// Credential-level limits, if the credential carries any.
    pub limits: Option<Arc<CredentialLimits>>,
    /// Headers that carried the credential (removed before proxying unless configured).
    pub consumed: Consumed,
}

/// Where a credential was found, so the adapter can keep it from the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Consumed {
    /// The API-key header.
    pub api_key_header: bool,
    /// `Authorization` (and the `DPoP` proof that goes with it).
    pub authorization: bool,
    /// The API-key query parameter.
    pub query_param: bool,
}

impl Consumed {
    /// Both sets of places.
    pub fn union(self, o: Consumed) -> Consumed {
        Consumed {
            api_key_header: self.api_key_header || o.api_key_header,
            authorization: self.authorization || o.authorization,
            query_param: self.query_param || o.query_param,
        }
    }
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1), if that is the scheme used;
/// `Err` when the header is repeated (which token would be meant is ambiguous).
pub(crate) fn bearer_token<'r>(req: &RequestParts<'r>) -> Result<Option<&'r str>, ()> {
    let v = req.single_header(&http::header::AUTHORIZATION)?;
    Ok(v.and_then(|v| {
        let (scheme, token) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }))
}

/// One scheme's authenticator.
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// The scheme.
    fn scheme(&self) -> Scheme;

    /// The `WWW-Authenticate` challenge for this scheme.
    fn challenge(&self, route: &RouteAuth) -> String;

    /// Every challenge of this scheme, one per `WWW-Authenticate` field (a scheme that takes
    /// two authorization schemes, `Bearer` and `DPoP`, has two); by default the one.
    fn challenges(&self, route: &RouteAuth) -> Vec<String> {
        vec![self.challenge(route)]
    }

    /// [`Authenticator::authenticate`] without waiting, when everything the decision needs is
    /// in memory (a cached API key); `None`: call `authenticate`. The answer must be the one
    /// `authenticate` would give. The gate calls this first: an `async_trait` call boxes its
    /// future, an allocation per request that the common case does not need.
    fn authenticate_now(
        &self,
        _req: &RequestParts<'_>,
        _route: &RouteAuth,
        _now: Timestamp,
    ) -> Option<Result<Option<Authenticated>, AuthError>> {
        None
    }

    /// Authenticates `req` at `now`. `Ok(None)`: no credential of this scheme is present.
    async fn authenticate(
        &self,
        req: &RequestParts<'_>,
        route: &RouteAuth,
        now: Timestamp,
    ) -> Result<Option<Authenticated>, AuthError>;

    /// The identity this scheme proved earlier, as its credential stands at `now`, for a
    /// connection that outlives its request (a WebSocket): `Ok(None)` once the credential
    /// was revoked, expired or removed. The default knows only the expiry `identity` carries.
    async fn reverify(
        &self,
        identity: &Identity,
        now: Timestamp,
    ) -> Result<Option<Identity>, AuthError> {
        Ok(identity
            .expires_at
            .is_none_or(|e| now < e)
            .then(|| identity.clone()))
    }
}
