//! Typed errors and the **one table** that maps them to what goes on the wire.
//!
//! `Display` texts are for logs and audit. What a caller sees comes only from
//! [`WireError::from`]; descriptions are fixed strings that never echo input and never
//! distinguish cases an attacker could use to guess (unknown and malformed keys look alike).

use crate::api_key;

/// Why authentication or authorisation refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// An API key was presented and refused.
    #[error("api key: {0}")]
    ApiKey(#[from] api_key::Error),
    /// The identity lacks a scope the route requires (RFC 6750 §3.1 `insufficient_scope`).
    #[error("insufficient scope")]
    InsufficientScope,
    /// The request carries no credential the route accepts.
    #[error("missing credentials")]
    MissingCredentials,
    /// The credential's usage quota is spent until it refills.
    #[error("quota exceeded, refills in {retry_after_secs}s")]
    QuotaExceeded {
        /// Seconds until the quota refills.
        retry_after_secs: u64,
    },
    /// Too many requests for this identity (or, for failed attempts, this client address).
    #[error("rate limited, retry in {retry_after_secs}s")]
    RateLimited {
        /// Seconds until a request would be allowed.
        retry_after_secs: u64,
    },
    /// A bearer token was presented and refused (RFC 6750 §3.1 `invalid_token`).
    #[error("token: {0}")]
    Token(TokenError),
    /// A signed request (any [`crate::hmac`] scheme) was refused.
    #[error("signature: {0}")]
    Signature(SignatureError),
    /// A backend needed for the decision could not answer; fail closed.
    #[error("authentication backend unavailable")]
    Unavailable,
}

/// Why a signed request was refused, as the wire tells it (the exact reason is in the
/// audit trail).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Signature headers are missing, or some of them.
    #[error("missing")]
    Missing,
    /// Malformed, or not the request's signature under the credential's secret.
    #[error("invalid")]
    Invalid,
    /// Signed too long ago, or too far in the future (the answer carries the server's time).
    #[error("outside the time window")]
    Expired,
    /// A signed request seen before.
    #[error("replayed")]
    Replayed,
    /// The body is not the one whose hash was sent.
    #[error("body hash mismatch")]
    BodyHashMismatch,
    /// No credential has this key id (or it was revoked).
    #[error("unknown key")]
    UnknownKey,
}

impl SignatureError {
    /// The wire code of a scheme's own error code (`missing_signature` …).
    pub fn from_code(code: &str) -> Self {
        match code {
            "missing_signature" => Self::Missing,
            "signature_expired" => Self::Expired,
            "replayed_request" => Self::Replayed,
            "body_hash_mismatch" => Self::BodyHashMismatch,
            "unknown_key" => Self::UnknownKey,
            _ => Self::Invalid,
        }
    }
}

/// Why a bearer token was refused: expired, or not valid for any other reason (the reasons
/// are in the audit trail, not on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Past its `exp`.
    #[error("expired")]
    Expired,
    /// Malformed, badly signed, from an issuer or for an audience not trusted here, revoked.
    #[error("invalid")]
    Invalid,
    /// In the query string (`access_token=`): refused on every route (RFC 9700 §2.4.1).
    #[error("in the query string")]
    InQuery,
    /// A DPoP-bound token without a valid proof of its key for this request: none, several,
    /// malformed, replayed, for another request or another key (RFC 9449 §7.1). (A bound
    /// token sent as a plain `Bearer`, or an unbound one sent as `DPoP`, is `Invalid`.)
    #[error("DPoP proof refused")]
    DpopProof,
    /// A DPoP proof without the server's current nonce, where nonces are required (RFC 9449
    /// §9): the answer carries one in `DPoP-Nonce` to retry with.
    #[error("DPoP nonce required")]
    DpopNonce,
}

/// Errors of the gateway itself (routing, proxying, sizes), in the same table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The request could not be understood (bad URI, bad header encoding).
    #[error("bad request")]
    BadRequest,
    /// The request body is larger than the configured limit.
    #[error("request body too large")]
    BodyTooLarge,
    /// The request headers are larger than the configured limit.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// A bug or unexpected state; details are in the log under the request id.
    #[error("internal error")]
    Internal,
    /// No route matches the request's host, path and method.
    #[error("no route")]
    NoRoute,
    /// The admin API was called without a valid admin token.
    #[error("admin unauthorized")]
    AdminUnauthorized,
    /// The upstream refused the connection or broke it.
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    /// The upstream did not answer in time.
    #[error("upstream timeout")]
    UpstreamTimeout,
    /// The request uses a transfer coding other than `chunked`.
    #[error("not implemented")]
    NotImplemented,
    /// The request is not HTTP/1.0 or HTTP/1.1.
    #[error("HTTP version not supported")]
    VersionNotSupported,
    /// A CORS preflight asked for an origin, method or header the route does not allow.
    #[error("CORS preflight not allowed")]
    CorsNotAllowed,
}

/// What a refusal looks like on the wire: status, `error` code, and a safe description.
///
/// The HTTP adapter renders it as `{"error": code, "error_description": description}` and
/// adds `WWW-Authenticate` for 401s from the route's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    /// HTTP status code.
    pub status: u16,
    /// Stable, documented error code.
    pub code: &'static str,
    /// Human-readable text that reveals nothing about the secret or the store.
    pub description: &'static str,
}

const fn wire(status: u16, code: &'static str, description: &'static str) -> WireError {
    WireError {
        status,
        code,
        description,
    }
}

impl From<&AuthError> for WireError {
    fn from(e: &AuthError) -> Self {
        use api_key::Error as K;
        match e {
            AuthError::ApiKey(K::Expired) => {
                wire(401, "api_key_expired", "The API key has expired.")
            }
            AuthError::ApiKey(K::Revoked) => {
                wire(401, "api_key_revoked", "The API key has been revoked.")
            }
            // Malformed, bad checksum and unknown must look alike.
            AuthError::ApiKey(K::Malformed | K::BadChecksum | K::Unknown | K::Ambiguous) => {
                wire(401, "invalid_api_key", "The API key is not valid.")
            }
            AuthError::InsufficientScope => wire(
                403,
                "insufficient_scope",
                "The credential does not grant the scopes this route requires.",
            ),
            AuthError::MissingCredentials => wire(
                401,
                "missing_credentials",
                "This route requires authentication; see WWW-Authenticate.",
            ),
            AuthError::QuotaExceeded { .. } => wire(
                429,
                "quota_exceeded",
                "The usage quota of this credential is spent.",
            ),
            AuthError::RateLimited { .. } => wire(
                429,
                "rate_limited",
                "Too many requests; retry after the indicated time.",
            ),
            AuthError::Token(TokenError::Expired) => {
                wire(401, "token_expired", "The access token has expired.")
            }
            AuthError::Token(TokenError::Invalid) => {
                wire(401, "invalid_token", "The access token is not valid.")
            }
            AuthError::Token(TokenError::DpopProof) => wire(
                401,
                "invalid_dpop_proof",
                "The access token requires a valid DPoP proof of its key for this request.",
            ),
            AuthError::Token(TokenError::DpopNonce) => wire(
                401,
                "use_dpop_nonce",
                "Retry with a DPoP proof carrying the nonce in the DPoP-Nonce header.",
            ),
            AuthError::Token(TokenError::InQuery) => wire(
                401,
                "invalid_token",
                "Access tokens are not accepted in the query string; send Authorization: Bearer.",
            ),
            AuthError::Signature(SignatureError::Missing) => wire(
                401,
                "missing_signature",
                "This route requires a signed request; a signature header is missing.",
            ),
            AuthError::Signature(SignatureError::Invalid) => wire(
                401,
                "invalid_signature",
                "The request signature is not valid.",
            ),
            AuthError::Signature(SignatureError::Expired) => wire(
                401,
                "signature_expired",
                "The request was signed outside the allowed time window; X-Server-Time has the server's time.",
            ),
            AuthError::Signature(SignatureError::Replayed) => wire(
                401,
                "replayed_request",
                "This signed request was already received.",
            ),
            AuthError::Signature(SignatureError::BodyHashMismatch) => wire(
                400,
                "body_hash_mismatch",
                "The body does not match its signed hash.",
            ),
            AuthError::Signature(SignatureError::UnknownKey) => {
                wire(401, "unknown_key", "No active signing credential has this key id.")
            }
            AuthError::Unavailable => wire(
                503,
                "temporarily_unavailable",
                "Authentication is temporarily unavailable; retry later.",
            ),
        }
    }
}

impl From<&GatewayError> for WireError {
    fn from(e: &GatewayError) -> Self {
        match e {
            GatewayError::AdminUnauthorized => wire(
                401,
                "invalid_admin_token",
                "A valid admin token is required.",
            ),
            GatewayError::BadRequest => wire(400, "bad_request", "The request is malformed."),
            GatewayError::BodyTooLarge => wire(
                413,
                "payload_too_large",
                "The request body exceeds the allowed size.",
            ),
            GatewayError::HeadersTooLarge => wire(
                431,
                "request_header_fields_too_large",
                "The request headers exceed the allowed size.",
            ),
            GatewayError::Internal => wire(500, "internal_error", "An internal error occurred."),
            GatewayError::NoRoute => wire(404, "no_route", "No route matches this request."),
            GatewayError::CorsNotAllowed => wire(
                403,
                "cors_not_allowed",
                "This origin, method or header is not allowed by the route's CORS settings.",
            ),
            GatewayError::UpstreamUnavailable => wire(
                502,
                "upstream_unavailable",
                "The upstream service is unavailable.",
            ),
            GatewayError::UpstreamTimeout => wire(
                504,
                "upstream_timeout",
                "The upstream service did not answer in time.",
            ),
            GatewayError::NotImplemented => wire(
                501,
                "not_implemented",
                "The request uses a transfer coding this server does not support.",
            ),
            GatewayError::VersionNotSupported => wire(
                505,
                "http_version_not_supported",
                "Only HTTP/1.0 and HTTP/1.1 are served here.",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_malformed_keys_look_alike() {
        let a = WireError::from(&AuthError::ApiKey(api_key::Error::Unknown));
        let b = WireError::from(&AuthError::ApiKey(api_key::Error::Malformed));
        let c = WireError::from(&AuthError::ApiKey(api_key::Error::BadChecksum));
        assert_eq!(a, b);
        assert_eq!(b, c);
        assert_eq!(a.status, 401);
        assert_eq!(a.code, "invalid_api_key");
    }

    #[test]
    fn statuses_follow_the_documented_table() {
        assert_eq!(WireError::from(&AuthError::InsufficientScope).status, 403);
        assert_eq!(
            WireError::from(&AuthError::RateLimited {
                retry_after_secs: 1
            })
            .status,
            429
        );
        assert_eq!(
            WireError::from(&AuthError::QuotaExceeded {
                retry_after_secs: 1
            })
            .code,
            "quota_exceeded"
        );
        assert_eq!(WireError::from(&GatewayError::NoRoute).status, 404);
        assert_eq!(WireError::from(&GatewayError::CorsNotAllowed).status, 403);
        assert_eq!(WireError::from(&GatewayError::UpstreamTimeout).status, 504);
        assert_eq!(WireError::from(&GatewayError::HeadersTooLarge).status, 431);
    }
}
